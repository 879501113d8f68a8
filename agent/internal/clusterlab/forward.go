package clusterlab

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// forwarder gives a node namespace the apiserver at 127.0.0.1:6443: it
// listens inside the namespace and splices each connection to the
// apiserver's address in the root namespace. Pausing it cuts the node off
// the apiserver, as a control-plane outage does, without touching the data
// plane.
type forwarder struct {
	host   *netlab.Host
	target string

	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]struct{}
	paused bool
}

const apiserverLocal = "127.0.0.1:6443"

func newForwarder(h *netlab.Host, target string) (*forwarder, error) {
	f := &forwarder{host: h, target: target, conns: map[net.Conn]struct{}{}}
	return f, f.Resume()
}

// Resume listens again.
func (f *forwarder) Resume() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		return nil
	}
	var ln net.Listener
	if err := f.host.Do(func() (err error) { ln, err = net.Listen("tcp", apiserverLocal); return err }); err != nil {
		return err
	}
	f.ln, f.paused = ln, false
	go f.accept(ln)
	return nil
}

// Pause closes the listener and every open connection.
func (f *forwarder) Pause() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ln != nil {
		f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		c.Close()
	}
	f.paused = true
}

func (f *forwarder) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go f.splice(c)
	}
}

func (f *forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if add {
		if f.paused {
			return false
		}
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	return true
}

func (f *forwarder) splice(c net.Conn) {
	// This goroutine is not locked to the namespace's thread: the dial
	// happens in the root namespace, where the apiserver listens.
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Close()
		return
	}
	if !f.track(c, true) || !f.track(up, true) {
		c.Close()
		up.Close()
		return
	}
	defer func() {
		f.track(c, false)
		f.track(up, false)
		c.Close()
		up.Close()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}
