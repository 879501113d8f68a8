package vrrp

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// logLines is a logger that keeps its lines, at verbosity v.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logger(v int) logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, args)
	}, funcr.Options{Verbosity: v})
}

// count tells how many lines contain all of subs.
func (l *logLines) count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.lines {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		n++
	}
	return n
}

// socketFreeRouter is a Router with what check and handle need, and no
// sockets: enough for the receive-side checks.
func socketFreeRouter(cfg Config, log logr.Logger) *Router {
	r := &Router{log: log, cfg: cfg, self: self, b: &binding{self: self}, lastLog: map[string]time.Time{}, metrics: newMetrics(nil, cfg.VRID)}
	r.m = NewMachine(MachineConfig{Version: cfg.Version, Priority: cfg.Priority, Interval: cfg.AdvertInterval, Preempt: cfg.Preempt, Self: self})
	r.m.Start(t0)
	return r
}

func TestCheck(t *testing.T) {
	v3 := Config{Version: 3, VRID: 51, Priority: 100, AdvertInterval: time.Second, Preempt: true, VIPs: []netip.Addr{vip4}}
	v2 := v3
	v2.Version = 2
	v2pass := v2
	v2pass.AuthPassword = "s3cret"
	unicast := v3
	unicast.Peers = []netip.Addr{upper}
	other := netip.MustParseAddr("198.18.0.101")
	pkt := func(version int, mutate func(*Packet)) Packet {
		p := Packet{Version: version, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}}
		if mutate != nil {
			mutate(&p)
		}
		return p
	}
	withPassword := func(c Config, pw string) *Config { c.AuthPassword = pw; return &c }
	withInterval := func(c Config, iv time.Duration) *Config { c.AdvertInterval = iv; return &c }
	withVIPs := func(c Config, vips ...netip.Addr) *Config { c.VIPs = vips; return &c }
	tests := []struct {
		name   string
		config Config
		packet Packet
		// corrupt changes the encoded bytes.
		corrupt func([]byte) []byte
		ttl     int
		src     netip.Addr
		// dst is the packet's destination; GroupIPv4 when unset.
		dst netip.Addr
		// before was the configuration until a change prevFor ago: its
		// settings are accepted until configGrace has passed.
		before  *Config
		prevFor time.Duration
		// drop is the reason counted, or "" when the packet is accepted.
		drop string
	}{
		{name: "VRRPv3 advert accepted", config: v3, packet: pkt(3, nil)},
		{name: "VRRPv3 takes another interval: the backup learns it", config: v3, packet: pkt(3, func(p *Packet) { p.Interval = 100 * time.Millisecond })},
		{name: "our own advert is ignored, not counted", config: v3, packet: pkt(3, nil), src: self, drop: "-"},
		{name: "TTL below 255 crossed a router", config: v3, packet: pkt(3, nil), ttl: 254, drop: "ttl"},
		{name: "unicast advert with keepalived's default hop limit", config: unicast, packet: pkt(3, nil), dst: self, ttl: 64},
		{name: "multicast advert below 255 to a unicast router", config: unicast, packet: pkt(3, nil), ttl: 64, drop: "ttl"},
		{name: "unicast advert below 255 from a host that is no peer", config: unicast, packet: pkt(3, nil), src: other, dst: self, ttl: 64, drop: "ttl"},
		{name: "unicast advert below 255 to a multicast router", config: v3, packet: pkt(3, nil), dst: self, ttl: 64, drop: "ttl"},
		{name: "VRRPv2 advert to a VRRPv3 group", config: v3, packet: pkt(2, nil), drop: "version"},
		{name: "VRRPv3 advert to a VRRPv2 group", config: v2, packet: pkt(3, nil), drop: "version"},
		{name: "unknown version", config: v3, packet: pkt(3, nil), corrupt: func(b []byte) []byte { b[0] = 4<<4 | 1; return b }, drop: "version"},
		{name: "another VRID", config: v3, packet: pkt(3, func(p *Packet) { p.VRID = 52 }), drop: "vrid"},
		{name: "bad checksum", config: v3, packet: pkt(3, nil), corrupt: func(b []byte) []byte { b[6] ^= 0xff; return b }, drop: "checksum"},
		{name: "truncated", config: v3, packet: pkt(3, nil), corrupt: func(b []byte) []byte { return b[:6] }, drop: "malformed"},
		{name: "VRRPv2 without authentication accepted", config: v2, packet: pkt(2, nil)},
		{name: "VRRPv2 PASS accepted", config: v2pass, packet: pkt(2, func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("s3cret") })},
		{name: "VRRPv2 PASS with a wrong password", config: v2pass, packet: pkt(2, func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("wrong") }), drop: "auth"},
		{name: "VRRPv2 without authentication to a PASS group", config: v2pass, packet: pkt(2, nil), drop: "auth"},
		{name: "VRRPv2 PASS to a group without authentication", config: v2, packet: pkt(2, func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("s3cret") }), drop: "auth"},
		{name: "VRRPv2 the previous password just after a change", config: v2pass, before: withPassword(v2pass, "old"), prevFor: time.Second, packet: pkt(2, func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("old") })},
		{name: "VRRPv2 the previous password once its grace has passed", config: v2pass, before: withPassword(v2pass, "old"), prevFor: configGrace + time.Second, packet: pkt(2, func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("old") }), drop: "auth"},
		{name: "VRRPv2 without authentication just after PASS was turned on", config: v2pass, before: &v2, prevFor: time.Second, packet: pkt(2, nil)},
		{name: "VRRPv2 another password just after a change", config: v2pass, before: withPassword(v2pass, "old"), prevFor: time.Second, packet: pkt(2, func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("wrong") }), drop: "auth"},
		{name: "VRRPv2 unknown authentication type", config: v2, packet: pkt(2, func(p *Packet) { p.AuthType = 2 }), drop: "auth"},
		{name: "VRRPv2 interval mismatch", config: v2, packet: pkt(2, func(p *Packet) { p.Interval = 2 * time.Second }), drop: "interval"},
		{name: "VRRPv2 the previous interval just after a change", config: v2, before: withInterval(v2, 2*time.Second), prevFor: time.Second, packet: pkt(2, func(p *Packet) { p.Interval = 2 * time.Second })},
		{name: "VRRPv2 the previous interval once its grace has passed", config: v2, before: withInterval(v2, 2*time.Second), prevFor: configGrace + time.Second, packet: pkt(2, func(p *Packet) { p.Interval = 2 * time.Second }), drop: "interval"},
		{name: "VRRPv2 another interval just after a change", config: v2, before: withInterval(v2, 2*time.Second), prevFor: time.Second, packet: pkt(2, func(p *Packet) { p.Interval = 3 * time.Second }), drop: "interval"},
		{name: "fewer addresses", config: Config{Version: 3, VRID: 51, Priority: 100, AdvertInterval: time.Second, VIPs: []netip.Addr{vip4, other}}, packet: pkt(3, nil), drop: "addresses"},
		{name: "more addresses", config: v3, packet: pkt(3, func(p *Packet) { p.Addrs = []netip.Addr{vip4, other} }), drop: "addresses"},
		{name: "other addresses", config: v3, packet: pkt(3, func(p *Packet) { p.Addrs = []netip.Addr{other} }), drop: "addresses"},
		{name: "the previous addresses just after a change", config: v3, before: withVIPs(v3, vip4, other), prevFor: time.Second, packet: pkt(3, func(p *Packet) { p.Addrs = []netip.Addr{other, vip4} })},
		{name: "the previous addresses once their grace has passed", config: v3, before: withVIPs(v3, vip4, other), prevFor: configGrace + time.Second, packet: pkt(3, func(p *Packet) { p.Addrs = []netip.Addr{other, vip4} }), drop: "addresses"},
		{name: "other addresses just after a change", config: v3, before: withVIPs(v3, vip4, other), prevFor: time.Second, packet: pkt(3, func(p *Packet) { p.Addrs = []netip.Addr{other} }), drop: "addresses"},
		{name: "addresses in another order accepted", config: Config{Version: 3, VRID: 51, Priority: 100, AdvertInterval: time.Second, VIPs: []netip.Addr{vip4, other}}, packet: pkt(3, func(p *Packet) { p.Addrs = []netip.Addr{other, vip4} })},
		{name: "the address owner's addresses are not checked", config: v3, packet: pkt(3, func(p *Packet) { p.Priority, p.Addrs = 255, []netip.Addr{other} })},
	}
	reasons := []string{"ttl", "malformed", "checksum", "version", "vrid", "auth", "interval", "addresses"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := socketFreeRouter(tt.config, logr.Discard())
			if tt.before != nil {
				r.prev.remember(*tt.before, tt.config, time.Now().Add(-tt.prevFor))
			}
			src := upper
			if tt.src.IsValid() {
				src = tt.src
			}
			dst := GroupIPv4
			if tt.dst.IsValid() {
				dst = tt.dst
			}
			b, err := tt.packet.Encode(src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if tt.corrupt != nil {
				b = tt.corrupt(b)
			}
			ttl := 255
			if tt.ttl != 0 {
				ttl = tt.ttl
			}
			got := r.check(received{payload: b, src: src, dst: dst, ttl: ttl})
			accepted := tt.drop == ""
			if (got != nil) != accepted {
				t.Fatalf("accepted %v, want %v", got != nil, accepted)
			}
			if n := metricValue(t, r.metrics.received); n != map[bool]float64{true: 1, false: 0}[accepted] {
				t.Errorf("received counter %v", n)
			}
			for _, reason := range reasons {
				want := 0.0
				if reason == tt.drop {
					want = 1
				}
				if n := metricValue(t, r.metrics.dropped.WithLabelValues(reason)); n != want {
					t.Errorf("dropped{reason=%q} = %v, want %v", reason, n, want)
				}
			}
		})
	}
}

