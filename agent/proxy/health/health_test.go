package health

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// event is a failure (ok false) or success at a time in seconds; want is whether the
// backend is available just after it.
type event struct {
	at       float64
	ok       bool
	wantDown bool // Failure's result (marked down by this event)
	avail    bool // Available right after
}

func TestPassive(t *testing.T) {
	tests := []struct {
		name   string
		max    int
		window time.Duration
		events []event
	}{
		{"disabled", 0, 10 * time.Second, []event{
			{0, false, false, true}, {0.1, false, false, true}, {0.2, false, false, true},
		}},
		{"one failure marks down for the timeout", 1, 10 * time.Second, []event{
			{0, false, true, false},
			{9.9, true, false, false}, // a success while down (a late reply) does not bring it back early
		}},
		{"failures within the window", 3, 10 * time.Second, []event{
			{0, false, false, true}, {5, false, false, true}, {9, false, true, false},
		}},
		{"failures spread over windows do not add up", 3, 10 * time.Second, []event{
			{0, false, false, true}, {5, false, false, true}, {10, false, false, true}, {15, false, false, true},
			{19, false, true, false},
		}},
		{"successes within the window do not clear the count", 3, 10 * time.Second, []event{
			{0, false, false, true}, {0.1, true, false, true}, {0.2, false, false, true},
			{0.3, true, false, true}, {0.4, false, true, false},
		}},
		{"a success after the window, then a new count", 2, 10 * time.Second, []event{
			{0, false, false, true}, {11, true, false, true}, {12, false, false, true}, {13, false, true, false},
		}},
		{"probation: one failure after coming back", 3, 10 * time.Second, []event{
			{0, false, false, true}, {1, false, false, true}, {2, false, true, false},
			{12, false, true, false}, // back at 12, failed again: down until 22
			{21.9, true, false, false},
		}},
		{"probation ends with a success", 2, 10 * time.Second, []event{
			{0, false, false, true}, {1, false, true, false},
			{11, true, false, true},
			{12, false, false, true}, {13, false, true, false},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Passive{MaxFails: tt.max, FailTimeout: tt.window}
			for i, e := range tt.events {
				now := at(e.at)
				if e.ok {
					p.Success()
				} else if got := p.Failure(now); got != e.wantDown {
					t.Fatalf("event %d: Failure at %vs = %v, want %v", i, e.at, got, e.wantDown)
				}
				if got := p.Available(now); got != e.avail {
					t.Fatalf("event %d: Available at %vs = %v, want %v", i, e.at, got, e.avail)
				}
			}
		})
	}
}

func TestPassiveComesBack(t *testing.T) {
	p := Passive{MaxFails: 1, FailTimeout: 10 * time.Second}
	p.Failure(at(0))
	if p.Available(at(9.999)) {
		t.Errorf("available before the fail timeout ran out")
	}
	if !p.Available(at(10)) {
		t.Errorf("not available when the fail timeout ran out")
	}
	if got := p.DownUntil(); !got.Equal(at(10)) {
		t.Errorf("DownUntil = %v, want %v", got, at(10))
	}
}

func TestActive(t *testing.T) {
	tests := []struct {
		name       string
		rise, fall int
		probes     string // s = success, f = failure
		want       string // U or D after each probe
		changes    []int  // indexes of probes that changed state
	}{
		{"starts up and stays up", 2, 3, "ss", "UU", nil},
		{"falls after fall failures", 2, 3, "fff", "UUD", []int{2}},
		{"a success resets the fall streak", 2, 3, "ffsfff", "UUUUUD", []int{5}},
		{"rises after rise successes", 2, 1, "fss", "DDU", []int{0, 2}},
		{"a failure resets the rise streak", 3, 1, "fssfsss", "DDDDDDU", []int{0, 6}},
		{"zero counts act as one", 0, 0, "fsf", "DUD", []int{0, 1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Active{Rise: tt.rise, Fall: tt.fall}
			if !a.Up() {
				t.Fatal("a new backend is not up")
			}
			got := ""
			var changes []int
			for i, c := range tt.probes {
				if a.Observe(c == 's') {
					changes = append(changes, i)
				}
				if a.Up() {
					got += "U"
				} else {
					got += "D"
				}
			}
			if got != tt.want {
				t.Errorf("states = %s, want %s", got, tt.want)
			}
			if d := cmp.Diff(tt.changes, changes); d != "" {
				t.Errorf("changes (-want +got):\n%s", d)
			}
		})
	}
}
