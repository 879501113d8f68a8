// Package netlab builds throw-away networks of Linux network namespaces for tests,
// benchmarks and the local demo: hosts joined by one bridge, with addresses from the
// benchmarking range 198.18.0.0/15, so nothing a lab sends ever leaves the machine.
//
// The bridge sits in a namespace of its own, so a lab never adds a link or an address to
// the namespace it was started from. Everything a lab makes (namespaces, links, the
// processes it started) is removed by Close.
package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/lbpair/lbpair/agent/internal/nsexec"
)

// ErrNotRoot is returned by New when the caller cannot create network namespaces.
var ErrNotRoot = errors.New("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")

const (
	namePrefix = "lbp-"
	// HostLink is the name of every host's link to the bridge.
	HostLink   = "eth0"
	bridgeName = "br0"
)

var labSeq atomic.Int64

// Lab is a set of hosts (network namespaces) joined by one bridge.
type Lab struct {
	id       string
	switchNS string

	mu    sync.Mutex
	hosts []*Host
	procs []*Proc
}

// Host is one network namespace of a lab with one link, HostLink, to the lab's bridge.
type Host struct {
	// Name is the name the host was added with.
	Name string
	// NS is the name of the host's network namespace (as `ip netns` lists it).
	NS string
	// BridgePort is the name of the host's veth end in the bridge namespace.
	BridgePort string

	lab *Lab
}

// New makes an empty lab: a namespace holding a bridge. It also removes namespaces left
// behind by labs of processes that no longer exist (a test killed before its cleanup ran).
func New() (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("finding the ip command (Debian package iproute2): %w", err)
	}
	removeStale()
	starterOnce.Do(startStarter) // now, not amid a test that counts its goroutines
	l := &Lab{id: fmt.Sprintf("%d-%d", os.Getpid(), labSeq.Add(1))}
	l.switchNS = namePrefix + l.id + "-sw"
	if err := l.addNS(l.switchNS); err != nil {
		return nil, err
	}
	// Multicast snooping off so that VRRP adverts reach every port without IGMP joins,
	// and no forwarding delay so links pass traffic at once.
	if err := l.ip(l.switchNS, "link", "add", bridgeName, "type", "bridge",
		"forward_delay", "0", "mcast_snooping", "0"); err != nil {
		_ = l.Close()
		return nil, err
	}
	if err := l.ip(l.switchNS, "link", "set", bridgeName, "up"); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}

// AddHost adds a namespace named after name, linked to the bridge, with the given
// addresses (CIDR notation, IPv4 or IPv6) on HostLink.
func (l *Lab) AddHost(name string, cidrs ...string) (*Host, error) {
	l.mu.Lock()
	idx := len(l.hosts)
	l.mu.Unlock()
	h := &Host{Name: name, NS: namePrefix + l.id + "-" + name, BridgePort: "p" + strconv.Itoa(idx), lab: l}
	if err := l.addNS(h.NS); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	if err := h.AddLink(cidrs...); err != nil {
		return nil, err
	}
	return h, nil
}

// AddLink makes the host's HostLink, a veth whose other end is a port of the bridge, with
// the given addresses (CIDR notation). AddHost makes it first; after DeleteLink it comes
// back under the same name with a new interface index, as when a network manager
// recreates a node's interface.
func (h *Host) AddLink(cidrs ...string) error {
	l := h.lab
	steps := [][]string{
		{l.switchNS, "link", "add", h.BridgePort, "type", "veth", "peer", "name", HostLink, "netns", h.NS},
		{l.switchNS, "link", "set", h.BridgePort, "master", bridgeName},
		{l.switchNS, "link", "set", h.BridgePort, "up"},
	}
	for _, s := range steps {
		if err := l.ip(s[0], s[1:]...); err != nil {
			return err
		}
	}
	// Addresses usable at once: no duplicate address detection on a lab's private link.
	if err := h.Sysctl("net.ipv6.conf."+HostLink+".accept_dad", "0"); err != nil {
		return err
	}
	// IPv6 addresses survive a link flap, as IPv4 ones do: on a real host the network
	// manager would put them back, and a lab has none.
	if err := h.Sysctl("net.ipv6.conf."+HostLink+".keep_addr_on_down", "1"); err != nil {
		return err
	}
	// Loopback up too: in-process servers and forwarders on 127.0.0.1.
	for _, link := range []string{HostLink, "lo"} {
		if err := l.ip(h.NS, "link", "set", link, "up"); err != nil {
			return err
		}
	}
	for _, c := range cidrs {
		if err := h.AddAddr(c); err != nil {
			return err
		}
	}
	return nil
}

// DeleteLink deletes the host's HostLink (and its bridge port) with all its addresses,
// as when a network manager tears a node's interface down.
func (h *Host) DeleteLink() error {
	return h.lab.ip(h.lab.switchNS, "link", "delete", h.BridgePort)
}

// Hosts returns the lab's hosts in the order they were added.
func (l *Lab) Hosts() []*Host {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Host(nil), l.hosts...)
}

