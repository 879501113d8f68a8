package proxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbpair/lbpair/agent/proxy/balance"
	"github.com/lbpair/lbpair/agent/proxy/health"
)

// backend is one backend of one listener. It outlives configuration changes that keep
// its address, so its health and connection count carry over.
type backend struct {
	addr netip.AddrPort
	name string // addr.String(), for labels and logs

	conns atomic.Int64 // open proxied connections, for least connections
	// Hot-path view of the health state machines below.
	passiveDownUntil atomic.Int64 // unix nanoseconds
	activeUp         atomic.Bool

	mu      sync.Mutex
	passive health.Passive
	active  health.Active
	// single: the backend is its listener's only one, which passive checks never mark
	// down (see connectFailed).
	single bool

	// prober runs the active check. Written with both the listener's s.mu and mu held,
	// read under either: probe results are recorded only for the current prober.
	prober *prober

	selections                                       prometheus.Counter
	healthy                                          prometheus.Gauge
	errRefused, errTimeout, errUnreachable, errOther prometheus.Counter
}

func newBackend(addr netip.AddrPort, listener string, m *metrics) *backend {
	name := addr.String()
	b := &backend{
		addr:           addr,
		name:           name,
		selections:     m.selections.WithLabelValues(listener, name),
		healthy:        m.healthy.WithLabelValues(listener, name),
		errRefused:     m.connectErrs.WithLabelValues(listener, name, "refused"),
		errTimeout:     m.connectErrs.WithLabelValues(listener, name, "timeout"),
		errUnreachable: m.connectErrs.WithLabelValues(listener, name, "unreachable"),
		errOther:       m.connectErrs.WithLabelValues(listener, name, "other"),
	}
	b.activeUp.Store(true)
	b.healthy.Set(1)
	return b
}

// usable reports whether the backend may take a new connection at now (unix nanoseconds).
func (b *backend) usable(now int64) bool {
	return b.activeUp.Load() && now >= b.passiveDownUntil.Load()
}

// configure applies a listener's check settings, keeping the state; single says that b
// is the listener's only backend.
func (b *backend) configure(p PassiveCheck, a *ActiveCheck, single bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.passive.MaxFails, b.passive.FailTimeout = p.MaxFails, p.FailTimeout
	b.single = single
	if p.MaxFails == 0 || single {
		// The backend left alone by a set that shrank is usable at once, and takes no
		// count of old failures along should the set grow again.
		b.passive = health.Passive{MaxFails: p.MaxFails, FailTimeout: p.FailTimeout}
		b.passiveDownUntil.Store(0)
	}
	if a == nil {
		return // check, which stops the prober, resets the active state
	}
	b.active.Rise, b.active.Fall = a.Rise, a.Fall
}

// connectFailed records a failed connect; it returns true when that marks the backend down.
func (b *backend) connectFailed(err error, now time.Time) bool {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		b.errRefused.Inc()
	case errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err):
		b.errTimeout.Inc()
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		b.errUnreachable.Inc()
	default:
		b.errOther.Inc()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.single {
		// As nginx with an upstream of one server: marking the only backend down refuses
		// every client for the fail timeout, and makes the proxy unhealthy, even when it
		// refused one connect while restarting and is back at once. Nothing is counted,
		// so that the set growing starts it with a clean record. Active checks still
		// take it out.
		return false
	}
	down := b.passive.Failure(now)
	if down {
		b.passiveDownUntil.Store(b.passive.DownUntil().UnixNano())
	}
	return down
}

// outOfResources reports whether a failed connect says nothing of the backend because
// the agent itself ran out of something: file descriptors or memory for a socket
// (outOfSockets), or a free local port towards this backend (EADDRNOTAVAIL), which
// another backend may still have. Health checks do not count such failures: at its file
// limit an agent would otherwise take every backend out and give up the VIP, and keep
// them out for the fail timeout once descriptors are free again.
func outOfResources(err error) bool {
	return outOfSockets(err) || errors.Is(err, syscall.EADDRNOTAVAIL)
}