func TestDropLogs(t *testing.T) {
	cfg := Config{Version: 3, VRID: 51, Priority: 100, AdvertInterval: time.Second, Preempt: true, VIPs: []netip.Addr{vip4}}
	otherGroup := Packet{Version: 3, VRID: 52, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}}
	b, err := otherGroup.Encode(upper, GroupIPv4)
	if err != nil {
		t.Fatal(err)
	}
	rcv := received{payload: b, src: upper, dst: GroupIPv4, ttl: 255}
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("verbosity %d", v), func(t *testing.T) {
			var logs logLines
			r := socketFreeRouter(cfg, logs.logger(v))
			for range 3 {
				r.check(rcv)
			}
			// Another group's adverts are routine: logged only at
			// verbosity 2, and once per period however many arrive.
			want := map[int]int{1: 0, 2: 1}[v]
			if n := logs.count("Dropped VRRP packet", `"reason"="vrid"`); n != want {
				t.Errorf("%d VRID drop lines, want %d: %q", n, want, logs.lines)
			}
			if n := metricValue(t, r.metrics.dropped.WithLabelValues("vrid")); n != 3 {
				t.Errorf("dropped{reason=vrid} = %v, want 3", n)
			}
		})
	}
}

// TestMismatchLogs: an advert of our VRID dropped because its sender is
// configured otherwise means both routers may hold the virtual IPs; it is
// logged at the default verbosity, naming the sender and what differs, once
// per reason per mismatchLogEvery.
func TestMismatchLogs(t *testing.T) {
	v2 := Config{Version: 2, VRID: 51, Priority: 100, AdvertInterval: time.Second, Preempt: true, VIPs: []netip.Addr{vip4}, AuthPassword: "s3cret"}
	v3 := Config{Version: 3, VRID: 51, Priority: 100, AdvertInterval: time.Second, Preempt: true, VIPs: []netip.Addr{vip4}}
	withPass := func(p *Packet) { p.AuthType, p.Auth = AuthSimple, Password("s3cret") }
	for _, tc := range []struct {
		reason string
		config Config
		packet Packet
		ttl    int
		// ours and theirs are the logged settings, as the logger renders
		// them.
		ours, theirs string
	}{
		{"auth", v2, Packet{Version: 2, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}, AuthType: AuthSimple, Auth: Password("wrong")}, 255, `"password"`, `"another password"`},
		{"auth", v2, Packet{Version: 2, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}}, 255, `"password"`, `"none"`},
		{"auth", v2, Packet{Version: 2, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}, AuthType: 2}, 255, `"password"`, `"type 2"`},
		{"version", v3, Packet{Version: 2, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}}, 255, `3`, `2`},
		{"interval", v2, Packet{Version: 2, VRID: 51, Priority: 150, Interval: 2 * time.Second, Addrs: []netip.Addr{vip4}}, 255, `"1s"`, `"2s"`},
		{"addresses", v3, Packet{Version: 3, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{upper}}, 255, `["198.18.0.100"]`, `["198.18.0.12"]`},
		{"ttl", v3, Packet{Version: 3, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip4}}, 64, `255`, `64`},
	} {
		t.Run(tc.reason+" "+strings.Trim(tc.theirs, `[]"`), func(t *testing.T) {
			if tc.packet.Version == 2 && tc.reason != "auth" {
				withPass(&tc.packet)
			}
			b, err := tc.packet.Encode(upper, GroupIPv4)
			if err != nil {
				t.Fatal(err)
			}
			rcv := received{payload: b, src: upper, dst: GroupIPv4, ttl: tc.ttl}
			var logs logLines
			r := socketFreeRouter(tc.config, logs.logger(0))
			const msg = "Dropped a VRRP advert of this group"
			line := []string{msg, `"reason"="` + tc.reason + `"`, `"from"="198.18.0.12"`, `"vrid"=51`, `"ours"=` + tc.ours + " ", `"theirs"=` + tc.theirs + " "}
			for range 3 {
				if r.check(rcv) != nil {
					t.Fatal("accepted")
				}
			}
			if n := logs.count(line...); n != 1 {
				t.Fatalf("%d lines at verbosity 0 for 3 adverts, want 1 with %q: %q", n, line, logs.lines)
			}
			// A period later, the next one is logged again.
			for k, at := range r.lastLog {
				r.lastLog[k] = at.Add(-mismatchLogEvery)
			}
			r.check(rcv)
			r.check(rcv)
			if n := logs.count(line...); n != 2 {
				t.Errorf("%d lines a period later, want 2: %q", n, logs.lines)
			}
			for _, l := range logs.lines {
				if strings.Contains(l, "s3cret") || strings.Contains(l, "wrong") {
					t.Errorf("a password is logged: %s", l)
				}
			}
			if n := metricValue(t, r.metrics.dropped.WithLabelValues(tc.reason)); n != 5 {
				t.Errorf("dropped{reason=%q} = %v, want 5", tc.reason, n)
			}
		})
	}
	// Another group's adverts and malformed packets stay at debug verbosity.
	var logs logLines
	r := socketFreeRouter(v3, logs.logger(0))
	other := Packet{Version: 3, VRID: 52, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{upper}}
	b, err := other.Encode(upper, GroupIPv4)
	if err != nil {
		t.Fatal(err)
	}
	r.check(received{payload: b, src: upper, dst: GroupIPv4, ttl: 64})
	r.check(received{payload: b[:6], src: upper, dst: GroupIPv4, ttl: 255})
	if len(logs.lines) != 0 {
		t.Errorf("logged at verbosity 0: %q", logs.lines)
	}
}

