package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

func TestManagerRefusesBadFlagsNamingThem(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--agent-image (or AGENT_IMAGE) is required"},
		{[]string{"--agent-image", "x", "--agent-image-pull-policy", "Sometimes"}, `--agent-image-pull-policy "Sometimes": use Always, IfNotPresent or Never`},
		{[]string{"--agent-image", "x", "--agent-resources", `{"limits":`}, "--agent-resources"},
		{[]string{"--agent-image", "x", "--agent-priority-class", "Node_Critical"}, `--agent-priority-class "Node_Critical" is not a priority class name`},
		// What the chart renders from agentResources.limits.memory: 512. The
		// kubeconfig keeps a manager that took it from reaching any cluster.
		{[]string{"--kubeconfig", "/nonexistent", "--agent-image", "x", "--agent-resources", `{"limits":{"memory":512}}`}, "--agent-resources: limits.memory is 512 bytes, below the 32Mi an agent needs: did you mean 512Mi?"},
		{[]string{"--kubeconfig", "/nonexistent", "--agent-image", "x", "--agent-resources", `{"requests":{"memory":"1Ki"}}`}, "--agent-resources: requests.memory (1Ki) is below the 32Mi an agent needs"},
		{[]string{"--kubeconfig", "/nonexistent", "--agent-image", "x", "--agent-resources", `{"limits":{"cpu":"1m"}}`}, "--agent-resources: limits.cpu (1m) is below the 10m an agent needs"},
		{[]string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
	} {
		t.Setenv("AGENT_IMAGE", "")
		err := runManager(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("runManager(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestManagerAcceptsSmallButWorkableAgentResources: the floors refuse
// mistakes, not lean settings: a bare "1" CPU is a whole core, and a zero
// memory request asks for nothing, as Kubernetes allows.
func TestManagerAcceptsSmallButWorkableAgentResources(t *testing.T) {
	for _, s := range []string{
		`{"requests":{"cpu":"1m","memory":"0"},"limits":{"cpu":"1","memory":"32Mi"}}`,
		`{"limits":{"cpu":0.01,"memory":33554432}}`,
	} {
		err := runManager(context.Background(), []string{"--kubeconfig", "/nonexistent", "--agent-image", "x", "--agent-resources", s})
		if err == nil || !strings.Contains(err.Error(), "finding the apiserver") {
			t.Errorf("--agent-resources=%s: %v, want the flags accepted and the apiserver looked for", s, err)
		}
	}
}

// TestManagerRefusesAPriorityClassThatDoesNotExist: a typo in
// --agent-priority-class would have the apiserver refuse every agent pod,
// after the DaemonSets' rollout deleted a running one; the manager refuses
// to start instead, naming the flag and the chart's value. A manager whose
// RBAC may not read PriorityClasses (an older install) goes on.
func TestManagerRefusesAPriorityClassThatDoesNotExist(t *testing.T) {
	env, _ := startAPIServer(t)
	kubeconfig := writeKubeconfig(t, env.KubeConfig)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	probes := freeLocalAddress(t)
	errc := make(chan error, 1)
	go func() {
		errc <- runManager(ctx, []string{"--kubeconfig", kubeconfig, "--agent-image", "x", "--agent-priority-class", "system-node-critcal",
			"--metrics-bind-address", "0", "--health-probe-bind-address", probes})
	}()
	// Either the manager returns, or its probes answer: it started.
	for {
		select {
		case err := <-errc:
			want := `--agent-priority-class "system-node-critcal" (the chart's agentPriorityClassName): the cluster has no PriorityClass of that name`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("runManager = %v, want an error containing %q", err, want)
			}
		default:
			resp, err := http.Get("http://" + probes + "/healthz")
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			resp.Body.Close()
			cancel()
			<-errc
			t.Error("the manager started with --agent-priority-class naming no PriorityClass")
		}
		break
	}

	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	// The apiserver creates the system classes itself.
	if err := checkPriorityClass(context.Background(), admin, "system-node-critical"); err != nil {
		t.Errorf("system-node-critical: %v", err)
	}
	nobody, err := env.AddUser(envtest.User{Name: "nobody"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	forbidden, err := client.New(nobody.Config(), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPriorityClass(context.Background(), forbidden, "system-node-critcal"); err != nil {
		t.Errorf("a manager that may not read PriorityClasses: %v, want it to go on", err)
	}
}

// TestManagerWatchingOneNamespace runs the manager as `lbpair manager
// --watch-namespace` does, against a real apiserver. It reconciles only the
// pairs of that namespace, but settles VRIDs against the pairs of every
// namespace: another manager may run those on the same network.
func TestManagerWatchingOneNamespace(t *testing.T) {
	env, k8s := startAPIServer(t)
	kubeconfig := writeKubeconfig(t, env.KubeConfig)
	ctx := context.Background()
	for _, ns := range []string{"apps", "other"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(ns, name string) (*lbv1.LoadBalancerPair, error) {
		var p lbv1.LoadBalancerPair
		err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &p)
		return &p, err
	}
	hasDaemonSet := func(ns, name string) (bool, error) {
		err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "lbpair-" + name}, &appsv1.DaemonSet{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}

	// A pair of the other namespace, run by another manager: it holds VRID 7.
	seven := int32(7)
	theirs := newPair("other", "theirs", "198.18.0.100", &seven)
	if err := k8s.Create(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	theirs.Status.VirtualRouterID = seven
	if err := k8s.Status().Update(ctx, theirs); err != nil {
		t.Fatal(err)
	}

	startManager(t, "--kubeconfig", kubeconfig, "--agent-image", "registry.example/lbpair:test",
		"--watch-namespace", "apps", "--metrics-bind-address", "0", "--health-probe-bind-address", "0")

	// Pairs of the watched namespace are run, and checked against the other
	// namespace's: an allocation avoids VRID 7, and a spec asking for 7 is
	// a conflict.
	if err := k8s.Create(ctx, newPair("apps", "auto", "198.18.0.101", nil)); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, newPair("apps", "clash", "198.18.0.102", &seven)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watched namespace's pairs reconciled", func() error {
		auto, err := get("apps", "auto")
		if err != nil {
			return err
		}
		if v := auto.Status.VirtualRouterID; v == 0 || v == seven {
			return fmt.Errorf("apps/auto has VRID %d, want one allocated other than %d", v, seven)
		}
		if ok, err := hasDaemonSet("apps", "auto"); !ok {
			return fmt.Errorf("apps/auto has no DaemonSet (%v)", err)
		}
		clash, err := get("apps", "clash")
		if err != nil {
			return err
		}
		c := apimeta.FindStatusCondition(clash.Status.Conditions, lbv1.ConditionVRIDConflict)
		if c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "other/theirs") {
			return fmt.Errorf("apps/clash's VRIDConflict condition is %+v, want true naming other/theirs", c)
		}
		return nil
	})
	if ok, err := hasDaemonSet("apps", "clash"); ok || err != nil {
		t.Errorf("apps/clash, in conflict, has a DaemonSet (err %v)", err)
	}

	// The other namespace's pair is left to its own manager, even when it
	// changes. The manager handles events in order, so once it has seen a
	// later change in its own namespace, it has seen this one.
	theirs.Labels = map[string]string{"changed": "yes"}
	if err := k8s.Update(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	auto, err := get("apps", "auto")
	if err != nil {
		t.Fatal(err)
	}
	auto.Spec.Ports[0].Port = 81
	if err := k8s.Update(ctx, auto); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watched namespace's change reconciled", func() error {
		auto, err := get("apps", "auto")
		if err != nil {
			return err
		}
		if auto.Status.ObservedGeneration != auto.Generation {
			return fmt.Errorf("apps/auto's status.observedGeneration is %d, generation %d", auto.Status.ObservedGeneration, auto.Generation)
		}
		return nil
	})
	if got, err := get("other", "theirs"); err != nil {
		t.Fatal(err)
	} else if got.Status.ObservedGeneration != 0 || len(got.Status.Conditions) != 0 {
		t.Errorf("other/theirs was reconciled: status %+v", got.Status)
	}
	if ok, err := hasDaemonSet("other", "theirs"); ok || err != nil {
		t.Errorf("other/theirs has a DaemonSet (err %v)", err)
	}

	// When that pair goes, the conflict settles at once, without waiting for
	// a resync.
	if err := k8s.Delete(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the conflict settled", func() error {
		clash, err := get("apps", "clash")
		if err != nil {
			return err
		}
		if apimeta.IsStatusConditionTrue(clash.Status.Conditions, lbv1.ConditionVRIDConflict) || clash.Status.VirtualRouterID != seven {
			return fmt.Errorf("apps/clash's status is %+v", clash.Status)
		}
		if ok, err := hasDaemonSet("apps", "clash"); !ok {
			return fmt.Errorf("apps/clash has no DaemonSet (%v)", err)
		}
		return nil
	})
}

// TestManagerRunsAsInstalled runs the manager as dist/install.yaml deploys
// it: its Deployment's arguments and environment, as its ServiceAccount with
// only the RBAC the manifest grants. It must win the leader election, run a
// pair, serve its probes, and hand the lease back when it stops.
func TestManagerRunsAsInstalled(t *testing.T) {
	env, k8s := startAPIServer(t)
	ctx := context.Background()
	manifest, err := os.ReadFile(filepath.Join("dist", "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	var managerPod *corev1.Pod
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			t.Fatal(err)
		}
		switch obj.GetKind() {
		case "":
			continue
		case "CustomResourceDefinition":
			continue // envtest installed it from config/crd
		case "Deployment":
			// No kubelet runs it here: the test runs its container's command.
			var d appsv1.Deployment
			if err := yaml.Unmarshal(doc, &d); err != nil {
				t.Fatal(err)
			}
			c := d.Spec.Template.Spec.Containers[0]
			if len(c.Args) == 0 || c.Args[0] != "manager" {
				t.Fatalf("the Deployment's container runs %q, want lbpair manager", c.Args)
			}
			args = c.Args[1:]
			for _, e := range c.Env {
				t.Setenv(e.Name, e.Value)
			}
			if d.Spec.Template.Spec.ServiceAccountName != "lbpair-manager" || d.Namespace != "lbpair-system" {
				t.Fatalf("the Deployment runs as %s/%s; the test authenticates as lbpair-system/lbpair-manager", d.Namespace, d.Spec.Template.Spec.ServiceAccountName)
			}
			psc, csc := d.Spec.Template.Spec.SecurityContext, c.SecurityContext
			if psc == nil || !ptr.Deref(psc.RunAsNonRoot, false) || csc == nil || csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(csc.Capabilities.Add) > 0 {
				t.Fatal("the Deployment's manager no longer runs as a user without capabilities; the test runs it as the image's user")
			}
			managerPod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: "manager"}, Spec: d.Spec.Template.Spec}
		}
		if err := k8s.Create(ctx, &obj); err != nil {
			t.Fatalf("creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	// The manifest's namespace enforces the restricted Pod Security level: the
	// apiserver must admit the manager's pod there.
	if managerPod == nil {
		t.Fatal("no Deployment in the manifest")
	}
	managerPod.Spec.NodeName = "node1"
	if err := k8s.Create(ctx, managerPod, client.DryRunAll); err != nil {
		t.Errorf("the manager's pod in its namespace: %v", err)
	}
	// The apiserver takes a client certificate's name as the user: this is
	// the name a ServiceAccount's token authenticates as, and its groups.
	user, err := env.AddUser(envtest.User{
		Name:   "system:serviceaccount:lbpair-system:lbpair-manager",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:lbpair-system", "system:authenticated"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	// The manifest lets the manager check --agent-priority-class: a class
	// that does not exist is found missing, not hidden by a Forbidden.
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	asManager, err := client.New(user.Config(), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := checkPriorityClass(ctx, asManager, "no-such-class"); err == nil || !strings.Contains(err.Error(), "no PriorityClass of that name") {
		t.Errorf("checking a missing priority class as the installed manager: %v, want it found missing", err)
	}
	// In a Pod the election's namespace comes from the ServiceAccount's
	// mount; here it is given. The metrics and probes move off the ports the
	// Deployment names, which may be taken on this machine.
	args = append(args, "--kubeconfig", writeKubeconfig(t, kubeconfig), "--leader-election-namespace", "lbpair-system",
		"--metrics-bind-address", "127.0.0.1:0")
	holder := func() (string, error) {
		var l coordinationv1.Lease
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: "lbpair-system", Name: "lbpair-manager.lbpair.io"}, &l); err != nil {
			return "", err
		}
		return ptr.Deref(l.Spec.HolderIdentity, ""), nil
	}
	waitLeader := func(not string) string {
		t.Helper()
		var h string
		eventually(t, "a manager leads", func() error {
			var err error
			if h, err = holder(); err != nil {
				return err
			}
			if h == "" || h == not {
				return fmt.Errorf("the Lease's holder is %q", h)
			}
			return nil
		})
		return h
	}
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}); err != nil {
		t.Fatal(err)
	}
	runsPair := func(name, vip string) {
		t.Helper()
		pair := newPair("shop", name, vip, nil)
		if err := k8s.Create(ctx, pair); err != nil {
			t.Fatal(err)
		}
		eventually(t, "pair "+name+" runs", func() error {
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(pair), pair); err != nil {
				return err
			}
			if pair.Status.VirtualRouterID == 0 {
				return fmt.Errorf("no VRID allocated: status %+v", pair.Status)
			}
			if err := k8s.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "lbpair-" + name}, &appsv1.DaemonSet{}); err != nil {
				return fmt.Errorf("the agents' DaemonSet: %w", err)
			}
			var events eventsv1.EventList
			if err := k8s.List(ctx, &events, client.InNamespace("shop")); err != nil {
				return err
			}
			for _, e := range events.Items {
				if e.Regarding.Name == name && e.Reason == "VRIDAllocated" {
					return nil
				}
			}
			return errors.New("no VRIDAllocated Event")
		})
	}

	// Two replicas, as the chart runs by default, each as the image's user.
	runAs := imageUser(t)
	probes := freeLocalAddress(t)
	stopFirst := startManagerAs(t, runAs, slices.Concat(args, []string{"--health-probe-bind-address", probes})...)
	first := waitLeader("")
	stopSecond := startManagerAs(t, runAs, slices.Concat(args, []string{"--health-probe-bind-address", freeLocalAddress(t)})...)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get("http://" + probes + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", path, resp.Status)
		}
	}
	runsPair("web", "198.18.0.100")

	// The leader, stopped, hands the Lease over: the other replica takes it
	// within its retry period, not after the 15-second lease runs out.
	stopFirst()
	if h, err := holder(); err != nil {
		t.Fatal(err)
	} else if h == first {
		t.Errorf("the stopped manager still holds the Lease (%s): the next leader must wait it out", h)
	}
	waitLeader(first)
	runsPair("web2", "198.18.0.101")
	stopSecond()
	if h, err := holder(); err != nil || h != "" {
		t.Errorf("after the last manager stopped, the Lease's holder is %q (%v), want none", h, err)
	}
}

