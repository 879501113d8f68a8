package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socket is one listening address. Its owner is the listener whose configuration its
// connections get; Apply may move a socket from one listener to another.
type socket struct {
	addr   netip.AddrPort
	ln     *net.TCPListener
	owner  atomic.Pointer[listener]
	closed atomic.Bool
	failed atomic.Bool // the accept loop stopped on an error other than close
}

// listen opens a listening socket on addr, which need not be a local address yet: with
// IP_FREEBIND (IPv6: IPV6_FREEBIND, or IP_TRANSPARENT where neither is available) a
// backup binds the virtual IP before it holds it, and takes connections the moment the
// address arrives. SO_REUSEPORT lets a restarted agent bind while the old one drains.
func listen(addr netip.AddrPort) (*socket, error) {
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = setListenOptions(int(fd), addr.Addr().Is6())
		})
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), network, addr.String())
	if err != nil {
		return nil, fmt.Errorf("listening on %v: %w", addr, err)
	}
	return &socket{addr: addr, ln: ln.(*net.TCPListener)}, nil
}

func setListenOptions(fd int, v6 bool) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return fmt.Errorf("setting SO_REUSEPORT: %w", err)
	}
	level, freebind, transparent := unix.SOL_IP, unix.IP_FREEBIND, unix.IP_TRANSPARENT
	if v6 {
		level, freebind, transparent = unix.SOL_IPV6, unix.IPV6_FREEBIND, unix.IPV6_TRANSPARENT
	}
	err := unix.SetsockoptInt(fd, level, freebind, 1)
	if err == nil {
		return nil
	}
	if terr := unix.SetsockoptInt(fd, level, transparent, 1); terr != nil {
		return fmt.Errorf("setting free bind (%w) or transparent (%w) on the socket", err, terr)
	}
	return nil
}

func (sk *socket) close() {
	sk.closed.Store(true)
	_ = sk.ln.Close()
}

// startAccepting runs the socket's accept loop. Temporary errors (out of file
// descriptors) back off as net/http does, rather than spinning.
func (s *Server) startAccepting(sk *socket) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var delay time.Duration
		for {
			c, err := sk.ln.AcceptTCP()
			if err != nil {
				if sk.closed.Load() {
					return
				}
				if isTemporary(err) {
					delay = min(max(2*delay, 5*time.Millisecond), time.Second)
					s.log.Error(err, "Accepting a connection; retrying", "addr", sk.addr, "delay", delay)
					time.Sleep(delay)
					continue
				}
				sk.failed.Store(true)
				s.log.Error(err, "Accepting connections stopped", "addr", sk.addr)
				s.kick()
				return
			}
			delay = 0
			l := sk.owner.Load()
			s.wg.Add(1)
			go l.serve(c, s.nextLoop())
		}
	}()
}

func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED) || isTimeout(err)
}
