// Package config holds the install artifacts (CRD, RBAC, kustomize bases,
// samples); its tests check them against a real kube-apiserver the way a
// user meets them: kubectl apply, kubectl get, helm template.
package config

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

var (
	root       string
	kubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	root, err = filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl", "helm"} {
		if _, err := os.Stat(filepath.Join(root, "bin", b)); err != nil {
			fmt.Fprintf(os.Stderr, "bin/%s is missing: run hack/tools.sh (make test does): %v\n", b, err)
			return 1
		}
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: filepath.Join(root, "bin"),
	}
	if _, err := env.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "starting envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "adding a user: %v\n", err)
		return 1
	}
	kc, err := user.KubeConfig()
	if err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "lbpair-config-test")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		panic(err)
	}
	// Namespaced objects need their namespace even in a dry run.
	if out, err := exec.Command(filepath.Join(root, "bin", "kubectl"), "--kubeconfig", kubeconfig, "create", "namespace", "lbpair-system").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "creating namespace lbpair-system: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// kubectl runs bin/kubectl against the test apiserver with stdin.
func kubectl(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, "bin", "kubectl"), append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func mustKubectl(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectl(t, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestSamplesApplyAndShowThePrinterColumns(t *testing.T) {
	mustKubectl(t, "", "create", "namespace", "samples")
	mustKubectl(t, "", "apply", "-n", "samples", "-k", filepath.Join(root, "config", "samples"))
	out := mustKubectl(t, "", "get", "lbpair", "-n", "samples")
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if got, want := strings.Join(header, " "), "NAME VIP HOLDER READY AGE"; got != want {
		t.Errorf("kubectl get lbpair columns = %q, want %q\n%s", got, want, out)
	}
	if !strings.Contains(out, "198.18.0.100") || !strings.Contains(out, "web") || !strings.Contains(out, "api") {
		t.Errorf("kubectl get lbpair does not list the samples:\n%s", out)
	}
	wide := mustKubectl(t, "", "get", "lbpairs", "-n", "samples", "-o", "wide")
	if header := strings.Fields(strings.SplitN(wide, "\n", 2)[0]); !strings.Contains(strings.Join(header, " "), "VRID NODES") {
		t.Errorf("kubectl get lbpair -o wide columns = %v, want VRID and NODES", header)
	}
	// The seed sample got the API's defaults.
	got := mustKubectl(t, "", "get", "lbpair", "web", "-n", "samples", "-o", "jsonpath={.spec.vrrpVersion} {.spec.preempt} {.spec.drainTimeout} {.spec.ports[0].balance}")
	if want := "3 true 30s RoundRobin"; got != want {
		t.Errorf("seed defaults = %q, want %q", got, want)
	}
}

func TestChartLintsAndAppliesWithServerSideDryRun(t *testing.T) {
	helm := filepath.Join(root, "bin", "helm")
	chart := filepath.Join(root, "charts", "lbpair")
	if out, err := exec.Command(helm, "lint", "--strict", chart).CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	for _, values := range [][]string{
		nil,
		{"--set", "watchNamespace=apps", "--set", "metrics.enabled=false", "--set", "replicas=1"},
	} {
		args := append([]string{"template", "lbpair", chart, "--namespace", "lbpair-system"}, values...)
		manifest, err := exec.Command(helm, args...).Output()
		if err != nil {
			t.Fatalf("helm %s: %v", strings.Join(args, " "), err)
		}
		out := mustKubectl(t, string(manifest), "apply", "--server-side", "--dry-run=server", "-n", "lbpair-system", "-f", "-")
		for _, want := range []string{"customresourcedefinition.apiextensions.k8s.io/loadbalancerpairs.lbpair.io", "deployment.apps/lbpair-manager", "clusterrole.rbac.authorization.k8s.io/lbpair-agent"} {
			if !strings.Contains(out, want) {
				t.Errorf("helm template %v applied without %s:\n%s", values, want, out)
			}
		}
	}
}

func TestInstallManifestAppliesWithServerSideDryRun(t *testing.T) {
	manifest, err := os.ReadFile(filepath.Join(root, "dist", "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out := mustKubectl(t, string(manifest), "apply", "--server-side", "--dry-run=server", "-f", "-")
	for _, want := range []string{"namespace/lbpair-system", "deployment.apps/lbpair-manager", "clusterrole.rbac.authorization.k8s.io/lbpair-manager"} {
		if !strings.Contains(out, want) {
			t.Errorf("dist/install.yaml applied without %s:\n%s", want, out)
		}
	}
}
