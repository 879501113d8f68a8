package vrrp

import (
	"bytes"
	"cmp"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/internal/nsexec"
	"github.com/lbpair/lbpair/agent/track"
	"github.com/lbpair/lbpair/agent/vip"
)

// dropLogEvery limits the debug logs of dropped packets to one per reason
// in this period: a misconfigured peer must not flood the log.
const dropLogEvery = 10 * time.Second

// mismatchLogEvery limits the logs of adverts of this group dropped for a
// configuration mismatch to one per reason in this period: they are shown
// by default, and a misconfigured peer sends one every interval.
const mismatchLogEvery = time.Minute

// HandoverTimeout is how long, at least, a stopping master keeps the
// virtual IPs while it waits for the new master's first advert (see
// HandoverWait).
const HandoverTimeout = 3 * time.Second

// HandoverWait is how long a stopping master with cfg keeps the virtual IPs
// while it waits for the new master's first advert: HandoverTimeout, or,
// when longer, the longest Skew_Time a backup waits after a priority-0
// advert and a second for the advert to come. In VRRPv3 that Skew_Time is
// almost an interval (40.95 s at most), in VRRPv2 under a second. Releasing
// the virtual IPs before then leaves them on no node until the backup takes
// over, and not waiting for Master_Down_Interval, which can be minutes
// (VRRPv2 allows 255 s adverts), bounds the stop of a lone master. The
// process stopping the router must wait for Run to return a little longer.
func HandoverWait(cfg Config) time.Duration {
	if cfg.Version == 3 {
		return max(HandoverTimeout, cfg.AdvertInterval+time.Second)
	}
	return HandoverTimeout
}

// Status is a snapshot of a router.
type Status struct {
	State             State
	Since             time.Time
	Reason            string
	EffectivePriority uint8
	MasterAddr        netip.Addr
	// Address is the router's own address, the source of its adverts: the
	// interface's primary IPv4 address, or its IPv6 link-local one.
	Address netip.Addr
}

// Option configures a Router.
type Option func(*Router)

// WithMetrics registers the router's metrics.
func WithMetrics(reg prometheus.Registerer) Option { return func(r *Router) { r.reg = reg } }

// WithTracker lets health checks lower the priority or fault the router.
func WithTracker(t *track.Tracker) Option { return func(r *Router) { r.tracker = t } }

// WithTransitionHook calls fn with every transition, from a goroutine of
// its own so that a slow hook never delays the protocol.
func WithTransitionHook(fn func(Transition)) Option { return func(r *Router) { r.hook = fn } }

// Router runs one VRRP instance on one interface.
type Router struct {
	log     logr.Logger
	reg     prometheus.Registerer
	tracker *track.Tracker
	hook    func(Transition)
	metrics *metrics

	cfg Config
	// ns is the network namespace the router was made in, where it opens
	// new sockets when its interface is made again.
	ns   netns.NsHandle
	nl   *netlink.Handle
	done chan struct{}
	// self is b.self, for Status.
	self netip.Addr

	reconf chan reconfiguration
	hooks  chan Transition

	mu     sync.Mutex
	status Status

	// The rest belongs to Run's goroutine.
	m *Machine
	b *binding
	w *watch
	// linkFault is why the interface keeps the router in Fault: it is down
	// or gone, or has no address to send from; "" when it can serve.
	linkFault string
	// stale says that b is bound to an interface that is gone, or sends from
	// an address the interface no longer has; retryAt, when set, is the
	// next attempt to open a new binding or watch.
	stale bool
	// preferred says that the binding serves but from an address the
	// router should leave (see outranked), and a move to it failed.
	preferred    bool
	retryAt      time.Time
	nextAnnounce time.Time
	// lastLog rate-limits logs by key (see logEvery).
	lastLog map[string]time.Time
	// loggedInterval is the last master interval logged as differing from
	// the configured one.
	loggedInterval time.Duration
	// publishedPrio is the priority last set in the metrics and status;
	// 0, which no machine has, until the first step.
	publishedPrio uint8
	// prev holds settings peers may still advertise after a change.
	prev previous
}

// dadWait bounds how long NewRouter waits for the interface's address to
// pass duplicate address detection (one probe a second by default).
const dadWait = 5 * time.Second

// configGrace is how long adverts that carry a setting's previous value (the
// VRRPv2 password or interval, the virtual IPs) are still accepted after a
// change. The routers of a group learn a change one at a time (each agent
// reads the pair and its Secret, each keepalived is reloaded); in between, a
// backup that dropped the master's adverts would take over.
const configGrace = time.Minute

