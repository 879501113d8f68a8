package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func listenerCfg(name string, port int, backends ...netip.AddrPort) ListenerConfig {
	l := ListenerConfig{Name: name, Addrs: []netip.AddrPort{vip(port)}, ConnectTimeout: 2 * time.Second}
	for _, b := range backends {
		l.Backends = append(l.Backends, Backend{Addr: b, Weight: 1})
	}
	return l
}

// withVIP adds the virtual IP to the proxy host, as VRRP would on the master.
func withVIP(t *testing.T, tl *testLab) {
	t.Helper()
	if err := tl.proxy.AddAddr(vipIP + "/32"); err != nil {
		t.Fatal(err)
	}
}

// TestLargeTransfersIntact sends large random streams both ways through the proxy, several
// at once, and compares checksums.
func TestLargeTransfersIntact(t *testing.T) {
	tl := echoLab(t, 2)
	reg := prometheus.NewRegistry()
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{listenerCfg("bulk", 80, backendAddr(1, 8080), backendAddr(2, 8080))}},
		WithMetrics(reg))

	const size = 24 << 20
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- transferAndCompare(t, tl, uint64(i), size)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Every byte is counted once each way, and every connection once.
	waitFor(t, "the connections to finish", func() bool { return s.Status()[0].Active == 0 })
	for _, dir := range []string{"clientToBackend", "backendToClient"} {
		if got := testutil.ToFloat64(s.metrics.bytes.WithLabelValues("bulk", dir)); got != 4*size {
			t.Errorf("bytes_total{direction=%q} = %v, want %d", dir, got, 4*size)
		}
	}
	if got := testutil.ToFloat64(s.metrics.accepted.WithLabelValues("bulk")); got != 4 {
		t.Errorf("connections_accepted_total = %v, want 4", got)
	}
	// Round robin over two healthy backends: two connections each.
	for i := 1; i <= 2; i++ {
		if got := testutil.ToFloat64(s.metrics.selections.WithLabelValues("bulk", backendAddr(i, 8080).String())); got != 2 {
			t.Errorf("backend_selections_total{backend=%q} = %v, want 2", backendAddr(i, 8080), got)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "lbpair_proxy_connection_duration_seconds"); err != nil || n != 1 {
		t.Errorf("connection_duration_seconds series = %d, %v; want 1", n, err)
	}
}

func transferAndCompare(t *testing.T, tl *testLab, seed uint64, size int) error {
	c, err := dial(tl, vip(80))
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		r := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), int64(size)), sent)
		_, err := io.CopyBuffer(c, r, make([]byte, 100_000)) // an odd size, so writes and reads do not line up
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		return fmt.Errorf("stream %d: reading: %w", seed, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("stream %d: writing: %w", seed, err)
	}
	if n != int64(size) || !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		return fmt.Errorf("stream %d: got %d bytes with sha256 %x, sent %d with %x", seed, n, got.Sum(nil), size, sent.Sum(nil))
	}
	return nil
}

// TestHalfClose checks that a client that shuts its write side still gets the whole
// reply, which the backend sends only after it has seen the end of the request.
func TestHalfClose(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c) // until the client's FIN
		time.Sleep(50 * time.Millisecond)
		fmt.Fprintf(c, "got %d bytes; %s", n, strings.Repeat("x", 200_000))
	})
	withVIP(t, tl)
	startProxy(t, tl, Config{Listeners: []ListenerConfig{listenerCfg("half", 80, backendAddr(1, 8080))}})

	c := mustDial(t, tl, vip(80))
	if _, err := io.WriteString(c, "hello, world"); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the reply after half-close: %v", err)
	}
	want := "got 12 bytes; " + strings.Repeat("x", 200_000)
	if string(reply) != want {
		t.Errorf("reply of %d bytes starting %q, want %d bytes starting %q", len(reply), reply[:min(len(reply), 20)], len(want), want[:20])
	}
}

