// Package proxy is the agent's data plane: it listens on each virtual IP and port and
// proxies TCP connections to backends, balancing them, checking backend health, writing
// PROXY protocol headers, and reporting its own health to the VRRP tracker so that a
// node that cannot serve gives up the virtual IPs.
//
// Balancing policies are in package balance, health state machines in package health,
// PROXY headers in package proxyproto; this package holds the sockets.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/proxy/balance"
)

// HealthCheckName is the check name under which the proxy reports its health.
const HealthCheckName = "proxy"

// ErrClosed is returned by Apply and SetBackends after Shutdown.
var ErrClosed = errors.New("proxy server shut down")

// ErrUnknownListener is returned by SetBackends for a name that Apply did not configure.
var ErrUnknownListener = errors.New("unknown listener")

// HealthReporter receives the proxy's health; the VRRP tracker implements it.
type HealthReporter interface {
	SetHealth(check string, healthy bool, reason string)
}

// ListenerStatus is a listener's state as Status sees it.
type ListenerStatus struct {
	Name string
	// HealthyBackends of Backends may take new connections.
	HealthyBackends, Backends int
	// Active is the number of open client connections.
	Active int
	// Listening is true when every address of the listener accepts connections.
	Listening bool
	// Pending is true for a listener whose backends come from SetBackends (it has no
	// static ones) until its first SetBackends: having none yet is not a fault, so the
	// proxy's health does not count its lack of backends.
	Pending bool
}

// Option configures a Server.
type Option func(*Server)

// WithMetrics registers the proxy's metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option { return func(s *Server) { s.reg = reg } }

// WithHealthReporter reports the proxy's health to r under HealthCheckName: healthy when
// every listener listens and has at least one usable backend.
func WithHealthReporter(r HealthReporter) Option { return func(s *Server) { s.reporter = r } }

// WithAccessLog sends access log entries (when Config.AccessLog is on) to log instead of
// the server's logger.
func WithAccessLog(log logr.Logger) Option {
	return func(s *Server) { s.access = func(e accessEntry) { e.log(log) } }
}

// WithAccessLogWriter writes access log entries (when Config.AccessLog is on) to w, one
// logfmt line each.
func WithAccessLogWriter(w io.Writer) Option {
	var mu sync.Mutex
	return func(s *Server) {
		s.access = func(e accessEntry) {
			line := e.appendLogfmt(nil)
			mu.Lock()
			_, _ = w.Write(line)
			mu.Unlock()
		}
	}
}

// Dialer connects to backends for active health checks; *net.Dialer is one. Tests
// inject one that dials from inside a network namespace. (Proxied connections are
// connected by the event loops with non-blocking system calls.)
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// WithDialer makes the active health checks connect through d instead of a net.Dialer.
func WithDialer(d Dialer) Option { return func(s *Server) { s.dialer = d } }

// Server proxies the listeners of the Config it was last given.
type Server struct {
	log      logr.Logger
	reg      prometheus.Registerer
	reporter HealthReporter
	access   func(accessEntry)
	dialer   Dialer
	metrics  *metrics

	mu        sync.Mutex // serialises Apply, SetBackends, DrainEstablished, Shutdown
	listeners map[string]*listener
	sockets   map[netip.AddrPort]*socket
	closed    bool
	started   bool
	accessOn  atomic.Bool

	connMu sync.Mutex
	conns  map[*conn]struct{}
	// drained is when the last drain closed the connections; one accepted before and
	// registered after is closed too. Guarded by connMu.
	drained time.Time
	// retiring holds removed listeners whose connections still run, by name: their
	// metric series go when the last one ends. Guarded by mu.
	retiring map[string]*listener

	kickc     chan struct{}
	stop      chan struct{}
	wg        sync.WaitGroup // every goroutine and connection of the server
	drain     *time.Timer
	newSocket socketFunc

	loops    []*loop
	loopErr  error
	loopNext atomic.Uint32

	// testHookAccepting, set by tests, runs once a socket's accept loop has started, so
	// that a test can have a connection accepted at that very point.
	testHookAccepting func(*socket)
}

