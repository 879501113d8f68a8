package vrrp

import (
	"fmt"
	"net/netip"
	"time"
)

// State is a VRRP router's state (RFC 5798 6.4), plus Fault for a router
// that tracking or a down interface keeps out of the election.
type State int

// The states.
const (
	Init State = iota
	Backup
	Master
	Fault
)

func (s State) String() string {
	switch s {
	case Init:
		return "Init"
	case Backup:
		return "Backup"
	case Master:
		return "Master"
	case Fault:
		return "Fault"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// ActionKind is something the machine asks its router to do.
type ActionKind int

// The actions.
const (
	// SendAdvert sends an advertisement with Action.Priority.
	SendAdvert ActionKind = iota
	// TakeVIPs adds the virtual IPs and announces them.
	TakeVIPs
	// ReleaseVIPs removes the virtual IPs.
	ReleaseVIPs
	// Reannounce repeats the announcements of the virtual IPs.
	Reannounce
)

// Action is one thing to do, in order.
type Action struct {
	Kind     ActionKind
	Priority uint8
}

// ReasonMasterLeft is the reason of a backup's takeover after the master
// announced it was leaving (a priority-0 advert).
const ReasonMasterLeft = "the master left (priority 0)"

// Transition is a change of state, with why it happened.
type Transition struct {
	From, To   State
	Reason     string
	At         time.Time
	Priority   uint8
	MasterAddr netip.Addr
}

// Step is what one input to the machine produced.
type Step struct {
	Actions    []Action
	Transition *Transition
}

// MachineConfig is what the state machine needs to know.
type MachineConfig struct {
	Version int
	// Priority is the effective priority, after tracking; 255 is the
	// address owner.
	Priority     uint8
	Interval     time.Duration
	Preempt      bool
	PreemptDelay time.Duration
	// Self is this router's primary address, for the tie-break between
	// equal priorities.
	Self netip.Addr
}

// Machine is the VRRP state machine of RFC 5798 6.4 (and RFC 3768 6.4). It
// does no I/O and reads no clock: inputs carry the time, outputs are
// actions, and Next says when to call Tick.
type Machine struct {
	cfg        MachineConfig
	state      State
	since      time.Time
	reason     string
	masterAddr netip.Addr
	// preemptAt ends the preemption delay: a backup follows a lower master
	// until then. As keepalived's preempt_delay, the delay runs from the
	// start, and again from the first lower advert after a master that was
	// not lower; zero when no delay runs.
	preemptAt time.Time
	// masterInterval is Master_Adver_Interval: the master's, learnt from
	// its adverts (then learnt is set).
	masterInterval time.Duration
	learnt         bool
	masterDown     time.Time
	adver          time.Time
	// masterLeft is set when the master announced it is leaving
	// (priority 0), for the reason of the takeover.
	masterLeft bool
	// lowerAddr and lowerPrio name a lower-priority master whose adverts a
	// preempting backup ignores, for the reason of the takeover.
	lowerAddr netip.Addr
	lowerPrio uint8
	// lastReannounce is when a master last re-announced the VIPs against a
	// lower-priority master.
	lastReannounce time.Time
}

// NewMachine returns a machine in Init.
func NewMachine(cfg MachineConfig) *Machine {
	return &Machine{cfg: cfg, masterInterval: cfg.Interval}
}

// State is the current state.
func (m *Machine) State() State { return m.state }

// Since is when the current state began.
func (m *Machine) Since() time.Time { return m.since }

// Reason says why the machine entered its state.
func (m *Machine) Reason() string { return m.reason }

// MasterAddr is the primary address of the master, as far as this router
// knows: its own when it is master.
func (m *Machine) MasterAddr() netip.Addr { return m.masterAddr }

// Config is the machine's configuration.
func (m *Machine) Config() MachineConfig { return m.cfg }

// MasterInterval is Master_Adver_Interval: the master's advert interval as
// learnt from its VRRPv3 adverts, else the configured one.
func (m *Machine) MasterInterval() time.Duration { return m.masterInterval }

// Next is when Tick must be called next; zero when no timer runs.
func (m *Machine) Next() time.Time {
	switch m.state {
	case Backup:
		return m.masterDown
	case Master:
		return m.adver
	}
	return time.Time{}
}

// skew is Skew_Time: lower priorities wait longer, so the best backup
// takes over first.
func (m *Machine) skew() time.Duration {
	iv := m.masterInterval
	if m.cfg.Version == 2 {
		iv = time.Second
	}
	return time.Duration(256-int(m.cfg.Priority)) * iv / 256
}

// MasterDownInterval is how long a backup waits without adverts.
func (m *Machine) MasterDownInterval() time.Duration {
	return 3*m.masterInterval + m.skew()
}

func (m *Machine) enter(now time.Time, to State, reason string, step *Step) {
	step.Transition = &Transition{From: m.state, To: to, Reason: reason, At: now, Priority: m.cfg.Priority}
	m.state, m.since, m.reason = to, now, reason
	if to == Master {
		m.masterAddr = m.cfg.Self
	}
	step.Transition.MasterAddr = m.masterAddr
}

func (m *Machine) becomeMaster(now time.Time, reason string, step *Step) {
	step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: m.cfg.Priority}, Action{Kind: TakeVIPs})
	m.adver = now.Add(m.cfg.Interval)
	m.lastReannounce = time.Time{}
	m.enter(now, Master, reason, step)
}

