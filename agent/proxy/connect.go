package proxy

import (
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/proxy/proxyproto"
)

// setup is a pair's state while the loop connects it to a backend. Connecting in the
// loop, with a non-blocking connect(2) whose completion epoll reports, spares a new
// connection Go's dialer and the hand-over of its socket.
type setup struct {
	plan    *plan
	key     []byte // client address, for SourceHash
	tried   []*backend
	be      *backend // the backend of the attempt in flight
	attempt int32    // numbers attempts, so a late timeout of an old one is ignored
	// outOfResources: the last attempt failed for want of the agent's own resources.
	outOfResources bool
	timer          *time.Timer
}

// errConnectTimeout is a connect attempt that ran out of time.
var errConnectTimeout = os.NewSyscallError("connect", syscall.ETIMEDOUT)

// socketFunc makes a socket; tests make them inside a network namespace.
type socketFunc func(domain, typ, proto int) (int, error)

// startSetup registers the client and starts the first connect attempt.
func (lp *loop) startSetup(p *pair) {
	if !lp.register(p, 0, p.fd[0]) {
		return
	}
	lp.nextAttempt(p)
}

// nextAttempt connects to the next backend the balancer picks, or refuses the client
// when none is left.
func (lp *loop) nextAttempt(p *pair) {
	st := p.setup
	c := p.c
	for len(st.tried) < st.plan.cfg.connectAttempts() {
		now := time.Now()
		be := st.plan.pick(st.key, st.tried, now.UnixNano())
		if be == nil {
			break
		}
		st.tried = append(st.tried, be)
		be.selections.Inc()
		fd, err := lp.connect(be.addr)
		if err != nil {
			lp.attemptFailed(p, be, err, now)
			if outOfSockets(err) {
				break // no other backend can be tried either
			}
			continue
		}
		be.conns.Add(1)
		st.be = be
		st.attempt++
		p.attempt = uint8(st.attempt)
		p.fd[1] = fd
		p.canRead[1], p.canWrite[1], p.rdhup[1] = false, false, false
		if !lp.register(p, 1, fd) {
			return
		}
		attempt := st.attempt
		st.timer = time.AfterFunc(st.plan.cfg.connectTimeout(), func() {
			lp.post(command{p: p, kind: cmdTimeout, attempt: attempt})
		})
		return
	}
	if st.outOfResources {
		c.l.m.refusedOutOfResources.Inc()
		c.l.s.log.V(1).Info("Refused a connection: out of local resources", "listener", c.l.name, "client", c.clientAddr)
		lp.refuse(p, endOutOfResources)
		return
	}
	c.l.m.refusedNoBackend.Inc()
	c.l.s.log.V(1).Info("Refused a connection: no backend could take it", "listener", c.l.name, "client", c.clientAddr)
	lp.refuse(p, endNoBackend)
}

// refuse closes a pair that was never proxied, the client with a reset, so that it sees
// the refusal at once. As for one refused over maxConnections, its time in setup is no
// proxied connection's duration: the histogram does not see it.
func (lp *loop) refuse(p *pair, reason endReason) {
	p.c.refused, p.reset[0] = true, true
	lp.finish(p, reason)
}

// connect starts a non-blocking connect to addr.
func (lp *loop) connect(addr netip.AddrPort) (int, error) {
	domain := unix.AF_INET
	var sa unix.Sockaddr
	if addr.Addr().Is4() || addr.Addr().Is4In6() {
		sa = &unix.SockaddrInet4{Addr: addr.Addr().Unmap().As4(), Port: int(addr.Port())}
	} else {
		domain = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}
	}
	fd, err := lp.socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, os.NewSyscallError("connect", err)
	}
	return fd, nil
}

