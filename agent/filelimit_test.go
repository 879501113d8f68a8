package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// TestStandaloneAtTheFileLimit holds connections through the holder until it
// runs out of file descriptors. The holder then takes no more clients, and its
// active checks cannot open a socket; neither may take a backend out, or the
// holder would give up the VIP and, once descriptors are free, keep the
// backends out for a while. It keeps the VIP and its backends, and serves again
// as soon as the held connections close.
func TestStandaloneAtTheFileLimit(t *testing.T) {
	lb1, lb2, client := pairLab(t)
	bin := lbpairBinary(t)
	file := pairFileWithPort(t, ipv4, "advertisementInterval: 100ms",
		"healthCheck: {active: {interval: 100ms, timeout: 100ms, rise: 1, fall: 1}}",
		nodePriority{"lb1", 150}, nodePriority{"lb2", 100})
	a1 := startAgent(t, lb1, bin, file)
	startAgent(t, lb2, bin, file)
	waitVIP(t, standaloneVIP, lb1, lb2)
	vipPort := fmt.Sprintf("%s:%d", standaloneVIP, lbPort)
	netlab.Eventually(t, "clients served through the VIP", 5*time.Second, func() error { return get(client, vipPort) })

	pid := a1.proc.Cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Room for a few proxied connections, two descriptors each.
	limit := uint64(len(fds) + 9)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	unserved := 0
	for len(held) < 40 && unserved < 3 {
		c, err := dialFrom(client)(context.Background(), vipPort)
		if errors.Is(err, unix.ECONNRESET) {
			// Refused: the reset came before the dial had looked at its socket.
			unserved++
			continue
		}
		if err != nil {
			t.Fatalf("connecting to the VIP: %v", err)
		}
		held = append(held, c)
		if request(c) != nil {
			unserved++ // refused, or waiting in the listener's backlog
		}
	}
	if !holds(t, lb1, standaloneVIP) || holds(t, lb2, standaloneVIP) {
		t.Fatalf("the VIP moved while lb1 was at its file limit")
	}
	if unserved < 3 {
		t.Fatalf("lb1 served %d connections under a limit of %d files", len(held), limit)
	}
	t.Logf("lb1 served %d of %d connections at a limit of %d files", len(held)-unserved, len(held), limit)

	// Long enough for every probe to fail a few times, and for lb2 to take
	// over (3 adverts) if lb1 gave up.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if !holds(t, lb1, standaloneVIP) || holds(t, lb2, standaloneVIP) {
			t.Fatalf("the VIP moved while lb1 was at its file limit")
		}
	}
	if out := a1.proc.Output(); !strings.Contains(out, "Out of local resources to connect to a backend") {
		t.Errorf("lb1 logged nothing of its file limit:\n%s", out)
	}

	for _, c := range held {
		c.Close()
	}
	held = nil
	// The listener retries accepts after at most a second.
	netlab.Eventually(t, "clients served again", 3*time.Second, func() error { return get(client, vipPort) })
	_, metrics, err := httpGetFrom(lb1, "http://198.18.0.11:9440/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, be := range ipv4.backends {
		if want := fmt.Sprintf(`lbpair_proxy_backend_healthy{backend=%q,listener="http"} 1`, be); !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !holds(t, lb1, standaloneVIP) {
		t.Error("lb1 no longer holds the VIP")
	}
}

// request sends a GET on c and waits half a second for the status line.
func request(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: lbpair\r\n\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err == nil && !strings.HasPrefix(line, "HTTP/1.1 200") {
		err = fmt.Errorf("answer %q", line)
	}
	return err
}

// get makes one request through addr from h on a new connection.
func get(h *netlab.Host, addr string) error {
	c, err := dialFrom(h)(context.Background(), addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return request(c)
}
