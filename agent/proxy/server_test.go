package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// loopbackListener is a listener configuration on a free loopback port, so that Apply
// works without a network lab; its backends need not exist.
func loopbackListener(t *testing.T, name string, backends ...string) ListenerConfig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	lc := ListenerConfig{Name: name, Addrs: []netip.AddrPort{addr}}
	for _, b := range backends {
		lc.Backends = append(lc.Backends, Backend{Addr: netip.MustParseAddrPort(b), Weight: 1})
	}
	return lc
}

// pipeDialer passes every active check without a network.
type pipeDialer struct{}

func (pipeDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func newTestServer(t *testing.T, opts ...Option) *Server {
	t.Helper()
	s := New(testr.New(t), append([]Option{WithDialer(pipeDialer{})}, opts...)...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// TestPendingServiceListener checks that a listener waiting for its first SetBackends
// does not make the proxy unhealthy, and that once the backends have come, having none
// does.
func TestPendingServiceListener(t *testing.T) {
	reporter := newHealthRecorder()
	s := newTestServer(t, WithHealthReporter(reporter))
	static := loopbackListener(t, "static", "127.0.0.1:1")
	svc := loopbackListener(t, "svc")
	if err := s.Apply(Config{Listeners: []ListenerConfig{static, svc}}); err != nil {
		t.Fatal(err)
	}
	if r := reporter.wait(t, true); r.reason != "" {
		t.Errorf("healthy report with reason %q", r.reason)
	}
	if st := s.Status(); !st[1].Pending || st[1].Backends != 0 || st[0].Pending {
		t.Errorf("Status = %+v, want svc pending and static not", st)
	}
	// Another sync before the backends come changes nothing.
	if err := s.Apply(Config{Listeners: []ListenerConfig{static, svc}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetBackends("svc", nil); err != nil {
		t.Fatal(err)
	}
	r := reporter.wait(t, false)
	if want := `listener "svc" has no healthy backend (0 of 0)`; r.reason != want {
		t.Errorf("unhealthy reason %q, want %q", r.reason, want)
	}
	if err := s.SetBackends("svc", []Backend{{Addr: netip.MustParseAddrPort("127.0.0.1:2"), Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	reporter.wait(t, true)
	// A sync keeps the Service's backends, and the listener stays fed.
	if err := s.Apply(Config{Listeners: []ListenerConfig{static, svc}}); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st[1].Pending || st[1].Backends != 1 {
		t.Errorf("after a sync, Status = %+v, want svc with its backend, not pending", st)
	}
	reporter.mu.Lock()
	defer reporter.mu.Unlock()
	if first := reporter.reports[0]; !first.healthy {
		t.Errorf("first health report %+v: unhealthy before the first SetBackends", first)
	}
}

// TestUnchangedSyncKeepsState applies the same configuration and backends again, as
// every agent sync does: round robin continues where it was, and backends keep their
// health and active checks. A change elsewhere in the listener keeps them too.
func TestUnchangedSyncKeepsState(t *testing.T) {
	s := newTestServer(t)
	a, b := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")
	static := loopbackListener(t, "static", a.String(), b.String())
	static.Passive = PassiveCheck{MaxFails: 1, FailTimeout: time.Hour}
	static.Active = &ActiveCheck{Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 1}
	svc := loopbackListener(t, "svc")
	svc.Active = static.Active
	cfg := Config{Listeners: []ListenerConfig{static, svc}}
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	svcBackends := []Backend{{Addr: a, Weight: 1}, {Addr: b, Weight: 1}}
	if err := s.SetBackends("svc", svcBackends); err != nil {
		t.Fatal(err)
	}
	pick := func(name string) netip.AddrPort {
		t.Helper()
		s.mu.Lock()
		p := s.listeners[name].plan.Load()
		s.mu.Unlock()
		be := p.pick(nil, nil, time.Now().UnixNano())
		if be == nil {
			t.Fatalf("listener %s: no backend", name)
		}
		return be.addr
	}
	probers := func(name string) map[netip.AddrPort]*prober {
		s.mu.Lock()
		defer s.mu.Unlock()
		out := map[netip.AddrPort]*prober{}
		for addr, be := range s.listeners[name].backends {
			out[addr] = be.prober
		}
		return out
	}
	for _, name := range []string{"static", "svc"} {
		if got := pick(name); got != a {
			t.Fatalf("listener %s: first pick %v, want %v", name, got, a)
		}
	}
	before := map[string]map[netip.AddrPort]*prober{"static": probers("static"), "svc": probers("svc")}
	// Passive checks take b of the static listener out for an hour.
	s.mu.Lock()
	s.listeners["static"].backends[b].connectFailed(errConnectTimeout, time.Now())
	s.mu.Unlock()

	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if err := s.SetBackends("svc", svcBackends); err != nil {
		t.Fatal(err)
	}
	if got := pick("svc"); got != b {
		t.Errorf("svc: pick after an unchanged sync %v, want %v (round robin went back to the start)", got, b)
	}
	if got := pick("static"); got != a {
		t.Errorf("static: pick after an unchanged sync %v, want %v (the down backend came back)", got, a)
	}
	if st := s.Status(); st[0].HealthyBackends != 1 {
		t.Errorf("Status = %+v, want static's backend %v still down", st, b)
	}

	// A change that leaves backends and checks alone keeps the balancer and the probes.
	if got := pick("svc"); got != a {
		t.Fatalf("svc: third pick %v, want %v", got, a)
	}
	static.IdleTimeout = time.Minute
	svc.IdleTimeout = time.Minute
	if err := s.Apply(Config{Listeners: []ListenerConfig{static, svc}}); err != nil {
		t.Fatal(err)
	}
	if got := pick("svc"); got != b {
		t.Errorf("svc: pick after a change of its idle timeout %v, want %v", got, b)
	}
	for name, was := range before {
		now := probers(name)
		for addr, p := range was {
			if p == nil || now[addr] != p {
				t.Errorf("listener %s: active check of %v restarted (%p, was %p)", name, addr, now[addr], p)
			}
		}
	}
	s.mu.Lock()
	idle := s.listeners["static"].plan.Load().cfg.IdleTimeout
	s.mu.Unlock()
	if idle != time.Minute {
		t.Errorf("idle timeout %v after the change, want 1m", idle)
	}
	// New check settings restart the probes.
	svc.Active = &ActiveCheck{Interval: time.Hour, Timeout: time.Second, Rise: 2, Fall: 2}
	if err := s.Apply(Config{Listeners: []ListenerConfig{static, svc}}); err != nil {
		t.Fatal(err)
	}
	if now := probers("svc"); now[a] == before["svc"][a] || now[a] == nil || now[a].cfg != *svc.Active {
		t.Errorf("svc: active check of %v not restarted with the new settings", a)
	}
}

// TestApplySetsOwnerBeforeAccepting has a connection accepted the moment each new
// socket's accept loop starts, as when the node already holds the address (ports added
// while master, or an agent restarted with the virtual IP still up): the connection must
// be served by the socket's listener, not by a nil owner, which crashed the agent.
func TestApplySetsOwnerBeforeAccepting(t *testing.T) {
	s := newTestServer(t)
	a := loopbackListener(t, "a", "127.0.0.1:1")
	b := loopbackListener(t, "b", "127.0.0.1:1")
	names := map[netip.AddrPort]string{a.Addrs[0]: "a", b.Addrs[0]: "b"}
	s.testHookAccepting = func(sk *socket) {
		// Runs within Apply, which holds s.mu: s.listeners is stable.
		l := s.listeners[names[sk.addr]]
		// An error is no failure: the proxy may refuse the connection (its backend does not
		// exist) with a reset before the dial has returned.
		if c, err := net.Dial("tcp", sk.addr.String()); err == nil {
			defer c.Close()
		}
		waitFor(t, "the connection to "+sk.addr.String()+" to be accepted", func() bool {
			return testutil.ToFloat64(l.m.accepted) == 1
		})
	}
	// At start, then with a listener added.
	if err := s.Apply(Config{Listeners: []ListenerConfig{a}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(Config{Listeners: []ListenerConfig{a, b}}); err != nil {
		t.Fatal(err)
	}
}

// TestLateProbeResultIgnored records a failed probe of an active check after Apply
// stopped or replaced the check: the probe had passed its cancel check just before the
// cancel. It must not mark the backend down, where no prober would bring it back up.
func TestLateProbeResultIgnored(t *testing.T) {
	addr := netip.MustParseAddrPort("127.0.0.1:1")
	// Probes far apart: the test records the results itself.
	active := &ActiveCheck{Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 1}
	setup := func(t *testing.T) (*Server, ListenerConfig, *backend) {
		s := newTestServer(t)
		lc := loopbackListener(t, "svc", addr.String())
		lc.Active = active
		if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		return s, lc, s.listeners["svc"].backends[addr]
	}
	prober := func(s *Server, be *backend) *prober {
		s.mu.Lock()
		defer s.mu.Unlock()
		return be.prober
	}
	usable := func(t *testing.T, be *backend) {
		t.Helper()
		if !be.usable(time.Now().UnixNano()) {
			t.Errorf("backend down after a late failed probe")
		}
	}

	t.Run("check stopped", func(t *testing.T) {
		s, lc, be := setup(t)
		pr := prober(s, be)
		lc.Active = nil
		if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
			t.Fatal(err)
		}
		be.probed(pr, false)
		usable(t, be)
	})
	t.Run("check stopped, result between configure and check", func(t *testing.T) {
		s, _, be := setup(t)
		pr := prober(s, be)
		// Apply's steps for a backend whose check goes, with the result in between.
		s.mu.Lock()
		be.configure(PassiveCheck{}, nil, true)
		be.probed(pr, false)
		be.check(s.listeners["svc"], nil)
		s.mu.Unlock()
		usable(t, be)
	})
	t.Run("check restarted", func(t *testing.T) {
		s, lc, be := setup(t)
		pr := prober(s, be)
		changed := *active
		changed.Interval = 2 * time.Hour
		lc.Active = &changed
		if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
			t.Fatal(err)
		}
		if prober(s, be) == pr {
			t.Fatal("the check was not restarted")
		}
		be.probed(pr, false)
		usable(t, be)
	})
}

// greeter accepts on ln and greets each connection with "ok", as a server that speaks
// first, so that a client sees whether it was proxied without sending anything.
func greeter(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("ok"))
		c.Close()
	}
}

// greeted connects to addr and reads the greeting of the backend it was proxied to.
func greeted(addr netip.AddrPort) error {
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	// A bound on a hang, not a timed assertion.
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	got := make([]byte, 2)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != "ok" {
		return fmt.Errorf("read %q, want the greeting", got)
	}
	return nil
}

// unlistened binds a loopback port without listening on it, so that connects to it are
// refused, as to a backend restarting; listen makes it accept and greet.
func unlistened(t *testing.T) (addr netip.AddrPort, listen func()) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "backend")
	t.Cleanup(func() { f.Close() })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	return addr, func() {
		t.Helper()
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
		ln, err := net.FileListener(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go greeter(ln)
	}
}

// TestPassiveSparesOnlyBackend: a listener's only backend refuses one connect, as while
// it restarts, and is back at once. As nginx with an upstream of one server, passive
// checks do not take it out: the next client is served and the proxy stays healthy,
// where taking it out would refuse every client for the fail timeout and give up the
// VIP. With a second backend, the refusing one is taken out as before.
func TestPassiveSparesOnlyBackend(t *testing.T) {
	passive := PassiveCheck{MaxFails: 1, FailTimeout: time.Hour}
	t.Run("only backend", func(t *testing.T) {
		reporter := newHealthRecorder()
		s := newTestServer(t, WithHealthReporter(reporter))
		addr, listen := unlistened(t)
		lc := loopbackListener(t, "db", addr.String())
		lc.Passive = passive
		if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
			t.Fatal(err)
		}
		reporter.wait(t, true)
		if err := greeted(lc.Addrs[0]); !isRefused(err) {
			t.Fatalf("connection while the backend refuses: %v, want a refusal", err)
		}
		// Counted once the failed connect has been recorded.
		refused := s.metrics.refused.WithLabelValues("db", refusedNoBackend)
		waitFor(t, "the refusal to be counted", func() bool { return testutil.ToFloat64(refused) == 1 })

		listen()
		if err := greeted(lc.Addrs[0]); err != nil {
			t.Errorf("connection once the backend is back: %v, want it served", err)
		}
		if st := s.Status(); st[0].HealthyBackends != 1 {
			t.Errorf("Status = %+v, want the only backend healthy", st)
		}
		reporter.mu.Lock()
		defer reporter.mu.Unlock()
		for _, r := range reporter.reports {
			if !r.healthy {
				t.Errorf("the proxy reported itself unhealthy: %+v", r)
			}
		}
	})
	t.Run("two backends", func(t *testing.T) {
		s := newTestServer(t)
		down, _ := unlistened(t)
		ln, up := loopbackBackend(t)
		go greeter(ln)
		lc := loopbackListener(t, "web", down.String(), up.String())
		lc.Passive = passive
		if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
			t.Fatal(err)
		}
		// Round robin tries the refusing backend for one of the two; it retries on the
		// other, having recorded the failure.
		for i := range 2 {
			if err := greeted(lc.Addrs[0]); err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
		}
		if n := testutil.ToFloat64(s.metrics.connectErrs.WithLabelValues("web", down.String(), "refused")); n != 1 {
			t.Fatalf("refused connects to %v = %v, want 1", down, n)
		}
		if st := s.Status(); st[0].HealthyBackends != 1 || st[0].Backends != 2 {
			t.Errorf("Status = %+v, want the refusing backend down", st)
		}
	})
}

// TestPassiveOnlyBackendAfterChanges: a backend passively down that becomes its
// listener's only one is usable at once, and takes no failure count along when a second
// backend comes back.
func TestPassiveOnlyBackendAfterChanges(t *testing.T) {
	s := newTestServer(t)
	a, b := netip.MustParseAddrPort("127.0.0.1:1"), netip.MustParseAddrPort("127.0.0.1:2")
	lc := loopbackListener(t, "svc")
	lc.Passive = PassiveCheck{MaxFails: 2, FailTimeout: time.Hour}
	if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
		t.Fatal(err)
	}
	set := func(addrs ...netip.AddrPort) {
		t.Helper()
		var bs []Backend
		for _, a := range addrs {
			bs = append(bs, Backend{Addr: a, Weight: 1})
		}
		if err := s.SetBackends("svc", bs); err != nil {
			t.Fatal(err)
		}
	}
	backend := func(addr netip.AddrPort) *backend {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.listeners["svc"].backends[addr]
	}
	healthy := func() int { return s.Status()[0].HealthyBackends }

	set(a, b)
	now := time.Now()
	backend(a).connectFailed(errConnectTimeout, now)
	if !backend(a).connectFailed(errConnectTimeout, now) || healthy() != 1 {
		t.Fatalf("two failures did not take %v out", a)
	}
	set(a)
	if healthy() != 1 {
		t.Errorf("the only backend left is still down")
	}
	if backend(a).connectFailed(errConnectTimeout, now) {
		t.Errorf("a failure took out the only backend")
	}
	set(a, b)
	if backend(a).connectFailed(errConnectTimeout, now) || healthy() != 2 {
		t.Errorf("one failure after the set grew took %v out; want it to start a new count", a)
	}
}

// TestIdleTimeoutStartsWhenConnected: the idle timeout does not run while a backend is
// being connected (nginx's proxy_timeout neither): a client whose first backend does not
// answer is served by the retry on the next after the connect timeout, even when that is
// longer than the idle timeout.
func TestIdleTimeoutStartsWhenConnected(t *testing.T) {
	// A backend whose accept queue is full drops SYNs: connects to it hang.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	hole := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	full := false
	for range 8 {
		c, err := net.DialTimeout("tcp", hole.String(), 200*time.Millisecond)
		if err != nil {
			full = true
			break
		}
		t.Cleanup(func() { c.Close() })
	}
	if !full {
		t.Fatal("could not fill the accept queue of the black-holed backend")
	}
	ln, good := loopbackBackend(t)
	go greeter(ln)

	s := newTestServer(t)
	lc := loopbackListener(t, "slow", hole.String(), good.String())
	lc.ConnectTimeout = 4 * time.Second
	lc.IdleTimeout = time.Second
	if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
		t.Fatal(err)
	}
	// Two clients at once: round robin sends one of them to the black hole first.
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- greeted(lc.Addrs[0]) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("client: %v, want it served by the retry", err)
		}
	}
	if n := testutil.ToFloat64(s.metrics.connectErrs.WithLabelValues("slow", hole.String(), "timeout")); n != 1 {
		t.Errorf("connect timeouts towards the black hole = %v, want 1", n)
	}
}