// Close stops the processes the lab started (SIGTERM, then SIGKILL after a grace period)
// and deletes its namespaces, which removes their links and addresses with them.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, hosts := l.procs, l.hosts
	l.procs, l.hosts = nil, nil
	l.mu.Unlock()
	var errs []error
	for _, p := range procs {
		_ = p.Stop(2 * time.Second)
	}
	for _, h := range hosts {
		if err := deleteNS(h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	if l.switchNS != "" {
		if err := deleteNS(l.switchNS); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// AddAddr adds an address in CIDR notation to the host's HostLink.
func (h *Host) AddAddr(cidr string) error {
	return h.lab.ip(h.NS, "addr", "add", cidr, "dev", HostLink)
}

// SetLinkUp brings the host's own link up or down, as when a node's NIC fails.
func (h *Host) SetLinkUp(up bool) error {
	return h.lab.ip(h.NS, "link", "set", HostLink, upDown(up))
}

// SetConnected attaches the host's port to the bridge or detaches it: the host's link
// keeps its carrier (a link-state watcher sees nothing) but nothing reaches the others,
// as in a network partition.
func (h *Host) SetConnected(connected bool) error {
	if connected {
		return h.lab.ip(h.lab.switchNS, "link", "set", h.BridgePort, "master", bridgeName)
	}
	return h.lab.ip(h.lab.switchNS, "link", "set", h.BridgePort, "nomaster")
}

// Sysctl sets a sysctl inside the host's namespace.
func (h *Host) Sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	return h.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) })
}

// Exec runs a command inside the host's namespace and returns its combined output.
func (h *Host) Exec(name string, args ...string) (string, error) {
	return h.ExecInput("", name, args...)
}

// ExecInput is Exec with input on the command's standard input.
func (h *Host) ExecInput(input string, name string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("running %s %s in %s: %w: %s", name, strings.Join(args, " "), h.NS, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Handle returns a netlink handle bound to the host's namespace; the caller closes it.
func (h *Host) Handle() (*netlink.Handle, error) {
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", h.NS, err)
	}
	defer ns.Close()
	handle, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", h.NS, err)
	}
	return handle, nil
}

// Do runs fn on an OS thread switched into the host's namespace. Sockets that fn opens
// stay in that namespace after Do returns and may be used from any goroutine, which is
// how in-process tests put a listener or a raw socket on a lab host.
func (h *Host) Do(fn func() error) error {
	target, err := netns.GetFromName(h.NS)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", h.NS, err)
	}
	defer target.Close()
	return nsexec.Do(target, fn)
}

// Proc is a process a lab started inside one of its hosts.
type Proc struct {
	// Cmd is the running command; its Process.Pid is the process's own pid, since
	// `ip netns exec` execs the command in place.
	Cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// Start starts a command inside the host's namespace. Its output is kept (see Output)
// and also written to logw when logw is not nil. The lab stops it on Close.
func (h *Host) Start(logw func(string), name string, args ...string) (*Proc, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	p := &Proc{Cmd: cmd, out: &syncBuffer{logw: logw}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	// Own process group, so a Ctrl-C meant for the test runner does not reach it first
	// and Close decides the order things stop in.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := StartCmd(cmd); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, h.NS, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	h.lab.mu.Lock()
	h.lab.procs = append(h.lab.procs, p)
	h.lab.mu.Unlock()
	return p, nil
}

// StartCmd starts cmd so that the kernel kills it (SIGKILL) when the process that
// started it dies, however it dies: a test's -timeout or a Ctrl-C ends the test binary
// without running its cleanups, and lab processes would otherwise outlive it. It sets
// Pdeathsig in cmd.SysProcAttr (making one if nil) and starts cmd from starter's thread;
// the caller waits for cmd as usual.
func StartCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	starterOnce.Do(startStarter)
	errc := make(chan error, 1)
	starts <- func() { errc <- cmd.Start() }
	return <-errc
}

var (
	starterOnce sync.Once
	starts      chan func()
)

// startStarter runs the goroutine that starts every lab process, locked to its OS thread
// for the life of the process. Linux sends the parent-death signal when the *thread* that
// forked the child exits, not the process, and Go ends a thread when a goroutine locked to
// it exits without unlocking (nsexec.Do throws away a thread it cannot switch back that
// way). Any thread a test's goroutine forks from could end so, killing a lab process
// mid-test; this one never does.
func startStarter() {
	starts = make(chan func())
	go func() {
		runtime.LockOSThread() // never unlocked: the thread must outlive every child
		for start := range starts {
			start()
		}
	}()
}

// StartWithCapabilities is Start with the process limited to the given capabilities
// (NET_ADMIN or CAP_NET_ADMIN), as a container runtime or systemd's
// CapabilityBoundingSet limits it: it runs as root, but with no others.
func (h *Host) StartWithCapabilities(logw func(string), caps []string, name string, args ...string) (*Proc, error) {
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(strings.TrimPrefix(strings.ToUpper(c), "CAP_"))
	}
	return h.Start(logw, "setpriv", append([]string{"--bounding-set=" + set, "--inh-caps=-all", "--", name}, args...)...)
}

// Output returns everything the process has written so far.
func (p *Proc) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns the process's exit error once Done is closed.
func (p *Proc) Err() error { <-p.done; return p.err }

// Signal sends sig to the process if it is still running.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
		return p.Cmd.Process.Signal(sig)
	}
}

// Stop sends SIGTERM, waits up to grace, then sends SIGKILL, and waits for the exit.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

func (l *Lab) addNS(name string) error {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("adding namespace %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return l.ip(name, "link", "set", "lo", "up")
}

func (l *Lab) ip(ns string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %w: %s", ns, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func deleteNS(name string) error {
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("deleting namespace %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// removeStale deletes lab namespaces whose creating process is gone. It kills nothing:
// a process still running inside such a namespace keeps it alive until it exits.
func removeStale() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), namePrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			_ = deleteNS(e.Name())
		}
	}
}

func upDown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// syncBuffer collects a process's output and optionally forwards each line.
type syncBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	logw func(string)
	line []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if b.logw != nil {
		b.line = append(b.line, p...)
		for {
			i := bytes.IndexByte(b.line, '\n')
			if i < 0 {
				break
			}
			b.logw(string(b.line[:i]))
			b.line = b.line[i+1:]
		}
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