// New returns a server with no listeners; Apply starts it. Its event loops run from
// here on, one per GOMAXPROCS, until Shutdown, which every server needs in the end.
func New(log logr.Logger, opts ...Option) *Server {
	s := &Server{
		log:       log,
		listeners: map[string]*listener{},
		sockets:   map[netip.AddrPort]*socket{},
		conns:     map[*conn]struct{}{},
		retiring:  map[string]*listener{},
		kickc:     make(chan struct{}, 1),
		stop:      make(chan struct{}),
		// No TCP keepalive, as nginx and HAProxy by default: idle timeouts end dead
		// connections, and the probes' system calls are saved.
		dialer:    &net.Dialer{KeepAlive: -1},
		newSocket: unix.Socket,
	}
	for _, o := range opts {
		o(s)
	}
	s.metrics = newMetrics(s.reg)
	// One event loop per processor the runtime may use.
	for range runtime.GOMAXPROCS(0) {
		lp, err := newLoop(s.newSocket)
		if err != nil {
			s.loopErr = err
			break
		}
		s.loops = append(s.loops, lp)
		s.wg.Add(1)
		go func() { defer s.wg.Done(); lp.run() }()
	}
	if s.access == nil {
		s.access = func(e accessEntry) { e.log(log) }
	}
	return s
}

// Apply starts the server or changes its configuration live: listeners are added and
// removed, addresses opened and closed, backends, balancing and checks changed, and
// established connections keep running, even those of a removed listener. An invalid
// configuration, or an address that cannot be listened on, returns an error and leaves
// the running state as it was.
func (s *Server) Apply(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if s.loopErr != nil {
		return fmt.Errorf("starting the proxy's event loops: %w", s.loopErr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}

	// Open the new addresses first: the only step that can fail.
	wanted := map[netip.AddrPort]string{}
	var opened []*socket
	for _, lc := range cfg.Listeners {
		for _, a := range lc.Addrs {
			a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
			wanted[a] = lc.Name
			if _, ok := s.sockets[a]; ok {
				continue
			}
			sock, err := listen(a)
			if err != nil {
				for _, o := range opened {
					o.close()
				}
				return fmt.Errorf("configuring listener %q: %w", lc.Name, err)
			}
			opened = append(opened, sock)
		}
	}

	// Commit.
	for name, l := range s.listeners {
		if !slices.ContainsFunc(cfg.Listeners, func(lc ListenerConfig) bool { return lc.Name == name }) {
			l.retire()
			delete(s.listeners, name)
			s.retireMetrics(l)
			s.log.Info("Removed listener", "listener", name)
		}
	}
	for _, lc := range cfg.Listeners {
		l, ok := s.listeners[lc.Name]
		var prev *listener
		if !ok {
			// The series of a removed listener of this name, kept for its connections,
			// are this one's now.
			prev = s.retiring[lc.Name]
			delete(s.retiring, lc.Name)
			l = newListener(s, lc.Name)
			s.listeners[lc.Name] = l
			s.log.Info("Added listener", "listener", lc.Name, "addrs", lc.Addrs)
		}
		backends := lc.Backends
		if len(backends) == 0 && l.dynamic {
			backends = l.plan.Load().cfg.Backends
		} else {
			l.dynamic = false
		}
		l.publish(lc, backends, len(backends) == 0 && !l.dynamic)
		if prev != nil {
			// Nothing else deletes the series of the removed listener's backends that
			// this one lacks: this one never had them, and the removed one's last
			// connection leaves the listener's series to this one.
			for a, be := range prev.backends {
				if _, ok := l.backends[a]; !ok {
					s.metrics.deleteBackend(lc.Name, be.name)
				}
			}
		}
	}
	for a, sock := range s.sockets {
		if _, ok := wanted[a]; !ok {
			sock.close()
			delete(s.sockets, a)
		}
	}
	for _, sock := range opened {
		s.sockets[sock.addr] = sock
	}
	for a, name := range wanted {
		s.sockets[a].owner.Store(s.listeners[name])
	}
	// Only now that every socket has its owner: a connection already queued on a new
	// socket (the node holds the address, or a restarted agent finds it still up) is
	// accepted at once, and served by the owner.
	for _, sock := range opened {
		s.startAccepting(sock)
	}
	s.accessOn.Store(cfg.AccessLog)
	if !s.started {
		s.started = true
		s.wg.Add(1)
		go s.housekeeping()
	}
	s.kick()
	return nil
}

// SetBackends replaces the backends of a listener, as the ready endpoints of its Service
// change. Backends that stay keep their health and connections. A later Apply whose
// listener has no static backends keeps this set.
func (s *Server) SetBackends(listener string, backends []Backend) error {
	var errs []error
	validateBackends("backends", backends, func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...)))
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("setting backends of listener %q: %w", listener, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	l, ok := s.listeners[listener]
	if !ok {
		return fmt.Errorf("setting backends of listener %q: %w", listener, ErrUnknownListener)
	}
	l.dynamic = true
	l.publish(l.plan.Load().cfg, slices.Clone(backends), false)
	s.kick()
	return nil
}

