// Package proxyproto writes and reads PROXY protocol headers (versions 1 and 2), which
// tell a backend the client's address on a proxied TCP connection.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

// Version is a PROXY protocol version.
type Version int

const (
	// V1 is the human-readable header: "PROXY TCP4 src dst sport dport\r\n".
	V1 Version = 1
	// V2 is the binary header.
	V2 Version = 2
)

// ErrInvalid is wrapped by every error that Parse returns for a malformed header.
var ErrInvalid = errors.New("invalid PROXY protocol header")

// ErrShort means the data ends before the header does: read more and parse again.
var ErrShort = errors.New("PROXY protocol header incomplete")

// sigV2 starts every version 2 header.
var sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")

const (
	maxV1     = 107 // the longest v1 line, CRLF included
	v2Header  = 16
	cmdProxy  = 0x21 // version 2, PROXY
	cmdLocal  = 0x20 // version 2, LOCAL
	famTCP4   = 0x11
	famTCP6   = 0x21
	lenTCP4   = 12
	lenTCP6   = 36
	famUnspec = 0x00
)

// Header is what a PROXY header says about a connection.
type Header struct {
	Version Version
	// Local is true for a v2 LOCAL header or a v1 "UNKNOWN" one: the connection was made
	// by the proxy itself (a health check), and the addresses carry no meaning.
	Local bool
	// Source is the client's address, Destination the address the client connected to.
	Source, Destination netip.AddrPort
}

// Append appends the header for a TCP connection from src to dst to b. IPv4-mapped IPv6
// addresses are written as IPv4; both addresses must then be of one family.
func Append(b []byte, v Version, src, dst netip.AddrPort) ([]byte, error) {
	src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return nil, fmt.Errorf("writing a PROXY header for %v -> %v: invalid address", src, dst)
	}
	if src.Addr().Is4() != dst.Addr().Is4() {
		return nil, fmt.Errorf("writing a PROXY header for %v -> %v: address families differ", src, dst)
	}
	switch v {
	case V1:
		proto := "TCP6"
		if src.Addr().Is4() {
			proto = "TCP4"
		}
		b = append(b, "PROXY "...)
		b = append(b, proto...)
		b = append(b, ' ')
		b = src.Addr().AppendTo(b)
		b = append(b, ' ')
		b = dst.Addr().AppendTo(b)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(src.Port()), 10)
		b = append(b, ' ')
		b = strconv.AppendUint(b, uint64(dst.Port()), 10)
		return append(b, "\r\n"...), nil
	case V2:
		b = append(b, sigV2...)
		if src.Addr().Is4() {
			b = append(b, cmdProxy, famTCP4, 0, lenTCP4)
		} else {
			b = append(b, cmdProxy, famTCP6, 0, lenTCP6)
		}
		b = append(b, src.Addr().AsSlice()...)
		b = append(b, dst.Addr().AsSlice()...)
		b = binary.BigEndian.AppendUint16(b, src.Port())
		return binary.BigEndian.AppendUint16(b, dst.Port()), nil
	}
	return nil, fmt.Errorf("writing a PROXY header: unknown version %d", v)
}

// Parse reads a header at the start of data and returns it with its length. It returns
// ErrShort when data may be the beginning of a valid header, and an error wrapping
// ErrInvalid when it cannot be one. TLVs of v2 headers are skipped.
func Parse(data []byte) (Header, int, error) {
	if len(data) >= len(sigV2) && bytes.Equal(data[:len(sigV2)], sigV2) {
		return parseV2(data)
	}
	if bytes.HasPrefix(data, []byte("PROXY ")) {
		return parseV1(data)
	}
	if bytes.HasPrefix(sigV2, data) || bytes.HasPrefix([]byte("PROXY "), data) {
		return Header{}, 0, ErrShort
	}
	return Header{}, 0, fmt.Errorf("%w: no PROXY signature", ErrInvalid)
}

func parseV1(data []byte) (Header, int, error) {
	end := bytes.Index(data, []byte("\r\n"))
	if end < 0 {
		if len(data) >= maxV1 {
			return Header{}, 0, fmt.Errorf("%w: v1 line longer than %d bytes", ErrInvalid, maxV1)
		}
		return Header{}, 0, ErrShort
	}
	if end+2 > maxV1 {
		return Header{}, 0, fmt.Errorf("%w: v1 line longer than %d bytes", ErrInvalid, maxV1)
	}
	fields := bytes.Split(data[:end], []byte(" "))
	h := Header{Version: V1}
	if len(fields) >= 2 && string(fields[1]) == "UNKNOWN" {
		h.Local = true
		return h, end + 2, nil
	}
	if len(fields) != 6 {
		return Header{}, 0, fmt.Errorf("%w: v1 line has %d fields, want 6", ErrInvalid, len(fields))
	}
	var want4 bool
	switch string(fields[1]) {
	case "TCP4":
		want4 = true
	case "TCP6":
	default:
		return Header{}, 0, fmt.Errorf("%w: v1 protocol %q", ErrInvalid, fields[1])
	}
	addr := func(a, p []byte) (netip.AddrPort, error) {
		ip, err := netip.ParseAddr(string(a))
		if err != nil || ip.Is4() != want4 || ip.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("%w: v1 address %q", ErrInvalid, a)
		}
		// Ports are decimal without leading zeros.
		port, err := strconv.ParseUint(string(p), 10, 16)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return netip.AddrPort{}, fmt.Errorf("%w: v1 port %q", ErrInvalid, p)
		}
		return netip.AddrPortFrom(ip, uint16(port)), nil
	}
	var err error
	if h.Source, err = addr(fields[2], fields[4]); err != nil {
		return Header{}, 0, err
	}
	if h.Destination, err = addr(fields[3], fields[5]); err != nil {
		return Header{}, 0, err
	}
	return h, end + 2, nil
}

func parseV2(data []byte) (Header, int, error) {
	if len(data) < v2Header {
		return Header{}, 0, ErrShort
	}
	cmd, fam := data[12], data[13]
	n := v2Header + int(binary.BigEndian.Uint16(data[14:16]))
	if len(data) < n {
		return Header{}, 0, ErrShort
	}
	body := data[v2Header:n]
	h := Header{Version: V2}
	switch cmd {
	case cmdLocal:
		h.Local = true
		return h, n, nil
	case cmdProxy:
	default:
		return Header{}, 0, fmt.Errorf("%w: v2 version/command byte %#x", ErrInvalid, cmd)
	}
	switch fam {
	case famTCP4:
		if len(body) < lenTCP4 {
			return Header{}, 0, fmt.Errorf("%w: v2 TCP4 block of %d bytes, want %d", ErrInvalid, len(body), lenTCP4)
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
	case famTCP6:
		if len(body) < lenTCP6 {
			return Header{}, 0, fmt.Errorf("%w: v2 TCP6 block of %d bytes, want %d", ErrInvalid, len(body), lenTCP6)
		}
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
		h.Destination = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
	case famUnspec:
		h.Local = true
	default:
		return Header{}, 0, fmt.Errorf("%w: v2 family/protocol byte %#x", ErrInvalid, fam)
	}
	return h, n, nil
}
