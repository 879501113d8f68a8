package proxyproto

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	src4 = netip.MustParseAddrPort("198.18.0.10:51234")
	dst4 = netip.MustParseAddrPort("198.18.0.100:80")
	src6 = netip.MustParseAddrPort("[fd00:198:18::10]:51234")
	dst6 = netip.MustParseAddrPort("[fd00:198:18::100]:443")
)

func TestAppendV1(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
		want     string
	}{
		{"ipv4", src4, dst4, "PROXY TCP4 198.18.0.10 198.18.0.100 51234 80\r\n"},
		{"ipv6", src6, dst6, "PROXY TCP6 fd00:198:18::10 fd00:198:18::100 51234 443\r\n"},
		{"mapped ipv4 unmapped", netip.MustParseAddrPort("[::ffff:198.18.0.10]:1"), netip.MustParseAddrPort("[::ffff:198.18.0.100]:2"),
			"PROXY TCP4 198.18.0.10 198.18.0.100 1 2\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Append(nil, V1, tt.src, tt.dst)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("Append = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAppendV2(t *testing.T) {
	got, err := Append([]byte("x"), V2, src4, dst4)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("x\r\n\r\n\x00\r\nQUIT\n"), 0x21, 0x11, 0, 12,
		198, 18, 0, 10, 198, 18, 0, 100, 0xc8, 0x22, 0, 80)
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Append (-want +got):\n%s", d)
	}
}

func TestAppendErrors(t *testing.T) {
	if _, err := Append(nil, V1, src4, dst6); err == nil {
		t.Error("mixed families accepted")
	}
	if _, err := Append(nil, V2, netip.AddrPort{}, dst4); err == nil {
		t.Error("invalid source accepted")
	}
	if _, err := Append(nil, Version(3), src4, dst4); err == nil {
		t.Error("version 3 accepted")
	}
}

func TestRoundTrip(t *testing.T) {
	for _, v := range []Version{V1, V2} {
		for _, pair := range [][2]netip.AddrPort{{src4, dst4}, {src6, dst6}} {
			b, err := Append(nil, v, pair[0], pair[1])
			if err != nil {
				t.Fatal(err)
			}
			b = append(b, "GET / HTTP/1.1\r\n"...)
			h, n, err := Parse(b)
			if err != nil {
				t.Fatalf("v%d %v: %v", v, pair, err)
			}
			want := Header{Version: v, Source: pair[0], Destination: pair[1]}
			if d := cmp.Diff(want, h, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); d != "" {
				t.Errorf("v%d: header (-want +got):\n%s", v, d)
			}
			if string(b[n:]) != "GET / HTTP/1.1\r\n" {
				t.Errorf("v%d: rest after header = %q", v, b[n:])
			}
			// Every prefix is short, not invalid.
			full, _ := Append(nil, v, pair[0], pair[1])
			for i := range len(full) {
				if _, _, err := Parse(full[:i]); !errors.Is(err, ErrShort) {
					t.Fatalf("v%d: Parse of %d-byte prefix: %v, want ErrShort", v, i, err)
				}
			}
		}
	}
}

func TestParseLocalAndInvalid(t *testing.T) {
	local := append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x20, 0x00, 0, 0)
	if h, n, err := Parse(local); err != nil || !h.Local || n != 16 {
		t.Errorf("v2 LOCAL: %+v %d %v", h, n, err)
	}
	if h, _, err := Parse([]byte("PROXY UNKNOWN\r\n")); err != nil || !h.Local {
		t.Errorf("v1 UNKNOWN: %+v %v", h, err)
	}
	invalid := []string{
		"GET / HTTP/1.1\r\n",
		"PROXY TCP4 198.18.0.1 198.18.0.2 1\r\n",
		"PROXY TCP5 198.18.0.1 198.18.0.2 1 2\r\n",
		"PROXY TCP4 fd00::1 198.18.0.2 1 2\r\n",
		"PROXY TCP4 198.18.0.1 198.18.0.2 01 2\r\n",
		"PROXY TCP4 198.18.0.1 198.18.0.2 1 65536\r\n",
		"PROXY TCP4 198.18.0.1 198.18.0.2 1 2 " + string(make([]byte, 120)),
		"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c000000000000",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04\x00\x00\x00\x00",
		"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\x00",
	}
	for _, s := range invalid {
		if _, _, err := Parse([]byte(s)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, v := range []Version{V1, V2} {
		b, _ := Append(nil, v, src4, dst4)
		f.Add(b)
		b, _ = Append(nil, v, src6, dst6)
		f.Add(b)
	}
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x20, 0x00, 0, 0))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, n, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrShort) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is neither ErrShort nor ErrInvalid", err)
			}
			return
		}
		if n <= 0 || n > len(data) {
			t.Fatalf("length %d out of range for %d bytes", n, len(data))
		}
		if h.Local || h.Source.Addr().Is4In6() || h.Destination.Addr().Is4In6() {
			// Nothing to re-encode, or IPv4-mapped addresses that Append writes as IPv4.
			return
		}
		// What parses writes back the same, up to v2 TLVs and v1 spelling.
		b, err := Append(nil, h.Version, h.Source, h.Destination)
		if err != nil {
			t.Fatalf("re-encoding %+v: %v", h, err)
		}
		h2, _, err := Parse(b)
		if err != nil || h2 != h {
			t.Fatalf("re-parse of %+v = %+v, %v", h, h2, err)
		}
	})
}
