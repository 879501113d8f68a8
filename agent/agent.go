package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lbpair/lbpair/agent/config"
	"github.com/lbpair/lbpair/agent/proxy"
	"github.com/lbpair/lbpair/agent/track"
	"github.com/lbpair/lbpair/agent/vrrp"
)

// routerStopTimeout bounds how long a stopping router with cfg may take to
// send its priority-0 advert, wait for the new master (at most
// vrrp.HandoverWait) and remove the virtual IPs. It must outlast the
// handover wait, or the process may exit with the virtual IPs still on the
// interface.
func routerStopTimeout(cfg vrrp.Config) time.Duration {
	return vrrp.HandoverWait(cfg) + 2*time.Second
}

// Agent runs one pair's VRRP router and proxy and applies new settings to
// them live. It is the part shared by standalone and cluster modes.
type Agent struct {
	log   logr.Logger
	reg   prometheus.Registerer
	proxy *proxy.Server
	hook  func(vrrp.Transition)

	// drainTimeout is read by the transition hook, which must not take mu:
	// stopping a router under mu waits for its last transitions.
	drainTimeout atomic.Int64
	// master and drainMu order the proxy's drains and their cancelling.
	master  atomic.Bool
	drainMu sync.Mutex
	// vips are the virtual IPs of the running settings, for the HTTP
	// endpoints, which must not take mu either.
	vips atomic.Pointer[[]netip.Addr]

	mu       sync.Mutex
	settings *config.Settings
	health   healthRelay
	tracker  *track.Tracker // the running router's
	router   *vrrp.Router
	cancel   context.CancelFunc
	done     chan struct{}
	runErr   error
}

// NewAgent makes an agent that has not started anything yet. hook, when not
// nil, sees every VRRP transition, and a zero Transition when the proxy's
// health changes; it must not block.
func NewAgent(log logr.Logger, reg prometheus.Registerer, hook func(vrrp.Transition)) *Agent {
	a := &Agent{log: log, reg: reg, hook: hook}
	if hook != nil {
		// A change of the proxy's health changes what the agent reports
		// even when it moves no VRRP state (a tracking weight).
		a.health.changed = func() { hook(vrrp.Transition{}) }
	}
	a.proxy = proxy.New(log.WithName("proxy"), proxy.WithMetrics(reg), proxy.WithHealthReporter(&a.health))
	return a
}

// isVIP tells whether addr is one of the running virtual IPs.
func (a *Agent) isVIP(addr netip.Addr) bool {
	vips := a.vips.Load()
	return vips != nil && slices.Contains(*vips, addr)
}

// Proxy is the agent's proxy, for feeding Service backends.
func (a *Agent) Proxy() *proxy.Server { return a.proxy }

// Apply starts the agent with s, or moves a running agent to s. The proxy is
// configured first, so its listeners are warm before the router can take the
// virtual IPs. An error leaves the running agent as it was.
func (a *Agent) Apply(ctx context.Context, s *config.Settings) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.proxy.Apply(s.Proxy); err != nil {
		return fmt.Errorf("configuring the proxy: %w", err)
	}
	// The proxy goes first, so that its listeners on new virtual IPs are up
	// before the router takes them; if the router refuses the change, the
	// proxy goes back to what it ran.
	undo := func(err error) error {
		var prev proxy.Config
		if a.settings != nil {
			prev = a.settings.Proxy
			a.setChecksLocked(a.settings.Checks)
		}
		if perr := a.proxy.Apply(prev); perr != nil {
			err = errors.Join(err, fmt.Errorf("restoring the proxy: %w", perr))
		}
		return err
	}
	restart := a.router == nil
	if !restart && !reflect.DeepEqual(a.settings.Checks, s.Checks) {
		// A new tracking weight changes the effective priority only: the
		// running router takes it, where a new one would hand the virtual
		// IPs over and back.
		a.setChecksLocked(s.Checks)
	}
	// Most syncs change nothing (a status write is a watch event too).
	if !restart && !reflect.DeepEqual(a.settings.VRRP, s.VRRP) {
		err := a.router.Reconfigure(s.VRRP)
		switch {
		case errors.Is(err, vrrp.ErrRestartRequired):
			a.log.Info("Restarting VRRP: the change needs a new router", "vrid", s.VRRP.VRID, "virtualIPs", s.VRRP.VIPs)
			restart = true
		case err != nil:
			return undo(fmt.Errorf("reconfiguring VRRP: %w", err))
		}
	}
	if restart {
		if err := a.startRouter(ctx, s); err != nil {
			return undo(err)
		}
	}
	a.settings = s
	a.drainTimeout.Store(int64(s.Proxy.DrainTimeout))
	vips := slices.Clone(s.VRRP.VIPs)
	a.vips.Store(&vips)
	return nil
}

// setChecksLocked gives the running router's tracker new checks, and the
// proxy's last reports, which it ignored for checks it did not have.
func (a *Agent) setChecksLocked(checks []track.Check) {
	if a.tracker == nil {
		return
	}
	a.tracker.SetChecks(checks...)
	a.health.set(a.tracker)
}

