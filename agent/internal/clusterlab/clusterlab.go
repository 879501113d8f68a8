// Package clusterlab runs lbpair as a cluster would, on one machine: a real
// kube-apiserver and etcd (envtest), the manager, and nodes that are network
// namespaces running the agent binary in cluster mode, with web backends and
// a client on the same bridge. There is no kubelet: the lab starts the
// agents itself and maintains Node objects and the backends' EndpointSlices
// as the kubelet and the endpoint controller would. The e2e tests and the
// demo run on it.
package clusterlab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/lbpair/lbpair/agent/internal/netlab"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// The lab's addresses, all in 198.18.0.0/24; a dual-stack lab gives every
// host the same last digits in fd00:198:18::/64 too.
const (
	VIP       = "198.18.0.100"
	VIP6      = "fd00:198:18::100"
	Port      = 88
	Namespace = "default"
	PairName  = "web"
	ClientIP  = "198.18.0.30"
)

// Node is one lab node: a namespace running an agent.
type Node struct {
	Name  string
	IP    string
	IP6   string // "" unless the lab is dual-stack
	Host  *netlab.Host
	Agent *netlab.Proc
	fwd   *forwarder
}

// Lab is a running cluster lab.
type Lab struct {
	Net        *netlab.Lab
	Client     client.Client
	Kubeconfig string
	Nodes      []*Node
	Webs       []*netlab.Host
	ClientHost *netlab.Host

	root, bin, dir, agentKubeconfig string
	env                             *envtest.Environment
	manager                         *exec.Cmd
	managerLog                      *os.File
	logf                            func(string, ...any)
	dualStack                       bool
	mu                              sync.Mutex
	servers                         []*http.Server
}

// Options configure a lab.
type Options struct {
	// Root is the repository root (bin/ holds the envtest binaries).
	Root string
	// Nodes is how many agent nodes (lb1, lb2, ...); Webs how many backends.
	Nodes, Webs int
	// Logf receives the lab's narration and the processes' output.
	Logf func(format string, args ...any)
	// Quiet keeps the agents' and manager's logs out of Logf.
	Quiet bool
	// DualStack gives every host, Node, agent Pod and backend an IPv6 address
	// besides its IPv4 one (IPv4 first, as in a dual-stack cluster whose
	// primary family is IPv4), and Service web an EndpointSlice per family.
	DualStack bool
}

// New starts a lab. Close it even when New fails.
func New(ctx context.Context, o Options) (l *Lab, err error) {
	l = &Lab{root: o.Root, logf: o.Logf, dualStack: o.DualStack}
	if l.logf == nil {
		l.logf = func(string, ...any) {}
	}
	if l.dir, err = os.MkdirTemp("", "lbpair-clusterlab"); err != nil {
		return l, err
	}
	l.bin = filepath.Join(l.dir, "lbpair")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", l.bin, "github.com/lbpair/lbpair").CombinedOutput(); err != nil {
		return l, fmt.Errorf("building lbpair: %v\n%s", err, out)
	}
	if l.Net, err = netlab.New(); err != nil {
		return l, err
	}
	if err := l.startAPIServer(); err != nil {
		return l, err
	}
	for i := range o.Nodes {
		name, ip := fmt.Sprintf("lb%d", i+1), fmt.Sprintf("198.18.0.%d", 11+i)
		h, err := l.addHost(name, ip)
		if err != nil {
			return l, err
		}
		api, err := url.Parse(l.env.Config.Host)
		if err != nil {
			return l, err
		}
		fwd, err := newForwarder(h, api.Host)
		if err != nil {
			return l, fmt.Errorf("apiserver forwarder on %s: %w", name, err)
		}
		n := &Node{Name: name, IP: ip, IP6: l.ipv6(ip), Host: h, fwd: fwd}
		l.Nodes = append(l.Nodes, n)
		if err := l.createNode(ctx, n, 150-50*i); err != nil {
			return l, err
		}
	}
	for i := range o.Webs {
		h, err := l.AddWeb(fmt.Sprintf("web%02d", i+1), fmt.Sprintf("198.18.0.%d", 21+i))
		if err != nil {
			return l, err
		}
		_ = h
	}
	if l.ClientHost, err = l.addHost("client", ClientIP); err != nil {
		return l, err
	}
	return l, l.startManager(o.Quiet)
}

// addHost adds a host with ip, and in a dual-stack lab its IPv6 twin.
func (l *Lab) addHost(name, ip string) (*netlab.Host, error) {
	cidrs := []string{ip + "/24"}
	if ip6 := l.ipv6(ip); ip6 != "" {
		cidrs = append(cidrs, ip6+"/64")
	}
	return l.Net.AddHost(name, cidrs...)
}

