package probe

import (
	"testing"
	"time"
)

func TestOutage(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int, ok bool) Result { return Result{At: t0.Add(time.Duration(ms) * time.Millisecond), OK: ok} }
	rs := []Result{at(0, false), at(10, true), at(20, false), at(30, false), at(40, false), at(50, true), at(60, true)}
	if got, n := Outage(rs, t0.Add(5*time.Millisecond)); got != 30*time.Millisecond || n != 3 {
		t.Errorf("Outage = %v, %d failures; want 30ms, 3", got, n)
	}
	if got, n := Outage(rs[:5], t0); got != 20*time.Millisecond || n != 4 {
		t.Errorf("Outage with no recovery = %v, %d; want 20ms (to the last probe), 4", got, n)
	}
	if got, n := Outage(rs[5:], t0); got != 0 || n != 0 {
		t.Errorf("Outage without failures = %v, %d", got, n)
	}
}
