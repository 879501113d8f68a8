package main

import (
	"bufio"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/lbpair/lbpair/agent/internal/netlab"
)

// The lab: wrk on the client, the three proxies side by side on the proxy host (one
// port each), two nginx HTTP backends.
const (
	clientIP = "198.18.0.1"
	proxyIP  = "198.18.0.2"
	bigSize  = 8 << 20 // bytes of the bulk-transfer file
)

var backendIPs = []string{"198.18.0.11", "198.18.0.12"}

type benchProxy struct {
	name string
	cmd  []string // how to start it, for a fresh start before the memory figure
	port int
	proc *netlab.Proc
}

type scenario struct {
	id    string
	name  string
	conns int
	path  string
}

// sample is one wrk run through one proxy.
type sample struct {
	rps, cpuSec, reqPerCPU float64
	p50, p75, p90, p99     time.Duration
	bytesPerSec            float64
	errors                 int
	// switches counts the proxy's context switches (voluntary, involuntary) per request.
	switches [2]float64
	// segments counts the TCP segments the proxy's host sent per request.
	segments float64
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	rounds := fs.Int("rounds", 6, "rounds; medians are reported. The order of the proxies is balanced over every 2 rounds for 2 proxies, 4 for 4, and 6 for 3")
	duration := fs.Duration("duration", 4*time.Second, "length of each wrk run")
	idleConns := fs.Int("idle-conns", 4000, "idle connections for the memory figure")
	stalledConns := fs.Int("stalled-conns", 1000, "stalled downloads for the second memory figure; 0 skips it")
	procs := fs.Int("gomaxprocs", 1, "GOMAXPROCS of the lbpair proxy")
	only := fs.String("scenarios", "small50,small500,bulk,connclose", "scenarios to run, comma-separated: small50, small500 (keep-alive requests), bulk (8 MiB responses), connclose (a new connection per request)")
	skipMem := fs.Bool("skip-memory", false, "skip the idle-connection memory figure")
	compare := fs.String("compare", "", "another proxybench binary whose lbpair proxy runs as a fourth proxy, lbpair-b: another build for an A/B comparison of a change, or this one for the noise floor")
	verbose := fs.Bool("v", false, "print every sample")
	pin := fs.Bool("pin", false, "run the proxies on the last CPU, and wrk and the backends on the others, so that latency reflects the proxies more than how the scheduler places them (needs 2 CPUs or more)")
	peerBuf := fs.Int("peer-bufsize", 0, "buffer size of nginx (proxy_buffer_size) and HAProxy (tune.bufsize) in bytes; 0 keeps their defaults, 16 KiB, where lbpair reads 64 KiB at a time")
	_ = fs.Parse(args)

	var missing []string
	bins := map[string]string{}
	for name, pkg := range map[string]string{"nginx": "nginx libnginx-mod-stream", "haproxy": "haproxy", "wrk": "wrk"} {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, pkg)
		}
		bins[name] = p
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing Debian packages %s; run hack/install-lab-deps.sh", strings.Join(missing, ", "))
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	raiseNoFile()

	lab, err := netlab.New()
	if err != nil {
		return fmt.Errorf("building the lab: %w", err)
	}
	defer lab.Close()
	// Interrupted runs still remove the lab and stop what it started.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; _ = lab.Close(); os.Exit(130) }()

	dir, err := os.MkdirTemp("", "lbpair-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	client, err := lab.AddHost("client", clientIP+"/24")
	if err != nil {
		return err
	}
	// In the new-connection-per-request runs, wrk closes as soon as it has the answer.
	// Behind a proxy that sends its FIN a little later, wrk closes first and keeps the
	// TIME_WAIT: thousands per run, a minute each, on the client's 28k ephemeral ports.
	// By the second round its connects crawl through a nearly full port range, and that
	// proxy's figures collapse for a reason of the client's own. Reusing ports in
	// TIME_WAIT (safe with timestamps) is what load generators do.
	if err := client.Sysctl("net.ipv4.tcp_tw_reuse", "1"); err != nil {
		return err
	}
	proxyHost, err := lab.AddHost("proxy", proxyIP+"/24")
	if err != nil {
		return err
	}
	// onCPU runs a command on the given CPUs when asked (-pin); taskset execs it, so its
	// pid, whose CPU time and switches the figures read, is the command's. The proxies
	// get the last CPU, the load (wrk and the backends) the others.
	cpus := runtimeCPUs()
	if *pin && cpus < 2 {
		return fmt.Errorf("-pin needs 2 CPUs or more, one for the proxies and the others for the load; this machine has %d", cpus)
	}
	loadCPUs, proxyCPU := pinnedCPUs(cpus)
	onCPU := func(cpu string, cmd ...string) []string {
		if !*pin {
			return cmd
		}
		return append([]string{"taskset", "-c", cpu}, cmd...)
	}
	wrkCmd := onCPU(loadCPUs, bins["wrk"])
	if err := startBackends(lab, dir, onCPU(loadCPUs, bins["nginx"])); err != nil {
		return err
	}

	var backends []string
	for _, ip := range backendIPs {
		backends = append(backends, ip+":8080")
	}
	proxies := []*benchProxy{{name: "lbpair", port: 8001}, {name: "nginx", port: 8002}, {name: "haproxy", port: 8003}}
	ourArgs := []string{"proxy", "-listen", fmt.Sprintf("%s:%d", proxyIP, proxies[0].port), "-gomaxprocs", strconv.Itoa(*procs)}
	for _, b := range backends {
		ourArgs = append(ourArgs, "-backend", b)
	}
	proxies[0].cmd = onCPU(proxyCPU, append([]string{self}, ourArgs...)...)
	nginxConf, err := writeNginxStream(dir, proxies[1].port, backends, *peerBuf)
	if err != nil {
		return err
	}
	proxies[1].cmd = onCPU(proxyCPU, bins["nginx"], "-p", dir, "-c", nginxConf, "-e", "stderr")
	haproxyConf, err := writeHAProxy(dir, proxies[2].port, backends, *peerBuf)
	if err != nil {
		return err
	}
	proxies[2].cmd = onCPU(proxyCPU, bins["haproxy"], "-db", "-f", haproxyConf)
	if *compare != "" {
		b := &benchProxy{name: "lbpair-b", port: 8004}
		bArgs := slices.Clone(ourArgs)
		bArgs[2] = fmt.Sprintf("%s:%d", proxyIP, b.port)
		b.cmd = onCPU(proxyCPU, append([]string{*compare}, bArgs...)...)
		proxies = append(proxies, b)
	}
	for _, p := range proxies {
		if err := p.start(proxyHost, client); err != nil {
			return err
		}
	}

	fmt.Printf("lbpair proxy benchmark: %d rounds of %v per run; wrk -t1 on the client, each proxy with one worker (lbpair GOMAXPROCS=%d), two nginx backends\n",
		*rounds, *duration, *procs)
	fmt.Printf("CPU: %d cores shared with the client, the backends and anything else on the machine; ratios are the figures to read.\n", runtimeCPUs())
	if *pin {
		fmt.Printf("Pinned: the proxies on CPU %s, wrk and the backends on CPU %s.\n", proxyCPU, loadCPUs)
	}
	if *peerBuf > 0 {
		fmt.Printf("nginx and HAProxy buffers: %d bytes (proxy_buffer_size, tune.bufsize).\n", *peerBuf)
	}
	period := orderPeriod(len(proxies))
	fmt.Printf("Order within a round: over every %d rounds, each proxy runs equally often in each position and right after each other proxy", period)
	if *rounds%period != 0 {
		fmt.Printf(" (%d rounds is not a multiple of %d, so this run is not fully balanced)", *rounds, period)
	}
	fmt.Print(".\n\n")

	var scenarios []scenario
	for _, sc := range []scenario{
		{"small50", "small, 50 conns", 50, "/"},
		{"small500", "small, 500 conns", 500, "/"},
		{"bulk", "bulk 8MiB, 4 conns", 4, "/big"},
		{"connclose", "new conn per request, 50", 50, "/close"},
	} {
		if slices.Contains(strings.Split(*only, ","), sc.id) { // an empty list: memory only
			scenarios = append(scenarios, sc)
		}
	}
	for _, p := range proxies {
		if _, err := wrk(client, wrkCmd, p, 10, "/", time.Second); err != nil {
			return err
		}
	}
	results := map[string]map[string][]sample{}
	for _, sc := range scenarios {
		results[sc.name] = map[string][]sample{}
	}
	for r := range *rounds {
		for _, sc := range scenarios {
			for _, k := range runOrder(r, len(proxies)) {
				p := proxies[k]
				s, err := wrk(client, wrkCmd, p, sc.conns, sc.path, *duration)
				if err != nil {
					return err
				}
				results[sc.name][p.name] = append(results[sc.name][p.name], s)
				if *verbose {
					fmt.Fprintf(os.Stderr, "%s %s: %.0f req/s, %.0f req/CPU-s, p50/75/90/99 %v %v %v %v, context switches per request %.3f voluntary %.3f involuntary, TCP segments sent per request %.2f\n",
						sc.id, p.name, s.rps, s.reqPerCPU, s.p50, s.p75, s.p90, s.p99, s.switches[0], s.switches[1], s.segments)
				}
			}
		}
		fmt.Fprintf(os.Stderr, "round %d of %d done\n", r+1, *rounds)
	}
	// Memory last: holding and closing thousands of connections disturbs the latency of
	// the runs after it (sockets in TIME_WAIT on every host). Each proxy is started
	// afresh and warmed up, so that no proxy serves the connections from memory an earlier
	// run left it.
	mem := map[string]memory{}
	fresh := func(p *benchProxy) error {
		if err := p.proc.Stop(5 * time.Second); err != nil {
			return err
		}
		if err := p.start(proxyHost, client); err != nil {
			return err
		}
		_, err := wrk(client, wrkCmd, p, 10, "/", time.Second)
		return err
	}
	for _, p := range proxies {
		if *skipMem {
			break
		}
		var m memory
		if err := fresh(p); err != nil {
			return err
		}
		if m.idle, _, err = heldMemory(client, proxyHost, self, p, *idleConns, false); err != nil {
			return fmt.Errorf("measuring idle memory of %s: %w", p.name, err)
		}
		if *stalledConns > 0 {
			if err := fresh(p); err != nil {
				return err
			}
			if m.stalled, m.stalledKernel, err = heldMemory(client, proxyHost, self, p, *stalledConns, true); err != nil {
				return fmt.Errorf("measuring the memory of stalled downloads through %s: %w", p.name, err)
			}
		}
		mem[p.name] = m
	}

	report(os.Stdout, scenarios, proxies, results, mem, *idleConns, *stalledConns)
	return nil
}

