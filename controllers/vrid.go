package controllers

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	apimeta "k8s.io/apimachinery/pkg/api/meta"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// Agent ports derived from the VRID when spec.agentPort is unset. VRIDs are
// unique per address family, so these never collide with each other; the
// VRIDs the manager allocates skip those whose port a pair proxies (see
// portsInUse).
const (
	agentPortBaseIPv4 = 9400
	agentPortBaseIPv6 = 9700
)

// isIPv6 tells the pair's address family from its first virtual IP. Pairs of
// different families never conflict: VRRP for IPv4 and IPv6 are separate
// protocols on the wire (RFC 5798 §5.2.3).
func isIPv6(p *lbv1.LoadBalancerPair) bool {
	return len(p.Spec.VirtualIPs) > 0 && ipv6(p.Spec.VirtualIPs[0])
}

// runsIPv6 tells the address family the pair's agents run: that of
// status.virtualIPs, else the spec's. They differ while a spec moved to the
// other family is in VIP conflict: the agents keep the old family, and with
// it status.virtualRouterID.
func runsIPv6(p *lbv1.LoadBalancerPair) bool {
	if len(p.Status.VirtualIPs) > 0 {
		return ipv6(p.Status.VirtualIPs[0])
	}
	return isIPv6(p)
}

// ipv6 tells whether s is an IPv6 address.
func ipv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && !a.Is4In6()
}

// runsVRID tells whether p's agents run vrid in the family v6 tells.
func runsVRID(p *lbv1.LoadBalancerPair, vrid int32, v6 bool) bool {
	return p.Status.VirtualRouterID == vrid && runsIPv6(p) == v6
}

// claimedVRID is the VRID a pair uses or asks for: the spec's, else the one
// allocated earlier, else 0.
func claimedVRID(p *lbv1.LoadBalancerPair) int32 {
	if p.Spec.VirtualRouterID != nil {
		return *p.Spec.VirtualRouterID
	}
	return p.Status.VirtualRouterID
}

// holdsVRID tells whether a pair is the established owner of vrid: it runs
// with it and is not itself in conflict.
func holdsVRID(p *lbv1.LoadBalancerPair, vrid int32) bool {
	return p.Status.VirtualRouterID == vrid && !apimeta.IsStatusConditionTrue(p.Status.Conditions, lbv1.ConditionVRIDConflict)
}

// vridDecision is the outcome of checking one pair's VRID against the others.
type vridDecision struct {
	// VRID is the VRID the pair runs with; 0 when it must not run.
	VRID int32
	// Allocated is set when the manager chose VRID (the spec left it empty).
	Allocated bool
	// ConflictWith names the pairs that hold the VRID this pair asks for.
	ConflictWith []string
	// Exhausted is set when no VRID is free for an allocation.
	Exhausted bool
}