// previous holds the settings a peer may still advertise after a change, and
// until when each is accepted.
type previous struct {
	password      string
	passwordUntil time.Time
	interval      time.Duration
	intervalUntil time.Time
	vips          []netip.Addr
	vipsUntil     time.Time
}

// remember keeps, for configGrace from now, the settings old had that cfg
// changes; it returns their names.
func (p *previous) remember(old, cfg Config, now time.Time) []string {
	until := now.Add(configGrace)
	var changed []string
	if cfg.AuthPassword != old.AuthPassword {
		p.password, p.passwordUntil = old.AuthPassword, until
		changed = append(changed, "password")
	}
	if cfg.AdvertInterval != old.AdvertInterval {
		p.interval, p.intervalUntil = old.AdvertInterval, until
		changed = append(changed, "interval")
	}
	if !sameAddrs(cfg.VIPs, old.VIPs) {
		p.vips, p.vipsUntil = old.VIPs, until
		changed = append(changed, "virtualIPs")
	}
	return changed
}

// NewRouter opens the router's sockets on the interface: it must run in
// the network namespace of that interface; the router may then run from any
// goroutine.
func NewRouter(cfg Config, log logr.Logger, opts ...Option) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Interface == "" {
		ifname, err := vip.InterfaceFor(cfg.VIPs[0])
		if err != nil {
			return nil, err
		}
		cfg.Interface = ifname
	}
	r := &Router{log: log, cfg: cfg, reconf: make(chan reconfiguration), hooks: make(chan Transition, 64), lastLog: map[string]time.Time{}, done: make(chan struct{})}
	for _, o := range opts {
		o(r)
	}
	var err error
	if r.ns, err = netns.Get(); err != nil {
		return nil, fmt.Errorf("opening the network namespace: %w", err)
	}
	ifi, self, err := locate(cfg)
	// A link just up has its IPv6 link-local address in duplicate address
	// detection for a second or so: wait for it rather than fail.
	for deadline := time.Now().Add(dadWait); errors.Is(err, vip.ErrTentative) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		ifi, self, err = locate(cfg)
	}
	if err == nil {
		r.b, err = bind(cfg, ifi, self, log)
	}
	if err != nil {
		r.ns.Close()
		return nil, err
	}
	r.self = r.b.self
	if r.nl, err = netlink.NewHandle(); err != nil {
		r.b.close()
		r.ns.Close()
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	if r.w, err = openWatch(log); err != nil {
		r.b.close()
		r.nl.Close()
		r.ns.Close()
		return nil, err
	}
	r.metrics = newMetrics(r.reg, cfg.VRID)
	r.status = Status{State: Init, EffectivePriority: cfg.Priority}
	return r, nil
}

// Status reports the router's state.
func (r *Router) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	st.Address = r.self
	return st
}

// reconfiguration is a new configuration for Run's goroutine, which
// answers on errc whether it took it.
type reconfiguration struct {
	cfg  Config
	errc chan error
}