func (m *Machine) becomeBackup(now time.Time, reason string, step *Step) {
	if m.state == Master {
		step.Actions = append(step.Actions, Action{Kind: ReleaseVIPs})
	}
	m.masterDown = now.Add(m.MasterDownInterval())
	m.lowerAddr, m.lowerPrio = netip.Addr{}, 0
	m.enter(now, Backup, reason, step)
}

// Start leaves Init: the address owner becomes master at once, any other
// router a backup waiting for the master's adverts.
func (m *Machine) Start(now time.Time) Step {
	var step Step
	if m.state != Init {
		return step
	}
	m.preemptAt = now.Add(m.cfg.PreemptDelay)
	m.masterInterval, m.learnt = m.cfg.Interval, false
	if m.cfg.Priority == 255 {
		m.becomeMaster(now, "address owner (priority 255)", &step)
		return step
	}
	m.masterAddr = netip.Addr{}
	m.becomeBackup(now, "started", &step)
	return step
}

// Tick runs the timers that expired by now.
func (m *Machine) Tick(now time.Time) Step {
	var step Step
	switch m.state {
	case Backup:
		if !m.masterDown.IsZero() && !now.Before(m.masterDown) {
			reason := fmt.Sprintf("no advertisement from a master for %v", m.MasterDownInterval().Round(time.Millisecond))
			switch {
			case m.masterLeft:
				reason = ReasonMasterLeft
			case m.lowerAddr.IsValid():
				reason = fmt.Sprintf("preempting master %s: its priority %d is below our %d", m.lowerAddr, m.lowerPrio, m.cfg.Priority)
			case m.masterAddr.IsValid():
				reason = fmt.Sprintf("no advertisement from master %s for %v", m.masterAddr, m.MasterDownInterval().Round(time.Millisecond))
			}
			m.masterLeft = false
			m.becomeMaster(now, reason, &step)
		}
	case Master:
		if !now.Before(m.adver) {
			step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: m.cfg.Priority})
			m.adver = now.Add(m.cfg.Interval)
		}
	}
	return step
}

// Receive handles an advertisement (already checked by the router) from
// the router whose primary address is from.
func (m *Machine) Receive(now time.Time, p *Packet, from netip.Addr) Step {
	var step Step
	switch m.state {
	case Backup:
		if p.Priority == 0 {
			// The master is leaving: take over after Skew_Time only.
			m.masterDown = now.Add(m.skew())
			m.masterLeft = true
			return step
		}
		if p.Priority >= m.cfg.Priority {
			m.preemptAt = time.Time{}
		} else if m.preemptAt.IsZero() {
			m.preemptAt = now.Add(m.cfg.PreemptDelay)
		}
		if !m.cfg.Preempt || now.Before(m.preemptAt) || p.Priority >= m.cfg.Priority {
			m.learn(p)
			m.masterAddr = from
			m.masterDown = now.Add(m.MasterDownInterval())
			m.masterLeft = false
			m.lowerAddr, m.lowerPrio = netip.Addr{}, 0
			return step
		}
		// A lower-priority master is ignored: its adverts do not reset
		// the timer, so this router preempts it when the timer expires.
		m.lowerAddr, m.lowerPrio = from, p.Priority
	case Master:
		if p.Priority == 0 {
			// Another router left the master role (shut down, or stepped
			// down after a split brain): answer at once so backups do not
			// start an election, and announce the VIPs again, since the
			// clients may still point at the router that left.
			step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: m.cfg.Priority}, Action{Kind: Reannounce})
			m.adver = now.Add(m.cfg.Interval)
			return step
		}
		if p.Priority > m.cfg.Priority || p.Priority == m.cfg.Priority && from.Compare(m.cfg.Self) > 0 {
			m.learn(p)
			m.masterAddr = from
			reason := fmt.Sprintf("master %s has priority %d, above our %d", from, p.Priority, m.cfg.Priority)
			if p.Priority == m.cfg.Priority {
				reason = fmt.Sprintf("master %s has our priority %d and a higher address", from, p.Priority)
			}
			// Two masters means a split brain healed, and clients may
			// point at this one: say it leaves (priority 0), so the other
			// announces the VIPs again even if it never hears our adverts.
			step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: 0})
			m.becomeBackup(now, reason, &step)
			return step
		}
		// Another master with a lower priority: a split brain is healing.
		// Tell it to step down at once, as keepalived does by default (RFC
		// 5798 only discards the advert; the answer costs one packet per
		// advert of the other master). Its announcements may have taken
		// the clients, so win them back, as keepalived's
		// garp_lower_prio_repeat does, but at most once per
		// Master_Down_Interval: a lower master that does not hear us would
		// otherwise trigger a GARP/NA burst with every advert it sends.
		step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: m.cfg.Priority})
		if m.lastReannounce.IsZero() || now.Sub(m.lastReannounce) >= m.MasterDownInterval() {
			step.Actions = append(step.Actions, Action{Kind: Reannounce})
			m.lastReannounce = now
		}
		m.adver = now.Add(m.cfg.Interval)
	}
	return step
}

