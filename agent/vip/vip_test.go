package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// openIn opens a Manager inside h's namespace (retrying while an IPv6 link-local
// address, which the NDP socket needs, is still coming up); the test's cleanup removes
// the virtual IPs and closes it.
func openIn(t *testing.T, h *netlab.Host, vips ...netip.Addr) *Manager {
	t.Helper()
	var m *Manager
	netlab.Eventually(t, "opening the manager on "+h.Name, 5*time.Second, func() error {
		return h.Do(func() error {
			var err error
			m, err = Open(netlab.HostLink, vips, testr.New(t))
			return err
		})
	})
	t.Cleanup(func() {
		if err := m.Remove(); err != nil {
			t.Errorf("removing the virtual IPs: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("closing the manager: %v", err)
		}
	})
	return m
}

// neighbourMAC is the link-layer address h's neighbour table holds for addr, or "".
func neighbourMAC(t *testing.T, h *netlab.Host, addr netip.Addr) string {
	t.Helper()
	return ipField(t, h, "lladdr", "neigh", "show", addr.String(), "dev", netlab.HostLink)
}

// ipField runs `ip args` on h and returns the word after key in its output,
// or "" when key is not there.
func ipField(t *testing.T, h *netlab.Host, key string, args ...string) string {
	t.Helper()
	out, err := h.Exec("ip", args...)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	if i := slices.Index(f, key); i >= 0 && i+1 < len(f) {
		return f[i+1]
	}
	return ""
}

// TestAnnounceRepointsNeighbours is a failover as a neighbour sees it: it still maps the
// virtual IP to the old holder's MAC, and the new holder's announcement alone must move
// it, as a gratuitous ARP does for IPv4 and an unsolicited neighbour advertisement with
// the override flag for IPv6.
func TestAnnounceRepointsNeighbours(t *testing.T) {
	for _, tc := range []struct {
		name, holder, peer string
		vip                netip.Addr
	}{
		{"IPv4", "198.18.0.11/24", "198.18.0.12/24", netip.MustParseAddr("198.18.0.100")},
		{"IPv6", "fd00:198:18::11/64", "fd00:198:18::12/64", netip.MustParseAddr("fd00:198:18::100")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := netlab.NewT(t)
			holder := netlab.MustAddHost(t, l, "holder", tc.holder)
			peer := netlab.MustAddHost(t, l, "peer", tc.peer)
			const oldMAC = "02:00:00:00:00:99"
			if _, err := peer.Exec("ip", "neigh", "replace", tc.vip.String(), "lladdr", oldMAC, "dev", netlab.HostLink, "nud", "stale"); err != nil {
				t.Fatal(err)
			}
			m := openIn(t, holder, tc.vip)
			if err := m.Add(); err != nil {
				t.Fatal(err)
			}
			// Holding the address tells the peer nothing by itself.
			time.Sleep(200 * time.Millisecond)
			if got := neighbourMAC(t, peer, tc.vip); got != oldMAC {
				t.Fatalf("before the announcement the peer maps %s to %q, want the old holder's %s", tc.vip, got, oldMAC)
			}
			// From the test's goroutine, outside the holder's namespace: the manager's
			// sockets must not depend on where it is called from.
			if err := m.Announce(); err != nil {
				t.Fatal(err)
			}
			want := m.ifi.HardwareAddr.String()
			netlab.Eventually(t, "the peer learning the new holder", 2*time.Second, func() error {
				if got := neighbourMAC(t, peer, tc.vip); got != want {
					return fmt.Errorf("the peer maps %s to %q, want the holder's %s", tc.vip, got, want)
				}
				return nil
			})
		})
	}
}

