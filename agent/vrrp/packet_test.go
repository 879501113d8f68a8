package vrrp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var (
	src4  = netip.MustParseAddr("198.18.0.11")
	src6  = netip.MustParseAddr("fe80::1")
	vip4  = netip.MustParseAddr("198.18.0.100")
	vip6  = netip.MustParseAddr("fd00:198:18::100")
	cmpIP = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// The vectors' checksums were computed independently of this code (RFC 1071
// sums over the bytes shown, with the pseudo-headers of RFC 5798 5.2.8).
var vectors = []struct {
	name     string
	packet   Packet
	src, dst netip.Addr
	wire     string
}{
	{
		name:   "VRRPv2 with simple-text authentication, as keepalived's auth_type PASS",
		packet: Packet{Version: 2, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{vip4}, AuthType: AuthSimple, Auth: Password("s3cret")},
		src:    src4, dst: GroupIPv4,
		wire: "213364010101" + "7739" + "c6120064" + "7333637265740000",
	},
	{
		name:   "VRRPv3 IPv4, one second",
		packet: Packet{Version: 3, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{vip4}},
		src:    src4, dst: GroupIPv4,
		wire: "3133640100640000"[:12] + "fd43" + "c6120064",
	},
	{
		name:   "VRRPv3 IPv6 from the link-local address",
		packet: Packet{Version: 3, VRID: 51, Priority: 100, Interval: time.Second, Addrs: []netip.Addr{vip6}},
		src:    src6, dst: GroupIPv6,
		wire: "313364010064" + "6c97" + "fd000198001800000000000000000100",
	},
}

func TestEncodeDecodeVectors(t *testing.T) {
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			got, err := v.packet.Encode(v.src, v.dst)
			if err != nil {
				t.Fatal(err)
			}
			if want := mustHex(v.wire); !bytes.Equal(got, want) {
				t.Errorf("Encode = %x, want %x", got, want)
			}
			p, err := Decode(mustHex(v.wire), v.src, v.dst)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(v.packet, *p, cmpIP); diff != "" {
				t.Errorf("Decode (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	v2 := mustHex(vectors[0].wire)
	v3 := mustHex(vectors[1].wire)
	edit := func(b []byte, i int, v byte) []byte {
		c := bytes.Clone(b)
		c[i] = v
		return c
	}
	tests := []struct {
		name string
		b    []byte
		dst  netip.Addr
		want error
	}{
		{"short", v3[:7], GroupIPv4, ErrTooShort},
		{"version 4", edit(v3, 0, 0x41), GroupIPv4, ErrBadVersion},
		{"type 2", edit(v3, 0, 0x32), GroupIPv4, ErrBadType},
		{"count beyond the packet", edit(v3, 3, 2), GroupIPv4, ErrBadLength},
		{"count zero", edit(v3, 3, 0), GroupIPv4, ErrBadLength},
		{"checksum", edit(v3, 7, v3[7]^1), GroupIPv4, ErrBadChecksum},
		{"priority changed in flight", edit(v3, 2, 101), GroupIPv4, ErrBadChecksum},
		{"pseudo-header: another destination", v3, netip.MustParseAddr("198.18.0.12"), ErrBadChecksum},
		{"VRRPv2 over IPv6", v2, GroupIPv6, ErrBadVersion},
		{"VRRPv2 checksum", edit(v2, 6, v2[6]^1), GroupIPv4, ErrBadChecksum},
		{"VRRPv2 missing auth data", v2[:14], GroupIPv4, ErrBadLength},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.b, src4, tt.dst)
			if !errors.Is(err, tt.want) {
				t.Errorf("Decode error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestEncodeRejects(t *testing.T) {
	tests := []Packet{
		{Version: 3, VRID: 1, Interval: 5 * time.Millisecond, Addrs: []netip.Addr{vip4}},
		{Version: 3, VRID: 1, Interval: 41 * time.Second, Addrs: []netip.Addr{vip4}},
		{Version: 2, VRID: 1, Interval: 500 * time.Millisecond, Addrs: []netip.Addr{vip4}},
		{Version: 2, VRID: 1, Interval: time.Second, Addrs: []netip.Addr{vip6}},
		{Version: 3, VRID: 1, Interval: time.Second},
		{Version: 3, VRID: 1, Interval: time.Second, Addrs: []netip.Addr{vip4, vip6}},
		{Version: 1, VRID: 1, Interval: time.Second, Addrs: []netip.Addr{vip4}},
	}
	for _, p := range tests {
		if b, err := p.Encode(src4, GroupIPv4); err == nil {
			t.Errorf("Encode(%+v) = %x, want an error", p, b)
		}
	}
}

func TestRoundTripManyAddresses(t *testing.T) {
	p := Packet{Version: 3, VRID: 255, Priority: 255, Interval: 40950 * time.Millisecond}
	for i := range 16 {
		p.Addrs = append(p.Addrs, netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}))
	}
	b, err := p.Encode(src4, netip.MustParseAddr("198.18.0.12"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b, src4, netip.MustParseAddr("198.18.0.12"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, *got, cmpIP); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func FuzzDecode(f *testing.F) {
	for _, v := range vectors {
		f.Add(mustHex(v.wire), v.dst.Is6())
	}
	f.Fuzz(func(t *testing.T, b []byte, ipv6 bool) {
		src, dst := src4, GroupIPv4
		if ipv6 {
			src, dst = src6, GroupIPv6
		}
		p, err := Decode(b, src, dst)
		if err != nil {
			return
		}
		// Whatever decodes must encode back to the same message.
		out, err := p.Encode(src, dst)
		if err != nil {
			t.Fatalf("decoded %+v does not encode: %v", p, err)
		}
		if n := len(out); !bytes.Equal(out[:4], b[:4]) || !bytes.Equal(out[8:n], b[8:n]) {
			t.Fatalf("re-encoded %x differs from %x", out, b[:n])
		}
	})
}
