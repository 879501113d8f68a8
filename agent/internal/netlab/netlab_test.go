package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
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

// orphanHelperEnv makes TestProcessesDieWithTheTestProcess, in a copy of the test
// binary, the test process that is killed.
const orphanHelperEnv = "NETLAB_TEST_ORPHAN_HELPER"

// TestProcessesDieWithTheTestProcess: a test binary killed before its cleanups run, as a
// -timeout or a Ctrl-C kills it, takes its lab's processes with it; and a process started
// from a goroutine whose OS thread then ends (as nsexec.Do ends a thread it cannot switch
// back) lives on until then.
func TestProcessesDieWithTheTestProcess(t *testing.T) {
	if os.Getenv(orphanHelperEnv) != "" {
		orphanHelper()
		return
	}
	if os.Geteuid() != 0 {
		t.Skipf("skipping: %v", ErrNotRoot)
	}
	helper := exec.Command(os.Args[0], "-test.run=^TestProcessesDieWithTheTestProcess$")
	helper.Env = append(os.Environ(), orphanHelperEnv+"=1")
	helper.Stderr = os.Stderr
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var pids []int
	t.Cleanup(func() {
		_ = helper.Process.Kill()
		_ = helper.Wait()
		for _, pid := range pids { // only if the test failed: they should be gone
			if running(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		removeStale() // the killed helper's namespaces
	})
	lines := bufio.NewScanner(stdout)
	for len(pids) == 0 && lines.Scan() {
		if rest, ok := strings.CutPrefix(lines.Text(), "PIDS "); ok {
			for _, f := range strings.Fields(rest) {
				pid, err := strconv.Atoi(f)
				if err != nil {
					t.Fatalf("helper said %q", lines.Text())
				}
				pids = append(pids, pid)
			}
		} else {
			t.Logf("helper: %s", lines.Text())
		}
	}
	if len(pids) != 2 {
		t.Fatalf("the helper gave no pids: %v", lines.Err())
	}
	if !running(pids[1]) {
		t.Errorf("process %d died with the thread that started it, while its test process runs", pids[1])
	}
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = helper.Wait()
	Eventually(t, "the lab's processes killed with their test process", 5*time.Second, func() error {
		for _, pid := range pids {
			if running(pid) {
				return fmt.Errorf("process %d still runs", pid)
			}
		}
		return nil
	})
}

// orphanHelper builds a lab, starts two processes in it (the second from a goroutine
// whose thread then ends), prints their pids and waits to be killed, cleaning up nothing.
func orphanHelper() {
	fail := func(err error) { fmt.Println("helper:", err); os.Exit(1) }
	lab, err := New()
	if err != nil {
		fail(err)
	}
	h, err := lab.AddHost("orphan")
	if err != nil {
		fail(err)
	}
	first, err := h.Start(nil, "sleep", "600")
	if err != nil {
		fail(err)
	}
	type started struct {
		p   *Proc
		tid int
		err error
	}
	c := make(chan started)
	second := started{tid: os.Getpid()}
	for second.tid == os.Getpid() {
		go func() {
			runtime.LockOSThread() // never unlocked: Go ends the thread when this goroutine returns
			if tid := syscall.Gettid(); tid == os.Getpid() {
				// Go never ends the main thread: hold it, so that the next try gets another.
				c <- started{tid: tid}
				select {}
			}
			p, err := h.Start(nil, "sleep", "600")
			c <- started{p, syscall.Gettid(), err}
		}()
		second = <-c
	}
	if second.err != nil {
		fail(second.err)
	}
	// Linux sends the parent-death signal as the thread exits, before its task entry goes.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", second.tid)); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			fail(fmt.Errorf("thread %d did not end", second.tid))
		}
	}
	fmt.Printf("PIDS %d %d\n", first.Cmd.Process.Pid, second.p.Cmd.Process.Pid)
	time.Sleep(time.Minute) // killed long before
	fail(errors.New("not killed"))
}

// running tells whether pid is a live process with no SIGKILL pending: not gone, not a
// zombie, and not about to be either.
func running(pid int) bool {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	const sigkill = 1 << (syscall.SIGKILL - 1)
	for _, line := range strings.Split(string(status), "\n") {
		key, value, _ := strings.Cut(line, ":\t")
		switch key {
		case "State":
			if strings.HasPrefix(value, "Z") || strings.HasPrefix(value, "X") {
				return false
			}
		case "SigPnd", "ShdPnd":
			if mask, err := strconv.ParseUint(value, 16, 64); err == nil && mask&sigkill != 0 {
				return false
			}
		}
	}
	return true
}
