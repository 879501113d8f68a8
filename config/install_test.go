// Package config holds the install artifacts (CRD, RBAC, kustomize bases,
// samples); its tests check them against a real kube-apiserver the way a
// user meets them: kubectl apply, kubectl get, helm template.
package config

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/lbpair/lbpair/controllers"
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

// namespaces numbers the test namespaces: the apiserver outlives a test, and
// go test -count runs each test again against it.
var namespaces atomic.Int32

// newNamespace creates a namespace named after base for one test.
func newNamespace(t *testing.T, base string) string {
	t.Helper()
	ns := fmt.Sprintf("%s-%d", base, namespaces.Add(1))
	mustKubectl(t, "", "create", "namespace", ns)
	return ns
}

func TestSamplesApplyAndShowThePrinterColumns(t *testing.T) {
	samples := newNamespace(t, "samples")
	mustKubectl(t, "", "apply", "-n", samples, "-k", filepath.Join(root, "config", "samples"))
	out := mustKubectl(t, "", "get", "lbpair", "-n", samples)
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	if got, want := strings.Join(header, " "), "NAME VIP HOLDER READY AGE"; got != want {
		t.Errorf("kubectl get lbpair columns = %q, want %q\n%s", got, want, out)
	}
	if !strings.Contains(out, "198.18.0.100") || !strings.Contains(out, "web") || !strings.Contains(out, "api") {
		t.Errorf("kubectl get lbpair does not list the samples:\n%s", out)
	}
	wide := mustKubectl(t, "", "get", "lbpairs", "-n", samples, "-o", "wide")
	if header := strings.Fields(strings.SplitN(wide, "\n", 2)[0]); !strings.Contains(strings.Join(header, " "), "VRID NODES") {
		t.Errorf("kubectl get lbpair -o wide columns = %v, want VRID and NODES", header)
	}
	// The seed sample got the API's defaults.
	got := mustKubectl(t, "", "get", "lbpair", "web", "-n", samples, "-o", "jsonpath={.spec.vrrpVersion} {.spec.preempt} {.spec.drainTimeout} {.spec.ports[0].balance}")
	if want := "3 true 30s RoundRobin"; got != want {
		t.Errorf("seed defaults = %q, want %q", got, want)
	}
}

func TestChartLintsAndAppliesWithServerSideDryRun(t *testing.T) {
	if out, err := exec.Command(filepath.Join(root, "bin", "helm"), "lint", "--strict", filepath.Join(root, "charts", "lbpair")).CombinedOutput(); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	for _, values := range [][]string{
		nil,
		{"--set", "watchNamespace=apps", "--set", "metrics.enabled=false", "--set", "replicas=1"},
	} {
		manifest := helmTemplate(t, values...)
		objs := parseManifest(t, "helm template", manifest)
		out := mustKubectl(t, string(manifest), "apply", "--server-side", "--dry-run=server", "-n", "lbpair-system", "-f", "-")
		if diff := cmp.Diff(appliedNames(objs), appliedOutput(out)); diff != "" {
			t.Errorf("helm template %v: objects applied (-rendered +applied):\n%s", values, diff)
		}
	}
}

// The chart and config/default install the same objects; only the namespace
// differs: helm install makes it (--create-namespace) or is given one.
func TestChartInstallsWhatConfigDefaultInstalls(t *testing.T) {
	chart := parseManifest(t, "helm template", helmTemplate(t))
	kustomize := parseManifest(t, "kubectl kustomize config/default", kustomizeDefault(t))
	onlyInKustomize := map[string]bool{"Namespace//lbpair-system": true}
	onlyInChart := map[string]bool{}

	keys := func(objs []object, skip map[string]bool) []string {
		var out []string
		for _, o := range objs {
			if k := o.key(); !skip[k] {
				out = append(out, k)
			}
		}
		sort.Strings(out)
		return out
	}
	if diff := cmp.Diff(keys(kustomize, onlyInKustomize), keys(chart, onlyInChart)); diff != "" {
		t.Errorf("kind/namespace/name of the objects (-kubectl kustomize config/default +helm template):\n%s", diff)
	}
	for k := range onlyInKustomize {
		if !slices.Contains(keys(kustomize, nil), k) {
			t.Errorf("%s is listed as only in config/default but is not there", k)
		}
	}

	// helm uninstall must not delete the CRD: that would delete every pair.
	for _, o := range chart {
		if o.Kind == "CustomResourceDefinition" {
			if got, _, _ := unstructured.NestedString(o.Doc, "metadata", "annotations", "helm.sh/resource-policy"); got != "keep" {
				t.Errorf("CRD %s: annotation helm.sh/resource-policy = %q, want keep", o.Name, got)
			}
		}
	}
}

