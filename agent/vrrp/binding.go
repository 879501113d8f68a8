package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"

	"github.com/lbpair/lbpair/agent/vip"
)

// rebindRetry is how often a router whose interface is gone, or has no
// address to send from, looks for it again when no netlink event says so
// first.
const rebindRetry = time.Second

// watchBuffer is the receive buffer of the netlink watches. A node where
// pods come and go changes links in bursts (a veth per pod), and the kernel
// drops what does not fit; the default buffer holds about a hundred link
// messages.
var watchBuffer = 1 << 20

// binding is the router's hold on one incarnation of its interface: the
// interface's index, the router's own address there, and the sockets opened
// on it. A network manager may delete the interface and make it again under
// the same name (a new index and, for IPv6, a new link-local address), and a
// node's IPv4 address may change. Sockets bound to the old index, or sending
// from the old address, are then of no use: the router opens a new binding
// and closes the old one.
type binding struct {
	ifi  *net.Interface
	self netip.Addr
	tr   transport
	vips *vip.Manager
	// packets carries what tr receives; it is closed once tr is.
	packets chan packetOrErr
}

// locate finds the interface named by cfg and the router's address on it,
// in the calling thread's network namespace.
func locate(cfg Config) (*net.Interface, netip.Addr, error) {
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("interface %q: %w", cfg.Interface, err)
	}
	self, err := vip.PrimaryAddress(cfg.Interface, cfg.VIPs[0].Is6(), cfg.VIPs)
	if err != nil {
		return nil, netip.Addr{}, err
	}
	return ifi, self, nil
}

// bind opens the sockets on ifi, in the calling thread's network namespace,
// and starts reading adverts.
func bind(cfg Config, ifi *net.Interface, self netip.Addr, log logr.Logger) (*binding, error) {
	tr, err := openTransport(ifi, self)
	if err != nil {
		return nil, err
	}
	vips, err := vip.Open(cfg.Interface, cfg.VIPs, log)
	if err != nil {
		tr.close()
		return nil, err
	}
	vips.SetLifetime(vipLifetime(cfg.AdvertInterval))
	b := &binding{ifi: ifi, self: self, tr: tr, vips: vips, packets: make(chan packetOrErr, 64)}
	go b.read()
	return b, nil
}

func (b *binding) read() {
	defer close(b.packets)
	buf := make([]byte, 1500)
	for {
		rcv, err := b.tr.receive(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			b.packets <- packetOrErr{err: err}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		rcv.payload = append([]byte(nil), rcv.payload...)
		b.packets <- packetOrErr{rcv: rcv}
	}
}

// close closes the sockets. Packets still queued are dropped.
func (b *binding) close() {
	b.tr.close()
	b.vips.Close()
	go func() {
		for range b.packets {
		}
	}()
}

// watch follows the kernel's changes of links and addresses. The kernel
// drops what a slow reader cannot take (ENOBUFS), and the subscription then
// ends: the router opens a new watch and reads the state again.
type watch struct {
	links chan netlink.LinkUpdate
	addrs chan netlink.AddrUpdate
	done  chan struct{}
}

// openWatch subscribes to the link and address changes of the calling
// thread's network namespace.
func openWatch(log logr.Logger) (*watch, error) {
	w := &watch{links: make(chan netlink.LinkUpdate, 64), addrs: make(chan netlink.AddrUpdate, 64), done: make(chan struct{})}
	onError := func(err error) {
		select {
		case <-w.done: // Closing the subscription is not an error.
		default:
			log.Error(err, "Watching the interface")
		}
	}
	if err := netlink.LinkSubscribeWithOptions(w.links, w.done, netlink.LinkSubscribeOptions{
		ErrorCallback: onError, ReceiveBufferSize: watchBuffer, ReceiveBufferForceSize: true,
	}); err != nil {
		close(w.done)
		return nil, fmt.Errorf("watching link state: %w", err)
	}
	if err := addrSubscribe(w.addrs, w.done, netlink.AddrSubscribeOptions{
		ErrorCallback: onError, ReceiveBufferSize: watchBuffer, ReceiveBufferForceSize: true,
	}); err != nil {
		// Only the link subscription has a reader to close its channel: a
		// drainer of addrs would wait for ever, at each retry (every second
		// while the agent is out of file descriptors, say).
		close(w.done)
		go func() {
			for range w.links {
			}
		}()
		return nil, fmt.Errorf("watching addresses: %w", err)
	}
	return w, nil
}

// addrSubscribe is netlink.AddrSubscribeWithOptions, which a test replaces.
var addrSubscribe = netlink.AddrSubscribeWithOptions

// close ends the subscriptions. Updates still queued are dropped.
func (w *watch) close() {
	close(w.done)
	go func() {
		for range w.links {
		}
	}()
	go func() {
		for range w.addrs {
		}
	}()
}
