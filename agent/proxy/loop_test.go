package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

// loopFixture runs an event loop over Unix socket pairs, so the loop's logic is tested
// without root: client <-> [loop] <-> backend.
type loopFixture struct {
	s       *Server
	lp      *loop
	c       *conn
	client  *net.UnixConn // the client's end
	backend *net.UnixConn // the backend's end
}

func socketPair(t *testing.T) (ours int, theirs *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return fds[0], c.(*net.UnixConn)
}

func newLoopFixture(t *testing.T) *loopFixture {
	t.Helper()
	s := New(testr.New(t))
	t.Cleanup(func() { _ = s.Shutdown(t.Context()) })
	c, client, backend := handOver(t, newListener(s, "loop"), s.loops[0])
	c.loop.post(command{p: c.pair, kind: cmdSetup})
	return &loopFixture{s: s, lp: c.loop, c: c, client: client, backend: backend}
}

// handOver makes a connection over socket pairs, both sides connected, handed to lp as
// serve hands one over, but with its setup not yet posted.
func handOver(t *testing.T, l *listener, lp *loop) (c *conn, client, backend *net.UnixConn) {
	t.Helper()
	cfd, client := socketPair(t)
	bfd, backend := socketPair(t)
	c = &conn{l: l, clientFD: -1, start: time.Now()}
	l.active.Add(1)
	l.s.wg.Add(1)
	l.s.register(c)
	c.pair = &pair{c: c, fd: [2]int{cfd, bfd}}
	c.loop = lp
	return c, client, backend
}

// relayed checks that what the client writes reaches the backend.
func relayed(t *testing.T, client, backend *net.UnixConn, msg string) {
	t.Helper()
	_ = backend.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(client, msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(backend, buf); err != nil || string(buf) != msg {
		t.Fatalf("backend read %q, %v; want %q", buf, err, msg)
	}
}

// closed waits until the loop has completed the connection.
func (f *loopFixture) closed(t *testing.T) {
	t.Helper()
	waitFor(t, "the loop to complete the connection", func() bool { return len(f.s.snapshotConns()) == 0 })
}

func TestLoopEchoAndHalfClose(t *testing.T) {
	f := newLoopFixture(t)
	for _, c := range []*net.UnixConn{f.client, f.backend} {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	if _, err := io.WriteString(f.client, "request"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 7)
	if _, err := io.ReadFull(f.backend, buf); err != nil || string(buf) != "request" {
		t.Fatalf("backend read %q, %v", buf, err)
	}
	// The client shuts its write side; the backend sees the end and still answers.
	if err := f.client.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := f.backend.Read(buf); err != io.EOF {
		t.Fatalf("backend read after the client's FIN = %d, %v; want EOF", n, err)
	}
	if _, err := io.WriteString(f.backend, "reply"); err != nil {
		t.Fatal(err)
	}
	if err := f.backend.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(f.client)
	if err != nil || string(got) != "reply" {
		t.Fatalf("client read %q, %v; want the reply, then EOF", got, err)
	}
	f.closed(t)
	if f.c.up.Load() != 7 || f.c.down.Load() != 5 || f.c.reason != endClosed {
		t.Errorf("counted %d up, %d down, end %v; want 7, 5, closed", f.c.up.Load(), f.c.down.Load(), f.c.reason)
	}
}

// TestLoopBackpressure pushes more than the socket buffers hold at a slow reader, so
// writes come up short and the loop must wait for EPOLLOUT, and checks the bytes.
func TestLoopBackpressure(t *testing.T) {
	f := newLoopFixture(t)
	const size = 16 << 20
	data := make([]byte, size)
	rnd := rand.NewChaCha8([32]byte{7})
	_, _ = rnd.Read(data)
	go func() {
		_, _ = f.client.Write(data)
		_ = f.client.CloseWrite()
	}()
	_ = f.backend.SetDeadline(time.Now().Add(30 * time.Second))
	h := sha256.New()
	buf := make([]byte, 4096)
	var n int
	for {
		k, err := f.backend.Read(buf)
		h.Write(buf[:k])
		n += k
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n < 1<<20 {
			time.Sleep(time.Millisecond) // slow at first, so the loop's writes back up
		}
	}
	want := sha256.Sum256(data)
	if n != size || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("backend got %d bytes with sha256 %x, want %d with %x", n, h.Sum(nil), size, want)
	}
}

func TestLoopAbortAndReset(t *testing.T) {
	t.Run("abort", func(t *testing.T) {
		f := newLoopFixture(t)
		_ = f.client.SetDeadline(time.Now().Add(10 * time.Second))
		f.c.abort(endIdle)
		if _, err := f.client.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("client read after abort = %v, want EOF", err)
		}
		f.closed(t)
		if f.c.reason != endIdle {
			t.Errorf("end reason %v, want idleTimeout", f.c.reason)
		}
	})
	t.Run("peer closes with data unread", func(t *testing.T) {
		f := newLoopFixture(t)
		_ = f.client.SetDeadline(time.Now().Add(10 * time.Second))
		// Unread data makes the close a reset for the loop's write.
		if _, err := io.WriteString(f.client, "x"); err != nil {
			t.Fatal(err)
		}
		f.backend.Close()
		// The loop may have closed the pair already.
		if _, err := io.WriteString(f.client, "more"); err != nil && !isReset(err) {
			t.Fatal(err)
		}
		if _, err := io.ReadAll(f.client); err != nil && !isReset(err) {
			t.Fatalf("client read after the backend went away: %v", err)
		}
		f.closed(t)
	})
	t.Run("shutdown closes what is left", func(t *testing.T) {
		f := newLoopFixture(t)
		_ = f.client.SetDeadline(time.Now().Add(10 * time.Second))
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if err := f.s.Shutdown(ctx); err == nil {
			t.Errorf("Shutdown with an open connection returned nil")
		}
		if _, err := f.client.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("client read after shutdown = %v, want EOF", err)
		}
	})
}

