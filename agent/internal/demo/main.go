// Command demo is lbpair's local demo (make demo): on one Linux machine it
// starts a real kube-apiserver and etcd, the manager, two nodes (network
// namespaces) running the agent in cluster mode, two web backends and a
// client; applies a pair; shows `kubectl get lbpair`; kills the holder and
// shows the VIP and the status move, with the outage the client saw; and
// cleans everything up on exit or Ctrl-C.
//
// There is no kubelet: the demo starts the agents itself, and the DaemonSet
// the manager writes is shown but not run.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lbpair/lbpair/agent/internal/clusterlab"
	"github.com/lbpair/lbpair/agent/internal/probe"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root: the demo's nodes are network namespaces (sudo make demo)")
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(ctx context.Context) error {
	root, err := os.Getwd()
	if err != nil {
		return err
	}
	say("Starting a kube-apiserver and etcd, the manager, nodes lb1 and lb2 (network namespaces), web01, web02 and a client")
	l, err := clusterlab.New(ctx, clusterlab.Options{Root: root, Nodes: 2, Webs: 2, Quiet: true})
	defer func() {
		say("Cleaning up: agents, manager, namespaces, apiserver")
		if cerr := l.Close(); cerr != nil {
			fmt.Fprintln(os.Stderr, "demo: cleanup:", cerr)
		}
	}()
	if err != nil {
		return err
	}
	kubectl := func(args ...string) {
		fmt.Printf("$ kubectl %s\n", strings.Join(args, " "))
		out, err := l.Kubectl(ctx, args...)
		fmt.Print(out)
		if err != nil {
			fmt.Println("(kubectl:", err, ")")
		}
	}
	wait := func(what string, timeout time.Duration, ok func() bool) error {
		deadline := time.Now().Add(timeout)
		for !ok() {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: timed out after %v", what, timeout)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		return nil
	}
	holder := func() string {
		p, err := l.Pair(ctx)
		if err != nil {
			return ""
		}
		return p.Status.Holder
	}

	if err := l.SetEndpoints(ctx, l.Webs...); err != nil {
		return err
	}
	pair := clusterlab.PairYAML("100ms")
	say("Applying a LoadBalancerPair: VIP %s port %d to the ready endpoints of Service web (100 ms VRRP adverts)\n%s", clusterlab.VIP, clusterlab.Port, pair)
	if err := l.ApplyPair(ctx, pair); err != nil {
		return err
	}
	say("Starting the agents on lb1 (priority 150) and lb2 (priority 100), as the DaemonSet would")
	for _, n := range l.Nodes {
		if err := l.StartAgent(n, true); err != nil {
			return err
		}
	}
	if err := wait("a holder in status", 30*time.Second, func() bool { return holder() != "" }); err != nil {
		return err
	}
	kubectl("get", "lbpair", "-o", "wide")
	say("The DaemonSet the manager wrote (not run here: no kubelet)")
	kubectl("get", "daemonset", "-o", "wide")

	p := &probe.Prober{Addr: fmt.Sprintf("%s:%d", clusterlab.VIP, clusterlab.Port), Period: 10 * time.Millisecond, Timeout: 500 * time.Millisecond, Dial: l.DialFromClient}
	p.Start()
	defer p.Stop()
	time.Sleep(time.Second)
	served := map[string]int{}
	for _, r := range p.Results() {
		if r.OK {
			served[r.Backend]++
		}
	}
	say("The client opens a new connection to %s:%d every 10 ms; answers so far by backend: %v", clusterlab.VIP, clusterlab.Port, served)

	old := holder()
	var victim *clusterlab.Node
	for _, n := range l.Nodes {
		if n.Name == old {
			victim = n
		}
	}
	if victim == nil {
		return fmt.Errorf("holder %q is not a lab node", old)
	}
	say("The VIP is on %v. Killing the agent on %s with SIGKILL", l.VIPHolders(), old)
	killed := time.Now()
	if err := l.SignalAgent(victim, syscall.SIGKILL); err != nil {
		return err
	}
	var moved, followed time.Time
	if err := wait("the VIP to move", 15*time.Second, func() bool {
		for _, h := range l.VIPHolders() {
			if h != old {
				moved = time.Now()
				return true
			}
		}
		return false
	}); err != nil {
		return err
	}
	if err := wait("the status to follow", 15*time.Second, func() bool {
		if h := holder(); h != "" && h != old {
			followed = time.Now()
			return true
		}
		return false
	}); err != nil {
		return err
	}
	time.Sleep(p.Timeout + 300*time.Millisecond)
	outage, failed := probe.Outage(p.Results(), killed)
	say("The VIP moved to %s %v after the kill; status.holder followed %v later. The client's longest outage: %v (%d failed connections)",
		holder(), moved.Sub(killed).Round(time.Millisecond), followed.Sub(moved).Round(time.Millisecond), outage.Round(time.Millisecond), failed)
	kubectl("get", "lbpair", "-o", "wide")
	kubectl("get", "events", "--field-selector", "reason=Failover")
	if err := wait("the killed agent's VIP to expire", 15*time.Second, func() bool { return !slices.Contains(l.VIPHolders(), old) }); err != nil {
		return err
	}
	say("The VIP left %s %v after the kill: the killed agent no longer renews its lifetime, and the kernel took it off", old, time.Since(killed).Round(100*time.Millisecond))

	say("Restarting the agent on %s: it joins as backup and, with the higher priority, takes the VIP back", old)
	if err := l.StartAgent(victim, true); err != nil {
		return err
	}
	if err := wait("the holder back", 30*time.Second, func() bool { return holder() == old && len(l.VIPHolders()) == 1 }); err != nil {
		return err
	}
	kubectl("get", "lbpair", "-o", "wide")
	fmt.Printf("\nKubeconfig of the demo's apiserver: %s (removed on exit)\n", filepath.Clean(l.Kubeconfig))
	return nil
}