// DrainEstablished closes, after timeout, the connections open now and those accepted
// until then: during a handover a client may still reach the old master, and without an
// idle timeout its connection would otherwise live on. The listeners stay open (the node
// is a warm backup), and connections accepted after the timeout are left alone. It
// returns at once; a later call replaces the pending one.
func (s *Server) DrainEstablished(timeout time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log.Info("Draining established connections", "connections", len(s.snapshotConns()), "timeout", timeout)
	if s.drain != nil {
		s.drain.Stop()
	}
	s.drain = time.AfterFunc(max(timeout, 0), func() {
		s.connMu.Lock()
		s.drained = time.Now()
		victims := s.snapshotConnsLocked()
		s.connMu.Unlock()
		closed := 0
		for _, c := range victims {
			if c.abort(endDrained) {
				closed++
			}
		}
		if closed > 0 {
			s.log.Info("Closed connections still open after the drain timeout", "connections", closed)
		}
	})
}

// CancelDrain stops a DrainEstablished whose deadline has not passed: the
// node is master again, and the connections it holds are its own once more.
func (s *Server) CancelDrain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drain != nil && s.drain.Stop() {
		s.log.Info("Drain cancelled")
	}
	s.drain = nil
}

// Shutdown stops accepting, lets established connections finish until ctx is done, then
// closes those left and waits for the server's goroutines. It returns an error wrapping
// ctx's error when it had to close connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for a, sock := range s.sockets {
		sock.close()
		delete(s.sockets, a)
	}
	for _, l := range s.listeners {
		l.retire()
	}
	if s.drain != nil {
		s.drain.Stop()
	}
	close(s.stop)
	s.mu.Unlock()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var err error
	for len(s.snapshotConns()) > 0 && err == nil {
		select {
		case <-ctx.Done():
			left := s.snapshotConns()
			for _, c := range left {
				c.abort(endShutdown)
			}
			err = fmt.Errorf("closing %d connections still open at shutdown: %w", len(left), ctx.Err())
		case <-tick.C:
		}
	}
	for _, lp := range s.loops {
		lp.close()
	}
	s.wg.Wait()
	return err
}

