// Package vip holds the virtual IPs on a node: it adds them to the
// interface with netlink when the router becomes master, removes them when
// it stops being master, and announces them with gratuitous ARP (IPv4) or
// unsolicited neighbour advertisements (IPv6) so that switches and hosts
// learn the new holder at once.
package vip

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// allNodes is where unsolicited neighbour advertisements go (RFC 4861 7.2.6).
var allNodes = netip.MustParseAddr("ff02::1")

// Manager adds, removes and announces the virtual IPs on one interface. Its
// sockets are opened by Open in the network namespace of the caller, and
// stay there whichever goroutine uses them later.
type Manager struct {
	log  logr.Logger
	vips []netip.Addr
	ifi  *net.Interface
	h    *netlink.Handle
	link netlink.Link
	mu   sync.Mutex
	arp  *arp.Client
	ndp  *ndp.Conn
	// lifetime and added: see SetLifetime. Used by the router's goroutine only.
	lifetime time.Duration
	added    time.Time
}

// Open prepares the virtual IPs of one family on the interface named ifname.
func Open(ifname string, vips []netip.Addr, log logr.Logger) (*Manager, error) {
	if len(vips) == 0 {
		return nil, errors.New("no virtual IPs")
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	link, err := h.LinkByName(ifname)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("finding interface %q: %w", ifname, err)
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("finding interface %q: %w", ifname, err)
	}
	if err := refuseTaken(h, vips); err != nil {
		h.Close()
		return nil, err
	}
	m := &Manager{log: log, vips: vips, ifi: ifi, h: h, link: link}
	if vips[0].Is4() {
		m.arp, err = arp.Dial(ifi)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("opening an ARP socket on %q (needs an IPv4 address and CAP_NET_RAW): %w", ifname, err)
		}
	} else {
		// The NDP socket names its link-local addresses' zone by the interface's
		// name, which Go resolves to an index in the namespace of whichever thread
		// sends. Naming it by index keeps sends right from any thread, as the ARP
		// socket's are.
		byIndex := *ifi
		byIndex.Name = strconv.Itoa(ifi.Index)
		m.ndp, _, err = ndp.Listen(&byIndex, ndp.LinkLocal)
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("opening an NDP socket on %q: %w", ifname, err)
		}
	}
	return m, nil
}

// refuseTaken fails when a virtual IP is an address the node knows another
// use of: one of its own, or a gateway of its routes.
func refuseTaken(h *netlink.Handle, vips []netip.Addr) error {
	if err := refuseOwnAddresses(h, vips); err != nil {
		return err
	}
	return refuseGateways(h, vips)
}

// refuseGateways fails when a virtual IP is the gateway of one of the node's
// routes (a slip of the finger: the subnet's .1). The holder would announce
// it, and every host of the link would send it what they route out of it.
func refuseGateways(h *netlink.Handle, vips []netip.Addr) error {
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("listing the node's routes: %w", err)
	}
	for _, r := range routes {
		gws := []net.IP{r.Gw}
		for _, nh := range r.MultiPath {
			gws = append(gws, nh.Gw)
		}
		for _, gw := range gws {
			ip, ok := netip.AddrFromSlice(gw)
			if !ok || !slices.Contains(vips, ip.Unmap()) {
				continue
			}
			dst := "default"
			if r.Dst != nil {
				dst = r.Dst.String()
			}
			return fmt.Errorf("virtual IP %s is the gateway of this node's route to %s: use an address no host has", ip.Unmap(), dst)
		}
	}
	return nil
}

// refuseOwnAddresses fails when a virtual IP is one of the node's own
// addresses: one it has with a subnet's prefix, not as the host route (/32,
// /128) a virtual IP is added as. Holding it, the router would remove it
// when it stops being master (or when it starts, as a stale virtual IP), and
// the backup would announce it: the node would lose an address it lives on.
func refuseOwnAddresses(h *netlink.Handle, vips []netip.Addr) error {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing the node's addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || !slices.Contains(vips, ip.Unmap()) {
			continue
		}
		if ones, bits := a.Mask.Size(); ones == bits {
			continue // a virtual IP, maybe left by a crashed run
		}
		where := strconv.Itoa(a.LinkIndex)
		if l, err := h.LinkByIndex(a.LinkIndex); err == nil {
			where = l.Attrs().Name
		}
		return fmt.Errorf("virtual IP %s is this node's own address (%s on %s): use an address no host has", ip.Unmap(), a.IPNet, where)
	}
	return nil
}

