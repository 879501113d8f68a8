package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// reportAgent writes one agent's entry the way agents do: server-side apply
// of status.agents with a field manager per node.
func reportAgent(t *testing.T, ns, pair string, e lbv1.AgentStatus) {
	t.Helper()
	item, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&e)
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": lbv1.GroupVersion.String(),
		"kind":       "LoadBalancerPair",
		"metadata":   map[string]any{"name": pair, "namespace": ns},
		"status":     map[string]any{"agents": []any{item}},
	}}
	if err := k8s.Status().Apply(context.Background(), client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("lbpair-agent/"+e.Node), client.ForceOwnership); err != nil {
		t.Fatalf("applying %s's entry: %v", e.Node, err)
	}
}

func conditionReasons(p *lbv1.LoadBalancerPair) map[string]string {
	out := map[string]string{}
	for _, c := range p.Status.Conditions {
		out[c.Type] = string(c.Status) + "/" + c.Reason
	}
	return out
}

func TestStatusFollowsTheAgents(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	label := "lbpair.io/test-" + ns
	for _, n := range []string{ns + "-lb1", ns + "-lb2"} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{label: "true"}}}
		if err := k8s.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), node) })
	}
	lb1, lb2 := ns+"-lb1", ns+"-lb2"
	p := newPair(ns, "web", ptrTo(int32(70)), "198.18.0.100")
	p.Spec.NodeSelector = map[string]string{label: "true"}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, "first reconcile", func() error {
		if getPair(t, ns, "web").Status.ObservedGeneration == 0 {
			return errors.New("not reconciled yet")
		}
		return nil
	})

	now := metav1.NewTime(time.Now().Truncate(time.Second))
	micro := metav1.NewMicroTime(now.Time)
	up := lbv1.PortStatus{Name: "http", HealthyBackends: 2, Backends: 2}
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb1, State: lbv1.StateMaster, Priority: 100, Since: micro, LastUpdateTime: micro, Reason: "preempted a lower priority master", Ports: []lbv1.PortStatus{up}})
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb2, State: lbv1.StateBackup, Priority: 90, Since: micro, LastUpdateTime: micro, Ports: []lbv1.PortStatus{up}})
	eventually(t, "holder and Ready", func() error {
		p := getPair(t, ns, "web")
		want := map[string]string{"Ready": "True/Serving", "Degraded": "False/AllHealthy", "SplitBrain": "False/OneMaster"}
		got := conditionReasons(p)
		for k, v := range want {
			if got[k] != v {
				return fmt.Errorf("holder %q conditions %v", p.Status.Holder, got)
			}
		}
		if p.Status.Holder != lb1 || p.Status.HolderSince == nil || !p.Status.HolderSince.Equal(&now) {
			return fmt.Errorf("holder %q since %v", p.Status.Holder, p.Status.HolderSince)
		}
		return nil
	})

	// lb2 stops hearing lb1 and takes the VIPs too, while lb1 keeps reporting: split
	// brain, with an Event, and lb2, the newer master, is named the holder.
	takeover := metav1.NewMicroTime(micro.Add(time.Second))
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb2, State: lbv1.StateMaster, Priority: 90, Since: takeover, LastUpdateTime: takeover, Reason: "master down timer expired", Ports: []lbv1.PortStatus{up}})
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb1, State: lbv1.StateMaster, Priority: 100, Since: micro, LastUpdateTime: metav1.NewMicroTime(micro.Add(2 * time.Second)), Reason: "preempted a lower priority master", Ports: []lbv1.PortStatus{up}})
	eventually(t, "split brain", func() error {
		p := getPair(t, ns, "web")
		if c := apimeta.FindStatusCondition(p.Status.Conditions, lbv1.ConditionSplitBrain); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("SplitBrain %+v", c)
		}
		if p.Status.Holder != lb2 {
			return fmt.Errorf("holder %q", p.Status.Holder)
		}
		if _, ok := eventReasons(t, ns, "web")["SplitBrain"]; !ok {
			return errors.New("no SplitBrain event")
		}
		return nil
	})
	if note, ok := eventReasons(t, ns, "web")["Failover"]; !ok || note != fmt.Sprintf("virtual IPs moved from %s to %s: master down timer expired", lb1, lb2) {
		t.Errorf("Failover event %q (present %v)", note, ok)
	}

	// lb1 stops reporting while lb2 goes on. A reconciler whose clock runs more
	// than AgentStaleAfter ahead (the time passing, without the wait) has seen both
	// entries, as the manager has, and then only lb2's change: lb1's entry is
	// removed, and lb2 is the only master.
	var ahead time.Duration
	later := &LoadBalancerPairReconciler{Client: k8s, Recorder: testRecorder,
		Agent: AgentSettings{Image: testImage, Resources: DefaultAgentResources()},
		Now:   func() time.Time { return time.Now().Add(ahead) }}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "web"}}
	if _, err := later.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	ahead = AgentStaleAfter + time.Minute
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb2, State: lbv1.StateMaster, Priority: 90, Since: takeover, LastUpdateTime: metav1.NewMicroTime(time.Now()), Reason: "master down timer expired", Ports: []lbv1.PortStatus{up}})
	eventually(t, "lb1's stale entry removed", func() error {
		if _, err := later.Reconcile(ctx, req); err != nil {
			return err
		}
		p := getPair(t, ns, "web")
		if p.Status.Holder != lb2 {
			return fmt.Errorf("holder %q", p.Status.Holder)
		}
		if len(p.Status.Agents) != 1 || p.Status.Agents[0].Node != lb2 {
			return fmt.Errorf("agents %+v, want only %s", p.Status.Agents, lb2)
		}
		got := conditionReasons(p)
		if got["SplitBrain"] != "False/OneMaster" || got["Degraded"] != "True/Degraded" {
			return fmt.Errorf("conditions %v", got)
		}
		return nil
	})
	if _, ok := eventReasons(t, ns, "web")["AgentGone"]; !ok {
		t.Errorf("no AgentGone event")
	}

	// lb1 is taken out of load balancing for maintenance: no agent is due
	// there, so lb2 alone is not a degraded pair. (Without a DaemonSet
	// controller, the manager counts the nodes itself.)
	var node corev1.Node
	if err := k8s.Get(ctx, client.ObjectKey{Name: lb1}, &node); err != nil {
		t.Fatal(err)
	}
	node.Labels[corev1.LabelNodeExcludeBalancers] = "true"
	if err := k8s.Update(ctx, &node); err != nil {
		t.Fatal(err)
	}
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb2, State: lbv1.StateMaster, Priority: 90, Since: micro, LastUpdateTime: metav1.NewMicroTime(time.Now()), Ports: []lbv1.PortStatus{up}})
	eventually(t, "not degraded with lb1 excluded", func() error {
		if got := conditionReasons(getPair(t, ns, "web")); got["Degraded"] != "False/AllHealthy" {
			return fmt.Errorf("conditions %v", got)
		}
		return nil
	})
}

