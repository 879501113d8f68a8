package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/lbpair/lbpair/agent/proxy"
)

// addrList is a repeatable address flag.
type addrList []netip.AddrPort

func (a *addrList) String() string { return fmt.Sprint(*a) }
func (a *addrList) Set(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return err
	}
	*a = append(*a, ap)
	return nil
}

func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	var listen, backends addrList
	fs.Var(&listen, "listen", "address to listen on (repeatable)")
	fs.Var(&backends, "backend", "backend address (repeatable)")
	procs := fs.Int("gomaxprocs", 1, "GOMAXPROCS; 1 compares with one nginx or HAProxy worker")
	pp := fs.Int("proxy-protocol", 0, "PROXY protocol version to send (0, 1, 2)")
	_ = fs.Parse(args)
	runtime.GOMAXPROCS(*procs)
	raiseNoFile()
	// A CPU profile of the whole run, for work on the hot path.
	if path := os.Getenv("PROXYBENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}

	log := funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{})
	lc := proxy.ListenerConfig{
		Name:          "bench",
		Addrs:         listen,
		Passive:       proxy.PassiveCheck{MaxFails: 1, FailTimeout: 10 * time.Second},
		ProxyProtocol: proxy.ProxyProtocol(*pp),
	}
	for _, b := range backends {
		lc.Backends = append(lc.Backends, proxy.Backend{Addr: b, Weight: 1})
	}
	s := proxy.New(log)
	if err := s.Apply(proxy.Config{Listeners: []proxy.ListenerConfig{lc}}); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "listening on %s with GOMAXPROCS=%d\n", strings.Trim(listen.String(), "[]"), *procs)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.Shutdown(ctx)
	return nil
}

// raiseNoFile lifts the file limit as a server that holds many connections must: to
// 200000 where allowed (root), else the soft limit to the hard one. Children (the
// proxies started by the benchmark) inherit it.
func raiseNoFile() {
	var r syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r) != nil {
		return
	}
	const want = 200000
	if r.Max < want && syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
		return
	}
	if r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}
