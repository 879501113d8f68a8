package proxy

import (
	"context"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// checkNoBackendBlamed fails the test if a connect failure was counted against a
// backend of listener web, or a health check took one out.
func checkNoBackendBlamed(t *testing.T, s *Server, reporter *healthRecorder) {
	t.Helper()
	for _, reason := range []string{"refused", "timeout", "unreachable", "other"} {
		for i := 1; i <= 2; i++ {
			if n := testutil.ToFloat64(s.metrics.connectErrs.WithLabelValues("web", backendAddr(i, 8080).String(), reason)); n != 0 {
				t.Errorf("%v connect errors (%s) counted against backend %d", n, reason, i)
			}
		}
	}
	for i := 1; i <= 2; i++ {
		if v := testutil.ToFloat64(s.metrics.healthy.WithLabelValues("web", backendAddr(i, 8080).String())); v != 1 {
			t.Errorf("backend %d healthy = %v, want 1", i, v)
		}
	}
	reporter.mu.Lock()
	defer reporter.mu.Unlock()
	for _, r := range reporter.reports {
		if !r.healthy {
			t.Errorf("the proxy reported itself unhealthy: %+v", r)
		}
	}
}

// TestLocalPortsRunOut connects through a proxy host with one local port: once it is
// taken towards both backends, a new client is refused for want of local resources,
// and neither backend is blamed for it.
func TestLocalPortsRunOut(t *testing.T) {
	tl := echoLab(t, 2)
	if err := tl.proxy.Sysctl("net.ipv4.ip_local_port_range", "40000 40000"); err != nil {
		t.Fatal(err)
	}
	lc := listenerCfg("web", 80, backendAddr(1, 8080), backendAddr(2, 8080))
	lc.Passive = PassiveCheck{MaxFails: 1, FailTimeout: time.Minute}
	reporter := newHealthRecorder()
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}}, WithHealthReporter(reporter), WithMetrics(prometheus.NewRegistry()))
	reporter.wait(t, true)

	// Round robin: one connection to each backend, each from port 40000.
	for i := range 2 {
		if err := exchange(mustDial(t, tl, vip(80)), "hold"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if err := roundTrip(tl, vip(80), "no port left"); !isRefused(err) {
		t.Fatalf("third connection: %v, want a refusal", err)
	}
	refused := s.metrics.refused.WithLabelValues("web", refusedOutOfResources)
	waitFor(t, "the refusal to be counted as out of resources", func() bool { return testutil.ToFloat64(refused) == 1 })
	if n := testutil.ToFloat64(s.metrics.refused.WithLabelValues("web", refusedNoBackend)); n != 0 {
		t.Errorf("refused for no backend: %v, want 0", n)
	}
	// No port towards one backend says nothing of the other: both were tried.
	for i := 1; i <= 2; i++ {
		if n := testutil.ToFloat64(s.metrics.selections.WithLabelValues("web", backendAddr(i, 8080).String())); n != 2 {
			t.Errorf("backend %d selected %v times, want 2", i, n)
		}
	}
	checkNoBackendBlamed(t, s, reporter)
}

// TestFileDescriptorsRunOut makes every new socket of the proxy fail with EMFILE, as
// at its file limit: clients are refused without trying further backends, the active
// checks' failed probes are not counted, and the proxy serves again, with every backend,
// once descriptors are free. (Tests share one process, so the failure is injected at the
// proxy's socket calls rather than by lowering the process's limit; the standalone agent
// test runs into the real limit.)
func TestFileDescriptorsRunOut(t *testing.T) {
	tl := echoLab(t, 2)
	var exhausted atomic.Bool
	var probesFailed atomic.Int32
	atLimit := func(s *Server) {
		socket, dialer := s.newSocket, s.dialer
		s.newSocket = func(domain, typ, proto int) (int, error) {
			if exhausted.Load() {
				return -1, unix.EMFILE
			}
			return socket(domain, typ, proto)
		}
		s.dialer = dialFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
			if exhausted.Load() {
				probesFailed.Add(1)
				return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("socket", unix.EMFILE)}
			}
			return dialer.DialContext(ctx, network, addr)
		})
	}
	lc := listenerCfg("web", 80, backendAddr(1, 8080), backendAddr(2, 8080))
	lc.Passive = PassiveCheck{MaxFails: 1, FailTimeout: time.Minute}
	lc.Active = &ActiveCheck{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}
	reporter := newHealthRecorder()
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}}, WithHealthReporter(reporter), WithMetrics(prometheus.NewRegistry()), atLimit)
	reporter.wait(t, true)

	selections := func(i int) float64 {
		return testutil.ToFloat64(s.metrics.selections.WithLabelValues("web", backendAddr(i, 8080).String()))
	}
	exhausted.Store(true)
	if err := roundTrip(tl, vip(80), "no descriptor left"); !isRefused(err) {
		t.Fatalf("connection at the file limit: %v, want a refusal", err)
	}
	refused := s.metrics.refused.WithLabelValues("web", refusedOutOfResources)
	waitFor(t, "the refusal to be counted as out of resources", func() bool { return testutil.ToFloat64(refused) == 1 })
	// Out of descriptors, no other backend can be tried either.
	if selected := selections(1) + selections(2); selected != 1 {
		t.Errorf("backends selected %v times for the refused connection, want 1", selected)
	}
	// Four failed probes, two intervals' worth: with fall 1, any would have taken its
	// backend out.
	waitFor(t, "probes at the file limit", func() bool { return probesFailed.Load() >= 4 })
	checkNoBackendBlamed(t, s, reporter)

	exhausted.Store(false)
	before := []float64{selections(1), selections(2)}
	for i := range 4 {
		if err := roundTrip(tl, vip(80), "free again"); err != nil {
			t.Fatalf("connection %d once descriptors are free: %v", i, err)
		}
	}
	for i := 1; i <= 2; i++ {
		if selections(i) == before[i-1] {
			t.Errorf("backend %d took no connection once descriptors were free", i)
		}
	}
}

// dialFunc is a Dialer made of a function.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

func (f dialFunc) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return f(ctx, network, addr)
}