// Reconfigure applies a new configuration to the running router. A master
// keeps the virtual IPs the new one keeps, without a failover. Changes of
// version, VRID, interface or the virtual IPs' family return
// ErrRestartRequired.
func (r *Router) Reconfigure(cfg Config) error {
	if cfg.Interface == "" {
		cfg.Interface = r.cfg.Interface
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if r.cfg.needsRestart(cfg) {
		return ErrRestartRequired
	}
	req := reconfiguration{cfg: cfg, errc: make(chan error, 1)}
	select {
	case r.reconf <- req:
		return <-req.errc
	case <-r.done:
		return errors.New("the VRRP router has stopped")
	}
}

type packetOrErr struct {
	rcv received
	err error
}

// Run runs the protocol until ctx ends; then a master sends a priority-0
// advert and removes the virtual IPs. A router runs once: as Run returns, its
// series leave the registry (see metrics.unregister).
func (r *Router) Run(ctx context.Context) error {
	defer close(r.done)
	// Before done closes, so that whoever waits for the router sees them gone.
	defer r.metrics.unregister()
	defer r.ns.Close()
	defer r.nl.Close()
	defer func() {
		r.b.close()
		if r.w != nil {
			r.w.close()
		}
	}()
	hooksDone := make(chan struct{})
	go r.runHooks(hooksDone)
	defer func() { close(r.hooks); <-hooksDone }()

	if present, err := r.b.vips.Present(); err != nil {
		return err
	} else if len(present) > 0 {
		r.log.Info("Removing virtual IPs left by an earlier run before joining", "virtualIPs", present, "interface", r.cfg.Interface)
		if err := r.b.vips.Remove(); err != nil {
			return err
		}
	}

	prio, fault, why := r.effective(r.cfg.Priority)
	r.m = NewMachine(MachineConfig{Version: r.cfg.Version, Priority: prio, Interval: r.cfg.AdvertInterval, Preempt: r.cfg.Preempt, PreemptDelay: r.cfg.PreemptDelay, Self: r.b.self})
	r.log.Info("Joining VRRP group", "vrid", r.cfg.VRID, "version", r.cfg.Version, "interface", r.cfg.Interface, "address", r.b.self,
		"priority", prio, "interval", r.cfg.AdvertInterval, "peers", r.cfg.Peers, "virtualIPs", r.cfg.VIPs)
	r.linkFault = r.readLinkFault()
	switch {
	case r.linkFault != "":
		r.exec(r.m.SetFault(time.Now(), true, r.linkFault))
	case fault:
		r.exec(r.m.SetFault(time.Now(), true, why))
	default:
		r.exec(r.m.Start(time.Now()))
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var changed <-chan struct{}
	if r.tracker != nil {
		changed = r.tracker.Changed()
	}
	for {
		next := r.m.Next()
		for _, t := range []time.Time{r.nextAnnounce, r.retryAt} {
			if !t.IsZero() && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
		if next.IsZero() {
			timer.Reset(time.Hour)
		} else {
			timer.Reset(time.Until(next))
		}
		var links <-chan netlink.LinkUpdate
		var addrs <-chan netlink.AddrUpdate
		if r.w != nil {
			links, addrs = r.w.links, r.w.addrs
		}
		select {
		case <-ctx.Done():
			r.leave(r.b.packets)
			return nil
		case p, ok := <-r.b.packets:
			if !ok {
				return errors.New("the VRRP socket closed")
			}
			if p.err != nil {
				r.log.Error(p.err, "Reading VRRP packets")
				continue
			}
			r.handle(p.rcv)
		case <-timer.C:
			now := time.Now()
			r.exec(r.m.Tick(now))
			if r.m.State() == Master {
				if err := r.b.vips.Refresh(now); err != nil {
					r.logLimited("vip-refresh", 0, "Renewing the virtual IPs' lifetime", "error", err.Error())
				}
			}
			if !r.nextAnnounce.IsZero() && !now.Before(r.nextAnnounce) {
				r.announceBurst()
				r.nextAnnounce = time.Time{}
				if r.cfg.Announce.Refresh > 0 && r.m.State() == Master {
					r.nextAnnounce = now.Add(r.cfg.Announce.Refresh)
				}
			}
			if !r.retryAt.IsZero() && !now.Before(r.retryAt) {
				r.retry()
			}
		case <-changed:
			prio, fault, why := r.effective(r.cfg.Priority)
			r.applyHealth(prio, fault, why)
		case u, ok := <-links:
			if !ok {
				r.lostWatch()
				continue
			}
			r.linkChanged(u)
		case u, ok := <-addrs:
			if !ok {
				r.lostWatch()
				continue
			}
			r.addrChanged(u)
		case req := <-r.reconf:
			cfg := req.cfg
			vipsChanged := !slices.Equal(cfg.VIPs, r.cfg.VIPs)
			if vipsChanged {
				// Addresses no longer listed go now; a master adds the new ones
				// below, once adverts carry them.
				if err := r.b.vips.SetVIPs(cfg.VIPs); err != nil {
					req.errc <- err
					continue
				}
			}
			if changed := r.prev.remember(r.cfg, cfg, time.Now()); len(changed) > 0 {
				r.log.Info("Peers' adverts with the previous settings are accepted for a while", "settings", changed, "for", configGrace)
			}
			// Before the answer: the caller reads r.cfg in its next Reconfigure.
			r.cfg = cfg
			req.errc <- nil
			r.b.vips.SetLifetime(vipLifetime(cfg.AdvertInterval))
			prio, fault, why := r.effective(cfg.Priority)
			mc := r.m.Config()
			mc.Priority, mc.Interval, mc.Preempt, mc.PreemptDelay = prio, cfg.AdvertInterval, cfg.Preempt, cfg.PreemptDelay
			r.exec(r.m.Reconfigure(time.Now(), mc))
			r.applyHealth(prio, fault, why)
			if vipsChanged && r.m.State() == Master {
				// An advert at once, so the backups see the new list without
				// waiting an interval, then the addresses and their announcements.
				r.exec(Step{Actions: []Action{{Kind: SendAdvert, Priority: r.m.Config().Priority}, {Kind: TakeVIPs}}})
			}
			if r.m.State() == Master {
				// A new interval gives a new lifetime, due now: the one the
				// addresses have may run out before the next renewal.
				if err := r.b.vips.Refresh(time.Now()); err != nil {
					r.log.Error(err, "Renewing the virtual IPs' lifetime")
				}
			}
			r.log.Info("VRRP reconfigured", "priority", prio, "interval", cfg.AdvertInterval, "preempt", cfg.Preempt, "peers", cfg.Peers, "virtualIPs", cfg.VIPs)
		}
	}
}

// linkChanged follows the interface's link: up or down, deleted, or made
// again under its name.
func (r *Router) linkChanged(u netlink.LinkUpdate) {
	a := u.Attrs()
	switch {
	case a.Index == r.b.ifi.Index && u.Header.Type == unix.RTM_DELLINK:
		r.stale = true
		r.setLinkFault(fmt.Sprintf("interface %s was deleted", r.cfg.Interface))
	case a.Index == r.b.ifi.Index && isUp(u.Link) && r.stale:
		// Back up without the address it sends from (IPv6 addresses go with
		// the link unless keep_addr_on_down): rejoin once it has one.
		r.rebind()
	case a.Index == r.b.ifi.Index && isUp(u.Link) && len(a.HardwareAddr) > 0 && !bytes.Equal(a.HardwareAddr, r.b.ifi.HardwareAddr):
		// A new MAC on a link that stays up (a bond with fail_over_mac=active
		// failing over, `ip link set address`): the binding would announce the
		// old one, and neighbours send the virtual IPs' traffic to a MAC no
		// longer here. A new binding announces the new one, a master at once.
		r.stale = true
		r.rebind()
	case a.Index == r.b.ifi.Index && isUp(u.Link):
		r.setLinkFault("")
	case a.Index == r.b.ifi.Index:
		r.setLinkFault(fmt.Sprintf("interface %s is down", r.cfg.Interface))
	case a.Name == r.cfg.Interface && u.Header.Type == unix.RTM_NEWLINK:
		r.stale = true
		r.rebind()
	}
}

// vipLifetime is how long a master's virtual IPs outlive its last renewal
// (see vip.Manager.SetLifetime): longer than a backup waits for adverts (3
// intervals and a skew under one), so that a master that stopped is
// replaced before its addresses go, and at least 3 s, as the kernel counts
// lifetimes in seconds and expires them up to a second late.
func vipLifetime(interval time.Duration) time.Duration {
	d := 4*interval + time.Second
	return max(3*time.Second, (d + time.Second - 1).Truncate(time.Second))
}

// addrChanged puts back a virtual IP that something else took off a
// master's interface (a network manager that flushes the addresses it did
// not add, say), and opens a new binding when the router's own address
// leaves the interface, when an address arrives while the binding is stale,
// or when one arrives that the router should send from rather than its own
// (see outranked).
func (r *Router) addrChanged(u netlink.AddrUpdate) {
	ip, _ := netip.AddrFromSlice(u.LinkAddress.IP)
	ip = ip.Unmap()
	removed := !u.NewAddr && u.LinkIndex == r.b.ifi.Index
	// The router takes its virtual IPs off only as it stops being master, or
	// once they left the list: a master that sees one go did not remove it.
	if removed && r.m.State() == Master && slices.Contains(r.cfg.VIPs, ip) {
		r.logLimited("vip-removed", 0, "A virtual IP was removed from the interface by someone else; adding it back", "virtualIP", ip, "interface", r.cfg.Interface)
		r.exec(Step{Actions: []Action{{Kind: TakeVIPs}}})
	}
	if removed && ip == r.b.self {
		r.stale = true
	}
	if r.stale || r.outranked(u) {
		r.rebind()
	}
}

// outranked tells whether u adds to the router's interface an address that
// vip.PrimaryAddress prefers to the one the router sends from. Having lost
// its own address, the router may send from a host route with a lifetime,
// another pair's virtual IP maybe: once the node has an address of its own
// again, the router moves to it, rather than keep the other pair's until
// that leaves the interface.
func (r *Router) outranked(u netlink.AddrUpdate) bool {
	ip, _ := netip.AddrFromSlice(u.LinkAddress.IP)
	ip = ip.Unmap()
	if !u.NewAddr || u.LinkIndex != r.b.ifi.Index || ip == r.b.self || ip.Is4() != r.b.self.Is4() {
		return false
	}
	// Virtual IPs, renewed every few seconds, rank least: no address list for them.
	rank := vip.Rank(u.LinkAddress.Mask, u.ValidLft)
	if rank == vip.RankHostRoute {
		return false
	}
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := r.nl.AddrList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: r.b.ifi.Index}}, family)
	if err != nil {
		// PrimaryAddress, which rebind asks, decides then.
		r.logLimited("rank-self", 0, "Cannot list the interface's addresses", "interface", r.cfg.Interface, "error", err.Error())
		return true
	}
	for _, a := range addrs {
		if own, ok := netip.AddrFromSlice(a.IP); ok && own.Unmap() == r.b.self {
			return vip.Rank(a.Mask, a.ValidLft) < rank
		}
	}
	return false // gone: its removal makes the binding stale
}