// outOfSockets reports whether err says the agent can make no socket now, towards any
// backend.
func outOfSockets(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// connectSucceeded ends a passive probation.
func (b *backend) connectSucceeded() {
	b.mu.Lock()
	b.passive.Success()
	b.mu.Unlock()
}

// probed records an active probe of pr; it returns true when the state changed. The
// result of a prober stopped or replaced since (it may finish its probe just as check
// cancels it) is dropped: it would count against the new settings, or mark down a
// backend that no prober brings back.
func (b *backend) probed(pr *prober, ok bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.prober != pr {
		return false
	}
	changed := b.active.Observe(ok)
	b.activeUp.Store(b.active.Up())
	return changed
}

// plan is a listener's configuration with its backends and balancer. It is immutable
// once published; a change publishes a new plan.
type plan struct {
	cfg      ListenerConfig
	backends []*backend
	balancer balance.Balancer
	// pending: the backends come from SetBackends, which has not been called yet.
	pending bool
}

// pick chooses a usable backend not in tried, or nil.
func (p *plan) pick(clientKey []byte, tried []*backend, now int64) *backend {
	usable := func(i int) bool {
		b := p.backends[i]
		for _, t := range tried {
			if t == b {
				return false
			}
		}
		return b.usable(now)
	}
	i := p.balancer.Pick(clientKey, usable, func(i int) int64 { return p.backends[i].conns.Load() })
	if i < 0 {
		return nil
	}
	return p.backends[i]
}

// healthy counts the backends usable at now.
func (p *plan) healthy(now int64) int {
	n := 0
	for _, b := range p.backends {
		if b.usable(now) {
			n++
		}
	}
	return n
}

// prober is a backend's active check: one goroutine, which outlives plans that keep the
// backend and the check's settings, so that a configuration change elsewhere does not
// restart its timing.
type prober struct {
	cfg    ActiveCheck
	cancel context.CancelFunc
}

// check starts, keeps or (with new settings) restarts the backend's active check for a;
// nil stops it. Called with the listener's s.mu held.
func (b *backend) check(l *listener, a *ActiveCheck) {
	if b.prober != nil && a != nil && b.prober.cfg == *a {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.prober != nil {
		b.prober.cancel()
		b.prober = nil
	}
	if a == nil {
		// Under b.mu with the prober's end, so that no result of it lands after this.
		b.active = health.Active{}
		b.activeUp.Store(true)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr := &prober{cfg: *a, cancel: cancel}
	b.prober = pr
	l.s.wg.Add(1)
	go func() {
		defer l.s.wg.Done()
		b.probeLoop(ctx, l, pr)
	}()
}

// probeLoop probes the backend until ctx ends. The first probe comes at a random offset
// within the interval, so that checks of many backends do not come in bursts.
func (b *backend) probeLoop(ctx context.Context, l *listener, pr *prober) {
	a := pr.cfg
	t := time.NewTimer(rand.N(a.Interval))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := probe(ctx, l.s.dialer, b.name, a.Timeout)
		if ctx.Err() != nil {
			return
		}
		if err != nil && outOfResources(err) {
			l.logOutOfResources(b.name, err)
			t.Reset(a.Interval)
			continue
		}
		if b.probed(pr, err == nil) {
			if err != nil {
				l.s.log.Info("Backend down: active check failed", "listener", l.name, "backend", b.name, "fall", a.Fall, "error", err.Error())
			} else {
				l.s.log.Info("Backend up: active check passed", "listener", l.name, "backend", b.name, "rise", a.Rise)
			}
			l.s.kick()
		}
		t.Reset(a.Interval)
	}
}

// probe is one active check: a TCP connect, closed at once.
func probe(ctx context.Context, d Dialer, addr string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	// Reset rather than FIN, so a probe leaves no TIME_WAIT on the agent.
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	return c.Close()
}
