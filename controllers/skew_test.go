package controllers

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// TestClockSkewsFollowTheLatestWrite: an entry that changed was written a moment ago,
// whatever its clock says; one that did not change keeps the skew it was seen with.
// Entries found at the first sighting of the pair are unseen until they change; one
// that appears later for the pair was just written.
func TestClockSkewsFollowTheLatestWrite(t *testing.T) {
	var c clockSkews
	pair := types.NamespacedName{Namespace: "ns", Name: "web"}
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	entry := func(node string, update time.Time) lbv1.AgentStatus {
		return lbv1.AgentStatus{Node: node, LastUpdateTime: metav1.NewMicroTime(update)}
	}
	steps := []struct {
		name   string
		now    time.Time
		agents []lbv1.AgentStatus
		want   map[string]agentClock
	}{
		{"first sighting: fresh, whatever the clock says",
			t0, []lbv1.AgentStatus{entry("behind", t0.Add(-10*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]agentClock{"behind": {10 * time.Minute, true}, "ahead": {-3 * time.Minute, true}}},
		{"an unchanged entry keeps its skew, however long it stays unchanged",
			t0.Add(5 * time.Minute), []lbv1.AgentStatus{entry("behind", t0.Add(-10*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]agentClock{"behind": {10 * time.Minute, true}, "ahead": {-3 * time.Minute, true}}},
		{"a write is read as made when it is seen: a clock that stepped back is followed",
			t0.Add(6 * time.Minute), []lbv1.AgentStatus{entry("behind", t0.Add(-5*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]agentClock{"behind": {11 * time.Minute, false}, "ahead": {-3 * time.Minute, true}}},
		{"an entry gone is forgotten",
			t0.Add(7 * time.Minute), []lbv1.AgentStatus{entry("ahead", t0.Add(3*time.Minute))},
			map[string]agentClock{"ahead": {-3 * time.Minute, true}}},
		{"and sighted anew when it comes back",
			t0.Add(8 * time.Minute), []lbv1.AgentStatus{entry("behind", t0.Add(-2*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]agentClock{"behind": {10 * time.Minute, false}, "ahead": {-3 * time.Minute, true}}},
	}
	for _, st := range steps {
		if diff := cmp.Diff(st.want, c.observe(pair, st.agents, st.now), cmp.AllowUnexported(agentClock{})); diff != "" {
			t.Errorf("%s: skews (-want +got):\n%s", st.name, diff)
		}
	}
	c.forget(pair)
	if _, ok := c.byPair[pair]; ok {
		t.Error("a forgotten pair's sightings remain")
	}
}

// TestStatusWithSkewedClocks follows a pair whose nodes' clocks are off: lb1's ten
// minutes behind the manager's, lb2's three minutes ahead. Read by the manager's clock
// (through clockSkews), both are live while they write their entries every 10 s; when
// lb1, the master, dies and lb2 takes over, lb2 is the holder and lb1 is superseded,
// not a second master; lb1's entry is removed once it has been silent for
// AgentStaleAfter. By the agents' own timestamps lb1 would have been removed from the
// start, and then been the holder beside lb2.
func TestStatusWithSkewedClocks(t *testing.T) {
	var c clockSkews
	pair := types.NamespacedName{Namespace: "ns", Name: "web"}
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := map[string]time.Duration{"lb1": -10 * time.Minute, "lb2": 3 * time.Minute}
	entry := func(node string, state lbv1.VRRPState, since, updated time.Time) lbv1.AgentStatus {
		return lbv1.AgentStatus{Node: node, State: state,
			Since: metav1.NewMicroTime(since.Add(clock[node])), LastUpdateTime: metav1.NewMicroTime(updated.Add(clock[node]))}
	}
	type view struct {
		Holder  string
		Masters []string
		Live    int
		Unknown []string
		Stale   []string
	}
	summarize := func(now time.Time, agents ...lbv1.AgentStatus) view {
		s := summarizeAgents(agents, "", nil, now, c.observe(pair, agents, now))
		return view{s.Holder, s.Masters, s.Live, s.Unknown, s.Stale}
	}

	var got view
	for i := range 6 { // a minute of refreshes
		now := t0.Add(time.Duration(i) * 10 * time.Second)
		got = summarize(now.Add(50*time.Millisecond),
			entry("lb1", lbv1.StateMaster, t0.Add(-time.Hour), now), entry("lb2", lbv1.StateBackup, t0.Add(-time.Hour), now))
	}
	if diff := cmp.Diff(view{Holder: "lb1", Masters: []string{"lb1"}, Live: 2}, got); diff != "" {
		t.Errorf("both refreshing (-want +got):\n%s", diff)
	}

	// lb1 dies after its last refresh at t0+50s; lb2 takes over at t0+54s.
	lb1Last := entry("lb1", lbv1.StateMaster, t0.Add(-time.Hour), t0.Add(50*time.Second))
	takeover := t0.Add(54 * time.Second)
	got = summarize(takeover.Add(50*time.Millisecond), lb1Last, entry("lb2", lbv1.StateMaster, takeover, takeover))
	if diff := cmp.Diff(view{Holder: "lb2", Masters: []string{"lb2"}, Live: 1, Unknown: []string{"lb1"}}, got); diff != "" {
		t.Errorf("after lb2 took over (-want +got):\n%s", diff)
	}

	later := takeover.Add(AgentStaleAfter + 10*time.Second)
	got = summarize(later, lb1Last, entry("lb2", lbv1.StateMaster, takeover, later.Add(-time.Second)))
	if diff := cmp.Diff(view{Holder: "lb2", Masters: []string{"lb2"}, Live: 1, Stale: []string{"lb1"}}, got); diff != "" {
		t.Errorf("lb1 silent for longer than AgentStaleAfter (-want +got):\n%s", diff)
	}
}

// TestManagerRestartAfterTheHolderDied: the holder lb1 dies with the manager's leader;
// lb2 takes over, and a new manager starts 20 s later. lb1's entry, which it finds, is
// not a second master (a split brain naming a dead node) nor the holder, whatever its
// timestamps say; it is unseen, then Unknown. A manager that ran all along sees the same.
func TestManagerRestartAfterTheHolderDied(t *testing.T) {
	pair := types.NamespacedName{Namespace: "ns", Name: "web"}
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	entry := func(node string, state lbv1.VRRPState, since, updated time.Time) lbv1.AgentStatus {
		return lbv1.AgentStatus{Node: node, State: state, Since: metav1.NewMicroTime(since), LastUpdateTime: metav1.NewMicroTime(updated)}
	}
	type view struct {
		Holder  string
		Masters []string
		Unknown []string
	}
	for _, tt := range []struct {
		name string
		// lb1Since is when lb1 became master; its last refresh was at t0-2s.
		lb1Since time.Time
	}{
		{"a holder of an hour", t0.Add(-time.Hour)},
		// By the timestamps alone, lb1 would be the master that took over last.
		{"a holder of 10 s", t0.Add(-12 * time.Second)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var c clockSkews
			lb1 := entry("lb1", lbv1.StateMaster, tt.lb1Since, t0.Add(-2*time.Second))
			summarize := func(now time.Time, lb2Updated time.Time) view {
				agents := []lbv1.AgentStatus{lb1, entry("lb2", lbv1.StateMaster, t0.Add(3*time.Second), lb2Updated)}
				s := summarizeAgents(agents, "lb2", nil, now, c.observe(pair, agents, now))
				for _, cond := range agentConditions(s, 2, 1) {
					if cond.Type == lbv1.ConditionSplitBrain && cond.Status == metav1.ConditionTrue {
						t.Errorf("at %v: %s", now.Sub(t0), cond.Message)
					}
				}
				return view{s.Holder, s.Masters, s.Unknown}
			}
			// The new manager's first look, before lb2's next refresh: the status
			// named lb2, and nothing seen says otherwise.
			if diff := cmp.Diff(view{Holder: "lb2", Masters: []string{"lb2"}, Unknown: []string{"lb1"}}, summarize(t0.Add(20*time.Second), t0.Add(13*time.Second))); diff != "" {
				t.Errorf("at the new manager's start (-want +got):\n%s", diff)
			}
			// lb2 refreshes: seen writing, it is the holder by right.
			if diff := cmp.Diff(view{Holder: "lb2", Masters: []string{"lb2"}, Unknown: []string{"lb1"}}, summarize(t0.Add(23*time.Second), t0.Add(23*time.Second))); diff != "" {
				t.Errorf("after lb2's refresh (-want +got):\n%s", diff)
			}
		})
	}
}