// setLinkFault moves the machine into Fault when the interface cannot serve
// (why is not ""), and out of it, health permitting, when it can again.
func (r *Router) setLinkFault(why string) {
	was := r.linkFault
	r.linkFault = why
	switch {
	case why != "" && was == "":
		r.exec(r.m.SetFault(time.Now(), true, why))
	case why == "" && was != "":
		prio, fault, hwhy := r.effective(r.cfg.Priority)
		r.applyHealth(prio, fault, hwhy)
	}
}

// readLinkFault reads whether the binding's interface is up; a deleted one
// reads as down.
func (r *Router) readLinkFault() string {
	l, err := r.nl.LinkByIndex(r.b.ifi.Index)
	if err != nil || !isUp(l) {
		return fmt.Sprintf("interface %s is down", r.cfg.Interface)
	}
	return ""
}

// lostWatch drops a watch whose subscription ended; retry opens a new one.
func (r *Router) lostWatch() {
	r.metrics.watchesLost.Inc()
	r.log.Info("The watch of the interface ended; watching again", "interface", r.cfg.Interface)
	r.w.close()
	r.w = nil
	r.retryAt = time.Now()
}

// retry opens the watch or the binding that is missing, and reads again
// what no watch may have reported.
func (r *Router) retry() {
	r.retryAt = time.Time{}
	if r.w == nil {
		var w *watch
		err := nsexec.Do(r.ns, func() (err error) {
			w, err = openWatch(r.log)
			return err
		})
		if err != nil {
			r.log.Error(err, "Watching the interface again", "retryIn", rebindRetry)
			r.retryAt = time.Now().Add(rebindRetry)
			return
		}
		r.w = w
		// Changes made while nobody watched are read now.
		r.stale = true
	}
	if r.stale || r.preferred {
		r.rebind() // which sets the fault, either way, when stale
		return
	}
	r.setLinkFault(r.readLinkFault())
}

