package vrrp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"

	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/mdlayher/arp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/lbpair/lbpair/agent/internal/netlab"
	"github.com/lbpair/lbpair/agent/track"
)

// testInterval keeps namespace tests short: Master_Down_Interval is about
// 0.35 s.
const testInterval = 100 * time.Millisecond

var testVIP = netip.MustParseAddr("198.18.0.100")

// node is one lab host running a router.
type node struct {
	host    *netlab.Host
	router  *Router
	tracker *track.Tracker
	cancel  context.CancelFunc
	done    chan struct{}
}

func baseConfig(prio uint8) Config {
	return Config{Version: 3, VRID: 51, Priority: prio, AdvertInterval: testInterval, Preempt: true, VIPs: []netip.Addr{testVIP}, Announce: Announce{Repeat: 2}}
}

// startRouter creates the router inside the host's namespace and runs it;
// the test's cleanup stops it.
func startRouter(t *testing.T, h *netlab.Host, cfg Config, opts ...Option) *node {
	t.Helper()
	return newNode(t, h, cfg, opts...).run(t)
}

// newNode creates the router inside the host's namespace, without running it.
func newNode(t *testing.T, h *netlab.Host, cfg Config, opts ...Option) *node {
	t.Helper()
	n := &node{host: h, tracker: track.New(track.Check{Name: "proxy"}), done: make(chan struct{})}
	log := testr.NewWithOptions(t, testr.Options{LogTimestamp: true}).WithValues("node", h.Name)
	if err := h.Do(func() (err error) {
		n.router, err = NewRouter(cfg, log, append([]Option{WithTracker(n.tracker)}, opts...)...)
		return err
	}); err != nil {
		t.Fatalf("router on %s: %v", h.Name, err)
	}
	return n
}

// run runs the node's router; the test's cleanup stops it.
func (n *node) run(t *testing.T) *node {
	h := n.host
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		defer close(n.done)
		if err := n.router.Run(ctx); err != nil {
			t.Errorf("router on %s: %v", h.Name, err)
		}
	}()
	t.Cleanup(n.stop)
	return n
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

func (n *node) state() State { return n.router.Status().State }

// hasVIP tells whether the VIP is on the host's link: the ground truth.
func hasVIP(t *testing.T, h *netlab.Host, vip netip.Addr) bool {
	t.Helper()
	out, err := h.Exec("ip", "-o", "addr", "show", "dev", netlab.HostLink)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, " "+vip.String()+"/")
}