// The chart's Deployment is templated by hack/gen-chart.sh, not copied from
// config/manager: with the default values, it must run the manager as
// config/default does.
func TestChartDeploymentMatchesConfigDefault(t *testing.T) {
	chart := managerDeployment(t, "helm template", parseManifest(t, "helm template", helmTemplate(t)))
	kustomize := managerDeployment(t, "kubectl kustomize config/default", parseManifest(t, "kubectl kustomize config/default", kustomizeDefault(t)))

	// What the manager runs with; the chart adds labels, and an
	// imagePullPolicy when its values give one, which are left out.
	fields := func(d map[string]any) map[string]any {
		pod, _, _ := unstructured.NestedMap(d, "spec", "template", "spec")
		containers, _, _ := unstructured.NestedSlice(pod, "containers")
		out := map[string]any{
			"replicas":                   d["spec"].(map[string]any)["replicas"],
			"selector":                   d["spec"].(map[string]any)["selector"],
			"pod.serviceAccountName":     pod["serviceAccountName"],
			"pod.securityContext":        pod["securityContext"],
			"pod.terminationGracePeriod": pod["terminationGracePeriodSeconds"],
			"pod.nodeSelector":           pod["nodeSelector"],
			"pod.tolerations":            pod["tolerations"],
			"containers":                 len(containers),
		}
		if len(containers) > 0 {
			c := containers[0].(map[string]any)
			for _, f := range []string{"name", "image", "args", "env", "ports", "readinessProbe", "livenessProbe", "resources", "securityContext"} {
				out["container."+f] = c[f]
			}
		}
		return out
	}
	if diff := cmp.Diff(fields(kustomize), fields(chart)); diff != "" {
		t.Errorf("Deployment lbpair-manager (-kubectl kustomize config/default +helm template): hack/gen-chart.sh drifted from config/manager:\n%s", diff)
	}
}

// agentResources in the chart's values reach the manager as
// --agent-resources, in a form the manager reads back to the same values.
func TestChartPassesAgentResourcesToTheManager(t *testing.T) {
	objs := parseManifest(t, "helm template", helmTemplate(t, "--set-json", `agentResources={"requests":{"cpu":"100m","memory":"96Mi"},"limits":{"cpu":"2","memory":"1Gi"}}`))
	containers, _, _ := unstructured.NestedSlice(managerDeployment(t, "helm template", objs), "spec", "template", "spec", "containers")
	var args []any
	if len(containers) == 1 {
		args, _, _ = unstructured.NestedSlice(containers[0].(map[string]any), "args")
	}
	var flag string
	for _, a := range args {
		if s, _ := a.(string); strings.HasPrefix(s, "--agent-resources=") {
			flag = strings.TrimPrefix(s, "--agent-resources=")
		}
	}
	if flag == "" {
		t.Fatalf("the manager's args %v have no --agent-resources", args)
	}
	r, err := controllers.ParseAgentResources(flag)
	if err != nil {
		t.Fatalf("the manager refuses --agent-resources=%s: %v", flag, err)
	}
	got := map[string]string{}
	for name, q := range r.Requests {
		got["requests."+string(name)] = q.String()
	}
	for name, q := range r.Limits {
		got["limits."+string(name)] = q.String()
	}
	want := map[string]string{"requests.cpu": "100m", "requests.memory": "96Mi", "limits.cpu": "2", "limits.memory": "1Gi"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("agent resources (-want +got):\n%s", diff)
	}
}

