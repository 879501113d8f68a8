package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
	crdyaml "github.com/lbpair/lbpair/config/crd"
)

func TestAgentPodUsesTheRuntimeDefaultSeccompProfile(t *testing.T) {
	ac := desiredDaemonSet(newPair("ns", "web", ptrTo(int32(51)), "198.18.0.100"), 9451, AgentSettings{Image: testImage})
	sc := ac.Spec.Template.Spec.SecurityContext
	if sc == nil || sc.SeccompProfile == nil || ptr.Deref(sc.SeccompProfile.Type, "") != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v, want seccompProfile RuntimeDefault", sc)
	}
}

// foreignDaemonSet creates another controller's DaemonSet under the name of pair's:
// the manager's apply adds a second controller owner, which the apiserver refuses.
func foreignDaemonSet(t *testing.T, ns, pair string) *appsv1.DaemonSet {
	t.Helper()
	ctx := context.Background()
	owner := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "someone-else"}}
	if err := k8s.Create(ctx, owner); err != nil {
		t.Fatal(err)
	}
	podLabels := map[string]string{"app": "someone-else"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: daemonSetName(pair), OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "ConfigMap", Name: owner.Name, UID: owner.UID, Controller: ptr.To(true),
		}}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: podLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/other"}}},
			},
		},
	}
	if err := k8s.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	return ds
}

// A DaemonSet the manager cannot apply shows in the Available condition, not
// only in an Event, and the condition recovers once the apply succeeds.
func TestDaemonSetApplyFailureSetsAvailableFalse(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)

	foreign := foreignDaemonSet(t, ns, "web")
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(211)), "198.18.0.211")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Available=False/ApplyFailed", func() error {
		c := apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionAvailable)
		if c == nil || c.Status != metav1.ConditionFalse || c.Reason != "ApplyFailed" || !strings.HasPrefix(c.Message, "applying DaemonSet "+daemonSetName("web")+": ") {
			return fmt.Errorf("condition Available = %+v", c)
		}
		return nil
	})
	if _, ok := eventReasons(t, ns, "web")["ApplyFailed"]; !ok {
		t.Error("no ApplyFailed Event")
	}

	// The other DaemonSet goes; the next reconcile (an edit of the pair
	// makes one at once, a retry of the failed one may come first) creates
	// the agents' DaemonSet.
	if err := k8s.Delete(ctx, foreign, client.PropagationPolicy(metav1.DeletePropagationBackground)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the foreign DaemonSet gone", func() error {
		ds, err := getDaemonSet(ns, "web")
		switch {
		case apierrors.IsNotFound(err):
			return nil
		case err != nil:
			return err
		case ds.UID == foreign.UID:
			return errors.New("still there")
		}
		return nil // already replaced by the manager's
	})
	p := getPair(t, ns, "web")
	patch := client.MergeFrom(p.DeepCopy())
	p.Annotations = map[string]string{"test": "poke"}
	if err := k8s.Patch(ctx, p, patch); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Available recovered", func() error {
		c := apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionAvailable)
		if c == nil || c.Reason == "ApplyFailed" {
			return fmt.Errorf("condition Available = %+v", c)
		}
		return nil
	})
	ds, err := getDaemonSet(ns, "web")
	if err != nil {
		t.Fatal(err)
	}
	if sc := ds.Spec.Template.Spec.SecurityContext; sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("agents' pod securityContext = %+v, want seccompProfile RuntimeDefault", sc)
	}
	if ds.Spec.Template.Labels[PairLabel] != "web" {
		t.Errorf("DaemonSet %s is not the manager's: pod labels %v", ds.Name, ds.Spec.Template.Labels)
	}
}