// TestBackendDeathMidRun kills one of two backends during a run of short connections:
// connections open on it break, and every connection started afterwards succeeds,
// through the connect retry and then the passive check.
func TestBackendDeathMidRun(t *testing.T) {
	tl := newTestLab(t, 2)
	be1 := serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	serve(t, tl.backends[1], backendAddr(2, 8080), echo)
	withVIP(t, tl)
	lc := listenerCfg("web", 80, backendAddr(1, 8080), backendAddr(2, 8080))
	lc.Passive = PassiveCheck{MaxFails: 1, FailTimeout: time.Minute}
	reporter := newHealthRecorder()
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}}, WithHealthReporter(reporter))
	reporter.wait(t, true)

	for i := range 20 {
		if err := roundTrip(tl, vip(80), fmt.Sprintf("before %d", i)); err != nil {
			t.Fatalf("request %d before the death: %v", i, err)
		}
	}
	if be1.count() == 0 {
		t.Fatalf("backend 1 got no connections before it died")
	}
	// A long-lived connection, which may sit on either backend.
	held := mustDial(t, tl, vip(80))
	if err := exchange(held, "held"); err != nil {
		t.Fatal(err)
	}

	be1.kill()
	for i := range 50 {
		if err := roundTrip(tl, vip(80), fmt.Sprintf("after %d", i)); err != nil {
			t.Fatalf("request %d after backend 1 died: %v", i, err)
		}
	}
	st := s.Status()
	if len(st) != 1 || st[0].HealthyBackends != 1 || st[0].Backends != 2 {
		t.Errorf("Status = %+v, want 1 of 2 backends healthy", st)
	}
	if r := reporter.wait(t, true); r.check != HealthCheckName {
		t.Errorf("health reported under %q, want %q", r.check, HealthCheckName)
	}
	// The held connection either lived on backend 2 and still works, or died with
	// backend 1: as a reset or end of stream, not a hang.
	if err := exchange(held, "still there?"); err != nil && !isRefused(err) {
		t.Errorf("held connection: %v; want it to work or end cleanly", err)
	}
}

// TestAllBackendsDown checks that with no backend a connection is refused at once, the
// refusal is counted, the VRRP tracker is told, and that health comes back with a backend.
func TestAllBackendsDown(t *testing.T) {
	tl := newTestLab(t, 1)
	withVIP(t, tl)
	lc := listenerCfg("web", 80, backendAddr(1, 8080))
	lc.Active = &ActiveCheck{Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 1}
	lc.Passive = PassiveCheck{MaxFails: 1, FailTimeout: time.Minute}
	reporter := newHealthRecorder()
	reg := prometheus.NewRegistry()
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}}, WithHealthReporter(reporter), WithMetrics(reg))

	r := reporter.wait(t, false)
	if !strings.Contains(r.reason, `listener "web" has no healthy backend (0 of 1)`) {
		t.Errorf("unhealthy reason %q does not name the listener", r.reason)
	}
	// The reset may arrive before the client's connect returns.
	c, err := dial(tl, vip(80))
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !isRefused(err) {
		t.Errorf("read on a connection with no backend: %v, want a reset or end of stream", err)
	}
	refused := s.metrics.refused.WithLabelValues("web", refusedNoBackend)
	waitFor(t, "the refusal to be counted", func() bool { return testutil.ToFloat64(refused) == 1 })

	// The backend comes up; the active check brings it back, overriding nothing else:
	// passive never saw it fail, since no connect was tried.
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	reporter.wait(t, true)
	if err := roundTrip(tl, vip(80), "back"); err != nil {
		t.Fatalf("request after the backend came up: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg, "lbpair_proxy_backend_healthy"); err != nil || n != 1 {
		t.Errorf("backend_healthy series = %d, %v; want 1", n, err)
	}
}

