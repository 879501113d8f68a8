package agent

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpair/lbpair/agent/config"
	"github.com/lbpair/lbpair/agent/proxy"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// keptInputs are the inputs of a cluster agent with a bit of everything Build
// reads, and things it does not (status entries, other Secret keys, the
// node's status).
func keptInputs() config.Inputs {
	pair := &lbv1.LoadBalancerPair{
		ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", UID: "u1", Generation: 3,
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: lbv1.LoadBalancerPairSpec{
			VirtualIPs:  []string{"198.18.0.100"},
			VRRPVersion: 2,
			Priority:    &lbv1.PrioritySpec{NodeLabel: "lbpair.io/priority", Default: 100},
			Authentication: &lbv1.AuthenticationSpec{PasswordSecretRef: corev1.SecretKeySelector{
				LocalObjectReference: corev1.LocalObjectReference{Name: "vrrp"}, Key: "password"}},
			Ports: []lbv1.PortSpec{
				{Name: "http", Port: 80, Backend: lbv1.BackendSpec{Service: &lbv1.ServiceBackend{Name: "web", Port: intstr.FromString("http")}}},
				{Name: "admin", Port: 8080, Backend: lbv1.BackendSpec{Static: []lbv1.StaticBackend{{Address: "198.18.1.10:8080"}, {Address: "web01.example:8080"}}}},
			},
		},
		Status: lbv1.LoadBalancerPairStatus{
			VirtualRouterID: 7,
			VirtualIPs:      []string{"198.18.0.101"},
			Holder:          "lb1",
			Agents:          []lbv1.AgentStatus{{Node: "lb1", State: lbv1.StateMaster}},
		},
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "lb2", Labels: map[string]string{"lbpair.io/priority": "90"}},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.0.12"}}},
	}
	return config.Inputs{
		Pair:     pair,
		Node:     node,
		Peers:    []netip.Addr{netip.MustParseAddr("198.18.0.11")},
		Resolver: fakeResolver{"web01.example": {netip.MustParseAddr("198.18.1.11")}},
		Secrets: []corev1.Secret{
			{ObjectMeta: metav1.ObjectMeta{Name: "other"}, Data: map[string][]byte{"password": []byte("not-this")}},
			{ObjectMeta: metav1.ObjectMeta{Name: "vrrp"}, Data: map[string][]byte{"password": []byte("s3cret"), "unused": []byte("nor-this")}},
		},
	}
}

var keptBackends = map[string][]proxy.Backend{"http": {
	{Addr: netip.MustParseAddrPort("198.18.1.20:8080"), Weight: 1},
	{Addr: netip.MustParseAddrPort("[fd00:198:18::20]:8080"), Weight: 1},
}}

// fakeResolver answers from a table and fails for anything else.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// The agent restarts while neither the apiserver nor DNS answers: what it
// kept builds the settings it ran with.
func TestLastConfigServesAsTheApplied(t *testing.T) {
	ctx := context.Background()
	in := keptInputs()
	resolver := newHeldResolver(in.Resolver, logr.Discard())
	in.Resolver = resolver
	want, err := config.Build(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	resolver.hold(map[string][]netip.Addr{"gone.example": {netip.MustParseAddr("198.18.1.99")}})
	if err := newLastConfigStore(dir).save(newLastConfig(in, keptBackends, resolver.answers())); err != nil {
		t.Fatal(err)
	}
	lc, _, err := newLastConfigStore(dir).load("prod", "web", "lb2")
	if err != nil {
		t.Fatal(err)
	}
	if lc == nil {
		t.Fatal("nothing kept")
	}
	restarted := newHeldResolver(fakeResolver{}, logr.Discard())
	restarted.hold(lc.Resolved)
	got, err := config.Build(ctx, lc.inputs(restarted))
	if err != nil {
		t.Fatal(err)
	}
	opts := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	addrPorts := cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })
	if diff := cmp.Diff(want, got, opts, addrPorts); diff != "" {
		t.Errorf("settings from the kept configuration (-applied +kept):\n%s", diff)
	}
	if want.VRRP.Priority != 90 || want.VRRP.AuthPassword != "s3cret" || want.VRRP.VRID != 7 || len(want.Proxy.Listeners[1].Backends) != 2 {
		t.Errorf("the test's inputs lost their point: priority %d, password %q, VRID %d, admin backends %v", want.VRRP.Priority, want.VRRP.AuthPassword, want.VRRP.VRID, want.Proxy.Listeners[1].Backends)
	}
	if diff := cmp.Diff(keptBackends, lc.Backends, addrPorts); diff != "" {
		t.Errorf("kept backends (-applied +kept):\n%s", diff)
	}

	path := filepath.Join(dir, lastConfigFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"not-this", "nor-this", "198.18.0.12", "kubectl", `"agents"`, `"holder"`, "gone.example"} {
		if strings.Contains(string(data), s) {
			t.Errorf("the kept file holds %q, which Build does not read:\n%s", s, data)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the kept file (with the password) has mode %v, want 0600", fi.Mode().Perm())
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, lastConfigFile+".*")); len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
}