// rebind opens a new binding when the interface's index, its MAC or the
// router's address on it changed, and closes the old one. While that is not
// possible (the interface is gone, or has no address) a router whose binding
// is stale is in Fault, as keepalived is: a master that cannot send its
// adverts must not hold the virtual IPs. It retries every rebindRetry,
// besides on every netlink event that may mean it can.
func (r *Router) rebind() {
	var nb *binding
	err := nsexec.Do(r.ns, func() error {
		ifi, self, err := locate(r.cfg)
		if err != nil || (ifi.Index == r.b.ifi.Index && self == r.b.self && bytes.Equal(ifi.HardwareAddr, r.b.ifi.HardwareAddr)) {
			return err
		}
		nb, err = bind(r.cfg, ifi, self, r.log)
		return err
	})
	if err != nil && !r.stale {
		// The binding still serves, from an address less preferred (see
		// outranked): keep it rather than leave the group, and try again.
		r.preferred, r.retryAt = true, time.Now().Add(rebindRetry)
		r.logLimited("rebind-preferred", 0, "Cannot open the VRRP sockets on the interface's preferred address; keeping the current one, retrying",
			"interface", r.cfg.Interface, "address", r.b.self, "error", err.Error())
		return
	}
	if err != nil {
		r.retryAt = time.Now().Add(rebindRetry)
		r.logLimited("rebind", 0, "Cannot open the VRRP sockets on the interface yet; retrying", "interface", r.cfg.Interface, "error", err.Error())
		r.setLinkFault(cmp.Or(r.readLinkFault(), err.Error()))
		return
	}
	r.stale, r.preferred, r.retryAt = false, false, time.Time{}
	if nb == nil {
		r.setLinkFault(r.readLinkFault())
		return
	}
	old := r.b
	r.b = nb
	old.close()
	r.mu.Lock()
	r.self = nb.self
	r.mu.Unlock()
	r.m.SetSelf(nb.self)
	r.log.Info("Opened the VRRP sockets again on the interface", "interface", r.cfg.Interface, "index", nb.ifi.Index, "address", nb.self,
		"mac", nb.ifi.HardwareAddr.String(), "previousIndex", old.ifi.Index, "previousAddress", old.self, "previousMAC", old.ifi.HardwareAddr.String())
	r.setLinkFault(r.readLinkFault())
	if r.m.State() == Master {
		// The virtual IPs went with a deleted interface, and the neighbours
		// must learn a new MAC.
		r.exec(Step{Actions: []Action{{Kind: TakeVIPs}}})
	}
}