// TestReconfigureUnderLoad changes backends, balancing and checks while clients run,
// and expects no failed request and the long-lived connections to survive.
func TestReconfigureUnderLoad(t *testing.T) {
	tl := echoLab(t, 3)
	base := listenerCfg("web", 80, backendAddr(1, 8080), backendAddr(2, 8080))
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{base}})

	var held []*net.TCPConn
	for range 5 {
		c, err := dial(tl, vip(80))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var requests, failures atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil && i < 5000; i++ {
				requests.Add(1)
				if err := roundTrip(tl, vip(80), fmt.Sprintf("w%d r%d", w, i)); err != nil {
					failures.Add(1)
					t.Errorf("worker %d request %d: %v", w, i, err)
					return
				}
			}
		}()
	}
	withExtra := func(l ListenerConfig) error {
		extra := listenerCfg("extra", 81, backendAddr(2, 8080), backendAddr(3, 8080))
		if err := apply(tl, s, Config{Listeners: []ListenerConfig{l, extra}}); err != nil {
			return err
		}
		for i := range 5 {
			if err := roundTrip(tl, vip(81), fmt.Sprintf("extra %d", i)); err != nil {
				return fmt.Errorf("request %d to the added port: %w", i, err)
			}
		}
		return nil
	}
	steps := []func() error{
		func() error { c := base; c.Balance = LeastConnections; return applyOne(tl, s, c) },
		func() error {
			c := base
			c.Backends = append(slices.Clone(c.Backends), Backend{Addr: backendAddr(3, 8080), Weight: 3})
			return applyOne(tl, s, c)
		},
		func() error {
			c := base
			c.Balance = SourceHash
			c.Active = &ActiveCheck{Interval: 50 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 1, Fall: 2}
			return applyOne(tl, s, c)
		},
		func() error { return s.SetBackends("web", []Backend{{Addr: backendAddr(3, 8080), Weight: 1}}) },
		// Another port comes, with the backends changed and backend 1 removed.
		func() error {
			c := base
			c.Balance = RandomTwoChoices
			c.Backends = []Backend{{Addr: backendAddr(2, 8080), Weight: 1}, {Addr: backendAddr(3, 8080), Weight: 2}}
			return withExtra(c)
		},
		// And goes; backend 1 is back.
		func() error {
			c := base
			c.Balance = RandomTwoChoices
			c.Passive = PassiveCheck{MaxFails: 2, FailTimeout: time.Second}
			if err := applyOne(tl, s, c); err != nil {
				return err
			}
			if err := roundTrip(tl, vip(81), "removed"); err == nil {
				return errors.New("the removed port still proxies")
			}
			if st := s.Status(); len(st) != 1 || st[0].Name != "web" || st[0].Backends != 2 {
				return fmt.Errorf("Status = %+v, want only listener web with 2 backends", st)
			}
			return nil
		},
	}
	for i, step := range steps {
		time.Sleep(150 * time.Millisecond)
		if err := step(); err != nil {
			t.Fatalf("reconfiguration %d: %v", i, err)
		}
	}
	time.Sleep(150 * time.Millisecond)
	cancel()
	wg.Wait()
	if failures.Load() != 0 || requests.Load() < 20 {
		t.Errorf("%d of %d requests failed during reconfiguration", failures.Load(), requests.Load())
	}
	for i, c := range held {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := exchange(c, "still here"); err != nil {
			t.Errorf("long-lived connection %d broke during reconfiguration: %v", i, err)
		}
	}
}

func applyOne(tl *testLab, s *Server, l ListenerConfig) error {
	return apply(tl, s, Config{Listeners: []ListenerConfig{l}})
}

