package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// The lab: a client, the proxy and backends on one bridge.
const (
	clientIP  = "198.18.0.1"
	proxyIP   = "198.18.0.2"
	vipIP     = "198.18.0.100"
	backendIP = "198.18.0.1%d" // backend i (1-based) is 198.18.0.1i
)

type testLab struct {
	lab      *netlab.Lab
	client   *netlab.Host
	proxy    *netlab.Host
	backends []*netlab.Host
}

func newTestLab(t *testing.T, backends int) *testLab {
	t.Helper()
	lab := netlab.NewT(t)
	tl := &testLab{
		lab:    lab,
		client: netlab.MustAddHost(t, lab, "client", clientIP+"/24"),
		proxy:  netlab.MustAddHost(t, lab, "proxy", proxyIP+"/24"),
	}
	for i := 1; i <= backends; i++ {
		ip := fmt.Sprintf(backendIP, i)
		tl.backends = append(tl.backends, netlab.MustAddHost(t, lab, fmt.Sprintf("be%d", i), ip+"/24"))
	}
	return tl
}

// echoLab is a lab whose backends echo on port 8080, with the virtual IP on the proxy
// host, as on the master.
func echoLab(t *testing.T, backends int) *testLab {
	t.Helper()
	tl := newTestLab(t, backends)
	for i, h := range tl.backends {
		serve(t, h, backendAddr(i+1, 8080), echo)
	}
	withVIP(t, tl)
	return tl
}

func backendAddr(i, port int) netip.AddrPort {
	return netip.MustParseAddrPort(fmt.Sprintf(backendIP+":%d", i, port))
}

func vip(port int) netip.AddrPort { return netip.MustParseAddrPort(fmt.Sprintf("%s:%d", vipIP, port)) }

// nsDialer dials from inside a lab host, as the proxy would on a real node.
type nsDialer struct{ h *netlab.Host }

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := d.h.Do(func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// healthRecorder is a HealthReporter that keeps every report.
type healthRecorder struct {
	mu      sync.Mutex
	reports []healthReport
	changed chan struct{}
}

type healthReport struct {
	check   string
	healthy bool
	reason  string
}

func newHealthRecorder() *healthRecorder { return &healthRecorder{changed: make(chan struct{}, 1)} }

func (h *healthRecorder) SetHealth(check string, healthy bool, reason string) {
	h.mu.Lock()
	h.reports = append(h.reports, healthReport{check, healthy, reason})
	h.mu.Unlock()
	select {
	case h.changed <- struct{}{}:
	default:
	}
}

func (h *healthRecorder) last() (healthReport, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reports) == 0 {
		return healthReport{}, false
	}
	return h.reports[len(h.reports)-1], true
}

// wait waits until the last report says healthy == want, and returns it.
func (h *healthRecorder) wait(t *testing.T, want bool) healthReport {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		if r, ok := h.last(); ok && r.healthy == want {
			return r
		}
		select {
		case <-h.changed:
		case <-deadline:
			r, _ := h.last()
			t.Fatalf("health never became %v; last report %+v", want, r)
		}
	}
}

// startProxy runs a server in the lab's proxy host with cfg, and shuts it down at the
// end of the test.
func startProxy(t *testing.T, tl *testLab, cfg Config, opts ...Option) *Server {
	t.Helper()
	inNS := func(s *Server) {
		s.newSocket = func(domain, typ, proto int) (fd int, err error) {
			err = tl.proxy.Do(func() (err error) { fd, err = unix.Socket(domain, typ, proto); return err })
			return fd, err
		}
	}
	opts = append([]Option{WithDialer(nsDialer{tl.proxy}), inNS}, opts...)
	s := New(testr.New(t), opts...)
	if err := apply(tl, s, cfg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// apply calls Apply inside the proxy host, where the listening sockets must be made.
func apply(tl *testLab, s *Server, cfg Config) error {
	return tl.proxy.Do(func() error { return s.Apply(cfg) })
}

// testServer is an in-process backend: handler runs for each connection.
type testServer struct {
	ln      net.Listener
	handler func(net.Conn)
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	served  int
	wg      sync.WaitGroup
}

// serve starts a backend on addr inside host h; it stops at the end of the test.
func serve(t *testing.T, h *netlab.Host, addr netip.AddrPort, handler func(net.Conn)) *testServer {
	t.Helper()
	ts := &testServer{handler: handler, conns: map[net.Conn]struct{}{}}
	if err := h.Do(func() (err error) {
		ts.ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatalf("backend listening on %v: %v", addr, err)
	}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			c, err := ts.ln.Accept()
			if err != nil {
				return
			}
			ts.mu.Lock()
			ts.conns[c] = struct{}{}
			ts.served++
			ts.mu.Unlock()
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				handler(c)
				_ = c.Close()
				ts.mu.Lock()
				delete(ts.conns, c)
				ts.mu.Unlock()
			}()
		}
	}()
	t.Cleanup(ts.kill)
	return ts
}

// kill stops the backend as a crash would: no more accepts, open connections reset.
func (ts *testServer) kill() {
	_ = ts.ln.Close()
	ts.mu.Lock()
	for c := range ts.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	ts.mu.Unlock()
	ts.wg.Wait()
}

func (ts *testServer) count() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.served
}

// echo copies what it reads back, and half-closes when the client does. It copies
// through a buffer: io.Copy between sockets would splice through a pipe, three
// descriptors per connection, too many for the 10,000-connection test.
func echo(c net.Conn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			break
		}
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// dial connects from the lab's client host.
func dial(tl *testLab, addr netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	err := tl.client.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// mustDial connects from the lab's client host with a generous deadline, and closes the
// connection at the end of the test.
func mustDial(t *testing.T, tl *testLab, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := dial(tl, addr)
	if err != nil {
		t.Fatalf("connecting to %v: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	return c
}

// roundTrip sends msg on a new connection to addr and checks that it comes back.
func roundTrip(tl *testLab, addr netip.AddrPort, msg string) error {
	c, err := dial(tl, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return exchange(c, msg)
}

// exchange writes msg and reads the echo.
func exchange(c net.Conn, msg string) error {
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// needCommand finds a command from a Debian package. Without it the test skips, except in
// CI, where hack/install-lab-deps.sh must have installed it and its absence fails.
func needCommand(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	// Daemons live in /usr/sbin, which a non-login PATH may lack.
	if _, err := os.Stat("/usr/sbin/" + name); err == nil {
		return "/usr/sbin/" + name
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (Debian package %s) not found; run hack/install-lab-deps.sh", name, pkg)
	}
	t.Skipf("skipping: %s (Debian package %s) not found; run hack/install-lab-deps.sh", name, pkg)
	return ""
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// isRefused reports whether err is how a refused proxied connection looks to a client:
// a reset or an end of stream before any reply.
func isRefused(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		isReset(err)
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