// TestLoopAbortBeforeSetup has a connection's abort reach its loop before its setup, as
// when a drain aborts a connection while serve hands it over. The loop must close that
// connection, once, without touching the slot it never had: it used to free slot 0
// (panicking on an empty loop, or dropping the live pair there) and then register the
// closed sockets.
func TestLoopAbortBeforeSetup(t *testing.T) {
	t.Run("another pair in slot 0", func(t *testing.T) {
		f := newLoopFixture(t)
		relayed(t, f.client, f.backend, "one")
		c2, client2, _ := handOver(t, f.c.l, f.lp)
		c2.abort(endDrained)
		f.lp.post(command{p: c2.pair, kind: cmdSetup})
		_ = client2.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := client2.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("aborted client read = %v, want EOF", err)
		}
		// Commands are handled in order: once a pair set up after it proxies, the loop
		// has handled the aborted one's setup too.
		c3, client3, backend3 := handOver(t, f.c.l, f.lp)
		f.lp.post(command{p: c3.pair, kind: cmdSetup})
		relayed(t, client3, backend3, "three")
		relayed(t, f.client, f.backend, "two")
		if n := len(f.s.snapshotConns()); n != 2 {
			t.Errorf("%d connections open, want 2", n)
		}
		c2.mu.Lock()
		reason := c2.reason
		c2.mu.Unlock()
		if reason != endDrained {
			t.Errorf("aborted connection's end reason %v, want drained", reason)
		}
	})
	t.Run("empty loop", func(t *testing.T) {
		s := New(testr.New(t))
		t.Cleanup(func() {
			if !t.Failed() { // else the connection may never end, and Shutdown wait for it
				_ = s.Shutdown(t.Context())
			}
		})
		lp := stoppedLoop(t, s.newSocket) // the test handles its commands
		c, client, _ := handOver(t, newListener(s, "loop"), lp)
		c.abort(endDrained)
		lp.post(command{p: c.pair, kind: cmdSetup})
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("the loop panicked: %v", r)
				}
			}()
			lp.commands()
		}()
		_ = client.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := client.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("aborted client read = %v, want EOF", err)
		}
		if len(lp.pairs) != 0 || len(lp.free) != 0 {
			t.Errorf("loop holds %d slots, %d free; want none", len(lp.pairs), len(lp.free))
		}
		if n := len(s.snapshotConns()); n != 0 {
			t.Errorf("%d connections open, want 0", n)
		}
	})
}

// connectFixture drives an event loop by hand, with no goroutine running it, while the
// loop connects a client (one end of a socket pair) to TCP backends on the loopback: the
// test decides what each epoll batch holds and when it is handled.
type connectFixture struct {
	s      *Server
	l      *listener
	lp     *loop
	p      *pair
	client *net.UnixConn
}

// stoppedLoop is a loop that does not run: the test hands it its commands and
// events. Its pairs are closed at the end, before the server's shutdown (registered
// earlier), which waits for their connections.
func stoppedLoop(t *testing.T, socket socketFunc) *loop {
	t.Helper()
	lp, err := newLoop(socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range lp.pairs {
			if p != nil {
				lp.finish(p, endShutdown)
			}
		}
		_ = lp.file.Close()
		unix.Close(lp.wake)
	})
	return lp
}

