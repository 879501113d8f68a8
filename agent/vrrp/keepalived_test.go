package vrrp

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// keepalived is a keepalived VRRP instance the test runs on a lab host.
type keepalived struct {
	host    *netlab.Host
	proc    *netlab.Proc
	vrrpPID string
}

// crash kills keepalived's VRRP process with SIGKILL, so that it sends
// nothing more, as a crashed host would; then the parent.
func (k *keepalived) crash(t *testing.T) {
	t.Helper()
	var pid int
	deadline := time.Now().Add(5 * time.Second)
	for pid == 0 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(k.vrrpPID)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		time.Sleep(20 * time.Millisecond)
	}
	if pid == 0 {
		t.Fatal("keepalived wrote no VRRP pid file")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing keepalived's VRRP process %d: %v", pid, err)
	}
	if err := k.proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-k.proc.Done()
}

type keepalivedConfig struct {
	version  int
	vrid     int
	priority int
	interval string
	password string
	vip      netip.Addr
	// unicastSrc and peers, when set, put keepalived in unicast mode.
	unicastSrc netip.Addr
	peers      []netip.Addr
}

func needKeepalived(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("keepalived")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("keepalived is not installed; hack/install-lab-deps.sh installs it: %v", err)
		}
		t.Skipf("keepalived is not installed (run hack/install-lab-deps.sh): %v", err)
	}
	return path
}

// startKeepalived writes a keepalived.conf for one VRRP instance and runs
// keepalived (VRRP only, in the foreground) in the host's namespace.
func startKeepalived(t *testing.T, h *netlab.Host, c keepalivedConfig) *keepalived {
	t.Helper()
	bin := needKeepalived(t)
	dir := t.TempDir()
	auth := ""
	if c.password != "" {
		auth = fmt.Sprintf("    authentication {\n        auth_type PASS\n        auth_pass %s\n    }\n", c.password)
	}
	if len(c.peers) > 0 {
		auth += fmt.Sprintf("    unicast_src_ip %s\n    unicast_peer {\n", c.unicastSrc)
		for _, p := range c.peers {
			auth += fmt.Sprintf("        %s\n", p)
		}
		auth += "    }\n"
	}
	conf := fmt.Sprintf(`global_defs {
    router_id %[1]s
    vrrp_version %[2]d
    vrrp_garp_master_delay 0
    script_user root
}
vrrp_instance VI_%[3]d {
    state BACKUP
    interface %[4]s
    virtual_router_id %[3]d
    priority %[5]d
    advert_int %[6]s
%[7]s    virtual_ipaddress {
        %[8]s/%[9]d
    }
}
`, h.Name, c.version, c.vrid, netlab.HostLink, c.priority, c.interval, auth, c.vip, c.vip.BitLen())
	path := filepath.Join(dir, "keepalived.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := h.Start(func(line string) { t.Logf("keepalived %s: %s", h.Name, line) }, bin,
		"--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
		"--use-file="+path, "--pid="+filepath.Join(dir, "keepalived.pid"), "--vrrp_pid="+filepath.Join(dir, "vrrp.pid"))
	if err != nil {
		t.Fatal(err)
	}
	k := &keepalived{host: h, proc: p, vrrpPID: filepath.Join(dir, "vrrp.pid")}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	return k
}

// waitVIP waits until vip is on exactly the hosts given.
func waitVIP(t *testing.T, what string, vip netip.Addr, holders []*netlab.Host, others []*netlab.Host) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(15 * time.Second)
	for {
		ok := true
		for _, h := range holders {
			ok = ok && hasVIP(t, h, vip)
		}
		for _, h := range others {
			ok = ok && !hasVIP(t, h, vip)
		}
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: VIP not on exactly %v", what, names(holders))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func names(hs []*netlab.Host) string {
	var n []string
	for _, h := range hs {
		n = append(n, h.Name)
	}
	return strings.Join(n, ",")
}

