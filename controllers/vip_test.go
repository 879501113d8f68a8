package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

func TestVIPConflicts(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	pair := func(name string, created metav1.Time, spec []string, running ...string) lbv1.LoadBalancerPair {
		p := newPair("ns", name, nil, spec[0])
		p.UID = types.UID(name)
		p.CreationTimestamp = created
		p.Spec.VirtualIPs = spec
		p.Status.VirtualIPs = running
		return *p
	}
	deleting := pair("old", t0, []string{"198.18.0.100"}, "198.18.0.100")
	deleting.DeletionTimestamp = &t1
	for _, tc := range []struct {
		name   string
		pair   lbv1.LoadBalancerPair
		others []lbv1.LoadBalancerPair
		want   []string
	}{
		{"no other pair", pair("web", t1, []string{"198.18.0.100"}), nil, nil},
		{"other addresses", pair("web", t1, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{pair("old", t0, []string{"198.18.0.101"}, "198.18.0.101")}, nil},
		{"a pair running with the address keeps it against an older one",
			pair("web", t0, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{pair("runs", t1, []string{"198.18.0.100"}, "198.18.0.100")},
			[]string{"198.18.0.100 (ns/runs)"}},
		{"the running pair keeps it", pair("old", t1, []string{"198.18.0.100"}, "198.18.0.100"),
			[]lbv1.LoadBalancerPair{pair("new", t0, []string{"198.18.0.100"})}, nil},
		{"it keeps it while its own spec moves on, until the manager clears the new one",
			pair("web", t1, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{pair("old", t0, []string{"198.18.0.101"}, "198.18.0.100")},
			[]string{"198.18.0.100 (ns/old)"}},
		{"between newcomers the older one gets it", pair("web", t1, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{pair("old", t0, []string{"198.18.0.100"})},
			[]string{"198.18.0.100 (ns/old)"}},
		{"the older newcomer", pair("old", t0, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{pair("web", t1, []string{"198.18.0.100"})}, nil},
		{"same age: the lower name", pair("b", t0, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{pair("a", t0, []string{"198.18.0.100"})},
			[]string{"198.18.0.100 (ns/a)"}},
		{"one IPv6 address however written", pair("web", t1, []string{"fd00:198:18::100"}),
			[]lbv1.LoadBalancerPair{pair("old", t0, []string{"fd00:198:18:0::100"}, "fd00:198:18:0::100")},
			[]string{"fd00:198:18::100 (ns/old)"}},
		{"each address in conflict, with every pair keeping it",
			pair("web", t1, []string{"198.18.0.100", "198.18.0.101", "198.18.0.102"}),
			[]lbv1.LoadBalancerPair{
				pair("x", t0, []string{"198.18.0.102"}, "198.18.0.102"),
				pair("y", t0, []string{"198.18.0.100", "198.18.0.102"}),
			},
			[]string{"198.18.0.100 (ns/y)", "198.18.0.102 (ns/x, ns/y)"}},
		{"a pair being deleted gives its addresses up", pair("web", t1, []string{"198.18.0.100"}),
			[]lbv1.LoadBalancerPair{deleting}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			all := append(slices.Clone(tc.others), tc.pair)
			if got := vipConflicts(&tc.pair, all); !slices.Equal(got, tc.want) {
				t.Errorf("vipConflicts = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNodeAddressConflicts(t *testing.T) {
	node := func(name string, addrs ...string) corev1.Node {
		n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for i, a := range addrs {
			typ := corev1.NodeInternalIP
			if i > 0 {
				typ = corev1.NodeExternalIP
			}
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: typ, Address: a}, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
		}
		return n
	}
	nodes := []corev1.Node{node("lb1", "198.18.0.11", "fd00:198:18::11"), node("lb2", "198.18.0.12")}
	for _, tc := range []struct {
		vips []string
		want []string
	}{
		{[]string{"198.18.0.100"}, nil},
		{[]string{"198.18.0.100", "198.18.0.12"}, []string{"198.18.0.12 (node lb2)"}},
		{[]string{"fd00:198:18:0::11"}, []string{"fd00:198:18::11 (node lb1)"}},
	} {
		p := newPair("ns", "web", nil, tc.vips[0])
		p.Spec.VirtualIPs = tc.vips
		if got := nodeAddressConflicts(p, nodes); !slices.Equal(got, tc.want) {
			t.Errorf("nodeAddressConflicts(%q) = %q, want %q", tc.vips, got, tc.want)
		}
	}
}

// A virtual IP belongs to one pair: a second pair naming it is reported and
// not run, a running pair changed to take it keeps running with its own
// addresses, and the conflict settles when the first pair lets it go.
func TestVIPConflictsOnTheAPIServer(t *testing.T) {
	ctx := context.Background()
	ns1, ns2 := newNamespace(t), newNamespace(t)
	status := func(ns, name string) lbv1.LoadBalancerPairStatus { return getPair(t, ns, name).Status }
	inConflict := func(ns, name string) bool {
		return apimeta.IsStatusConditionTrue(status(ns, name).Conditions, lbv1.ConditionVIPConflict)
	}

	if err := k8s.Create(ctx, newPair(ns1, "first", nil, "198.18.0.120")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first pair runs", func() error {
		if got := status(ns1, "first").VirtualIPs; !slices.Equal(got, []string{"198.18.0.120"}) {
			return fmt.Errorf("status.virtualIPs = %q", got)
		}
		_, err := getDaemonSet(ns1, "first")
		return err
	})

	// A second pair naming the address, in another namespace.
	if err := k8s.Create(ctx, newPair(ns2, "second", nil, "198.18.0.120")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the conflict reported", func() error {
		c := apimeta.FindStatusCondition(status(ns2, "second").Conditions, lbv1.ConditionVIPConflict)
		if c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("VIPConflict %+v", c)
		}
		if want := vipConflictMessage([]string{"198.18.0.120 (" + ns1 + "/first)"}); c.Message != want {
			return fmt.Errorf("VIPConflict message %q, want %q", c.Message, want)
		}
		if len(eventNotes(t, ns2, "second", "VIPConflict")) == 0 {
			return errors.New("no VIPConflict event")
		}
		if r := apimeta.FindStatusCondition(status(ns2, "second").Conditions, lbv1.ConditionReady); r == nil || r.Reason != "VIPConflict" {
			return fmt.Errorf("Ready %+v, want the reason VIPConflict", r)
		}
		return nil
	})
	if _, err := getDaemonSet(ns2, "second"); !apierrors.IsNotFound(err) {
		t.Errorf("the pair in conflict got a DaemonSet (err %v)", err)
	}
	if st := status(ns2, "second"); len(st.VirtualIPs) != 0 || st.VirtualRouterID != 0 {
		t.Errorf("the pair in conflict was cleared to run: status %+v", st)
	}
	if inConflict(ns1, "first") {
		t.Error("the running pair is reported in conflict")
	}

	// A node's address is not free either.
	lb := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns2 + "-lb1"}}
	if err := k8s.Create(ctx, lb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), lb) })
	lb.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.0.124"}}
	if err := k8s.Status().Update(ctx, lb); err != nil {
		t.Fatal(err)
	}
	updatePair(t, ns2, "second", func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualIPs = []string{"198.18.0.124"} })
	eventually(t, "the node's address reported", func() error {
		c := apimeta.FindStatusCondition(status(ns2, "second").Conditions, lbv1.ConditionVIPConflict)
		if want := vipConflictMessage([]string{"198.18.0.124 (node " + lb.Name + ")"}); c == nil || c.Message != want {
			return fmt.Errorf("VIPConflict %+v, want the message %q", c, want)
		}
		return nil
	})

	// Moved to a free address, it runs.
	updatePair(t, ns2, "second", func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualIPs = []string{"198.18.0.121"} })
	eventually(t, "the second pair runs", func() error {
		st := status(ns2, "second")
		if inConflict(ns2, "second") || !slices.Equal(st.VirtualIPs, []string{"198.18.0.121"}) {
			return fmt.Errorf("status %+v", st)
		}
		_, err := getDaemonSet(ns2, "second")
		return err
	})

	// A running pair changed to take the other's address keeps its own, and
	// its DaemonSet stays as it was; it is not Ready with its new spec.
	now := metav1.NewMicroTime(time.Now())
	reportAgent(t, ns2, "second", lbv1.AgentStatus{Node: "lb1", State: lbv1.StateMaster, Priority: 100, Since: now, LastUpdateTime: now})
	eventually(t, "the second pair served", func() error {
		if r := apimeta.FindStatusCondition(status(ns2, "second").Conditions, lbv1.ConditionReady); r == nil || r.Status != metav1.ConditionTrue {
			return fmt.Errorf("Ready %+v", r)
		}
		return nil
	})
	ds, err := getDaemonSet(ns2, "second")
	if err != nil {
		t.Fatal(err)
	}
	updatePair(t, ns2, "second", func(p *lbv1.LoadBalancerPair) {
		p.Spec.VirtualIPs = []string{"198.18.0.120", "198.18.0.122"}
	})
	eventually(t, "the conflict of a running pair reported", func() error {
		if !inConflict(ns2, "second") {
			return errors.New("no conflict yet")
		}
		return nil
	})
	if got := status(ns2, "second").VirtualIPs; !slices.Equal(got, []string{"198.18.0.121"}) {
		t.Errorf("status.virtualIPs of the pair in conflict = %q, want the running [198.18.0.121]", got)
	}
	eventually(t, "the running pair in conflict not Ready", func() error {
		r := apimeta.FindStatusCondition(status(ns2, "second").Conditions, lbv1.ConditionReady)
		if r == nil || r.Status != metav1.ConditionFalse || r.Reason != lbv1.ConditionVIPConflict || !strings.HasPrefix(r.Message, "lb1 serves the virtual IPs 198.18.0.121 ") {
			return fmt.Errorf("Ready %+v", r)
		}
		return nil
	})
	if after, err := getDaemonSet(ns2, "second"); err != nil {
		t.Fatal(err)
	} else if after.Generation != ds.Generation {
		t.Errorf("the DaemonSet of a pair in conflict changed (generation %d -> %d)", ds.Generation, after.Generation)
	}
	// Its agents still get a new image: the DaemonSet holds neither the VRID nor
	// the virtual IPs.
	if updated, notes := updatesToNextImage(t, ns2, "second"); !updated {
		t.Errorf("a running pair in a VIP conflict not updated to a new image: events %q", notes)
	}

	// The first pair lets the address go: the second takes it, without
	// waiting for a resync.
	updatePair(t, ns1, "first", func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualIPs = []string{"198.18.0.123"} })
	eventually(t, "the conflict settled", func() error {
		st := status(ns2, "second")
		if inConflict(ns2, "second") || !slices.Equal(st.VirtualIPs, []string{"198.18.0.120", "198.18.0.122"}) {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	if got := status(ns1, "first").VirtualIPs; !slices.Equal(got, []string{"198.18.0.123"}) {
		t.Errorf("the first pair's status.virtualIPs = %q, want [198.18.0.123]", got)
	}
}
