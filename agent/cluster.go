package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	"github.com/lbpair/lbpair/agent/config"
	"github.com/lbpair/lbpair/agent/proxy"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// settleDelay coalesces bursts of watch events (a rollout touches many
// EndpointSlices) into one reconfiguration.
const settleDelay = 100 * time.Millisecond

// clusterSource feeds an Agent from the apiserver. Everything it reads comes
// from informers, so when the apiserver is unreachable the agent keeps its
// last configuration and keeps serving.
type clusterSource struct {
	o      Options
	log    logr.Logger
	agent  *Agent
	cache  cache.Cache
	reader client.Client // uncached: the auth Secret and status writes
	status *statusReporter
	podIP  netip.Addr

	// last keeps the applied configuration for a restart; nil when
	// --state-dir is not set. keepFailing: its last save failed. Used by
	// the sync loop only.
	last        *lastConfigStore
	keepFailing bool
	// agentPeers are the other agents' addresses as last listed; listed
	// tells whether they ever were. Used by the sync loop only.
	agentPeers []netip.Addr
	listed     bool
	resolver   *heldResolver
	// servingKept is 1 while keptRunning, for the metrics.
	servingKept prometheus.Gauge
	// serviceProblems are the mistakes in the Service references of the
	// applied spec, as last logged. Used by the sync loop only.
	serviceProblems string
	// warnings are the configuration's warnings as last logged. Used by
	// the sync loop only.
	warnings []string

	mu      sync.Mutex
	secret  *corev1.Secret
	nodeIP  string
	running bool
	// keptRunning: the agent runs the kept configuration, the apiserver's
	// not yet applied.
	keptRunning bool
	applied     *config.Settings
}

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := lbv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// runCluster runs the agent of one pair in a cluster until ctx ends.
func runCluster(ctx context.Context, o Options, a *Agent, st *statusReporter, log logr.Logger) error {
	restCfg, err := restConfig(o.Kubeconfig)
	if err != nil {
		return err
	}
	scheme, err := newScheme()
	if err != nil {
		return err
	}
	mapper := restMapper()
	c, err := cache.New(restCfg, cache.Options{
		Scheme:            scheme,
		Mapper:            mapper,
		DefaultNamespaces: map[string]cache.Config{o.Namespace: {}},
		// Never read here; on the pair they grow with an entry per agent.
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&lbv1.LoadBalancerPair{}: {Field: fields.OneTermEqualSelector("metadata.name", o.Pair)},
			&corev1.Node{}:           {Field: fields.OneTermEqualSelector("metadata.name", o.NodeName)},
			&corev1.Pod{}:            {Label: labels.SelectorFromSet(labels.Set{lbv1.PairLabel: lbv1.PairLabelValue(o.Pair)})},
		},
	})
	if err != nil {
		return fmt.Errorf("creating the watch cache: %w", err)
	}
	reader, err := client.New(restCfg, client.Options{Scheme: scheme, Mapper: mapper})
	if err != nil {
		return fmt.Errorf("creating the API client: %w", err)
	}
	src := &clusterSource{o: o, log: log, agent: a, cache: c, reader: reader, status: st,
		resolver: newHeldResolver(net.DefaultResolver, log.WithName("resolver"))}
	if o.StateDir != "" {
		src.last = newLastConfigStore(o.StateDir)
	}
	src.servingKept = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "lbpair_agent_configuration_kept",
		Help: "1 while the agent serves the configuration it kept for a restart, the apiserver not having answered since it started.",
	})
	if err := a.reg.Register(src.servingKept); err != nil {
		return fmt.Errorf("registering the agent's metrics: %w", err)
	}
	if ip, err := netip.ParseAddr(os.Getenv("POD_IP")); err == nil {
		src.podIP = ip.Unmap()
	}

	trigger := make(chan struct{}, 1)
	poke := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	for _, obj := range []client.Object{&lbv1.LoadBalancerPair{}, &corev1.Node{}, &corev1.Pod{}, &corev1.Service{}, &discoveryv1.EndpointSlice{}} {
		inf, err := c.GetInformer(ctx, obj)
		if err != nil {
			return fmt.Errorf("watching %T: %w", obj, err)
		}
		if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { poke() },
			UpdateFunc: func(any, any) { poke() },
			DeleteFunc: func(any) { poke() },
		}); err != nil {
			return fmt.Errorf("watching %T: %w", obj, err)
		}
	}
	cacheCtx, stopCache := context.WithCancel(ctx)
	defer stopCache()
	go func() {
		if err := c.Start(cacheCtx); err != nil {
			log.Error(err, "Watch cache stopped")
		}
	}()
	log.Info("Waiting for the pair and its endpoints from the apiserver", "pair", types.NamespacedName{Namespace: o.Namespace, Name: o.Pair})
	st.start(ctx, reader, src.address)
	synced := make(chan bool, 1)
	go func() { synced <- c.WaitForCacheSync(ctx) }()
	var fallback <-chan time.Time
	if src.last != nil {
		fallback = time.After(o.LastConfigWait)
	}
	for waiting := true; waiting; {
		select {
		case ok := <-synced:
			if !ok {
				if src.isRunning() {
					return src.stop()
				}
				return ctx.Err()
			}
			waiting = false
		case <-fallback:
			src.applyLast(ctx)
		}
	}
	for {
		src.sync(ctx)
		select {
		case <-trigger:
			select {
			case <-time.After(settleDelay):
			case <-ctx.Done():
			}
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			return src.stop()
		}
	}
}

