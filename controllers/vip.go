package controllers

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// parseVIPs reads a list of virtual IPs, leaving out what does not parse
// (the apiserver refuses such a spec), so that fd00::100 and fd00:0::100 are
// one address.
func parseVIPs(list []string) []netip.Addr {
	var out []netip.Addr
	for _, v := range list {
		if a, err := netip.ParseAddr(v); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// runsVIP tells whether a pair's agents run with vip: it is in the list the
// manager cleared for them, whatever the pair's spec says now.
func runsVIP(p *lbv1.LoadBalancerPair, vip netip.Addr) bool {
	return slices.Contains(parseVIPs(p.Status.VirtualIPs), vip)
}

// runsAllVIPs tells whether a pair already runs with every virtual IP of its
// spec, so that checking it again cannot grant it a new one.
func runsAllVIPs(p *lbv1.LoadBalancerPair) bool {
	for _, v := range parseVIPs(p.Spec.VirtualIPs) {
		if !runsVIP(p, v) {
			return false
		}
	}
	return true
}

// vipConflicts lists the virtual IPs of pair's spec that another pair keeps,
// as "198.18.0.100 (namespace/name)", given every pair the manager sees;
// none when pair may run its spec. Two agents holding one address would
// answer ARP for it in turn, so a virtual IP belongs to one pair: the one
// running with it keeps it, and between pairs that only ask for it, the
// older (then the lower namespace/name) gets it. A pair being deleted gives
// its addresses up.
func vipConflicts(pair *lbv1.LoadBalancerPair, all []lbv1.LoadBalancerPair) []string {
	var out []string
	for _, v := range parseVIPs(pair.Spec.VirtualIPs) {
		runs := func(p *lbv1.LoadBalancerPair) bool { return runsVIP(p, v) }
		var keepers []string
		for i := range all {
			o := &all[i]
			if o.UID == pair.UID || o.DeletionTimestamp != nil {
				continue
			}
			if !slices.Contains(parseVIPs(o.Spec.VirtualIPs), v) && !runs(o) {
				continue
			}
			if !precedes(pair, o, runs) {
				keepers = append(keepers, o.Namespace+"/"+o.Name)
			}
		}
		if len(keepers) > 0 {
			sort.Strings(keepers)
			out = append(out, fmt.Sprintf("%s (%s)", v, strings.Join(keepers, ", ")))
		}
	}
	return out
}

// nodeAddressConflicts lists the virtual IPs of pair's spec that are
// addresses of a node, as "198.18.0.11 (node lb1)". The holder would take
// such an address over with its announcements, and cut that node off.
func nodeAddressConflicts(pair *lbv1.LoadBalancerPair, nodes []corev1.Node) []string {
	vips := parseVIPs(pair.Spec.VirtualIPs)
	var out []string
	for _, n := range nodes {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && slices.Contains(vips, ip.Unmap()) {
				out = append(out, fmt.Sprintf("%s (node %s)", ip.Unmap(), n.Name))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// vipConflictMessage explains a VIPConflict condition.
func vipConflictMessage(conflicts []string) string {
	return fmt.Sprintf("spec.virtualIPs: already in use: %s; the agents keep running with status.virtualIPs (a new pair's are not started) until the conflict is gone: change spec.virtualIPs, or remove the other pair",
		strings.Join(conflicts, ", "))
}
