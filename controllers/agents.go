package controllers

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// Agents refresh their entry every 10s, and retry a failed write within 20s.
const (
	// AgentSilentAfter is how long an entry may go without a refresh before
	// the manager stops counting the agent as up: it is not the holder, and
	// its state shows as Unknown.
	AgentSilentAfter = 45 * time.Second
	// AgentStaleAfter is how long an entry may go without a refresh before
	// the manager removes it: the agent is gone.
	AgentStaleAfter = 2 * time.Minute
)

// agentSummary is what the manager derives from the agents' own entries in
// status.agents.
type agentSummary struct {
	// Holder is the master the pair's status names: the one that became
	// master last.
	Holder      string
	HolderSince *metav1.Time
	HolderEntry *lbv1.AgentStatus
	Masters     []string
	// Live counts agents that refreshed their entry recently and are in
	// Backup or Master.
	Live int
	// Faulty names live agents in Fault.
	Faulty []string
	// Unknown names agents whose state cannot be trusted: entries not
	// refreshed within AgentSilentAfter, and masters superseded by another.
	Unknown []string
	// Stale names entries not refreshed within AgentStaleAfter.
	Stale []string
	// NextChange is when the summary changes by itself, as an entry turns
	// silent or stale; zero when none will.
	NextChange time.Time
	// DownPorts names the holder's ports that have no healthy backend, and
	// PartialPorts those with some backends down.
	DownPorts, PartialPorts []string
	// ConfigErrors are the live agents that could not apply the current spec, as
	// "node, node: why", one item per error (see groupConfigErrors).
	ConfigErrors []string
	// IgnoredPriorities names the nodes whose priority label their agents
	// ignore, "" when none; the reconciler reads it from the nodes' labels.
	IgnoredPriorities string
}

// summarizeAgents reads the per-node entries. previous is the pair's
// current holder, so that holderSince does not move while the holder stays.
// clocks says how far each node's clock is behind the manager's and whether
// the manager has seen it write (see clockSkews); a node missing from it is
// taken to agree with the manager, and seen.
//
// A master that has not written its entry since another agent became
// master is superseded: the other took over because it stopped hearing it
// (it crashed, or lost its link), so it is neither the holder nor a sign of
// split brain. Masters that keep reporting at once are a split brain; the
// holder is then the one that became master last. A master the manager has
// not seen write, just after it started, is neither until it writes: a live
// agent does within 10 s, and one that died before the manager started never
// does. While no master has been seen, the holder stays the one the status
// named.
func summarizeAgents(agents []lbv1.AgentStatus, previous string, previousSince *metav1.Time, now time.Time, clocks map[string]agentClock) agentSummary {
	var s agentSummary
	var masters []*lbv1.AgentStatus
	configErrors := map[string][]string{} // nodes by error
	// Timestamps of the agents' clocks, read by the manager's.
	updated := func(a *lbv1.AgentStatus) time.Time { return a.LastUpdateTime.Add(clocks[a.Node].skew) }
	since := func(a *lbv1.AgentStatus) time.Time { return a.Since.Add(clocks[a.Node].skew) }
	unseen := func(a *lbv1.AgentStatus) bool { return clocks[a.Node].unseen }
	for i := range agents {
		a := &agents[i]
		age := now.Sub(updated(a))
		switch {
		case age > AgentStaleAfter:
			s.Stale = append(s.Stale, a.Node)
			continue
		case age > AgentSilentAfter:
			s.Unknown = append(s.Unknown, a.Node)
			s.changesAt(updated(a).Add(AgentStaleAfter))
			continue
		}
		s.changesAt(updated(a).Add(AgentSilentAfter))
		if a.ConfigError != "" {
			configErrors[a.ConfigError] = append(configErrors[a.ConfigError], a.Node)
		}
		switch a.State {
		case lbv1.StateMaster:
			masters = append(masters, a)
		case lbv1.StateBackup:
			s.Live++
		case lbv1.StateFault:
			s.Faulty = append(s.Faulty, a.Node)
		}
	}
	s.ConfigErrors = groupConfigErrors(configErrors)
	sort.Slice(masters, func(i, j int) bool {
		mi, mj := masters[i], masters[j]
		if ui, uj := unseen(mi), unseen(mj); ui != uj {
			return uj
		}
		if unseen(mi) && (mi.Node == previous) != (mj.Node == previous) {
			return mi.Node == previous
		}
		if si, sj := since(mi), since(mj); !si.Equal(sj) {
			return sj.Before(si)
		}
		return mi.Node < mj.Node
	})
	for i, m := range masters {
		if i > 0 && (updated(m).Before(since(masters[0])) || unseen(m)) {
			s.Unknown = append(s.Unknown, m.Node)
			continue
		}
		s.Live++
		s.Masters = append(s.Masters, m.Node)
	}
	sort.Strings(s.Unknown)
	if len(masters) == 0 {
		return s
	}
	h := masters[0]
	s.Holder, s.HolderEntry = h.Node, h
	holderSince := metav1.NewTime(h.Since.Time)
	s.HolderSince = &holderSince
	if previous == h.Node && previousSince != nil {
		s.HolderSince = previousSince
	}
	for _, p := range h.Ports {
		switch {
		case p.HealthyBackends == 0:
			s.DownPorts = append(s.DownPorts, p.Name)
		case p.HealthyBackends < p.Backends:
			s.PartialPorts = append(s.PartialPorts, p.Name)
		}
	}
	return s
}

