package agent

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"

	"github.com/lbpair/lbpair/agent/config"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// podCache lists its pods in the order given, as the informer's index
// lists them in no set order; nothing else of the cache is used.
type podCache struct {
	cache.Cache
	pods []corev1.Pod
	err  error
}

func (c podCache) List(_ context.Context, list client.ObjectList, _ ...client.ListOption) error {
	list.(*corev1.PodList).Items = c.pods
	return c.err
}

func agentPod(node string, ips ...string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-" + node}, Spec: corev1.PodSpec{NodeName: node}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

func TestPeers(t *testing.T) {
	leaving := agentPod("lb1", "198.18.0.11")
	leaving.DeletionTimestamp = &metav1.Time{}
	// lb4 during a rolling update: its old pod, terminating, and its new one
	// share the node's address.
	old, renewed := agentPod("lb4", "198.18.0.14"), agentPod("lb4", "198.18.0.14")
	old.DeletionTimestamp = &metav1.Time{}
	s := &clusterSource{o: Options{Namespace: "prod", Pair: "web", NodeName: "lb2"}, log: logr.Discard(), cache: podCache{pods: []corev1.Pod{
		agentPod("lb3", "198.18.0.13", "fd00:198:18::13"),
		agentPod("lb2", "198.18.0.12"), // this agent
		old,
		leaving, // the master stopping: it waits for an advert from its successor
		agentPod("lb5"),
		renewed,
	}}}
	peers, err := s.peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range peers {
		got = append(got, a.String())
	}
	want := []string{"198.18.0.11", "198.18.0.13", "198.18.0.14", "fd00:198:18::13"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}

	// No list is no peers: a unicast pair would advertise to the multicast group.
	s.cache = podCache{err: errors.New("the cache is not synced")}
	if peers, err := s.peers(context.Background()); err == nil {
		t.Errorf("peers without a pod list: %v and no error", peers)
	}
}

// An agent whose spec never applied writes an entry too (Init, with its
// configError); when its node leaves the pair, the entry goes, and stays gone.
func TestDeactivateRemovesTheEntryOfAnAgentNotRunning(t *testing.T) {
	var applied [][]any
	c := fake.NewClientBuilder().WithInterceptorFuncs(interceptor.Funcs{
		SubResourceApply: func(_ context.Context, _ client.Client, _ string, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			data, err := json.Marshal(obj)
			if err != nil {
				return err
			}
			var u struct {
				Status struct{ Agents []any } `json:"status"`
			}
			if err := json.Unmarshal(data, &u); err != nil {
				return err
			}
			applied = append(applied, u.Status.Agents)
			return nil
		},
	}).Build()
	st := newStatusReporter(logr.Discard(), types.NamespacedName{Namespace: "prod", Name: "web"}, "lb1")
	st.c = c
	s := &clusterSource{log: logr.Discard(), status: st, servingKept: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kept"})}
	// The sync that found the spec invalid resumed the writes.
	st.resume()

	s.deactivate("the node no longer matches spec.nodeSelector")
	if !st.paused.Load() {
		t.Error("the status writes go on after the node left the pair")
	}
	if len(applied) != 1 || len(applied[0]) != 0 {
		t.Errorf("applied %v, want the entry removed once", applied)
	}
	// Every later sync deactivates again: no more writes.
	s.deactivate("the node no longer matches spec.nodeSelector")
	if len(applied) != 1 {
		t.Errorf("applied %v, want the entry removed once", applied)
	}
}

// clientCache serves the cache's reads from a fake client.
type clientCache struct {
	cache.Cache
	c client.Client
}

func (c clientCache) Get(ctx context.Context, k client.ObjectKey, o client.Object, opts ...client.GetOption) error {
	return c.c.Get(ctx, k, o, opts...)
}

func (c clientCache) List(ctx context.Context, l client.ObjectList, opts ...client.ListOption) error {
	return c.c.List(ctx, l, opts...)
}

// loopbackPort is a loopback TCP port that was free a moment ago.
func loopbackPort(t *testing.T) int32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// servicePair is a pair in namespace prod on loopback whose ports are fed
// by Services, each given as port name, Service name and Service port.
func servicePair(t *testing.T, ports ...[3]string) *lbv1.LoadBalancerPair {
	p := &lbv1.LoadBalancerPair{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web"},
		Spec: lbv1.LoadBalancerPairSpec{
			VirtualIPs:      []string{"127.0.0.1"},
			VirtualRouterID: ptr.To(int32(7)),
			Interface:       "lo",
		},
	}
	for _, sp := range ports {
		p.Spec.Ports = append(p.Spec.Ports, lbv1.PortSpec{Name: sp[0], Port: loopbackPort(t),
			Backend: lbv1.BackendSpec{Service: &lbv1.ServiceBackend{Name: sp[1], Port: intstr.Parse(sp[2])}}})
	}
	return p
}

// httpService is a Service with port 80 (http) to the target port 8080 of
// the ready pods at addrs, and its EndpointSlice.
func httpService(name string, addrs ...string) []client.Object {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "prod", Name: name + "-1", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(8080))}},
	}
	for _, a := range addrs {
		es.Endpoints = append(es.Endpoints, endpoint(nil, a))
	}
	return []client.Object{svc, es}
}