// TestAddRemovePresent: adding and removing are idempotent, leave the node's own
// address alone and its source address for the subnet's hosts, and an IPv6 virtual IP is
// usable at once even where the interface runs duplicate address detection.
func TestAddRemovePresent(t *testing.T) {
	for _, tc := range []struct {
		name, own string
		vips      []netip.Addr
		// neighbour is a host of the subnet whose longest common prefix is with a
		// virtual IP: IPv6 source selection would prefer that VIP were it not
		// deprecated.
		neighbour netip.Addr
	}{
		{"IPv4", "198.18.0.11/24", []netip.Addr{netip.MustParseAddr("198.18.0.100"), netip.MustParseAddr("198.18.0.101")}, netip.MustParseAddr("198.18.0.102")},
		{"IPv6", "fd00:198:18::11/64", []netip.Addr{netip.MustParseAddr("fd00:198:18::100"), netip.MustParseAddr("fd00:198:18::101")}, netip.MustParseAddr("fd00:198:18::102")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := netlab.NewT(t)
			h := netlab.MustAddHost(t, l, "lb", tc.own)
			if err := h.Sysctl("net.ipv6.conf."+netlab.HostLink+".accept_dad", "1"); err != nil {
				t.Fatal(err)
			}
			m := openIn(t, h, tc.vips...)
			present := func(want []netip.Addr) {
				t.Helper()
				got, err := m.Present()
				if err != nil {
					t.Fatal(err)
				}
				slices.SortFunc(got, netip.Addr.Compare) // the kernel lists IPv6 addresses newest first
				if !slices.Equal(got, want) {
					t.Fatalf("present: %v, want %v", got, want)
				}
			}
			present(nil)
			for range 2 {
				if err := m.Add(); err != nil {
					t.Fatalf("adding: %v", err)
				}
			}
			present(tc.vips)
			out, err := h.Exec("ip", "-o", "addr", "show", "dev", netlab.HostLink)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, " "+tc.own+" ") {
				t.Errorf("the node's own address %s is gone:\n%s", tc.own, out)
			}
			own := netip.MustParsePrefix(tc.own).Addr()
			if src := sourceFor(t, h, tc.neighbour); src != own {
				t.Errorf("connections to %s come from %v, want the node's own %v:\n%s", tc.neighbour, src, own, out)
			}
			for _, line := range strings.Split(out, "\n") {
				for _, v := range tc.vips {
					if strings.Contains(line, " "+v.String()+"/") && strings.Contains(line, "tentative") {
						t.Errorf("%s waits for duplicate address detection:\n%s", v, line)
					}
				}
			}
			for range 2 {
				if err := m.Remove(); err != nil {
					t.Fatalf("removing: %v", err)
				}
			}
			present(nil)
		})
	}
}

// sourceFor is the source address h's kernel picks for a connection to dst.
func sourceFor(t *testing.T, h *netlab.Host, dst netip.Addr) netip.Addr {
	t.Helper()
	nh, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	routes, err := nh.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		t.Fatalf("route to %s: %v %v", dst, routes, err)
	}
	src, _ := netip.AddrFromSlice(routes[0].Src)
	return src.Unmap()
}

