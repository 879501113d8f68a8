package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"
)

// loopbackProxy runs a server with one loopback listener in front of backend and
// returns the listener's address.
func loopbackProxy(t *testing.T, backend netip.AddrPort) netip.AddrPort {
	t.Helper()
	s := newTestServer(t)
	lc := loopbackListener(t, "reset", backend.String())
	if err := s.Apply(Config{Listeners: []ListenerConfig{lc}}); err != nil {
		t.Fatal(err)
	}
	return lc.Addrs[0]
}

func dialProxy(t *testing.T, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// A guard against a hang, not a timed assertion.
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn)
}

// TestEarlyAnswerReachesUploadingClient has the backend answer an upload early and
// close with the upload unread (as a server refusing it with a 413 does), which resets
// the connection. The loop's next write of upload data fails; the answer, already in
// the backend socket, must still reach the client. It used to be dropped with the pair.
func TestEarlyAnswerReachesUploadingClient(t *testing.T) {
	answer := bytes.Repeat([]byte("413 "), 750)
	be := serveLoopback(t, func(c net.Conn) {
		defer c.Close() // upload unread: a reset
		if _, err := io.ReadFull(c, make([]byte, 100)); err == nil {
			_, _ = c.Write(answer)
		}
	})
	px := loopbackProxy(t, be)
	for i := range 30 {
		c := dialProxy(t, px)
		go func() {
			chunk := make([]byte, 64<<10)
			for range 64 {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		got, err := io.ReadAll(c)
		if !bytes.Equal(got, answer) || (err != nil && !isReset(err)) {
			t.Fatalf("run %d: client got %d bytes of the %d-byte answer, then %v", i, len(got), len(answer), err)
		}
		c.Close()
	}
}

// TestBackendResetReachesClient resets the backend mid-response: the client must see
// the part sent, then a reset, not an end of stream that passes the part for the whole.
func TestBackendResetReachesClient(t *testing.T) {
	ln, be := loopbackBackend(t)
	reset := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
			return
		}
		_, _ = io.WriteString(c, "partial-response")
		<-reset
		_ = c.(*net.TCPConn).SetLinger(0)
	}()
	c := dialProxy(t, loopbackProxy(t, be))
	if _, err := io.WriteString(c, "hello"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("partial-response"))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("client read %q, %v", buf, err)
	}
	close(reset)
	if n, err := c.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after the backend's reset = %d, %v; want ECONNRESET", n, err)
	}
}

// TestClientResetReachesBackend resets the client mid-upload: the backend must see the
// part sent, then a reset.
func TestClientResetReachesBackend(t *testing.T) {
	ln, be := loopbackBackend(t)
	read := make(chan error, 1)
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			read <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a guard against a hang
		buf := make([]byte, len("partial-upload"))
		_, err = io.ReadFull(c, buf)
		read <- err
		if err != nil {
			return
		}
		_, err = c.Read(buf)
		got <- err
	}()
	c := dialProxy(t, loopbackProxy(t, be))
	if _, err := io.WriteString(c, "partial-upload"); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatalf("backend read the upload: %v", err)
	}
	_ = c.SetLinger(0)
	c.Close()
	if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("backend read after the client's reset: %v; want ECONNRESET", err)
	}
}

// TestLastWordsOfAGoneClient is the mirror of TestEarlyAnswerReachesUploadingClient,
// with the events ordered by hand: the client writes and closes while the backend
// sends, and the loop, handling the backend's event first, fails to write to the
// client. What the client wrote before it went must still reach the backend.
func TestLastWordsOfAGoneClient(t *testing.T) {
	s := New(testr.New(t))
	t.Cleanup(func() {
		if !t.Failed() { // else the connection may never end, and Shutdown wait for it
			_ = s.Shutdown(t.Context())
		}
	})
	lp := stoppedLoop(t, s.newSocket) // the test hands it its events
	c, client, backend := handOver(t, newListener(s, "loop"), lp)
	lp.post(command{p: c.pair, kind: cmdSetup})
	lp.commands()
	p := c.pair
	event := func(side int32, events uint32) unix.EpollEvent {
		return unix.EpollEvent{Events: events, Fd: p.slot, Pad: lp.tag(p, side)}
	}
	lp.handle([]unix.EpollEvent{event(0, unix.EPOLLOUT), event(1, unix.EPOLLOUT)})
	if _, err := io.WriteString(client, "bye"); err != nil {
		t.Fatal(err)
	}
	client.Close()
	if _, err := io.WriteString(backend, "data"); err != nil {
		t.Fatal(err)
	}
	lp.handle([]unix.EpollEvent{event(1, unix.EPOLLIN)})
	if !p.closed {
		t.Fatal("pair still open after both sides ended")
	}
	_ = backend.SetDeadline(time.Now().Add(10 * time.Second))
	if got, err := io.ReadAll(backend); string(got) != "bye" {
		t.Fatalf("backend read %q, %v; want the client's last bytes", got, err)
	}
}