// restMapper maps the kinds the agent reads and writes without asking the
// apiserver: discovery fails while it is unreachable, and an agent started
// then would exit and wait out the kubelet's crash-loop backoff instead of
// serving with its kept configuration.
func restMapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper(nil)
	add := func(gvk schema.GroupVersionKind, scope meta.RESTScope) {
		m.Add(gvk, scope)
		// The cache asks for the scope of lists by their own kind.
		m.Add(gvk.GroupVersion().WithKind(gvk.Kind+"List"), scope)
	}
	for _, gvk := range []schema.GroupVersionKind{
		lbv1.GroupVersion.WithKind("LoadBalancerPair"),
		corev1.SchemeGroupVersion.WithKind("Pod"),
		corev1.SchemeGroupVersion.WithKind("Service"),
		corev1.SchemeGroupVersion.WithKind("Secret"),
		discoveryv1.SchemeGroupVersion.WithKind("EndpointSlice"),
	} {
		add(gvk, meta.RESTScopeNamespace)
	}
	add(corev1.SchemeGroupVersion.WithKind("Node"), meta.RESTScopeRoot)
	return m
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("reading kubeconfig %q: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := ctrlconfig.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("finding the apiserver (in-cluster or --kubeconfig): %w", err)
	}
	return cfg, nil
}

// sync reads the current state from the cache and applies it. A pair that
// is gone or being deleted, or a node that no longer matches the pair's nodeSelector or is
// excluded from load balancers, stops the agent: it hands the virtual IPs
// over and closes its listeners.
func (s *clusterSource) sync(ctx context.Context) {
	var pair lbv1.LoadBalancerPair
	err := s.cache.Get(ctx, types.NamespacedName{Namespace: s.o.Namespace, Name: s.o.Pair}, &pair)
	switch {
	case apierrors.IsNotFound(err):
		s.deactivate("the LoadBalancerPair was deleted")
		return
	case err != nil:
		s.log.Error(err, "Reading the LoadBalancerPair from the cache")
		return
	case pair.DeletionTimestamp != nil:
		// Another controller's finalizer may keep it for long; the manager
		// gives its virtual IPs and VRID to other pairs meanwhile.
		s.deactivate("the LoadBalancerPair is being deleted")
		return
	}
	var node *corev1.Node
	var n corev1.Node
	if err := s.cache.Get(ctx, types.NamespacedName{Name: s.o.NodeName}, &n); err == nil {
		node = &n
		s.mu.Lock()
		s.nodeIP = internalIP(node)
		s.mu.Unlock()
	}
	if selector, from := s.nodeSelector(ctx, &pair); node != nil && !labels.SelectorFromSet(selector).Matches(labels.Set(node.Labels)) {
		s.deactivate("the node no longer matches " + from)
		return
	}
	if node != nil && lbv1.ExcludedFromLoadBalancers(node) {
		s.deactivate("the node is labelled " + corev1.LabelNodeExcludeBalancers)
		return
	}
	s.status.resume()
	if peers, err := s.peers(ctx); err == nil {
		s.agentPeers, s.listed = peers, true
	} else if u := pair.Spec.Unicast; !s.listed && u != nil && u.Enabled {
		// No peers would send a unicast pair's adverts to the multicast
		// group, which the other agents may not hear.
		s.log.Error(err, "Listing the pair's agent pods; waiting for the list to start")
		return
	} else {
		s.log.Error(err, "Listing the pair's agent pods; using the peers listed before")
	}
	in := config.Inputs{Pair: &pair, Node: node, Peers: s.agentPeers, Resolver: s.resolver}
	if pair.Spec.Authentication != nil {
		in.Secrets = s.authSecret(ctx, pair.Spec.Authentication.PasswordSecretRef.Name)
	}
	settings, err := config.Build(ctx, in)
	if err != nil {
		s.log.Error(err, "Invalid pair configuration; keeping the running one")
		s.keepRunning(ctx, err)
		return
	}
	s.logWarnings(settings.Warnings)
	if err := s.agent.Apply(ctx, settings); err != nil {
		s.log.Error(err, "Applying the pair's configuration; keeping the running one")
		s.keepRunning(ctx, err)
		return
	}
	backends := s.feedServicePorts(ctx, settings, &pair)
	s.started(settings, false)
	s.resolver.keepOnly(staticHosts(&pair.Spec))
	if s.last != nil {
		s.keep(newLastConfig(in, backends, s.resolver.answers()))
	}
}