// start starts the proxy in host h and waits until it answers the client.
func (p *benchProxy) start(h, client *netlab.Host) error {
	proc, err := h.Start(nil, p.cmd[0], p.cmd[1:]...)
	if err != nil {
		return err
	}
	p.proc = proc
	if err := waitHTTP(client, fmt.Sprintf("%s:%d", proxyIP, p.port), p.proc); err != nil {
		return fmt.Errorf("%s not answering: %w", p.name, err)
	}
	return nil
}

// pinnedCPUs splits n CPUs for -pin, as taskset lists: the load's, and the
// proxies' (the last one).
func pinnedCPUs(n int) (load, proxies string) {
	load = "0"
	if n > 2 {
		load = fmt.Sprintf("0-%d", n-2)
	}
	return load, strconv.Itoa(n - 1)
}

func runtimeCPUs() int {
	n := 0
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "processor") {
			n++
		}
	}
	return n
}

func startBackends(lab *netlab.Lab, dir string, nginx []string) error {
	big := filepath.Join(dir, "big.bin")
	f, err := os.Create(big)
	if err != nil {
		return err
	}
	if _, err := io.CopyN(f, rand.Reader, bigSize); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	for i, ip := range backendIPs {
		h, err := lab.AddHost(fmt.Sprintf("be%d", i+1), ip+"/24")
		if err != nil {
			return err
		}
		conf := filepath.Join(dir, fmt.Sprintf("backend%d.conf", i+1))
		text := fmt.Sprintf(`user root;
worker_processes 1;
daemon off;
pid %[1]s/backend%[2]d.pid;
error_log stderr warn;
events { worker_connections 9500; }
http {
	access_log off;
	sendfile on;
	keepalive_requests 100000000;
	keepalive_timeout 600s;
	client_body_temp_path %[1]s/body%[2]d;
	proxy_temp_path %[1]s/proxy%[2]d;
	fastcgi_temp_path %[1]s/fastcgi%[2]d;
	uwsgi_temp_path %[1]s/uwsgi%[2]d;
	scgi_temp_path %[1]s/scgi%[2]d;
	server {
		listen %[3]s:8080 backlog=4096;
		default_type text/plain;
		location = / { return 200 "hello from backend %[2]d\n"; }
		location = /big { alias %[1]s/big.bin; }
		location = /close { keepalive_timeout 0; return 200 "hello from backend %[2]d\n"; }
	}
}
`, dir, i+1, ip)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			return err
		}
		p, err := h.Start(nil, nginx[0], append(nginx[1:], "-p", dir, "-c", conf, "-e", "stderr")...)
		if err != nil {
			return err
		}
		if err := waitHTTP(h, ip+":8080", p); err != nil {
			return fmt.Errorf("backend %s: %w", ip, err)
		}
	}
	return nil
}