// freeLocalAddress is a loopback address with a port that was free a moment ago.
func freeLocalAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newPair is a pair with one virtual IP and one static backend; vrid may be
// nil, for the manager to allocate one.
func newPair(ns, name, vip string, vrid *int32) *lbv1.LoadBalancerPair {
	return &lbv1.LoadBalancerPair{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: lbv1.LoadBalancerPairSpec{
			VirtualIPs:      []string{vip},
			VirtualRouterID: vrid,
			Ports: []lbv1.PortSpec{{Name: "http", Port: 80, Backend: lbv1.BackendSpec{
				Static: []lbv1.StaticBackend{{Address: "198.18.1.10:80"}},
			}}},
		},
	}
}

// startAPIServer starts a kube-apiserver and etcd (envtest) with the CRD for
// one test, and returns it with a client of the cluster's admin.
func startAPIServer(t *testing.T) (*envtest.Environment, client.Client) {
	t.Helper()
	bin, err := filepath.Abs("bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(bin, "kube-apiserver")); err != nil {
		t.Fatalf("envtest needs bin/kube-apiserver and bin/etcd: run `hack/tools.sh kube-apiserver etcd` (make test does): %v", err)
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: bin,
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
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return env, k8s
}

func copyFile(from, to string, mode os.FileMode) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, mode)
}