// keepRunning records err, why the pair's current spec was not applied, and
// keeps feeding the Service ports of the running configuration, if any: their
// backends roll out regardless, and pods gone from behind them would
// otherwise stay the only backends until the spec is fixed.
func (s *clusterSource) keepRunning(ctx context.Context, err error) {
	s.status.setConfigError(err)
	s.mu.Lock()
	running := s.applied
	if !s.running {
		running = nil
	}
	s.mu.Unlock()
	if running == nil {
		return
	}
	// The running ports' field paths are those of a spec since changed:
	// their mistakes, if any, were reported when it applied.
	s.feedServicePorts(ctx, running, nil)
}

// feedServicePorts sets the backends of the settings' Service ports from
// the cache, and returns them. With pair, the spec the settings were built
// from, it also reports the mistakes in the ports' Service references.
func (s *clusterSource) feedServicePorts(ctx context.Context, settings *config.Settings, pair *lbv1.LoadBalancerPair) map[string][]proxy.Backend {
	backends, problems := s.serviceBackends(ctx, settings, pair)
	if pair != nil {
		s.reportServiceProblems(problems)
	}
	s.setBackends(settings, backends)
	return backends
}

// serviceBackends reads the backends of the settings' Service ports from
// the cache. With the pair the settings were built from, it also lists the
// mistakes in the ports' Service references (a Service that does not exist,
// a port it does not have), naming the field: they leave a port without
// backends, and would otherwise show only as a port with no healthy one.
func (s *clusterSource) serviceBackends(ctx context.Context, settings *config.Settings, pair *lbv1.LoadBalancerPair) (map[string][]proxy.Backend, []string) {
	preferIPv4 := settings.VRRP.VIPs[0].Is4()
	backends := make(map[string][]proxy.Backend, len(settings.Services))
	var problems []string
	for _, sp := range settings.Services {
		field := ""
		if pair != nil {
			for i, p := range pair.Spec.Ports {
				if p.Name == sp.Listener {
					field = fmt.Sprintf("spec.ports[%d].backend.service", i)
					break
				}
			}
		}
		var svc corev1.Service
		svcPtr := &svc
		if err := s.cache.Get(ctx, types.NamespacedName{Namespace: s.o.Namespace, Name: sp.Service}, &svc); err != nil {
			svcPtr = nil
			if apierrors.IsNotFound(err) && field != "" {
				problems = append(problems, fmt.Sprintf("%s.name: Service %q not found in namespace %q; create it or name an existing one", field, sp.Service, s.o.Namespace))
			}
		}
		var slices discoveryv1.EndpointSliceList
		if err := s.cache.List(ctx, &slices, client.InNamespace(s.o.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: sp.Service}); err != nil {
			s.log.Error(err, "Listing EndpointSlices", "service", sp.Service)
			continue
		}
		b, err := serviceBackends(svcPtr, slices.Items, sp.Port, preferIPv4)
		if err != nil && svcPtr != nil && field != "" {
			problems = append(problems, fmt.Sprintf("%s.port %s: %v", field, sp.Port.String(), err))
		}
		backends[sp.Listener] = b
	}
	return backends, problems
}