// TestApplyKeepsStateOnError checks that a configuration that cannot be applied leaves the
// running one alone: an invalid one, and one with an address already taken.
func TestApplyKeepsStateOnError(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	good := listenerCfg("web", 80, backendAddr(1, 8080))
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{good}})

	bad := good
	bad.Backends = []Backend{{Addr: backendAddr(1, 8080), Weight: 0}}
	if err := applyOne(tl, s, bad); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Apply of an invalid config = %v, want ErrInvalidConfig", err)
	}

	// Port 81 is taken by a socket without SO_REUSEPORT.
	var taken net.Listener
	if err := tl.proxy.Do(func() (err error) { taken, err = net.Listen("tcp", vip(81).String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	other := listenerCfg("other", 81, backendAddr(1, 8080))
	moved := good
	moved.Backends = nil
	if err := apply(tl, s, Config{Listeners: []ListenerConfig{moved, other}}); err == nil {
		t.Fatal("Apply with a taken address succeeded")
	}
	if st := s.Status(); len(st) != 1 || st[0].Backends != 1 || !st[0].Listening {
		t.Errorf("after a failed Apply, Status = %+v; want the old listener unchanged", st)
	}
	if err := roundTrip(tl, vip(80), "unchanged"); err != nil {
		t.Errorf("request after a failed Apply: %v", err)
	}
}

// TestFreeBindWarmBackup listens on a virtual IP the host does not have yet, as a backup
// does, and serves as soon as the address arrives.
func TestFreeBindWarmBackup(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	lc := listenerCfg("web", 80, backendAddr(1, 8080))
	lc.Addrs = append(lc.Addrs, netip.MustParseAddrPort("[fd00:198:18::100]:80"))
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}})
	if st := s.Status(); !st[0].Listening {
		t.Fatalf("not listening without the VIP: %+v", st)
	}
	withVIP(t, tl)
	if err := roundTrip(tl, vip(80), "warm"); err != nil {
		t.Fatalf("request once the VIP arrived: %v", err)
	}
}

// TestMaxConnections refuses connections past the cap, and accepts again below it.
func TestMaxConnections(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	lc := listenerCfg("web", 80, backendAddr(1, 8080))
	lc.MaxConnections = 2
	var log bytes.Buffer
	var logMu sync.Mutex
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}, AccessLog: true},
		WithAccessLogWriter(lockedWriter{&logMu, &log}))
	var open []*net.TCPConn
	for i := range 2 {
		c := mustDial(t, tl, vip(80))
		if err := exchange(c, "in"); err != nil {
			t.Fatalf("connection %d under the cap: %v", i, err)
		}
		open = append(open, c)
	}
	if err := roundTrip(tl, vip(80), "over"); err == nil || !isRefused(err) {
		t.Errorf("third connection: %v, want a refusal", err)
	}
	refused := s.metrics.refused.WithLabelValues("web", refusedMaxConnections)
	waitFor(t, "the refusal to be counted", func() bool { return testutil.ToFloat64(refused) == 1 })
	open[0].Close()
	waitFor(t, "the closed connection to leave the count", func() bool { return s.Status()[0].Active < 2 })
	if err := roundTrip(tl, vip(80), "room again"); err != nil {
		t.Errorf("connection after one closed: %v", err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(log.String(), `listener="web" client=198.18.0.1:`) || !strings.Contains(log.String(), "end=maxConnections") {
		t.Errorf("access log lacks the refusal:\n%s", log.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestIdleTimeout closes a connection that moves no data.
func TestIdleTimeout(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	lc := listenerCfg("web", 80, backendAddr(1, 8080))
	lc.IdleTimeout = time.Second
	startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}})
	c := mustDial(t, tl, vip(80))
	// Activity keeps it open past the timeout.
	var lastActive time.Time
	for range 4 {
		lastActive = time.Now() // no later than the proxy sees the exchange
		if err := exchange(c, "busy"); err != nil {
			t.Fatalf("active connection closed: %v", err)
		}
		time.Sleep(400 * time.Millisecond)
	}
	if _, err := c.Read(make([]byte, 1)); !isRefused(err) {
		t.Fatalf("idle connection read: %v, want it closed", err)
	}
	// Measured from before the last exchange, a late test only adds to it. The
	// proxy times idleness from its once-a-second sweep, whose clock may be read a
	// moment before the exchange it sees: a tick (250ms) covers that moment.
	if d := time.Since(lastActive); d < lc.IdleTimeout-250*time.Millisecond {
		t.Errorf("idle connection closed %v after its last activity, before the %v timeout", d, lc.IdleTimeout)
	}
}

// TestDrainAndShutdown: DrainEstablished closes open connections after its timeout and
// keeps listening; Shutdown stops accepting and waits for connections until its context
// ends.
func TestDrainAndShutdown(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{listenerCfg("web", 80, backendAddr(1, 8080))}})

	c := mustDial(t, tl, vip(80))
	if err := exchange(c, "before drain"); err != nil {
		t.Fatal(err)
	}
	s.DrainEstablished(300 * time.Millisecond)
	if err := exchange(c, "during drain"); err != nil {
		t.Fatalf("connection closed before the drain timeout: %v", err)
	}
	if _, err := c.Read(make([]byte, 1)); !isRefused(err) {
		t.Fatalf("read after the drain timeout: %v, want the connection closed", err)
	}
	if err := roundTrip(tl, vip(80), "still listening"); err != nil {
		t.Fatalf("new connection after drain: %v", err)
	}

	c2 := mustDial(t, tl, vip(80))
	if err := exchange(c2, "open at shutdown"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(ctx) }()
	waitFor(t, "the listener to close", func() bool { return len(s.Status()) == 0 || !s.Status()[0].Listening })
	if err := exchange(c2, "during shutdown"); err != nil {
		t.Fatalf("established connection broken at the start of shutdown: %v", err)
	}
	if _, err := dial(tl, vip(80)); err == nil {
		t.Errorf("new connection accepted during shutdown")
	}
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want the deadline error for the connection it closed", err)
	}
	if _, err := c2.Read(make([]byte, 1)); !isRefused(err) {
		t.Errorf("read after shutdown: %v, want the connection closed", err)
	}
	if err := apply(tl, s, Config{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Shutdown = %v, want ErrClosed", err)
	}
}