// applyHealth moves the machine in or out of Fault and sets its priority.
func (r *Router) applyHealth(prio uint8, fault bool, why string) {
	now := time.Now()
	switch {
	case r.linkFault != "":
	case fault:
		r.exec(r.m.SetFault(now, true, why))
	case r.m.State() == Fault:
		r.m.cfg.Priority = prio
		r.exec(r.m.SetFault(now, false, "healthy again"))
	default:
		r.exec(r.m.SetPriority(now, prio))
	}
}

func (r *Router) effective(base uint8) (uint8, bool, string) {
	if r.tracker == nil {
		return base, false, ""
	}
	return r.tracker.Effective(base)
}

// leave stops the router. A master hands over without an outage: it sends
// priority 0, so the best backup takes over after its Skew_Time, but keeps
// the virtual IPs (and its proxy keeps serving) until the new master's first
// advert arrives, or Master_Down_Interval passes (at most HandoverWait);
// then it releases them.
func (r *Router) leave(packets <-chan packetOrErr) {
	if r.m.State() == Master {
		r.sendAdvert(0)
		deadline := time.NewTimer(min(r.m.MasterDownInterval(), HandoverWait(r.cfg)))
		defer deadline.Stop()
	wait:
		for {
			select {
			case <-deadline.C:
				break wait
			case p, ok := <-packets:
				if !ok {
					break wait
				}
				if p.err != nil {
					continue
				}
				if pkt := r.check(p.rcv); pkt != nil && pkt.Priority > 0 {
					r.log.Info("Handing over to the new master", "master", p.rcv.src)
					break wait
				}
			}
		}
	}
	step := r.m.Stop(time.Now(), "stopping")
	// The priority-0 advert went out already.
	kept := step.Actions[:0]
	for _, a := range step.Actions {
		if a.Kind != SendAdvert {
			kept = append(kept, a)
		}
	}
	step.Actions = kept
	r.exec(step)
}

// handle feeds the machine with the packets that pass the checks.
func (r *Router) handle(p received) {
	pkt := r.check(p)
	if pkt == nil {
		return
	}
	r.exec(r.m.Receive(time.Now(), pkt, p.src))
	if r.cfg.Version != 3 {
		return
	}
	// A VRRPv3 backup times the master by its advertised interval, not
	// ours: say so when they differ, since a misconfigured peer changes
	// how fast this router takes over.
	switch iv := r.m.MasterInterval(); {
	case iv == r.cfg.AdvertInterval:
		r.loggedInterval = 0
	case iv != r.loggedInterval:
		r.loggedInterval = iv
		r.logLimited("learnt-interval", 1, "Following the master's advert interval, which differs from ours",
			"master", p.src, "masterInterval", iv, "interval", r.cfg.AdvertInterval)
	}
}

// authMatches tells whether a VRRPv2 advert carries password, or no
// authentication when password is "".
func authMatches(pkt *Packet, password string) bool {
	if password == "" {
		return pkt.AuthType == AuthNone
	}
	want := Password(password)
	return pkt.AuthType == AuthSimple && subtle.ConstantTimeCompare(pkt.Auth[:], want[:]) == 1
}