func TestPrimaryAddressSkipsVirtualIPs(t *testing.T) {
	l := netlab.NewT(t)
	h := netlab.MustAddHost(t, l, "lb")
	vip := netip.MustParseAddr("198.18.0.100")
	primary := func() (netip.Addr, error) {
		var a netip.Addr
		err := h.Do(func() error {
			var err error
			a, err = PrimaryAddress(netlab.HostLink, false, []netip.Addr{vip})
			return err
		})
		return a, err
	}
	// A virtual IP left by a crashed run, listed before the node's own address.
	if err := h.AddAddr(vip.String() + "/32"); err != nil {
		t.Fatal(err)
	}
	if a, err := primary(); err == nil || !strings.Contains(err.Error(), "no IPv4 address of its own") {
		t.Fatalf("with only the virtual IP: %v, %v; want an error saying there is no address of its own", a, err)
	}
	if err := h.AddAddr("198.18.0.11/24"); err != nil {
		t.Fatal(err)
	}
	if a, err := primary(); err != nil || a != netip.MustParseAddr("198.18.0.11") {
		t.Fatalf("primary address %v, %v; want 198.18.0.11", a, err)
	}
	// Another pair's virtual IP, which this pair does not know, with the lifetime
	// virtual IPs have, and the node's address added again after it.
	if _, err := h.Exec("ip", "addr", "add", "198.18.0.200/32", "dev", netlab.HostLink, "valid_lft", "60", "preferred_lft", "60"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Exec("ip", "addr", "del", "198.18.0.11/24", "dev", netlab.HostLink); err != nil {
		t.Fatal(err)
	}
	if err := h.AddAddr("198.18.0.11/24"); err != nil {
		t.Fatal(err)
	}
	if a, err := primary(); err != nil || a != netip.MustParseAddr("198.18.0.11") {
		t.Fatalf("after the node's address came back behind another pair's virtual IP: primary address %v, %v; want 198.18.0.11", a, err)
	}
	// A node with host routes only (some clouds): its own is permanent.
	if _, err := h.Exec("ip", "addr", "del", "198.18.0.11/24", "dev", netlab.HostLink); err != nil {
		t.Fatal(err)
	}
	if err := h.AddAddr("198.18.0.11/32"); err != nil {
		t.Fatal(err)
	}
	if a, err := primary(); err != nil || a != netip.MustParseAddr("198.18.0.11") {
		t.Fatalf("with host routes only: primary address %v, %v; want 198.18.0.11, the permanent one", a, err)
	}
	// With a lifetime too (DHCP), the first that is not this pair's virtual IP.
	if _, err := h.Exec("ip", "addr", "change", "198.18.0.11/32", "dev", netlab.HostLink, "valid_lft", "600", "preferred_lft", "600"); err != nil {
		t.Fatal(err)
	}
	if a, err := primary(); err != nil || a != netip.MustParseAddr("198.18.0.200") {
		t.Fatalf("with host routes with lifetimes only: primary address %v, %v; want 198.18.0.200, listed first", a, err)
	}
	var ll netip.Addr
	netlab.Eventually(t, "the IPv6 link-local address", 5*time.Second, func() error {
		return h.Do(func() error {
			var err error
			ll, err = PrimaryAddress(netlab.HostLink, true, nil)
			return err
		})
	})
	if !ll.IsLinkLocalUnicast() {
		t.Errorf("IPv6 primary address %v is not link-local", ll)
	}
}

// A link-local address in duplicate address detection cannot be sent from yet: as on a
// link made again, PrimaryAddress waits for it.
func TestPrimaryAddressWaitsForDuplicateAddressDetection(t *testing.T) {
	l := netlab.NewT(t)
	h := netlab.MustAddHost(t, l, "lb")
	if err := h.Sysctl("net.ipv6.conf."+netlab.HostLink+".accept_dad", "1"); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Exec("ip", "-6", "addr", "flush", "dev", netlab.HostLink, "scope", "link"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := h.AddAddr("fe80::11/64"); err != nil {
		t.Fatal(err)
	}
	tentative := func() bool {
		out, err := h.Exec("ip", "-6", "-o", "addr", "show", "dev", netlab.HostLink, "tentative")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(out, "fe80::11/64")
	}
	var a netip.Addr
	primary := func() error {
		return h.Do(func() (err error) {
			a, err = PrimaryAddress(netlab.HostLink, true, nil)
			return err
		})
	}
	if !tentative() {
		t.Fatal("fe80::11 passed duplicate address detection at once; the check cannot be made")
	}
	err := primary()
	if tentative() && !errors.Is(err, ErrTentative) {
		t.Errorf("during duplicate address detection: %v, %v; want ErrTentative", a, err)
	}
	netlab.Eventually(t, "fe80::11 once detection passed", 10*time.Second, primary)
	if a != netip.MustParseAddr("fe80::11") {
		t.Errorf("primary address %v, want fe80::11", a)
	}
}

func TestInterfaceFor(t *testing.T) {
	l := netlab.NewT(t)
	h := netlab.MustAddHost(t, l, "lb", "198.18.0.11/24")
	interfaceFor := func(addr string) (string, error) {
		var name string
		err := h.Do(func() error {
			var err error
			name, err = InterfaceFor(netip.MustParseAddr(addr))
			return err
		})
		return name, err
	}
	if name, err := interfaceFor("198.18.0.100"); err != nil || name != netlab.HostLink {
		t.Errorf("a virtual IP in the link's subnet: %q, %v; want %s", name, err, netlab.HostLink)
	}
	// Held, the address is routed through lo; the interface holding it still wins.
	if err := h.AddAddr("198.18.0.100/32"); err != nil {
		t.Fatal(err)
	}
	if name, err := interfaceFor("198.18.0.100"); err != nil || name != netlab.HostLink {
		t.Errorf("a virtual IP held on the link: %q, %v; want %s", name, err, netlab.HostLink)
	}
	if err := h.Do(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			return err
		}
		if lo.Flags&net.FlagUp == 0 {
			return fmt.Errorf("lo is down")
		}
		return nil
	}); err != nil {
		t.Fatalf("the lab host's loopback: %v", err)
	}
	for _, addr := range []string{"198.19.0.1", "127.0.0.2"} { // no route; the loopback
		if name, err := interfaceFor(addr); err == nil || !strings.Contains(err.Error(), "set spec.interface") {
			t.Errorf("%s: %q, %v; want an error that says to set spec.interface", addr, name, err)
		}
	}
}