// Every agent rewrites its status entry every 10 s, each a watch event and
// so a sync; the kept file changes only with what the agent applies.
func TestLastConfigIgnoresStatusWrites(t *testing.T) {
	dir := t.TempDir()
	store := newLastConfigStore(dir)
	in := keptInputs()
	if err := store.save(newLastConfig(in, keptBackends, nil)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, lastConfigFile)
	// A marker: a write would replace it.
	if err := os.WriteFile(path, []byte("marker"), 0o600); err != nil {
		t.Fatal(err)
	}
	in.Pair.Status.Agents = append(in.Pair.Status.Agents, lbv1.AgentStatus{Node: "lb2", State: lbv1.StateBackup})
	in.Pair.Status.Holder = "lb2"
	in.Pair.ResourceVersion = "42"
	if err := store.save(newLastConfig(in, keptBackends, nil)); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != "marker" {
		t.Errorf("a status change rewrote the kept file")
	}
	in.Pair.Spec.Ports[1].Port = 8081
	if err := store.save(newLastConfig(in, keptBackends, nil)); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); !strings.Contains(string(data), "8081") {
		t.Errorf("a spec change did not reach the kept file: %s", data)
	}
}

func TestLastConfigLoad(t *testing.T) {
	dir := t.TempDir()
	store := newLastConfigStore(dir)
	if lc, _, err := store.load("prod", "web", "lb2"); lc != nil || err != nil {
		t.Fatalf("load with nothing kept: %v, %v; want nothing and no error", lc, err)
	}
	if err := store.save(newLastConfig(keptInputs(), nil, nil)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ namespace, pair, node, want string }{
		{"prod", "api", "lb2", "pair prod/web, not prod/api"},
		{"test", "web", "lb2", "pair prod/web, not test/web"},
		{"prod", "web", "lb3", "node lb2, not lb3"},
	} {
		lc, _, err := store.load(tc.namespace, tc.pair, tc.node)
		if err == nil || !strings.Contains(err.Error(), tc.want) || lc != nil {
			t.Errorf("load(%s, %s, %s): %v, %v; want an error naming %q", tc.namespace, tc.pair, tc.node, lc, err, tc.want)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, lastConfigFile), []byte(`{"pair": {"metadata": {"name": "web"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if lc, _, err := store.load("prod", "web", "lb2"); err == nil || lc != nil {
		t.Errorf("load of a cut file: %v, %v; want an error", lc, err)
	}
	if err := store.remove(); err != nil {
		t.Fatal(err)
	}
	if lc, _, err := store.load("prod", "web", "lb2"); lc != nil || err != nil {
		t.Errorf("load after remove: %v, %v; want nothing and no error", lc, err)
	}
	if err := store.remove(); err != nil {
		t.Errorf("remove with nothing kept: %v", err)
	}
}

// A state directory that cannot be written is logged once, not at every
// sync, and its recovery once.
func TestKeepLogsFailuresOnce(t *testing.T) {
	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	// A file where the directory should be: every save fails, even as root.
	if err := os.WriteFile(stateDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var lines []string
	log := funcr.New(func(prefix, args string) { lines = append(lines, args) }, funcr.Options{})
	s := &clusterSource{o: Options{StateDir: stateDir}, log: log, last: newLastConfigStore(stateDir)}
	in := keptInputs()
	for range 3 {
		s.keep(newLastConfig(in, keptBackends, nil))
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "Keeping the configuration for a restart failed") {
		t.Errorf("log after 3 failed saves: %q, want one error", lines)
	}
	if err := os.Remove(stateDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	lines = nil
	for range 2 {
		s.keep(newLastConfig(in, keptBackends, nil))
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "again") {
		t.Errorf("log after 2 saves that worked again: %q, want one line", lines)
	}
	if _, err := os.Stat(filepath.Join(stateDir, lastConfigFile)); err != nil {
		t.Errorf("nothing kept once the directory was there: %v", err)
	}
}

// BenchmarkKeepUnchanged is the cost the kept configuration adds to a sync
// that changes nothing (most syncs: status writes are watch events too), for
// a Service of 10,000 endpoints.
func BenchmarkKeepUnchanged(b *testing.B) {
	backends := make([]proxy.Backend, 10000)
	for i := range backends {
		backends[i] = proxy.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 8080), Weight: 1}
	}
	store := newLastConfigStore(b.TempDir())
	in := keptInputs()
	if err := store.save(newLastConfig(in, map[string][]proxy.Backend{"http": backends}, nil)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := store.save(newLastConfig(in, map[string][]proxy.Backend{"http": backends}, nil)); err != nil {
			b.Fatal(err)
		}
	}
}
