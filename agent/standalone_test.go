package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/internal/netlab"
	"github.com/lbpair/lbpair/agent/internal/probe"
)

const (
	standaloneVIP = "198.18.0.100"
	lbPort        = 88
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// TestMain removes the lbpair command lbpairBinary built, once every test
// of the package is done with it.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// lbpairBinary builds the lbpair command once per test run.
func lbpairBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lbpair-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "lbpair")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/lbpair/lbpair").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// pairFile is a standalone agent file: lb1 preferred, 100ms VRRPv3 adverts,
// port 88 to web01 and web02, the access log on.
func pairFile(t *testing.T) string {
	return pairFileWith(t, "advertisementInterval: 100ms\naccessLog: true", nodePriority{"lb1", 150}, nodePriority{"lb2", 100})
}

// nodePriority is a Node of a standalone file and its priority label.
type nodePriority struct {
	name     string
	priority int
}

// family is the addresses of the pair lab in one address family.
type family struct {
	vip      string
	backends []string // web01's and web02's
}

var (
	ipv4 = family{standaloneVIP, []string{"198.18.0.21:80", "198.18.0.22:80"}}
	ipv6 = family{"fd00:198:18::100", []string{"[fd00:198:18::21]:80", "[fd00:198:18::22]:80"}}
)

// pairFileWith is a standalone agent file for the given nodes, with port 88
// to web01 and web02; vrrp holds the spec's VRRP fields, one per line.
func pairFileWith(t *testing.T, vrrp string, nodes ...nodePriority) string {
	return pairFileFor(t, ipv4, vrrp, nodes...)
}

// pairFileFor is pairFileWith in the given address family.
func pairFileFor(t *testing.T, fam family, vrrp string, nodes ...nodePriority) string {
	return pairFileWithPort(t, fam, vrrp, "", nodes...)
}

// pairFileWithPort is pairFileFor with more fields of the port, one per line.
func pairFileWithPort(t *testing.T, fam family, vrrp, port string, nodes ...nodePriority) string {
	t.Helper()
	var static []string
	for _, b := range fam.backends {
		static = append(static, fmt.Sprintf("{address: %q}", b))
	}
	doc := fmt.Sprintf(`apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata: {name: web}
spec:
  virtualIPs: ["%s"]
  virtualRouterID: 51
  %s
  drainTimeout: 2s
  announcements: {repeat: 3, delay: 1s}
  ports:
  - name: http
    port: %d
    backend:
      static: [%s]
    timeouts: {connect: 200ms}
    %s
`, fam.vip, strings.ReplaceAll(vrrp, "\n", "\n  "), lbPort, strings.Join(static, ", "), strings.ReplaceAll(port, "\n", "\n    "))
	for _, n := range nodes {
		doc += fmt.Sprintf("---\napiVersion: v1\nkind: Node\nmetadata: {name: %s, labels: {lbpair.io/priority: \"%d\"}}\n", n.name, n.priority)
	}
	path := filepath.Join(t.TempDir(), "pair.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serveName runs an HTTP server on the host that answers with the host's
// name; its socket lives in the host's namespace.
func serveName(t *testing.T, h *netlab.Host, addr string) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, h.Name)
	}), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
}

func dialFrom(h *netlab.Host) probe.DialFunc {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
}

type agentProc struct {
	host *netlab.Host
	proc *netlab.Proc
}

// startAgent starts the standalone agent on h with the capabilities of the
// systemd unit we ship, and no others.
func startAgent(t *testing.T, h *netlab.Host, bin, file string) *agentProc {
	t.Helper()
	health := hostIP(h) + ":9440"
	p, err := h.StartWithCapabilities(func(line string) { t.Logf("%s: %s", h.Name, line) }, unitCapabilities(t),
		bin, "agent", "--config", file, "--node-name", h.Name, "--health-addr", health)
	if err != nil {
		t.Fatal(err)
	}
	// ip and setpriv exec in place: once the pid runs the agent, it must have
	// NET_ADMIN, NET_RAW and NET_BIND_SERVICE, and no other capability.
	pid := p.Cmd.Process.Pid
	netlab.Eventually(t, h.Name+"'s agent running", 5*time.Second, func() error {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != bin {
			return fmt.Errorf("pid %d runs %q (%v)", pid, exe, err)
		}
		return nil
	})
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(1)<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW | 1<<unix.CAP_NET_BIND_SERVICE
	if line := fmt.Sprintf("CapEff:\t%016x", want); !strings.Contains(string(status), line) {
		t.Fatalf("%s's agent does not run with the unit's capabilities: no %q in\n%s", h.Name, line, status)
	}
	return &agentProc{host: h, proc: p}
}