// TestConnectTimeoutRetries partitions a backend, so that connects to it time out rather
// than fail, and expects every connection to reach the other one in time.
func TestConnectTimeoutRetries(t *testing.T) {
	tl := newTestLab(t, 2)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	serve(t, tl.backends[1], backendAddr(2, 8080), echo)
	withVIP(t, tl)
	// Unreachable, the backend answers neither ARP nor SYN: connects hang until the timeout.
	if err := tl.backends[0].SetConnected(false); err != nil {
		t.Fatal(err)
	}
	lc := listenerCfg("web", 80, backendAddr(1, 8080), backendAddr(2, 8080))
	lc.ConnectTimeout = 200 * time.Millisecond
	lc.ConnectAttempts = 2
	lc.Passive = PassiveCheck{MaxFails: 2, FailTimeout: time.Minute}
	reg := prometheus.NewRegistry()
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}}, WithMetrics(reg))
	for i := range 6 {
		if err := roundTrip(tl, vip(80), fmt.Sprintf("r%d", i)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	timeouts := testutil.ToFloat64(s.metrics.connectErrs.WithLabelValues("web", backendAddr(1, 8080).String(), "timeout"))
	if timeouts != 2 {
		t.Errorf("connect timeouts counted for the partitioned backend = %v, want 2 (then passive checks take it out)", timeouts)
	}
	if st := s.Status(); st[0].HealthyBackends != 1 {
		t.Errorf("Status = %+v, want the partitioned backend down", st)
	}
}

// TestServerSpeaksFirst proxies backends that send before the client does, as SMTP,
// MySQL and FTP servers greet: the client gets the banner without writing anything, and
// the backend's close when it hangs up after the banner.
func TestServerSpeaksFirst(t *testing.T) {
	const banner = "220 smtp.example ESMTP ready\r\n"
	tl := newTestLab(t, 2)
	serve(t, tl.backends[0], backendAddr(1, 25), func(c net.Conn) {
		if _, err := io.WriteString(c, banner); err == nil {
			echo(c)
		}
	})
	serve(t, tl.backends[1], backendAddr(2, 25), func(c net.Conn) {
		_, _ = io.WriteString(c, banner) // and the handler's return closes
	})
	withVIP(t, tl)
	startProxy(t, tl, Config{Listeners: []ListenerConfig{
		listenerCfg("smtp", 25, backendAddr(1, 25)),
		listenerCfg("goodbye", 26, backendAddr(2, 25)),
	}})

	t.Run("banner", func(t *testing.T) {
		for i := range 20 {
			c := mustDial(t, tl, vip(25))
			buf := make([]byte, len(banner))
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != banner {
				t.Fatalf("connection %d: read %q, %v; want the banner before writing anything", i, buf, err)
			}
			if err := exchange(c, "EHLO client\r\n"); err != nil {
				t.Fatalf("connection %d after the banner: %v", i, err)
			}
			c.Close()
		}
	})
	t.Run("banner and close", func(t *testing.T) {
		for i := range 20 {
			c := mustDial(t, tl, vip(26))
			got, err := io.ReadAll(c)
			if err != nil || string(got) != banner {
				t.Fatalf("connection %d: read %q, %v; want the banner, then the end of the stream", i, got, err)
			}
			c.Close()
		}
	})
}

// TestDrainClosesConnectionsAcceptedMeanwhile: a connection that reaches the old master
// during the handover, after DrainEstablished, is closed with the others when the drain
// ends, even with no idle timeout; one accepted after the drain is left alone.
func TestDrainClosesConnectionsAcceptedMeanwhile(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{listenerCfg("web", 80, backendAddr(1, 8080))}})

	s.DrainEstablished(2 * time.Second)
	late := mustDial(t, tl, vip(80))
	if err := exchange(late, "during the handover"); err != nil {
		t.Fatal(err)
	}
	if _, err := late.Read(make([]byte, 1)); !isRefused(err) {
		t.Fatalf("read on a connection accepted while draining: %v, want it closed by the drain", err)
	}
	after := mustDial(t, tl, vip(80))
	if err := exchange(after, "after the drain"); err != nil {
		t.Fatalf("connection after the drain: %v", err)
	}
	if err := exchange(after, "still open"); err != nil {
		t.Fatalf("connection after the drain closed: %v", err)
	}
}

