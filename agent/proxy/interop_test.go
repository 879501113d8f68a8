package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestProxyProtocolParsedByNginx sends PROXY v1 and v2 headers to an nginx backend whose
// listener expects them, and checks that nginx reports the client's address and the
// virtual IP it connected to.
func TestProxyProtocolParsedByNginx(t *testing.T) {
	dir := t.TempDir() // before the lab, so that it is removed after nginx has stopped
	tl := newTestLab(t, 1)
	nginx := needCommand(t, "nginx", "nginx")
	withVIP(t, tl)
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
		default_type text/plain;
		location / { return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n"; }
	}
}
`, dir, backendAddr(1, 8080))
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
			probe, err = net.DialTimeout("tcp", backendAddr(1, 8080).String(), time.Second)
			return err
		})
		if err == nil {
			probe.Close()
		}
		return err == nil
	})

	for _, tt := range []struct {
		name    string
		version ProxyProtocol
		port    int
	}{{"v1", ProxyProtocolV1, 80}, {"v2", ProxyProtocolV2, 81}} {
		t.Run(tt.name, func(t *testing.T) {
			lc := listenerCfg("pp-"+tt.name, tt.port, backendAddr(1, 8080))
			lc.ProxyProtocol = tt.version
			startProxy(t, tl, Config{Listeners: []ListenerConfig{lc}})
			c := mustDial(t, tl, vip(tt.port))
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: lbpair\r\nConnection: close\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := io.ReadAll(bufio.NewReader(c))
			if err != nil {
				t.Fatal(err)
			}
			local := c.LocalAddr().(*net.TCPAddr)
			want := fmt.Sprintf("%s %d %s %d\n", clientIP, local.Port, vipIP, tt.port)
			if !strings.HasPrefix(string(resp), "HTTP/1.1 200") || !strings.HasSuffix(string(resp), "\r\n\r\n"+want) {
				t.Errorf("nginx answered %q; want a 200 with body %q", resp, want)
			}
		})
	}
}
