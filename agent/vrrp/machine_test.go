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

var (
	send100  = Action{Kind: SendAdvert, Priority: 100}
	sendZero = Action{Kind: SendAdvert, Priority: 0}
	take     = Action{Kind: TakeVIPs}
	release  = Action{Kind: ReleaseVIPs}
)

func TestMachine(t *testing.T) {
	// Master_Down_Interval at priority 100 and 1s: 3s + (156/256)s.
	down100 := 3*time.Second + 156*time.Second/256
	tests := []struct {
		name   string
		config MachineConfig
		events []event
	}{
		{"backup takes over when the master goes silent", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100 - time.Millisecond, tick(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{down100 + 999*time.Millisecond, tick(), Master, nil},
			{down100 + time.Second, tick(), Master, []Action{send100}},
		}},
		{"adverts of a higher master keep the backup waiting", cfg(100), []event{
			{0, start(), Backup, nil},
			{3 * time.Second, recv(advert(150, time.Second), upper), Backup, nil},
			{3*time.Second + down100 - time.Millisecond, tick(), Backup, nil},
			{3*time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		{"address owner is master at once", cfg(255), []event{
			{0, start(), Master, []Action{{Kind: SendAdvert, Priority: 255}, take}},
		}},
		{"master priority 0 makes the backup take over after Skew_Time", cfg(100), []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(150, time.Second), upper), Backup, nil},
			{2 * time.Second, recv(advert(0, time.Second), upper), Backup, nil},
			{2*time.Second + 609*time.Millisecond, tick(), Backup, nil},
			{2*time.Second + 610*time.Millisecond, tick(), Master, []Action{send100, take}},
		}},
		{"preempt: a lower master's adverts are ignored", cfg(100), []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
		}},
		{"no preempt: a lower master is followed", MachineConfig{Version: 3, Priority: 100, Interval: time.Second, Self: self}, []event{
			{0, start(), Backup, nil},
			{time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{down100, tick(), Backup, nil},
		}},
		{"preempt delay: a lower master is followed until the delay ends", MachineConfig{Version: 3, Priority: 100, Interval: time.Second, Preempt: true, PreemptDelay: 10 * time.Second, Self: self}, []event{
			{0, start(), Backup, nil},
			{3 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{6 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{9 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{12 * time.Second, recv(advert(50, time.Second), upper), Backup, nil},
			{9*time.Second + down100, tick(), Master, []Action{send100, take}},
		}},
		{"master steps down for a higher priority", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(150, time.Second), upper), Backup, []Action{sendZero, release}},
		}},
		{"master keeps the VIPs against a lower priority and re-announces them", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(90, time.Second), upper), Master, []Action{send100, {Kind: Reannounce}}},
		}},
		{"equal priority: the higher address wins", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, recv(advert(100, time.Second), lower), Master, []Action{send100, {Kind: Reannounce}}},
			{5 * time.Second, recv(advert(100, time.Second), upper), Backup, []Action{sendZero, release}},
		}},
		{"master answers a priority 0 at once", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{down100 + 100*time.Millisecond, recv(advert(0, time.Second), upper), Master, []Action{send100, {Kind: Reannounce}}},
		}},
		{"a tracked priority change is advertised at once", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, prio(80), Master, []Action{{Kind: SendAdvert, Priority: 80}}},
		}},
		{"fault releases the VIPs with priority 0 and recovers as backup", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, fault(true), Fault, []Action{sendZero, release}},
			{20 * time.Second, tick(), Fault, nil},
			{21 * time.Second, recv(advert(50, time.Second), upper), Fault, nil},
			{22 * time.Second, fault(false), Backup, nil},
		}},
		{"stop sends priority 0 and releases", cfg(100), []event{
			{0, start(), Backup, nil},
			{down100, tick(), Master, []Action{send100, take}},
			{5 * time.Second, stop(), Init, []Action{sendZero, release}},
		}},
		{"stop as backup sends nothing", cfg(100), []event{
			{0, start(), Backup, nil},
			{time.Second, stop(), Init, nil},
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
