package controllers

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

func TestDecideVRID(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Hour))
	pair := func(name, vip string, spec *int32, status int32, created metav1.Time, conflict bool) lbv1.LoadBalancerPair {
		p := lbv1.LoadBalancerPair{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(name), CreationTimestamp: created}}
		p.Spec.VirtualIPs = []string{vip}
		p.Spec.VirtualRouterID = spec
		p.Status.VirtualRouterID = status
		if conflict {
			p.Status.Conditions = []metav1.Condition{{Type: lbv1.ConditionVRIDConflict, Status: metav1.ConditionTrue}}
		}
		return p
	}
	v := func(n int32) *int32 { return &n }
	// runs gives p the virtual IPs its agents run with, as the manager holds
	// them in status while the spec's are in VIP conflict.
	runs := func(p lbv1.LoadBalancerPair, vips ...string) lbv1.LoadBalancerPair {
		p.Status.VirtualIPs = vips
		return p
	}
	tests := []struct {
		name string
		self lbv1.LoadBalancerPair
		all  []lbv1.LoadBalancerPair
		want vridDecision
	}{
		{"spec VRID, alone", pair("a", "198.18.0.1", v(51), 0, t0, false), nil, vridDecision{VRID: 51}},
		{"allocation takes the lowest free", pair("a", "198.18.0.1", nil, 0, t1, false),
			[]lbv1.LoadBalancerPair{pair("b", "198.18.0.2", v(1), 1, t0, false), pair("c", "198.18.0.3", nil, 2, t0, false)},
			vridDecision{VRID: 3, Allocated: true}},
		{"allocation is stable", pair("a", "198.18.0.1", nil, 7, t1, false),
			[]lbv1.LoadBalancerPair{pair("b", "198.18.0.2", v(1), 1, t0, false)},
			vridDecision{VRID: 7, Allocated: true}},
		{"other families do not count", pair("a", "198.18.0.1", nil, 0, t1, false),
			[]lbv1.LoadBalancerPair{pair("b", "fd00::2", v(1), 1, t0, false)},
			vridDecision{VRID: 1, Allocated: true}},
		{"the holder keeps its VRID against an older newcomer", pair("a", "198.18.0.1", v(9), 9, t1, false),
			[]lbv1.LoadBalancerPair{pair("b", "198.18.0.2", v(9), 0, t0, false)},
			vridDecision{VRID: 9}},
		{"a newcomer asking for a held VRID is in conflict", pair("b", "198.18.0.2", v(9), 0, t0, false),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(9), 9, t1, false)},
			vridDecision{ConflictWith: []string{"ns/a"}}},
		{"a pair in conflict does not hold its old status VRID", pair("b", "198.18.0.2", v(9), 9, t1, true),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(9), 9, t0, false)},
			vridDecision{ConflictWith: []string{"ns/a"}}},
		{"neither holds: the older wins", pair("a", "198.18.0.1", v(9), 0, t0, false),
			[]lbv1.LoadBalancerPair{pair("b", "198.18.0.2", v(9), 0, t1, false)},
			vridDecision{VRID: 9}},
		{"neither holds: the newer loses", pair("b", "198.18.0.2", v(9), 0, t1, false),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(9), 0, t0, false)},
			vridDecision{ConflictWith: []string{"ns/a"}}},
		// After a race between two managers of other namespaces, both run 1.
		{"both hold it: the older, given it by the manager, moves", pair("a", "198.18.0.1", nil, 1, t0, false),
			[]lbv1.LoadBalancerPair{pair("b", "198.18.0.2", v(1), 1, t1, false)},
			vridDecision{VRID: 2, Allocated: true}},
		{"both hold it: the newer, whose spec asks for it, stays", pair("b", "198.18.0.2", v(1), 1, t1, false),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", nil, 1, t0, false)},
			vridDecision{VRID: 1}},
		{"an allocated loser moves to a free VRID", pair("b", "198.18.0.2", nil, 9, t1, true),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(9), 9, t0, false)},
			vridDecision{VRID: 1, Allocated: true}},
		// c asks for a's VRID 2 and keeps running with its VRID 1.
		{"allocation skips the VRID a pair in conflict runs with", pair("d", "198.18.0.4", nil, 0, t1, false),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(2), 2, t0, false), pair("c", "198.18.0.3", v(2), 1, t0, true)},
			vridDecision{VRID: 3, Allocated: true}},
		{"a newcomer asking for the VRID a pair in conflict runs with is in conflict", pair("d", "198.18.0.4", v(1), 0, t1, false),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(2), 2, t0, false), pair("c", "198.18.0.3", v(2), 1, t0, true)},
			vridDecision{ConflictWith: []string{"ns/c"}}},
		{"so is an older one", pair("d", "198.18.0.4", v(1), 0, t0, false),
			[]lbv1.LoadBalancerPair{pair("a", "198.18.0.1", v(2), 2, t0, false), pair("c", "198.18.0.3", v(2), 1, t1, true)},
			vridDecision{ConflictWith: []string{"ns/c"}}},
		{"a pair in conflict asking again for the VRID it runs keeps it", pair("c", "198.18.0.3", v(1), 1, t1, true),
			[]lbv1.LoadBalancerPair{pair("d", "198.18.0.4", v(1), 0, t0, true)},
			vridDecision{VRID: 1}},
		// b's spec moved to IPv6 while its new virtual IP is in conflict: its
		// agents run IPv4 with VRID 10.
		{"a pair held back on IPv4 still runs its VRID there", pair("a", "198.18.0.1", v(10), 0, t0, false),
			[]lbv1.LoadBalancerPair{runs(pair("b", "fd00::2", v(10), 10, t1, false), "198.18.0.2")},
			vridDecision{ConflictWith: []string{"ns/b"}}},
		{"allocation skips the VRID a pair held back on IPv4 runs", pair("a", "198.18.0.1", nil, 0, t0, false),
			[]lbv1.LoadBalancerPair{runs(pair("b", "fd00::2", v(20), 1, t1, false), "198.18.0.2")},
			vridDecision{VRID: 2, Allocated: true}},
		// a's spec moved to IPv6, its virtual IPs clear: its agents run VRID 1
		// with IPv4, not with IPv6, where c runs it.
		{"a pair moving to IPv6 does not take the VRID an IPv6 pair runs", runs(pair("a", "fd00::1", nil, 1, t0, false), "198.18.0.1"),
			[]lbv1.LoadBalancerPair{pair("c", "fd00::3", v(1), 1, t1, false)},
			vridDecision{VRID: 2, Allocated: true}},
		{"running a VRID with IPv4 does not hold it for IPv6: the older wins", pair("a", "fd00::1", v(10), 0, t0, false),
			[]lbv1.LoadBalancerPair{runs(pair("b", "fd00::2", v(10), 10, t1, false), "198.18.0.2")},
			vridDecision{VRID: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			all := append([]lbv1.LoadBalancerPair{tt.self}, tt.all...)
			if diff := cmp.Diff(tt.want, decideVRID(&tt.self, all)); diff != "" {
				t.Errorf("decision (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("exhausted", func(t *testing.T) {
		var all []lbv1.LoadBalancerPair
		for i := int32(1); i <= 255; i++ {
			all = append(all, pair(fmt.Sprint("p", i), "198.18.0.1", v(i), i, t0, false))
		}
		self := pair("new", "198.18.0.9", nil, 0, t1, false)
		if got := decideVRID(&self, append(all, self)); !got.Exhausted {
			t.Errorf("decision %+v, want exhausted", got)
		}
	})
}

func TestConflictInputsChanged(t *testing.T) {
	held := func(vrid int32, conflict bool) *lbv1.LoadBalancerPair {
		p := newPair("ns", "web", nil, "198.18.0.100")
		p.Generation = 1
		p.Status.VirtualRouterID = vrid
		status := metav1.ConditionFalse
		if conflict {
			status = metav1.ConditionTrue
		}
		apimeta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{Type: lbv1.ConditionVRIDConflict, Status: status, Reason: "Test"})
		return p
	}
	respecced := held(1, false)
	respecced.Generation = 2
	agentsOnly := held(1, false)
	agentsOnly.Status.Holder = "lb1"
	vipsCleared := held(1, false)
	vipsCleared.Status.VirtualIPs = []string{"198.18.0.100"}
	portMoved := held(1, false)
	portMoved.Status.AgentPort = 19000
	portConflict := held(1, false)
	apimeta.SetStatusCondition(&portConflict.Status.Conditions, metav1.Condition{Type: lbv1.ConditionPortConflict, Status: metav1.ConditionTrue, Reason: "Test"})
	for _, tc := range []struct {
		name     string
		old, new *lbv1.LoadBalancerPair
		want     bool
	}{
		{"spec changed", held(1, false), respecced, true},
		{"VRID allocated", held(0, false), held(1, false), true},
		{"VRID moved", held(1, false), held(2, false), true},
		{"conflict raised", held(1, false), held(1, true), true},
		{"conflict cleared", held(1, true), held(1, false), true},
		{"virtual IPs cleared to run", held(1, false), vipsCleared, true},
		{"agent port moved", held(1, false), portMoved, true},
		{"port conflict raised", held(1, false), portConflict, true},
		{"only the agents' status changed", held(1, false), agentsOnly, false},
	} {
		if got := conflictInputsChanged(tc.old, tc.new); got != tc.want {
			t.Errorf("%s: conflictInputsChanged = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestVRIDAllocationAndConflictsOnTheAPIServer(t *testing.T) {
	ctx := context.Background()
	// VRIDs are settled across namespaces: pairs in two namespaces may share
	// a network.
	ns1, ns2 := newNamespace(t), newNamespace(t)
	status := func(ns, name string) lbv1.LoadBalancerPairStatus { return getPair(t, ns, name).Status }

	// Allocation: two pairs without a VRID get distinct ones, recorded in
	// status, and an IPv6 pair may reuse a number.
	if err := k8s.Create(ctx, newPair(ns1, "alloc-a", nil, "198.18.0.100")); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, newPair(ns2, "alloc-b", nil, "198.18.0.101")); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, newPair(ns2, "alloc-v6", nil, "fd00:198:18::100")); err != nil {
		t.Fatal(err)
	}
	var a, b int32
	eventually(t, "VRIDs allocated", func() error {
		a, b = status(ns1, "alloc-a").VirtualRouterID, status(ns2, "alloc-b").VirtualRouterID
		if a == 0 || b == 0 || a == b || status(ns2, "alloc-v6").VirtualRouterID == 0 {
			return fmt.Errorf("VRIDs %d and %d", a, b)
		}
		return nil
	})
	// Allocations read the pairs from the apiserver, not the cache, so
	// neither pair was given the other's VRID, not even for a moment.
	eventually(t, "VRIDAllocated events", func() error {
		if len(eventNotes(t, ns1, "alloc-a", "VRIDAllocated")) == 0 || len(eventNotes(t, ns2, "alloc-b", "VRIDAllocated")) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	for _, c := range []struct {
		ns, name string
		other    int32
	}{{ns1, "alloc-a", b}, {ns2, "alloc-b", a}} {
		for _, note := range eventNotes(t, c.ns, c.name, "VRIDAllocated") {
			if note == fmt.Sprintf("allocated virtual router ID %d", c.other) {
				t.Errorf("%s was allocated the other pair's VRID %d on the way", c.name, c.other)
			}
		}
	}

	// Conflict: a new pair asking for a VRID held by another is reported
	// and gets no DaemonSet.
	if err := k8s.Create(ctx, newPair(ns2, "late", &a, "198.18.0.102")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "conflict reported", func() error {
		c := apimeta.FindStatusCondition(status(ns2, "late").Conditions, lbv1.ConditionVRIDConflict)
		if c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("VRIDConflict %+v", c)
		}
		if _, ok := eventReasons(t, ns2, "late")["VRIDConflict"]; !ok {
			return errors.New("no VRIDConflict event")
		}
		if r := apimeta.FindStatusCondition(status(ns2, "late").Conditions, lbv1.ConditionReady); r == nil || r.Reason != "VRIDConflict" {
			return fmt.Errorf("Ready %+v, want the reason VRIDConflict", r)
		}
		return nil
	})
	if _, err := getDaemonSet(ns2, "late"); !apierrors.IsNotFound(err) {
		t.Errorf("the loser of a conflict got a DaemonSet (err %v)", err)
	}
	if got := status(ns2, "late").VirtualIPs; len(got) != 0 {
		t.Errorf("the loser of a VRID conflict was cleared to run with virtual IPs %q; it must not keep them from another pair", got)
	}
	if got := status(ns1, "alloc-a").VirtualRouterID; got != a {
		t.Errorf("the holder's VRID moved from %d to %d", a, got)
	}

	// Fixing the spec clears the conflict and starts the agents.
	updatePair(t, ns2, "late", func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualRouterID = ptrTo(int32(200)) })
	eventually(t, "conflict cleared", func() error {
		st := status(ns2, "late")
		if apimeta.IsStatusConditionTrue(st.Conditions, lbv1.ConditionVRIDConflict) || st.VirtualRouterID != 200 {
			return fmt.Errorf("status %+v", st)
		}
		_, err := getDaemonSet(ns2, "late")
		return err
	})

	// A running pair changed to a held VRID keeps running as it was: its
	// DaemonSet and status.virtualRouterID do not move.
	ds, err := getDaemonSet(ns2, "late")
	if err != nil {
		t.Fatal(err)
	}
	updatePair(t, ns2, "late", func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualRouterID = &b })
	eventually(t, "conflict on a running pair", func() error {
		if !apimeta.IsStatusConditionTrue(status(ns2, "late").Conditions, lbv1.ConditionVRIDConflict) {
			return errors.New("no conflict yet")
		}
		return nil
	})
	if got := status(ns2, "late").VirtualRouterID; got != 200 {
		t.Errorf("status.virtualRouterID = %d, want the running 200", got)
	}
	after, err := getDaemonSet(ns2, "late")
	if err != nil {
		t.Fatal(err)
	}
	if after.Generation != ds.Generation {
		t.Errorf("the DaemonSet of a pair in conflict changed (generation %d -> %d)", ds.Generation, after.Generation)
	}

	// Deleting the holder lets the waiting pair take the VRID.
	if err := k8s.Delete(ctx, getPair(t, ns2, "alloc-b")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "conflict settled after the holder went", func() error {
		st := status(ns2, "late")
		if apimeta.IsStatusConditionTrue(st.Conditions, lbv1.ConditionVRIDConflict) || st.VirtualRouterID != b {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
}

// A pair whose spec asks for a VRID another holds is in conflict and keeps
// running with the VRID it has: a new pair is neither allocated that VRID
// nor given it when its spec asks for it, which would run two pairs' agents
// with one VRID and one agent port.
func TestAPairInVRIDConflictKeepsTheVRIDItRunsWith(t *testing.T) {
	// First on pairs where c's running VRID, 2, is the lowest free one: on
	// the apiserver, shared with other tests, it need not be, and d could
	// miss it without its being counted. c's agent port is its spec's, so
	// that the port check (portsInUse) does not skip VRID 2 either.
	a := portPair("a", "198.18.0.1", 1, 9401, "x", 88)
	c := portPair("c", "198.18.0.3", 1, 19000, "x", 88)
	c.Spec.AgentPort = ptrTo(int32(19000))
	c.Status.VirtualRouterID = 2
	apimeta.SetStatusCondition(&c.Status.Conditions, metav1.Condition{Type: lbv1.ConditionVRIDConflict, Status: metav1.ConditionTrue, Reason: "VRIDInUse"})
	for _, tt := range []struct {
		name string
		self *lbv1.LoadBalancerPair
		want vridDecision
	}{
		{"allocated", portPair("d", "198.18.0.4", 0, 0, "x", 88), vridDecision{VRID: 3, Allocated: true}},
		{"asking for it", portPair("e", "198.18.0.5", 2, 0, "x", 88), vridDecision{ConflictWith: []string{"ns/c"}}},
	} {
		if diff := cmp.Diff(tt.want, decideVRID(tt.self, []lbv1.LoadBalancerPair{*a, *c, *tt.self})); diff != "" {
			t.Errorf("a new pair %s c's running VRID (-want +got):\n%s", tt.name, diff)
		}
	}

	ctx := context.Background()
	ns := newNamespace(t)
	status := func(name string) lbv1.LoadBalancerPairStatus { return getPair(t, ns, name).Status }
	running := func(name string) int32 {
		var vrid int32
		eventually(t, name+" running", func() error {
			if vrid = status(name).VirtualRouterID; vrid == 0 {
				return errors.New("no VRID yet")
			}
			_, err := getDaemonSet(ns, name)
			return err
		})
		return vrid
	}
	inConflict := func(name string) {
		eventually(t, name+" in conflict", func() error {
			if c := apimeta.FindStatusCondition(status(name).Conditions, lbv1.ConditionVRIDConflict); c == nil || c.Status != metav1.ConditionTrue {
				return fmt.Errorf("VRIDConflict %+v; status.virtualRouterID %d", c, status(name).VirtualRouterID)
			}
			return nil
		})
	}

	if err := k8s.Create(ctx, newPair(ns, "a", ptrTo(int32(236)), "198.18.0.236")); err != nil {
		t.Fatal(err)
	}
	running("a")
	if err := k8s.Create(ctx, newPair(ns, "c", nil, "198.18.0.237")); err != nil {
		t.Fatal(err)
	}
	vrid := running("c")
	updatePair(t, ns, "c", func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualRouterID = ptrTo(int32(236)) })
	inConflict("c")
	if got := status("c").VirtualRouterID; got != vrid {
		t.Fatalf("c in conflict: status.virtualRouterID %d, want the %d it runs with", got, vrid)
	}

	// A pair asking for c's VRID, and, once that one is gone, a pair
	// allocated one, on the apiserver.
	e := newPair(ns, "e", &vrid, "198.18.0.239")
	if err := k8s.Create(ctx, e); err != nil {
		t.Fatal(err)
	}
	var st lbv1.LoadBalancerPairStatus
	eventually(t, "e's VRID decided", func() error {
		if st = status("e"); st.VirtualRouterID == 0 && !apimeta.IsStatusConditionTrue(st.Conditions, lbv1.ConditionVRIDConflict) {
			return errors.New("neither running nor in conflict")
		}
		return nil
	})
	if st.VirtualRouterID != 0 || !apimeta.IsStatusConditionTrue(st.Conditions, lbv1.ConditionVRIDConflict) {
		t.Errorf("e, asking for the VRID %d c runs with, runs with VRID %d and no conflict", vrid, st.VirtualRouterID)
	}
	if err := k8s.Delete(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, newPair(ns, "d", nil, "198.18.0.238")); err != nil {
		t.Fatal(err)
	}
	if got := running("d"); got == vrid {
		t.Errorf("d was allocated VRID %d, which c's agents run with", got)
	}
	if got := status("c").VirtualRouterID; got != vrid {
		t.Errorf("c's status.virtualRouterID moved from %d to %d", vrid, got)
	}
}

// TestAgentPort: an explicit spec.agentPort wins; otherwise the port follows the VRID,
// in a range per family, since VRIDs are unique only within a family.
func TestAgentPort(t *testing.T) {
	pair := func(vip string, port *int32) *lbv1.LoadBalancerPair {
		return &lbv1.LoadBalancerPair{Spec: lbv1.LoadBalancerPairSpec{VirtualIPs: []string{vip}, AgentPort: port}}
	}
	explicit := int32(19000)
	for _, tt := range []struct {
		name string
		pair *lbv1.LoadBalancerPair
		want int32
	}{
		{"IPv4", pair("198.18.0.100", nil), 9451},
		{"IPv6", pair("fd00:198:18::100", nil), 9751},
		{"set in the spec", pair("fd00:198:18::100", &explicit), 19000},
	} {
		if got := agentPort(tt.pair, 51); got != tt.want {
			t.Errorf("%s: agent port %d for VRID 51, want %d", tt.name, got, tt.want)
		}
	}
}
