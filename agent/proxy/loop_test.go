package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
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
	l := newListener(s, "loop")
	cfd, client := socketPair(t)
	bfd, backend := socketPair(t)
	c := &conn{l: l, clientFD: -1, start: time.Now()}
	l.active.Add(1)
	s.wg.Add(1)
	s.register(c)
	c.pair = &pair{c: c, fd: [2]int{cfd, bfd}}
	c.loop = s.loops[0]
	c.loop.post(command{p: c.pair, kind: cmdSetup})
	return &loopFixture{s: s, lp: c.loop, c: c, client: client, backend: backend}
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
		if _, err := io.WriteString(f.client, "more"); err != nil {
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