// writeNginxStream writes nginx's stream configuration; bufsize, when not 0, sets its
// proxy_buffer_size.
func writeNginxStream(dir string, port int, backends []string, bufsize int) (string, error) {
	var servers strings.Builder
	for _, b := range backends {
		fmt.Fprintf(&servers, "\t\tserver %s;\n", b)
	}
	buffer := ""
	if bufsize > 0 {
		buffer = fmt.Sprintf("\t\tproxy_buffer_size %d;\n", bufsize)
	}
	conf := filepath.Join(dir, "nginx-stream.conf")
	text := fmt.Sprintf(`load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes 1;
daemon off;
pid %s/nginx-stream.pid;
error_log stderr warn;
events { worker_connections 9500; }
stream {
	upstream backends {
%s	}
	server {
		listen %s:%d backlog=4096;
		proxy_pass backends;
%s	}
}
`, dir, servers.String(), proxyIP, port, buffer)
	return conf, os.WriteFile(conf, []byte(text), 0o644)
}

// writeHAProxy writes HAProxy's configuration; bufsize, when not 0, sets its
// tune.bufsize.
func writeHAProxy(dir string, port int, backends []string, bufsize int) (string, error) {
	var servers strings.Builder
	for i, b := range backends {
		fmt.Fprintf(&servers, "\tserver b%d %s\n", i+1, b)
	}
	buffer := ""
	if bufsize > 0 {
		buffer = fmt.Sprintf("\ttune.bufsize %d\n", bufsize)
	}
	conf := filepath.Join(dir, "haproxy.cfg")
	text := fmt.Sprintf(`global
	nbthread 1
	maxconn 9000
%sdefaults
	mode tcp
	timeout connect 5s
	timeout client 10m
	timeout server 10m
frontend bench
	bind %s:%d
	default_backend backends
backend backends
	balance roundrobin
%s`, buffer, proxyIP, port, servers.String())
	return conf, os.WriteFile(conf, []byte(text), 0o644)
}