// Agents select their peers by lbv1.PairLabel = lbv1.PairLabelValue(pair):
// the pods must carry exactly that, long names included.
func TestAgentPodsCarryThePairLabelAgentsSelect(t *testing.T) {
	for _, name := range []string{"web", strings.Repeat("a", 63), strings.Repeat("b", 100)} {
		got := podLabels(newPair("ns", name, nil, "198.18.0.100"))[lbv1.PairLabel]
		if want := lbv1.PairLabelValue(name); got != want || len(got) > 63 {
			t.Errorf("pair %q: pod label %s = %q, want %q (at most 63 characters)", name, lbv1.PairLabel, got, want)
		}
	}
}

func TestParseAgentResources(t *testing.T) {
	got, err := ParseAgentResources("")
	if err != nil || !equality.Semantic.DeepEqual(got, DefaultAgentResources()) {
		t.Errorf(`ParseAgentResources("") = %+v, %v; want the defaults`, got, err)
	}
	got, err = ParseAgentResources(`{"requests":{"cpu":"250m","memory":"128Mi"},"limits":{"cpu":"2","memory":"1Gi"}}`)
	if err != nil {
		t.Fatal(err)
	}
	if q := got.Requests[corev1.ResourceCPU]; q.MilliValue() != 250 {
		t.Errorf("requests.cpu = %s, want 250m", q.String())
	}
	if q := got.Limits[corev1.ResourceMemory]; q.Value() != 1<<30 {
		t.Errorf("limits.memory = %s, want 1Gi", q.String())
	}
	for in, want := range map[string]string{
		`{"requests":{"cpu":"2"},"limits":{"cpu":"1"}}`: "requests.cpu (2) is above limits.cpu (1)",
		`{"requests":{"memory":"-1Mi"}}`:                "requests.memory is negative",
		`{"request":{"cpu":"1"}}`:                       `unknown field "request"`,
		`{"limits":{"cpu":"lots"}}`:                     "want JSON such as",
		`{"limits":{}} {}`:                              "want one JSON object",
	} {
		if _, err := ParseAgentResources(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAgentResources(%s) = %v, want an error containing %q", in, err, want)
		}
	}
}

// TestPodSecurityThatForbidsTheAgentsIsReported: in a namespace that enforces the
// baseline Pod Security level, the apiserver refuses the agents' pods, which only the
// DaemonSet's events would say. Available says why, and how to allow them; a namespace
// that allows privileged pods gets no such hint.
func TestPodSecurityThatForbidsTheAgentsIsReported(t *testing.T) {
	ctx := context.Background()
	available := func(ns, level string, vrid int32, vip string) *metav1.Condition {
		t.Helper()
		var n corev1.Namespace
		if err := k8s.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
			t.Fatal(err)
		}
		n.Labels[podSecurityEnforce] = level
		if err := k8s.Update(ctx, &n); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(vrid), vip)); err != nil {
			t.Fatal(err)
		}
		var c *metav1.Condition
		eventually(t, "Available reported", func() error {
			if c = apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionAvailable); c == nil {
				return errors.New("no Available condition")
			}
			return nil
		})
		return c
	}

	baseline := newNamespace(t)
	c := available(baseline, "baseline", 62, "198.18.0.162")
	ds, err := getDaemonSet(baseline, "web")
	if err != nil {
		t.Fatal(err)
	}
	// The premise: the apiserver refuses a pod of the DaemonSet's template there.
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: baseline, Name: "agent"}, Spec: ds.Spec.Template.Spec}
	pod.Spec.NodeName = "lb1"
	if err := k8s.Create(ctx, pod, client.DryRunAll); err == nil || !strings.Contains(err.Error(), `violates PodSecurity "baseline`) {
		t.Fatalf("creating an agent pod in a baseline namespace: %v, want a Pod Security refusal", err)
	}
	if c.Status != metav1.ConditionFalse || c.Reason != "PodSecurity" || !strings.Contains(c.Message, podSecurityEnforce+"=privileged") {
		t.Errorf("Available in a baseline namespace: %s %s %q, want False PodSecurity naming the label to set", c.Status, c.Reason, c.Message)
	}

	privileged := newNamespace(t)
	if c := available(privileged, "privileged", 63, "198.18.0.163"); c.Reason == "PodSecurity" {
		t.Errorf("Available in a privileged namespace: %s %q, want no Pod Security hint", c.Reason, c.Message)
	}
}

