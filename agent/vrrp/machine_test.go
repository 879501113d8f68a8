package vrrp

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var (
	t0    = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	self  = netip.MustParseAddr("198.18.0.11")
	lower = netip.MustParseAddr("198.18.0.10")
	upper = netip.MustParseAddr("198.18.0.12")
)

func cfg(prio uint8) MachineConfig {
	return MachineConfig{Version: 3, Priority: prio, Interval: time.Second, Preempt: true, Self: self}
}

func advert(prio uint8, interval time.Duration) *Packet {
	return &Packet{Version: 3, VRID: 51, Priority: prio, Interval: interval, Addrs: []netip.Addr{vip4}}
}

func at(d time.Duration) time.Time { return t0.Add(d) }

// event is one input in a scenario, with what it must produce.
type event struct {
	at          time.Duration
	input       func(m *Machine, now time.Time) Step
	wantState   State
	wantActions []Action
}

func start() func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.Start(n) }
}
func tick() func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.Tick(n) }
}
func recv(p *Packet, from netip.Addr) func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.Receive(n, p, from) }
}
func prio(p uint8) func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.SetPriority(n, p) }
}
func fault(f bool) func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.SetFault(n, f, "test") }
}
func stop() func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.Stop(n, "stopped") }
}
func reconf(c MachineConfig) func(*Machine, time.Time) Step {
	return func(m *Machine, n time.Time) Step { return m.Reconfigure(n, c) }
}

func cfg2(prio uint8, interval time.Duration) MachineConfig {
	return MachineConfig{Version: 2, Priority: prio, Interval: interval, Preempt: true, Self: self}
}

func advert2(prio uint8, interval time.Duration) *Packet {
	p := advert(prio, interval)
	p.Version = 2
	return p
}

var (
	send100  = Action{Kind: SendAdvert, Priority: 100}
	send150  = Action{Kind: SendAdvert, Priority: 150}
	send255  = Action{Kind: SendAdvert, Priority: 255}
	announce = Action{Kind: Reannounce}
	sendZero = Action{Kind: SendAdvert, Priority: 0}
	take     = Action{Kind: TakeVIPs}
	release  = Action{Kind: ReleaseVIPs}
)