// The chart's values for the agents reach the manager as its flags, and are not
// passed when empty: agentPriorityClassName as --agent-priority-class, the image's
// pull policy and pull secrets as --agent-image-pull-policy and
// --agent-image-pull-secret (the manager's own pod pulls with the secrets too).
func TestChartPassesAgentSettingsToTheManager(t *testing.T) {
	render := func(set ...string) (flags, secrets []string) {
		objs := parseManifest(t, "helm template", helmTemplate(t, set...))
		spec, _, _ := unstructured.NestedMap(managerDeployment(t, "helm template", objs), "spec", "template", "spec")
		containers, _, _ := unstructured.NestedSlice(spec, "containers")
		if len(containers) == 1 {
			args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
			for _, a := range args {
				if strings.HasPrefix(a, "--agent-priority-class") || strings.HasPrefix(a, "--agent-image-pull") {
					flags = append(flags, a)
				}
			}
		}
		refs, _, _ := unstructured.NestedSlice(spec, "imagePullSecrets")
		for _, r := range refs {
			secrets = append(secrets, r.(map[string]any)["name"].(string))
		}
		return flags, secrets
	}
	for _, tt := range []struct {
		name        string
		set         []string
		wantFlags   []string
		wantSecrets []string
	}{
		{"by default", nil, nil, nil},
		{"a priority class", []string{"--set", "agentPriorityClassName=system-node-critical"},
			[]string{"--agent-priority-class=system-node-critical"}, nil},
		{"pull secrets and policy", []string{"--set", "image.pullSecrets={registry,mirror}", "--set", "image.pullPolicy=Always"},
			[]string{"--agent-image-pull-policy=Always", "--agent-image-pull-secret=registry", "--agent-image-pull-secret=mirror"}, []string{"registry", "mirror"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			flags, secrets := render(tt.set...)
			if !slices.Equal(flags, tt.wantFlags) {
				t.Errorf("the manager's flags are %q, want %q", flags, tt.wantFlags)
			}
			if !slices.Equal(secrets, tt.wantSecrets) {
				t.Errorf("the manager's pull secrets are %q, want %q", secrets, tt.wantSecrets)
			}
		})
	}
}

// Values the chart would render into a manager that runs wrong are refused
// at render time, saying which value; a numeric image tag from --set renders
// as the tag, not as Go's %!s(int64=2).
func TestChartRefusesValuesItWouldRenderWrong(t *testing.T) {
	floatTag := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(floatTag, []byte("image:\n  tag: 1.10\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		set  []string
		want string
	}{
		{"a float image tag", []string{"-f", floatTag}, `image.tag 1.1 is a number in YAML`},
		{"replicas without leader election", []string{"--set", "leaderElection=false"}, "replicas is 2 with leaderElection false"},
		{"the metrics on the probes' port", []string{"--set", "metrics.port=8081"}, "metrics.port 8081 is the manager's health probe port"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"template", "lbpair", filepath.Join(root, "charts", "lbpair"), "--namespace", "lbpair-system"}, tt.set...)
			out, err := exec.Command(filepath.Join(root, "bin", "helm"), args...).CombinedOutput()
			if err == nil {
				t.Errorf("helm template %v renders, want a failure saying %q", tt.set, tt.want)
			} else if !strings.Contains(string(out), tt.want) {
				t.Errorf("helm template %v: %v, want a failure saying %q:\n%s", tt.set, err, tt.want, out)
			}
		})
	}

	for _, set := range [][]string{
		{"--set", "leaderElection=false", "--set", "replicas=1"},
		{"--set", "metrics.enabled=false", "--set", "metrics.port=8081"},
	} {
		parseManifest(t, "helm template", helmTemplate(t, set...))
	}

	spec, _, _ := unstructured.NestedMap(managerDeployment(t, "helm template", parseManifest(t, "helm template", helmTemplate(t, "--set", "image.tag=2"))), "spec", "template", "spec")
	containers, _, _ := unstructured.NestedSlice(spec, "containers")
	if len(containers) != 1 {
		t.Fatalf("the manager's pod has %d containers, want 1", len(containers))
	}
	c := containers[0].(map[string]any)
	env, _, _ := unstructured.NestedSlice(c, "env")
	const want = "ghcr.io/lbpair/lbpair:2"
	if c["image"] != want || len(env) != 1 || env[0].(map[string]any)["value"] != want {
		t.Errorf("with --set image.tag=2, the manager's image is %v and its env %v, want %s in both", c["image"], env, want)
	}
}