// Status returns each listener's state, sorted by name.
func (s *Server) Status() []ListenerStatus {
	s.mu.Lock()
	ls := make([]*listener, 0, len(s.listeners))
	for _, l := range s.listeners {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	now := time.Now().UnixNano()
	out := make([]ListenerStatus, 0, len(ls))
	for _, l := range ls {
		p := l.plan.Load()
		out = append(out, ListenerStatus{
			Name:            l.name,
			HealthyBackends: p.healthy(now),
			Backends:        len(p.backends),
			Active:          int(l.active.Load()),
			Listening:       l.listening(),
			Pending:         p.pending,
		})
	}
	slices.SortFunc(out, func(a, b ListenerStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// kick asks the housekeeping loop to re-evaluate health now.
func (s *Server) kick() {
	select {
	case s.kickc <- struct{}{}:
	default:
	}
}

// housekeeping reports health on changes (at once when kicked, and every tick for
// passive checks, whose backends come back with time), and every second sweeps the
// connections for idle timeouts and byte counts.
func (s *Server) housekeeping() {
	defer s.wg.Done()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var lastHealthy *bool
	var lastReason string
	lastSweep := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kickc:
		case <-tick.C:
		}
		now := time.Now()
		healthy, reason := s.evaluate(now)
		if lastHealthy == nil || *lastHealthy != healthy || reason != lastReason {
			if healthy {
				s.log.Info("Proxy healthy")
			} else {
				s.log.Info("Proxy unhealthy", "reason", reason)
			}
			if s.reporter != nil {
				s.reporter.SetHealth(HealthCheckName, healthy, reason)
			}
			lastHealthy, lastReason = &healthy, reason
		}
		if now.Sub(lastSweep) >= time.Second {
			lastSweep = now
			s.sweep(now)
		}
	}
}

// evaluate computes the proxy's health and updates the backend gauges.
func (s *Server) evaluate(now time.Time) (bool, string) {
	var problems []string
	for _, st := range s.Status() {
		switch {
		case !st.Listening:
			problems = append(problems, fmt.Sprintf("listener %q is not listening", st.Name))
		case st.HealthyBackends == 0 && !st.Pending:
			problems = append(problems, fmt.Sprintf("listener %q has no healthy backend (0 of %d)", st.Name, st.Backends))
		}
	}
	s.mu.Lock()
	for _, l := range s.listeners {
		for _, b := range l.plan.Load().backends {
			v := 0.0
			if b.usable(now.UnixNano()) {
				v = 1
			}
			b.healthy.Set(v)
		}
	}
	s.mu.Unlock()
	if len(problems) == 0 {
		return true, ""
	}
	return false, strings.Join(problems, "; ")
}

func (s *Server) snapshotConns() []*conn {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return s.snapshotConnsLocked()
}

func (s *Server) snapshotConnsLocked() []*conn {
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// sweep closes idle connections and adds byte counts to the metrics.
func (s *Server) sweep(now time.Time) {
	for _, c := range s.snapshotConns() {
		c.sweep(now)
	}
}

// nextLoop spreads connections over the event loops.
func (s *Server) nextLoop() *loop {
	return s.loops[int(s.loopNext.Add(1))%len(s.loops)]
}

// newRand is the balancers' random source.
func (s *Server) newRand() *rand.Rand { return rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())) }

// listener is one named listener: its sockets point to it, and it holds the plan.
type listener struct {
	s    *Server
	name string
	m    *listenerMetrics

	plan         atomic.Pointer[plan]
	backends     map[netip.AddrPort]*backend // guarded by s.mu
	dynamic      bool                        // backends come from SetBackends; guarded by s.mu
	active       atomic.Int64
	retired      atomic.Bool // set under s.mu
	resourcesLog throttle    // logOutOfResources
}

// resourcesLogEvery spaces out-of-resources log lines: at the file limit every
// connection, probe and accept fails, and one line every few seconds says so.
const resourcesLogEvery = 10 * time.Second

// throttle lets one event through per resourcesLogEvery; its zero value lets the first.
type throttle struct{ last atomic.Int64 } // unix nanoseconds

// allow reports whether an event at now may go through, and if so counts it.
func (t *throttle) allow(now time.Time) bool {
	last := t.last.Load()
	return now.UnixNano()-last >= int64(resourcesLogEvery) && t.last.CompareAndSwap(last, now.UnixNano())
}

// logOutOfResources logs, at most every resourcesLogEvery, that a connect to backend
// failed for want of the agent's own resources (see outOfResources).
func (l *listener) logOutOfResources(backend string, err error) {
	if l.resourcesLog.allow(time.Now()) {
		l.s.log.Error(err, "Out of local resources to connect to a backend; clients are refused, the backend is not marked down",
			"listener", l.name, "backend", backend)
	}
}

func newListener(s *Server, name string) *listener {
	l := &listener{s: s, name: name, m: s.metrics.forListener(name), backends: map[netip.AddrPort]*backend{}}
	return l
}

// publish builds and publishes a plan for cfg with backends, reusing the backends that
// stay with their health and active checks. pending marks a listener that waits for its
// first SetBackends. Called with s.mu held.
//
// An unchanged configuration publishes nothing, and unchanged backends and policy keep
// the balancer: the agent applies its whole configuration on every sync, which must not
// reset round robin or the probes' timing.
func (l *listener) publish(cfg ListenerConfig, backends []Backend, pending bool) {
	cfg.Backends = backends
	old := l.plan.Load()
	if old != nil && old.pending == pending && sameListener(old.cfg, cfg) {
		return
	}
	bs := make([]*backend, len(backends))
	keep := map[netip.AddrPort]*backend{}
	for i, b := range backends {
		be, ok := l.backends[b.Addr]
		if !ok {
			be = newBackend(b.Addr, l.name, l.s.metrics)
		}
		be.configure(cfg.Passive, cfg.Active, len(backends) == 1)
		be.check(l, cfg.Active)
		keep[b.Addr] = be
		bs[i] = be
	}
	for a, be := range l.backends {
		if _, ok := keep[a]; !ok {
			be.check(l, nil)
			l.s.metrics.deleteBackend(l.name, be.name)
		}
	}
	l.backends = keep
	var balancer balance.Balancer
	if old != nil && old.cfg.Balance == cfg.Balance && slices.Equal(old.cfg.Backends, cfg.Backends) {
		balancer = old.balancer
	} else {
		bal := make([]balance.Backend, len(backends))
		for i, b := range backends {
			bal[i] = balance.Backend{Key: bs[i].name, Weight: b.Weight}
		}
		var err error
		balancer, err = balance.New(balance.Policy(cfg.Balance), bal, l.s.newRand())
		if err != nil {
			// Validate has checked weights and the policy.
			panic(fmt.Sprintf("building a balancer from a validated configuration: %v", err))
		}
	}
	l.plan.Store(&plan{cfg: cfg, backends: bs, balancer: balancer, pending: pending})
}

// sameListener reports whether two listener configurations are equal.
func sameListener(a, b ListenerConfig) bool {
	if (a.Active == nil) != (b.Active == nil) || a.Active != nil && *a.Active != *b.Active {
		return false
	}
	a.Active, b.Active = nil, nil
	addrs, backends := slices.Equal(a.Addrs, b.Addrs), slices.Equal(a.Backends, b.Backends)
	a.Addrs, b.Addrs, a.Backends, b.Backends = nil, nil, nil, nil
	return addrs && backends && reflect.DeepEqual(a, b)
}

// retire stops the listener's checks; its sockets are closed or moved by the caller, and
// its connections run on. Called with s.mu held.
func (l *listener) retire() {
	l.retired.Store(true)
	for _, be := range l.backends {
		be.check(l, nil)
	}
}

// retireMetrics drops a removed listener's series once its last connection has ended,
// so that the bytes and durations of those connections are still exported. Called with
// s.mu held, after retire.
func (s *Server) retireMetrics(l *listener) {
	if l.active.Load() == 0 {
		s.metrics.deleteListener(l.name)
		return
	}
	s.retiring[l.name] = l
}

// lastConnEnded drops the series of a removed listener whose last connection ended,
// unless a listener of the same name has taken them over.
func (l *listener) lastConnEnded() {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	if l.s.retiring[l.name] == l && l.active.Load() == 0 {
		delete(l.s.retiring, l.name)
		l.s.metrics.deleteListener(l.name)
	}
}

// listening reports whether every address of the listener has a live socket.
func (l *listener) listening() bool {
	l.s.mu.Lock()
	defer l.s.mu.Unlock()
	p := l.plan.Load()
	for _, a := range p.cfg.Addrs {
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		sock, ok := l.s.sockets[a]
		if !ok || sock.owner.Load() != l || sock.failed.Load() {
			return false
		}
	}
	return !l.retired.Load()
}