// learn takes Master_Adver_Interval from an advert. A VRRPv2 advert carries
// the group's interval, which the router checked; only while the group
// changes its interval may it carry the previous one (see configGrace), and
// the master keeps that schedule until it has the new one.
func (m *Machine) learn(p *Packet) {
	m.masterInterval, m.learnt = p.Interval, true
}

// SetPriority changes the effective priority (tracking). A master
// advertises the new priority at once, so a better backup can preempt it.
func (m *Machine) SetPriority(now time.Time, prio uint8) Step {
	var step Step
	if prio == m.cfg.Priority || prio == 0 {
		return step
	}
	m.cfg.Priority = prio
	switch m.state {
	case Master:
		step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: prio})
		m.adver = now.Add(m.cfg.Interval)
	case Backup:
		// Skew_Time depends on the priority; the running timer keeps
		// its deadline until the next advert.
	}
	return step
}

// SetSelf changes the router's own address, when its interface has a new
// one.
func (m *Machine) SetSelf(addr netip.Addr) {
	if m.masterAddr == m.cfg.Self {
		m.masterAddr = addr
	}
	m.cfg.Self = addr
}

// SetFault takes the router out of the election (tracking says it cannot
// serve, or its interface is down) or brings it back.
func (m *Machine) SetFault(now time.Time, fault bool, reason string) Step {
	var step Step
	switch {
	case fault && m.state != Fault:
		if m.state == Master {
			// Priority 0: the backup takes over after Skew_Time instead
			// of Master_Down_Interval.
			step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: 0}, Action{Kind: ReleaseVIPs})
		}
		m.masterDown, m.adver = time.Time{}, time.Time{}
		m.enter(now, Fault, reason, &step)
	case !fault && m.state == Fault:
		m.state = Init
		step = m.Start(now)
		if step.Transition != nil {
			step.Transition.From = Fault
			step.Transition.Reason = "recovered: " + reason
			m.reason = step.Transition.Reason
		}
	}
	return step
}

// Stop leaves the group: a master sends priority 0 so that a backup takes
// over after Skew_Time, and releases the virtual IPs.
func (m *Machine) Stop(now time.Time, reason string) Step {
	var step Step
	if m.state == Master {
		step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: 0}, Action{Kind: ReleaseVIPs})
	}
	if m.state != Init {
		m.masterDown, m.adver = time.Time{}, time.Time{}
		m.enter(now, Init, reason, &step)
	}
	return step
}

// Reconfigure changes interval, preemption and priority in place.
// Master_Adver_Interval follows the new interval unless a backup learnt the
// master's own: the master keeps its schedule until it has the change too,
// and then advertises at once, so that backups learn the new interval before
// their timers, set for the old one, run out. A backup's master-down timer
// keeps counting from the last advert it heard, moved by the change of
// Master_Down_Interval only: a reconfiguration, however frequent, never
// postpones a takeover.
func (m *Machine) Reconfigure(now time.Time, cfg MachineConfig) Step {
	before := m.MasterDownInterval()
	intervalChanged := cfg.Interval != m.cfg.Interval
	step := m.SetPriority(now, cfg.Priority)
	m.cfg.Interval, m.cfg.Preempt, m.cfg.PreemptDelay = cfg.Interval, cfg.Preempt, cfg.PreemptDelay
	if m.state == Master || !m.learnt {
		m.masterInterval, m.learnt = cfg.Interval, false
	}
	switch m.state {
	case Backup:
		m.masterDown = m.masterDown.Add(m.MasterDownInterval() - before)
	case Master:
		if intervalChanged {
			// SetPriority may have advertised already, but on the old schedule.
			if len(step.Actions) == 0 {
				step.Actions = append(step.Actions, Action{Kind: SendAdvert, Priority: m.cfg.Priority})
			}
			m.adver = now.Add(m.cfg.Interval)
		}
	}
	return step
}