// TestCancelDrainKeepsConnections drains, then cancels before the deadline,
// as a node that is master again does: its connections stay open.
func TestCancelDrainKeepsConnections(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{listenerCfg("web", 80, backendAddr(1, 8080))}})

	c := mustDial(t, tl, vip(80))
	if err := exchange(c, "before the drain"); err != nil {
		t.Fatal(err)
	}
	s.DrainEstablished(300 * time.Millisecond)
	s.CancelDrain()
	time.Sleep(600 * time.Millisecond)
	if err := exchange(c, "past the cancelled deadline"); err != nil {
		t.Fatalf("connection after a cancelled drain: %v", err)
	}
}

// TestRemovedListenerMetricsOutliveConnections removes a listener with a connection
// open: its series stay while the connection runs and go when it ends, unless a listener
// of the same name came back meanwhile.
func TestRemovedListenerMetricsOutliveConnections(t *testing.T) {
	tl := newTestLab(t, 1)
	serve(t, tl.backends[0], backendAddr(1, 8080), echo)
	withVIP(t, tl)
	reg := prometheus.NewRegistry()
	old := listenerCfg("old", 80, backendAddr(1, 8080))
	keep := listenerCfg("keep", 81, backendAddr(1, 8080))
	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{old, keep}}, WithMetrics(reg))
	series := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "listener" && lp.GetValue() == "old" {
						n++
					}
				}
			}
		}
		return n
	}

	for _, readd := range []bool{false, true} {
		if err := apply(tl, s, Config{Listeners: []ListenerConfig{old, keep}}); err != nil {
			t.Fatal(err)
		}
		c := mustDial(t, tl, vip(80))
		if err := exchange(c, "open"); err != nil {
			t.Fatal(err)
		}
		if err := apply(tl, s, Config{Listeners: []ListenerConfig{keep}}); err != nil {
			t.Fatal(err)
		}
		if err := exchange(c, "after the removal"); err != nil {
			t.Fatalf("connection of the removed listener: %v", err)
		}
		if series() == 0 {
			t.Fatalf("series of the removed listener deleted while its connection runs")
		}
		if readd {
			if err := apply(tl, s, Config{Listeners: []ListenerConfig{old, keep}}); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		if !readd {
			waitFor(t, "the series to go", func() bool { return series() == 0 })
			continue
		}
		active := s.metrics.active.WithLabelValues("old")
		waitFor(t, "the connection to end", func() bool { return testutil.ToFloat64(active) == 0 })
		if series() == 0 {
			t.Errorf("series of the re-added listener deleted when the old connection ended")
		}
	}
}
