//go:build failoverbench

// The failover benchmark (make bench-failover): the longest outage a client
// opening a new connection through the VIP every 10 ms sees when the master
// loses its link, is killed, or stops gracefully, for an lbpair pair and a
// keepalived pair side by side at the same advertisement interval; then a
// stability run of 20 ms adverts under CPU load. It prints tables and a
// verdict line per scenario; it asserts only that the lab works, never a
// timing, since a shared two-core machine makes absolute figures drift.
package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lbpair/lbpair/agent/internal/netlab"
	"github.com/lbpair/lbpair/agent/internal/probe"
)

type failMode string

const (
	linkLoss failMode = "link loss"
	kill9    failMode = "kill -9"
	graceful failMode = "graceful stop"
)

// pairImpl starts a VRRP pair on lb1 (preferred) and lb2 and fails lb1.
type pairImpl struct {
	name  string
	start func(t *testing.T, lb1, lb2 *netlab.Host, interval time.Duration) (fail func(failMode))
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestFailoverBench(t *testing.T) {
	rounds := envInt("BENCH_ROUNDS", 3)
	bin := lbpairBinary(t)
	impls := []pairImpl{
		{"lbpair", func(t *testing.T, lb1, lb2 *netlab.Host, interval time.Duration) func(failMode) {
			file := benchPairFile(t, interval)
			a1 := startAgent(t, lb1, bin, file)
			startAgent(t, lb2, bin, file)
			return func(m failMode) {
				switch m {
				case linkLoss:
					must(t, lb1.SetLinkUp(false))
				case kill9:
					must(t, a1.proc.Signal(syscall.SIGKILL))
				case graceful:
					must(t, a1.proc.Signal(syscall.SIGTERM))
				}
			}
		}},
		{"keepalived", func(t *testing.T, lb1, lb2 *netlab.Host, interval time.Duration) func(failMode) {
			k1 := startKeepalivedNode(t, lb1, 150, interval)
			startKeepalivedNode(t, lb2, 100, interval)
			return func(m failMode) {
				switch m {
				case linkLoss:
					must(t, lb1.SetLinkUp(false))
				case kill9:
					k1.crash(t)
				case graceful:
					must(t, k1.proc.Signal(syscall.SIGTERM))
				}
			}
		}},
	}
	type key struct {
		impl     string
		interval time.Duration
		mode     failMode
	}
	results := map[key][]time.Duration{}
	for _, interval := range []time.Duration{time.Second, 100 * time.Millisecond} {
		for _, mode := range []failMode{linkLoss, kill9, graceful} {
			for round := range rounds {
				for _, impl := range impls {
					name := fmt.Sprintf("%s/%v/%s/%d", impl.name, interval, mode, round)
					t.Run(name, func(t *testing.T) {
						outage := failoverTrial(t, impl, interval, mode)
						k := key{impl.name, interval, mode}
						results[k] = append(results[k], outage)
						t.Logf("%s: outage %v", name, outage)
					})
				}
			}
		}
	}

	var b, verdicts strings.Builder
	fmt.Fprintf(&b, "\nFailover: longest outage seen by a client opening a connection every 10 ms (%d rounds: median / max)\n", rounds)
	fmt.Fprintf(&b, "%-10s %-14s %-22s %-22s %s\n", "interval", "failure", "lbpair", "keepalived", "lbpair/keepalived")
	for _, interval := range []time.Duration{time.Second, 100 * time.Millisecond} {
		for _, mode := range []failMode{linkLoss, kill9, graceful} {
			ours, theirs := results[key{"lbpair", interval, mode}], results[key{"keepalived", interval, mode}]
			if len(ours) == 0 && len(theirs) == 0 {
				continue
			}
			mo, mt := median(ours), median(theirs)
			ratio := "-"
			if mt > 0 {
				ratio = fmt.Sprintf("%.2f", float64(mo)/float64(mt))
			}
			fmt.Fprintf(&b, "%-10v %-14s %-22s %-22s %s\n", interval, mode,
				fmt.Sprintf("%v / %v", mo.Round(time.Millisecond), maxOf(ours).Round(time.Millisecond)),
				fmt.Sprintf("%v / %v", mt.Round(time.Millisecond), maxOf(theirs).Round(time.Millisecond)), ratio)
			fmt.Fprintln(&verdicts, failoverVerdict(interval, mode, ours, theirs))
		}
	}
	fmt.Println(b.String())
	fmt.Println(verdicts.String())
}

// gracefulGoal is the outage a graceful stop should stay under: the
// priority-0 handover keeps the VIP served until the new master holds it.
const gracefulGoal = 50 * time.Millisecond

// failoverVerdict is one scenario's verdict line: the ratio of the median
// outages, lbpair's over keepalived's at the same interval, and for a
// graceful stop whether each stayed under gracefulGoal in every round.
func failoverVerdict(interval time.Duration, mode failMode, ours, theirs []time.Duration) string {
	v := fmt.Sprintf("VERDICT %v %s: ", interval, mode)
	mo, mt := median(ours), median(theirs)
	switch {
	case len(ours) == 0 || len(theirs) == 0:
		v += "incomplete: a side has no rounds"
	case mt == 0:
		v += fmt.Sprintf("ours/keepalived n/a (keepalived had no outage, ours %v)", mo.Round(time.Millisecond))
	default:
		r := float64(mo) / float64(mt)
		cmp := "on par with"
		if r < 0.9 {
			cmp = "faster than"
		} else if r > 1.1 {
			cmp = "slower than"
		}
		v += fmt.Sprintf("ours/keepalived %.2f, lbpair %s keepalived", r, cmp)
	}
	if mode == graceful {
		under := func(ds []time.Duration) string {
			if len(ds) > 0 && maxOf(ds) < gracefulGoal {
				return "yes"
			}
			return "no"
		}
		v += fmt.Sprintf("; graceful stop under %v in every round: lbpair %s (max %v), keepalived %s (max %v)", gracefulGoal,
			under(ours), maxOf(ours).Round(time.Millisecond), under(theirs), maxOf(theirs).Round(time.Millisecond))
	}
	return v
}

// failoverTrial runs one pair in a fresh lab, fails its master and returns
// the longest outage the client saw.
func failoverTrial(t *testing.T, impl pairImpl, interval time.Duration, mode failMode) time.Duration {
	lb1, lb2, client := pairLab(t)
	fail := impl.start(t, lb1, lb2, interval)
	netlab.Eventually(t, "lb1 holds the VIP", 20*time.Second, func() error {
		if !hasVIP(t, lb1) || hasVIP(t, lb2) {
			return fmt.Errorf("VIP on lb1 %v, lb2 %v", hasVIP(t, lb1), hasVIP(t, lb2))
		}
		return nil
	})
	p := &probe.Prober{Addr: fmt.Sprintf("%s:%d", standaloneVIP, lbPort), Period: 10 * time.Millisecond, Timeout: 500 * time.Millisecond, Dial: dialFrom(client)}
	p.Start()
	stopped := false
	defer func() {
		if !stopped {
			p.Stop()
		}
	}()
	netlab.Eventually(t, "served through the VIP", 10*time.Second, func() error { return p.LastOK(20) })
	// Fail at a random point of the advertisement period: otherwise the
	// lab's fixed timings put the failure at the same phase of the adverts
	// in every round, and that phase, not the implementation, sets the
	// outage.
	time.Sleep(rand.N(interval))
	failAt := time.Now()
	fail(mode)
	netlab.Eventually(t, "served again after the failure", 30*time.Second, func() error {
		if !hasVIP(t, lb2) {
			return fmt.Errorf("lb2 has no VIP")
		}
		return p.LastOK(20)
	})
	// Probes sent during the outage may still be waiting for their
	// timeout: Stop waits for them.
	p.Stop()
	stopped = true
	outage, _ := probe.Outage(p.Results(), failAt)
	return outage
}

func benchPairFile(t *testing.T, interval time.Duration) string {
	doc := fmt.Sprintf(`apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata: {name: web}
spec:
  virtualIPs: [%s]
  virtualRouterID: 51
  advertisementInterval: %v
  drainTimeout: 1s
  ports:
  - name: http
    port: %d
    backend:
      static: [{address: "198.18.0.21:80"}, {address: "198.18.0.22:80"}]
---
apiVersion: v1
kind: Node
metadata: {name: lb1, labels: {lbpair.io/priority: "150"}}
---
apiVersion: v1
kind: Node
metadata: {name: lb2, labels: {lbpair.io/priority: "100"}}
`, standaloneVIP, interval, lbPort)
	path := filepath.Join(t.TempDir(), "pair.yaml")
	must(t, os.WriteFile(path, []byte(doc), 0o600))
	return path
}

type keepalivedNode struct {
	proc    *netlab.Proc
	vrrpPID string
	srv     *http.Server
}

// startKeepalivedNode runs keepalived (VRRPv3) and, standing in for nginx,
// an HTTP server bound with IP_FREEBIND to VIP:88 on the host.
func startKeepalivedNode(t *testing.T, h *netlab.Host, prio int, interval time.Duration) *keepalivedNode {
	return startKeepalivedLogged(t, h, prio, interval, nil)
}

func startKeepalivedLogged(t *testing.T, h *netlab.Host, prio int, interval time.Duration, logw func(string)) *keepalivedNode {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`global_defs {
    router_id %s
    vrrp_version 3
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}
vrrp_instance VI_51 {
    state BACKUP
    interface %s
    virtual_router_id 51
    priority %d
    advert_int %s
    virtual_ipaddress {
        %s/32
    }
}
`, h.Name, netlab.HostLink, prio, strconv.FormatFloat(interval.Seconds(), 'f', -1, 64), standaloneVIP)
	path := filepath.Join(dir, "keepalived.conf")
	must(t, os.WriteFile(path, []byte(conf), 0o600))
	p, err := h.Start(logw, "keepalived", "--dont-fork", "--log-console", "--no-syslog", "--vrrp",
		"--use-file="+path, "--pid="+filepath.Join(dir, "k.pid"), "--vrrp_pid="+filepath.Join(dir, "v.pid"))
	must(t, err)
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })

	var ln net.Listener
	must(t, h.Do(func() (err error) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1) }); err != nil {
				return err
			}
			return serr
		}}
		ln, err = lc.Listen(context.Background(), "tcp", fmt.Sprintf("%s:%d", standaloneVIP, lbPort))
		return err
	}))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, h.Name) }), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return &keepalivedNode{proc: p, vrrpPID: filepath.Join(dir, "v.pid"), srv: srv}
}