func TestKeepalivedInterop(t *testing.T) {
	needKeepalived(t)
	vip6 := netip.MustParseAddr("fd00:198:18::100")
	modes := []struct {
		name     string
		version  int
		interval time.Duration
		kaIntvl  string
		password string
		vip      netip.Addr
	}{
		{"VRRPv2 with PASS authentication", 2, time.Second, "1", "s3cret", testVIP},
		{"VRRPv3 at 100ms", 3, 100 * time.Millisecond, "0.1", "", testVIP},
		{"VRRPv3 over IPv6", 3, 100 * time.Millisecond, "0.1", "", vip6},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			vip := m.vip
			cfg := func(prio uint8) Config {
				c := baseConfig(prio)
				c.Version, c.AdvertInterval, c.AuthPassword = m.version, m.interval, m.password
				c.VIPs, c.Interface = []netip.Addr{vip}, netlab.HostLink
				return c
			}
			ka := keepalivedConfig{version: m.version, vrid: 51, interval: m.kaIntvl, password: m.password, vip: vip}
			// Both families on every host: IPv6 adverts go between link-local
			// addresses, which must be up before a router starts.
			dualStackLab := func(t *testing.T, names ...string) []*netlab.Host {
				hosts := lab(t, names...)
				for i, h := range hosts {
					if err := h.AddAddr(fmt.Sprintf("fd00:198:18::%d/64", 11+i)); err != nil {
						t.Fatal(err)
					}
					linkLocal(t, h)
				}
				return hosts
			}

			t.Run("ours master, keepalived backup, failover both ways", func(t *testing.T) {
				h := dualStackLab(t, "ours", "ka")
				ours := startRouter(t, h[0], cfg(150))
				waitFor(t, "ours alone", vip, map[*node]State{ours: Master})
				ka.priority = 100
				k := startKeepalived(t, h[1], ka)
				// keepalived stays backup for many intervals.
				time.Sleep(5 * m.interval)
				waitVIP(t, "ours holds against keepalived", vip, h[:1], h[1:])
				if s := ours.state(); s != Master {
					t.Fatalf("ours is %v", s)
				}
				ours.stop()
				waitVIP(t, "keepalived takes over after our graceful stop", vip, h[1:], h[:1])
				// keepalived's own log says why: our priority-0 advert, not
				// a silent master.
				if out := k.proc.Output(); !strings.Contains(out, "Backup received priority 0 advertisement") {
					t.Errorf("keepalived did not log our priority-0 advert:\n%s", out)
				}
				ours = startRouter(t, h[0], cfg(150))
				took := waitVIP(t, "ours preempts keepalived", vip, h[:1], h[1:])
				t.Logf("ours preempted keepalived in %v", took)
				if s := ours.state(); s != Master {
					t.Fatalf("ours is %v", s)
				}
			})

			t.Run("keepalived master, ours backup, failover both ways", func(t *testing.T) {
				h := dualStackLab(t, "ka", "ours")
				ka.priority = 150
				k := startKeepalived(t, h[0], ka)
				waitVIP(t, "keepalived alone", vip, h[:1], h[1:])
				ours := startRouter(t, h[1], cfg(100))
				time.Sleep(5 * m.interval)
				waitFor(t, "ours follows keepalived", vip, map[*node]State{ours: Backup})
				// kill -9: keepalived goes silent with the VIP still on its
				// (now dead) host; ours takes over after Master_Down_Interval.
				start := time.Now()
				k.crash(t)
				waitFor(t, "ours after keepalived was killed", vip, map[*node]State{ours: Master})
				t.Logf("ours took over %v after keepalived was killed", time.Since(start))
				// A restarted keepalived with the higher priority takes the
				// VIP back from ours.
				if _, err := h[0].Exec("ip", "addr", "del", fmt.Sprintf("%s/%d", vip, vip.BitLen()), "dev", netlab.HostLink); err != nil {
					t.Logf("removing the dead keepalived's VIP: %v", err)
				}
				startKeepalived(t, h[0], ka)
				waitVIP(t, "keepalived preempts ours", vip, h[:1], h[1:])
				waitFor(t, "ours back to backup", vip, map[*node]State{ours: Backup})
			})

			t.Run("wrong VRID or password is ignored", func(t *testing.T) {
				h := dualStackLab(t, "ours", "ka")
				ours := startRouter(t, h[0], cfg(100))
				waitFor(t, "ours alone", vip, map[*node]State{ours: Master})
				bad := ka
				bad.priority = 200
				if m.password != "" {
					bad.password = "wrong"
				} else {
					bad.vrid = 52
				}
				reason := "auth"
				if m.password == "" {
					reason = "vrid"
				}
				dropped := ours.router.metrics.dropped.WithLabelValues(reason)
				steady := watchSteady(t, vip, ours)
				startKeepalived(t, h[1], bad)
				// keepalived becomes master of its own group; ours is not
				// disturbed and drops its adverts, for as long as it takes to
				// hear several.
				netlab.Eventually(t, "ours hearing keepalived's adverts", 15*time.Second, func() error {
					if n := metricValue(t, dropped); n < 3 {
						return fmt.Errorf("%v adverts dropped for %q", n, reason)
					}
					return nil
				})
				steady("ours undisturbed")
			})
		})
	}
}