// reportServiceProblems puts the mistakes in the Service references of the
// applied spec in the agent's configError, where the manager gathers them
// into the Degraded condition, and logs them when they change: the other
// ports serve, and a Service created or fixed later just starts working.
func (s *clusterSource) reportServiceProblems(problems []string) {
	msg := strings.Join(problems, "; ")
	var err error
	if msg != "" {
		err = errors.New(msg)
	}
	if msg != s.serviceProblems {
		if err != nil {
			s.log.Error(err, "Service ports without backends: their Service reference is wrong; the other ports serve")
		} else {
			s.log.Info("The Service references of the pair's ports are valid again")
		}
		s.serviceProblems = msg
	}
	s.status.setConfigError(err)
}

// logWarnings logs the configuration's warnings when they differ from those
// logged last: every status write of every agent of the pair is a sync, every
// few seconds, and would repeat them.
func (s *clusterSource) logWarnings(warnings []string) {
	if slices.Equal(warnings, s.warnings) {
		return
	}
	for _, w := range warnings {
		s.log.Info("Configuration warning", "warning", w)
	}
	if len(warnings) == 0 {
		s.log.Info("The configuration has no warnings any more")
	}
	s.warnings = slices.Clone(warnings)
}

// keep saves lc for a restart. A failure is logged when it first happens
// and when it ends, not at every sync: a status write is a sync too.
func (s *clusterSource) keep(lc *lastConfig) {
	err := s.last.save(lc)
	switch {
	case err != nil && !s.keepFailing:
		s.log.Error(err, "Keeping the configuration for a restart failed; a restart while the apiserver is unreachable will wait for it", "stateDir", s.o.StateDir)
	case err == nil && s.keepFailing:
		s.log.Info("Keeping the configuration for a restart again", "stateDir", s.o.StateDir)
	}
	s.keepFailing = err != nil
}

// setBackends feeds the backends of the Service ports to the proxy.
func (s *clusterSource) setBackends(settings *config.Settings, backends map[string][]proxy.Backend) {
	for _, sp := range settings.Services {
		if err := s.agent.Proxy().SetBackends(sp.Listener, backends[sp.Listener]); err != nil {
			s.log.Error(err, "Setting the backends of a Service port", "port", sp.Listener, "service", sp.Service)
		}
	}
}

// started records the applied settings, the apiserver's or the kept ones
// (with keysAndValues saying which), and logs the start of an agent that was
// not running and the apiserver's settings replacing the kept ones.
func (s *clusterSource) started(settings *config.Settings, kept bool, keysAndValues ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case !s.running:
		kv := append([]any{"mode", "cluster"}, keysAndValues...)
		kv = append(kv, "vrid", settings.VRRP.VRID, "virtualIPs", settings.VRRP.VIPs, "priority", settings.VRRP.Priority, "peers", settings.VRRP.Peers)
		s.log.Info("Agent started", kv...)
	case s.keptRunning && !kept:
		s.log.Info("The apiserver answered: its configuration replaces the kept one")
	}
	s.running, s.keptRunning, s.applied = true, kept, settings
	serving := 0.0
	if kept {
		serving = 1
	}
	s.servingKept.Set(serving)
}

func (s *clusterSource) isRunning() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.running
}

// applyLast starts the agent with the configuration it kept, when the
// apiserver has not answered since the agent started. The first sync with
// the apiserver replaces it: a pair deleted or changed meanwhile stops or
// changes the agent then, as it would a running one.
func (s *clusterSource) applyLast(ctx context.Context) {
	lc, saved, err := s.last.load(s.o.Namespace, s.o.Pair, s.o.NodeName)
	switch {
	case err != nil:
		s.log.Error(err, "Not serving the kept configuration; waiting for the apiserver")
		return
	case lc == nil:
		s.log.Info("The apiserver has not answered, and no configuration was kept; waiting for it", "waited", s.o.LastConfigWait)
		return
	}
	s.resolver.hold(lc.Resolved)
	settings, err := config.Build(ctx, lc.inputs(s.resolver))
	if err == nil {
		err = s.agent.Apply(ctx, settings)
	}
	if err != nil {
		s.log.Error(err, "Not serving the kept configuration; waiting for the apiserver")
		return
	}
	s.status.resume()
	s.setBackends(settings, lc.Backends)
	s.started(settings, true, "configuration", "kept", "keptAt", saved.UTC(), "waited", s.o.LastConfigWait)
}

