package proxy

import (
	"cmp"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An event loop moves the bytes of established connections, as nginx's and HAProxy's
// workers do: one edge-triggered epoll set for many connections, no goroutine and no
// buffer per connection, and no read that is known to find nothing. After a read that
// returns less than the buffer holds, the socket is known to be drained and is not read
// again until epoll reports new data; Go's own poller cannot skip that read, which costs
// a system call per message and direction.
//
// The loop's epoll descriptor is itself watched by Go's poller (it becomes readable when
// any of its connections has an event), so the loop goroutine parks like any other when
// idle and needs no thread of its own.
//
// Connections never enter Go's poller: the accept loop takes client sockets with
// accept4(2) and hands them here, and the loop connects the backend side itself (see
// connect.go).
type loop struct {
	epfd  int
	file  *os.File // epfd, for Go's poller
	wake  int      // eventfd: commands are queued
	mu    sync.Mutex
	queue []command
	woken bool

	closed  bool // guarded by mu
	stopped bool // the loop has seen the close command

	events []unix.EpollEvent
	pairs  []*pair  // by slot
	gens   []int32  // by slot, so events of a closed pair never reach its successor (see tag)
	free   []int32  // free slots
	spare  [][]byte // read buffers not in use
	socket socketFunc
}

type command struct {
	p       *pair
	kind    commandKind
	attempt int32 // of cmdTimeout
}

type commandKind int

const (
	cmdStop    commandKind = iota // close every pair and stop the loop
	cmdSetup                      // connect a new pair to a backend, or add a connected one
	cmdAbort                      // close a pair; the reason is on its conn
	cmdTimeout                    // a connect attempt ran out of time
)

// pair is one proxied connection inside the loop.
type pair struct {
	c      *conn
	fd     [2]int // client, backend (-1 until an attempt starts)
	slot   int32
	closed bool
	setup  *setup // while connecting
	header int    // bytes of PROXY header still to send, not counted as client data
	// attempt tags the events of the backend socket registered now (see tag), so that
	// events of a socket an earlier connect attempt closed are dropped.
	attempt uint8
	// canRead and canWrite track edge-triggered readiness per side.
	canRead, canWrite, rdhup [2]bool
	dir                      [2]flow // 0: client to backend, 1: backend to client
	// reset closes a side with a reset, for a failure of the other (see finish); fault
	// is why the pair ends once the first side failed (endClosed: none did).
	reset [2]bool
	fault endReason
}

// flow is one direction: data read but not yet written, and whether the source ended.
type flow struct {
	buf      []byte
	off, end int
	eof      bool // source sent FIN
	shut     bool // FIN passed on to the destination, or the destination failed
}

const epollEvents = 256

// An event's EpollEvent.Fd is the pair's slot, and its Pad the tag below: the slot's
// generation, the backend's connect attempt and the side. Events harvested in one batch
// may be handled after their socket was closed, and its slot or its tag reused; the tag
// drops them, so they reach neither a later pair in the slot nor the next connect
// attempt of the same pair (which a stale EPOLLOUT would count as connected, and a stale
// EPOLLERR as failed).
const (
	sideBits    = 1 // 0 client, 1 backend
	attemptBits = 8
	genBits     = 31 - attemptBits - sideBits
	sideFlag    = 1<<sideBits - 1
)

// tag is the EpollEvent.Pad under which side of p is registered.
func (lp *loop) tag(p *pair, side int32) int32 {
	t := lp.gens[p.slot]<<(attemptBits+sideBits) | side
	if side == 1 {
		t |= int32(p.attempt) << sideBits
	}
	return t
}

func newLoop(socket socketFunc) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("creating the epoll set: %w", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("creating the loop's eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, fmt.Errorf("watching the loop's eventfd: %w", err)
	}
	// Non-blocking, so that os.NewFile hands it to Go's poller.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil, err
	}
	return &loop{
		epfd:   epfd,
		file:   os.NewFile(uintptr(epfd), "epoll"),
		wake:   wake,
		events: make([]unix.EpollEvent, epollEvents),
		socket: socket,
	}, nil
}

// run processes events until the loop is closed.
func (lp *loop) run() {
	rc, err := lp.file.SyscallConn()
	if err != nil {
		panic(fmt.Sprintf("the loop's epoll file has no raw conn: %v", err))
	}
	// poll returns true (stop) only when the file is closed; false asks Go's poller to
	// wait until the epoll set is readable.
	poll := func(fd uintptr) bool {
		for {
			n, err := epollWait(int(fd), lp.events)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return err != nil
			}
			lp.handle(lp.events[:n])
			if lp.stopped {
				return true
			}
		}
	}
	_ = rc.Read(poll)
	_ = lp.file.Close()
	unix.Close(lp.wake)
}

// close stops the loop; connections still in it are closed.
func (lp *loop) close() {
	lp.post(command{kind: cmdStop})
}