// check applies the receive-side checks of RFC 5798 7.1 and RFC 3768 7.1;
// it returns the packet when it belongs to this group and passes them.
func (r *Router) check(p received) *Packet {
	if p.src == r.b.self {
		return nil
	}
	pkt, err := Decode(p.payload, p.src, p.dst)
	if err != nil {
		reason := "malformed"
		switch {
		case errors.Is(err, ErrBadChecksum):
			reason = "checksum"
		case errors.Is(err, ErrBadVersion):
			reason = "version"
		case errors.Is(err, ErrBadAuthType):
			reason = "auth"
			// The header is whole and its checksum right: an advert of this
			// group under another authentication, such as keepalived's AH.
			if p.payload[1] == r.cfg.VRID {
				r.mismatch(reason, p.src, err, authName(r.cfg.AuthPassword != ""), fmt.Sprintf("type %d", p.payload[4]))
				return nil
			}
		}
		r.drop(reason, p.src, err)
		return nil
	}
	if pkt.VRID != r.cfg.VRID {
		r.drop("vrid", p.src, fmt.Errorf("VRID %d, this group is %d", pkt.VRID, r.cfg.VRID))
		return nil
	}
	// TTL 255 proves a multicast advert came from the link; checked once the
	// VRID is known, so that a low TTL of this group's adverts is logged as
	// a mismatch. Unicast adverts from a peer are not held to it: keepalived
	// sends its IPv6 ones with the kernel's default hop limit (64) and checks
	// none itself, and dropping them all would make both routers masters.
	if p.ttl != 255 && !r.unicast(p) {
		r.mismatch("ttl", p.src, fmt.Errorf("TTL %d, want 255: it crossed a router", p.ttl), 255, p.ttl)
		return nil
	}
	if pkt.Version != r.cfg.Version {
		r.mismatch("version", p.src, fmt.Errorf("VRRPv%d advert, this group runs VRRPv%d", pkt.Version, r.cfg.Version), r.cfg.Version, pkt.Version)
		return nil
	}
	now := time.Now()
	if pkt.Version == 2 {
		if !authMatches(pkt, r.cfg.AuthPassword) && !(now.Before(r.prev.passwordUntil) && authMatches(pkt, r.prev.password)) {
			ours, theirs := authName(r.cfg.AuthPassword != ""), authName(pkt.AuthType == AuthSimple)
			if ours == theirs {
				theirs = "another password"
			}
			r.mismatch("auth", p.src, errors.New("authentication does not match"), ours, theirs)
			return nil
		}
		if pkt.Interval != r.cfg.AdvertInterval && !(now.Before(r.prev.intervalUntil) && pkt.Interval == r.prev.interval) {
			r.mismatch("interval", p.src, fmt.Errorf("advert interval %v, this group uses %v", pkt.Interval, r.cfg.AdvertInterval), r.cfg.AdvertInterval, pkt.Interval)
			return nil
		}
	}
	if pkt.Priority != 255 && !sameAddrs(pkt.Addrs, r.cfg.VIPs) && !(now.Before(r.prev.vipsUntil) && sameAddrs(pkt.Addrs, r.prev.vips)) {
		r.mismatch("addresses", p.src, fmt.Errorf("virtual IPs %v, this group has %v", pkt.Addrs, r.cfg.VIPs), r.cfg.VIPs, pkt.Addrs)
		return nil
	}
	r.metrics.received.Inc()
	return pkt
}

// unicast tells whether p came from one of the router's peers to one of our
// addresses, rather than to the multicast group. Only a listed peer is spared
// the TTL check, as keepalived's check_unicast_src does: without it, any host
// that can route a packet to the node could take the virtual IPs with an
// advert of priority 255.
func (r *Router) unicast(p received) bool {
	return p.dst.IsValid() && !p.dst.IsMulticast() && slices.Contains(r.cfg.Peers, p.src)
}

// authName names VRRPv2 authentication for logs, never the password.
func authName(password bool) string {
	if password {
		return "password"
	}
	return "none"
}

func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	set := map[netip.Addr]bool{}
	for _, x := range b {
		set[x] = true
	}
	for _, x := range a {
		if !set[x] {
			return false
		}
	}
	return true
}

// drop counts a dropped packet and logs it at debug verbosity, at most once
// per reason in dropLogEvery.
func (r *Router) drop(reason string, src netip.Addr, err error) {
	r.metrics.dropped.WithLabelValues(reason).Inc()
	level := 1
	if reason == "vrid" {
		// Other groups share the multicast address: routine, so logged
		// only at a higher verbosity.
		level = 2
	}
	r.logLimited("drop-"+reason, level, "Dropped VRRP packet", "reason", reason, "from", src, "error", err.Error())
}

// mismatch counts a dropped advert of this group whose sender is configured
// otherwise (ours and theirs are the differing setting), and logs it at
// info level, at most once per reason in mismatchLogEvery: the two routers
// ignore each other, so both may hold the virtual IPs.
func (r *Router) mismatch(reason string, src netip.Addr, err error, ours, theirs any) {
	r.metrics.dropped.WithLabelValues(reason).Inc()
	r.logEvery("mismatch-"+reason, mismatchLogEvery, 0, "Dropped a VRRP advert of this group: the sender's configuration differs, so both routers may hold the virtual IPs",
		"vrid", r.cfg.VRID, "reason", reason, "from", src, "ours", ours, "theirs", theirs, "error", err.Error())
}