// ipv6 is the IPv6 address of the host whose IPv4 address is ip, or "" in
// an IPv4 lab: 198.18.0.11 is fd00:198:18::11.
func (l *Lab) ipv6(ip string) string {
	if !l.dualStack {
		return ""
	}
	return "fd00:198:18::" + ip[strings.LastIndex(ip, ".")+1:]
}

// addresses lists ip and, in a dual-stack lab, its IPv6 twin.
func (l *Lab) addresses(ip string) []string {
	if ip6 := l.ipv6(ip); ip6 != "" {
		return []string{ip, ip6}
	}
	return []string{ip}
}

func (l *Lab) startAPIServer() error {
	l.env = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(l.root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: filepath.Join(l.root, "bin"),
	}
	if _, err := l.env.Start(); err != nil {
		return fmt.Errorf("starting kube-apiserver and etcd (bin/ holds them after hack/tools.sh): %w", err)
	}
	user, err := l.env.AddUser(envtest.User{Name: "lab-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	l.Kubeconfig = filepath.Join(l.dir, "kubeconfig")
	if err := os.WriteFile(l.Kubeconfig, kc, 0o600); err != nil {
		return err
	}
	// The agents authenticate as their Pods' ServiceAccount would, so they
	// hold only what the manager grants it: the ClusterRoles of
	// config/rbac/agent_role.yaml, which the install applies, bound by the
	// manager in the pairs' namespace.
	agent, err := l.env.AddUser(envtest.User{
		Name:   "system:serviceaccount:" + Namespace + ":lbpair-agent",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace, "system:authenticated"},
	}, nil)
	if err != nil {
		return err
	}
	agentKC, err := agent.KubeConfig()
	if err != nil {
		return err
	}
	// The agents reach the apiserver through their forwarder.
	cfg, err := clientcmd.Load(agentKC)
	if err != nil {
		return err
	}
	for _, c := range cfg.Clusters {
		u, err := url.Parse(c.Server)
		if err != nil {
			return err
		}
		u.Host = apiserverLocal
		c.Server = u.String()
	}
	l.agentKubeconfig = filepath.Join(l.dir, "agent-kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, l.agentKubeconfig); err != nil {
		return err
	}
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := lbv1.AddToScheme(scheme); err != nil {
		return err
	}
	if l.Client, err = client.New(l.env.Config, client.Options{Scheme: scheme}); err != nil {
		return err
	}
	return l.applyAgentRoles()
}

// applyAgentRoles creates the agents' ClusterRoles as the install does.
func (l *Lab) applyAgentRoles() error {
	file := filepath.Join(l.root, "config", "rbac", "agent_role.yaml")
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		var role rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict(doc, &role); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if role.Name == "" {
			continue
		}
		if err := l.Client.Create(context.Background(), &role); err != nil {
			return fmt.Errorf("creating ClusterRole %s: %w", role.Name, err)
		}
	}
}

func (l *Lab) startManager(quiet bool) error {
	f, err := os.Create(filepath.Join(l.dir, "manager.log"))
	if err != nil {
		return err
	}
	l.managerLog = f
	cmd := exec.Command(l.bin, "manager", "--kubeconfig", l.Kubeconfig, "--agent-image", "ghcr.io/lbpair/lbpair:lab",
		"--metrics-bind-address", "0", "--health-probe-bind-address", "0",
		// As installed: the lab's manager runs the leader election too.
		"--leader-elect", "--leader-election-namespace", Namespace)
	cmd.Stdout, cmd.Stderr = f, f
	if !quiet {
		w := &lineWriter{logf: func(s string) { l.logf("manager: %s", s) }}
		cmd.Stdout, cmd.Stderr = io2(f, w), io2(f, w)
	}
	// Killed with the process running the lab, even one that dies before Close.
	if err := netlab.StartCmd(cmd); err != nil {
		return fmt.Errorf("starting the manager: %w", err)
	}
	l.manager = cmd
	return nil
}

// createNode makes the Node object the kubelet would have registered.
func (l *Lab) createNode(ctx context.Context, node *Node, priority int) error {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: map[string]string{
		"lbpair.io/lb": "true", "lbpair.io/priority": fmt.Sprint(priority),
	}}}
	if err := l.Client.Create(ctx, n); err != nil {
		return fmt.Errorf("creating Node %s: %w", node.Name, err)
	}
	for _, ip := range l.addresses(node.IP) {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return l.Client.Status().Update(ctx, n)
}