// runningSource is a cluster source on the objects, whose agent runs the
// pair's proxy settings (no VRRP) as a sync would have left them.
func runningSource(t *testing.T, log logr.Logger, running *lbv1.LoadBalancerPair, objs ...client.Object) (*clusterSource, *config.Settings) {
	t.Helper()
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	fc := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
	settings, err := config.Build(context.Background(), config.Inputs{Pair: running})
	if err != nil {
		t.Fatal(err)
	}
	a := NewAgent(logr.Discard(), nil, nil)
	t.Cleanup(func() { a.Proxy().Shutdown(context.Background()) })
	if err := a.Proxy().Apply(settings.Proxy); err != nil {
		t.Fatal(err)
	}
	st := newStatusReporter(logr.Discard(), types.NamespacedName{Namespace: "prod", Name: "web"}, "lb1")
	s := &clusterSource{o: Options{Namespace: "prod", Pair: "web", NodeName: "lb1"}, log: log, agent: a,
		cache: clientCache{c: fc}, reader: fc, status: st, resolver: newHeldResolver(nil, logr.Discard())}
	s.running, s.applied = true, settings
	return s, settings
}

// backendCounts are the number of backends of each listener.
func backendCounts(a *Agent) map[string]int {
	out := map[string]int{}
	for _, l := range a.Proxy().Status() {
		out[l.Name] = l.Backends
	}
	return out
}

// A spec that cannot apply keeps the running configuration, and its Service
// ports keep following their endpoints: a rollout replaces the pods behind
// them whatever the spec's mistake.
func TestSyncFeedsTheRunningServicePortsWhenTheSpecFails(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name    string
		change  func(*lbv1.LoadBalancerPair)
		wantErr string
	}{
		{
			name: "it does not build: the password Secret is missing",
			change: func(p *lbv1.LoadBalancerPair) {
				p.Spec.VRRPVersion = 2
				p.Spec.Authentication = &lbv1.AuthenticationSpec{PasswordSecretRef: corev1.SecretKeySelector{
					LocalObjectReference: corev1.LocalObjectReference{Name: "vrrp-auth"}, Key: "password"}}
			},
			wantErr: "vrrp-auth",
		},
		{
			name: "it does not apply: a new port cannot listen",
			change: func(p *lbv1.LoadBalancerPair) {
				p.Spec.Ports = append(p.Spec.Ports, lbv1.PortSpec{Name: "busy", Port: int32(busy.Addr().(*net.TCPAddr).Port),
					Backend: lbv1.BackendSpec{Static: []lbv1.StaticBackend{{Address: "198.18.1.30:8080"}}}})
			},
			wantErr: "configuring listener \"busy\"",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			running := servicePair(t, [3]string{"web", "web", "http"})
			pair := running.DeepCopy()
			tt.change(pair)
			// The rollout: the pod 198.18.1.10 is gone, two new ones are ready.
			s, _ := runningSource(t, logr.Discard(), running, append(httpService("web", "198.18.1.20", "198.18.1.21"), pair)...)
			if err := s.agent.Proxy().SetBackends("web", backends("198.18.1.10:8080")); err != nil {
				t.Fatal(err)
			}

			s.sync(context.Background())
			if got := *s.status.configErr.Load(); !strings.Contains(got, tt.wantErr) {
				t.Errorf("configError %q, want it to name %s", got, tt.wantErr)
			}
			if got := backendCounts(s.agent); got["web"] != 2 {
				t.Errorf("backends by listener %v after the sync; want the 2 new pods behind web", got)
			}
		})
	}
}

// An agent follows its own pod's node selection, which the manager applied,
// not a spec.nodeSelector the manager holds back or the apiserver refused in
// the DaemonSet: that would stop every agent of the pair at once. A node
// relabelled off its pod's selection stops its agent.
func TestSyncFollowsThePodsNodeSelector(t *testing.T) {
	for _, tt := range []struct {
		name        string
		nodeLabels  map[string]string
		wantRunning bool
	}{
		{"the spec's new selection, not applied, does not stop the agent", map[string]string{"lbpair.io/lb": "true"}, true},
		{"a node relabelled off its pod's selection stops it", map[string]string{"lbpair.io/lb": "false"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			running := servicePair(t, [3]string{"web", "web", "http"})
			running.Spec.NodeSelector = map[string]string{"lbpair.io/lb": "true"}
			pair := running.DeepCopy()
			pair.Spec.NodeSelector = map[string]string{"role": "edge nodes"} // a label value the DaemonSet refuses
			node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "lb1", Labels: tt.nodeLabels}}
			pod := agentPod("lb1", "198.18.0.11")
			pod.Namespace, pod.Name = "prod", "lbpair-web-lb1"
			pod.Spec.NodeSelector = running.Spec.NodeSelector
			s, _ := runningSource(t, logr.Discard(), running, append(httpService("web", "198.18.1.20"), pair, node, &pod)...)
			s.o.PodName = pod.Name
			s.servingKept = prometheus.NewGauge(prometheus.GaugeOpts{Name: "kept"})

			s.sync(context.Background())
			if got := s.isRunning(); got != tt.wantRunning {
				t.Errorf("running after the sync: %v, want %v", got, tt.wantRunning)
			}
		})
	}
}