// post queues a command for the loop and wakes it.
func (lp *loop) post(cmd command) {
	lp.mu.Lock()
	if lp.closed {
		lp.mu.Unlock()
		return
	}
	lp.closed = cmd.kind == cmdStop
	lp.queue = append(lp.queue, cmd)
	wake := !lp.woken
	lp.woken = true
	lp.mu.Unlock()
	if wake {
		var one = [8]byte{1}
		_, _ = unix.Write(lp.wake, one[:])
	}
}

func (lp *loop) handle(events []unix.EpollEvent) {
	for i := range events {
		ev := &events[i]
		if ev.Fd < 0 {
			lp.commands()
			continue
		}
		p := lp.pairs[ev.Fd]
		side := ev.Pad & sideFlag
		if p == nil || ev.Pad != lp.tag(p, side) {
			continue // its socket was closed earlier in this batch
		}
		if p.setup != nil {
			// Connecting: the client's readiness is kept for later.
			if side == 1 {
				lp.connecting(p, ev.Events)
				continue
			}
		}
		if ev.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			p.canRead[side] = true
		}
		if ev.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
			p.rdhup[side] = true
		}
		if ev.Events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			p.canWrite[side] = true
		}
		if p.setup == nil {
			lp.pump(p)
		}
	}
}

func (lp *loop) commands() {
	var b [8]byte
	_, _ = unix.Read(lp.wake, b[:])
	lp.mu.Lock()
	q := lp.queue
	lp.queue = nil
	lp.woken = false
	lp.mu.Unlock()
	for _, cmd := range q {
		switch cmd.kind {
		case cmdStop:
			for _, p := range lp.pairs {
				if p != nil {
					lp.finish(p, endShutdown)
				}
			}
			lp.stopped = true
			return
		case cmdAbort:
			lp.finish(cmd.p, endClosed) // the reason is already on the conn
		case cmdTimeout:
			lp.timeout(cmd.p, cmd.attempt)
		case cmdSetup:
			if cmd.p.closed {
				// Aborted before its setup came: finish has closed it already.
				continue
			}
			lp.add(cmd.p)
			if cmd.p.setup != nil {
				lp.startSetup(cmd.p)
			} else if lp.register(cmd.p, 0, cmd.p.fd[0]) {
				// Both sides already connected (socket pairs in tests).
				lp.register(cmd.p, 1, cmd.p.fd[1])
			}
		}
	}
}

// add gives a pair a slot; its generation tells the pair's events from those of an
// earlier pair in the same slot.
func (lp *loop) add(p *pair) {
	if n := len(lp.free); n > 0 {
		p.slot = lp.free[n-1]
		lp.free = lp.free[:n-1]
	} else {
		p.slot = int32(len(lp.pairs))
		lp.pairs = append(lp.pairs, nil)
		lp.gens = append(lp.gens, 0)
	}
	lp.gens[p.slot] = (lp.gens[p.slot] + 1) & (1<<genBits - 1)
	lp.pairs[p.slot] = p
}

// added reports whether p holds its slot: a pair not yet added has slot 0, which may
// hold another pair or none.
func (lp *loop) added(p *pair) bool {
	return int(p.slot) < len(lp.pairs) && lp.pairs[p.slot] == p
}

// pump moves data both ways as far as readiness allows.
func (lp *loop) pump(p *pair) {
	for d := range 2 {
		if reason, ok := lp.flow(p, d); !ok {
			lp.finish(p, cmp.Or(p.fault, reason))
			return
		}
	}
	if p.dir[0].shut && p.dir[1].shut {
		lp.finish(p, p.fault)
	}
}

// flow moves data from side d to the other; it returns false with the reason when the
// connection must close.
func (lp *loop) flow(p *pair, d int) (endReason, bool) {
	src, dst := d, 1-d
	f := &p.dir[d]
	srcFault, dstFault := endClientError, endBackendError
	if d == 1 {
		srcFault, dstFault = endBackendError, endClientError
	}
	count := &p.c.up
	if d == 1 {
		count = &p.c.down
	}
	for {
		if f.end > f.off {
			if !p.canWrite[dst] {
				return 0, true
			}
			n, err := rawWrite(p.fd[dst], f.buf[f.off:f.end])
			if err == unix.EAGAIN {
				p.canWrite[dst] = false
				return 0, true
			}
			if err != nil {
				return lp.writeFailed(p, d, dstFault)
			}
			if p.header > 0 {
				k := min(p.header, n)
				p.header -= k
				count.Add(int64(n - k))
			} else {
				count.Add(int64(n))
			}
			f.off += n
			if f.off < f.end {
				p.canWrite[dst] = false
				return 0, true
			}
			lp.release(f)
		}
		if f.eof {
			if !f.shut {
				f.shut = true
				// When the other direction has ended too, closing both sockets (pump
				// does next) sends this FIN; a shutdown would only cost a system call.
				if !p.dir[1-d].shut {
					if err := unix.Shutdown(p.fd[dst], unix.SHUT_WR); err != nil && err != unix.ENOTCONN {
						return dstFault, false
					}
				}
			}
			return 0, true
		}
		if !p.canRead[src] {
			return 0, true
		}
		buf := lp.take()
		n, err := rawRead(p.fd[src], buf)
		switch {
		case err == unix.EAGAIN:
			p.canRead[src] = false
			lp.put(buf)
			return 0, true
		case err != nil:
			lp.put(buf)
			// A reset (or another failure) of src reaches dst as one: an end of stream
			// would pass a truncated transfer for complete to a protocol that ends its
			// messages by closing. What src sent before has been written: a read
			// comes only once the buffer is.
			p.reset[dst] = true
			return srcFault, false
		case n == 0:
			f.eof = true
			lp.put(buf)
			continue
		}
		f.buf, f.off, f.end = buf, 0, n
		if n < len(buf) && !p.rdhup[src] {
			// Drained: epoll reports the next data.
			p.canRead[src] = false
		}
	}
}