// AddWeb adds a backend host answering HTTP on :80 with its name, and with
// the address the request came from in the X-Remote-Addr header.
func (l *Lab) AddWeb(name, ip string) (*netlab.Host, error) {
	h, err := l.addHost(name, ip)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	// Every address of the host: its namespace has no other.
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", ":80"); return err }); err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Remote-Addr", r.RemoteAddr)
		fmt.Fprintln(w, name)
	}), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	l.mu.Lock()
	l.servers = append(l.servers, srv)
	l.Webs = append(l.Webs, h)
	l.mu.Unlock()
	return h, nil
}

// SetEndpoints makes Service "web" and its EndpointSlices (one per address
// family) list the given backends (by host name) as ready: the endpoint
// controller's job.
func (l *Lab) SetEndpoints(ctx context.Context, webs ...*netlab.Host) error {
	return l.setEndpoints(ctx, discoveryv1.EndpointConditions{Ready: ptr.To(true)}, webs)
}

// SetTerminatingEndpoints is SetEndpoints with the backends terminating but
// still serving, as the last pods of a rollout are before new ones are ready.
func (l *Lab) SetTerminatingEndpoints(ctx context.Context, webs ...*netlab.Host) error {
	return l.setEndpoints(ctx, discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}, webs)
}

func (l *Lab) setEndpoints(ctx context.Context, conditions discoveryv1.EndpointConditions, webs []*netlab.Host) error {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "web"}}
	if err := l.Client.Get(ctx, client.ObjectKeyFromObject(svc), svc); apierrors.IsNotFound(err) {
		svc.Spec = corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80)}}}
		if err := l.Client.Create(ctx, svc); err != nil {
			return fmt.Errorf("creating Service web: %w", err)
		}
	} else if err != nil {
		return err
	}
	if err := l.setSlice(ctx, "web-lab", discoveryv1.AddressTypeIPv4, conditions, webs, webIP); err != nil {
		return err
	}
	if !l.dualStack {
		return nil
	}
	return l.setSlice(ctx, "web-lab-v6", discoveryv1.AddressTypeIPv6, conditions, webs, func(h *netlab.Host) string { return l.ipv6(webIP(h)) })
}

// setSlice writes one EndpointSlice of Service web.
func (l *Lab) setSlice(ctx context.Context, name string, family discoveryv1.AddressType, conditions discoveryv1.EndpointConditions, webs []*netlab.Host, address func(*netlab.Host) string) error {
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: Namespace, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: family,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(80)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, h := range webs {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{address(h)},
			Conditions: conditions,
		})
	}
	existing := &discoveryv1.EndpointSlice{}
	if err := l.Client.Get(ctx, client.ObjectKeyFromObject(slice), existing); apierrors.IsNotFound(err) {
		return l.Client.Create(ctx, slice)
	} else if err != nil {
		return err
	}
	existing.Endpoints = slice.Endpoints
	return l.Client.Update(ctx, existing)
}

func webIP(h *netlab.Host) string {
	var n int
	fmt.Sscanf(h.Name, "web%d", &n)
	return fmt.Sprintf("198.18.0.%d", 20+n)
}

// PairYAML is the lab's pair: the seed recipe on port 88 with the Service
// "web" as backend, 100 ms adverts so failovers are quick.
func PairYAML(interval string) string { return NamedPairYAML(PairName, VIP, interval) }

// NamedPairYAML is the lab's pair under another name and virtual IP.
func NamedPairYAML(name, vip, interval string) string {
	return fmt.Sprintf(`apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata: {name: %s, namespace: %s}
spec:
  virtualIPs: [%s]
  virtualRouterID: 51
  advertisementInterval: %s
  drainTimeout: 5s
  nodeSelector: {lbpair.io/lb: "true"}
  ports:
  - name: http
    port: %d
    backend: {service: {name: web, port: http}}
    healthCheck: {active: {interval: 200ms, timeout: 100ms, rise: 1, fall: 2}}
    timeouts: {connect: 200ms}
`, name, Namespace, vip, interval, Port)
}

// ApplyPair creates the pair from YAML.
func (l *Lab) ApplyPair(ctx context.Context, doc string) error {
	var p lbv1.LoadBalancerPair
	if err := yaml.UnmarshalStrict([]byte(doc), &p); err != nil {
		return err
	}
	return l.Client.Create(ctx, &p)
}

// Pair reads the pair.
func (l *Lab) Pair(ctx context.Context) (*lbv1.LoadBalancerPair, error) {
	return l.NamedPair(ctx, PairName)
}

// NamedPair reads another pair.
func (l *Lab) NamedPair(ctx context.Context, name string) (*lbv1.LoadBalancerPair, error) {
	var p lbv1.LoadBalancerPair
	err := l.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: name}, &p)
	return &p, err
}