// writeKubeconfig writes a kubeconfig for the manager's --kubeconfig flag.
func writeKubeconfig(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// mainArgsEnv carries the arguments of main() to a copy of the test binary
// that startManager runs as the lbpair command.
const mainArgsEnv = "LBPAIR_TEST_MAIN_ARGS"

// TestMain runs main() itself when the test binary is started as lbpair:
// each manager is a process of its own, as in a Pod, with its own signal
// handling, controller names and metrics.
func TestMain(m *testing.M) {
	if args := os.Getenv(mainArgsEnv); args != "" {
		os.Args = append([]string{"lbpair"}, strings.Split(args, "\n")...)
		main()
		if os.Getenv(printMemoryLimitEnv) != "" {
			fmt.Printf("memory limit %d\n", debug.SetMemoryLimit(-1))
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// imageUser is the user the image runs as (the Dockerfile's USER), with no
// capabilities; nil when the test does not run as root and so cannot switch
// users.
func imageUser(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Log("not root: the managers run as the test's user, not the image's")
		return nil
	}
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^USER (\d+):(\d+)$`).FindSubmatch(dockerfile)
	if m == nil {
		t.Fatal("the Dockerfile names no numeric USER uid:gid")
	}
	uid, _ := strconv.ParseUint(string(m[1]), 10, 32)
	gid, _ := strconv.ParseUint(string(m[2]), 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// startManager runs `lbpair manager` with args until the returned stop is
// called. stop sends SIGTERM, as the kubelet does, and fails the test unless
// the manager exits cleanly within 30 seconds; the manager's output is
// logged when the test fails.
func startManager(t *testing.T, args ...string) (stop func()) {
	t.Helper()
	return startManagerAs(t, nil, args...)
}

// startManagerAs is startManager as user; nil is the test's own. A user
// other than root has no capabilities, and gets its own copy of the binary
// and of the kubeconfig, which the test's private directories would hide.
func startManagerAs(t *testing.T, user *syscall.Credential, args ...string) (stop func()) {
	t.Helper()
	bin := os.Args[0]
	if user != nil {
		dir, err := os.MkdirTemp("", "lbpair-manager-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(dir, "lbpair")
		if err := copyFile(os.Args[0], bin, 0o755); err != nil {
			t.Fatal(err)
		}
		args = slices.Clone(args)
		for i := range args[:len(args)-1] {
			if args[i] != "--kubeconfig" {
				continue
			}
			kubeconfig := filepath.Join(dir, "kubeconfig")
			if err := copyFile(args[i+1], kubeconfig, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(kubeconfig, int(user.Uid), int(user.Gid)); err != nil {
				t.Fatal(err)
			}
			args[i+1] = kubeconfig
		}
	}
	cmd := exec.Command(bin)
	// SIGKILL when the test binary dies without running its cleanups (-timeout, Ctrl-C).
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: user, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), mainArgsEnv+"="+strings.Join(append([]string{"manager"}, args...), "\n"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// Linux sends the parent-death signal when the thread that forked the child exits,
	// and Go ends a thread whose locked goroutine exits: the goroutine that starts the
	// manager stays on its thread until the manager is reaped, so that thread outlives it.
	started := make(chan error, 1)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the manager did not stop within 30s of SIGTERM")
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("manager output:\n%s", out.String())
		}
	}
	// Before anything that can fail the test, so that a failure stops the manager too.
	t.Cleanup(stop)
	if user != nil {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{fmt.Sprintf("Uid:\t%d\t", user.Uid), "CapEff:\t0000000000000000"} {
			if !strings.Contains(string(status), want) {
				t.Fatalf("the manager does not run as the image's user without capabilities: no %q in its status:\n%s", want, status)
			}
		}
	}
	return stop
}

// eventually retries check until it returns nil, for up to 10 seconds: well
// under the manager's 30-second resync, so that what it waits for comes from
// a watch event.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	err := errors.New("not checked")
	for time.Now().Before(deadline) {
		if err = check(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}