func TestLearntIntervalIsLogged(t *testing.T) {
	var logs logLines
	r := socketFreeRouter(Config{Version: 3, VRID: 51, Priority: 100, AdvertInterval: 100 * time.Millisecond, Preempt: true, VIPs: []netip.Addr{vip4}}, logs.logger(1))
	send := func(interval time.Duration) {
		p := Packet{Version: 3, VRID: 51, Priority: 150, Interval: interval, Addrs: []netip.Addr{vip4}}
		b, err := p.Encode(upper, GroupIPv4)
		if err != nil {
			t.Fatal(err)
		}
		r.handle(received{payload: b, src: upper, dst: GroupIPv4, ttl: 255})
	}
	const msg = "Following the master's advert interval"
	send(100 * time.Millisecond)
	if n := logs.count(msg); n != 0 {
		t.Errorf("logged %d lines for the configured interval", n)
	}
	send(time.Second)
	send(time.Second)
	if n := logs.count(msg, `"masterInterval"="1s"`); n != 1 {
		t.Errorf("%d lines for the master's 1s interval, want 1: %q", n, logs.lines)
	}
	if got := r.m.MasterInterval(); got != time.Second {
		t.Errorf("learnt %v, want 1s", got)
	}
}

func TestPriorityGaugeFromTheFirstStep(t *testing.T) {
	r := socketFreeRouter(Config{Version: 3, VRID: 51, Priority: 150, AdvertInterval: time.Second, VIPs: []netip.Addr{vip4}}, logr.Discard())
	r.m = NewMachine(MachineConfig{Version: 3, Priority: 150, Interval: time.Second, Self: self})
	// Healthy tracking never signals a change: the machine's first step
	// must publish the priority.
	r.exec(r.m.Start(t0))
	if got := metricValue(t, r.metrics.priority); got != 150 {
		t.Errorf("lbpair_vrrp_priority = %v, want 150", got)
	}
	if got := r.Status().EffectivePriority; got != 150 {
		t.Errorf("status priority %d, want 150", got)
	}
	r.exec(r.m.SetPriority(t0.Add(time.Second), 120))
	if got := metricValue(t, r.metrics.priority); got != 120 {
		t.Errorf("lbpair_vrrp_priority = %v after a change to 120", got)
	}
}

func TestVIPLifetime(t *testing.T) {
	for _, tc := range []struct{ interval, want time.Duration }{
		{100 * time.Millisecond, 3 * time.Second},     // the kernel's least useful lifetime
		{time.Second, 5 * time.Second},                // a backup waits up to 4s
		{1500 * time.Millisecond, 7 * time.Second},    // 6s and a second, rounded up
		{255 * time.Second, 1021 * time.Second},       // VRRPv2's longest interval
		{40950 * time.Millisecond, 165 * time.Second}, // VRRPv3's: 163.8s and a second
	} {
		if got := vipLifetime(tc.interval); got != tc.want {
			t.Errorf("vipLifetime(%v) = %v, want %v", tc.interval, got, tc.want)
		}
	}
}