// logLimited logs at debug verbosity level at most once per key in
// dropLogEvery.
func (r *Router) logLimited(key string, level int, msg string, kv ...any) {
	r.logEvery(key, dropLogEvery, level, msg, kv...)
}

// logEvery logs at verbosity level at most once per key in every.
func (r *Router) logEvery(key string, every time.Duration, level int, msg string, kv ...any) {
	if now := time.Now(); now.Sub(r.lastLog[key]) >= every {
		r.lastLog[key] = now
		r.log.V(level).Info(msg, kv...)
	}
}

// exec carries out the machine's actions and publishes its transition and
// priority.
func (r *Router) exec(step Step) {
	for _, a := range step.Actions {
		switch a.Kind {
		case SendAdvert:
			r.sendAdvert(a.Priority)
		case TakeVIPs:
			if err := r.b.vips.Add(); err != nil {
				r.log.Error(err, "Adding the virtual IPs")
			}
			r.announceBurst()
			r.nextAnnounce = time.Time{}
			if r.cfg.Announce.Delay > 0 {
				r.nextAnnounce = time.Now().Add(r.cfg.Announce.Delay)
			} else if r.cfg.Announce.Refresh > 0 {
				r.nextAnnounce = time.Now().Add(r.cfg.Announce.Refresh)
			}
		case Reannounce:
			r.announceBurst()
		case ReleaseVIPs:
			r.nextAnnounce = time.Time{}
			if err := r.b.vips.Remove(); err != nil {
				r.log.Error(err, "Removing the virtual IPs")
			}
		}
	}
	// The priority is published from the first step and on every change,
	// whatever made it; an advert that changes nothing takes no lock.
	prio := r.m.Config().Priority
	t := step.Transition
	if prio != r.publishedPrio {
		r.publishedPrio = prio
		r.metrics.priority.Set(float64(prio))
		if t == nil {
			r.mu.Lock()
			r.status.EffectivePriority = prio
			r.mu.Unlock()
		}
	}
	if t == nil {
		return
	}
	r.mu.Lock()
	r.status = Status{State: t.To, Since: t.At, Reason: t.Reason, EffectivePriority: prio, MasterAddr: t.MasterAddr}
	r.mu.Unlock()
	r.metrics.setState(t.To)
	r.metrics.transitions.WithLabelValues(t.To.String()).Inc()
	r.log.Info("VRRP state changed", "from", t.From.String(), "to", t.To.String(), "reason", t.Reason, "priority", t.Priority, "vrid", r.cfg.VRID)
	if r.hook != nil {
		select {
		case r.hooks <- *t:
		default:
			r.log.Info("Transition hook is behind; dropping a notification", "to", t.To.String())
		}
	}
}

func (r *Router) runHooks(done chan<- struct{}) {
	defer close(done)
	for t := range r.hooks {
		r.hook(t)
	}
}

// announceBurst sends Announce.Repeat announcements of every virtual IP.
func (r *Router) announceBurst() {
	for range max(r.cfg.Announce.Repeat, 1) {
		if err := r.b.vips.Announce(); err != nil {
			r.log.Error(err, "Announcing the virtual IPs")
			return
		}
	}
}

func (r *Router) sendAdvert(prio uint8) {
	p := Packet{Version: r.cfg.Version, VRID: r.cfg.VRID, Priority: prio, Interval: r.cfg.AdvertInterval, Addrs: r.cfg.VIPs}
	if r.cfg.Version == 2 && r.cfg.AuthPassword != "" {
		p.AuthType, p.Auth = AuthSimple, Password(r.cfg.AuthPassword)
	}
	dsts := r.cfg.Peers
	if len(dsts) == 0 {
		dsts = []netip.Addr{GroupIPv4}
		if r.b.self.Is6() {
			dsts = []netip.Addr{GroupIPv6}
		}
	}
	for _, dst := range dsts {
		b, err := p.Encode(r.b.self, dst)
		if err == nil {
			err = r.b.tr.send(b, dst)
		}
		if err != nil {
			r.log.Error(err, "Sending a VRRP advert", "to", dst)
			continue
		}
		r.metrics.sent.Inc()
	}
}

func isUp(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}
