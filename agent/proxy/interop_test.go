package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// TestProxyProtocolParsedByNginx sends PROXY v1 and v2 headers to an nginx backend whose
// listener expects them, and checks that nginx reports the client's address and the
// virtual IP it connected to: over IPv4, over IPv6, and from an IPv6 client through an
// IPv6 virtual IP to an IPv4 backend, whose header carries addresses of the other family.
func TestProxyProtocolParsedByNginx(t *testing.T) {
	dir := t.TempDir() // before the lab, so that it is removed after nginx has stopped
	tl := newTestLab(t, 1)
	nginx := needCommand(t, "nginx", "nginx")
	withVIP(t, tl)
	const (
		clientIP6  = "fd00:198:18::1"
		vipIP6     = "fd00:198:18::100"
		backendIP6 = "fd00:198:18::11"
	)
	for _, a := range []struct {
		h    *netlab.Host
		cidr string
	}{{tl.client, clientIP6 + "/64"}, {tl.proxy, "fd00:198:18::2/64"}, {tl.proxy, vipIP6 + "/128"}, {tl.backends[0], backendIP6 + "/64"}} {
		if err := a.h.AddAddr(a.cidr); err != nil {
			t.Fatal(err)
		}
	}
	backend4 := backendAddr(1, 8080)
	backend6 := netip.AddrPortFrom(netip.MustParseAddr(backendIP6), 8080)
	conf := filepath.Join(dir, "nginx.conf")
	text := fmt.Sprintf(`user root;
worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 128; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[2]s proxy_protocol;
		listen %[3]s proxy_protocol;
		default_type text/plain;
		location / { return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n"; }
	}
}
`, dir, backend4, backend6)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	proc, err := tl.backends[0].Start(func(line string) { t.Logf("nginx: %s", line) }, nginx, "-p", dir, "-c", conf, "-e", "stderr")
	if err != nil {
		t.Fatal(err)
	}
	var probe net.Conn
	waitFor(t, "nginx to listen", func() bool {
		select {
		case <-proc.Done():
			t.Fatalf("nginx exited: %v: %s", proc.Err(), proc.Output())
		default:
		}
		err := tl.proxy.Do(func() (err error) {
			probe, err = net.DialTimeout("tcp", backend6.String(), time.Second)
			return err
		})
		if err == nil {
			probe.Close()
		}
		return err == nil
	})

	for _, tt := range []struct {
		name            string
		version         ProxyProtocol
		vip             netip.AddrPort
		backend         netip.AddrPort
		client, vipAddr string // as nginx prints them
	}{
		{"v1", ProxyProtocolV1, vip(80), backend4, clientIP, vipIP},
		{"v2", ProxyProtocolV2, vip(81), backend4, clientIP, vipIP},
		{"v1 over IPv6", ProxyProtocolV1, netip.MustParseAddrPort("[" + vipIP6 + "]:82"), backend6, clientIP6, vipIP6},
		{"v2 over IPv6", ProxyProtocolV2, netip.MustParseAddrPort("[" + vipIP6 + "]:83"), backend6, clientIP6, vipIP6},
		{"v2 from IPv6 to an IPv4 backend", ProxyProtocolV2, netip.MustParseAddrPort("[" + vipIP6 + "]:84"), backend4, clientIP6, vipIP6},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lc := listenerCfg("pp", int(tt.vip.Port()), tt.backend)
			lc.Addrs = []netip.AddrPort{tt.vip}
			lc.ProxyProtocol = tt.version
			startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}})
			c := mustDial(t, tl, tt.vip)
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: lbpair\r\nConnection: close\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := io.ReadAll(bufio.NewReader(c))
			if err != nil {
				t.Fatal(err)
			}
			local := c.LocalAddr().(*net.TCPAddr)
			want := fmt.Sprintf("%s %d %s %d\n", tt.client, local.Port, tt.vipAddr, tt.vip.Port())
			if !strings.HasPrefix(string(resp), "HTTP/1.1 200") || !strings.HasSuffix(string(resp), "\r\n\r\n"+want) {
				t.Errorf("nginx answered %q; want a 200 with body %q", resp, want)
			}
		})
	}
}
