package track

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEffective(t *testing.T) {
	type report struct {
		check   string
		healthy bool
	}
	type result struct {
		Priority uint8
		Fault    bool
		Reason   string
		Changed  bool
	}
	tests := []struct {
		name    string
		checks  []Check
		reports []report
		want    result
	}{
		{"healthy by default", []Check{{"proxy", 0}}, nil, result{100, false, "", false}},
		{"a healthy report changes nothing", []Check{{"proxy", 0}}, []report{{"proxy", true}}, result{100, false, "", false}},
		{"weight 0 is fault", []Check{{"proxy", 0}}, []report{{"proxy", false}}, result{100, true, "proxy unhealthy: down", true}},
		{"weight lowers the priority", []Check{{"proxy", 30}}, []report{{"proxy", false}}, result{70, false, "proxy unhealthy: down", true}},
		{"weights add up, floor 1", []Check{{"a", 60}, {"b", 60}}, []report{{"a", false}, {"b", false}}, result{1, false, "a unhealthy: down; b unhealthy: down", true}},
		{"recovery", []Check{{"proxy", 30}}, []report{{"proxy", false}, {"proxy", true}}, result{100, false, "", true}},
		{"unknown checks are ignored", []Check{{"proxy", 0}}, []report{{"other", false}}, result{100, false, "", false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := New(tt.checks...)
			for _, r := range tt.reports {
				reason := "up"
				if !r.healthy {
					reason = "down"
				}
				tr.SetHealth(r.check, r.healthy, reason)
			}
			var got result
			got.Priority, got.Fault, got.Reason = tr.Effective(100)
			select {
			case <-tr.Changed():
				got.Changed = true
			default:
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSetChecks(t *testing.T) {
	tr := New(Check{Name: "proxy"}, Check{Name: "gone", Weight: 5})
	tr.SetHealth("proxy", false, "down")
	tr.SetHealth("gone", false, "down")
	<-tr.Changed()
	if p, fault, _ := tr.Effective(100); !fault {
		t.Fatalf("before: priority %d, fault %v; want fault", p, fault)
	}
	tr.SetChecks(Check{Name: "proxy", Weight: 30})
	select {
	case <-tr.Changed():
	default:
		t.Error("new checks did not signal a change")
	}
	// The proxy's report stays, with its new weight; the dropped check's goes.
	if p, fault, why := tr.Effective(100); p != 70 || fault || why != "proxy unhealthy: down" {
		t.Errorf("after: priority %d, fault %v, reason %q; want 70, no fault, the proxy's", p, fault, why)
	}
	tr.SetHealth("gone", false, "down")
	if p, _, _ := tr.Effective(100); p != 70 {
		t.Errorf("a report of a check no longer tracked counted: priority %d, want 70", p)
	}
}