// maxConfigErrors bounds the distinct errors the Degraded condition lists:
// each may be 1 KB, and the apiserver refuses the whole status when a
// condition's message is over 32 KB.
const maxConfigErrors = 8

// groupConfigErrors lists each error once, with the nodes that report it
// (agents on many nodes mostly fail alike, as on a backend name that does not
// resolve), in the order of their first node, and at most maxConfigErrors.
func groupConfigErrors(nodes map[string][]string) []string {
	var out []string
	for why, ns := range nodes {
		sort.Strings(ns)
		out = append(out, strings.Join(ns, ", ")+": "+why)
	}
	sort.Strings(out)
	if len(out) > maxConfigErrors {
		out = append(out[:maxConfigErrors], fmt.Sprintf("and %d other errors", len(out)-maxConfigErrors))
	}
	return out
}

// changesAt records t as a time the summary changes, keeping the earliest.
func (s *agentSummary) changesAt(t time.Time) {
	if s.NextChange.IsZero() || t.Before(s.NextChange) {
		s.NextChange = t
	}
}

// noNodes says why no node is due an agent, most often a nodeSelector that
// matches no node, and where to look.
const noNodes = "no node is due an agent: no node matches spec.nodeSelector (and spec.tolerations, for tainted nodes), " +
	"or every one that does is labelled " + corev1.LabelNodeExcludeBalancers

// agentConditions turns a summary into the Ready, Degraded and SplitBrain
// conditions. desired is how many nodes should run an agent.
func agentConditions(s agentSummary, desired int32, generation int64) []metav1.Condition {
	cond := func(t string, ok bool, reason, msg string) metav1.Condition {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		return metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: generation}
	}
	splitBrain := cond(lbv1.ConditionSplitBrain, false, "OneMaster", "at most one agent claims the virtual IPs")
	if len(s.Masters) > 1 {
		splitBrain = cond(lbv1.ConditionSplitBrain, true, "SeveralMasters",
			fmt.Sprintf("agents on %s all claim the virtual IPs: they do not hear each other's adverts", strings.Join(s.Masters, ", ")))
	}
	var out []metav1.Condition
	if desired == 0 && s.Live == 0 { // no live agent, so no holder either
		return append(out, cond(lbv1.ConditionReady, false, "NoNodes", noNodes), cond(lbv1.ConditionDegraded, false, "NoNodes", noNodes), splitBrain)
	}
	switch {
	case s.Holder == "":
		out = append(out, cond(lbv1.ConditionReady, false, "NoMaster", "no agent holds the virtual IPs"))
	case len(s.DownPorts) > 0:
		out = append(out, cond(lbv1.ConditionReady, false, "NoHealthyBackends",
			fmt.Sprintf("%s holds the virtual IPs but ports %s have no healthy backend", s.Holder, strings.Join(s.DownPorts, ", "))))
	default:
		out = append(out, cond(lbv1.ConditionReady, true, "Serving", fmt.Sprintf("%s holds the virtual IPs and serves", s.Holder)))
	}

	var problems []string
	if int32(s.Live) < desired {
		problems = append(problems, fmt.Sprintf("%d of %d agents are up", s.Live, desired))
	}
	if len(s.Faulty) > 0 {
		problems = append(problems, "in fault: "+strings.Join(s.Faulty, ", "))
	}
	// Ready says so too, but an alert on Degraded must not read "every
	// backend is healthy" while the holder has none on a port.
	if len(s.DownPorts) > 0 {
		problems = append(problems, "no healthy backend on ports: "+strings.Join(s.DownPorts, ", "))
	}
	if len(s.PartialPorts) > 0 {
		problems = append(problems, "backends down on ports: "+strings.Join(s.PartialPorts, ", "))
	}
	if len(s.ConfigErrors) > 0 {
		problems = append(problems, "spec errors on "+strings.Join(s.ConfigErrors, "; "))
	}
	if s.IgnoredPriorities != "" {
		problems = append(problems, s.IgnoredPriorities)
	}
	if len(problems) > 0 {
		out = append(out, cond(lbv1.ConditionDegraded, true, "Degraded", strings.Join(problems, "; ")))
	} else {
		out = append(out, cond(lbv1.ConditionDegraded, false, "AllHealthy", "every agent is up and every backend is healthy"))
	}

	return append(out, splitBrain)
}
