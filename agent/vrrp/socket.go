package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// received is one packet off the wire with what the checks need from its IP
// header.
type received struct {
	payload  []byte
	src, dst netip.Addr
	ttl      int
}

// transport sends and receives VRRP packets on one interface.
type transport interface {
	send(b []byte, dst netip.Addr) error
	receive(buf []byte) (received, error)
	close() error
}

// openTransport opens a raw protocol-112 socket bound to the interface,
// joined to the VRRP multicast group, sending with TTL (hop limit) 255 from
// src. It must run in the network namespace of the interface.
func openTransport(ifi *net.Interface, src netip.Addr) (transport, error) {
	if src.Is4() {
		return openIPv4(ifi, src)
	}
	return openIPv6(ifi, src)
}

func bindToDevice(c syscall.Conn, ifname string) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname)
	}); err != nil {
		return err
	}
	return serr
}

type ipv4Transport struct {
	c   net.PacketConn
	raw *ipv4.RawConn
	src netip.Addr
}

func openIPv4(ifi *net.Interface, src netip.Addr) (*ipv4Transport, error) {
	c, err := net.ListenPacket("ip4:112", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("opening a raw VRRP socket (needs CAP_NET_RAW): %w", err)
	}
	t := &ipv4Transport{c: c, src: src}
	fail := func(what string, err error) (*ipv4Transport, error) {
		c.Close()
		return nil, fmt.Errorf("%s on %s: %w", what, ifi.Name, err)
	}
	if err := bindToDevice(c.(*net.IPConn), ifi.Name); err != nil {
		return fail("binding the VRRP socket", err)
	}
	if t.raw, err = ipv4.NewRawConn(c); err != nil {
		return fail("opening the VRRP socket", err)
	}
	if err := t.raw.JoinGroup(ifi, &net.IPAddr{IP: GroupIPv4.AsSlice()}); err != nil {
		return fail("joining 224.0.0.18", err)
	}
	if err := t.raw.SetMulticastInterface(ifi); err != nil {
		return fail("choosing the multicast interface", err)
	}
	// Our own adverts must not come back as if from a peer.
	if err := t.raw.SetMulticastLoopback(false); err != nil {
		return fail("turning off multicast loopback", err)
	}
	return t, nil
}

func (t *ipv4Transport) send(b []byte, dst netip.Addr) error {
	h := &ipv4.Header{
		Version:  ipv4.Version,
		Len:      ipv4.HeaderLen,
		TOS:      0xc0, // Internetwork control, as routing protocols use.
		TotalLen: ipv4.HeaderLen + len(b),
		TTL:      255,
		Protocol: Protocol,
		Src:      t.src.AsSlice(),
		Dst:      dst.AsSlice(),
	}
	return t.raw.WriteTo(h, b, nil)
}

func (t *ipv4Transport) receive(buf []byte) (received, error) {
	h, p, _, err := t.raw.ReadFrom(buf)
	if err != nil {
		return received{}, err
	}
	src, _ := netip.AddrFromSlice(h.Src.To4())
	dst, _ := netip.AddrFromSlice(h.Dst.To4())
	return received{payload: p, src: src, dst: dst, ttl: h.TTL}, nil
}

func (t *ipv4Transport) close() error { return t.c.Close() }

type ipv6Transport struct {
	c   net.PacketConn
	pc  *ipv6.PacketConn
	ifi *net.Interface
	src netip.Addr
}

func openIPv6(ifi *net.Interface, src netip.Addr) (*ipv6Transport, error) {
	c, err := net.ListenPacket("ip6:112", "::")
	if err != nil {
		return nil, fmt.Errorf("opening a raw VRRP socket (needs CAP_NET_RAW): %w", err)
	}
	t := &ipv6Transport{c: c, pc: ipv6.NewPacketConn(c), ifi: ifi, src: src}
	fail := func(what string, err error) (*ipv6Transport, error) {
		c.Close()
		return nil, fmt.Errorf("%s on %s: %w", what, ifi.Name, err)
	}
	if err := bindToDevice(c.(*net.IPConn), ifi.Name); err != nil {
		return fail("binding the VRRP socket", err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"joining ff02::12", func() error { return t.pc.JoinGroup(ifi, &net.IPAddr{IP: GroupIPv6.AsSlice()}) }},
		{"choosing the multicast interface", func() error { return t.pc.SetMulticastInterface(ifi) }},
		{"setting the multicast hop limit", func() error { return t.pc.SetMulticastHopLimit(255) }},
		{"setting the hop limit", func() error { return t.pc.SetHopLimit(255) }},
		{"turning off multicast loopback", func() error { return t.pc.SetMulticastLoopback(false) }},
		{"asking for hop limits and destinations", func() error {
			return t.pc.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true)
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fail(s.what, err)
		}
	}
	return t, nil
}

func (t *ipv6Transport) send(b []byte, dst netip.Addr) error {
	cm := &ipv6.ControlMessage{Src: t.src.AsSlice(), IfIndex: t.ifi.Index, HopLimit: 255}
	// A numeric zone: resolving the interface's name would look it up in
	// the namespace of whichever thread runs this, not the socket's.
	zone := ""
	if dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() {
		zone = strconv.Itoa(t.ifi.Index)
	}
	_, err := t.pc.WriteTo(b, cm, &net.IPAddr{IP: dst.AsSlice(), Zone: zone})
	return err
}

func (t *ipv6Transport) receive(buf []byte) (received, error) {
	n, cm, from, err := t.pc.ReadFrom(buf)
	if err != nil {
		return received{}, err
	}
	if cm == nil {
		return received{}, errors.New("no control message with the packet")
	}
	ia, _ := from.(*net.IPAddr)
	if ia == nil {
		return received{}, errors.New("no source address with the packet")
	}
	src, _ := netip.AddrFromSlice(ia.IP)
	dst, _ := netip.AddrFromSlice(cm.Dst)
	return received{payload: buf[:n], src: src.Unmap(), dst: dst.Unmap(), ttl: cm.HopLimit}, nil
}

func (t *ipv6Transport) close() error { return t.c.Close() }