func TestMachine(t *testing.T) {
	// Master_Down_Interval at priority 100 and 1s: 3s + (156/256)s.
	down100 := 3*time.Second + 156*time.Second/256
	// At 3s in VRRPv2, whose Skew_Time stays in seconds: 9s + (156/256)s.
	down100v2at3s := 9*time.Second + 156*time.Second/256
	// At 100ms in VRRPv3: 300ms + (156/256) x 100ms.
	down100at100ms := 300*time.Millisecond + 156*100*time.Millisecond/256
	tests := []struct {
		name   string
		config MachineConfig
		// reason is the machine's reason after the last event.
		reason string
		events []event
	}{
		{"backup takes over when the master goes silent", cfg(100), "no advertisement from a master for 3.609s", []event{
			{0, start(), Backup, nil},
			{down100 - time.Millisecond, tick(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{down100 + 999*time.Millisecond, tick(), Master, nil},
			{down100 + time.Second, tick(), Master, []Action{send100}},
		}},
		{"adverts of a higher master keep the backup waiting", cfg(100), "no advertisement from master 198.18.0.12 for 3.609s", []event{
			{0, start(), Backup, nil},
			{3 * time.Second, recv(advert(150, time.Second), upper), Backup, nil},
			{3*time.Second + down100 - time.Millisecond, tick(), Backup, nil},
			{3*time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		{"address owner is master at once", cfg(255), "address owner (priority 255)", []event{
			{0, start(), Master, []Action{{Kind: SendAdvert, Priority: 255}, take}},
		}},
		{"master priority 0 makes the backup take over after Skew_Time", cfg(100), ReasonMasterLeft, []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(150, time.Second), upper), Backup, nil},
			{2 * time.Second, recv(advert(0, time.Second), upper), Backup, nil},
			{2*time.Second + 609*time.Millisecond, tick(), Backup, nil},
			{2*time.Second + 610*time.Millisecond, tick(), Master, []Action{send100, take}},
		}},
		{"preempt: a lower master's adverts are ignored", cfg(100), "preempting master 198.18.0.12: its priority 50 is below our 100", []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
		}},
		{"no preempt: a lower master is followed", MachineConfig{Version: 3, Priority: 100, Interval: time.Second, Self: self}, "started", []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{down100, tick(), Backup, nil},
		}},
		{"preempt delay: a lower master is followed until the delay ends", MachineConfig{Version: 3, Priority: 100, Interval: time.Second, Preempt: true, PreemptDelay: 10 * time.Second, Self: self}, "preempting master 198.18.0.12: its priority 50 is below our 100", []event{
			{0, start(), Backup, nil},
			{3 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{6 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{9 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{12 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{9*time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		{"master steps down for a higher priority", cfg(100), "master 198.18.0.12 has priority 150, above our 100", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(150, time.Second), upper), Backup, []Action{sendZero, release}},
		}},
		{"master keeps the VIPs against a lower priority and re-announces them", cfg(100), "no advertisement from a master for 3.609s", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(90, time.Second), upper), Master, []Action{send100, {Kind: Reannounce}}},
		}},
		{"equal priority: the higher address wins", cfg(100), "master 198.18.0.12 has our priority 100 and a higher address", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(100, time.Second), lower), Master, []Action{send100, {Kind: Reannounce}}},
			{5 * time.Second, recv(advert(100, time.Second), upper), Backup, []Action{sendZero, release}},
		}},
		{"master answers a priority 0 at once", cfg(100), "no advertisement from a master for 3.609s", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{down100 + 100*time.Millisecond, recv(advert(0, time.Second), upper), Master, []Action{send100, {Kind: Reannounce}}},
		}},
		{"a tracked priority change is advertised at once", cfg(100), "no advertisement from a master for 3.609s", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, prio(80), Master, []Action{{Kind: SendAdvert, Priority: 80}}},
		}},
		{"fault releases the VIPs with priority 0 and recovers as backup", cfg(100), "recovered: test", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, fault(true), Fault, []Action{sendZero, release}},
			{20 * time.Second, tick(), Fault, nil},
			{21 * time.Second, recv(advert(50, time.Second), upper), Fault, nil},
			{22 * time.Second, fault(false), Backup, nil},
		}},
		{"stop sends priority 0 and releases", cfg(100), "stopped", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, stop(), Init, []Action{sendZero, release}},
		}},
		{"stop as backup sends nothing", cfg(100), "stopped", []event{
			{0, start(), Backup, nil},
			{time.Second, stop(), Init, nil},
		}},
		{"init to fault sends nothing", cfg(100), "test", []event{
			{0, fault(true), Fault, nil},
			{10 * time.Second, tick(), Fault, nil},
		}},
		{"backup to fault stops the master-down timer", cfg(100), "test", []event{
			{0, start(), Backup, nil},
			{time.Second, fault(true), Fault, nil},
			{2 * down100, tick(), Fault, nil},
		}},
		{"fault from init recovers as backup and takes over later", cfg(100), "no advertisement from a master for 3.609s", []event{
			{0, fault(true), Fault, nil},
			{time.Second, fault(false), Backup, nil},
			{time.Second + down100 - time.Millisecond, tick(), Backup, nil},
			{time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		{"the address owner recovers from fault as master", cfg(255), "recovered: test", []event{
			{0, start(), Master, []Action{send255, take}},
			{time.Second, fault(true), Fault, []Action{sendZero, release}},
			{2 * time.Second, fault(false), Master, []Action{send255, take}},
		}},
		{"VRRPv2 backup follows a higher master", cfg2(100, time.Second), "no advertisement from master 198.18.0.12 for 3.609s", []event{
			{0, start(), Backup, nil},
			{3 * time.Second, recv(advert2(150, time.Second), upper), Backup, nil},
			{3*time.Second + down100 - time.Millisecond, tick(), Backup, nil},
			{3*time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		// A reconfiguration moves the master-down deadline by the change of
		// Master_Down_Interval, counted from the start or the last advert.
		{"VRRPv2 reconfigured to a longer interval moves the master-down timer", cfg2(100, time.Second), "no advertisement from a master for 9.609s", []event{
			{0, start(), Backup, nil},
			{2 * time.Second, reconf(cfg2(100, 3*time.Second)), Backup, nil},
			{down100, tick(), Backup, nil},
			{down100v2at3s - time.Millisecond, tick(), Backup, nil},
			{down100v2at3s, tick(), Master, []Action{send100, take}},
		}},
		{"VRRPv3 reconfigured to a shorter interval before any advert", cfg(100), "no advertisement from a master for 361ms", []event{
			{0, start(), Backup, nil},
			{100 * time.Millisecond, reconf(MachineConfig{Version: 3, Priority: 100, Interval: 100 * time.Millisecond, Preempt: true, Self: self}), Backup, nil},
			{down100at100ms - time.Millisecond, tick(), Backup, nil},
			{down100at100ms, tick(), Master, []Action{send100, take}},
		}},
		// A group changing its interval: the agents apply it one at a time.
		{"VRRPv2 backup with a shorter interval waits for the master's old schedule", cfg2(100, 5*time.Second), "started", []event{
			{0, start(), Backup, nil},
			{0, recv(advert2(150, 5*time.Second), upper), Backup, nil},
			{time.Second, reconf(cfg2(100, time.Second)), Backup, nil},
			{4 * time.Second, tick(), Backup, nil},
			// The master's next advert on its old schedule, accepted during the change.
			{5 * time.Second, recv(advert2(150, 5*time.Second), upper), Backup, nil},
			// The master has the change: it advertises at once.
			{6 * time.Second, recv(advert2(150, time.Second), upper), Backup, nil},
			{9 * time.Second, tick(), Backup, nil},
		}},
		{"a master with a new interval advertises at once", cfg2(255, 5*time.Second), "address owner (priority 255)", []event{
			{0, start(), Master, []Action{send255, take}},
			{time.Second, reconf(cfg2(255, time.Second)), Master, []Action{send255}},
			{2*time.Second - time.Millisecond, tick(), Master, nil},
			{2 * time.Second, tick(), Master, []Action{send255}},
		}},
		{"a master with a new interval and priority advertises once, then on the new schedule", cfg2(100, 5*time.Second), "no advertisement from a master for 15.609s", []event{
			{0, start(), Backup, nil},
			{15*time.Second + 609375*time.Microsecond, tick(), Master, []Action{send100, take}},
			{16 * time.Second, reconf(cfg2(150, time.Second)), Master, []Action{send150}},
			{17*time.Second - time.Millisecond, tick(), Master, nil},
			{17 * time.Second, tick(), Master, []Action{send150}},
		}},
		{"preempt delay runs again when a master drops below us", MachineConfig{Version: 3, Priority: 100, Interval: time.Second, Preempt: true, PreemptDelay: 10 * time.Second, Self: self}, "preempting master 198.18.0.12: its priority 50 is below our 100", []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(150, time.Second), upper), Backup, nil},
			{20 * time.Second, recv(advert(150, time.Second), upper), Backup, nil},
			// Long after the start, the master's priority falls (tracking).
			{21 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{24 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{27 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{30 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			// Ignored now: the timer keeps the deadline of the advert at 30s.
			{31 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{30*time.Second + down100 - time.Millisecond, tick(), Backup, nil},
			{30*time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		{"a backup raising its priority preempts a lower master", cfg(100), "preempting master 198.18.0.12: its priority 120 is below our 150", []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(120, time.Second), upper), Backup, nil},
			{2 * time.Second, prio(150), Backup, nil},
			{3 * time.Second, recv(advert(120, time.Second), upper), Backup, nil},
			// The timer keeps the deadline of the last advert it followed.
			{time.Second + down100, tick(), Master, []Action{send150, take}},
		}},
		{"re-announcing against a lower master is limited to once per Master_Down_Interval", cfg(100), "no advertisement from a master for 3.609s", []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(90, time.Second), upper), Master, []Action{send100, announce}},
			{6 * time.Second, recv(advert(90, time.Second), upper), Master, []Action{send100}},
			{5*time.Second + down100 - time.Millisecond, recv(advert(90, time.Second), upper), Master, []Action{send100}},
			{5*time.Second + down100, recv(advert(90, time.Second), upper), Master, []Action{send100, announce}},
			// A leaving master is always answered with announcements.
			{5*time.Second + down100, recv(advert(0, time.Second), upper), Master, []Action{send100, announce}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMachine(tt.config)
			for i, e := range tt.events {
				step := e.input(m, at(e.at))
				if m.State() != e.wantState {
					t.Fatalf("event %d at %v: state %v, want %v (reason %q)", i, e.at, m.State(), e.wantState, m.Reason())
				}
				if diff := cmp.Diff(e.wantActions, step.Actions); diff != "" {
					t.Fatalf("event %d at %v: actions (-want +got):\n%s", i, e.at, diff)
				}
				if step.Transition != nil && (step.Transition.To != e.wantState || step.Transition.Reason == "") {
					t.Fatalf("event %d: transition %+v", i, step.Transition)
				}
			}
			if got := m.Reason(); got != tt.reason {
				t.Errorf("reason %q, want %q", got, tt.reason)
			}
		})
	}
}

func TestBackupLearnsTheMasterInterval(t *testing.T) {
	m := NewMachine(cfg(100))
	m.Start(t0)
	m.Receive(t0, advert(150, 100*time.Millisecond), upper)
	// 3 x 100ms + (156/256) x 100ms.
	want := 300*time.Millisecond + 156*100*time.Millisecond/256
	if got := m.MasterDownInterval(); got != want {
		t.Errorf("Master_Down_Interval = %v, want %v", got, want)
	}
	if got := m.Next(); !got.Equal(t0.Add(want)) {
		t.Errorf("Next = %v, want %v", got.Sub(t0), want)
	}
}

func TestReconfigureRefreshesMasterDownInterval(t *testing.T) {
	reconfAt := t0.Add(time.Second)
	tests := []struct {
		name    string
		config  MachineConfig
		learn   *Packet // an advert the backup follows before the change
		master  bool    // the machine is master when reconfigured
		newIntv time.Duration
		wantMDI time.Duration
		// wantNext is after t0, when the backup last heard a master or
		// started; 0 when Next is the master's advert.
		wantNext time.Duration
	}{
		{
			name: "VRRPv2 backup takes the new interval", config: cfg2(100, time.Second), newIntv: 2 * time.Second,
			wantMDI: 6*time.Second + 156*time.Second/256, wantNext: 6*time.Second + 156*time.Second/256,
		},
		{
			// The master still advertises every second until it has the change.
			name: "VRRPv2 backup keeps the master's interval after adverts", config: cfg2(100, time.Second), learn: advert2(150, time.Second), newIntv: 2 * time.Second,
			wantMDI: 3*time.Second + 156*time.Second/256, wantNext: 3*time.Second + 156*time.Second/256,
		},
		{
			name: "VRRPv3 backup that learnt nothing takes the new interval", config: cfg(100), newIntv: 100 * time.Millisecond,
			wantMDI: 300*time.Millisecond + 156*100*time.Millisecond/256, wantNext: 300*time.Millisecond + 156*100*time.Millisecond/256,
		},
		{
			name: "VRRPv3 backup keeps the master's learnt interval", config: cfg(100), learn: advert(150, 500*time.Millisecond), newIntv: 100 * time.Millisecond,
			wantMDI: 1500*time.Millisecond + 156*500*time.Millisecond/256, wantNext: 1500*time.Millisecond + 156*500*time.Millisecond/256,
		},
		{
			name: "an unchanged configuration does not postpone the takeover", config: cfg(100), learn: advert(150, time.Second), newIntv: time.Second,
			wantMDI: 3*time.Second + 156*time.Second/256, wantNext: 3*time.Second + 156*time.Second/256,
		},
		{
			name: "VRRPv3 master takes the new interval", config: cfg(100), master: true, newIntv: 100 * time.Millisecond,
			wantMDI: 300*time.Millisecond + 156*100*time.Millisecond/256,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMachine(tt.config)
			m.Start(t0)
			if tt.learn != nil {
				m.Receive(t0, tt.learn, upper)
			}
			if tt.master {
				m.Tick(t0.Add(time.Hour))
			}
			c := tt.config
			c.Interval = tt.newIntv
			m.Reconfigure(reconfAt, c)
			if got := m.MasterDownInterval(); got != tt.wantMDI {
				t.Errorf("Master_Down_Interval = %v, want %v", got, tt.wantMDI)
			}
			if tt.wantNext != 0 {
				if got := m.Next(); !got.Equal(t0.Add(tt.wantNext)) {
					t.Errorf("Next = t0 + %v, want + %v", got.Sub(t0), tt.wantNext)
				}
			}
		})
	}
}

func TestVRRPv2SkewIsInSeconds(t *testing.T) {
	m := NewMachine(MachineConfig{Version: 2, Priority: 100, Interval: 2 * time.Second, Preempt: true, Self: self})
	m.Start(t0)
	if got, want := m.MasterDownInterval(), 6*time.Second+156*time.Second/256; got != want {
		t.Errorf("Master_Down_Interval = %v, want %v", got, want)
	}
}

func TestTransitionsCarryReasonAndMaster(t *testing.T) {
	m := NewMachine(cfg(100))
	m.Start(t0)
	m.Receive(t0, advert(150, time.Second), upper)
	step := m.Stop(t0.Add(time.Second), "shutting down")
	want := &Transition{From: Backup, To: Init, Reason: "shutting down", At: t0.Add(time.Second), Priority: 100, MasterAddr: upper}
	if diff := cmp.Diff(want, step.Transition, cmpIP); diff != "" {
		t.Errorf("transition (-want +got):\n%s", diff)
	}
}