// waitHTTP waits until addr answers an HTTP request from host h, or p exits.
func waitHTTP(h *netlab.Host, addr string, p *netlab.Proc) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := h.Do(func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
				return err
			}
			return readResponse(bufio.NewReader(c))
		})
		if err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("process exited: %v: %s", p.Err(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w; output: %s", err, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processTree returns pid and its descendants (nginx's master and worker).
func processTree(pid int) []int {
	pids := []int{pid}
	entries, _ := os.ReadDir("/proc")
	for i := 0; i < len(pids); i++ {
		for _, e := range entries {
			child, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			if st, err := readStat(child); err == nil && st.ppid == pids[i] {
				pids = append(pids, child)
			}
		}
	}
	return pids
}

type procStat struct {
	ppid     int
	cpuTicks int64
	rssPages int64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// Fields after the command name, which may hold spaces, in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ppid, _ := strconv.Atoi(f[1])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	return procStat{ppid: ppid, cpuTicks: utime + stime, rssPages: rss}, nil
}

// contextSwitches sums the voluntary and involuntary context switches of every thread
// of the proxy's processes.
func contextSwitches(p *benchProxy) [2]int64 {
	var sum [2]int64
	for _, pid := range processTree(p.proc.Cmd.Process.Pid) {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n") {
				k, v, ok := strings.Cut(line, ":")
				if !ok {
					continue
				}
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				switch k {
				case "voluntary_ctxt_switches":
					sum[0] += n
				case "nonvoluntary_ctxt_switches":
					sum[1] += n
				}
			}
		}
	}
	return sum
}

