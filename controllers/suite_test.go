package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// The suite shares one real kube-apiserver and etcd (envtest) and one
// manager running the reconciler; each test works in its own namespace.
var (
	testEnv    *envtest.Environment
	restConfig *rest.Config
	k8s        client.Client
	repoRoot   string
	// testRecorder is the suite manager's Event recorder, for reconcilers a
	// test runs itself.
	testRecorder events.EventRecorder
)

const testImage = "registry.example/lbpair:test"

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	repoRoot = root
	bin := filepath.Join(root, "bin")
	if _, err := os.Stat(filepath.Join(bin, "kube-apiserver")); err != nil {
		fmt.Fprintf(os.Stderr, "envtest needs bin/kube-apiserver and bin/etcd: run `hack/tools.sh kube-apiserver etcd` (make test does): %v\n", err)
		return 1
	}
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: bin,
	}
	restConfig, err = testEnv.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "starting envtest: %v\n", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping envtest: %v\n", err)
		}
	}()

	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := lbv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	k8s, err = client.New(restConfig, client.Options{Scheme: scheme})
	if err != nil {
		panic(err)
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true)))
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  CacheOptions(""),
		Controller:             config.Controller{SkipNameValidation: ptrTo(true)},
	})
	if err != nil {
		panic(err)
	}
	testRecorder = mgr.GetEventRecorder("lbpair-manager")
	r := &LoadBalancerPairReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Recorder:  testRecorder,
		Agent:     AgentSettings{Image: testImage, Resources: DefaultAgentResources()},
	}
	if err := r.SetupWithManager(mgr); err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "manager: %v\n", err)
		}
	}()
	code := m.Run()
	cancel()
	<-done
	return code
}

func ptrTo[T any](v T) *T { return &v }

// newNamespace makes a namespace for one test. envtest runs no namespace
// controller, so a deleted namespace keeps its objects: the cleanup deletes the
// test's pairs itself, or their VRIDs would conflict with the pairs of a later
// run (go test -count).
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if err := k8s.DeleteAllOf(ctx, &lbv1.LoadBalancerPair{}, client.InNamespace(ns.Name)); err != nil {
			t.Errorf("deleting the pairs of namespace %s: %v", ns.Name, err)
		}
		_ = k8s.Delete(ctx, ns)
	})
	return ns.Name
}

// eventually retries check until it returns nil or the deadline passes.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// objectEvents lists the Events about an object.
func objectEvents(t *testing.T, ns, name string) []eventsv1.Event {
	t.Helper()
	var list eventsv1.EventList
	if err := k8s.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []eventsv1.Event
	for _, e := range list.Items {
		if e.Regarding.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// eventNotes lists the notes of the Events about an object with reason.
func eventNotes(t *testing.T, ns, name, reason string) []string {
	t.Helper()
	var out []string
	for _, e := range objectEvents(t, ns, name) {
		if e.Reason == reason {
			out = append(out, e.Note)
		}
	}
	return out
}

// eventReasons maps the reasons of the Events about an object to a note.
func eventReasons(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, e := range objectEvents(t, ns, name) {
		out[e.Reason] = e.Note
	}
	return out
}
