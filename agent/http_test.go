package agent

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpair/lbpair/agent/proxy"
	"github.com/lbpair/lbpair/agent/vrrp"
)

// TestHealthAndReadiness: /healthz fails only when the router failed; /readyz also
// while no router runs, until the router has joined the group, while it is in Fault and while a listener
// is down, and each failure says why.
func TestHealthAndReadiness(t *testing.T) {
	up := []proxy.ListenerStatus{{Name: "http", Listening: true}, {Name: "https", Listening: true}}
	for _, tt := range []struct {
		name                string
		st                  Status
		wantHealth, wantRdy string // "" is ok, else a part of the 503's body
	}{
		{"backup, listeners up", Status{Running: true, VRRP: vrrp.Status{State: vrrp.Backup}, Ports: up}, "", ""},
		{"master, listeners up", Status{Running: true, VRRP: vrrp.Status{State: vrrp.Master}, Ports: up}, "", ""},
		{"router failed", Status{Err: errors.New("no such interface"), Ports: up}, "VRRP router failed: no such interface", "VRRP router failed"},
		{"router not started", Status{Ports: up}, "", "not running"},
		{"not joined yet", Status{Running: true, VRRP: vrrp.Status{State: vrrp.Init}, Ports: up}, "", "has not joined the group"},
		{"fault", Status{Running: true, VRRP: vrrp.Status{State: vrrp.Fault, Reason: "interface eth0 is down"}, Ports: up}, "", "VRRP router in Fault: interface eth0 is down"},
		{"a listener down", Status{Running: true, VRRP: vrrp.Status{State: vrrp.Backup}, Ports: []proxy.ListenerStatus{{Name: "http", Listening: true}, {Name: "https"}}}, "", "listeners not up: https"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, c := range []struct {
				what string
				err  error
				want string
			}{{"healthz", healthy(tt.st), tt.wantHealth}, {"readyz", ready(tt.st), tt.wantRdy}} {
				w := httptest.NewRecorder()
				writeCheck(w, c.err)
				body := w.Body.String()
				switch {
				case c.want == "" && (w.Code != http.StatusOK || body != "ok\n"):
					t.Errorf("%s: %d %q, want 200 ok", c.what, w.Code, body)
				case c.want != "" && (w.Code != http.StatusServiceUnavailable || !strings.Contains(body, c.want)):
					t.Errorf("%s: %d %q, want 503 saying %q", c.what, w.Code, body, c.want)
				}
			}
		})
	}
}

// TestPeerAddresses: the internal addresses of every other node, of both families.
func TestPeerAddresses(t *testing.T) {
	node := func(name string, addrs ...corev1.NodeAddress) corev1.Node {
		return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Status: corev1.NodeStatus{Addresses: addrs}}
	}
	internal := func(a string) corev1.NodeAddress { return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a} }
	nodes := []corev1.Node{
		node("lb1", internal("198.18.0.11")),
		node("lb2", internal("198.18.0.12"), internal("fd00:198:18::12"), corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "198.19.0.12"}, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "lb2"}),
		node("lb3", internal("::ffff:198.18.0.13"), internal("not an address")),
	}
	got := peerAddresses(nodes, "lb1")
	want := []netip.Addr{netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("fd00:198:18::12"), netip.MustParseAddr("198.18.0.13")}
	if !slices.Equal(got, want) {
		t.Errorf("peers of lb1: %v, want %v", got, want)
	}
}

// TestEndpointsNotServedOnTheVirtualIPs: the agent's endpoints answer on the node's
// address but not on a virtual IP the node holds, which a listener on every address
// would otherwise expose to the VIP's clients.
func TestEndpointsNotServedOnTheVirtualIPs(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := NewAgent(logr.Discard(), reg, nil)
	srv, err := serveHealth("127.0.0.1:0", a, reg, logr.Discard())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	get := func() int {
		resp, err := http.Get("http://" + srv.Addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tt := range []struct {
		vips []netip.Addr
		want int
	}{
		{nil, http.StatusOK},
		{[]netip.Addr{netip.MustParseAddr("127.0.0.2")}, http.StatusOK},
		{[]netip.Addr{netip.MustParseAddr("127.0.0.1")}, http.StatusNotFound},
	} {
		a.vips.Store(&tt.vips)
		if got := get(); got != tt.want {
			t.Errorf("GET /metrics on 127.0.0.1 with virtual IPs %v: %d, want %d", tt.vips, got, tt.want)
		}
	}
}

// TestEndpointsDropIdleConnections: the endpoints are open to the node's network, so a
// client that keeps connections open without asking anything must not keep them, nor
// the agent's memory: an idle connection is closed, and one on a virtual IP after its
// answer.
func TestEndpointsDropIdleConnections(t *testing.T) {
	defer func(d time.Duration) { healthIdleTimeout = d }(healthIdleTimeout)
	reg := prometheus.NewRegistry()
	a := NewAgent(logr.Discard(), reg, nil)
	// closedWithin asks once on a kept-alive connection, then waits for the server
	// to close it.
	closedWithin := func(what string, idle time.Duration) {
		t.Helper()
		healthIdleTimeout = idle
		srv, err := serveHealth("127.0.0.1:0", a, reg, logr.Discard())
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		c, err := net.Dial("tcp", srv.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Errorf("%s: the connection stays open: %v", what, err)
		}
	}
	closedWithin("an idle connection", 200*time.Millisecond)
	vips := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	a.vips.Store(&vips)
	closedWithin("a connection on a virtual IP", time.Hour)
}