// newConnectFixture starts connecting a client to backends, tried in order.
func newConnectFixture(t *testing.T, backends ...netip.AddrPort) *connectFixture {
	t.Helper()
	s := New(testr.New(t))
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	lp := stoppedLoop(t, unix.Socket)
	l := newListener(s, "connect")
	lc := ListenerConfig{Name: "connect", Addrs: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:1")}}
	for _, b := range backends {
		lc.Backends = append(lc.Backends, Backend{Addr: b, Weight: 1})
	}
	s.mu.Lock()
	l.publish(lc, lc.Backends, false)
	s.mu.Unlock()
	cfd, client := socketPair(t)
	c := &conn{l: l, clientFD: -1, start: time.Now()}
	l.active.Add(1)
	s.wg.Add(1)
	s.register(c)
	p := &pair{c: c, fd: [2]int{cfd, -1}, setup: &setup{plan: l.plan.Load()}}
	c.pair, c.loop = p, lp
	lp.add(p)
	lp.startSetup(p)
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	return &connectFixture{s: s, l: l, lp: lp, p: p, client: client}
}

// harvest waits for the loop's next batch of events, without handling it.
func (f *connectFixture) harvest(t *testing.T) []unix.EpollEvent {
	t.Helper()
	for {
		n, err := unix.EpollWait(f.lp.epfd, f.lp.events, 10_000)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			t.Fatalf("waiting for events: %d, %v", n, err)
		}
		return f.lp.events[:n]
	}
}

// waitBackend waits until the backend socket's state shows all of events (poll(2)
// flags), which leaves epoll's edges alone.
func (f *connectFixture) waitBackend(t *testing.T, events int16) {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(f.p.fd[1]), Events: events}}
	waitFor(t, "the backend socket's state", func() bool {
		_, err := unix.Poll(fds, 100)
		return err == nil && fds[0].Revents&events == events
	})
}

func loopbackBackend(t *testing.T) (*net.TCPListener, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener), ln.Addr().(*net.TCPAddr).AddrPort()
}

// serveLoopback is a loopback backend that runs handle on each connection it
// accepts, until the test ends.
func serveLoopback(t *testing.T, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, addr := loopbackBackend(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return addr
}

// TestConnectEventCarriesBanner makes the event that completes the backend connect also
// carry the backend's first bytes (and, in one case, its FIN), as it does when a
// server-first protocol's banner arrives before the loop looks: the client must get the
// banner without sending anything.
func TestConnectEventCarriesBanner(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close bool
	}{{"banner", false}, {"banner and close", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ln, addr := loopbackBackend(t)
			f := newConnectFixture(t, addr)
			bc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer bc.Close()
			if _, err := io.WriteString(bc, "220 ready\r\n"); err != nil {
				t.Fatal(err)
			}
			want := int16(unix.POLLIN)
			if tc.close {
				bc.Close()
				want |= unix.POLLRDHUP
			}
			f.waitBackend(t, want)
			f.lp.handle(f.harvest(t))
			if f.p.setup != nil {
				t.Fatal("still connecting after the connect completed")
			}
			buf := make([]byte, 11)
			if _, err := io.ReadFull(f.client, buf); err != nil || string(buf) != "220 ready\r\n" {
				t.Fatalf("client read %q, %v; want the banner", buf, err)
			}
			if tc.close {
				if n, err := f.client.Read(buf); err != io.EOF {
					t.Fatalf("client read after the banner = %d, %v; want EOF", n, err)
				}
			}
		})
	}
}

// TestStaleEventOfRetriedConnect hands the loop an error event of a connect attempt that
// a timeout has retried in the same batch: the event must not count against the new
// attempt, whose backend is healthy.
func TestStaleEventOfRetriedConnect(t *testing.T) {
	refusing, refusingAddr := loopbackBackend(t)
	refusing.Close() // connects to it are refused
	ln, addr := loopbackBackend(t)
	f := newConnectFixture(t, refusingAddr, addr)
	if f.p.setup.be.addr != refusingAddr {
		t.Fatalf("first attempt to %v, want %v", f.p.setup.be.addr, refusingAddr)
	}
	f.waitBackend(t, unix.POLLERR)
	batch := f.harvest(t) // holds the refusal of attempt 1
	// The timeout of attempt 1, earlier in the same batch, retries on the healthy backend.
	f.lp.timeout(f.p, 1)
	if f.p.setup == nil || f.p.setup.be == nil || f.p.setup.be.addr != addr {
		t.Fatalf("after the timeout, not connecting to %v", addr)
	}
	f.lp.handle(batch)
	if f.p.closed || f.p.setup == nil || f.p.setup.be.addr != addr {
		t.Fatalf("a stale event of attempt 1 ended attempt 2 (closed %v)", f.p.closed)
	}
	for _, reason := range []string{"refused", "timeout", "unreachable", "other"} {
		if n := testutil.ToFloat64(f.s.metrics.connectErrs.WithLabelValues("connect", addr.String(), reason)); n != 0 {
			t.Errorf("healthy backend blamed: %v %s connect errors", n, reason)
		}
	}
	// Attempt 2 completes on its own event.
	bc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	f.waitBackend(t, unix.POLLOUT)
	for f.p.setup != nil && !f.p.closed {
		f.lp.handle(f.harvest(t))
	}
	if f.p.closed {
		t.Fatal("connection closed instead of connected")
	}
	if _, err := io.WriteString(f.client, "hi"); err != nil {
		t.Fatal(err)
	}
	f.lp.handle(f.harvest(t))
	buf := make([]byte, 2)
	_ = bc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(bc, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("backend read %q, %v", buf, err)
	}
}