// A pair being deleted, kept by another controller's finalizer, stops its
// agents: the manager gives its virtual IPs and VRID to other pairs.
func TestSyncStopsForAPairBeingDeleted(t *testing.T) {
	running := servicePair(t, [3]string{"web", "web", "http"})
	pair := running.DeepCopy()
	pair.Finalizers = []string{"example.com/backup"}
	pair.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	s, _ := runningSource(t, logr.Discard(), running, append(httpService("web", "198.18.1.20"), pair)...)
	s.servingKept = prometheus.NewGauge(prometheus.GaugeOpts{Name: "kept"})

	s.sync(context.Background())
	if s.isRunning() {
		t.Error("the agent runs on after its pair began to be deleted")
	}
	if got := backendCounts(s.agent); len(got) != 0 {
		t.Errorf("listeners %v after the sync, want none", got)
	}
}

// A Service reference that gives a port no backend by mistake is reported
// in configError, naming the field, and logged once; the other ports serve,
// and once fixed the port serves too and the report clears.
func TestServiceReferenceMistakesAreReported(t *testing.T) {
	var lines []string
	log := funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{})
	pair := servicePair(t,
		[3]string{"web", "web", "8080"}, // the target port, not the Service's
		[3]string{"api", "api", "http"}, // not created yet
		[3]string{"ok", "ok", "80"},
	)
	objs := append(httpService("web", "198.18.1.20"), httpService("ok", "198.18.1.40")...)
	s, settings := runningSource(t, log, pair, objs...)
	ctx := context.Background()

	for range 3 { // every sync
		s.feedServicePorts(ctx, settings, pair)
	}
	want := `spec.ports[0].backend.service.port 8080: the Service "web" has no such port; use one of its TCP ports, by number or name (the Service port, not the target port): 80 (http); ` +
		`spec.ports[1].backend.service.name: Service "api" not found in namespace "prod"; create it or name an existing one`
	if got := *s.status.configErr.Load(); got != want {
		t.Errorf("configError:\n%s\nwant:\n%s", got, want)
	}
	if diff := cmp.Diff(map[string]int{"web": 0, "api": 0, "ok": 1}, backendCounts(s.agent)); diff != "" {
		t.Errorf("backends by listener (-want +got):\n%s", diff)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], `Service \"api\" not found`) {
		t.Errorf("log after 3 syncs: %q, want the mistakes once", lines)
	}

	// The user fixes the port and creates the Service.
	pair.Spec.Ports[0].Backend.Service.Port = intstr.FromInt32(80)
	settings, err := config.Build(ctx, config.Inputs{Pair: pair})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range httpService("api", "198.18.1.30") {
		if err := s.cache.(clientCache).c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	lines = nil
	for range 3 {
		s.feedServicePorts(ctx, settings, pair)
	}
	if got := *s.status.configErr.Load(); got != "" {
		t.Errorf("configError %q once fixed, want none", got)
	}
	if diff := cmp.Diff(map[string]int{"web": 1, "api": 1, "ok": 1}, backendCounts(s.agent)); diff != "" {
		t.Errorf("backends by listener once fixed (-want +got):\n%s", diff)
	}
	if len(lines) != 1 {
		t.Errorf("log after 3 syncs once fixed: %q, want one line", lines)
	}
}

// A configuration warning is logged when it first shows, not at every sync:
// every status write of every agent of the pair is one.
func TestSyncLogsAWarningOnce(t *testing.T) {
	var lines []string
	log := funcr.New(func(_, args string) { lines = append(lines, args) }, funcr.Options{})
	pair := servicePair(t, [3]string{"web", "web", "http"})
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "lb1", Labels: map[string]string{"lbpair.io/priority": "255"}}}
	s, _ := runningSource(t, log, pair, append(httpService("web", "198.18.1.20"), pair, node)...)
	s.servingKept = prometheus.NewGauge(prometheus.GaugeOpts{Name: "kept"})
	ctx := context.Background()
	warnings := func() []string {
		var out []string
		for _, l := range lines {
			if strings.Contains(l, "Configuration warning") {
				out = append(out, l)
			}
		}
		return out
	}

	for range 2 {
		s.sync(ctx)
	}
	if got := warnings(); len(got) != 1 || !strings.Contains(got[0], `lbpair.io/priority=\"255\"`) {
		t.Errorf("warnings logged by 2 syncs: %q, want the priority label's once", got)
	}

	// A new value is a new warning, logged once too.
	node.Labels["lbpair.io/priority"] = "high"
	if err := s.cache.(clientCache).c.Update(ctx, node); err != nil {
		t.Fatal(err)
	}
	lines = nil
	for range 2 {
		s.sync(ctx)
	}
	if got := warnings(); len(got) != 1 || !strings.Contains(got[0], `lbpair.io/priority=\"high\"`) {
		t.Errorf("warnings logged by 2 syncs after the label changed: %q, want the new one once", got)
	}
}
