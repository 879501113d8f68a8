package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socket is one listening address. Its owner is the listener whose configuration its
// connections get; Apply may move a socket from one listener to another.
type socket struct {
	addr   netip.AddrPort
	file   *os.File // the listening socket, in Go's poller
	owner  atomic.Pointer[listener]
	closed atomic.Bool
	failed atomic.Bool // the accept loop stopped on an error other than close
}

// listenBacklog is the accept queue asked for; the kernel caps it at somaxconn.
const listenBacklog = 4096

// listen opens a listening socket on addr, which need not be a local address yet: with
// IP_FREEBIND (IPv6: IPV6_FREEBIND, or IP_TRANSPARENT where neither is available) a
// backup binds the virtual IP before it holds it, and takes connections the moment the
// address arrives. SO_REUSEPORT lets a restarted agent bind while the old one drains.
// The socket is made here rather than by the net package because accepting through
// net.TCPListener would put every client socket in Go's poller first.
func listen(addr netip.AddrPort) (*socket, error) {
	family := unix.AF_INET
	var sa unix.Sockaddr
	v6 := addr.Addr().Is6()
	if v6 {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}
	} else {
		sa = &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listening on %v: %w", addr, os.NewSyscallError("socket", err))
	}
	if err := setListenOptions(fd, v6); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listening on %v: %w", addr, err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listening on %v: %w", addr, os.NewSyscallError("bind", err))
	}
	if err := unix.Listen(fd, listenBacklog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listening on %v: %w", addr, os.NewSyscallError("listen", err))
	}
	return &socket{addr: addr, file: os.NewFile(uintptr(fd), "listener "+addr.String())}, nil
}

func setListenOptions(fd int, v6 bool) error {
	opts := []struct {
		level, opt int
		name       string
	}{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR"},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, "SO_REUSEPORT"},
	}
	if v6 {
		opts = append(opts, struct {
			level, opt int
			name       string
		}{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY"})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, 1); err != nil {
			return fmt.Errorf("setting %s: %w", o.name, err)
		}
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
	_ = sk.file.Close()
}

// startAccepting runs the socket's accept loop; the socket's owner must be set, as the
// first connection may be accepted at once. It accepts with accept4(2) through the
// listener's raw connection, so that client sockets never enter Go's poller: the event
// loop takes them as they are. Temporary errors (out of file descriptors) back off as
// net/http does, rather than spinning.
func (s *Server) startAccepting(sk *socket) {
	rc, err := sk.file.SyscallConn()
	if err != nil {
		sk.failed.Store(true)
		s.log.Error(err, "Accepting connections", "addr", sk.addr)
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var a acceptor
		accept := a.accept
		var delay time.Duration
		var retries throttle // logged
		for {
			err := rc.Read(accept)
			if err == nil {
				err = a.err
			}
			if err != nil {
				if sk.closed.Load() {
					return
				}
				if isTemporary(err) {
					delay = min(max(2*delay, 5*time.Millisecond), time.Second)
					// Out of descriptors, every accept fails until some are freed: one
					// line every resourcesLogEvery says so.
					if retries.allow(time.Now()) {
						s.log.Error(err, "Accepting a connection; retrying", "addr", sk.addr, "delay", delay)
					}
					time.Sleep(delay)
					continue
				}
				sk.failed.Store(true)
				s.log.Error(err, "Accepting connections stopped", "addr", sk.addr)
				s.kick()
				return
			}
			delay = 0
			sk.owner.Load().serve(a.fd, a.remote, s.nextLoop())
		}
	}()
	if s.testHookAccepting != nil {
		s.testHookAccepting(sk)
	}
}

// acceptor is the body of one accept4(2); accept is passed to RawConn.Read, which waits
// for the listener to be readable whenever it returns false.
type acceptor struct {
	fd     int
	remote netip.AddrPort
	err    error
}

func (a *acceptor) accept(lfd uintptr) bool {
	for {
		fd, sa, err := unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch err {
		case nil:
			a.fd, a.remote, a.err = fd, sockaddrAddrPort(sa), nil
			return true
		case unix.EINTR, unix.ECONNABORTED:
			continue
		case unix.EAGAIN:
			return false
		}
		a.fd, a.err = -1, os.NewSyscallError("accept4", err)
		return true
	}
}

func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

func isTemporary(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) ||
		errors.Is(err, syscall.ECONNABORTED) || isTimeout(err)
}
