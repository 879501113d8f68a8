// Package vrrp implements the Virtual Router Redundancy Protocol: the packet
// codec of VRRPv3 (RFC 5798, IPv4 and IPv6) and VRRPv2 (RFC 3768, with
// simple-text authentication), the protocol's state machine on an injected
// clock, and the Router that runs it on raw sockets.
package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Protocol is VRRP's IP protocol number.
const Protocol = 112

// Multicast groups of VRRP.
var (
	GroupIPv4 = netip.MustParseAddr("224.0.0.18")
	GroupIPv6 = netip.MustParseAddr("ff02::12")
)

const (
	typeAdvertisement = 1
	headerLen         = 8
	// AuthNone and AuthSimple are VRRPv2 authentication types; RFC 3768
	// keeps only these two (keepalived's auth_type PASS is AuthSimple).
	AuthNone   = 0
	AuthSimple = 1
	authLen    = 8
	// maxInterval3 is the largest VRRPv3 interval: 12 bits of centiseconds.
	maxInterval3 = 4095 * 10 * time.Millisecond
)

// Errors of Decode, each a reason a received packet is dropped.
var (
	ErrTooShort     = errors.New("packet too short")
	ErrBadVersion   = errors.New("unsupported VRRP version")
	ErrBadType      = errors.New("not an advertisement")
	ErrBadLength    = errors.New("address count does not match the length")
	ErrBadChecksum  = errors.New("bad checksum")
	ErrBadAuthType  = errors.New("unsupported authentication type")
	ErrZeroInterval = errors.New("zero advertisement interval")
)

// Packet is one VRRP advertisement.
type Packet struct {
	Version  int
	VRID     uint8
	Priority uint8
	// Interval is the advertisement interval: centiseconds on the wire in
	// VRRPv3, whole seconds in VRRPv2.
	Interval time.Duration
	Addrs    []netip.Addr
	// AuthType and Auth are VRRPv2's authentication; zero in VRRPv3.
	AuthType uint8
	Auth     [authLen]byte
}

// Encode returns the packet's bytes with the checksum for an IP packet from
// src to dst (VRRPv3 sums a pseudo-header of the IP addresses).
func (p *Packet) Encode(src, dst netip.Addr) ([]byte, error) {
	if len(p.Addrs) == 0 || len(p.Addrs) > 255 {
		return nil, fmt.Errorf("encoding VRRP: %d addresses, want 1 to 255", len(p.Addrs))
	}
	ipv6 := p.Addrs[0].Is6()
	alen := 4
	if ipv6 {
		alen = 16
	}
	n := headerLen + alen*len(p.Addrs)
	if p.Version == 2 {
		n += authLen
	}
	b := make([]byte, n)
	b[0] = byte(p.Version)<<4 | typeAdvertisement
	b[1] = p.VRID
	b[2] = p.Priority
	b[3] = byte(len(p.Addrs))
	switch p.Version {
	case 3:
		cs := p.Interval / (10 * time.Millisecond)
		if cs < 1 || cs > 4095 {
			return nil, fmt.Errorf("encoding VRRPv3: interval %v out of 10ms..40.95s", p.Interval)
		}
		binary.BigEndian.PutUint16(b[4:], uint16(cs))
	case 2:
		if ipv6 {
			return nil, errors.New("encoding VRRPv2: IPv6 needs VRRPv3")
		}
		s := p.Interval / time.Second
		if s < 1 || s > 255 {
			return nil, fmt.Errorf("encoding VRRPv2: interval %v out of 1s..255s", p.Interval)
		}
		b[4] = p.AuthType
		b[5] = byte(s)
		copy(b[n-authLen:], p.Auth[:])
	default:
		return nil, fmt.Errorf("encoding VRRP: %w %d", ErrBadVersion, p.Version)
	}
	for i, a := range p.Addrs {
		if a.Is6() != ipv6 {
			return nil, errors.New("encoding VRRP: addresses of both families")
		}
		copy(b[headerLen+i*alen:], a.AsSlice())
	}
	binary.BigEndian.PutUint16(b[6:], checksum(p.Version, b, src, dst))
	return b, nil
}

// Decode parses and checks an advertisement received from src to dst. The
// family of the addresses follows dst.
func Decode(b []byte, src, dst netip.Addr) (*Packet, error) {
	if len(b) < headerLen {
		return nil, ErrTooShort
	}
	p := &Packet{Version: int(b[0] >> 4), VRID: b[1], Priority: b[2]}
	if b[0]&0x0f != typeAdvertisement {
		return nil, ErrBadType
	}
	ipv6 := dst.Is6() && !dst.Is4In6()
	alen := 4
	if ipv6 {
		alen = 16
	}
	count := int(b[3])
	want := headerLen + alen*count
	switch p.Version {
	case 3:
		p.Interval = time.Duration(binary.BigEndian.Uint16(b[4:])&0x0fff) * 10 * time.Millisecond
	case 2:
		if ipv6 {
			return nil, ErrBadVersion
		}
		want += authLen
		p.AuthType = b[4]
		p.Interval = time.Duration(b[5]) * time.Second
	default:
		return nil, ErrBadVersion
	}
	// RFC 5798 5.2.5 counts addresses; a packet may carry trailing bytes
	// (VRRPv2 authentication data) but not fewer than announced.
	if count == 0 || len(b) < want {
		return nil, ErrBadLength
	}
	b = b[:want]
	if checksum(p.Version, b, src, dst) != 0 {
		return nil, ErrBadChecksum
	}
	if p.Interval == 0 {
		return nil, ErrZeroInterval
	}
	if p.Version == 2 {
		if p.AuthType != AuthNone && p.AuthType != AuthSimple {
			return nil, ErrBadAuthType
		}
		copy(p.Auth[:], b[want-authLen:])
	}
	p.Addrs = make([]netip.Addr, count)
	for i := range p.Addrs {
		a, _ := netip.AddrFromSlice(b[headerLen+i*alen : headerLen+(i+1)*alen])
		p.Addrs[i] = a
	}
	return p, nil
}

// checksum is the Internet checksum of the message; VRRPv3 adds the
// pseudo-header of RFC 5798 5.2.8 (IPv4 as in RFC 768, IPv6 as in RFC 8200
// 8.1), VRRPv2 sums the message only. A correct packet sums to zero.
func checksum(version int, b []byte, src, dst netip.Addr) uint16 {
	var sum uint32
	add := func(p []byte) {
		for len(p) >= 2 {
			sum += uint32(p[0])<<8 | uint32(p[1])
			p = p[2:]
		}
		if len(p) == 1 {
			sum += uint32(p[0]) << 8
		}
	}
	if version == 3 {
		if src.Is4() || src.Is4In6() {
			add(src.Unmap().AsSlice())
			add(dst.Unmap().AsSlice())
			add([]byte{0, Protocol, byte(len(b) >> 8), byte(len(b))})
		} else {
			add(src.AsSlice())
			add(dst.AsSlice())
			add([]byte{0, 0, byte(len(b) >> 8), byte(len(b)), 0, 0, 0, Protocol})
		}
	}
	// The checksum field itself is summed as it is: zero when computing,
	// the sent value when verifying.
	add(b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Password pads a VRRPv2 simple-text password to the 8 bytes on the wire.
func Password(s string) [authLen]byte {
	var a [authLen]byte
	copy(a[:], s)
	return a
}
