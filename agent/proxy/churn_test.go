package proxy

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// TestChurnLeavesNothingBehind runs a server through what months in production
// bring: listeners added and removed, backends coming and going (by Apply and by
// SetBackends) with their active checks, connections served, refused and left
// idle, drains begun and cancelled. Back at its first configuration, it must hold
// what it held then: goroutines, file descriptors and metric series.
func TestChurnLeavesNothingBehind(t *testing.T) {
	tl := echoLab(t, 3)
	reg := prometheus.NewRegistry()
	base := Config{Listeners: []ListenerConfig{listenerCfg("web", 80, backendAddr(1, 8080))}}
	s := startProxy(t, tl, base, WithMetrics(reg))
	if err := roundTrip(tl, vip(80), "warm"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the warm-up's closes wind down
	goroutines, fds, series := runtime.NumGoroutine(), netlab.OpenFiles(t), seriesCount(t, reg)

	active := &ActiveCheck{Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 1}
	for round := range 10 {
		web := listenerCfg("web", 80, backendAddr(1, 8080), backendAddr(2, 8080), backendAddr(3, 8080))
		web.Active = active
		web.Balance = Balance(round % 4)
		dynamic := listenerCfg("svc", 81)
		dynamic.Active = active
		capped := listenerCfg("capped", 82, backendAddr(2, 8080))
		capped.MaxConnections = 1
		if err := apply(tl, s, Config{Listeners: []ListenerConfig{web, dynamic, capped}}); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if err := s.SetBackends("svc", []Backend{{Addr: backendAddr(3, 8080), Weight: 1}, {Addr: backendAddr(1, 9999), Weight: 1}}); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			for _, port := range []int{80, 81} {
				if err := roundTrip(tl, vip(port), fmt.Sprint("round ", round, " request ", i)); err != nil {
					t.Fatalf("round %d, port %d: %v", round, port, err)
				}
			}
		}
		idle := mustDial(t, tl, vip(82))
		if err := exchange(idle, "hold the only slot"); err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(tl, vip(82), "over the cap"); !isRefused(err) {
			t.Fatalf("round %d: connection over the cap: %v", round, err)
		}
		if err := s.SetBackends("svc", []Backend{{Addr: backendAddr(2, 8080), Weight: 1}}); err != nil {
			t.Fatal(err)
		}
		s.DrainEstablished(time.Minute)
		s.CancelDrain()
		if err := apply(tl, s, base); err != nil {
			t.Fatal(err)
		}
		idle.Close()
	}
	if err := roundTrip(tl, vip(80), "after the churn"); err != nil {
		t.Fatal(err)
	}

	// Closes and cancelled probes wind down in the background.
	var nowGoroutines, nowFDs, nowSeries int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		nowGoroutines, nowFDs, nowSeries = runtime.NumGoroutine(), netlab.OpenFiles(t), seriesCount(t, reg)
		if nowGoroutines <= goroutines && nowFDs <= fds && nowSeries == series {
			return
		}
	}
	t.Errorf("after the churn: %d goroutines, %d open files, %d metric series; before it: %d, %d, %d",
		nowGoroutines, nowFDs, nowSeries, goroutines, fds, series)
}

// seriesCount counts the series a registry gathers.
func seriesCount(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}