// TestKeepalivedUnicastInterop: keepalived with unicast peers and a router
// with Peers elect one master, whichever has the higher priority. keepalived
// sends its IPv6 unicast adverts with the kernel's default hop limit (64),
// not 255: a router that dropped them would become a second master.
func TestKeepalivedUnicastInterop(t *testing.T) {
	needKeepalived(t)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			l := netlab.NewT(t)
			hk := netlab.MustAddHost(t, l, "ka", f.addrs[0])
			ho := netlab.MustAddHost(t, l, "ours", f.addrs[1])
			kaAddr, ourAddr := netip.MustParsePrefix(f.addrs[0]).Addr(), netip.MustParsePrefix(f.addrs[1]).Addr()
			if f.vip.Is6() {
				// IPv6 adverts go between link-local addresses.
				kaAddr, ourAddr = linkLocal(t, hk), linkLocal(t, ho)
			}
			startKeepalived(t, hk, keepalivedConfig{version: 3, vrid: 51, priority: 150, interval: "0.1", vip: f.vip, unicastSrc: kaAddr, peers: []netip.Addr{ourAddr}})
			waitVIP(t, "keepalived alone", f.vip, []*netlab.Host{hk}, []*netlab.Host{ho})
			cfg := baseConfig(100)
			cfg.VIPs, cfg.Peers, cfg.Interface = []netip.Addr{f.vip}, []netip.Addr{kaAddr}, netlab.HostLink
			ours := startRouter(t, ho, cfg)
			// A second of keepalived's adverts, well past our
			// Master_Down_Interval: a router that dropped them would be
			// master by then.
			netlab.Eventually(t, "ours accepts keepalived's adverts", 5*time.Second, func() error {
				if n := metricValue(t, ours.router.metrics.received); n < 10 {
					return fmt.Errorf("accepted %v adverts, dropped %v for their TTL", n, metricValue(t, ours.router.metrics.dropped.WithLabelValues("ttl")))
				}
				return nil
			})
			waitFor(t, "ours follows keepalived", f.vip, map[*node]State{ours: Backup})
			waitVIP(t, "VIP on keepalived only", f.vip, []*netlab.Host{hk}, []*netlab.Host{ho})
			// Outranked, keepalived must hear our unicast adverts to give
			// the VIP up.
			cfg.Priority = 200
			if err := ours.router.Reconfigure(cfg); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "ours preempts keepalived", f.vip, map[*node]State{ours: Master})
			waitVIP(t, "VIP on ours only", f.vip, []*netlab.Host{ho}, []*netlab.Host{hk})
		})
	}
}

// metricValue is the value of a counter or a gauge.
func metricValue(t *testing.T, c interface{ Write(*dto.Metric) error }) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	if m.Gauge != nil {
		return m.GetGauge().GetValue()
	}
	return m.GetCounter().GetValue()
}
