package controllers

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// An agent serves its health checks and metrics on its agent port on every
// address of its node (IPv4 and IPv6: the listener is dual-stack), while its
// proxy listens on each of the pair's ports on the virtual IPs. On Linux a
// wildcard listener and a listener on one address exclude each other on one
// TCP port, whichever binds first, so on a node that runs agents of several
// pairs, an agent port must be none of these pairs' ports and no other
// pair's agent port.

// proxiedPort names the entry of pair's spec.ports that listens on port.
func proxiedPort(p *lbv1.LoadBalancerPair, port int32) (string, bool) {
	for _, sp := range p.Spec.Ports {
		if sp.Port == port {
			return sp.Name, true
		}
	}
	return "", false
}

// portsInUse is what no VRID the manager allocates to pair may derive its
// agent port from: pair's own ports, and the ports and agent ports (the one
// it runs with and the one it asks for) of every other pair of the cluster,
// of either family. Cluster-wide rather than per node, so that a pair that
// moves to other nodes later does not bring a conflict along.
func portsInUse(pair *lbv1.LoadBalancerPair, all []lbv1.LoadBalancerPair) map[int32]bool {
	used := map[int32]bool{}
	for _, sp := range pair.Spec.Ports {
		used[sp.Port] = true
	}
	for i := range all {
		o := &all[i]
		if o.UID == pair.UID || o.DeletionTimestamp != nil {
			continue
		}
		for _, sp := range o.Spec.Ports {
			used[sp.Port] = true
		}
		used[o.Status.AgentPort] = true
		if o.Spec.AgentPort != nil || claimedVRID(o) != 0 {
			used[agentPort(o, claimedVRID(o))] = true
		}
	}
	return used
}

// keepsAgentPort tells whether pair keeps port, the agent port it runs with
// or asks for, against o, whose agents listen on it or ask to. Agents that
// listen on it now come first, so that a newcomer, however old, never
// disturbs running agents; between two that both do (or neither), the one
// not in a port conflict, then the older.
func keepsAgentPort(pair, o *lbv1.LoadBalancerPair, port int32) bool {
	runs := func(p *lbv1.LoadBalancerPair) bool { return p.Status.AgentPort == port }
	if rp, ro := runs(pair), runs(o); rp != ro {
		return rp
	}
	holds := func(p *lbv1.LoadBalancerPair) bool {
		return runs(p) && !apimeta.IsStatusConditionTrue(p.Status.Conditions, lbv1.ConditionPortConflict)
	}
	return precedes(pair, o, holds)
}

// sharedNode is the first node, by name, that runs agents of both pairs;
// "" when none does.
func sharedNode(a, b *lbv1.LoadBalancerPair, nodes []corev1.Node) string {
	var names []string
	for i := range nodes {
		if runsAgentOn(a, &nodes[i]) && runsAgentOn(b, &nodes[i]) {
			names = append(names, nodes[i].Name)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return slices.Min(names)
}

// portConflicts explains why pair's agents, run with the agent port of VRID
// vrid, would meet another listener on a port, given every pair and node the
// manager sees; "" when they would not. The agent port may not be one of the
// pair's own ports. On a node that also runs another pair's agents:
//   - the agent port may be a port the other pair proxies only if the pair's
//     agents listen on it already (status.agentPort): a new or changed agent
//     port must not take a proxied port, while a port added to spec.ports
//     later is the other pair's to give up;
//   - it may be the other pair's agent port only if the pair keeps it
//     (keepsAgentPort);
//   - none of the pair's ports may be the agent port the other pair's agents
//     listen on; one the other only asks for is the other's conflict.
//
// holdBack tells whether the DaemonSet must not be applied: the agent port
// is taken and the agents do not listen on it yet, so rolling them onto it
// would start agents that cannot bind it. In every other conflict the agent
// port is the agents' own already, or free, so holding the update back would
// protect nothing and would keep new images and template changes from the
// pair.
func portConflicts(pair *lbv1.LoadBalancerPair, vrid int32, all []lbv1.LoadBalancerPair, nodes []corev1.Node) (msg string, holdBack bool) {
	port := agentPort(pair, vrid)
	runs := pair.Status.AgentPort == port
	var agentClashes, portClashes []string
	if name, ok := proxiedPort(pair, port); ok {
		agentClashes = append(agentClashes, fmt.Sprintf("spec.ports[%s] of this pair", name))
	}
	for i := range all {
		o := &all[i]
		if o.UID == pair.UID || o.DeletionTimestamp != nil {
			continue
		}
		// The agent ports o listens on or asks for. Two agent ports
		// derived from VRIDs of one family are equal only for equal VRIDs,
		// which decideVRID settled: the pair got its VRID.
		var theirs []int32
		if o.Status.AgentPort != 0 {
			theirs = append(theirs, o.Status.AgentPort)
		}
		if claim := claimedVRID(o); o.Spec.AgentPort != nil || claim != 0 {
			asks := agentPort(o, claim)
			if asks != port || pair.Spec.AgentPort != nil || o.Spec.AgentPort != nil || isIPv6(o) != isIPv6(pair) {
				theirs = append(theirs, asks)
			}
		}
		var mine, ours []string
		if name, ok := proxiedPort(o, port); ok && !runs {
			mine = append(mine, fmt.Sprintf("port %d (%s) of %s/%s", port, name, o.Namespace, o.Name))
		}
		if slices.Contains(theirs, port) && !keepsAgentPort(pair, o, port) {
			mine = append(mine, fmt.Sprintf("the agent port of %s/%s", o.Namespace, o.Name))
		}
		for _, sp := range pair.Spec.Ports {
			if o.Status.AgentPort == sp.Port {
				ours = append(ours, fmt.Sprintf("spec.ports[%s] %d is the agent port of %s/%s", sp.Name, sp.Port, o.Namespace, o.Name))
			}
		}
		if len(mine)+len(ours) == 0 {
			continue
		}
		node := sharedNode(pair, o, nodes)
		if node == "" {
			// The two pairs' agents never meet on a node.
			continue
		}
		on := " (both run on node " + node + ")"
		for _, s := range mine {
			agentClashes = append(agentClashes, s+on)
		}
		for _, s := range ours {
			portClashes = append(portClashes, s+on)
		}
	}
	if len(agentClashes)+len(portClashes) == 0 {
		return "", false
	}
	var parts, fixes []string
	if len(agentClashes) > 0 {
		origin := "spec.agentPort"
		if pair.Spec.AgentPort == nil {
			origin = fmt.Sprintf("%d+virtualRouterID %d", port-vrid, vrid)
		}
		parts = append(parts, fmt.Sprintf("agent port %d (%s) is also %s", port, origin, strings.Join(agentClashes, ", ")))
		fixes = append(fixes, "set spec.agentPort to a free port")
	}
	if len(portClashes) > 0 {
		parts = append(parts, portClashes...)
		fixes = append(fixes, "change spec.ports, or set the other pair's spec.agentPort to a free port")
	}
	holdBack = len(agentClashes) > 0 && !runs
	effect := "the agents are updated as usual, but on that node one of the two listeners cannot bind the port"
	if holdBack {
		effect = "the agents are not started (or updated)"
	}
	return fmt.Sprintf("%s; an agent listens on its agent port on every address of its node, so no agent port may be a port a pair proxies on that node, or another pair's agent port; %s until the ports differ: %s",
		strings.Join(parts, "; "), effect, strings.Join(fixes, "; ")), holdBack
}