// unitCapabilities reads the CapabilityBoundingSet of the agent's systemd
// unit.
func unitCapabilities(t *testing.T) []string {
	t.Helper()
	unit, err := os.ReadFile(filepath.Join("..", "config", "standalone", "lbpair-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.+)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatal("the agent's systemd unit sets no CapabilityBoundingSet")
	}
	return strings.Fields(string(m[1]))
}

func hostIP(h *netlab.Host) string {
	return map[string]string{"lb1": "198.18.0.11", "lb2": "198.18.0.12"}[h.Name]
}

// httpGetFrom fetches a URL from inside a host's namespace.
func httpGetFrom(h *netlab.Host, url string) (int, string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialFrom(h)(ctx, addr)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 2 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// pairLab makes the hosts of a pair's lab: lb1 and lb2 for the pair, web01
// and web02 serving their names on :80, and a client; every host has an IPv4
// and an IPv6 address.
func pairLab(t *testing.T) (lb1, lb2, client *netlab.Host) {
	l := netlab.NewT(t)
	lb1 = netlab.MustAddHost(t, l, "lb1", "198.18.0.11/24", "fd00:198:18::11/64")
	lb2 = netlab.MustAddHost(t, l, "lb2", "198.18.0.12/24", "fd00:198:18::12/64")
	web1 := netlab.MustAddHost(t, l, "web01", "198.18.0.21/24", "fd00:198:18::21/64")
	web2 := netlab.MustAddHost(t, l, "web02", "198.18.0.22/24", "fd00:198:18::22/64")
	client = netlab.MustAddHost(t, l, "client", "198.18.0.30/24", "fd00:198:18::30/64")
	for _, fam := range []family{ipv4, ipv6} {
		serveName(t, web1, fam.backends[0])
		serveName(t, web2, fam.backends[1])
	}
	return lb1, lb2, client
}

func TestStandalonePairServesAndFailsOver(t *testing.T) {
	lb1, lb2, client := pairLab(t)
	bin, file := lbpairBinary(t), pairFile(t)

	a1 := startAgent(t, lb1, bin, file)
	startAgent(t, lb2, bin, file)
	waitVIP(t, standaloneVIP, lb1, lb2)
	for _, h := range []*netlab.Host{lb1, lb2} {
		h := h
		netlab.Eventually(t, h.Name+" ready", 10*time.Second, func() error {
			code, body, err := httpGetFrom(h, "http://"+hostIP(h)+":9440/readyz")
			if err != nil || code != 200 {
				return fmt.Errorf("readyz %d %q %v", code, body, err)
			}
			return nil
		})
	}
	_, metrics, err := httpGetFrom(lb1, "http://198.18.0.11:9440/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`lbpair_vrrp_state{state="Master",vrid="51"} 1`, `lbpair_vrrp_priority{vrid="51"} 150`, "lbpair_vrrp_adverts_sent_total", "lbpair_vrrp_packets_dropped_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// The backup too: its healthy proxy never signals a tracking change.
	if _, metrics, err := httpGetFrom(lb2, "http://198.18.0.12:9440/metrics"); err != nil {
		t.Error(err)
	} else if want := `lbpair_vrrp_priority{vrid="51"} 100`; !strings.Contains(metrics, want) {
		t.Errorf("lb2's metrics lack %q", want)
	}

	p := &probe.Prober{Addr: fmt.Sprintf("%s:%d", standaloneVIP, lbPort), Period: 10 * time.Millisecond, Timeout: time.Second, Dial: dialFrom(client)}
	p.Start()
	defer p.Stop()
	// outageSince stops nothing but waits out the probes still in flight.
	outageSince := func(since time.Time) (time.Duration, int) {
		time.Sleep(p.Timeout + 100*time.Millisecond)
		return probe.Outage(p.Results(), since)
	}
	netlab.Eventually(t, "clients served through the VIP", 5*time.Second, func() error { return p.LastOK(1) })

	netlab.Eventually(t, "an access log line on lb1", 5*time.Second, func() error {
		return accessLogged(a1.proc.Output())
	})

	// An idle connection through lb1 outlives the stop: once the VIP has
	// moved its packets reach lb2, so lb1 closes it at the drain timeout,
	// which is a clean stop, not an error.
	idle, err := dialFrom(client)(context.Background(), fmt.Sprintf("%s:%d", standaloneVIP, lbPort))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	netlab.Eventually(t, "the idle connection reaches lb1's proxy", 5*time.Second, func() error {
		if _, metrics, err := httpGetFrom(lb1, "http://198.18.0.11:9440/metrics"); err != nil {
			return err
		} else if strings.Contains(metrics, `lbpair_proxy_connections_active{listener="http"} 0`) ||
			!strings.Contains(metrics, `lbpair_proxy_connections_active{listener="http"}`) {
			return fmt.Errorf("no active connection yet")
		}
		return nil
	})

	// Graceful stop: priority 0, the VIP moves at once.
	stopAt := time.Now()
	if err := a1.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitVIP(t, standaloneVIP, lb2, lb1)
	if err := a1.proc.Err(); err != nil {
		t.Errorf("lb1 did not exit cleanly on SIGTERM: %v", err)
	}
	if !strings.Contains(a1.proc.Output(), "Drain timeout reached") {
		t.Errorf("lb1 did not log closing the idle connection at the drain timeout")
	}
	outage, failed := outageSince(stopAt)
	t.Logf("graceful stop: longest outage %v, %d failed probes", outage, failed)

	// The stopped agent comes back and preempts.
	a1 = startAgent(t, lb1, bin, file)
	waitVIP(t, standaloneVIP, lb1, lb2)
	time.Sleep(500 * time.Millisecond)

	// kill -9: the crashed agent leaves its VIP behind; lb2 takes over
	// after Master_Down_Interval and its announcements move the clients.
	killAt := time.Now()
	if err := a1.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	netlab.Eventually(t, "lb2 holds the VIP after lb1 was killed", 10*time.Second, func() error {
		if !hasVIP(t, lb2) {
			return fmt.Errorf("lb2 has no VIP")
		}
		return nil
	})
	outage, failed = outageSince(killAt)
	t.Logf("kill -9: longest outage %v, %d failed probes", outage, failed)
	if rs := p.Results(); !rs[len(rs)-1].OK || rs[len(rs)-1].Backend == "" {
		t.Errorf("clients not served after the kill: %v", tail(rs))
	}

	// A restarted agent removes the VIP its crashed run left behind before
	// joining. With a lower priority it stays backup, so only that cleanup
	// can take the VIP off lb1.
	if !hasVIP(t, lb1) {
		t.Fatal("the killed agent left no VIP behind: nothing to clean up")
	}
	a1 = startAgent(t, lb1, bin, pairFileWith(t, "advertisementInterval: 100ms", nodePriority{"lb1", 50}, nodePriority{"lb2", 100}))
	netlab.Eventually(t, "lb1 back as backup without the stale VIP", 10*time.Second, func() error {
		if !strings.Contains(a1.proc.Output(), "left by an earlier run") {
			return fmt.Errorf("lb1 has not logged the cleanup yet")
		}
		if hasVIP(t, lb1) || !hasVIP(t, lb2) {
			return fmt.Errorf("VIP on lb1 %v, lb2 %v", hasVIP(t, lb1), hasVIP(t, lb2))
		}
		return nil
	})
}

// TestStandaloneIPv6PairFailsOver runs a pair on IPv6: VRRPv3 between link-local
// addresses, the proxy on an IPv6 virtual IP to IPv6 backends. When the holder is
// killed, its kernel keeps the virtual IP and resets every connection to it, and the
// client still maps the virtual IP to its MAC: only the new holder's unsolicited
// neighbour advertisements move the client within the bound checked here (without them
// it is still refused seconds later, until its neighbour entry expires).
func TestStandaloneIPv6PairFailsOver(t *testing.T) {
	lb1, lb2, client := pairLab(t)
	bin, file := lbpairBinary(t), pairFileFor(t, ipv6, "advertisementInterval: 100ms", nodePriority{"lb1", 150}, nodePriority{"lb2", 100})
	a1 := startAgent(t, lb1, bin, file)
	startAgent(t, lb2, bin, file)
	waitVIP(t, ipv6.vip, lb1, lb2)
	p := &probe.Prober{Addr: fmt.Sprintf("[%s]:%d", ipv6.vip, lbPort), Period: 10 * time.Millisecond, Timeout: time.Second, Dial: dialFrom(client)}
	p.Start()
	defer p.Stop()
	netlab.Eventually(t, "clients served through the IPv6 VIP", 5*time.Second, func() error { return p.LastOK(1) })

	killAt := time.Now()
	if err := a1.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	netlab.Eventually(t, "clients served by lb2", 5*time.Second, func() error {
		if !holds(t, lb2, ipv6.vip) {
			return fmt.Errorf("lb2 has no VIP")
		}
		return p.LastOK(1)
	})
	time.Sleep(p.Timeout + 100*time.Millisecond)
	outage, failed := probe.Outage(p.Results(), killAt)
	t.Logf("kill -9 over IPv6: longest outage %v, %d failed probes", outage, failed)
	if outage > 3*time.Second {
		t.Errorf("outage %v after the kill; the announcements should have moved the client within a second or so", outage)
	}
	mac, err := lb2.Exec("cat", "/sys/class/net/"+netlab.HostLink+"/address")
	if err != nil {
		t.Fatal(err)
	}
	if neigh, err := client.Exec("ip", "-6", "neigh", "show", ipv6.vip, "dev", netlab.HostLink); err != nil || !strings.Contains(neigh, strings.TrimSpace(mac)) {
		t.Errorf("the client maps the VIP to %q (%v), want lb2's MAC %s", strings.TrimSpace(neigh), err, strings.TrimSpace(mac))
	}
}

// TestStandaloneReloadOnSIGHUP reloads the file as `nginx -s reload` does: a new backend
// list applies without a failed request or a VRRP transition, and a file that does not
// load is reported while the running configuration keeps serving.
func TestStandaloneReloadOnSIGHUP(t *testing.T) {
	lb1, _, client := pairLab(t)
	bin := lbpairBinary(t)
	file := pairFileWith(t, "advertisementInterval: 100ms", nodePriority{"lb1", 150})
	a := startAgent(t, lb1, bin, file)
	waitVIP(t, standaloneVIP, lb1)
	p := &probe.Prober{Addr: fmt.Sprintf("%s:%d", standaloneVIP, lbPort), Period: 10 * time.Millisecond, Timeout: time.Second, Dial: dialFrom(client)}
	p.Start()
	defer p.Stop()
	netlab.Eventually(t, "clients served through the VIP", 5*time.Second, func() error { return p.LastOK(1) })
	start := time.Now()
	transitions := strings.Count(a.proc.Output(), "VRRP state changed")

	// reload rewrites the file in place and signals the agent, then waits for want in
	// its log.
	reload := func(content []byte, want string) time.Time {
		t.Helper()
		logged := len(a.proc.Output())
		if err := os.WriteFile(file, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := a.proc.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		netlab.Eventually(t, "the agent logging "+want, 5*time.Second, func() error {
			if !strings.Contains(a.proc.Output()[logged:], want) {
				return fmt.Errorf("not yet")
			}
			return nil
		})
		return time.Now()
	}
	// servedOnlyBy checks that every probe since at went to backend.
	servedOnlyBy := func(what, backend string, at time.Time) {
		t.Helper()
		time.Sleep(300 * time.Millisecond)
		for _, r := range p.Results() {
			if r.At.After(at) && r.OK && r.Backend != backend {
				t.Errorf("%s: a request went to %s, want only %s", what, r.Backend, backend)
				return
			}
		}
	}

	onlyWeb02 := ipv4
	onlyWeb02.backends = ipv4.backends[1:]
	edited, err := os.ReadFile(pairFileFor(t, onlyWeb02, "advertisementInterval: 100ms", nodePriority{"lb1", 150}))
	if err != nil {
		t.Fatal(err)
	}
	at := reload(edited, "Configuration reloaded")
	servedOnlyBy("after the reload", "web02", at)

	// A tracking weight is the running router's to apply: a new router would hand
	// the VIP over and back.
	weighted := strings.Replace(string(edited), "advertisementInterval: 100ms", "advertisementInterval: 100ms\n  tracking: {proxyWeight: 10}", 1)
	if weighted == string(edited) {
		t.Fatal("the test's file has no advertisementInterval line to edit")
	}
	at = reload([]byte(weighted), "Configuration reloaded")
	servedOnlyBy("after a new tracking weight", "web02", at)

	at = reload([]byte("apiVersion: lbpair.io/v1alpha1\nkind: LoadBalancerPair\nspec: {virtualIPs: [\n"), "Reload failed; keeping the running configuration")
	servedOnlyBy("after a file that does not load", "web02", at)

	// lb1's own address as a second virtual IP: the router refuses it, and the
	// proxy, which listened there for a moment, goes back to what it ran.
	ownAddress := strings.Replace(string(edited), `virtualIPs: ["`+standaloneVIP+`"]`, `virtualIPs: ["`+standaloneVIP+`", "198.18.0.11"]`, 1)
	if ownAddress == string(edited) {
		t.Fatal("the test's file has no virtualIPs line to edit")
	}
	at = reload([]byte(ownAddress), "is this node's own address")
	servedOnlyBy("after a virtual IP that is the node's address", "web02", at)
	if out, err := lb1.Exec("ss", "-Hltn", "src", fmt.Sprintf("198.18.0.11:%d", lbPort)); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("lb1 listens on its own address after the refused reload (err %v):\n%s", err, out)
	}

	time.Sleep(p.Timeout)
	if _, failed := probe.Outage(p.Results(), start); failed > 0 {
		t.Errorf("%d requests failed across the reloads", failed)
	}
	if n := strings.Count(a.proc.Output(), "VRRP state changed"); n != transitions || !hasVIP(t, lb1) {
		t.Errorf("the reloads moved the VIP: %d VRRP transitions, VIP on lb1 %v", n-transitions, hasVIP(t, lb1))
	}
}

// TestStandaloneStopReleasesVIPWithLongInterval stops a lone master whose
// Master_Down_Interval (VRRPv2, 2s adverts: about 6.4s) is longer than the
// agent waits for its router to stop: the handover wait must give up first,
// so that the VIP is released before the process exits.
func TestStandaloneStopReleasesVIPWithLongInterval(t *testing.T) {
	lb1, _, _ := pairLab(t)
	a := startAgent(t, lb1, lbpairBinary(t), pairFileWith(t, "vrrpVersion: 2\nadvertisementInterval: 2s", nodePriority{"lb1", 150}))
	waitVIP(t, standaloneVIP, lb1)
	if err := a.proc.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.proc.Err(); err != nil {
		t.Errorf("lb1 did not exit cleanly on SIGTERM: %v", err)
	}
	if hasVIP(t, lb1) {
		t.Errorf("lb1 exited with the VIP still on its interface:\n%s", a.proc.Output())
	}
}

// accessLogged looks in an agent's output for an access log line of a finished
// connection from the client through port http to a web server.
func accessLogged(output string) error {
	for _, line := range strings.Split(output, "\n") {
		var e struct {
			Msg, Listener, Client, Backend, End string
			BytesToClient                       int64
		}
		if json.Unmarshal([]byte(line), &e) != nil || e.Msg != "Connection" {
			continue
		}
		if e.Listener != "http" || !strings.HasPrefix(e.Client, "198.18.0.30:") ||
			(e.Backend != "198.18.0.21:80" && e.Backend != "198.18.0.22:80") || e.BytesToClient == 0 || e.End == "" {
			return fmt.Errorf("access log line lacks a field: %s", line)
		}
		return nil
	}
	return fmt.Errorf("no access log line yet")
}

func tail(rs []probe.Result) []probe.Result {
	if len(rs) > 3 {
		return rs[len(rs)-3:]
	}
	return rs
}

func hasVIP(t *testing.T, h *netlab.Host) bool {
	t.Helper()
	return holds(t, h, standaloneVIP)
}

// waitVIP waits until addr is on holder's link and on none of the others'.
// The generous bound allows for VRRPv2's whole-second intervals.
func waitVIP(t *testing.T, addr string, holder *netlab.Host, others ...*netlab.Host) {
	t.Helper()
	netlab.Eventually(t, holder.Name+" holding "+addr, 20*time.Second, func() error {
		if !holds(t, holder, addr) {
			return fmt.Errorf("%s does not hold %s", holder.Name, addr)
		}
		for _, o := range others {
			if holds(t, o, addr) {
				return fmt.Errorf("%s holds %s too", o.Name, addr)
			}
		}
		return nil
	})
}

// holds tells whether addr is on the host's link.
func holds(t *testing.T, h *netlab.Host, addr string) bool {
	t.Helper()
	out, err := h.Exec("ip", "-o", "addr", "show", "dev", netlab.HostLink)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(out, " "+addr+"/")
}