// A master that fails reports Fault before the backup reports Master: the
// status passes through no holder, and the Event for the new holder still
// names the old one.
func TestFailoverThroughNoHolderNamesBothHolders(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	p := newPair(ns, "web", ptrTo(int32(71)), "198.18.0.101")
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	lb1, lb2 := ns+"-lb1", ns+"-lb2"
	micro := metav1.NewMicroTime(time.Now())
	up := lbv1.PortStatus{Name: "http", HealthyBackends: 1, Backends: 1}
	holderIs := func(want string) func() error {
		return func() error {
			if got := getPair(t, ns, "web").Status.Holder; got != want {
				return fmt.Errorf("holder %q, want %q", got, want)
			}
			return nil
		}
	}
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb1, State: lbv1.StateMaster, Priority: 100, Since: micro, LastUpdateTime: micro, Ports: []lbv1.PortStatus{up}})
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb2, State: lbv1.StateBackup, Priority: 90, Since: micro, LastUpdateTime: micro, Ports: []lbv1.PortStatus{up}})
	eventually(t, "lb1 holds", holderIs(lb1))

	later := metav1.NewMicroTime(micro.Add(time.Second))
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb1, State: lbv1.StateFault, Since: later, LastUpdateTime: later, Reason: "proxy: no healthy backend"})
	eventually(t, "no holder", holderIs(""))

	latest := metav1.NewMicroTime(micro.Add(2 * time.Second))
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: lb2, State: lbv1.StateMaster, Priority: 90, Since: latest, LastUpdateTime: latest, Reason: "the master left (priority 0)", Ports: []lbv1.PortStatus{up}})
	eventually(t, "lb2 holds", holderIs(lb2))
	eventually(t, "a Failover event naming both", func() error {
		ev := eventReasons(t, ns, "web")
		want := fmt.Sprintf("virtual IPs moved from %s to %s: the master left (priority 0)", lb1, lb2)
		if ev["Failover"] != want {
			return fmt.Errorf("Failover event %q, want %q (events %v)", ev["Failover"], want, ev)
		}
		return nil
	})
}

// TestStaleEntryRemovalSparesAFreshOne: the manager decides from its cached
// copy that an agent's entry is stale; the agent writes a fresh one before
// the removal lands (back from its outage, or a cache that lags): the fresh
// entry stays.
func TestStaleEntryRemovalSparesAFreshOne(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(62)), "198.18.0.100")); err != nil {
		t.Fatal(err)
	}
	// Not stale by the clock, so that the suite's manager leaves it alone:
	// removeAgentEntries removes what it is given.
	old := metav1.NewMicroTime(time.Now().Add(-time.Second).Truncate(time.Microsecond))
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: "lb1", State: lbv1.StateBackup, Priority: 90, Since: old, LastUpdateTime: old})
	stale := getPair(t, ns, "web")
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: "lb1", State: lbv1.StateBackup, Priority: 90, Since: old, LastUpdateTime: metav1.NewMicroTime(time.Now())})

	r := &LoadBalancerPairReconciler{Client: k8s, Recorder: testRecorder}
	if err := r.removeAgentEntries(ctx, stale, []string{"lb1"}); err == nil {
		t.Error("removing the entry found stale succeeded, though the agent wrote a fresh one since")
	}
	if p := getPair(t, ns, "web"); len(p.Status.Agents) != 1 {
		t.Errorf("agents %+v after the removal, want lb1's fresh entry", p.Status.Agents)
	}
	// The entry as it is now, stale or not, is removed.
	if err := r.removeAgentEntries(ctx, getPair(t, ns, "web"), []string{"lb1"}); err != nil {
		t.Fatal(err)
	}
	if p := getPair(t, ns, "web"); len(p.Status.Agents) != 0 {
		t.Errorf("agents %+v, want none", p.Status.Agents)
	}
}