// outSegments is the count of TCP segments sent in the proxy's network namespace.
func outSegments(p *benchProxy) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/snmp", p.proc.Cmd.Process.Pid))
	if err != nil {
		return 0
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || fields[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, f := range fields {
			if i < len(names) && names[i] == "OutSegs" {
				n, _ := strconv.ParseInt(f, 10, 64)
				return n
			}
		}
	}
	return 0
}

// usage sums CPU seconds and resident bytes over the proxy's processes.
func usage(p *benchProxy) (cpuSec float64, rss int64) {
	const ticksPerSec = 100 // USER_HZ on Linux
	for _, pid := range processTree(p.proc.Cmd.Process.Pid) {
		if st, err := readStat(pid); err == nil {
			cpuSec += float64(st.cpuTicks) / ticksPerSec
			rss += st.rssPages * int64(os.Getpagesize())
		}
	}
	return cpuSec, rss
}

var (
	reRPS      = regexp.MustCompile(`Requests/sec:\s+([\d.]+)`)
	reTransfer = regexp.MustCompile(`Transfer/sec:\s+([\d.]+)([KMGT]?B)`)
	reReqs     = regexp.MustCompile(`(\d+) requests in ([\d.]+)(us|ms|s|m)`)
	rePct      = regexp.MustCompile(`(?m)^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$`)
	reSockErr  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	reNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func wrk(client *netlab.Host, cmd []string, p *benchProxy, conns int, path string, d time.Duration) (sample, error) {
	cpu0, _ := usage(p)
	sw0 := contextSwitches(p)
	seg0 := outSegments(p)
	out, err := client.Exec(cmd[0], append(cmd[1:], "-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())),
		"--latency", "--timeout", "10s", fmt.Sprintf("http://%s:%d%s", proxyIP, p.port, path))...)
	cpu1, _ := usage(p)
	sw1 := contextSwitches(p)
	seg1 := outSegments(p)
	if err != nil {
		return sample{}, fmt.Errorf("wrk through %s: %w", p.name, err)
	}
	m := reRPS.FindStringSubmatch(out)
	if m == nil {
		return sample{}, fmt.Errorf("wrk through %s: no Requests/sec in output:\n%s", p.name, out)
	}
	s := sample{cpuSec: cpu1 - cpu0}
	s.rps, _ = strconv.ParseFloat(m[1], 64)
	if m := reReqs.FindStringSubmatch(out); m != nil && s.cpuSec > 0 {
		n, _ := strconv.ParseFloat(m[1], 64)
		s.reqPerCPU = n / s.cpuSec
		s.segments = float64(seg1-seg0) / n
		for i := range s.switches {
			s.switches[i] = float64(sw1[i]-sw0[i]) / n
		}
	}
	for _, m := range rePct.FindAllStringSubmatch(out, -1) {
		v := parseDuration(m[2], m[3])
		switch m[1] {
		case "50":
			s.p50 = v
		case "75":
			s.p75 = v
		case "90":
			s.p90 = v
		default:
			s.p99 = v
		}
	}
	if m := reTransfer.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		s.bytesPerSec = v * map[string]float64{"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m[2]]
	}
	if m := reSockErr.FindStringSubmatch(out); m != nil {
		for _, x := range m[1:] {
			n, _ := strconv.Atoi(x)
			s.errors += n
		}
	}
	if m := reNon2xx.FindStringSubmatch(out); m != nil {
		n, _ := strconv.Atoi(m[1])
		s.errors += n
	}
	return s, nil
}

func parseDuration(v, unit string) time.Duration {
	f, _ := strconv.ParseFloat(v, 64)
	return time.Duration(f * float64(map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}[unit]))
}

