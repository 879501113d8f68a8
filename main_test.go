package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

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
		{[]string{"--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
	} {
		t.Setenv("AGENT_IMAGE", "")
		err := runManager(context.Background(), tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("runManager(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

// TestManagerWatchingOneNamespace runs the manager as `lbpair manager
// --watch-namespace` does, against a real apiserver. It reconciles only the
// pairs of that namespace, but settles VRIDs against the pairs of every
// namespace: another manager may run those on the same network.
func TestManagerWatchingOneNamespace(t *testing.T) {
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
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, ns := range []string{"apps", "other"} {
		if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	pair := func(ns, name, vip string, vrid *int32) *lbv1.LoadBalancerPair {
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
	theirs := pair("other", "theirs", "198.18.0.100", &seven)
	if err := k8s.Create(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	theirs.Status.VirtualRouterID = seven
	if err := k8s.Status().Update(ctx, theirs); err != nil {
		t.Fatal(err)
	}

	managerCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- runManager(managerCtx, []string{"--kubeconfig", kubeconfig, "--agent-image", "registry.example/lbpair:test",
			"--watch-namespace", "apps", "--metrics-bind-address", "0", "--health-probe-bind-address", "0"})
	}()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the manager did not stop within 30s of its context's end")
		}
	})

	// Pairs of the watched namespace are run, and checked against the other
	// namespace's: an allocation avoids VRID 7, and a spec asking for 7 is
	// a conflict.
	if err := k8s.Create(ctx, pair("apps", "auto", "198.18.0.101", nil)); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, pair("apps", "clash", "198.18.0.102", &seven)); err != nil {
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