// A virtual IP that is the node's own address (with its subnet's prefix) is refused:
// the router would take the address off the node when it stops being master. One left
// as a host route by a crashed run is a virtual IP, and is accepted.
func TestOpenRefusesTheNodesOwnAddress(t *testing.T) {
	l := netlab.NewT(t)
	h := netlab.MustAddHost(t, l, "lb1", "198.18.0.11/24", "fd00:198:18::11/64")
	for _, own := range []string{"198.18.0.11", "fd00:198:18::11"} {
		err := h.Do(func() error {
			m, err := Open(netlab.HostLink, []netip.Addr{netip.MustParseAddr(own)}, testr.New(t))
			if err == nil {
				m.Close()
			}
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "is this node's own address") {
			t.Errorf("Open with virtual IP %s, the node's address: %v, want a refusal", own, err)
		}
	}
	if _, err := h.Exec("ip", "addr", "add", "198.18.0.100/32", "dev", netlab.HostLink); err != nil {
		t.Fatal(err)
	}
	openIn(t, h, netip.MustParseAddr("198.18.0.100"))
}

// A virtual IP that is the gateway of one of the node's routes is refused: its holder
// would take the link's traffic to the gateway.
func TestOpenRefusesAGateway(t *testing.T) {
	l := netlab.NewT(t)
	h := netlab.MustAddHost(t, l, "lb1", "198.18.0.11/24")
	if _, err := h.Exec("ip", "route", "add", "198.19.0.0/24", "via", "198.18.0.1"); err != nil {
		t.Fatal(err)
	}
	open := func(vips ...netip.Addr) (*Manager, error) {
		var m *Manager
		err := h.Do(func() error {
			var err error
			m, err = Open(netlab.HostLink, vips, testr.New(t))
			return err
		})
		return m, err
	}
	gateway, free := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.100")
	if m, err := open(gateway); err == nil || !strings.Contains(err.Error(), "is the gateway of this node's route to 198.19.0.0/24") {
		if m != nil {
			m.Close()
		}
		t.Errorf("Open with the gateway as virtual IP: %v, want a refusal naming the route", err)
	}
	m, err := open(free)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := h.Do(func() error { return m.SetVIPs([]netip.Addr{free, gateway}) }); err == nil || !strings.Contains(err.Error(), "gateway") {
		t.Errorf("SetVIPs with the gateway: %v, want a refusal", err)
	}
}

// TestLifetime: virtual IPs added with a lifetime stay while they are
// renewed, and the kernel takes them off by itself once they are not, as
// when their holder is killed.
func TestLifetime(t *testing.T) {
	for _, tc := range []struct {
		name, own string
		vip       netip.Addr
	}{
		{"IPv4", "198.18.0.11/24", netip.MustParseAddr("198.18.0.100")},
		{"IPv6", "fd00:198:18::11/64", netip.MustParseAddr("fd00:198:18::100")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := netlab.NewT(t)
			h := netlab.MustAddHost(t, l, "lb", tc.own)
			m := openIn(t, h, tc.vip)
			validFor := func() string {
				t.Helper()
				if v := ipField(t, h, "valid_lft", "-o", "addr", "show", "dev", netlab.HostLink, "to", tc.vip.String()); v != "" {
					return v
				}
				return "absent"
			}
			m.SetLifetime(3 * time.Second)
			if err := m.Add(); err != nil {
				t.Fatal(err)
			}
			if got := validFor(); got != "3sec" {
				t.Errorf("added with a lifetime of 3s: valid_lft %s", got)
			}
			// Renewed as the router does on its master's ticks: not before a
			// third of the lifetime, then back to the whole of it. So 3 or 2
			// seconds are left at a look just after a renewal, and a second less
			// for every second a stalled test took to look. Past the lifetime,
			// one prompt look shows that it was renewed.
			renewedPastLifetime := false
			lifetimeOver := time.Now().Add(3 * time.Second)
			end, deadline := time.Now().Add(4*time.Second), time.Now().Add(20*time.Second)
			for ; time.Now().Before(end) || !renewedPastLifetime; time.Sleep(100 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no look within a second of its renewal past the first lifetime")
				}
				renewed := time.Now()
				if err := m.Refresh(renewed); err != nil {
					t.Fatal(err)
				}
				got := validFor()
				late := time.Since(renewed)
				left := 0
				if got != "absent" {
					var err error
					if left, err = strconv.Atoi(strings.TrimSuffix(got, "sec")); err != nil {
						t.Fatalf("renewed every tick: valid_lft %s", got)
					}
				}
				// The kernel counts in jiffies: allow it one (at most 10ms).
				if least := 2 - int((late+10*time.Millisecond)/time.Second); left < least || left > 3 {
					t.Fatalf("renewed every tick: valid_lft %s, %v after Refresh", got, late.Round(time.Millisecond))
				}
				renewedPastLifetime = renewedPastLifetime || late < time.Second && renewed.After(lifetimeOver)
			}
			// Not renewed: gone within its lifetime and the kernel's second.
			start := time.Now()
			netlab.Eventually(t, "the VIP expires", 6*time.Second, func() error {
				if got := validFor(); got != "absent" {
					return fmt.Errorf("valid_lft %s", got)
				}
				return nil
			})
			t.Logf("expired %v after the renewals stopped", time.Since(start).Round(100*time.Millisecond))
			// A new lifetime (a new advert interval) is renewed at once.
			if err := m.Add(); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				lifetime time.Duration
				want     string
			}{{10 * time.Second, "10sec"}, {0, "forever"}} {
				m.SetLifetime(tc.lifetime)
				if err := m.Refresh(time.Now()); err != nil {
					t.Fatal(err)
				}
				if got := validFor(); got != tc.want {
					t.Errorf("renewed just after the lifetime became %v: valid_lft %s, want %s", tc.lifetime, got, tc.want)
				}
			}
		})
	}
}
