package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// portPair is a pair for the port checks: vrid is its spec's (0 for none),
// running its status.agentPort (0 when its agents do not run), ports its
// spec.ports, on the nodes labelled role=on.
func portPair(name, vip string, vrid, running int32, on string, ports ...int32) *lbv1.LoadBalancerPair {
	p := &lbv1.LoadBalancerPair{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(name),
		CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))}}
	p.Spec.VirtualIPs = []string{vip}
	if vrid != 0 {
		p.Spec.VirtualRouterID = &vrid
		if running != 0 {
			p.Status.VirtualRouterID = vrid
		}
	}
	p.Status.AgentPort = running
	p.Spec.NodeSelector = map[string]string{"role": on}
	for i, port := range ports {
		p.Spec.Ports = append(p.Spec.Ports, lbv1.PortSpec{Name: fmt.Sprint("p", i), Port: port})
	}
	return p
}

func TestDecideVRIDSkipsAgentPortsInUse(t *testing.T) {
	explicit := func(p *lbv1.LoadBalancerPair, port int32) *lbv1.LoadBalancerPair {
		p.Spec.AgentPort = &port
		return p
	}
	for _, tt := range []struct {
		name   string
		self   *lbv1.LoadBalancerPair
		others []*lbv1.LoadBalancerPair
		want   vridDecision
	}{
		{"skips the VRIDs whose agent port the pair proxies", portPair("a", "198.18.0.1", 0, 0, "x", 9401, 9402), nil,
			vridDecision{VRID: 3, Allocated: true}},
		{"skips a port another pair proxies, of either family", portPair("a", "198.18.0.1", 0, 0, "x", 88),
			[]*lbv1.LoadBalancerPair{portPair("b", "fd00::2", 7, 9707, "y", 9401)},
			vridDecision{VRID: 2, Allocated: true}},
		{"skips another pair's explicit agent port", portPair("a", "198.18.0.1", 0, 0, "x", 88),
			[]*lbv1.LoadBalancerPair{explicit(portPair("b", "198.18.0.2", 7, 0, "y", 89), 9401)},
			vridDecision{VRID: 2, Allocated: true}},
		{"skips the agent port another pair runs with", portPair("a", "198.18.0.1", 0, 0, "x", 88),
			[]*lbv1.LoadBalancerPair{portPair("b", "198.18.0.2", 0, 9401, "y", 89)},
			vridDecision{VRID: 2, Allocated: true}},
		{"an explicit agent port leaves the VRID alone", explicit(portPair("a", "198.18.0.1", 0, 0, "x", 9401), 19000), nil,
			vridDecision{VRID: 1, Allocated: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			all := []lbv1.LoadBalancerPair{*tt.self}
			for _, o := range tt.others {
				all = append(all, *o)
			}
			if diff := cmp.Diff(tt.want, decideVRID(tt.self, all)); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
	// A running pair keeps its VRID: moving it would disturb its agents.
	// portConflicts reports the port instead.
	kept := portPair("a", "198.18.0.1", 0, 9401, "x", 9401)
	kept.Status.VirtualRouterID = 1
	if diff := cmp.Diff(vridDecision{VRID: 1, Allocated: true}, decideVRID(kept, []lbv1.LoadBalancerPair{*kept})); diff != "" {
		t.Errorf("a pair allocated VRID 1 that now proxies its agent port (-want +got):\n%s", diff)
	}
}

func TestPortConflicts(t *testing.T) {
	node := func(name string, roles ...string) corev1.Node {
		n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
		for _, r := range roles {
			n.Labels["role"] = r
		}
		return n
	}
	// lb1 runs the pairs of role "shared", lb2 those of role "other".
	nodes := []corev1.Node{node("lb1", "shared"), node("lb2", "other")}
	older := func(p *lbv1.LoadBalancerPair) *lbv1.LoadBalancerPair {
		p.CreationTimestamp = metav1.NewTime(p.CreationTimestamp.Add(-time.Hour))
		return p
	}
	explicit := func(p *lbv1.LoadBalancerPair, port int32) *lbv1.LoadBalancerPair {
		p.Spec.AgentPort = &port
		return p
	}
	inConflict := func(p *lbv1.LoadBalancerPair) *lbv1.LoadBalancerPair {
		apimeta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: lbv1.ConditionPortConflict, Status: metav1.ConditionTrue, Reason: "AgentPortInUse"})
		return p
	}
	for _, tt := range []struct {
		name   string
		self   *lbv1.LoadBalancerPair
		others []*lbv1.LoadBalancerPair
		want   []string // substrings of the message; none for no conflict
		hold   bool     // the DaemonSet is not applied
	}{
		{"alone", portPair("b", "198.18.0.2", 42, 0, "shared", 88), nil, nil, false},
		{"its VRID's agent port is one of its ports", portPair("b", "198.18.0.2", 43, 0, "shared", 9443), nil,
			[]string{"agent port 9443 (9400+virtualRouterID 43) is also spec.ports[p0] of this pair", "set spec.agentPort to a free port", "the agents are not started (or updated) until the ports differ"}, true},
		{"its running agent port is one of its new ports", portPair("b", "198.18.0.2", 43, 9443, "shared", 88, 9443), nil,
			[]string{"agent port 9443 (9400+virtualRouterID 43) is also spec.ports[p1] of this pair", "the agents are updated as usual"}, false},
		{"another pair proxies it on a shared node", portPair("b", "198.18.0.2", 43, 0, "shared", 88),
			[]*lbv1.LoadBalancerPair{portPair("a", "198.18.0.1", 41, 9441, "shared", 9443)},
			[]string{"agent port 9443 (9400+virtualRouterID 43) is also port 9443 (p0) of ns/a (both run on node lb1)", "set spec.agentPort to a free port"}, true},
		{"another pair of the other family proxies it", portPair("b", "198.18.0.2", 43, 0, "shared", 88),
			[]*lbv1.LoadBalancerPair{portPair("a", "fd00::1", 41, 9741, "shared", 9443)},
			[]string{"port 9443 (p0) of ns/a"}, true},
		{"another pair proxies it on other nodes", portPair("b", "198.18.0.2", 43, 0, "shared", 88),
			[]*lbv1.LoadBalancerPair{portPair("a", "198.18.0.1", 41, 9441, "other", 9443)}, nil, false},
		{"a running pair keeps its agent port against a newer pair", portPair("b", "198.18.0.2", 43, 9443, "shared", 88),
			[]*lbv1.LoadBalancerPair{portPair("a", "198.18.0.1", 41, 0, "shared", 9443)}, nil, false},
		{"even against an older one", portPair("b", "198.18.0.2", 43, 9443, "shared", 88),
			[]*lbv1.LoadBalancerPair{older(portPair("a", "198.18.0.1", 41, 0, "shared", 9443))}, nil, false},
		{"even against an older running one that adds the port", portPair("b", "198.18.0.2", 43, 9443, "shared", 88),
			[]*lbv1.LoadBalancerPair{older(portPair("a", "198.18.0.1", 41, 9441, "shared", 88, 9443))}, nil, false},
		{"an older running pair adding another's running agent port", older(portPair("a", "198.18.0.1", 41, 9441, "shared", 88, 9443)),
			[]*lbv1.LoadBalancerPair{portPair("b", "198.18.0.2", 43, 9443, "shared", 88)},
			[]string{"spec.ports[p1] 9443 is the agent port of ns/b (both run on node lb1)", "change spec.ports, or set the other pair's spec.agentPort to a free port", "the agents are updated as usual"}, false},
		{"a new pair proxying another's agent port", portPair("a", "198.18.0.1", 41, 0, "shared", 9443),
			[]*lbv1.LoadBalancerPair{portPair("b", "198.18.0.2", 43, 9443, "shared", 88)},
			[]string{"spec.ports[p0] 9443 is the agent port of ns/b (both run on node lb1)", "change spec.ports, or set the other pair's spec.agentPort to a free port"}, false},
		{"a new pair proxying the agent port a pair not started yet asks for", portPair("a", "198.18.0.1", 41, 0, "shared", 9443),
			[]*lbv1.LoadBalancerPair{older(portPair("b", "198.18.0.2", 43, 0, "shared", 88))}, nil, false},
		{"a pair asking for a port a new pair proxies", older(portPair("b", "198.18.0.2", 43, 0, "shared", 88)),
			[]*lbv1.LoadBalancerPair{portPair("a", "198.18.0.1", 41, 0, "shared", 9443)},
			[]string{"agent port 9443 (9400+virtualRouterID 43) is also port 9443 (p0) of ns/a"}, true},
		{"an explicit agent port another pair runs with", explicit(portPair("b", "198.18.0.2", 42, 0, "shared", 88), 19000),
			[]*lbv1.LoadBalancerPair{explicit(portPair("a", "198.18.0.1", 41, 19000, "shared", 89), 19000)},
			[]string{"agent port 19000 (spec.agentPort) is also the agent port of ns/a"}, true},
		{"the running one keeps it", explicit(portPair("a", "198.18.0.1", 41, 19000, "shared", 89), 19000),
			[]*lbv1.LoadBalancerPair{older(explicit(portPair("b", "198.18.0.2", 42, 0, "shared", 88), 19000))}, nil, false},
		{"neither runs: the older keeps it", older(explicit(portPair("b", "198.18.0.2", 42, 0, "shared", 88), 19000)),
			[]*lbv1.LoadBalancerPair{explicit(portPair("a", "198.18.0.1", 41, 0, "shared", 89), 19000)}, nil, false},
		{"neither runs: the newer is reported", explicit(portPair("a", "198.18.0.1", 41, 0, "shared", 89), 19000),
			[]*lbv1.LoadBalancerPair{older(explicit(portPair("b", "198.18.0.2", 42, 0, "shared", 88), 19000))},
			[]string{"agent port 19000 (spec.agentPort) is also the agent port of ns/b"}, true},
		{"a running pair changed to an agent port another runs with", explicit(older(portPair("b", "198.18.0.2", 42, 9442, "shared", 88)), 19000),
			[]*lbv1.LoadBalancerPair{portPair("a", "198.18.0.1", 41, 19000, "shared", 89)},
			[]string{"agent port 19000 (spec.agentPort) is also the agent port of ns/a"}, true},
		{"both run it: the older keeps it", older(explicit(portPair("a", "198.18.0.1", 41, 19000, "shared", 89), 19000)),
			[]*lbv1.LoadBalancerPair{explicit(portPair("b", "198.18.0.2", 42, 19000, "shared", 88), 19000)}, nil, false},
		{"both run it: the newer is reported, and updated", explicit(portPair("b", "198.18.0.2", 42, 19000, "shared", 88), 19000),
			[]*lbv1.LoadBalancerPair{older(explicit(portPair("a", "198.18.0.1", 41, 19000, "shared", 89), 19000))},
			[]string{"agent port 19000 (spec.agentPort) is also the agent port of ns/a", "the agents are updated as usual"}, false},
		{"both run it: the one reported stays reported", older(inConflict(explicit(portPair("a", "198.18.0.1", 41, 19000, "shared", 89), 19000))),
			[]*lbv1.LoadBalancerPair{explicit(portPair("b", "198.18.0.2", 42, 19000, "shared", 88), 19000)},
			[]string{"agent port 19000 (spec.agentPort) is also the agent port of ns/b"}, false},
		{"equal derived agent ports are the VRID check's", portPair("b", "198.18.0.2", 43, 0, "shared", 88),
			[]*lbv1.LoadBalancerPair{older(portPair("a", "198.18.0.1", 43, 0, "shared", 89))}, nil, false},
		{"a pair being deleted gives its ports up", portPair("b", "198.18.0.2", 43, 0, "shared", 88),
			[]*lbv1.LoadBalancerPair{func() *lbv1.LoadBalancerPair {
				p := portPair("a", "198.18.0.1", 41, 9441, "shared", 9443)
				p.DeletionTimestamp = &metav1.Time{Time: time.Now()}
				return p
			}()}, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			all := []lbv1.LoadBalancerPair{*tt.self}
			for _, o := range tt.others {
				all = append(all, *o)
			}
			got, hold := portConflicts(tt.self, *tt.self.Spec.VirtualRouterID, all, nodes)
			if (got == "") != (len(tt.want) == 0) {
				t.Fatalf("portConflicts = %q, want a conflict: %v", got, len(tt.want) > 0)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("message does not say %q:\n%s", w, got)
				}
			}
			if hold != tt.hold {
				t.Errorf("holds the DaemonSet back: %v, want %v (%s)", hold, tt.hold, got)
			}
		})
	}
}

