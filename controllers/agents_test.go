package controllers

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

func TestSummarizeAgents(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	t0 := metav1.NewTime(now.Add(-time.Hour))
	t1 := metav1.NewTime(now.Add(-time.Minute))
	fresh := metav1.NewTime(now.Add(-10 * time.Second))
	old := metav1.NewTime(now.Add(-AgentStaleAfter - time.Second))
	silent := metav1.NewTime(now.Add(-AgentSilentAfter - time.Second))
	agent := func(node string, state lbv1.VRRPState, prio int32, since, updated metav1.Time, ports ...lbv1.PortStatus) lbv1.AgentStatus {
		return lbv1.AgentStatus{Node: node, State: state, Priority: prio, Since: metav1.NewMicroTime(since.Time), LastUpdateTime: metav1.NewMicroTime(updated.Time), Ports: ports}
	}
	healthy := lbv1.PortStatus{Name: "http", HealthyBackends: 2, Backends: 2}
	partial := lbv1.PortStatus{Name: "http", HealthyBackends: 1, Backends: 2}
	down := lbv1.PortStatus{Name: "http", HealthyBackends: 0, Backends: 2}

	type result struct {
		Holder      string
		HolderSince *metav1.Time
		Masters     []string
		Live        int
		Faulty      []string
		Unknown     []string
		Stale       []string
		Down        []string
		Partial     []string
		Config      []string
		Conditions  map[string]string
	}
	tests := []struct {
		name          string
		agents        []lbv1.AgentStatus
		previous      string
		previousSince *metav1.Time
		desired       int32
		want          result
	}{
		{
			name:    "one master one backup",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, healthy), agent("lb2", lbv1.StateBackup, 90, t0, fresh)},
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1"}, Live: 2,
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "False/AllHealthy", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:          "holderSince is kept while the holder stays",
			agents:        []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, healthy), agent("lb2", lbv1.StateBackup, 90, t0, fresh)},
			previous:      "lb1",
			previousSince: &t0,
			desired:       2,
			want: result{Holder: "lb1", HolderSince: &t0, Masters: []string{"lb1"}, Live: 2,
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "False/AllHealthy", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "no master",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateBackup, 100, t1, fresh), agent("lb2", lbv1.StateFault, 0, t0, fresh)},
			desired: 2,
			want: result{Live: 1, Faulty: []string{"lb2"},
				Conditions: map[string]string{"Ready": "False/NoMaster", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "split brain: both keep reporting; the holder is the newer master",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 90, t1, fresh, healthy), agent("lb2", lbv1.StateMaster, 100, t0, fresh, healthy)},
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1", "lb2"}, Live: 2,
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "False/AllHealthy", "SplitBrain": "True/SeveralMasters"}},
		},
		{
			name: "a master silent since another took over is superseded, not split brain",
			agents: []lbv1.AgentStatus{
				agent("lb1", lbv1.StateMaster, 150, t0, metav1.NewTime(t1.Add(-time.Second)), healthy),
				agent("lb2", lbv1.StateMaster, 100, t1, fresh, healthy),
			},
			desired: 2,
			want: result{Holder: "lb2", HolderSince: &t1, Masters: []string{"lb2"}, Live: 1, Unknown: []string{"lb1"},
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "stale master is not the holder",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, old, healthy), agent("lb2", lbv1.StateBackup, 90, t0, fresh)},
			desired: 2,
			want: result{Live: 1, Stale: []string{"lb1"},
				Conditions: map[string]string{"Ready": "False/NoMaster", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "a silent backup is not up, before its entry is removed",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, healthy), agent("lb2", lbv1.StateBackup, 90, t0, silent)},
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1"}, Live: 1, Unknown: []string{"lb2"},
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "a silent master is not the holder",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, silent, healthy), agent("lb2", lbv1.StateBackup, 90, t0, fresh)},
			desired: 2,
			want: result{Live: 1, Unknown: []string{"lb1"},
				Conditions: map[string]string{"Ready": "False/NoMaster", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "master without healthy backends is not ready",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, down), agent("lb2", lbv1.StateBackup, 90, t0, fresh)},
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1"}, Live: 2, Down: []string{"http"},
				Conditions: map[string]string{"Ready": "False/NoHealthyBackends", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "some backends down degrade",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, partial), agent("lb2", lbv1.StateBackup, 90, t0, fresh)},
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1"}, Live: 2, Partial: []string{"http"},
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name: "a spec an agent could not apply degrades",
			agents: func() []lbv1.AgentStatus {
				backup := agent("lb2", lbv1.StateBackup, 90, t0, fresh)
				backup.ConfigError = `spec.authentication.passwordSecretRef: Secret "vrrp" not found`
				return []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, healthy), backup}
			}(),
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1"}, Live: 2,
				Config:     []string{`lb2: spec.authentication.passwordSecretRef: Secret "vrrp" not found`},
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "fewer agents than nodes degrade",
			agents:  []lbv1.AgentStatus{agent("lb1", lbv1.StateMaster, 100, t1, fresh, healthy)},
			desired: 2,
			want: result{Holder: "lb1", HolderSince: &t1, Masters: []string{"lb1"}, Live: 1,
				Conditions: map[string]string{"Ready": "True/Serving", "Degraded": "True/Degraded", "SplitBrain": "False/OneMaster"}},
		},
		{
			name:    "no node selected: a nodeSelector that matches no node says so",
			desired: 0,
			want:    result{Conditions: map[string]string{"Ready": "False/NoNodes", "Degraded": "False/NoNodes", "SplitBrain": "False/OneMaster"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summarizeAgents(tt.agents, tt.previous, tt.previousSince, now, nil)
			got := result{Holder: s.Holder, HolderSince: s.HolderSince, Masters: s.Masters, Live: s.Live,
				Faulty: s.Faulty, Unknown: s.Unknown, Stale: s.Stale, Down: s.DownPorts, Partial: s.PartialPorts, Config: s.ConfigErrors, Conditions: map[string]string{}}
			for _, c := range agentConditions(s, tt.desired, 1) {
				got.Conditions[c.Type] = string(c.Status) + "/" + c.Reason
				if c.Message == "" || c.ObservedGeneration != 1 {
					t.Errorf("condition %s lacks a message or generation: %+v", c.Type, c)
				}
				if c.Reason == "NoNodes" && !strings.Contains(c.Message, "spec.nodeSelector") {
					t.Errorf("%s says %q, not which field to check", c.Type, c.Message)
				}
				for _, e := range tt.want.Config {
					if c.Type == lbv1.ConditionDegraded && !strings.Contains(c.Message, e) {
						t.Errorf("Degraded says %q, not %q", c.Message, e)
					}
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("summary (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSummaryNextChange(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	entry := func(node string, updated time.Time) lbv1.AgentStatus {
		return lbv1.AgentStatus{Node: node, State: lbv1.StateBackup, LastUpdateTime: metav1.NewMicroTime(updated)}
	}
	tests := []struct {
		name   string
		agents []lbv1.AgentStatus
		want   time.Time
	}{
		{"none", nil, time.Time{}},
		{"fresh entries turn silent", []lbv1.AgentStatus{entry("lb1", now.Add(-5*time.Second)), entry("lb2", now.Add(-10*time.Second))}, now.Add(AgentSilentAfter - 10*time.Second)},
		{"a silent entry turns stale", []lbv1.AgentStatus{entry("lb1", now.Add(-time.Minute))}, now.Add(AgentStaleAfter - time.Minute)},
		{"stale entries change nothing more", []lbv1.AgentStatus{entry("lb1", now.Add(-time.Hour))}, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := summarizeAgents(tt.agents, "", nil, now, nil).NextChange; !got.Equal(tt.want) {
				t.Errorf("NextChange %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNodesSummary(t *testing.T) {
	agents := []lbv1.AgentStatus{{Node: "lb2", State: lbv1.StateMaster}, {Node: "lb1", State: lbv1.StateMaster}, {Node: "lb3", State: lbv1.StateBackup}}
	got := nodesSummary(agents, []string{"lb3"}, []string{"lb1"})
	if want := "lb1:Unknown,lb2:Master"; got != want {
		t.Errorf("nodesSummary = %q, want %q", got, want)
	}
}

func TestHolderEventsNameTheReasonWhenThereIsOne(t *testing.T) {
	for _, tc := range []struct {
		name             string
		previous, holder string
		reason           string
		want             string
	}{
		{"first holder with a reason", "", "lb1", "preempted a lower priority master", "Normal HolderElected lb1 holds the virtual IPs: preempted a lower priority master"},
		{"first holder without one", "", "lb1", "", "Normal HolderElected lb1 holds the virtual IPs"},
		{"a move with a reason", "lb1", "lb2", "master down timer expired", "Normal Failover virtual IPs moved from lb1 to lb2: master down timer expired"},
		{"a move without one", "lb1", "lb2", "", "Normal Failover virtual IPs moved from lb1 to lb2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := events.NewFakeRecorder(1)
			r := &LoadBalancerPairReconciler{Recorder: rec}
			pair := &lbv1.LoadBalancerPair{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"}}
			pair.Status.Holder = tc.previous
			r.reportHolderChange(pair, agentSummary{Holder: tc.holder, HolderEntry: &lbv1.AgentStatus{Node: tc.holder, Reason: tc.reason}})
			if got := <-rec.Events; got != tc.want {
				t.Errorf("event %q, want %q", got, tc.want)
			}
		})
	}
}

// The Degraded condition lists each configuration error once, and a bounded number of
// them: the apiserver refuses the whole status when a condition's message is over
// 32768 characters, and agents on many nodes mostly fail alike.
func TestConfigErrorsStayWithinTheConditionsBound(t *testing.T) {
	now := time.Now()
	var agents []lbv1.AgentStatus
	for i := range 64 {
		why := strings.Repeat("x", 1000) + " backend web01 does not resolve"
		if i%2 == 1 {
			why = fmt.Sprintf("%s %d", strings.Repeat("y", 1000), i) // all different
		}
		agents = append(agents, lbv1.AgentStatus{Node: fmt.Sprintf("lb%02d", i), State: lbv1.StateBackup, ConfigError: why,
			Since: metav1.NewMicroTime(now), LastUpdateTime: metav1.NewMicroTime(now)})
	}
	s := summarizeAgents(agents, "", nil, now, nil)
	for _, c := range agentConditions(s, 64, 1) {
		if c.Type != lbv1.ConditionDegraded {
			continue
		}
		if len(c.Message) > 32768 {
			t.Errorf("Degraded message of %d characters, over the CRD's 32768", len(c.Message))
		}
		if n := strings.Count(c.Message, "web01 does not resolve"); n != 1 {
			t.Errorf("the error 32 agents share is listed %d times, want once", n)
		}
		if !strings.Contains(c.Message, "lb00, lb02, lb04") || !strings.Contains(c.Message, "other errors") {
			t.Errorf("Degraded message does not name the nodes of the shared error, or say errors were left out: %.300s", c.Message)
		}
	}
}