// startRouter replaces the running router, if any, with a new one. The old
// one leaves the group first (priority 0, virtual IPs removed), so that two
// routers of this node never run at once.
func (a *Agent) startRouter(ctx context.Context, s *config.Settings) error {
	tracker := track.New(s.Checks...)
	opts := []vrrp.Option{vrrp.WithTracker(tracker), vrrp.WithTransitionHook(a.transition)}
	if a.reg != nil {
		opts = append(opts, vrrp.WithMetrics(a.reg))
	}
	r, err := vrrp.NewRouter(s.VRRP, a.log.WithName("vrrp"), opts...)
	if err != nil {
		return fmt.Errorf("creating the VRRP router: %w", err)
	}
	a.stopRouterLocked()
	a.health.set(tracker)
	a.tracker = tracker
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	a.router, a.cancel, a.done, a.runErr = r, cancel, done, nil
	go func() {
		defer close(done)
		if err := r.Run(runCtx); err != nil {
			a.log.Error(err, "VRRP router stopped")
			a.mu.Lock()
			if a.router == r {
				a.runErr = err
			}
			a.mu.Unlock()
		}
	}()
	return nil
}

func (a *Agent) stopRouterLocked() {
	if a.router == nil {
		return
	}
	a.cancel()
	select {
	case <-a.done:
	case <-time.After(routerStopTimeout(a.settings.VRRP)):
		a.log.Info("VRRP router did not stop in time", "timeout", routerStopTimeout(a.settings.VRRP))
	}
	a.router, a.tracker = nil, nil
}

func (a *Agent) transition(t vrrp.Transition) {
	// The proxy is told off the router's goroutine; drainMu and master keep
	// a drain that starts late from outliving a return to master.
	switch {
	case t.From == vrrp.Master && t.To != vrrp.Master:
		a.master.Store(false)
		go func() {
			a.drainMu.Lock()
			defer a.drainMu.Unlock()
			if !a.master.Load() {
				a.proxy.DrainEstablished(time.Duration(a.drainTimeout.Load()))
			}
		}()
	case t.To == vrrp.Master && t.From != vrrp.Master:
		a.master.Store(true)
		go func() {
			a.drainMu.Lock()
			defer a.drainMu.Unlock()
			a.proxy.CancelDrain()
		}()
	}
	if a.hook != nil {
		a.hook(t)
	}
}

// Status is a snapshot of the agent for health endpoints and status reports.
type Status struct {
	Running bool
	Err     error
	VRRP    vrrp.Status
	Ports   []proxy.ListenerStatus
}

// Status reports the router's and the proxy's state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	r, err := a.router, a.runErr
	a.mu.Unlock()
	st := Status{Err: err, Ports: a.proxy.Status()}
	if r != nil {
		st.Running = err == nil
		st.VRRP = r.Status()
	}
	return st
}

// Deactivate leaves the VRRP group (a master hands over) and closes the
// listeners, draining established connections, but keeps the agent able to
// Apply again: the pair was deleted or the node deselected, and may come
// back.
func (a *Agent) Deactivate() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopRouterLocked()
	a.settings = nil
	if err := a.proxy.Apply(proxy.Config{}); err != nil {
		return fmt.Errorf("closing the listeners: %w", err)
	}
	a.proxy.DrainEstablished(time.Duration(a.drainTimeout.Load()))
	return nil
}

// Stop leaves the VRRP group at once (priority 0, so a backup takes over
// without waiting for the master-down timer), then drains the proxy until
// ctx is done. Connections still open when ctx's deadline passes are closed
// and logged; that is the drain timeout doing its job, not an error: a
// connection whose client now reaches the new master through the virtual IP
// can only end that way, as its FIN goes to the new master.
func (a *Agent) Stop(ctx context.Context) error {
	a.mu.Lock()
	a.stopRouterLocked()
	a.mu.Unlock()
	err := a.proxy.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		a.log.Info("Drain timeout reached", "result", err.Error())
		return nil
	}
	return err
}

// healthRelay forwards the proxy's health to the current router's tracker;
// the tracker is replaced when the router restarts, the proxy is not.
type healthRelay struct {
	mu      sync.Mutex
	tracker *track.Tracker
	last    map[string]healthReport
	// changed, when set, is called after each report; it must not block.
	changed func()
}

type healthReport struct {
	healthy bool
	reason  string
}

// SetHealth implements proxy.HealthReporter.
func (h *healthRelay) SetHealth(check string, healthy bool, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last == nil {
		h.last = map[string]healthReport{}
	}
	h.last[check] = healthReport{healthy, reason}
	if h.tracker != nil {
		h.tracker.SetHealth(check, healthy, reason)
	}
	if h.changed != nil {
		h.changed()
	}
}

// set switches to a new tracker and replays the last reports into it.
func (h *healthRelay) set(t *track.Tracker) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tracker = t
	for check, r := range h.last {
		t.SetHealth(check, r.healthy, r.reason)
	}
}
