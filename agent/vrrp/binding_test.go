package vrrp

import (
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
)

// TestFailedWatchLeavesNothingBehind: a watch that opens its link
// subscription and fails on the address one, as it does at each retry while
// the agent is out of file descriptors, leaves no goroutine behind.
func TestFailedWatchLeavesNothingBehind(t *testing.T) {
	addrSubscribe = func(chan<- netlink.AddrUpdate, <-chan struct{}, netlink.AddrSubscribeOptions) error {
		return errors.New("too many open files")
	}
	t.Cleanup(func() { addrSubscribe = netlink.AddrSubscribeWithOptions })

	before := runtime.NumGoroutine()
	const tries = 20
	for range tries {
		if w, err := openWatch(logr.Discard()); err == nil {
			w.close()
			t.Fatal("openWatch succeeded with the address subscription failing")
		}
	}
	// The link subscriptions' readers end, and close their channels, once
	// they see done: give them a moment.
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := runtime.NumGoroutine() - before
		if left <= 0 {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left after %d failed watches:\n%s", left, tries, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}