func TestRunsAgentOn(t *testing.T) {
	pair := newPair("ns", "web", ptrTo(int32(51)), "198.18.0.100")
	pair.Spec.NodeSelector = map[string]string{"lbpair.io/lb": "true"}
	pair.Spec.Tolerations = []corev1.Toleration{
		{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "lb", Effect: corev1.TaintEffectNoSchedule},
		{Key: "maintenance", Operator: corev1.TolerationOpExists},
	}
	node := func(lb bool, taints ...corev1.Taint) *corev1.Node {
		n := &corev1.Node{Spec: corev1.NodeSpec{Taints: taints}}
		if lb {
			n.Labels = map[string]string{"lbpair.io/lb": "true"}
		}
		return n
	}
	taint := func(key, value string, effect corev1.TaintEffect) corev1.Taint {
		return corev1.Taint{Key: key, Value: value, Effect: effect}
	}
	excluded := node(true)
	excluded.Labels[corev1.LabelNodeExcludeBalancers] = ""
	for _, tt := range []struct {
		name string
		node *corev1.Node
		want bool
	}{
		{"selected, no taints", node(true), true},
		{"not selected", node(false), false},
		{"a taint the pair tolerates", node(true, taint("dedicated", "lb", corev1.TaintEffectNoSchedule)), true},
		{"a taint with another value", node(true, taint("dedicated", "db", corev1.TaintEffectNoSchedule)), false},
		{"a NoExecute taint tolerated by Exists", node(true, taint("maintenance", "", corev1.TaintEffectNoExecute)), true},
		{"an untolerated NoExecute taint", node(true, taint("gpu", "", corev1.TaintEffectNoExecute)), false},
		{"PreferNoSchedule keeps no pod off", node(true, taint("gpu", "", corev1.TaintEffectPreferNoSchedule)), true},
		{"a node condition's taint, which DaemonSets tolerate", node(true, taint("node.kubernetes.io/unschedulable", "", corev1.TaintEffectNoSchedule)), true},
		{"excluded from load balancers, which the node affinity keeps out", excluded, false},
	} {
		if got := runsAgentOn(pair, tt.node); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestTooManyNodes(t *testing.T) {
	nodes := make([]corev1.Node, lbv1.MaxAgents+1)
	for i := range nodes {
		nodes[i].Labels = map[string]string{"lbpair.io/lb": "true"}
	}
	pair := newPair("ns", "web", ptrTo(int32(51)), "198.18.0.100")
	pair.Spec.NodeSelector = map[string]string{"lbpair.io/lb": "true"}
	if msg := tooManyNodes(pair, nodes[:lbv1.MaxAgents]); msg != "" {
		t.Errorf("%d nodes: %q, want none too many", lbv1.MaxAgents, msg)
	}
	// A node whose taint the pair does not tolerate runs no agent.
	nodes[0].Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}}
	if msg := tooManyNodes(pair, nodes); msg != "" {
		t.Errorf("%d nodes of which one is tainted: %q, want none too many", len(nodes), msg)
	}
	nodes[0].Spec.Taints = nil
	// Nor does one excluded from load balancers (the DaemonSet's affinity).
	nodes[1].Labels[corev1.LabelNodeExcludeBalancers] = "true"
	if msg := tooManyNodes(pair, nodes); msg != "" {
		t.Errorf("%d nodes of which one is excluded from load balancers: %q, want none too many", len(nodes), msg)
	}
	delete(nodes[1].Labels, corev1.LabelNodeExcludeBalancers)
	pair.Spec.NodeSelector = nil
	if msg := tooManyNodes(pair, nodes); !strings.Contains(msg, "spec.nodeSelector is empty, so it selects 65 nodes") || !strings.Contains(msg, "at most 64") {
		t.Errorf("65 nodes and no selector: %q, want the count, the limit and the field to set", msg)
	}
}