// memory is what a proxy holds per connection: resident bytes per idle connection, and
// per stalled download resident bytes and the kernel's socket buffers.
type memory struct{ idle, stalled, stalledKernel float64 }

// heldMemory holds n connections through the proxy (idle after one request, or stalled
// downloads) and returns the proxy's resident bytes per connection and, for stalled
// downloads, the bytes its sockets queue in the kernel per connection.
func heldMemory(client, proxyHost *netlab.Host, self string, p *benchProxy, n int, stalled bool) (user, kernel float64, err error) {
	time.Sleep(500 * time.Millisecond)
	_, before := usage(p)
	ready := make(chan struct{}, 1)
	hold, err := client.Start(func(line string) {
		if line == "ready" {
			ready <- struct{}{}
		}
	}, self, "hold", "-addr", fmt.Sprintf("%s:%d", proxyIP, p.port), "-n", strconv.Itoa(n), fmt.Sprintf("-stalled=%v", stalled))
	if err != nil {
		return 0, 0, err
	}
	defer hold.Stop(5 * time.Second)
	select {
	case <-ready:
	case <-hold.Done():
		return 0, 0, fmt.Errorf("hold exited: %v: %s", hold.Err(), hold.Output())
	case <-time.After(60 * time.Second):
		return 0, 0, errors.New("hold did not get ready in 60s")
	}
	time.Sleep(time.Second)
	if stalled {
		// Until every download has filled the buffers on its way.
		time.Sleep(2 * time.Second)
		if kernel, err = socketMemory(proxyHost); err != nil {
			return 0, 0, err
		}
	}
	_, after := usage(p)
	return float64(after-before) / float64(n), kernel / float64(n), nil
}

var reSkmem = regexp.MustCompile(`skmem:\(r(\d+),rb\d+,t\d+,tb\d+,f\d+,w(\d+)`)