// connecting handles an event on the backend socket of a pair still connecting.
func (lp *loop) connecting(p *pair, ev uint32) {
	if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
		return
	}
	st := p.setup
	soerr, err := unix.GetsockoptInt(p.fd[1], unix.SOL_SOCKET, unix.SO_ERROR)
	if err == nil && soerr != 0 {
		err = os.NewSyscallError("connect", syscall.Errno(soerr))
	}
	if err == nil && ev&unix.EPOLLOUT == 0 {
		err = os.NewSyscallError("connect", syscall.ECONNRESET)
	}
	if err != nil {
		lp.retry(p, err)
		return
	}
	st.timer.Stop()
	be := st.be
	if st.plan.cfg.Passive.MaxFails > 0 {
		be.connectSucceeded()
	}
	c := p.c
	c.mu.Lock()
	c.be = be
	c.lastActive = time.Now() // the idle timeout starts now
	c.mu.Unlock()
	p.setup = nil
	p.canWrite[1] = true
	// The event that completes the connect may also carry the first data or the end of
	// the backend's stream: with edge triggering it is reported only now, and a backend
	// that speaks first (SMTP, MySQL, FTP banners) would otherwise wait forever.
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		p.canRead[1] = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		p.rdhup[1] = true
	}
	if v := st.plan.cfg.ProxyProtocol; v != ProxyProtocolNone {
		local, err := unix.Getsockname(p.fd[0])
		var hdr []byte
		if err == nil {
			hdr, err = proxyproto.Append(lp.take()[:0], proxyproto.Version(v), c.clientAddr, sockaddrAddrPort(local))
		}
		if err != nil {
			c.l.s.log.Error(err, "Building the PROXY header", "listener", c.l.name, "client", c.clientAddr)
			lp.refuse(p, endProxyHeader)
			return
		}
		// Sent before anything the client wrote, which waits in the socket meanwhile.
		p.dir[0].buf, p.dir[0].off, p.dir[0].end = hdr[:cap(hdr)], 0, len(hdr)
		p.header = len(hdr) // not client data, so not counted
	}
	lp.pump(p)
}

// retry records a failed attempt and starts the next.
func (lp *loop) retry(p *pair, err error) {
	st := p.setup
	st.timer.Stop()
	unix.Close(p.fd[1]) // also takes it out of the epoll set
	p.fd[1] = -1
	st.be.conns.Add(-1)
	be := st.be
	st.be = nil
	lp.attemptFailed(p, be, err, time.Now())
	lp.nextAttempt(p)
}

// timeout handles the connect timer of attempt.
func (lp *loop) timeout(p *pair, attempt int32) {
	if p.closed || p.setup == nil || p.setup.attempt != attempt || p.setup.be == nil {
		return
	}
	lp.retry(p, errConnectTimeout)
}

// attemptFailed records a failed connect attempt against be, unless the agent's own
// resources failed it.
func (lp *loop) attemptFailed(p *pair, be *backend, err error, now time.Time) {
	c := p.c
	cfg := &p.setup.plan.cfg
	p.setup.outOfResources = outOfResources(err)
	if p.setup.outOfResources {
		c.l.logOutOfResources(be.name, err)
		return
	}
	if be.connectFailed(err, now) {
		c.l.s.log.Info("Backend down: connects failing", "listener", c.l.name, "backend", be.name,
			"maxFails", cfg.Passive.MaxFails, "failTimeout", cfg.Passive.FailTimeout, "error", err.Error())
		c.l.s.kick()
	}
	c.l.s.log.V(1).Info("Connecting to backend failed", "listener", c.l.name, "backend", be.name, "error", err.Error())
}

// register adds one side of a pair to the epoll set; on failure it closes the pair.
func (lp *loop) register(p *pair, side int, fd int) bool {
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
		Fd:     p.slot,
		Pad:    lp.tag(p, int32(side)),
	}
	if err := unix.EpollCtl(lp.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.c.l.s.log.Error(err, "Adding a connection to the event loop", "listener", p.c.l.name)
		lp.finish(p, endShutdown)
		return false
	}
	return true
}