func TestInstallManifestAppliesWithServerSideDryRun(t *testing.T) {
	manifest, err := os.ReadFile(filepath.Join(root, "dist", "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	objs := parseManifest(t, "dist/install.yaml", manifest)
	if diff := cmp.Diff(parseManifest(t, "kubectl kustomize config/default", kustomizeDefault(t)), objs); diff != "" {
		t.Errorf("dist/install.yaml is not config/default (-kubectl kustomize config/default +dist/install.yaml): run make manifests\n%s", diff)
	}
	out := mustKubectl(t, string(manifest), "apply", "--server-side", "--dry-run=server", "-f", "-")
	if diff := cmp.Diff(appliedNames(objs), appliedOutput(out)); diff != "" {
		t.Errorf("dist/install.yaml: objects applied (-rendered +applied):\n%s", diff)
	}
}

// object is one document of a manifest.
type object struct {
	Kind, Namespace, Name string
	Doc                   map[string]any
}

func (o object) key() string { return o.Kind + "/" + o.Namespace + "/" + o.Name }

// parseManifest splits a multi-document manifest and parses each document
// strictly: a duplicate key (two objects merged into one document) fails
// the test, where kubectl and helm keep the last value without a word.
func parseManifest(t *testing.T, what string, manifest []byte) []object {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	var out []object
	for i := 0; ; i++ {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: reading document %d: %v", what, i, err)
		}
		var m map[string]any
		if err := yaml.UnmarshalStrict(doc, &m); err != nil {
			t.Errorf("%s: document %d does not parse: %v\n%s", what, i, err, doc)
			continue
		}
		if len(m) == 0 {
			continue // only comments
		}
		u := unstructured.Unstructured{Object: m}
		if u.GetKind() == "" || u.GetName() == "" {
			t.Errorf("%s: document %d has no kind or name:\n%s", what, i, doc)
		}
		out = append(out, object{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName(), Doc: m})
	}
	if len(out) == 0 {
		t.Fatalf("%s: no objects", what)
	}
	return out
}

// managerDeployment is the manager's Deployment among objs.
func managerDeployment(t *testing.T, what string, objs []object) map[string]any {
	t.Helper()
	for _, o := range objs {
		if o.key() == "Deployment/lbpair-system/lbpair-manager" {
			return o.Doc
		}
	}
	t.Fatalf("%s has no Deployment lbpair-system/lbpair-manager", what)
	return nil
}

func helmTemplate(t *testing.T, values ...string) []byte {
	t.Helper()
	args := append([]string{"template", "lbpair", filepath.Join(root, "charts", "lbpair"), "--namespace", "lbpair-system"}, values...)
	out, err := exec.Command(filepath.Join(root, "bin", "helm"), args...).Output()
	if err != nil {
		t.Fatalf("helm %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func kustomizeDefault(t *testing.T) []byte {
	t.Helper()
	out, err := exec.Command(filepath.Join(root, "bin", "kubectl"), "kustomize", filepath.Join(root, "config", "default")).Output()
	if err != nil {
		t.Fatalf("kubectl kustomize config/default: %v", err)
	}
	return out
}

// appliedNames are the objects as kubectl apply names them: kind/name.
func appliedNames(objs []object) []string {
	var out []string
	for _, o := range objs {
		out = append(out, strings.ToLower(o.Kind)+"/"+o.Name)
	}
	sort.Strings(out)
	return out
}

// appliedOutput turns kubectl apply's lines, such as
// "clusterrole.rbac.authorization.k8s.io/lbpair-agent serverside-applied (server dry run)",
// into kind/name.
func appliedOutput(out string) []string {
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		resource, name, _ := strings.Cut(f[0], "/")
		kind, _, _ := strings.Cut(resource, ".")
		names = append(names, kind+"/"+name)
	}
	sort.Strings(names)
	return names
}
