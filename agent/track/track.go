// Package track turns health reports (the local proxy, for one) into the
// VRRP router's effective priority: an unhealthy check lowers the priority
// by its weight, or, with weight 0, puts the router in Fault so that it gives
// up the virtual IPs. This is keepalived's track_script, fed in-process.
package track

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// Check is one tracked health input.
type Check struct {
	Name string
	// Weight is subtracted from the priority while the check is unhealthy;
	// 0 means the router goes to Fault instead.
	Weight int
}

type report struct {
	healthy bool
	reason  string
}

// Tracker holds the latest report of each check. It is safe for concurrent
// use; reports never block.
type Tracker struct {
	mu      sync.Mutex
	checks  map[string]Check
	reports map[string]report
	changed chan struct{}
}

// New tracks the given checks; each is healthy until reported otherwise.
func New(checks ...Check) *Tracker {
	t := &Tracker{checks: map[string]Check{}, reports: map[string]report{}, changed: make(chan struct{}, 1)}
	for _, c := range checks {
		t.checks[c.Name] = c
	}
	return t
}

// SetHealth records a check's health. Reports of checks the tracker was not
// given are ignored.
func (t *Tracker) SetHealth(check string, healthy bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.checks[check]; !ok {
		return
	}
	old, had := t.reports[check]
	r := report{healthy: healthy, reason: reason}
	t.reports[check] = r
	if !had && healthy || had && old == r {
		return
	}
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// SetChecks replaces the tracked checks, keeping the reports of those that
// stay, and signals Changed: a new weight applies to the running router.
func (t *Tracker) SetChecks(checks ...Check) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.checks = map[string]Check{}
	for _, c := range checks {
		t.checks[c.Name] = c
	}
	for n := range t.reports {
		if _, ok := t.checks[n]; !ok {
			delete(t.reports, n)
		}
	}
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// Changed is signalled after a report changes the picture.
func (t *Tracker) Changed() <-chan struct{} { return t.changed }

// Effective is the priority after tracking, from the configured base:
// lowered by the weights of unhealthy checks (never below 1), or fault when
// an unhealthy check has weight 0. reason names the unhealthy checks.
func (t *Tracker) Effective(base uint8) (priority uint8, fault bool, reason string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := int(base)
	var why []string
	names := make([]string, 0, len(t.reports))
	for n := range t.reports {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := t.reports[n]
		if r.healthy {
			continue
		}
		w := t.checks[n].Weight
		if w == 0 {
			fault = true
		} else {
			p -= w
		}
		why = append(why, fmt.Sprintf("%s unhealthy: %s", n, r.reason))
	}
	if p < 1 {
		p = 1
	}
	if p > 255 {
		p = 255
	}
	return uint8(p), fault, strings.Join(why, "; ")
}
