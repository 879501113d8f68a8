package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

func TestAgentPodUsesTheRuntimeDefaultSeccompProfile(t *testing.T) {
	ac := desiredDaemonSet(newPair("ns", "web", ptrTo(int32(51)), "198.18.0.100"), 9451, AgentSettings{Image: testImage})
	sc := ac.Spec.Template.Spec.SecurityContext
	if sc == nil || sc.SeccompProfile == nil || ptr.Deref(sc.SeccompProfile.Type, "") != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v, want seccompProfile RuntimeDefault", sc)
	}
}

// A DaemonSet the manager cannot apply shows in the Available condition, not
// only in an Event, and the condition recovers once the apply succeeds.
func TestDaemonSetApplyFailureSetsAvailableFalse(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)

	// Another controller's DaemonSet under the pair's DaemonSet name: the
	// manager's apply adds a second controller owner, which the apiserver
	// refuses.
	owner := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "someone-else"}}
	if err := k8s.Create(ctx, owner); err != nil {
		t.Fatal(err)
	}
	podLabels := map[string]string{"app": "someone-else"}
	foreign := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: daemonSetName("web"), OwnerReferences: []metav1.OwnerReference{{
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
	if err := k8s.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
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
