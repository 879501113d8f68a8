package proxy

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helper makes the test binary a lab helper process instead of running tests: the
// 10,000-connection test puts its client and backend in processes of their own, since
// one process's file limit holds only the proxy's two sockets per connection.
var helper = flag.String("proxy-test-helper", "", "run as a lab helper: echo ADDR, or hold ADDR N")

func TestMain(m *testing.M) {
	flag.Parse()
	if *helper != "" {
		if err := runHelper(strings.Fields(*helper)); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// raiseNoFile lifts the soft file limit as far as allowed and returns it.
func raiseNoFile(want uint64) uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	if r.Max < want {
		// Needs CAP_SYS_RESOURCE; without it the hard limit stays.
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
			return want
		}
	}
	r.Cur = min(max(r.Cur, want), r.Max)
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	return r.Cur
}

func runHelper(args []string) error {
	raiseNoFile(1 << 20)
	switch {
	case len(args) == 2 && args[0] == "echo":
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			return err
		}
		fmt.Println("listening")
		for {
			c, err := ln.Accept()
			if err != nil {
				return err
			}
			go func() { echo(c); c.Close() }()
		}
	case len(args) == 3 && args[0] == "hold":
		var n int
		if _, err := fmt.Sscan(args[2], &n); err != nil {
			return err
		}
		return hold(args[1], n)
	}
	return fmt.Errorf("unknown helper %q", args)
}

// hold opens n connections, exchanges a message on each, says "ready", and on SIGUSR1
// exchanges again on every one and says "verified".
func hold(addr string, n int) error {
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if err := exchange(c, fmt.Sprintf("hello %d\n", i)); err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = c
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	// Ready only once the signal is caught, or an early one would kill the helper.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	fmt.Println("ready")
	<-sig
	for i, c := range conns {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if err := exchange(c, fmt.Sprintf("again %d\n", i)); err != nil {
			return fmt.Errorf("connection %d after holding: %w", i, err)
		}
	}
	fmt.Println("verified")
	select {}
}

// TestTenThousandConnections holds 10,000 concurrent connections through the proxy, checks
// that each carries data when opened and again once all are open, and that Status counts
// them. This process holds the proxy's two sockets per connection: where the hard file
// limit cannot be raised (no CAP_SYS_RESOURCE) it holds as many as the limit allows and
// says so, and skips below a few thousand.
func TestTenThousandConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping in -short mode: opens 10,000 connections")
	}
	const want, reserve, atLeast = 10000, 256, 5000
	limit := raiseNoFile(2*want + reserve)
	n := want
	if limit < 2*want+reserve {
		n = int(limit-reserve) / 2
		msg := fmt.Sprintf("RLIMIT_NOFILE is %d and cannot be raised to %d (no CAP_SYS_RESOURCE)", limit, 2*want+reserve)
		if n < atLeast {
			t.Skipf("skipping: %s: room for only %d connections", msg, n)
		}
		t.Logf("%s: holding %d connections instead of %d", msg, n, want)
	}
	tl := newTestLab(t, 1)
	withVIP(t, tl)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 4)
	lines := func(prefix string) func(string) {
		return func(line string) {
			if line == "listening" || line == "ready" || line == "verified" {
				ready <- line
			} else {
				t.Logf("%s: %s", prefix, line)
			}
		}
	}
	be, err := tl.backends[0].Start(lines("backend"), self, "-proxy-test-helper=echo "+backendAddr(1, 8080).String())
	if err != nil {
		t.Fatal(err)
	}
	expect := func(p interface{ Output() string }, what string) {
		t.Helper()
		select {
		case got := <-ready:
			if got != what {
				t.Fatalf("helper said %q, want %q", got, what)
			}
		case <-time.After(90 * time.Second):
			t.Fatalf("no %q from the helper; its output: %s", what, p.Output())
		}
	}
	expect(be, "listening")

	s := startProxy(t, tl, Config{Listeners: []ListenerConfig{listenerCfg("many", 80, backendAddr(1, 8080))}})
	start := time.Now()
	client, err := tl.client.Start(lines("client"), self, fmt.Sprintf("-proxy-test-helper=hold %s %d", vip(80), n))
	if err != nil {
		t.Fatal(err)
	}
	expect(client, "ready")
	t.Logf("%d connections open and echoing after %v", n, time.Since(start).Round(time.Millisecond))
	if st := s.Status(); st[0].Active != n {
		t.Errorf("Status counts %d active connections, want %d", st[0].Active, n)
	}
	if err := client.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	expect(client, "verified")
	if err := client.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the connections to close", func() bool { return s.Status()[0].Active == 0 })
}
