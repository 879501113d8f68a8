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
		want   map[string]time.Duration
	}{
		{"first sighting: fresh, whatever the clock says",
			t0, []lbv1.AgentStatus{entry("behind", t0.Add(-10*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]time.Duration{"behind": 10 * time.Minute, "ahead": -3 * time.Minute}},
		{"an unchanged entry keeps its skew, however long it stays unchanged",
			t0.Add(5 * time.Minute), []lbv1.AgentStatus{entry("behind", t0.Add(-10*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]time.Duration{"behind": 10 * time.Minute, "ahead": -3 * time.Minute}},
		{"a write is read as made when it is seen: a clock that stepped back is followed",
			t0.Add(6 * time.Minute), []lbv1.AgentStatus{entry("behind", t0.Add(-5*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]time.Duration{"behind": 11 * time.Minute, "ahead": -3 * time.Minute}},
		{"an entry gone is forgotten",
			t0.Add(7 * time.Minute), []lbv1.AgentStatus{entry("ahead", t0.Add(3*time.Minute))},
			map[string]time.Duration{"ahead": -3 * time.Minute}},
		{"and sighted anew when it comes back",
			t0.Add(8 * time.Minute), []lbv1.AgentStatus{entry("behind", t0.Add(-2*time.Minute)), entry("ahead", t0.Add(3*time.Minute))},
			map[string]time.Duration{"behind": 10 * time.Minute, "ahead": -3 * time.Minute}},
	}
	for _, st := range steps {
		if diff := cmp.Diff(st.want, c.observe(pair, st.agents, st.now)); diff != "" {
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