// StartAgent starts the node's agent of the lab's pair in cluster mode.
func (l *Lab) StartAgent(n *Node, quiet bool) error {
	p, err := l.StartPairAgent(n, PairName, quiet)
	if err != nil {
		return err
	}
	n.Agent = p
	return nil
}

// StartPairAgent starts an agent of the named pair on the node as the pair's
// DaemonSet runs it: its container's arguments and environment, with the
// Pod's fields filled in as the kubelet would, and a kubeconfig in place of
// the in-cluster one.
func (l *Lab) StartPairAgent(n *Node, pair string, quiet bool) (*netlab.Proc, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ds appsv1.DaemonSet
	for {
		err := l.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: "lbpair-" + pair}, &ds)
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("reading pair %s's DaemonSet: %w", pair, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	pod := map[string]string{
		"spec.nodeName":      n.Name,
		"metadata.name":      podName(n, pair),
		"metadata.namespace": Namespace,
		"status.podIP":       n.IP,
	}
	env := []string{"KUBECONFIG=" + l.agentKubeconfig}
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			ref := e.ValueFrom.FieldRef
			if ref == nil || pod[ref.FieldPath] == "" {
				return nil, fmt.Errorf("pair %s's DaemonSet: env %s comes from %+v, which the lab does not fill in", pair, e.Name, e.ValueFrom)
			}
			v = pod[ref.FieldPath]
		}
		env = append(env, e.Name+"="+v)
	}
	var logw func(string)
	if !quiet {
		logw = func(s string) { l.logf("%s/%s: %s", n.Name, pair, s) }
	}
	// The agent gets the container's capabilities and no others, as under a
	// container runtime; the image's entrypoint is the lbpair binary.
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || (sc.Privileged != nil && *sc.Privileged) {
		return nil, fmt.Errorf("pair %s's DaemonSet: the lab runs agents whose container drops ALL capabilities and adds the ones it needs", pair)
	}
	var caps []string
	for _, c := range sc.Capabilities.Add {
		caps = append(caps, string(c))
	}
	args, err := l.mountVolumes(n, pair, ds.Spec.Template.Spec.Volumes, c)
	if err != nil {
		return nil, fmt.Errorf("pair %s's DaemonSet: %w", pair, err)
	}
	return n.Host.StartWithCapabilities(logw, caps, "env", append(append(env, l.bin), args...)...)
}

// podName names the lab's pod of pair on n.
func podName(n *Node, pair string) string { return "lbpair-" + pair + "-" + n.Name }

// VolumeDir is the directory of a volume of the pod of pair on n.
func (l *Lab) VolumeDir(n *Node, pair, volume string) string {
	return filepath.Join(l.dir, "pods", podName(n, pair), volume)
}

// mountVolumes gives the container's emptyDir volumes a directory of the
// pod's own, which outlives the agent's restarts as an emptyDir outlives its
// container's, and returns the container's arguments with each mount path
// replaced by its directory: the agents share the lab's file system.
func (l *Lab) mountVolumes(n *Node, pair string, volumes []corev1.Volume, c corev1.Container) ([]string, error) {
	args := slices.Clone(c.Args)
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || volumes[i].EmptyDir == nil {
			return nil, fmt.Errorf("volume %q: the lab gives only emptyDir volumes", m.Name)
		}
		dir := l.VolumeDir(n, pair, m.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		for j := range args {
			args[j] = strings.ReplaceAll(args[j], m.MountPath, dir)
		}
	}
	return args, nil
}

// SignalAgent sends sig to the node's agent (the agent itself: `ip netns
// exec` and env exec in place).
func (l *Lab) SignalAgent(n *Node, sig syscall.Signal) error {
	if n.Agent == nil {
		return errors.New("no agent running")
	}
	return n.Agent.Signal(sig)
}

// node is the lab node named name, or nil.
func (l *Lab) node(name string) *Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// DeleteLink deletes the node's link; RecreateLink makes it again with the
// node's addresses, as a network manager that restarts it does: the same
// name, a new interface index.
func (n *Node) DeleteLink() error { return n.Host.DeleteLink() }

// RecreateLink makes the link DeleteLink deleted again.
func (n *Node) RecreateLink() error {
	cidrs := []string{n.IP + "/24"}
	if n.IP6 != "" {
		cidrs = append(cidrs, n.IP6+"/64")
	}
	return n.Host.AddLink(cidrs...)
}

