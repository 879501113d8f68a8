package netlab

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func TestHostsReachEachOtherAndPartition(t *testing.T) {
	lab := NewT(t)
	a := MustAddHost(t, lab, "a", "198.18.0.1/24")
	b := MustAddHost(t, lab, "b", "198.18.0.2/24")

	// A listener opened inside b stays in b's namespace.
	var ln net.Listener
	if err := b.Do(func() (err error) {
		ln, err = net.Listen("tcp4", "198.18.0.2:0")
		return err
	}); err != nil {
		t.Fatalf("listening in b: %v", err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "hello")
			_ = c.Close()
		}
	}()

	dial := func() (string, error) {
		var got string
		err := a.Do(func() error {
			c, err := net.DialTimeout("tcp4", ln.Addr().String(), 500*time.Millisecond)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			data, err := io.ReadAll(c)
			got = string(data)
			return err
		})
		return got, err
	}
	if got, err := dial(); err != nil || got != "hello" {
		t.Fatalf("dial from a to b = %q, %v; want hello", got, err)
	}

	if err := b.SetConnected(false); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(); err == nil {
		t.Fatalf("dial from a to a disconnected b succeeded; want a timeout")
	}
	if err := b.SetConnected(true); err != nil {
		t.Fatal(err)
	}
	if got, err := dial(); err != nil || got != "hello" {
		t.Fatalf("dial after reconnecting = %q, %v; want hello", got, err)
	}

	// The listener is not in the test's own namespace.
	if c, err := net.DialTimeout("tcp4", ln.Addr().String(), 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("the lab address answered from the test's own namespace")
	}
}

func TestHandleAndLinkState(t *testing.T) {
	lab := NewT(t)
	h := MustAddHost(t, lab, "n", "198.18.0.1/24", "fd00:198:18::1/64")
	handle, err := h.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer handle.Close()
	link, err := handle.LinkByName(HostLink)
	if err != nil {
		t.Fatalf("finding %s in the host: %v", HostLink, err)
	}
	addrs, err := handle.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		if !a.IP.IsLinkLocalUnicast() {
			got = append(got, a.IPNet.String())
		}
	}
	if strings.Join(got, ",") != "198.18.0.1/24,fd00:198:18::1/64" {
		t.Errorf("addresses = %v", got)
	}
	if err := h.SetLinkUp(false); err != nil {
		t.Fatal(err)
	}
	link, err = handle.LinkByName(HostLink)
	if err != nil {
		t.Fatal(err)
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("link still up after SetLinkUp(false)")
	}
}

func TestProcessesAreStoppedAndNamespacesRemoved(t *testing.T) {
	lab, err := New()
	if errors.Is(err, ErrNotRoot) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	h, err := lab.AddHost("p")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	p, err := h.Start(nil, "sleep", "60")
	if err != nil {
		lab.Close()
		t.Fatal(err)
	}
	if err := lab.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("process %d still running after Close", p.Cmd.Process.Pid)
	}
	if _, err := os.Stat("/run/netns/" + h.NS); !os.IsNotExist(err) {
		t.Errorf("namespace %s still exists after Close (stat: %v)", h.NS, err)
	}
}