// TestAgentPortsOnTheAPIServer: an allocated VRID's agent port is none of
// the ports pairs proxy; a pair whose new agent port another pair on its
// nodes proxies (or uses) is reported and not started, or, when it runs,
// left as it runs; a pair whose agents already listen on their agent port
// keeps it, and a pair that proxies another's running agent port is the one
// reported; a pair reported while its agent port is its agents' own is
// still updated.
func TestAgentPortsOnTheAPIServer(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	status := func(name string) lbv1.LoadBalancerPairStatus { return getPair(t, ns, name).Status }
	// Nodes: lb1 runs the pairs of selector "shared", lb2 those of "other";
	// lb3 only those of "e" until it is labelled for "f" too. Their taint,
	// which only this test's pairs tolerate, keeps the pairs of other tests
	// (an empty nodeSelector selects every node) off them.
	label := "lbpair.io/test-" + ns
	sel := func(v string) map[string]string { return map[string]string{label + "-" + v: "true"} }
	for name, labels := range map[string]map[string]string{"lb1": sel("shared"), "lb2": sel("other"), "lb3": sel("e")} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name, Labels: labels},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: label, Value: "true", Effect: corev1.TaintEffectNoSchedule}}}}
		if err := k8s.Create(ctx, node); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), node) })
	}
	port := func(i int, port int32) lbv1.PortSpec {
		return lbv1.PortSpec{Name: fmt.Sprint("p", i), Port: port,
			Backend: lbv1.BackendSpec{Static: []lbv1.StaticBackend{{Address: "198.18.1.10:80"}}}}
	}
	vips := 0
	pair := func(name string, vrid int32, on string, ports ...int32) *lbv1.LoadBalancerPair {
		vips++
		p := newPair(ns, name, nil, fmt.Sprintf("198.18.3.%d", vips))
		if vrid != 0 {
			p.Spec.VirtualRouterID = &vrid
		}
		p.Spec.NodeSelector = sel(on)
		p.Spec.Tolerations = []corev1.Toleration{{Key: label, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
		p.Spec.Ports = nil
		for i, n := range ports {
			p.Spec.Ports = append(p.Spec.Ports, port(i, n))
		}
		return p
	}
	create := func(p *lbv1.LoadBalancerPair) {
		t.Helper()
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// running waits for the pair's DaemonSet and returns its generation.
	running := func(name string) int64 {
		t.Helper()
		var gen int64
		eventually(t, name+" running", func() error {
			if status(name).AgentPort == 0 {
				return errors.New("no agent port yet")
			}
			ds, err := getDaemonSet(ns, name)
			gen = ds.Generation
			return err
		})
		return gen
	}
	reported := func(name string, want ...string) {
		t.Helper()
		eventually(t, name+" reported", func() error {
			st := status(name)
			c := apimeta.FindStatusCondition(st.Conditions, lbv1.ConditionPortConflict)
			if c == nil || c.Status != metav1.ConditionTrue || c.Reason != "AgentPortInUse" {
				return fmt.Errorf("PortConflict %+v", c)
			}
			for _, w := range want {
				if !strings.Contains(c.Message, w) {
					return fmt.Errorf("PortConflict message does not say %q: %s", w, c.Message)
				}
			}
			if r := apimeta.FindStatusCondition(st.Conditions, lbv1.ConditionReady); r == nil || r.Reason != lbv1.ConditionPortConflict {
				return fmt.Errorf("Ready %+v, want the reason PortConflict", r)
			}
			if len(eventNotes(t, ns, name, "PortConflict")) == 0 {
				return errors.New("no PortConflict event")
			}
			return nil
		})
	}
	notStarted := func(name string) {
		t.Helper()
		if _, err := getDaemonSet(ns, name); err == nil {
			t.Errorf("%s, in a port conflict, got a DaemonSet", name)
		}
		if st := status(name); st.AgentPort != 0 || st.VirtualRouterID != 0 {
			t.Errorf("%s, in a port conflict, runs with VRID %d and agent port %d", name, st.VirtualRouterID, st.AgentPort)
		}
	}
	unchanged := func(name string, gen int64, port int32) {
		t.Helper()
		ds, err := getDaemonSet(ns, name)
		if err != nil {
			t.Fatalf("%s's DaemonSet: %v", name, err)
		}
		if ds.Generation != gen {
			t.Errorf("%s's DaemonSet changed (generation %d -> %d)", name, gen, ds.Generation)
		}
		if got := status(name).AgentPort; got != port {
			t.Errorf("%s's status.agentPort moved from %d to %d", name, port, got)
		}
	}
	free := func(name string) {
		t.Helper()
		if c := apimeta.FindStatusCondition(status(name).Conditions, lbv1.ConditionPortConflict); c == nil || c.Status != metav1.ConditionFalse {
			t.Errorf("%s: PortConflict %+v, want False", name, c)
		}
	}

	// Allocation: a pair proxying the agent ports of the 32 lowest free
	// VRIDs is allocated none of them, nor is the next pair.
	var all lbv1.LoadBalancerPairList
	if err := k8s.List(ctx, &all); err != nil {
		t.Fatal(err)
	}
	var lowest []int32
	for v := int32(1); len(lowest) < 32; v++ {
		if !slices.ContainsFunc(all.Items, func(p lbv1.LoadBalancerPair) bool {
			return !isIPv6(&p) && (claimedVRID(&p) == v || p.Status.VirtualRouterID == v)
		}) {
			lowest = append(lowest, agentPortBaseIPv4+v)
		}
	}
	create(pair("wide", 0, "shared", lowest...))
	create(pair("next", 0, "shared", 88))
	for _, name := range []string{"wide", "next"} {
		eventually(t, name+" allocated", func() error {
			st := status(name)
			if c := apimeta.FindStatusCondition(st.Conditions, lbv1.ConditionPortConflict); c != nil && c.Status == metav1.ConditionTrue {
				return fmt.Errorf("%s was allocated a VRID whose agent port wide proxies: %s", name, c.Message)
			}
			if slices.Contains(lowest, st.AgentPort) {
				return fmt.Errorf("%s was allocated a VRID whose agent port %d wide proxies", name, st.AgentPort)
			}
			if st.AgentPort == 0 {
				return errors.New("no agent port yet")
			}
			return nil
		})
	}

	// b's VRID 242 makes its agent port a's port 9642 on lb1: b is reported
	// and not started; b2, on other nodes, runs with the same numbers.
	create(pair("a", 241, "shared", 9642, 9643))
	aGen := running("a")
	create(pair("b", 242, "shared", 88))
	reported("b", "agent port 9642 (9400+virtualRouterID 242) is also port 9642 (p0) of "+ns+"/a (both run on node "+ns+"-lb1)", "set spec.agentPort to a free port")
	notStarted("b")
	create(pair("b2", 243, "other", 88))
	running("b2")
	free("b2")

	// Setting b's agent port to a free one starts it.
	updatePair(t, ns, "b", func(p *lbv1.LoadBalancerPair) { p.Spec.AgentPort = ptrTo(int32(19642)) })
	eventually(t, "b started on its own agent port", func() error {
		ds, err := getDaemonSet(ns, "b")
		if err != nil {
			return err
		}
		if hp := ds.Spec.Template.Spec.Containers[0].Ports[0].HostPort; hp != 19642 || status("b").AgentPort != 19642 {
			return fmt.Errorf("hostPort %d, status.agentPort %d", hp, status("b").AgentPort)
		}
		return nil
	})
	free("b")

	// A new pair proxying a's agent port is the one reported, not a; its
	// own agent port is free, so it is started: holding it back would not
	// free the port, its agents fail to listen on it on lb1 either way.
	create(pair("c", 244, "shared", 9641))
	reported("c", "spec.ports[p0] 9641 is the agent port of "+ns+"/a", "the agents are updated as usual")
	running("c")
	// So is one asking for b's agent port.
	d := pair("d", 245, "shared", 89)
	d.Spec.AgentPort = ptrTo(int32(19642))
	create(d)
	reported("d", "agent port 19642 (spec.agentPort) is also the agent port of "+ns+"/b")
	notStarted("d")
	free("a")
	unchanged("a", aGen, 9641)

	// a, running, changed to b's agent port, keeps running as it was.
	updatePair(t, ns, "a", func(p *lbv1.LoadBalancerPair) { p.Spec.AgentPort = ptrTo(int32(19642)) })
	reported("a", "agent port 19642 (spec.agentPort) is also the agent port of "+ns+"/b")
	unchanged("a", aGen, 9641)

	// e and f run on separate nodes with f's agent port one of e's ports;
	// when a node comes to run both, f, whose agents listen on the port,
	// keeps it, and e, though older, is reported and keeps running.
	create(pair("e", 246, "e", 9647))
	eGen := running("e")
	create(pair("f", 247, "f", 88))
	fGen := running("f")
	var lb3 corev1.Node
	if err := k8s.Get(ctx, types.NamespacedName{Name: ns + "-lb3"}, &lb3); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(lb3.DeepCopy())
	lb3.Labels[label+"-f"] = "true"
	if err := k8s.Patch(ctx, &lb3, patch); err != nil {
		t.Fatal(err)
	}
	// Nodes do not trigger a reconcile (the resync does, in 30s): a
	// change of an annotation does.
	touches := 0
	eventually(t, "e reported once lb3 runs both", func() error {
		touches++
		for _, name := range []string{"e", "f"} {
			p := getPair(t, ns, name)
			patch := client.MergeFrom(p.DeepCopy())
			metav1.SetMetaDataAnnotation(&p.ObjectMeta, "test/touch", fmt.Sprint(touches))
			if err := k8s.Patch(ctx, p, patch); err != nil {
				return err
			}
		}
		if !apimeta.IsStatusConditionTrue(status("e").Conditions, lbv1.ConditionPortConflict) {
			return errors.New("e not reported yet")
		}
		return nil
	})
	reported("e", "spec.ports[p0] 9647 is the agent port of "+ns+"/f (both run on node "+ns+"-lb3)")
	unchanged("e", eGen, 9646)
	free("f")
	unchanged("f", fGen, 9647)

	// h, older, adds a port that is the agent port i's agents listen on:
	// h is reported, and i, which changed nothing, is neither reported nor
	// kept from updates.
	create(pair("h", 249, "shared", 88))
	running("h")
	create(pair("i", 250, "shared", 88))
	running("i")
	updatePair(t, ns, "h", func(p *lbv1.LoadBalancerPair) { p.Spec.Ports = append(p.Spec.Ports, port(1, 9650)) })
	reported("h", "spec.ports[p1] 9650 is the agent port of "+ns+"/i (both run on node "+ns+"-lb1)", "change spec.ports")
	templateChanged := func(name string) {
		t.Helper()
		updatePair(t, ns, name, func(p *lbv1.LoadBalancerPair) {
			p.Spec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpExists}}
		})
		eventually(t, name+"'s DaemonSet updated", func() error {
			ds, err := getDaemonSet(ns, name)
			if err != nil {
				return err
			}
			if tol := ds.Spec.Template.Spec.Tolerations; len(tol) != 1 || tol[0].Key != "dedicated" {
				return fmt.Errorf("tolerations %+v, want the pair's", tol)
			}
			return nil
		})
	}
	templateChanged("i")
	eventually(t, "i's status written", func() error {
		if p := getPair(t, ns, "i"); p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("observedGeneration %d of %d", p.Status.ObservedGeneration, p.Generation)
		}
		return nil
	})
	free("i")
	if got := status("i").AgentPort; got != 9650 {
		t.Errorf("i's status.agentPort moved from 9650 to %d", got)
	}
	// h, in conflict, is updated too.
	templateChanged("h")

	// g's agents run with agent port 9648 when it adds 9648 to its own
	// ports: it is reported, and a new agent image still reaches it.
	create(pair("g", 248, "shared", 88))
	running("g")
	updatePair(t, ns, "g", func(p *lbv1.LoadBalancerPair) { p.Spec.Ports = append(p.Spec.Ports, port(1, 9648)) })
	reported("g", "agent port 9648 (9400+virtualRouterID 248) is also spec.ports[p1] of this pair", "the agents are updated as usual")
	if updated, notes := updatesToNextImage(t, ns, "g"); !updated {
		t.Errorf("g, in a port conflict on its running agent port, not updated to a new image: events %q", notes)
	}
}