// socketMemory sums what the TCP sockets of host h hold in the kernel: received data
// not yet read (rmem_alloc) and data queued to send (wmem_queued), from ss.
func socketMemory(h *netlab.Host) (float64, error) {
	out, err := h.Exec("ss", "-tmnH")
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, m := range reSkmem.FindAllStringSubmatch(out, -1) {
		r, _ := strconv.ParseFloat(m[1], 64)
		w, _ := strconv.ParseFloat(m[2], 64)
		sum += r + w
	}
	return sum, nil
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func pick(ss []sample, f func(sample) float64) []float64 {
	out := make([]float64, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func report(w io.Writer, scenarios []scenario, proxies []*benchProxy, results map[string]map[string][]sample, mem map[string]memory, idle, stalled int) {
	if len(scenarios) > 0 {
		reportRuns(w, scenarios, proxies, results)
	}
	if len(mem) == 0 {
		return
	}
	fmt.Fprintf(w, "Resident memory per idle established connection (fresh process, %d connections, after one request each):\n", idle)
	for _, p := range proxies {
		fmt.Fprintf(w, "  %-8s %7.0f bytes\n", p.name, mem[p.name].idle)
	}
	if stalled == 0 {
		return
	}
	fmt.Fprintf(w, "Memory per stalled download (fresh process, %d clients that request the bulk file and read none of it): resident, and the proxy's socket buffers in the kernel:\n", stalled)
	for _, p := range proxies {
		m := mem[p.name]
		fmt.Fprintf(w, "  %-8s %7.0f bytes resident  %7.0f bytes in the kernel\n", p.name, m.stalled, m.stalledKernel)
	}
}

func reportRuns(w io.Writer, scenarios []scenario, proxies []*benchProxy, results map[string]map[string][]sample) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tproxy\treq/s\treq/CPU-s\tp50\tp99\tMiB/s\terrors\t")
	type med struct{ rps, rpc, p50, p99, bps float64 }
	meds := map[string]map[string]med{}
	for _, sc := range scenarios {
		meds[sc.name] = map[string]med{}
		for _, p := range proxies {
			ss := results[sc.name][p.name]
			m := med{
				rps: median(pick(ss, func(s sample) float64 { return s.rps })),
				rpc: median(pick(ss, func(s sample) float64 { return s.reqPerCPU })),
				p50: median(pick(ss, func(s sample) float64 { return float64(s.p50) })),
				p99: median(pick(ss, func(s sample) float64 { return float64(s.p99) })),
				bps: median(pick(ss, func(s sample) float64 { return s.bytesPerSec })),
			}
			errs := 0
			for _, s := range ss {
				errs += s.errors
			}
			meds[sc.name][p.name] = m
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.0f\t%v\t%v\t%.1f\t%d\t\n", sc.name, p.name, m.rps, m.rpc,
				time.Duration(m.p50).Round(time.Microsecond), time.Duration(m.p99).Round(time.Microsecond), m.bps/(1<<20), errs)
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Ratios of medians, lbpair / other (above 1 is better for req/s, req/CPU-s and MiB/s; below 1 is better for p99):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tvs\treq/s\treq/CPU-s\tp99\tMiB/s\t")
	others := []string{"nginx", "haproxy"}
	if _, ok := results[scenarios[0].name]["lbpair-b"]; ok {
		// The same binary as lbpair makes this row the noise floor; another build, the
		// A/B comparison.
		others = append(others, "lbpair-b")
	}
	for _, sc := range scenarios {
		ours := meds[sc.name]["lbpair"]
		for _, other := range others {
			o := meds[sc.name][other]
			fmt.Fprintf(tw, "%s\t%s\t%.2fx\t%.2fx\t%.2fx\t%.2fx\t\n", sc.name, other,
				ratio(ours.rps, o.rps), ratio(ours.rpc, o.rpc), ratio(ours.p99, o.p99), ratio(ours.bps, o.bps))
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	// Each round runs the proxies back to back, so a ratio within a round is free of the
	// machine's drift between rounds; its spread shows how far one round can mislead.
	fmt.Fprintln(w, "Ratios within each round, lbpair / other: median [lowest, highest] over the rounds, and in how many rounds lbpair was better:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tvs\treq/s\tp99\t")
	for _, sc := range scenarios {
		ours := results[sc.name]["lbpair"]
		for _, other := range others {
			theirs := results[sc.name][other]
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", sc.name, other,
				roundRatios(ours, theirs, func(s sample) float64 { return s.rps }, false),
				roundRatios(ours, theirs, func(s sample) float64 { return float64(s.p99) }, true))
		}
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
}

// runOrder is the order in which round r runs n proxies: a row of a Williams design, so
// that over a whole period (orderPeriod rounds) every proxy runs equally often in every
// position and directly after every other proxy. A run disturbs the next one (sockets
// closing, backends still waking, caches), and a plain rotation, which gives each proxy
// the same predecessor in every round, would charge one proxy's after-effects to the
// same other proxy every time.
func runOrder(r, n int) []int {
	row := r % orderPeriod(n)
	order := make([]int, n)
	for j := range order {
		// The first row goes 0, 1, n-1, 2, n-2, ...; row i adds i to each entry.
		first := (j + 1) / 2
		if j > 0 && j%2 == 0 {
			first = n - j/2
		}
		order[j] = (first + row) % n
	}
	if row >= n {
		slices.Reverse(order)
	}
	return order
}

// orderPeriod is the number of rounds after which runOrder repeats: an odd number of
// proxies needs each row's reverse as well.
func orderPeriod(n int) int {
	if n%2 == 1 {
		return 2 * n
	}
	return n
}

// roundRatios summarises f(ours[i]) / f(theirs[i]) over the rounds i, with the count of
// rounds in which ours was better: a lower figure when lowerIsBetter, else a higher one.
// Between two equal proxies that count is a coin toss per round, so a median ratio away
// from 1 means little unless the count is lopsided too.
func roundRatios(ours, theirs []sample, f func(sample) float64, lowerIsBetter bool) string {
	var rs []float64
	better := 0
	for i := range min(len(ours), len(theirs)) {
		r := ratio(f(ours[i]), f(theirs[i]))
		rs = append(rs, r)
		if (lowerIsBetter && r < 1) || (!lowerIsBetter && r > 1) {
			better++
		}
	}
	if len(rs) == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx [%.2f, %.2f] %d/%d", median(rs), slices.Min(rs), slices.Max(rs), better, len(rs))
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