// decideVRID settles which VRID pair runs with, given every pair the
// manager sees. Two pairs of one family may not share a VRID: the first to
// hold it keeps it (or, when neither holds it yet, the older pair); a loser
// whose VRID was allocated gets another one, a loser whose spec names the
// VRID is reported in conflict and not run. Another pair's VRID is both the
// one its spec asks for and the one its agents run with (status): a pair in
// conflict keeps running with its status.virtualRouterID, and nobody else
// may take that one, as vipConflicts does for status.virtualIPs. Each in its
// family: the spec's for the VRID asked for, the agents' (runsIPv6) for the
// one they run with. pair is decided once its spec's virtual IPs are clear,
// so for the family of its spec.
func decideVRID(pair *lbv1.LoadBalancerPair, all []lbv1.LoadBalancerPair) vridDecision {
	v6 := isIPv6(pair)
	asks := func(o *lbv1.LoadBalancerPair, vrid int32) bool { return claimedVRID(o) == vrid && isIPv6(o) == v6 }
	var others []*lbv1.LoadBalancerPair
	for i := range all {
		o := &all[i]
		if o.UID == pair.UID || o.DeletionTimestamp != nil || (isIPv6(o) != v6 && runsIPv6(o) != v6) {
			continue
		}
		others = append(others, o)
	}
	claim := claimedVRID(pair)
	if claim != 0 {
		var rivals []*lbv1.LoadBalancerPair
		for _, o := range others {
			if asks(o, claim) || runsVRID(o, claim, v6) {
				rivals = append(rivals, o)
			}
		}
		if len(rivals) == 0 || wins(pair, rivals, claim, v6) {
			return vridDecision{VRID: claim, Allocated: pair.Spec.VirtualRouterID == nil}
		}
		if pair.Spec.VirtualRouterID != nil {
			var names []string
			for _, r := range rivals {
				names = append(names, r.Namespace+"/"+r.Name)
			}
			sort.Strings(names)
			return vridDecision{ConflictWith: names}
		}
	}
	used := map[int32]bool{claim: claim != 0}
	for _, o := range others {
		if isIPv6(o) == v6 {
			used[claimedVRID(o)] = true
		}
		if runsIPv6(o) == v6 {
			used[o.Status.VirtualRouterID] = true
		}
	}
	// A new VRID fixes the agent port too, unless the spec sets one: skip
	// the VRIDs whose agent port a pair listens on. A VRID allocated
	// earlier is kept above even if its port got taken since: portConflicts
	// reports that, and moving it would disturb running agents.
	var inUse map[int32]bool
	if pair.Spec.AgentPort == nil {
		inUse = portsInUse(pair, all)
	}
	for v := int32(1); v <= 255; v++ {
		if !used[v] && !inUse[agentPort(pair, v)] {
			return vridDecision{VRID: v, Allocated: true}
		}
	}
	return vridDecision{Exhausted: true}
}

// wins tells whether pair keeps vrid, in the family v6 tells, against
// rivals. A pair whose agents run with vrid in that family comes first, even
// one in conflict over the VRID its spec asks for now: its agents keep vrid
// until it gets that other one, and a newcomer, however old, must not join
// them. Between pairs that both run it, the holder (not in conflict) comes
// first; between two holders, the one whose spec asks for vrid, then the
// older. Two pairs hold one VRID only after a race (two managers of other
// namespaces, each reading before the other's pair existed): the one the
// manager gave the VRID to can move to another without going against its
// spec, the one that asks for it cannot.
func wins(pair *lbv1.LoadBalancerPair, rivals []*lbv1.LoadBalancerPair, vrid int32, v6 bool) bool {
	runs := func(p *lbv1.LoadBalancerPair) bool { return runsVRID(p, vrid, v6) }
	holds := func(p *lbv1.LoadBalancerPair) bool { return runs(p) && holdsVRID(p, vrid) }
	asks := func(p *lbv1.LoadBalancerPair) bool {
		return p.Spec.VirtualRouterID != nil && *p.Spec.VirtualRouterID == vrid
	}
	for _, r := range rivals {
		if runs(pair) != runs(r) {
			if runs(r) {
				return false
			}
			continue
		}
		if holds(pair) && holds(r) && asks(pair) != asks(r) {
			if asks(r) {
				return false
			}
			continue
		}
		if !precedes(pair, r, holds) {
			return false
		}
	}
	return true
}

// precedes orders two pairs that want one VRID or one virtual IP: the one
// running with it (holds) comes first, then the older pair, then the lower
// namespace/name.
func precedes(a, b *lbv1.LoadBalancerPair, holds func(*lbv1.LoadBalancerPair) bool) bool {
	if ha, hb := holds(a), holds(b); ha != hb {
		return ha
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// agentPort is the node port of the pair's agents.
func agentPort(p *lbv1.LoadBalancerPair, vrid int32) int32 {
	if p.Spec.AgentPort != nil {
		return *p.Spec.AgentPort
	}
	if isIPv6(p) {
		return agentPortBaseIPv6 + vrid
	}
	return agentPortBaseIPv4 + vrid
}

func conflictMessage(vrid int32, with []string) string {
	return fmt.Sprintf("virtualRouterID %d is already used by %s on the same address family; the agents are not started (or updated) until this pair gets a free VRID: change spec.virtualRouterID or remove it to let the manager allocate one",
		vrid, strings.Join(with, ", "))
}