// waitFor polls until the nodes are in the wanted states and the VIP is on
// exactly the masters.
func waitFor(t *testing.T, what string, vip netip.Addr, want map[*node]State) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for {
		var bad []string
		for n, s := range want {
			if got := n.state(); got != s {
				bad = append(bad, fmt.Sprintf("%s is %v, want %v", n.host.Name, got, s))
			}
			if has := hasVIP(t, n.host, vip); has != (s == Master) {
				bad = append(bad, fmt.Sprintf("%s has the VIP: %v", n.host.Name, has))
			}
		}
		if len(bad) == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, strings.Join(bad, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// watchSteady watches nodes from now until the check it returns is called, which fails
// the test if any of them moved in between: a transition, even one undone at once, or
// the VIP taken off a master's link or put on another's, however briefly, as the
// kernel's address events tell. waitFor cannot tell: it only sees the wanted state
// come back.
func watchSteady(t *testing.T, vip netip.Addr, nodes ...*node) (check func(what string)) {
	t.Helper()
	type watched struct {
		n      *node
		before Status
		moved  chan error
	}
	start, done := time.Now(), make(chan struct{})
	var closeOnce sync.Once
	closeWatch := func() { closeOnce.Do(func() { close(done) }) }
	t.Cleanup(closeWatch) // when the test ends before its check
	lost := make(chan error, len(nodes))
	var ws []watched
	for _, n := range nodes {
		ns, err := netns.GetFromName(n.host.NS)
		if err != nil {
			t.Fatal(err)
		}
		updates := make(chan netlink.AddrUpdate)
		err = netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{Namespace: &ns, ErrorCallback: func(err error) {
			select {
			case <-done:
				return // the check closed the watch
			default:
			}
			select {
			case lost <- fmt.Errorf("watching %s's addresses: %w", n.host.Name, err):
			default: // one is enough
			}
		}})
		ns.Close()
		if err != nil {
			t.Fatal(err)
		}
		w := watched{n, n.router.Status(), make(chan error, 1)}
		go func() {
			var first error
			for u := range updates { // until the check closes the watch
				if ip, _ := netip.AddrFromSlice(u.LinkAddress.IP); first == nil && ip.Unmap() == vip && u.NewAddr != (w.before.State == Master) {
					how := map[bool]string{true: "added to", false: "removed from"}[u.NewAddr]
					first = fmt.Errorf("the VIP was %s %s, a %v, %v after the watch began", how, n.host.Name, w.before.State, time.Since(start))
				}
			}
			w.moved <- first
		}()
		ws = append(ws, w)
		if has := hasVIP(t, n.host, vip); has != (w.before.State == Master) {
			t.Fatalf("%s is %v, and has the VIP: %v", n.host.Name, w.before.State, has)
		}
	}
	return func(what string) {
		t.Helper()
		closeWatch()
		for _, w := range ws {
			if err := <-w.moved; err != nil {
				t.Errorf("%s: %v", what, err)
			}
			if st := w.n.router.Status(); st.State != w.before.State || !st.Since.Equal(w.before.Since) {
				t.Errorf("%s: %s was %v, and is %v since a transition %v after the watch began", what, w.n.host.Name, w.before.State, st.State, st.Since.Sub(start))
			}
		}
		select {
		case err := <-lost:
			t.Errorf("%s: %v", what, err)
		default:
		}
	}
}

func lab(t *testing.T, names ...string) []*netlab.Host {
	l := netlab.NewT(t)
	var hosts []*netlab.Host
	for i, n := range names {
		hosts = append(hosts, netlab.MustAddHost(t, l, n, fmt.Sprintf("198.18.0.%d/24", 11+i)))
	}
	return hosts
}

func TestTwoRoutersFailoverAndBack(t *testing.T) {
	h := lab(t, "lb1", "lb2")
	lb1 := startRouter(t, h[0], baseConfig(150))
	lb2 := startRouter(t, h[1], baseConfig(100))
	waitFor(t, "lb1 elected", testVIP, map[*node]State{lb1: Master, lb2: Backup})

	// Link loss: lb1 faults and drops the VIP, lb2 takes over; when the
	// link returns lb1 preempts.
	if err := h[0].SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "lb2 after lb1's link went down", testVIP, map[*node]State{lb1: Fault, lb2: Master})
	t.Logf("link down: lb2 master within %v", took)
	if err := h[0].SetLinkUp(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lb1 back after its link returned", testVIP, map[*node]State{lb1: Master, lb2: Backup})

	// Tracking: an unhealthy proxy (weight 0) faults the master.
	lb1.tracker.SetHealth("proxy", false, "no healthy backend")
	waitFor(t, "lb2 after lb1's proxy failed", testVIP, map[*node]State{lb1: Fault, lb2: Master})
	if r := lb1.router.Status().Reason; !strings.Contains(r, "no healthy backend") {
		t.Errorf("fault reason %q does not say why", r)
	}
	lb1.tracker.SetHealth("proxy", true, "")
	waitFor(t, "lb1 back after its proxy healed", testVIP, map[*node]State{lb1: Master, lb2: Backup})

	// Graceful stop: priority 0 hands over after Skew_Time, not after
	// Master_Down_Interval.
	lb1.stop()
	waitFor(t, "lb2 after lb1 stopped", testVIP, map[*node]State{lb2: Master})
	if r := lb2.router.Status().Reason; r != ReasonMasterLeft {
		t.Errorf("lb2 took over for %q, want %q", r, ReasonMasterLeft)
	}
	if hasVIP(t, h[0], testVIP) {
		t.Errorf("lb1 kept the VIP after stopping")
	}
}

// TestStopHandsOverWithLongInterval: a backup takes over from a stopping
// master after its Skew_Time, which in VRRPv3 grows with the interval (4.02 s
// here, at 5 s adverts and priority 50). The master keeps the VIP until then,
// so that it is on one node or the other throughout.
func TestStopHandsOverWithLongInterval(t *testing.T) {
	h := lab(t, "lb1", "lb2")
	cfg := func(prio uint8) Config {
		c := baseConfig(prio)
		c.AdvertInterval = 5 * time.Second
		return c
	}
	lb1 := startRouter(t, h[0], cfg(150))
	lb2 := startRouter(t, h[1], cfg(50))
	// lb2 waits Master_Down_Interval (19 s) before it is sure it is backup;
	// lb1, of the higher priority, preempts once it has joined.
	netlab.Eventually(t, "lb1 elected", 30*time.Second, func() error {
		if lb1.state() != Master || lb2.state() != Backup || !hasVIP(t, h[0], testVIP) || hasVIP(t, h[1], testVIP) {
			return fmt.Errorf("lb1 %v, lb2 %v", lb1.state(), lb2.state())
		}
		return nil
	})
	start := time.Now()
	lb1.stop()
	stopped := time.Since(start)
	if lb2.state() != Master || !hasVIP(t, h[1], testVIP) {
		t.Errorf("lb1 released the VIP after %v, before lb2 took over (lb2 %v, VIP on lb2 %v)", stopped.Round(time.Millisecond), lb2.state(), hasVIP(t, h[1], testVIP))
	}
	if hasVIP(t, h[0], testVIP) {
		t.Errorf("lb1 kept the VIP after stopping")
	}
}

func TestPartitionHeal(t *testing.T) {
	h := lab(t, "lb1", "lb2")
	lb1 := startRouter(t, h[0], baseConfig(150))
	lb2 := startRouter(t, h[1], baseConfig(100))
	waitFor(t, "lb1 elected", testVIP, map[*node]State{lb1: Master, lb2: Backup})

	// Partition: both sides become master (split brain), then healing
	// leaves the higher priority.
	if err := h[1].SetConnected(false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "split network", testVIP, map[*node]State{lb1: Master, lb2: Master})
	if err := h[1].SetConnected(true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healed network", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	if r, want := lb2.router.Status().Reason, "master 198.18.0.11 has priority 150, above our 100"; r != want {
		t.Errorf("lb2 stepped down for %q, want %q", r, want)
	}
}

func TestPreemption(t *testing.T) {
	for _, preempt := range []bool{true, false} {
		t.Run(fmt.Sprintf("preempt=%v", preempt), func(t *testing.T) {
			h := lab(t, "lb1", "lb2")
			lb2 := startRouter(t, h[1], baseConfig(100))
			waitFor(t, "lb2 alone", testVIP, map[*node]State{lb2: Master})
			cfg := baseConfig(150)
			cfg.Preempt = preempt
			lb1 := startRouter(t, h[0], cfg)
			if preempt {
				waitFor(t, "lb1 preempts", testVIP, map[*node]State{lb1: Master, lb2: Backup})
				return
			}
			waitFor(t, "lb1 waits", testVIP, map[*node]State{lb1: Backup, lb2: Master})
			// It stays that way for many Master_Down_Intervals.
			time.Sleep(10 * testInterval)
			waitFor(t, "lb1 still waits", testVIP, map[*node]State{lb1: Backup, lb2: Master})
		})
	}
}

func TestEqualPrioritiesAndThreeRouters(t *testing.T) {
	h := lab(t, "lb1", "lb2", "lb3")
	var nodes []*node
	for _, host := range h {
		nodes = append(nodes, startRouter(t, host, baseConfig(100)))
	}
	// Equal priorities: one master, whichever timer fired first (RFC 5798
	// lets a backup follow an equal-priority master).
	waitForOneMaster(t, nodes)
	// Two masters at once (a healed partition): the higher primary address
	// wins. Cut everyone off so each becomes master, then heal.
	for _, host := range h {
		if err := host.SetConnected(false); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all cut off", testVIP, map[*node]State{nodes[0]: Master, nodes[1]: Master, nodes[2]: Master})
	for _, host := range h {
		if err := host.SetConnected(true); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "lb3 wins the tie", testVIP, map[*node]State{nodes[0]: Backup, nodes[1]: Backup, nodes[2]: Master})
	nodes[2].stop()
	waitForOneMaster(t, nodes[:2])
}

// waitForOneMaster waits until exactly one node is master and holds the VIP.
func waitForOneMaster(t *testing.T, nodes []*node) *node {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var masters []*node
		backups := 0
		for _, n := range nodes {
			switch n.state() {
			case Master:
				masters = append(masters, n)
			case Backup:
				backups++
			}
		}
		if len(masters) == 1 && backups == len(nodes)-1 && hasVIP(t, masters[0].host, testVIP) {
			return masters[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no single master among %d routers", len(nodes))
	return nil
}

func TestUnicastIPv6AndStaleVIP(t *testing.T) {
	l := netlab.NewT(t)
	h1 := netlab.MustAddHost(t, l, "lb1", "fd00:198:18::11/64")
	h2 := netlab.MustAddHost(t, l, "lb2", "fd00:198:18::12/64")
	vip6 := netip.MustParseAddr("fd00:198:18::100")
	// A VIP left behind by a crashed run is removed before joining.
	if _, err := h2.Exec("ip", "addr", "add", vip6.String()+"/128", "dev", netlab.HostLink, "nodad"); err != nil {
		t.Fatal(err)
	}
	link1, link2 := linkLocal(t, h1), linkLocal(t, h2)
	cfg := func(prio uint8, peer netip.Addr) Config {
		c := baseConfig(prio)
		c.VIPs, c.Peers, c.Interface = []netip.Addr{vip6}, []netip.Addr{peer}, netlab.HostLink
		return c
	}
	lb1 := startRouter(t, h1, cfg(150, link2))
	lb2 := startRouter(t, h2, cfg(100, link1))
	waitFor(t, "lb1 elected over IPv6 unicast", vip6, map[*node]State{lb1: Master, lb2: Backup})
}

// TestMulticastIPv6 elects over ff02::12 and hands over on a graceful stop:
// the IPv6 multicast group, hop limit and link-local source end to end.
func TestMulticastIPv6(t *testing.T) {
	vip6 := families[1].vip
	h1, _, lb1, lb2 := families[1].start(t)
	lb1.stop()
	waitFor(t, "lb2 after lb1 stopped", vip6, map[*node]State{lb2: Master})
	if r := lb2.router.Status().Reason; r != ReasonMasterLeft {
		t.Errorf("lb2 took over for %q, want %q", r, ReasonMasterLeft)
	}
	if hasVIP(t, h1, vip6) {
		t.Errorf("lb1 kept the VIP after stopping")
	}
}

func linkLocal(t *testing.T, h *netlab.Host) netip.Addr {
	t.Helper()
	var addr netip.Addr
	deadline := time.Now().Add(5 * time.Second)
	for !addr.IsValid() && time.Now().Before(deadline) {
		out, err := h.Exec("ip", "-6", "-o", "addr", "show", "dev", netlab.HostLink, "scope", "link")
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(out) {
			if p, err := netip.ParsePrefix(f); err == nil && p.Addr().IsLinkLocalUnicast() {
				addr = p.Addr()
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !addr.IsValid() {
		t.Fatalf("%s has no link-local address", h.Name)
	}
	return addr
}

// TestReconfigureLive edits a running pair as a change of its spec does: priority and
// preemption apply in place, a change of the group's identity asks for a new router, and
// a refused change leaves the group as it was.
func TestReconfigureLive(t *testing.T) {
	h := lab(t, "lb1", "lb2")
	lb1 := startRouter(t, h[0], baseConfig(150))
	lb2 := startRouter(t, h[1], baseConfig(100))
	waitFor(t, "lb1 elected", testVIP, map[*node]State{lb1: Master, lb2: Backup})

	// Raised above the master without preemption, lb2 waits...
	cfg := baseConfig(200)
	cfg.Preempt = false
	if err := lb2.router.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	netlab.Eventually(t, "lb2's priority", time.Second, func() error {
		if p := lb2.router.Status().EffectivePriority; p != 200 {
			return fmt.Errorf("effective priority %d, want 200", p)
		}
		return nil
	})
	time.Sleep(10 * testInterval)
	waitFor(t, "lb2 at 200 without preemption", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	// ...and with preemption it takes the VIP.
	cfg.Preempt = true
	if err := lb2.router.Reconfigure(cfg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lb2 preempts", testVIP, map[*node]State{lb1: Backup, lb2: Master})

	steady := watchSteady(t, testVIP, lb1, lb2)
	restart := map[string]func(*Config){
		"IPv6 virtual IPs":  func(c *Config) { c.VIPs = []netip.Addr{netip.MustParseAddr("fd00:198:18::100")} },
		"another VRID":      func(c *Config) { c.VRID = 52 },
		"VRRPv2":            func(c *Config) { c.Version, c.AdvertInterval = 2, time.Second },
		"another interface": func(c *Config) { c.Interface = "lo" },
	}
	for what, change := range restart {
		c := cfg
		change(&c)
		if err := lb2.router.Reconfigure(c); !errors.Is(err, ErrRestartRequired) {
			t.Errorf("%s: %v, want ErrRestartRequired", what, err)
		}
	}
	bad := cfg
	bad.AdvertInterval = 5 * time.Millisecond
	if err := lb2.router.Reconfigure(bad); err == nil || errors.Is(err, ErrRestartRequired) || !strings.Contains(err.Error(), "advertisementInterval") {
		t.Errorf("an interval of 5ms: %v, want an error naming advertisementInterval", err)
	}
	time.Sleep(10 * testInterval) // the time a flap would take to show
	steady("unchanged after the refused changes")
	if p := lb2.router.Status().EffectivePriority; p != 200 {
		t.Errorf("effective priority %d after the refused changes, want 200", p)
	}

	lb2.stop()
	if err := lb2.router.Reconfigure(cfg); err == nil {
		t.Error("a stopped router accepted a new configuration")
	}
}

// TestPasswordRotation: the routers of a group learn a new VRRPv2 password one at a
// time. A backup that has it already still accepts the master's adverts with the
// previous one, and does not take over.
// TestSettingsChangeOneRouterAtATime: the routers of a group learn a change one at a
// time. The backup that has it first keeps following the master that has it not.
func TestSettingsChangeOneRouterAtATime(t *testing.T) {
	v2 := func(prio uint8) Config {
		c := baseConfig(prio)
		c.Version, c.AdvertInterval = 2, time.Second
		return c
	}
	for _, tt := range []struct {
		name string
		from func(prio uint8) Config
		// change makes the new configuration from the old.
		change func(Config) Config
		// lag is how long lb1 runs the old configuration: longer than lb2's
		// master-down interval.
		lag  time.Duration
		drop string
	}{
		{"VRRPv2 password", func(prio uint8) Config { c := v2(prio); c.AuthPassword = "old"; return c },
			func(c Config) Config { c.AuthPassword = "new"; return c }, 5 * time.Second, "auth"},
		{"VRRPv2 shorter interval", func(prio uint8) Config { c := v2(prio); c.AdvertInterval = 2 * time.Second; return c },
			func(c Config) Config { c.AdvertInterval = time.Second; return c }, 5 * time.Second, "interval"},
		{"virtual IPs", baseConfig,
			func(c Config) Config {
				c.VIPs = append(slices.Clone(c.VIPs), netip.MustParseAddr("198.18.0.101"))
				return c
			}, time.Second, "addresses"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := lab(t, "lb1", "lb2")
			lb1 := startRouter(t, h[0], tt.from(150))
			lb2 := startRouter(t, h[1], tt.from(100))
			waitFor(t, "lb1 elected", testVIP, map[*node]State{lb1: Master, lb2: Backup})

			// steady fails the test if lb2 leaves Backup within d.
			steady := func(what string, d time.Duration) {
				t.Helper()
				for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
					if s := lb2.state(); s != Backup {
						t.Fatalf("%s: lb2 became %v", what, s)
					}
				}
			}
			dropped := metricValue(t, lb2.router.metrics.dropped.WithLabelValues(tt.drop))
			if err := lb2.router.Reconfigure(tt.change(tt.from(100))); err != nil {
				t.Fatal(err)
			}
			steady("lb2 has the change, lb1 not", tt.lag)
			if err := lb1.router.Reconfigure(tt.change(tt.from(150))); err != nil {
				t.Fatal(err)
			}
			steady("both have the change", 2*time.Second)
			waitFor(t, "after the change", testVIP, map[*node]State{lb1: Master, lb2: Backup})
			if n := metricValue(t, lb2.router.metrics.dropped.WithLabelValues(tt.drop)) - dropped; n != 0 {
				t.Errorf("lb2 dropped %v adverts (%s)", n, tt.drop)
			}
		})
	}
}

// arpCounter counts, on a lab host, the gratuitous ARP requests for vip.
type arpCounter struct {
	mu sync.Mutex
	at []time.Time
}

func countAnnouncements(t *testing.T, h *netlab.Host, vip netip.Addr) *arpCounter {
	t.Helper()
	var c *arp.Client
	if err := h.Do(func() error {
		ifi, err := net.InterfaceByName(netlab.HostLink)
		if err != nil {
			return err
		}
		c, err = arp.Dial(ifi)
		return err
	}); err != nil {
		t.Fatalf("listening for ARP on %s: %v", h.Name, err)
	}
	ac := &arpCounter{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			p, _, err := c.Read()
			if err != nil {
				return // closed
			}
			if p.Operation == arp.OperationRequest && p.SenderIP == vip && p.TargetIP == vip {
				ac.mu.Lock()
				ac.at = append(ac.at, time.Now())
				ac.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return ac
}

func (ac *arpCounter) times() []time.Time {
	ac.mu.Lock()
	defer ac.mu.Unlock()
	return slices.Clone(ac.at)
}

// TestAnnouncementBursts: a new master sends Repeat announcements at once, Repeat more
// after Delay, and Repeat every Refresh while it is master, as a neighbour sees them.
func TestAnnouncementBursts(t *testing.T) {
	// master starts a lone router with the announcements a, and counts what a peer sees.
	master := func(t *testing.T, a Announce) (*node, *arpCounter) {
		h := lab(t, "lb1", "peer")
		seen := countAnnouncements(t, h[1], testVIP)
		cfg := baseConfig(150)
		cfg.Announce = a
		lb1 := startRouter(t, h[0], cfg)
		waitFor(t, "lb1 alone", testVIP, map[*node]State{lb1: Master})
		return lb1, seen
	}
	// seenAtLeast waits until the peer has seen n announcements.
	seenAtLeast := func(t *testing.T, seen *arpCounter, n int) []time.Time {
		t.Helper()
		var at []time.Time
		netlab.Eventually(t, fmt.Sprint(n, " announcements"), 5*time.Second, func() error {
			if at = seen.times(); len(at) < n {
				return fmt.Errorf("the peer saw %d", len(at))
			}
			return nil
		})
		return at
	}
	// Times are when the peer read an announcement, never before it was sent: a lower
	// bound from the takeover holds however late the peer reads.
	t.Run("second burst after the delay", func(t *testing.T) {
		delay := 500 * time.Millisecond
		lb1, seen := master(t, Announce{Repeat: 3, Delay: delay})
		takeover := lb1.router.Status().Since
		at := seenAtLeast(t, seen, 6)
		if d := at[3].Sub(takeover); d < delay {
			t.Errorf("the second burst came %v after the takeover, want the %v delay", d, delay)
		}
		// No third burst: none is due without a refresh, and one would come within
		// another delay.
		time.Sleep(2 * delay)
		if n := len(seen.times()); n != 6 {
			t.Errorf("the peer saw %d announcements, want 3 at takeover and 3 after the delay", n)
		}
	})
	t.Run("a burst every refresh", func(t *testing.T) {
		refresh := 200 * time.Millisecond
		lb1, seen := master(t, Announce{Repeat: 2, Refresh: refresh})
		takeover := lb1.router.Status().Since
		at := seenAtLeast(t, seen, 2+3*2)
		if d := at[6].Sub(takeover); d < 3*refresh {
			t.Errorf("the third refresh came %v after the takeover, want bursts every %v", d, refresh)
		}
		lb1.stop() // a stopped master announces no more, and no burst is left half sent
		// Odd while the peer is still reading the last burst; for good if one was cut short.
		netlab.Eventually(t, "whole bursts of 2", 2*time.Second, func() error {
			if n := len(seen.times()); n%2 != 0 {
				return fmt.Errorf("the peer saw %d announcements, want bursts of 2 at takeover and every %v", n, refresh)
			}
			return nil
		})
	})
}

// A virtual IP that is the node's own address is refused with that reason, before the
// router could take the address off the node, and the node keeps its address.
func TestVirtualIPThatIsTheNodesAddressIsRefused(t *testing.T) {
	h := lab(t, "lb1")[0]
	cfg := baseConfig(100)
	cfg.VIPs = []netip.Addr{netip.MustParseAddr("198.18.0.11")}
	err := h.Do(func() error {
		r, err := NewRouter(cfg, testr.New(t))
		if err == nil {
			r.b.close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "virtual IP 198.18.0.11 is this node's own address (198.18.0.11/24 on ") {
		t.Errorf("NewRouter with the node's address as virtual IP: %v, want a refusal naming it", err)
	}
	if !hasVIP(t, h, netip.MustParseAddr("198.18.0.11")) {
		t.Error("the node lost its address")
	}
}

// Virtual IPs added to and removed from a running group move without a failover: the
// master keeps the addresses it keeps, takes the new ones, drops the old ones, and the
// backup never takes over.
func TestVirtualIPsChangeWithoutFailover(t *testing.T) {
	for _, fam := range []struct {
		name, lb1, lb2, own string
		vip, second         netip.Addr
	}{
		{"IPv4", "198.18.0.11/24", "198.18.0.12/24", "198.18.0.11", testVIP, netip.MustParseAddr("198.18.0.101")},
		{"IPv6", "fd00:198:18::11/64", "fd00:198:18::12/64", "fd00:198:18::11", netip.MustParseAddr("fd00:198:18::100"), netip.MustParseAddr("fd00:198:18::101")},
	} {
		t.Run(fam.name, func(t *testing.T) {
			l := netlab.NewT(t)
			h := []*netlab.Host{netlab.MustAddHost(t, l, "lb1", fam.lb1), netlab.MustAddHost(t, l, "lb2", fam.lb2)}
			cfg := func(prio uint8, vips ...netip.Addr) Config {
				c := baseConfig(prio)
				c.VIPs, c.Interface = vips, netlab.HostLink
				return c
			}
			if fam.vip.Is6() {
				linkLocal(t, h[0])
				linkLocal(t, h[1])
			}
			lb1 := startRouter(t, h[0], cfg(150, fam.vip))
			lb2 := startRouter(t, h[1], cfg(100, fam.vip))
			waitFor(t, "lb1 elected", fam.vip, map[*node]State{lb1: Master, lb2: Backup})
			// Watch the group the whole time.
			steady := watchSteady(t, fam.vip, lb1, lb2)

			for _, c := range []struct {
				what string
				vips []netip.Addr
			}{
				{"a virtual IP added", []netip.Addr{fam.vip, fam.second}},
				{"one removed", []netip.Addr{fam.vip}},
			} {
				if err := lb2.router.Reconfigure(cfg(100, c.vips...)); err != nil {
					t.Fatalf("%s: reconfiguring lb2: %v", c.what, err)
				}
				if err := lb1.router.Reconfigure(cfg(150, c.vips...)); err != nil {
					t.Fatalf("%s: reconfiguring lb1: %v", c.what, err)
				}
				want := slices.Contains(c.vips, fam.second)
				netlab.Eventually(t, c.what+": "+fam.second.String()+" on lb1", 2*time.Second, func() error {
					if hasVIP(t, h[0], fam.second) != want {
						return fmt.Errorf("%s on lb1: %v, want %v", fam.second, !want, want)
					}
					return nil
				})
				time.Sleep(10 * testInterval)
				waitFor(t, c.what, fam.vip, map[*node]State{lb1: Master, lb2: Backup})
				if hasVIP(t, h[1], fam.second) {
					t.Errorf("%s: lb2 holds %s", c.what, fam.second)
				}
			}
			steady("while the list changed")

			// The node's own address is refused, and the group runs on as it was.
			steady = watchSteady(t, fam.vip, lb1, lb2)
			err := lb1.router.Reconfigure(cfg(150, fam.vip, netip.MustParseAddr(fam.own)))
			if err == nil || !strings.Contains(err.Error(), "is this node's own address") {
				t.Errorf("reconfiguring with the node's address: %v, want a refusal", err)
			}
			time.Sleep(10 * testInterval) // the time a flap would take to show
			steady("after the refused list")
		})
	}
}

// family is a lab of two routers, lb1 (priority 150) and lb2 (100), in one address
// family.
type family struct {
	name  string
	addrs []string // lb1's and lb2's, in CIDR notation
	vip   netip.Addr
}

var families = []family{
	{"IPv4", []string{"198.18.0.11/24", "198.18.0.12/24"}, testVIP},
	{"IPv6", []string{"fd00:198:18::11/64", "fd00:198:18::12/64"}, netip.MustParseAddr("fd00:198:18::100")},
}

// start builds the family's lab and waits until lb1 is elected.
func (f family) start(t *testing.T) (h1, h2 *netlab.Host, lb1, lb2 *node) {
	t.Helper()
	l := netlab.NewT(t)
	h1 = netlab.MustAddHost(t, l, "lb1", f.addrs[0])
	h2 = netlab.MustAddHost(t, l, "lb2", f.addrs[1])
	if f.vip.Is6() {
		linkLocal(t, h1)
		linkLocal(t, h2)
	}
	cfg := func(prio uint8) Config {
		c := baseConfig(prio)
		c.VIPs, c.Interface = []netip.Addr{f.vip}, netlab.HostLink
		return c
	}
	lb1 = startRouter(t, h1, cfg(150))
	lb2 = startRouter(t, h2, cfg(100))
	waitFor(t, "lb1 elected", f.vip, map[*node]State{lb1: Master, lb2: Backup})
	return h1, h2, lb1, lb2
}

// TestInterfaceRecreated: a network manager deletes the node's interface and makes it
// again, under the same name but with a new index (and a new IPv6 link-local address).
// The router follows the name: it leaves the group while the interface is gone, and
// takes the VIP back once it returns, sending from its new address.
func TestInterfaceRecreated(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			h1, _, lb1, lb2 := f.start(t)
			if err := h1.DeleteLink(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "lb2 takes over while lb1's interface is gone", f.vip, map[*node]State{lb2: Master})
			if s := lb1.state(); s != Fault {
				t.Fatalf("lb1 is %v without its interface, want Fault", s)
			}
			if err := h1.AddLink(f.addrs[0]); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "lb1 preempts on its new interface", f.vip, map[*node]State{lb1: Master, lb2: Backup})
			want := netip.MustParsePrefix(f.addrs[0]).Addr()
			if f.vip.Is6() {
				want = linkLocal(t, h1)
			}
			if got := lb1.router.Status().Address; got != want {
				t.Errorf("lb1 sends from %v, want its new address %v", got, want)
			}
			if got := lb2.router.Status().MasterAddr; got != want {
				t.Errorf("lb2 sees the master at %v, want %v", got, want)
			}
		})
	}
}

// TestNodeWithoutAnAddress: every address is flushed off the master's interface. With
// nothing to send its adverts from, it goes to Fault and lets the VIP go, as keepalived
// does, rather than hold it beside a backup that no longer hears it. It takes the VIP
// back once it has an address again.
func TestNodeWithoutAnAddress(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			h1, _, lb1, lb2 := f.start(t)
			restore := []string{f.addrs[0]}
			if f.vip.Is6() {
				restore = append(restore, linkLocal(t, h1).String()+"/64")
			}
			if out, err := h1.Exec("ip", "addr", "flush", "dev", netlab.HostLink); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			waitFor(t, "lb2 takes over", f.vip, map[*node]State{lb1: Fault, lb2: Master})
			if r := lb1.router.Status().Reason; !strings.Contains(r, "address") {
				t.Errorf("lb1 is in Fault for %q, want the missing address named", r)
			}
			for _, a := range restore {
				if err := h1.AddAddr(a); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "lb1 preempts with its address back", f.vip, map[*node]State{lb1: Master, lb2: Backup})
		})
	}
}

// TestNodeAddressChanges: the node is given a new address, then loses its old one (a
// new DHCP lease) while it is master. It keeps the VIP, and its adverts come from the
// new address.
func TestNodeAddressChanges(t *testing.T) {
	h := lab(t, "lb1", "lb2", "watcher")
	lb1 := startRouter(t, h[0], baseConfig(150))
	lb2 := startRouter(t, h[1], baseConfig(100))
	waitFor(t, "lb1 elected", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	since := lb1.router.Status().Since
	sources := advertSources(t, h[2])

	// As systemd sets it: the second address of the subnet survives the first.
	if err := h[0].Sysctl("net.ipv4.conf."+netlab.HostLink+".promote_secondaries", "1"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"addr", "add", "198.18.0.21/24", "dev", netlab.HostLink},
		{"addr", "del", "198.18.0.11/24", "dev", netlab.HostLink},
	} {
		if out, err := h[0].Exec("ip", args...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	renumbered := netip.MustParseAddr("198.18.0.21")
	netlab.Eventually(t, "adverts from lb1's new address", 5*time.Second, func() error {
		if src := sources(); src != renumbered {
			return fmt.Errorf("the last advert came from %v", src)
		}
		return nil
	})
	waitFor(t, "lb1 still master", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	if st := lb1.router.Status(); st.Address != renumbered || !st.Since.Equal(since) {
		t.Errorf("lb1 sends from %v, master since %v; want %v, and no transition since %v", st.Address, st.Since, renumbered, since)
	}
}

// TestNodeRenumberedBesideAnotherPairsVIP: the node holds another pair's VIP on the
// interface (a host route with a lifetime) when its address is renumbered, the old one
// removed before the new one is added. In between, the router has only that VIP to send
// from; once the node's new address arrives it sends from that, not from the other
// pair's VIP until the VIP leaves.
func TestNodeRenumberedBesideAnotherPairsVIP(t *testing.T) {
	h := lab(t, "lb1", "lb2", "watcher")
	// As vip.Manager adds a VIP: a host route with a lifetime.
	other := netip.MustParseAddr("198.18.0.200")
	if out, err := h[0].Exec("ip", "addr", "add", other.String()+"/32", "dev", netlab.HostLink, "valid_lft", "60", "preferred_lft", "60"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	lb1 := startRouter(t, h[0], baseConfig(150))
	lb2 := startRouter(t, h[1], baseConfig(100))
	waitFor(t, "lb1 elected", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	sources := advertSources(t, h[2])
	sendsFrom := func(want netip.Addr) func() error {
		return func() error {
			if got := lb1.router.Status().Address; got != want {
				return fmt.Errorf("lb1 sends from %v, want %v", got, want)
			}
			return nil
		}
	}

	if out, err := h[0].Exec("ip", "addr", "del", "198.18.0.11/24", "dev", netlab.HostLink); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	netlab.Eventually(t, "lb1 without an address of its own", 5*time.Second, sendsFrom(other))
	if err := h[0].AddAddr("198.18.0.21/24"); err != nil {
		t.Fatal(err)
	}
	renumbered := netip.MustParseAddr("198.18.0.21")
	netlab.Eventually(t, "lb1 with its new address", 5*time.Second, sendsFrom(renumbered))
	netlab.Eventually(t, "adverts from lb1's new address", 5*time.Second, func() error {
		if src := sources(); src != renumbered {
			return fmt.Errorf("the last advert came from %v", src)
		}
		return nil
	})
	waitFor(t, "lb1 still master", testVIP, map[*node]State{lb1: Master, lb2: Backup})
}

// TestMACChangeIsAnnounced: the master's interface takes another MAC while it stays up,
// as a bond with fail_over_mac=active does when it fails over. The master announces the
// VIP again at once, with the new MAC: neighbours still sending to the old one would
// reach no one.
func TestMACChangeIsAnnounced(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			h1, h2, lb1, lb2 := f.start(t)
			since := lb1.router.Status().Since
			// The router's announcements only, not the kernel's (off by default).
			for _, key := range []string{"net.ipv4.conf." + netlab.HostLink + ".arp_notify", "net.ipv6.conf." + netlab.HostLink + ".ndisc_notify"} {
				if err := h1.Sysctl(key, "0"); err != nil {
					t.Fatal(err)
				}
			}
			nh, err := h1.Handle()
			if err != nil {
				t.Fatal(err)
			}
			defer nh.Close()
			link, err := nh.LinkByName(netlab.HostLink)
			if err != nil {
				t.Fatal(err)
			}
			oldMAC, newMAC := link.Attrs().HardwareAddr, net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
			if bytes.Equal(oldMAC, newMAC) {
				t.Fatalf("lb1 has %s already", newMAC)
			}
			// lb2 maps the VIP to the old MAC, as every neighbour that used it does.
			if out, err := h2.Exec("ip", "neigh", "replace", f.vip.String(), "lladdr", oldMAC.String(), "dev", netlab.HostLink, "nud", "stale"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if err := nh.LinkSetHardwareAddr(link, newMAC); err != nil {
				t.Fatalf("changing lb1's MAC: %v", err)
			}
			netlab.Eventually(t, "lb2 learning lb1's new MAC", 2*time.Second, func() error {
				if got := neighbourMAC(t, h2, f.vip); got != newMAC.String() {
					return fmt.Errorf("lb2 maps %s to %q, want the new %s (the old was %s)", f.vip, got, newMAC, oldMAC)
				}
				return nil
			})
			waitFor(t, "lb1 still master", f.vip, map[*node]State{lb1: Master, lb2: Backup})
			if s := lb1.router.Status().Since; !s.Equal(since) {
				t.Errorf("lb1 has been master since %v, want no transition since %v", s, since)
			}
		})
	}
}

// neighbourMAC is the MAC h's neighbour table holds for addr, or "".
func neighbourMAC(t *testing.T, h *netlab.Host, addr netip.Addr) string {
	t.Helper()
	out, err := h.Exec("ip", "neigh", "show", addr.String(), "dev", netlab.HostLink)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if i := slices.Index(f, "lladdr"); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return ""
}

// advertSources listens for VRRP adverts on host h; the function it returns gives the
// source of the last one heard.
func advertSources(t *testing.T, h *netlab.Host) func() netip.Addr {
	t.Helper()
	ifi := &net.Interface{}
	var tr transport
	if err := h.Do(func() (err error) {
		if ifi, err = net.InterfaceByName(netlab.HostLink); err != nil {
			return err
		}
		tr, err = openTransport(ifi, netip.MustParseAddr("198.18.0.13"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var last netip.Addr
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			rcv, err := tr.receive(buf)
			if err != nil {
				return
			}
			mu.Lock()
			last = rcv.src
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { tr.close(); <-done })
	return func() netip.Addr {
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

// TestWatchLostAndRenewed: the kernel drops link messages that the router's watch cannot
// take in time (ENOBUFS), as on a node where many pods start at once, and the watch
// ends. The router watches again, and still sees its own link go down.
func TestWatchLostAndRenewed(t *testing.T) {
	defer func(size int) { watchBuffer = size }(watchBuffer)
	watchBuffer = 1 // the kernel's least, so that a burst overflows it
	h1, _, lb1, lb2 := families[0].start(t)

	// Deleting a bridge sends a message for each of its ports from one system
	// call, faster than any reader.
	batch := strings.Builder{}
	batch.WriteString("link add churn type bridge\n")
	for i := range 20 {
		fmt.Fprintf(&batch, "link add churn%da type veth peer name churn%db\nlink set churn%da master churn\n", i, i, i)
	}
	batch.WriteString("link delete churn\n")
	if out, err := h1.ExecInput(batch.String(), "ip", "-batch", "-"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	waitFor(t, "lb1 still master after the burst", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	if err := h1.SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lb1's link down after the burst", testVIP, map[*node]State{lb1: Fault, lb2: Master})
	if metricValue(t, lb1.router.metrics.watchesLost) == 0 {
		t.Error("the burst did not overflow the watch: this test checked nothing")
	}
}

// TestVirtualIPRemovedByOthersIsPutBack: something else (a network manager flushing the
// addresses it did not add) takes the VIP off the master's interface. The master puts
// it back and announces it, without a transition.
func TestVirtualIPRemovedByOthersIsPutBack(t *testing.T) {
	h1, h2, lb1, lb2 := families[0].start(t)
	since := lb1.router.Status().Since
	seen := countAnnouncements(t, h2, testVIP)

	if out, err := h1.Exec("ip", "addr", "del", testVIP.String()+"/32", "dev", netlab.HostLink); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	netlab.Eventually(t, "the VIP back on lb1", 2*time.Second, func() error {
		if !hasVIP(t, h1, testVIP) {
			return errors.New("lb1 does not have it")
		}
		return nil
	})
	netlab.Eventually(t, "an announcement of the VIP", 2*time.Second, func() error {
		if len(seen.times()) == 0 {
			return errors.New("lb2 saw none")
		}
		return nil
	})
	waitFor(t, "lb1 still master", testVIP, map[*node]State{lb1: Master, lb2: Backup})
	if s := lb1.router.Status().Since; !s.Equal(since) {
		t.Errorf("lb1 has been master since %v, want no transition since %v", s, since)
	}
}

// TestIPv6LinkFlapWithAddressesFlushed: on a host whose IPv6 addresses go with the link
// (keep_addr_on_down=0, the kernel's default) and come back through duplicate address
// detection, a link flap costs one Fault: the router waits for its link-local address
// before it rejoins, instead of rejoining and faulting again.
func TestIPv6LinkFlapWithAddressesFlushed(t *testing.T) {
	f := families[1]
	h1, _, lb1, lb2 := f.start(t)
	for key, value := range map[string]string{"keep_addr_on_down": "0", "accept_dad": "1"} {
		if err := h1.Sysctl("net.ipv6.conf."+netlab.HostLink+"."+key, value); err != nil {
			t.Fatal(err)
		}
	}
	faults := lb1.router.metrics.transitions.WithLabelValues(Fault.String())
	before := metricValue(t, faults)
	if err := h1.SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lb2 takes over while lb1's link is down", f.vip, map[*node]State{lb2: Master})
	if err := h1.SetLinkUp(true); err != nil {
		t.Fatal(err)
	}
	// The flushed global address is the network manager's to put back.
	if err := h1.AddAddr(f.addrs[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "lb1 back", f.vip, map[*node]State{lb1: Master, lb2: Backup})
	if n := metricValue(t, faults) - before; n != 1 {
		t.Errorf("lb1 entered Fault %v times for one link flap, want 1", n)
	}
}

// TestStartWhileTheLinkLocalAddressIsTentative: a router started just after its link came
// up finds its IPv6 link-local address still in duplicate address detection. It waits for
// the address instead of failing to start.
func TestStartWhileTheLinkLocalAddressIsTentative(t *testing.T) {
	f := families[1]
	l := netlab.NewT(t)
	h := netlab.MustAddHost(t, l, "lb1", f.addrs[0])
	if err := h.Sysctl("net.ipv6.conf."+netlab.HostLink+".accept_dad", "1"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"-6", "addr", "flush", "dev", netlab.HostLink, "scope", "link"},
		{"addr", "add", "fe80::11/64", "dev", netlab.HostLink},
	} {
		if out, err := h.Exec("ip", args...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if out, _ := h.Exec("ip", "-6", "-o", "addr", "show", "dev", netlab.HostLink, "tentative"); !strings.Contains(out, "fe80::11/64") {
		t.Fatal("fe80::11 passed duplicate address detection at once; the check cannot be made")
	}
	cfg := baseConfig(150)
	cfg.VIPs, cfg.Interface = []netip.Addr{f.vip}, netlab.HostLink
	lb1 := startRouter(t, h, cfg)
	if got := lb1.router.Status().Address; got != netip.MustParseAddr("fe80::11") {
		t.Errorf("lb1 sends from %v, want fe80::11", got)
	}
	waitFor(t, "lb1 alone", f.vip, map[*node]State{lb1: Master})
}

// TestChurnLeavesNothingBehind puts a pair of routers through what a node's network
// does to them over months: links going down and up, the interface made again, its
// addresses flushed and restored, the VIPs changed and changed back. Once lb1 is master
// again with its first settings, the process must hold no more goroutines and file
// descriptors than before: every binding the routers opened was closed.
func TestChurnLeavesNothingBehind(t *testing.T) {
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			h1, _, lb1, lb2 := f.start(t)
			elected := map[*node]State{lb1: Master, lb2: Backup}
			goroutines, fds := runtime.NumGoroutine(), netlab.OpenFiles(t)
			restore := []string{f.addrs[0]}
			if f.vip.Is6() {
				restore = append(restore, linkLocal(t, h1).String()+"/64")
			}
			cfg := baseConfig(150)
			cfg.VIPs, cfg.Interface = []netip.Addr{f.vip}, netlab.HostLink
			for round := range 3 {
				if err := h1.SetLinkUp(false); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "lb2 takes over from a link down", f.vip, map[*node]State{lb1: Fault, lb2: Master})
				if err := h1.SetLinkUp(true); err != nil {
					t.Fatal(err)
				}
				if f.vip.Is6() {
					// The kernel flushes IPv6 addresses with the link down.
					for _, a := range restore {
						_ = h1.AddAddr(a)
					}
				}
				waitFor(t, "lb1 back from a link down", f.vip, elected)

				if err := h1.DeleteLink(); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "lb2 takes over from a deleted interface", f.vip, map[*node]State{lb2: Master})
				if err := h1.AddLink(restore...); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "lb1 back on a new interface", f.vip, elected)

				if out, err := h1.Exec("ip", "addr", "flush", "dev", netlab.HostLink); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				waitFor(t, "lb2 takes over from a flushed interface", f.vip, map[*node]State{lb1: Fault, lb2: Master})
				for _, a := range restore {
					if err := h1.AddAddr(a); err != nil {
						t.Fatal(err)
					}
				}
				waitFor(t, "lb1 back with its addresses", f.vip, elected)

				other := cfg
				other.VIPs = []netip.Addr{f.vip, f.vip.Next()}
				if err := lb1.router.Reconfigure(other); err != nil {
					t.Fatal(err)
				}
				if err := lb1.router.Reconfigure(cfg); err != nil {
					t.Fatal(err)
				}
				waitFor(t, fmt.Sprint("lb1 master after round ", round), f.vip, elected)
			}
			var nowGoroutines, nowFDs int
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				if nowGoroutines, nowFDs = runtime.NumGoroutine(), netlab.OpenFiles(t); nowGoroutines <= goroutines && nowFDs <= fds {
					return
				}
			}
			t.Errorf("after the churn: %d goroutines and %d open files; before it: %d and %d", nowGoroutines, nowFDs, goroutines, fds)
		})
	}
}