// nodeSelector is the node selection the agent runs under, and where it
// comes from: its own pod's, which the manager applied through the
// DaemonSet, or the pair's spec when the pod is not known. A spec the
// manager holds back (too many nodes) or the apiserver refuses in the
// DaemonSet (an invalid label value) must not stop the agents: when the
// manager applies a new selection, the DaemonSet controller replaces the
// pods, and a pod taken off its node hands the virtual IPs over as it stops.
func (s *clusterSource) nodeSelector(ctx context.Context, pair *lbv1.LoadBalancerPair) (map[string]string, string) {
	if s.o.PodName != "" {
		var pod corev1.Pod
		err := s.cache.Get(ctx, types.NamespacedName{Namespace: s.o.Namespace, Name: s.o.PodName}, &pod)
		if err == nil && pod.Spec.NodeName == s.o.NodeName {
			return pod.Spec.NodeSelector, "its pod's nodeSelector"
		}
	}
	return pair.Spec.NodeSelector, "spec.nodeSelector"
}

// peers lists the addresses of the pair's other agents: hostNetwork pods
// carry their node's address. A terminating agent stays a peer while it
// has an address: a stopping master waits for its successor's advert
// before it gives up the virtual IPs, and would wait its whole handover
// timeout, holding them next to the new master, if no one sent it any.
// The list is sorted and each address appears once (an old and a new pod
// on one node share it), so that an unchanged pair gives an unchanged
// configuration: the cache lists in no set order.
func (s *clusterSource) peers(ctx context.Context) ([]netip.Addr, error) {
	var pods corev1.PodList
	if err := s.cache.List(ctx, &pods, client.InNamespace(s.o.Namespace), client.MatchingLabels{lbv1.PairLabel: lbv1.PairLabelValue(s.o.Pair)}); err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, p := range pods.Items {
		if p.Spec.NodeName == s.o.NodeName {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				out = append(out, a.Unmap())
			}
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// authSecret reads the VRRPv2 password Secret, falling back to the last one
// read when the apiserver does not answer.
func (s *clusterSource) authSecret(ctx context.Context, name string) []corev1.Secret {
	var sec corev1.Secret
	getCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := s.reader.Get(getCtx, types.NamespacedName{Namespace: s.o.Namespace, Name: name}, &sec)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil:
		s.secret = &sec
	case apierrors.IsNotFound(err):
		s.secret = nil
	default:
		s.log.Error(err, "Reading the authentication Secret; using the last one read", "secret", name)
	}
	if s.secret == nil {
		return nil
	}
	return []corev1.Secret{*s.secret}
}

// address is the node address the agent reports: its pod IP (the node's,
// with hostNetwork) or else the node's internal IP.
func (s *clusterSource) address() string {
	if s.podIP.IsValid() {
		return s.podIP.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodeIP
}

// internalIP is the node's first InternalIP address, or "".
func internalIP(n *corev1.Node) string {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address
		}
	}
	return ""
}

func (s *clusterSource) deactivate(reason string) {
	// Even when not running: the kept configuration may be older than this
	// start, and must not serve a pair that has left the node.
	if s.last != nil {
		if err := s.last.remove(); err != nil {
			s.log.Error(err, "Forgetting the kept configuration")
		}
	}
	s.mu.Lock()
	running := s.running
	s.running, s.keptRunning = false, false
	s.servingKept.Set(0)
	s.mu.Unlock()
	// An inactive agent has nothing to report: its entry goes, and comes
	// back when the pair selects the node again. The writes stop first, so
	// that the transitions of stopping are not written to a deleted pair.
	// An agent whose spec never applied has an entry too (Init, with its
	// configError); it goes once, not at every sync that finds the node
	// still out of the pair.
	writing := s.status.pause()
	if running {
		s.log.Info("Stopping: giving up the virtual IPs and closing the listeners", "reason", reason)
		if err := s.agent.Deactivate(); err != nil {
			s.log.Error(err, "Stopping the agent")
		}
	}
	if running || writing {
		s.status.remove()
	}
}

func (s *clusterSource) stop() error {
	s.mu.Lock()
	drain := time.Duration(0)
	if s.applied != nil {
		drain = s.applied.Proxy.DrainTimeout
	}
	s.mu.Unlock()
	s.log.Info("Stopping: leaving the VRRP group and draining connections", "drainTimeout", drain)
	drainCtx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err := s.agent.Stop(drainCtx)
	s.status.remove()
	return err
}