// The limit is the CRD's: status.agents holds at most MaxAgents entries.
func TestMaxAgentsIsTheCRDsLimit(t *testing.T) {
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(crdyaml.LoadBalancerPair, &crd); err != nil {
		t.Fatal(err)
	}
	agents := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["status"].Properties["agents"]
	if agents.MaxItems == nil || *agents.MaxItems != lbv1.MaxAgents {
		t.Errorf("status.agents maxItems %v, want MaxAgents (%d)", agents.MaxItems, lbv1.MaxAgents)
	}
}

// TestTooManyNodesIsRefused: a pair whose nodeSelector takes in more nodes than a pair
// runs on (an empty one, on a large cluster) is not started: no VRID, no DaemonSet,
// Available names the field, and an Event says so. Narrowed, it starts.
func TestTooManyNodesIsRefused(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	many, few := "lbpair.io/test-many-"+ns, "lbpair.io/test-few-"+ns
	for i := range lbv1.MaxAgents + 1 {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-n%d", ns, i), Labels: map[string]string{many: "true"}}}
		if i < 2 {
			node.Labels[few] = "true"
		}
		if err := k8s.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), node) })
	}
	p := newPair(ns, "web", nil, "198.18.0.164")
	p.Spec.NodeSelector = map[string]string{many: "true"}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Available says too many nodes", func() error {
		c := apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionAvailable)
		if c == nil || c.Reason != "TooManyNodes" || !strings.Contains(c.Message, "selects 65 nodes") || !strings.Contains(c.Message, "spec.nodeSelector") {
			return fmt.Errorf("Available is %+v", c)
		}
		return nil
	})
	if notes := eventNotes(t, ns, "web", "TooManyNodes"); len(notes) != 1 {
		t.Errorf("TooManyNodes Events: %q, want one", notes)
	}
	if _, err := getDaemonSet(ns, "web"); !apierrors.IsNotFound(err) {
		t.Errorf("the pair's DaemonSet: %v, want none", err)
	}
	if vrid := getPair(t, ns, "web").Status.VirtualRouterID; vrid != 0 {
		t.Errorf("a VRID (%d) was allocated to a pair that does not start", vrid)
	}

	updatePair(t, ns, "web", func(p *lbv1.LoadBalancerPair) { p.Spec.NodeSelector = map[string]string{few: "true"} })
	eventually(t, "DaemonSet once narrowed", func() error { _, err := getDaemonSet(ns, "web"); return err })
}

// TestAgentPriorityClass: a priority class set for the agents reaches their pods, and
// the apiserver admits such a pod in a pair's namespace with the class's priority
// (system-node-critical outside kube-system too), or refuses a class that does not exist.
func TestAgentPriorityClass(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	pod := func(class string) *corev1.Pod {
		ac := desiredDaemonSet(newPair(ns, "web", ptrTo(int32(51)), "198.18.0.100"), 9451, AgentSettings{Image: testImage, PriorityClassName: class})
		b, err := json.Marshal(ac.Spec.Template.Spec)
		if err != nil {
			t.Fatal(err)
		}
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "agent"}}
		if err := json.Unmarshal(b, &p.Spec); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := pod(""); p.Spec.PriorityClassName != "" {
		t.Errorf("priority class %q with none set", p.Spec.PriorityClassName)
	}
	p := pod("system-node-critical")
	if err := k8s.Create(ctx, p, client.DryRunAll); err != nil {
		t.Fatalf("an agent pod of priority class system-node-critical in %s: %v", ns, err)
	}
	if p.Spec.PriorityClassName != "system-node-critical" || ptr.Deref(p.Spec.Priority, 0) != 2000001000 {
		t.Errorf("admitted with class %q, priority %v; want system-node-critical, 2000001000", p.Spec.PriorityClassName, ptr.Deref(p.Spec.Priority, 0))
	}
	if err := k8s.Create(ctx, pod("no-such-class"), client.DryRunAll); err == nil || !strings.Contains(err.Error(), "no-such-class") {
		t.Errorf("an agent pod of a priority class that does not exist: %v, want a refusal naming it", err)
	}
}