// crash kills keepalived's VRRP process and then its parent with SIGKILL,
// and closes the node's service at once, as when the agent (VRRP and proxy
// in one process) is killed.
func (k *keepalivedNode) crash(t *testing.T) {
	t.Helper()
	_ = k.srv.Close()
	b, err := os.ReadFile(k.vrrpPID)
	must(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	must(t, err)
	must(t, syscall.Kill(pid, syscall.SIGKILL))
	must(t, k.proc.Signal(syscall.SIGKILL))
}

// TestAdvertStabilityUnderLoad runs a pair with 20 ms adverts while busy
// loops load every CPU, and counts transitions after the election (there
// should be none); then a keepalived pair in the same conditions.
func TestAdvertStabilityUnderLoad(t *testing.T) {
	d := 2 * time.Minute
	if v, err := time.ParseDuration(os.Getenv("BENCH_STABILITY")); err == nil {
		d = v
	}
	loops := 2 * cpuCount()
	bin := lbpairBinary(t)
	var ours, theirs int
	t.Run("lbpair", func(t *testing.T) {
		lb1, lb2, _ := pairLab(t)
		file := benchPairFile(t, 20*time.Millisecond)
		startAgent(t, lb1, bin, file)
		startAgent(t, lb2, bin, file)
		waitVIPOn(t, lb1, lb2)
		time.Sleep(time.Second)
		before := transitions(t, lb1) + transitions(t, lb2)
		load(t, loops, lb1, lb2)
		time.Sleep(d)
		ours = int(transitions(t, lb1) + transitions(t, lb2) - before)
	})
	t.Run("keepalived", func(t *testing.T) {
		lb1, lb2, _ := pairLab(t)
		var mu sync.Mutex
		count := 0
		counting := false
		logw := func(line string) {
			if strings.Contains(line, "Entering MASTER STATE") || strings.Contains(line, "Entering BACKUP STATE") {
				mu.Lock()
				if counting {
					count++
				}
				mu.Unlock()
			}
		}
		startKeepalivedLogged(t, lb1, 150, 20*time.Millisecond, logw)
		startKeepalivedLogged(t, lb2, 100, 20*time.Millisecond, logw)
		waitVIPOn(t, lb1, lb2)
		time.Sleep(time.Second)
		mu.Lock()
		counting = true
		mu.Unlock()
		load(t, loops, lb1, lb2)
		time.Sleep(d)
		mu.Lock()
		theirs = count
		mu.Unlock()
	})
	// No failure is injected after the election: every transition is a
	// false one, a backup that missed adverts under load.
	fmt.Printf("\nStability: 20 ms adverts for %v with %d busy loops on %d CPUs\n", d, loops, cpuCount())
	fmt.Printf("VERDICT stability: false transitions lbpair %d, keepalived %d\n\n", ours, theirs)
}

func waitVIPOn(t *testing.T, holder, other *netlab.Host) {
	netlab.Eventually(t, holder.Name+" holds the VIP", 20*time.Second, func() error {
		if !hasVIP(t, holder) || hasVIP(t, other) {
			return fmt.Errorf("VIP on %s %v, %s %v", holder.Name, hasVIP(t, holder), other.Name, hasVIP(t, other))
		}
		return nil
	})
}

// load starts busy loops in the lab's hosts; the lab stops them.
func load(t *testing.T, n int, hosts ...*netlab.Host) {
	for i := range n {
		_, err := hosts[i%len(hosts)].Start(nil, "sh", "-c", "while :; do :; done")
		must(t, err)
	}
}

var transitionsRE = regexp.MustCompile(`(?m)^lbpair_vrrp_transitions_total\{[^}]*\} ([0-9.e+]+)$`)

func transitions(t *testing.T, h *netlab.Host) float64 {
	t.Helper()
	_, body, err := httpGetFrom(h, "http://"+hostIP(h)+":9440/metrics")
	must(t, err)
	var sum float64
	for _, m := range transitionsRE.FindAllStringSubmatch(body, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		sum += v
	}
	return sum
}

func cpuCount() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 1
	}
	return set.Count()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func maxOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
