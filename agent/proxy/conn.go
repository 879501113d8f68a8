package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/proxy/proxyproto"
)

// endReason says why a connection ended, for the access log.
type endReason int32

const (
	endClosed endReason = iota
	endClientError
	endBackendError
	endIdle
	endDrained
	endShutdown
	endNoBackend
	endMaxConnections
	endProxyHeader
)

func (r endReason) String() string {
	return [...]string{"closed", "clientError", "backendError", "idleTimeout", "drained", "shutdown",
		"noBackend", "maxConnections", "proxyHeaderFailed"}[r]
}

// errNoBackend means every attempt failed or no backend was usable.
var errNoBackend = errors.New("no usable backend")

// bufSize is the event loop's read buffer. A connection holds one only while data it
// read waits to be written, so an idle connection holds none.
const bufSize = 64 << 10

// conn is one proxied connection.
type conn struct {
	l          *listener
	clientFD   int // owned by serve until the hand-off, then by the event loop
	clientAddr netip.AddrPort
	start      time.Time
	idle       time.Duration

	up, down atomic.Int64 // bytes client->backend and backend->client
	aborted  atomic.Bool

	mu         sync.Mutex
	backend    *net.TCPConn
	be         *backend
	reason     endReason
	cancelDial context.CancelFunc
	pair       *pair // set once handed to loop
	loop       *loop
	// Seen by sweep: byte counts at the last sweep, and when they last moved.
	seenUp, seenDown       int64
	flushedUp, flushedDown int64
	lastActive             time.Time
}

// serve sets up one accepted connection: it picks and connects a backend, writes the
// PROXY header, and hands the pair to an event loop, which completes it (done).
func (l *listener) serve(fd int, remote netip.AddrPort, lp *loop) {
	p := l.plan.Load()
	l.m.accepted.Inc()
	n := l.active.Add(1)
	c := &conn{
		l:          l,
		clientFD:   fd,
		clientAddr: remote,
		start:      time.Now(),
		idle:       p.cfg.IdleTimeout,
	}
	c.lastActive = c.start
	if max := p.cfg.MaxConnections; max > 0 && n > int64(max) {
		l.m.refusedMax.Inc()
		c.refuse(endMaxConnections)
		l.active.Add(-1)
		l.s.wg.Done()
		return
	}
	l.m.active.Inc()
	if !l.s.register(c) {
		c.refuse(endShutdown)
		l.active.Add(-1)
		l.m.active.Dec()
		l.s.wg.Done()
		return
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)

	bc, be, err := c.connect(p)
	if err != nil {
		if !c.aborted.Load() {
			l.m.refusedNoBackend.Inc()
			l.s.log.V(1).Info("Refused a connection: no backend could take it", "listener", l.name, "client", c.clientAddr)
		}
		c.abort(endNoBackend)
		c.closeClient(true)
		c.done()
		return
	}
	if p.cfg.ProxyProtocol != ProxyProtocolNone {
		var buf [proxyHeaderMax]byte
		hdr, err := c.proxyHeader(buf[:0], p.cfg.ProxyProtocol)
		if err == nil {
			_, err = bc.Write(hdr)
		}
		if err != nil {
			l.s.log.Error(err, "Writing the PROXY header", "listener", l.name, "client", c.clientAddr, "backend", be.name)
			c.abort(endProxyHeader)
			c.closeClient(false)
			c.done()
			return
		}
	}
	if err := c.handOff(lp, bc); err != nil {
		if !errors.Is(err, net.ErrClosed) {
			l.s.log.Error(err, "Handing a connection to the event loop", "listener", l.name, "client", c.clientAddr)
		}
		c.abort(endShutdown)
		c.closeClient(false)
		c.done()
	}
}

// proxyHeader appends the PROXY header: the client's address and the one it connected to.
func (c *conn) proxyHeader(b []byte, v ProxyProtocol) ([]byte, error) {
	sa, err := unix.Getsockname(c.clientFD)
	if err != nil {
		return nil, fmt.Errorf("reading the address the client connected to: %w", err)
	}
	return proxyproto.Append(b, proxyproto.Version(v), c.clientAddr, sockaddrAddrPort(sa))
}