// TestAgentImagePullSecrets: pull secrets set for the agents reach their pods; none set
// leaves the template as it was, so that an upgrade of the manager rolls no agent.
func TestAgentImagePullSecrets(t *testing.T) {
	pair := newPair("ns", "web", ptrTo(int32(51)), "198.18.0.100")
	b, err := json.Marshal(desiredDaemonSet(pair, 9451, AgentSettings{Image: testImage}).Spec.Template.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "imagePullSecrets") {
		t.Errorf("imagePullSecrets in the pod spec with none set: %s", b)
	}
	spec := desiredDaemonSet(pair, 9451, AgentSettings{Image: testImage, ImagePullSecrets: []string{"registry", "mirror"}}).Spec.Template.Spec
	var got []string
	for _, r := range spec.ImagePullSecrets {
		got = append(got, ptr.Deref(r.Name, ""))
	}
	if want := []string{"registry", "mirror"}; !slices.Equal(got, want) {
		t.Errorf("imagePullSecrets %v, want %v", got, want)
	}
}

// TestStatusFollowsTheAgentsWhileTheApplyFails: the agents run on the DaemonSet
// applied before and fail over while an apply fails; the status follows them, and the
// failure is one Event, not one for each reconcile that each agent's write brings.
func TestStatusFollowsTheAgentsWhileTheApplyFails(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	foreignDaemonSet(t, ns, "web")
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(212)), "198.18.0.212")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Available=False/ApplyFailed", func() error {
		if c := apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionAvailable); c == nil || c.Reason != "ApplyFailed" {
			return fmt.Errorf("condition Available = %+v", c)
		}
		return nil
	})
	now := metav1.NewMicroTime(time.Now())
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: "lb1", State: lbv1.StateMaster, Priority: 100, Since: now, LastUpdateTime: now})
	eventually(t, "the holder while the apply fails", func() error {
		if h := getPair(t, ns, "web").Status.Holder; h != "lb1" {
			return fmt.Errorf("holder %q, want lb1", h)
		}
		return nil
	})

	// Reconciles of their own, with a recorder of their own: the failure was
	// reported already.
	rec := events.NewFakeRecorder(100)
	r := &LoadBalancerPairReconciler{Client: k8s, Recorder: rec, Agent: AgentSettings{Image: testImage, Resources: DefaultAgentResources()}}
	for range 3 {
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "web"}}); err == nil {
			t.Fatal("a reconcile applied the DaemonSet over another controller's")
		}
	}
	close(rec.Events)
	var failed []string
	for e := range rec.Events {
		if strings.Contains(e, "ApplyFailed") {
			failed = append(failed, e)
		}
	}
	if len(failed) > 0 {
		t.Errorf("%d ApplyFailed Events for a failure already reported: %q", len(failed), failed)
	}
}

// updatesToNextImage reconciles a pair once as a manager with the next agent image,
// and tells whether that applied the pair's DaemonSet, with the Events it recorded.
// The suite's manager puts its own image back afterwards, so the Event is what tells.
func updatesToNextImage(t *testing.T, ns, name string) (bool, []string) {
	t.Helper()
	rec := events.NewFakeRecorder(100)
	next := &LoadBalancerPairReconciler{Client: k8s, Recorder: rec,
		Agent: AgentSettings{Image: testImage + "-next", Resources: DefaultAgentResources()}}
	if _, err := next.Reconcile(context.Background(), ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}}); err != nil {
		t.Fatal(err)
	}
	close(rec.Events)
	var notes []string
	for e := range rec.Events {
		notes = append(notes, e)
	}
	return slices.Contains(notes, "Normal Updated updated DaemonSet "+daemonSetName(name)), notes
}
