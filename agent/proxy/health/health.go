// Package health holds the backend health state machines: passive (failures seen on real
// connections, as nginx's max_fails and fail_timeout) and active (probe results with rise
// and fall counts, as HAProxy's). They are pure: the caller passes the time and the
// results in, so they are tested without clocks or sockets.
package health

import "time"

// Passive marks a backend down after MaxFails failures within FailTimeout, for
// FailTimeout. Successes in between do not clear the failures of a window, which count
// until it ends (as nginx's): under concurrent load a backend that fails one connect in
// three still has successes between its failures. When the down time is up the backend
// is tried again, on probation: the next failure takes it down at once, and a success
// ends the probation. The zero value with MaxFails 0 never marks a backend down.
type Passive struct {
	// MaxFails is the failures within FailTimeout that mark the backend down; 0 disables.
	MaxFails int
	// FailTimeout is both the window failures count in and how long the backend is down.
	FailTimeout time.Duration

	fails       int
	windowStart time.Time
	downUntil   time.Time
	probation   bool
}

// Failure records a failed attempt at now. It returns true when it marks the backend down.
func (p *Passive) Failure(now time.Time) bool {
	if p.MaxFails <= 0 {
		return false
	}
	if p.probation && !now.Before(p.downUntil) {
		return p.markDown(now)
	}
	if p.fails == 0 || now.Sub(p.windowStart) >= p.FailTimeout {
		p.fails, p.windowStart = 0, now
	}
	p.fails++
	if p.fails >= p.MaxFails {
		return p.markDown(now)
	}
	return false
}

func (p *Passive) markDown(now time.Time) bool {
	p.fails = 0
	p.downUntil = now.Add(p.FailTimeout)
	p.probation = true
	return true
}

// Success records a successful attempt: it ends probation. The failures of the current
// window stay counted; Failure starts a new count once the window has passed.
func (p *Passive) Success() {
	p.probation = false
}

// DownUntil returns when the backend comes back, or the zero time if it is not down.
func (p *Passive) DownUntil() time.Time { return p.downUntil }

// Available reports whether the backend may be tried at now.
func (p *Passive) Available(now time.Time) bool { return !now.Before(p.downUntil) }

// Active follows probe results: an up backend goes down after Fall failed probes in a
// row, a down one comes up after Rise successful probes in a row. A backend starts up, as
// in HAProxy, so that enabling checks never takes a working pool out of service before
// the first probes have run.
type Active struct {
	// Rise is the successes in a row that bring a down backend up (at least 1).
	Rise int
	// Fall is the failures in a row that take an up backend down (at least 1).
	Fall int

	down   bool
	streak int
}

// Observe records one probe result and returns true when it changes the state.
func (a *Active) Observe(ok bool) bool {
	if ok != a.down {
		// Agrees with the current state.
		a.streak = 0
		return false
	}
	a.streak++
	need := max(a.Fall, 1)
	if a.down {
		need = max(a.Rise, 1)
	}
	if a.streak < need {
		return false
	}
	a.down = !a.down
	a.streak = 0
	return true
}

// Up reports whether the backend is up.
func (a *Active) Up() bool { return !a.down }