// closeClient closes the client socket before any hand-off; reset sends a reset, so the
// client sees a refusal at once rather than an empty stream.
func (c *conn) closeClient(reset bool) {
	if c.clientFD < 0 {
		return
	}
	if reset {
		_ = unix.SetsockoptLinger(c.clientFD, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	unix.Close(c.clientFD)
	c.clientFD = -1
}

// handOff moves the connection's sockets into the event loop. Under c.mu, so that abort
// either sees the pair (and asks the loop to close it) or stops the hand-off.
func (c *conn) handOff(lp *loop, bc *net.TCPConn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.aborted.Load() {
		return net.ErrClosed
	}
	bfd, err := detach(bc)
	if err != nil {
		return err
	}
	c.pair = &pair{c: c, fd: [2]int{c.clientFD, bfd}}
	c.loop = lp
	// The closed net.Conn is of no further use; an idle connection should not keep it.
	c.clientFD, c.backend, c.cancelDial = -1, nil, nil
	lp.post(command{p: c.pair})
	return nil
}

// done completes a connection: counts, metrics, access log. Called once, by whoever
// ended it.
func (c *conn) done() {
	if c.be != nil {
		c.be.conns.Add(-1)
	}
	c.l.active.Add(-1)
	c.l.m.active.Dec()
	c.l.s.unregister(c)
	c.finish()
	c.l.s.wg.Done()
}

// proxyHeaderMax is the longest PROXY header written: v1 with two IPv6 addresses.
const proxyHeaderMax = 108

// connect dials backends until one answers, up to the listener's attempts.
func (c *conn) connect(p *plan) (*net.TCPConn, *backend, error) {
	var key []byte
	if p.cfg.Balance == SourceHash {
		key = c.clientAddr.Addr().Unmap().AsSlice()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c.mu.Lock()
	c.cancelDial = cancel
	c.mu.Unlock()
	if c.aborted.Load() {
		return nil, nil, errNoBackend
	}
	timeout := p.cfg.connectTimeout()
	var triedBuf [4]*backend
	tried := triedBuf[:0]
	for range p.cfg.connectAttempts() {
		now := time.Now()
		be := p.pick(key, tried, now.UnixNano())
		if be == nil {
			break
		}
		tried = append(tried, be)
		be.selections.Inc()
		be.conns.Add(1)
		dctx, dcancel := context.WithTimeout(ctx, timeout)
		nc, err := c.l.s.dialer.DialContext(dctx, "tcp", be.name)
		dcancel()
		if err != nil {
			be.conns.Add(-1)
			if c.aborted.Load() {
				return nil, nil, err
			}
			if be.connectFailed(err, now) {
				c.l.s.log.Info("Backend down: connects failing", "listener", c.l.name, "backend", be.name,
					"maxFails", p.cfg.Passive.MaxFails, "failTimeout", p.cfg.Passive.FailTimeout, "error", err.Error())
				c.l.s.kick()
			}
			c.l.s.log.V(1).Info("Connecting to backend failed", "listener", c.l.name, "backend", be.name, "error", err.Error())
			continue
		}
		if p.cfg.Passive.MaxFails > 0 {
			be.connectSucceeded()
		}
		bc := nc.(*net.TCPConn)
		c.mu.Lock()
		c.backend, c.be = bc, be
		c.mu.Unlock()
		if c.aborted.Load() {
			// abort ran before the backend was recorded.
			_ = bc.Close()
			be.conns.Add(-1)
			return nil, nil, net.ErrClosed
		}
		return bc, be, nil
	}
	return nil, nil, errNoBackend
}

// abort closes the connection, or asks its event loop to; the first caller's reason is
// kept. It returns true for the call that closed it.
func (c *conn) abort(reason endReason) bool {
	if !c.aborted.CompareAndSwap(false, true) {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if reason != endClosed {
		c.reason = reason
	}
	if c.pair != nil {
		c.loop.post(command{p: c.pair, abort: true})
		return true
	}
	// Before the hand-off, serve owns the client socket and closes it once the dial or
	// the header write that this interrupts has returned.
	if c.cancelDial != nil {
		c.cancelDial()
	}
	if c.backend != nil {
		_ = c.backend.Close()
	}
	return true
}

// refuse closes a connection that is not proxied, with a reset, so the client sees the
// refusal at once instead of an empty stream.
func (c *conn) refuse(reason endReason) {
	c.reason = reason
	c.aborted.Store(true)
	c.closeClient(true)
	c.l.s.logAccess(c)
}

// finish records the connection's metrics and access log line.
func (c *conn) finish() {
	c.mu.Lock()
	up, down := c.up.Load(), c.down.Load()
	c.l.m.bytesUp.Add(float64(up - c.flushedUp))
	c.l.m.bytesDown.Add(float64(down - c.flushedDown))
	c.flushedUp, c.flushedDown = up, down
	c.mu.Unlock()
	c.l.m.duration.Observe(time.Since(c.start).Seconds())
	c.l.s.logAccess(c)
}

// sweep adds the bytes moved since the last sweep to the metrics, and closes the
// connection when nothing moved for its idle timeout.
func (c *conn) sweep(now time.Time) {
	c.mu.Lock()
	up, down := c.up.Load(), c.down.Load()
	if up != c.seenUp || down != c.seenDown {
		c.seenUp, c.seenDown, c.lastActive = up, down, now
	}
	c.l.m.bytesUp.Add(float64(up - c.flushedUp))
	c.l.m.bytesDown.Add(float64(down - c.flushedDown))
	c.flushedUp, c.flushedDown = up, down
	idle := c.idle > 0 && now.Sub(c.lastActive) >= c.idle
	c.mu.Unlock()
	if idle {
		c.abort(endIdle)
	}
}

func (s *Server) register(c *conn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	select {
	case <-s.stop:
		return false
	default:
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) unregister(c *conn) {
	s.connMu.Lock()
	delete(s.conns, c)
	s.connMu.Unlock()
}

// accessEntry is one access log record.
type accessEntry struct {
	listener        string
	client, backend string
	fromClient      int64
	toClient        int64
	duration        time.Duration
	reason          endReason
}

func (s *Server) logAccess(c *conn) {
	if !s.accessOn.Load() {
		return
	}
	c.mu.Lock()
	e := accessEntry{
		listener:   c.l.name,
		client:     c.clientAddr.String(),
		fromClient: c.up.Load(),
		toClient:   c.down.Load(),
		duration:   time.Since(c.start),
		reason:     c.reason,
	}
	if c.be != nil {
		e.backend = c.be.name
	}
	c.mu.Unlock()
	s.access(e)
}

func (e accessEntry) log(log logr.Logger) {
	log.Info("Connection", "listener", e.listener, "client", e.client, "backend", e.backend,
		"bytesFromClient", e.fromClient, "bytesToClient", e.toClient, "duration", e.duration, "end", e.reason.String())
}

func (e accessEntry) appendLogfmt(b []byte) []byte {
	b = append(b, "listener="...)
	b = strconv.AppendQuote(b, e.listener)
	b = append(b, " client="...)
	b = append(b, e.client...)
	b = append(b, " backend="...)
	if e.backend == "" {
		b = append(b, '-')
	}
	b = append(b, e.backend...)
	b = append(b, " bytesFromClient="...)
	b = strconv.AppendInt(b, e.fromClient, 10)
	b = append(b, " bytesToClient="...)
	b = strconv.AppendInt(b, e.toClient, 10)
	b = append(b, " duration="...)
	b = append(b, e.duration.String()...)
	b = append(b, " end="...)
	b = append(b, e.reason.String()...)
	return append(b, '\n')
}
