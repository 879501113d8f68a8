package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/lbpair/lbpair/agent/config"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// The manager tells which priority labels the agents ignore by the agents'
// own rule and defaults: it warns of exactly the labels the agents warn of.
func TestIgnoredPriorityLabelIsTheAgents(t *testing.T) {
	var pair lbv1.LoadBalancerPair
	if err := config.Default(&pair); err != nil {
		t.Fatal(err)
	}
	if got := prioritySpec(&lbv1.LoadBalancerPair{}); *pair.Spec.Priority != got {
		t.Errorf("spec.priority of a pair without one: %+v; the agents' is %+v", got, *pair.Spec.Priority)
	}
	for _, v := range []string{"", "0", "1", "100", "+100", "0100", " 100", "1e2", "100.0", "-1", "254", "255", "256", "high", "99999999999999999999"} {
		pair := &lbv1.LoadBalancerPair{Spec: lbv1.LoadBalancerPairSpec{VirtualIPs: []string{"198.18.0.10"}, VirtualRouterID: ptrTo(int32(10))}}
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "lb1", Labels: map[string]string{"lbpair.io/priority": v}}}
		s, err := config.Build(context.Background(), config.Inputs{Pair: pair, Node: node})
		if err != nil {
			t.Fatal(err)
		}
		_, ignored := ignoredPriorityLabel(prioritySpec(pair), node)
		if agent := len(s.Warnings) > 0; ignored != agent {
			t.Errorf("label value %q: the manager says ignored %v, the agent's warnings are %q", v, ignored, s.Warnings)
		}
	}
}

// TestIgnoredPriorityLabelIsAWarningEvent: a node of the pair whose priority label is
// not a priority (keepalived's 255, or a word) gets one Warning Event naming the node,
// the label, its value, the valid range and the priority the agent runs at instead, and
// Degraded names it; not one Event at every reconcile, nor any for a valid value. A new
// value is a new Event; a fixed one clears Degraded.
func TestIgnoredPriorityLabelIsAWarningEvent(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	// A label of this test's own, so that the pairs of other tests, which
	// may select every node, read no priority from it.
	sel, prio := "lbpair.io/test-"+ns, "lbpair.io/test-priority-"+ns
	lb1, lb2 := ns+"-lb1", ns+"-lb2"
	for name, v := range map[string]string{lb1: "255", lb2: "150"} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{sel: "true", prio: v}}}
		if err := k8s.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), node) })
	}
	p := newPair(ns, "web", ptrTo(int32(131)), "198.18.0.131")
	p.Spec.NodeSelector = map[string]string{sel: "true"}
	p.Spec.Priority = &lbv1.PrioritySpec{Default: 90, NodeLabel: prio}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("node %s label %s=%q is not a priority from 1 to 254; its agent runs at spec.priority.default 90", lb1, prio, "255")
	eventually(t, "Degraded names the ignored label", func() error {
		c := apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionDegraded)
		if c == nil || !strings.Contains(c.Message, fmt.Sprintf("priority label %s is not a priority from 1 to 254 on %s (%q), whose agents run at spec.priority.default 90", prio, lb1, "255")) {
			return fmt.Errorf("Degraded is %+v", c)
		}
		return nil
	})
	eventually(t, "the suite manager's Event", func() error {
		if notes := eventNotes(t, ns, "web", "InvalidPriorityLabel"); len(notes) != 1 || notes[0] != want {
			return fmt.Errorf("InvalidPriorityLabel Events %q, want %q", notes, want)
		}
		return nil
	})

	// Reconciles of their own, with a recorder of their own, as each status
	// write of an agent brings.
	rec := events.NewFakeRecorder(100)
	r := &LoadBalancerPairReconciler{Client: k8s, Recorder: rec, Agent: AgentSettings{Image: testImage, Resources: DefaultAgentResources()}}
	reconcile := func(times int) []string {
		t.Helper()
		for range times {
			if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "web"}}); err != nil {
				t.Fatal(err)
			}
		}
		var out []string
		for len(rec.Events) > 0 {
			if e := <-rec.Events; strings.Contains(e, "InvalidPriorityLabel") {
				out = append(out, e)
			}
		}
		return out
	}
	if got := reconcile(3); len(got) != 1 || got[0] != "Warning InvalidPriorityLabel "+want {
		t.Errorf("InvalidPriorityLabel Events of 3 reconciles: %q, want one: %q", got, want)
	}

	setLabel := func(v string) {
		t.Helper()
		var n corev1.Node
		if err := k8s.Get(ctx, types.NamespacedName{Name: lb1}, &n); err != nil {
			t.Fatal(err)
		}
		n.Labels[prio] = v
		// r reads the nodes from the apiserver, not from a cache.
		if err := k8s.Update(ctx, &n); err != nil {
			t.Fatal(err)
		}
	}
	setLabel("high")
	wantHigh := fmt.Sprintf("Warning InvalidPriorityLabel node %s label %s=%q is not a priority from 1 to 254; its agent runs at spec.priority.default 90", lb1, prio, "high")
	if got := reconcile(3); len(got) != 1 || got[0] != wantHigh {
		t.Errorf("InvalidPriorityLabel Events of 3 reconciles after the value changed: %q, want one: %q", got, wantHigh)
	}

	setLabel("200")
	if got := reconcile(2); len(got) != 0 {
		t.Errorf("InvalidPriorityLabel Events with valid values: %q", got)
	}
	// The suite's manager may write what its cache saw before.
	eventually(t, "Degraded without the label once valid", func() error {
		if c := apimeta.FindStatusCondition(getPair(t, ns, "web").Status.Conditions, lbv1.ConditionDegraded); c == nil || strings.Contains(c.Message, "priority label") {
			return fmt.Errorf("Degraded is %+v", c)
		}
		return nil
	})
}