// PauseAPI cuts the node off the apiserver; ResumeAPI reconnects it.
func (n *Node) PauseAPI()        { n.fwd.Pause() }
func (n *Node) ResumeAPI() error { return n.fwd.Resume() }

// VIPHolders lists the nodes that have the VIP on their link: the ground
// truth the status must match.
func (l *Lab) VIPHolders() []string { return l.Holders(VIP) }

// Holders lists the nodes that have vip on their link.
func (l *Lab) Holders(vip string) []string {
	var out []string
	for _, n := range l.Nodes {
		o, err := n.Host.Exec("ip", "-o", "addr", "show", "dev", netlab.HostLink)
		if err == nil && strings.Contains(o, " "+vip+"/") {
			out = append(out, n.Name)
		}
	}
	return out
}

// Listening tells whether anything listens on port Port on the node.
func (n *Node) Listening() bool { return n.ListeningOn("") }

// ListeningOn tells whether anything listens on ip:Port on the node; "" is
// any address.
func (n *Node) ListeningOn(ip string) bool {
	filter := "sport = :" + fmt.Sprint(Port)
	if ip != "" {
		filter = "src " + net.JoinHostPort(ip, fmt.Sprint(Port))
	}
	o, err := n.Host.Exec("ss", "-Hltn", filter)
	return err == nil && strings.TrimSpace(o) != ""
}

// DialFromClient opens a TCP connection from the client host.
func (l *Lab) DialFromClient(ctx context.Context, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.ClientHost.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Kubectl runs bin/kubectl against the lab's apiserver.
func (l *Lab) Kubectl(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(l.root, "bin", "kubectl"), append([]string{"--kubeconfig", l.Kubeconfig}, args...)...).CombinedOutput()
	return string(out), err
}

// Close stops everything the lab started and removes its namespaces.
func (l *Lab) Close() error {
	var errs []error
	if l.manager != nil && l.manager.Process != nil {
		_ = l.manager.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = l.manager.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = l.manager.Process.Kill()
			<-done
		}
	}
	if l.Net != nil {
		errs = append(errs, l.Net.Close())
	}
	l.mu.Lock()
	for _, s := range l.servers {
		_ = s.Close()
	}
	l.mu.Unlock()
	if l.env != nil {
		errs = append(errs, l.env.Stop())
	}
	if l.managerLog != nil {
		l.managerLog.Close()
	}
	if l.dir != "" {
		os.RemoveAll(l.dir)
	}
	return errors.Join(errs...)
}

// PartitionNodes cuts (or restores) the nodes off each other while each
// still reaches the backends, the client and the apiserver: every node drops
// packets from the other nodes by reverse-path filtering against a blackhole
// route, which also stops their multicast VRRP adverts.
func (l *Lab) PartitionNodes(cut bool) error {
	op := "del"
	if cut {
		op = "add"
	}
	for _, n := range l.Nodes {
		for _, key := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf." + netlab.HostLink + ".rp_filter"} {
			if err := n.Host.Sysctl(key, "1"); err != nil {
				return err
			}
		}
		for _, other := range l.Nodes {
			if other == n {
				continue
			}
			if _, err := n.Host.Exec("ip", "route", op, "blackhole", other.IP+"/32"); err != nil {
				return err
			}
		}
	}
	return nil
}

// CreatePairAgentPods registers the Pods the named pair's DaemonSet would
// run, one per node with the node's addresses (host network) and the
// template's node selection, as the DaemonSet controller and the kubelet
// would: agents find their unicast peers from them, and follow their own
// pod's selection.
func (l *Lab) CreatePairAgentPods(ctx context.Context, pair string) error {
	var ds appsv1.DaemonSet
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: "lbpair-" + pair}, &ds); err != nil {
		return fmt.Errorf("reading pair %s's DaemonSet: %w", pair, err)
	}
	for _, n := range l.Nodes {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: podName(n, pair), Labels: map[string]string{lbv1.PairLabel: lbv1.PairLabelValue(pair)}},
			Spec: corev1.PodSpec{NodeName: n.Name, HostNetwork: true, NodeSelector: ds.Spec.Template.Spec.NodeSelector,
				Containers: []corev1.Container{{Name: "agent", Image: "ghcr.io/lbpair/lbpair:lab"}}},
		}
		if err := l.Client.Create(ctx, pod); err != nil {
			return fmt.Errorf("creating pod %s: %w", pod.Name, err)
		}
		pod.Status.PodIP = n.IP
		for _, ip := range l.addresses(n.IP) {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		if err := l.Client.Status().Update(ctx, pod); err != nil {
			return fmt.Errorf("setting pod %s's IP: %w", pod.Name, err)
		}
	}
	return nil
}