// SetVIPs moves the Manager to another list of virtual IPs of the same
// family. Addresses no longer listed are taken off the interface now; the
// new ones go on with the next Add.
func (m *Manager) SetVIPs(vips []netip.Addr) error {
	if len(vips) == 0 || vips[0].Is4() != m.vips[0].Is4() {
		return errors.New("the virtual IPs' address family cannot change on an open Manager")
	}
	if err := refuseTaken(m.h, vips); err != nil {
		return err
	}
	var gone []netip.Addr
	for _, a := range m.vips {
		if !slices.Contains(vips, a) {
			gone = append(gone, a)
		}
	}
	if err := m.remove(gone); err != nil {
		return err
	}
	m.mu.Lock()
	m.vips = slices.Clone(vips)
	m.mu.Unlock()
	return nil
}

// Close releases the sockets; it does not remove the virtual IPs.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if m.arp != nil {
		errs = append(errs, m.arp.Close())
	}
	if m.ndp != nil {
		errs = append(errs, m.ndp.Close())
	}
	m.h.Close()
	return errors.Join(errs...)
}

// SetLifetime gives the virtual IPs added from now on a valid lifetime (in
// whole seconds; 0 is forever), which Refresh renews. The kernel then takes
// a virtual IP off by itself once its holder stops renewing it without
// removing it: an agent killed (kill -9, an OOM kill) leaves nothing behind
// the address, its proxy having died with it, and a node that still
// answered ARP or neighbour solicitations for it would take some of the new
// holder's clients.
func (m *Manager) SetLifetime(d time.Duration) {
	if d != m.lifetime {
		m.lifetime = d
		m.added = time.Time{} // due: the addresses carry the old one
	}
}

// Refresh renews the virtual IPs' lifetime once a third of it has passed
// since they were last added, or at once after SetLifetime changed it; the
// router calls it on its master's ticks. Forever needs no renewal, but
// going to it from a lifetime does.
func (m *Manager) Refresh(now time.Time) error {
	if !m.added.IsZero() && (m.lifetime <= 0 || now.Sub(m.added) < m.lifetime/3) {
		return nil
	}
	return m.Add()
}

func (m *Manager) addr(a netip.Addr) *netlink.Addr {
	bits := 32
	if a.Is6() {
		bits = 128
	}
	valid := uint32(math.MaxUint32) // forever
	if m.lifetime > 0 {
		valid = uint32(max(m.lifetime/time.Second, 1))
	}
	na := &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, ValidLft: int(valid), PreferedLft: int(valid)}
	if a.Is6() {
		// The holder must answer at once: no duplicate address detection
		// (the backup never holds the address at the same time).
		na.Flags = unix.IFA_F_NODAD
		// Deprecated (preferred lifetime 0, valid forever), so that the kernel
		// never picks the VIP as the source of the node's own connections. It
		// would for hosts of the VIP's /64, a /128 matching more bits than the
		// node's /64 address (RFC 6724 rule 8), and the proxy's connections to
		// backends, still draining when the VIP moves, would then lose their
		// replies to the new holder. A deprecated address still takes
		// connections, answers neighbour solicitations and can be bound.
		na.PreferedLft = 0
	}
	return na
}