// writeFailed ends direction d, whose destination failed: reset, mostly, by a peer
// that answered early (an HTTP 413 to an upload) and closed with this direction's data
// unread. What was buffered for it is dropped and its source no longer read; but its
// answer may still wait in its socket, so the other direction goes on until that read
// ends, bounded by the socket's receive queue and the idle timeout. The source gets a
// reset then, as it would from the failed peer directly. It returns flow's result.
func (lp *loop) writeFailed(p *pair, d int, reason endReason) (endReason, bool) {
	f, dst := &p.dir[d], 1-d
	if f.buf != nil {
		lp.release(f)
	}
	f.eof, f.shut = true, true
	p.reset[d] = true
	if p.fault == endClosed {
		p.fault = reason
	}
	if p.dir[dst].shut {
		return reason, false // nothing more comes from dst
	}
	// The failed socket returns what it holds, then an end or an error; the edge that
	// reported its failure may have been consumed already.
	p.canRead[dst], p.rdhup[dst] = true, true
	return lp.flow(p, dst)
}

func (lp *loop) take() []byte {
	if n := len(lp.spare); n > 0 {
		b := lp.spare[n-1]
		lp.spare = lp.spare[:n-1]
		return b
	}
	return make([]byte, bufSize)
}

// release returns a flow's buffer; a few are kept, the rest left to the collector, so
// a burst of slow readers does not pin memory.
func (lp *loop) release(f *flow) {
	lp.put(f.buf)
	f.buf, f.off, f.end = nil, 0, 0
}

func (lp *loop) put(b []byte) {
	if len(lp.spare) < 16 {
		lp.spare = append(lp.spare, b)
	}
}

// finish closes a pair and completes its connection. The pair may not have been added
// yet (an abort that came before its setup): it has no slot to free then, and its setup,
// when it comes, finds it closed.
//
// A side is closed with a reset only for a failure of the other (see reset). The
// deliberate ends (idle timeout, drain deadline, shutdown, abort) close both sides
// normally, as nginx's proxy_timeout does: the peers see an end of stream.
func (lp *loop) finish(p *pair, reason endReason) {
	if p.closed {
		return
	}
	p.closed = true
	if lp.added(p) {
		lp.pairs[p.slot] = nil
		lp.free = append(lp.free, p.slot)
	}
	for d := range p.dir {
		if p.dir[d].buf != nil {
			lp.release(&p.dir[d])
		}
	}
	p.c.mu.Lock()
	if !p.c.aborted.Load() && reason != endClosed {
		p.c.reason = reason
	}
	p.c.aborted.Store(true)
	p.c.mu.Unlock()
	if st := p.setup; st != nil {
		if st.timer != nil {
			st.timer.Stop()
		}
		if st.be != nil {
			st.be.conns.Add(-1)
		}
	}
	for side, fd := range p.fd {
		if fd >= 0 {
			if p.reset[side] {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			}
			unix.Close(fd)
		}
	}
	p.c.done()
}

// rawRead and rawWrite are recv(2) and send(2) without the scheduler hand-off of
// syscall.Syscall: on non-blocking sockets they never block. Unlike read(2) and
// write(2), they skip the file layer's permission and notification hooks, as nginx's
// and HAProxy's do; MSG_NOSIGNAL spares the SIGPIPE the runtime would ignore anyway.
func rawRead(fd int, b []byte) (int, error)  { return rawIO(unix.SYS_RECVFROM, fd, b, 0) }
func rawWrite(fd int, b []byte) (int, error) { return rawIO(unix.SYS_SENDTO, fd, b, unix.MSG_NOSIGNAL) }

func rawIO(trap uintptr, fd int, b []byte, flags uintptr) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), flags, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// epollWait polls without blocking.
func epollWait(epfd int, events []unix.EpollEvent) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
	if e != 0 {
		return 0, syscall.Errno(e)
	}
	return int(n), nil
}
