// Package nsexec runs code in another network namespace. The sockets that
// code opens stay in that namespace, whichever goroutine uses them later.
package nsexec

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread in the network namespace ns. Switching
// namespaces needs CAP_SYS_ADMIN, which an agent's container does not have:
// a thread already in ns runs fn as it is. A thread that cannot be switched
// back is thrown away with its goroutine, so no other code ever runs in ns
// by mistake.
func Do(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("opening the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		switched := !orig.Equal(ns)
		if switched {
			if err := netns.Set(ns); err != nil {
				errc <- fmt.Errorf("entering network namespace %v: %w", ns, err)
				return
			}
		}
		ferr := fn()
		if switched {
			if err := netns.Set(orig); err != nil {
				errc <- errors.Join(ferr, fmt.Errorf("leaving network namespace %v: %w", ns, err))
				return
			}
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
