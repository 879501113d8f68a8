package proxy

import (
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
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
	endOutOfResources
)

func (r endReason) String() string {
	return [...]string{"closed", "clientError", "backendError", "idleTimeout", "drained", "shutdown",
		"noBackend", "maxConnections", "proxyHeaderFailed", "outOfResources"}[r]
}

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
	// refused: the event loop closed the connection without proxying it (no backend,
	// out of resources, the PROXY header failed). Set by the loop before it calls done.
	refused bool

	mu     sync.Mutex
	be     *backend // once connected
	reason endReason
	pair   *pair // set once handed to the loop
	loop   *loop
	// Seen by sweep: byte counts at the last sweep, and when they last moved (or the
	// backend connection was established: the idle timeout starts there).
	seenUp, seenDown       int64
	flushedUp, flushedDown int64
	lastActive             time.Time
}

// serve takes one accepted connection: it applies the connection cap and hands the
// client socket to an event loop, which connects a backend and completes it (done). It
// never blocks, so the accept loop calls it directly.
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
		return
	}
	l.m.active.Inc()
	l.s.wg.Add(1)
	registered, drained := l.s.register(c)
	if !registered {
		c.refuse(endShutdown)
		l.active.Add(-1)
		l.m.active.Dec()
		l.s.wg.Done()
		return
	}
	if drained {
		c.abort(endDrained) // closed below, before the hand-off
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	st := &setup{plan: p}
	if p.cfg.Balance == SourceHash {
		st.key = remote.Addr().Unmap().AsSlice()
	}
	// Under c.mu, so that abort either sees the pair (and asks the loop to close it) or
	// is seen here. Its abort may still reach the loop before the setup: the loop
	// handles either order.
	c.mu.Lock()
	if c.aborted.Load() {
		c.mu.Unlock()
		c.closeClient(false)
		c.done()
		return
	}
	c.pair = &pair{c: c, fd: [2]int{fd, -1}, setup: st}
	c.loop = lp
	c.clientFD = -1 // the loop's now
	c.mu.Unlock()
	lp.post(command{p: c.pair, kind: cmdSetup})
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

// done completes a connection: counts, metrics, access log. Called once, by whoever
// ended it.
func (c *conn) done() {
	if c.be != nil {
		c.be.conns.Add(-1)
	}
	c.l.m.active.Dec()
	c.l.s.unregister(c)
	c.finish()
	if c.l.active.Add(-1) == 0 && c.l.retired.Load() {
		c.l.lastConnEnded()
	}
	c.l.s.wg.Done()
}

// abort asks the connection's event loop to close it; the first caller's reason is
// kept. It returns true for the call that did.
func (c *conn) abort(reason endReason) bool {
	if !c.aborted.CompareAndSwap(false, true) {
		return false
	}
	c.mu.Lock()
	if reason != endClosed {
		c.reason = reason
	}
	p := c.pair
	c.mu.Unlock()
	if p != nil {
		c.loop.post(command{p: p, kind: cmdAbort})
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
	if !c.refused {
		c.l.m.duration.Observe(time.Since(c.start).Seconds())
	}
	c.l.s.logAccess(c)
}

// sweep adds the bytes moved since the last sweep to the metrics, and closes the
// connection when nothing moved for its idle timeout. A connection still connecting to
// a backend is not idle, as with nginx's proxy_timeout: the connect timeout and attempts
// bound it, and closing it would spare the client no wait but cut its retry on the next
// backend short.
func (c *conn) sweep(now time.Time) {
	c.mu.Lock()
	up, down := c.up.Load(), c.down.Load()
	if up != c.seenUp || down != c.seenDown {
		c.seenUp, c.seenDown, c.lastActive = up, down, now
	}
	c.l.m.bytesUp.Add(float64(up - c.flushedUp))
	c.l.m.bytesDown.Add(float64(down - c.flushedDown))
	c.flushedUp, c.flushedDown = up, down
	idle := c.idle > 0 && c.be != nil && now.Sub(c.lastActive) >= c.idle
	c.mu.Unlock()
	if idle {
		c.abort(endIdle)
	}
}

// register adds c to the open connections, unless the server is shutting down. drained
// says that c was accepted before a drain fired that did not see it, and must close.
func (s *Server) register(c *conn) (registered, drained bool) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	select {
	case <-s.stop:
		return false, false
	default:
	}
	s.conns[c] = struct{}{}
	return true, c.start.Before(s.drained)
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