// Add puts the virtual IPs on the interface; present ones stay, with their
// lifetime renewed.
func (m *Manager) Add() error {
	m.added = time.Now()
	var errs []error
	for _, a := range m.vips {
		if err := m.h.AddrReplace(m.link, m.addr(a)); err != nil {
			errs = append(errs, fmt.Errorf("adding %s to %s: %w", a, m.ifi.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Remove takes the virtual IPs off the interface; absent ones are fine.
func (m *Manager) Remove() error { return m.remove(m.vips) }

func (m *Manager) remove(vips []netip.Addr) error {
	var errs []error
	for _, a := range vips {
		if err := m.h.AddrDel(m.link, m.addr(a)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("removing %s from %s: %w", a, m.ifi.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Present lists the virtual IPs now on the interface: on start, one left by
// a crashed run must be removed before joining the group.
func (m *Manager) Present() ([]netip.Addr, error) {
	family := netlink.FAMILY_V4
	if m.vips[0].Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := m.h.AddrList(m.link, family)
	if err != nil {
		return nil, fmt.Errorf("listing addresses of %s: %w", m.ifi.Name, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		for _, v := range m.vips {
			if v == ip.Unmap() {
				out = append(out, v)
			}
		}
	}
	return out, nil
}

// Announce sends one gratuitous ARP request (IPv4) or unsolicited neighbour
// advertisement with the override flag (IPv6) per virtual IP.
func (m *Manager) Announce() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, a := range m.vips {
		var err error
		if m.arp != nil {
			var p *arp.Packet
			p, err = arp.NewPacket(arp.OperationRequest, m.ifi.HardwareAddr, a, ethernet.Broadcast, a)
			if err == nil {
				err = m.arp.WriteTo(p, ethernet.Broadcast)
			}
		} else {
			na := &ndp.NeighborAdvertisement{
				Override:      true,
				TargetAddress: a,
				Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: m.ifi.HardwareAddr}},
			}
			err = m.ndp.WriteTo(na, nil, allNodes)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("announcing %s on %s: %w", a, m.ifi.Name, err))
		}
	}
	return errors.Join(errs...)
}

// InterfaceFor finds the interface for addr when the pair does not name
// one: the interface that already holds it (a virtual IP left by a crashed
// run makes the route local, through lo), else the interface of the route
// to it.
func InterfaceFor(addr netip.Addr) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", fmt.Errorf("listing interfaces: %w", err)
	}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return l.Attrs().Name, nil
			}
		}
	}
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return "", fmt.Errorf("finding the route to %s (set spec.interface): %w", addr, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return "", fmt.Errorf("no route to %s: set spec.interface", addr)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("interface of the route to %s: %w", addr, err)
	}
	if link.Attrs().Flags&net.FlagLoopback != 0 {
		return "", fmt.Errorf("%s is routed through the loopback interface: set spec.interface", addr)
	}
	return link.Attrs().Name, nil
}

// ErrTentative is PrimaryAddress's error while the only address it could
// give is still in duplicate address detection, which ends within seconds.
var ErrTentative = errors.New("its address is still in duplicate address detection")

// PrimaryAddress is the interface's address VRRP sends from: its first
// IPv4 address that is not a virtual IP, or its IPv6 link-local address,
// once duplicate address detection has passed. An address with a prefix
// comes before a host route (a /32 or /128): virtual IPs are host routes,
// and those of other pairs on the interface, which vips does not list, may
// come first (the kernel lists a node address added again after them).
// Some clouds give nodes host routes only; a permanent one is taken then,
// as a virtual IP always has a lifetime (see SetLifetime), else the first.
func PrimaryAddress(ifname string, ipv6 bool, vips []netip.Addr) (netip.Addr, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("finding interface %q: %w", ifname, err)
	}
	family := netlink.FAMILY_V4
	if ipv6 {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(link, family)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("listing addresses of %q: %w", ifname, err)
	}
	tentative := false
	var hostRoute, permanentHostRoute netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ipv6 != ip.IsLinkLocalUnicast() || ip.Is4() == ipv6 {
			continue
		}
		// Nothing can be sent from an address still in duplicate address
		// detection (a link made again has a new link-local one) or failed it.
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			tentative = tentative || a.Flags&unix.IFA_F_DADFAILED == 0
			continue
		}
		// A virtual IP, left by a crashed run, is a host route; the node's own
		// address, even one named as a virtual IP (which Open refuses), is not.
		rank := Rank(a.Mask, a.ValidLft)
		if rank == RankPrefixed {
			return ip, nil
		}
		if slices.Contains(vips, ip) {
			continue
		}
		if !hostRoute.IsValid() {
			hostRoute = ip
		}
		if !permanentHostRoute.IsValid() && rank == RankPermanentHostRoute {
			permanentHostRoute = ip
		}
	}
	switch {
	case permanentHostRoute.IsValid():
		return permanentHostRoute, nil
	case hostRoute.IsValid():
		return hostRoute, nil
	case tentative:
		return netip.Addr{}, fmt.Errorf("interface %q: %w", ifname, ErrTentative)
	case ipv6:
		return netip.Addr{}, fmt.Errorf("interface %q has no IPv6 link-local address", ifname)
	}
	return netip.Addr{}, fmt.Errorf("interface %q has no IPv4 address of its own", ifname)
}

// AddressRank is how much PrimaryAddress prefers an address of an interface
// to another: the higher, the more.
type AddressRank int

const (
	// RankHostRoute is a host route (/32, /128) with a lifetime, as virtual
	// IPs have: maybe another pair's.
	RankHostRoute AddressRank = iota
	// RankPermanentHostRoute is a host route without a lifetime: the node's
	// own, on clouds that give nodes host routes only.
	RankPermanentHostRoute
	// RankPrefixed is an address with a subnet's prefix: the node's own.
	RankPrefixed
)

// Rank ranks an address of an interface by its mask and its valid lifetime
// (in seconds, math.MaxUint32 for forever), as netlink gives them. A router
// sending from an address that a new one outranks (another pair's virtual
// IP, taken while the node had no address of its own) moves to the new one.
func Rank(mask net.IPMask, validLft int) AddressRank {
	if ones, bits := mask.Size(); ones != bits {
		return RankPrefixed
	}
	if uint32(validLft) == math.MaxUint32 {
		return RankPermanentHostRoute
	}
	return RankHostRoute
}
