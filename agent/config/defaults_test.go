package config

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// pairYAML has every optional object present but empty, so the apiserver
// defaults their fields, and explicit zeros the defaults must not override.
const pairYAML = `
apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata: {name: web, namespace: default}
spec:
  virtualIPs: [198.18.0.100]
  virtualRouterID: 51
  priority: {}
  unicast: {enabled: false}
  announcements: {delay: 0s}
  tracking: {}
  drainTimeout: 0s
  ports:
  - name: http
    port: 88
    backend:
      static: [{address: "198.18.1.10:80"}, {address: "web02:80", weight: 3}]
    healthCheck: {passive: {maxFails: 0}, active: {}}
    timeouts: {}
  - name: api
    port: 8443
    backend: {service: {name: api, port: https}}
    healthCheck: {passive: {}}
    timeouts: {}
`

// startAPIServer starts a kube-apiserver (envtest) with the CRD, for the test only.
func startAPIServer(t *testing.T) client.Client {
	t.Helper()
	root := repoRoot(t)
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		BinaryAssetsDirectory: filepath.Join(root, "bin"),
		ErrorIfCRDPathMissing: true,
	}
	if _, err := os.Stat(filepath.Join(root, "bin", "kube-apiserver")); err != nil {
		t.Fatalf("envtest binaries missing (%v): run hack/tools.sh kube-apiserver etcd", err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	scheme := runtime.NewScheme()
	if err := lbv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDefaultMatchesAPIServer(t *testing.T) {
	c := startAPIServer(t)

	var sent lbv1.LoadBalancerPair
	if err := yaml.UnmarshalStrict([]byte(pairYAML), &sent); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Create(ctx, sent.DeepCopy()); err != nil {
		t.Fatalf("creating the pair: %v", err)
	}
	var stored lbv1.LoadBalancerPair
	if err := c.Get(ctx, client.ObjectKeyFromObject(&sent), &stored); err != nil {
		t.Fatal(err)
	}

	local := sent.DeepCopy()
	if err := Default(local); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stored.Spec, local.Spec); diff != "" {
		t.Errorf("Default differs from the apiserver's defaulting (-apiserver +Default):\n%s", diff)
	}
	// Defaulting what the apiserver stored must change nothing: the agent
	// defaults every pair it reads.
	again := stored.DeepCopy()
	if err := Default(again); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(stored.Spec, again.Spec); diff != "" {
		t.Errorf("Default changed an apiserver-defaulted pair (-stored +Default):\n%s", diff)
	}
}

func TestDefaultFillsAbsentObjects(t *testing.T) {
	p := &lbv1.LoadBalancerPair{Spec: lbv1.LoadBalancerPairSpec{
		VirtualIPs: []string{"198.18.0.100"},
		Ports: []lbv1.PortSpec{{Name: "http", Port: 88, Backend: lbv1.BackendSpec{
			Static: []lbv1.StaticBackend{{Address: "198.18.1.10:80"}},
		}}},
	}}
	if err := Default(p); err != nil {
		t.Fatal(err)
	}
	s := p.Spec
	got := []any{
		s.VRRPVersion, s.AdvertisementInterval.Duration, *s.Preempt, s.PreemptDelay, s.DrainTimeout.Duration,
		s.Priority.Default, s.Priority.NodeLabel, s.Announcements.Repeat, s.Announcements.Delay.Duration,
		s.Tracking.ProxyWeight, s.Ports[0].Balance, s.Ports[0].ProxyProtocol, s.Ports[0].Backend.Static[0].Weight,
		*s.Ports[0].HealthCheck.Passive.MaxFails, s.Ports[0].HealthCheck.Passive.FailTimeout.Duration,
		s.Ports[0].HealthCheck.Active == nil, s.Ports[0].Timeouts.Connect.Duration,
		s.Ports[0].Timeouts.ConnectAttempts, s.Ports[0].Timeouts.Idle.Duration,
	}
	want := []any{
		int32(3), time.Second, true, (*metav1.Duration)(nil), 30 * time.Second,
		int32(100), "lbpair.io/priority", int32(5), 5 * time.Second,
		int32(0), lbv1.BalanceRoundRobin, lbv1.ProxyProtocolNone, int32(1),
		int32(1), 10 * time.Second,
		true, 5 * time.Second,
		int32(3), 10 * time.Minute,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
}

// repoRoot finds the module root, where bin/ and config/ live.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}
