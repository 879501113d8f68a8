package clusterlab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpair/lbpair/agent/internal/netlab"
	"github.com/lbpair/lbpair/agent/internal/probe"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// TestClusterE2E runs the product end to end on one lab: the manager and two
// agents in cluster mode against a real apiserver, a Service backend, and a
// client probing the VIP every 10 ms. Each phase checks the data plane (the
// VIP, the client) and the status the manager derives (holder, conditions)
// and logs the measured outage and how long the status took to follow.
func TestClusterE2E(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the cluster lab needs root for network namespaces")
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	quiet := os.Getenv("E2E_VERBOSE") == ""
	l, err := New(ctx, Options{Root: root, Nodes: 2, Webs: 3, Logf: t.Logf, Quiet: quiet, DualStack: true})
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	lb1, lb2 := l.Nodes[0], l.Nodes[1]
	web1, web2, web3 := l.Webs[0], l.Webs[1], l.Webs[2]
	must(t, l.SetEndpoints(ctx, web1, web2))
	must(t, l.ApplyPair(ctx, PairYAML("100ms")))
	for _, n := range l.Nodes {
		must(t, l.StartAgent(n, quiet))
	}
	p := &probe.Prober{Addr: fmt.Sprintf("%s:%d", VIP, Port), Period: 10 * time.Millisecond, Timeout: 500 * time.Millisecond, Dial: l.DialFromClient}
	p.Start()
	defer p.Stop()
	settle := func() { time.Sleep(p.Timeout + 100*time.Millisecond) }

	waitHolder(t, l, "lb1 elected", lb1.Name, 30*time.Second)
	waitCondition(t, l, lbv1.ConditionReady, metav1.ConditionTrue, 10*time.Second)
	netlab.Eventually(t, "client served", 10*time.Second, func() error { return p.LastOK(10) })
	out, _ := l.Kubectl(ctx, "get", "lbpair", "-o", "wide")
	t.Logf("kubectl get lbpair -o wide:\n%s", out)
	// The agents run as the DaemonSet's template says, so they answer where
	// its probes and hostPort look: the status's agentPort.
	pair, err := l.Pair(ctx)
	must(t, err)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return l.DialFromClient(ctx, addr) },
	}}
	for _, n := range l.Nodes {
		url := fmt.Sprintf("http://%s:%d/readyz", n.IP, pair.Status.AgentPort)
		netlab.Eventually(t, n.Name+"'s agent ready at "+url, 10*time.Second, func() error {
			return expectStatus(hc, url, http.StatusOK)
		})
	}
	// The holder's listener on every address must not serve the VIP's clients.
	if err := expectStatus(hc, fmt.Sprintf("http://%s:%d/metrics", VIP, pair.Status.AgentPort), http.StatusNotFound); err != nil {
		t.Error(err)
	}

	// failover runs one failure of lb1 and reports the client's outage and
	// how long status.holder took to follow the VIP.
	failover := func(kind string, fail func(), want *Node) {
		t.Helper()
		start := time.Now()
		fail()
		var moved time.Time
		netlab.Eventually(t, kind+": VIP on "+want.Name, 15*time.Second, func() error {
			if !contains(l.VIPHolders(), want.Name) {
				return fmt.Errorf("VIP on %v", l.VIPHolders())
			}
			moved = time.Now()
			return nil
		})
		followed := waitHolder(t, l, kind, want.Name, 15*time.Second)
		netlab.Eventually(t, kind+": client served again", 15*time.Second, func() error { return p.LastOK(10) })
		settle()
		outage, failed := probe.Outage(p.Results(), start)
		lag := followed.Sub(moved)
		if lag < 0 {
			lag = 0
		}
		t.Logf("%s: client outage %v (%d failed probes); status.holder followed the VIP after %v", kind, outage.Round(time.Millisecond), failed, lag.Round(time.Millisecond))
		if lag > time.Second {
			t.Errorf("%s: status.holder took %v to follow the VIP, want within 1s", kind, lag)
		}
		waitFailoverEvent(t, l, lb1.Name, want.Name, start)
	}

	t.Run("agent crash", func(t *testing.T) {
		crashed := time.Now()
		failover("agent crash (kill -9)", func() { must(t, l.SignalAgent(lb1, syscall.SIGKILL)) }, lb2)
		<-lb1.Agent.Done()
		// Nothing listens behind the VIP a killed agent left on lb1; its
		// lifetime (3s at this advert interval) takes it off.
		netlab.Eventually(t, "the killed agent's VIP gone from lb1", 8*time.Second, func() error {
			if h := l.VIPHolders(); !slices.Equal(h, []string{lb2.Name}) {
				return fmt.Errorf("VIP on %v", h)
			}
			return nil
		})
		t.Logf("agent crash: the VIP left lb1 %v after the kill", time.Since(crashed).Round(100*time.Millisecond))
		must(t, l.StartAgent(lb1, quiet))
		waitHolder(t, l, "lb1 back after restart", lb1.Name, 30*time.Second)
		netlab.Eventually(t, "the restarted agent removed the stale VIP and lb2 released", 15*time.Second, func() error { return onlyOn(l, VIP, lb1) })
	})

	t.Run("link loss", func(t *testing.T) {
		t.Cleanup(func() { _ = lb1.Host.SetLinkUp(true) })
		failover("link loss", func() { must(t, lb1.Host.SetLinkUp(false)) }, lb2)
		must(t, lb1.Host.SetLinkUp(true))
		waitHolder(t, l, "lb1 back after its link returned", lb1.Name, 30*time.Second)
	})

	t.Run("interface made again", func(t *testing.T) {
		// A network manager restarts lb1's interface: deleted, then made
		// again under the same name with a new index. The agent, with only
		// its container's capabilities, opens its sockets on the new one and
		// takes the VIP back, without a restart.
		// The link comes back once the status has followed the VIP to lb2:
		// lb1, of the higher priority, may otherwise take it back before.
		failover("interface made again", func() { must(t, lb1.DeleteLink()) }, lb2)
		must(t, lb1.RecreateLink())
		waitHolder(t, l, "lb1 back on its new interface", lb1.Name, 30*time.Second)
		netlab.Eventually(t, "the VIP on lb1 alone", 15*time.Second, func() error { return onlyOn(l, VIP, lb1) })
	})

	t.Run("proxy failure", func(t *testing.T) {
		// lb1 loses its way to every backend: its active checks fail, its
		// proxy reports unhealthy, and it gives up the VIP.
		blackhole := func(add bool) {
			for _, w := range []string{"198.18.0.21", "198.18.0.22", "198.18.0.23"} {
				op := "add"
				if !add {
					op = "del"
				}
				if _, err := lb1.Host.Exec("ip", "route", op, "blackhole", w+"/32"); err != nil {
					t.Fatal(err)
				}
			}
		}
		restored := false
		t.Cleanup(func() {
			if !restored {
				blackhole(false)
			}
		})
		failover("proxy failure (no backend reachable)", func() { blackhole(true) }, lb2)
		netlab.Eventually(t, "lb1's entry says its proxy failed", 5*time.Second, func() error {
			pair, err := l.Pair(ctx)
			if err != nil {
				return err
			}
			for _, a := range pair.Status.Agents {
				if a.Node == lb1.Name && a.State == lbv1.StateFault && strings.Contains(a.Reason, "proxy") {
					return nil
				}
			}
			return fmt.Errorf("agents %v", brief(pair.Status.Agents))
		})
		// Not ready in Fault: a rolling update would stop at lb1.
		readyz := fmt.Sprintf("http://%s:%d/readyz", lb1.IP, pair.Status.AgentPort)
		if body, err := getBody(hc, readyz, http.StatusServiceUnavailable); err != nil || !strings.Contains(body, "Fault") {
			t.Errorf("in Fault: %v %q, want a 503 naming the Fault", err, body)
		}
		blackhole(false)
		restored = true
		waitHolder(t, l, "lb1 back after its backends returned", lb1.Name, 30*time.Second)
	})

	t.Run("split brain", func(t *testing.T) {
		must(t, l.PartitionNodes(true))
		healed := false
		t.Cleanup(func() {
			if !healed {
				_ = l.PartitionNodes(false)
			}
		})
		start := time.Now()
		waitCondition(t, l, lbv1.ConditionSplitBrain, metav1.ConditionTrue, 40*time.Second)
		t.Logf("SplitBrain reported %v after the partition", time.Since(start).Round(time.Millisecond))
		must(t, l.PartitionNodes(false))
		healed = true
		waitCondition(t, l, lbv1.ConditionSplitBrain, metav1.ConditionFalse, 40*time.Second)
		waitHolder(t, l, "lb1 after healing", lb1.Name, 10*time.Second)
		netlab.Eventually(t, "client served after healing", 15*time.Second, func() error { return p.LastOK(10) })
	})

	t.Run("apiserver unreachable", func(t *testing.T) {
		d := time.Minute
		if v, err := time.ParseDuration(os.Getenv("E2E_API_OUTAGE")); err == nil {
			d = v
		}
		settle()
		start := time.Now()
		for _, n := range l.Nodes {
			n.PauseAPI()
		}
		time.Sleep(d)
		for _, n := range l.Nodes {
			must(t, n.ResumeAPI())
		}
		settle()
		outage, failed := probe.Outage(p.Results(), start)
		t.Logf("apiserver unreachable for %v: client outage %v, %d failed probes", d, outage, failed)
		if failed > 0 {
			t.Errorf("%d requests failed while the apiserver was unreachable", failed)
		}
		netlab.Eventually(t, "agents report again", 30*time.Second, func() error {
			pair, err := l.Pair(ctx)
			if err != nil {
				return err
			}
			if len(pair.Status.Agents) != len(l.Nodes) {
				return fmt.Errorf("agents %v, want one entry per node", brief(pair.Status.Agents))
			}
			for _, a := range pair.Status.Agents {
				if a.LastUpdateTime.Time.Before(start.Add(d)) {
					return fmt.Errorf("%s last reported at %v", a.Node, a.LastUpdateTime)
				}
			}
			return nil
		})
	})

	t.Run("agents restarted while the apiserver is unreachable", func(t *testing.T) {
		// Each agent crashes and restarts (kill -9, as after an OOM kill)
		// during an outage, and must serve with the configuration it kept:
		// first the backup, which then takes over from the crashed holder.
		settle()
		for _, n := range l.Nodes {
			n.PauseAPI()
		}
		resumed := false
		resume := func() {
			if !resumed {
				resumed = true
				for _, n := range l.Nodes {
					must(t, n.ResumeAPI())
				}
			}
		}
		defer resume()
		restart := func(n *Node) {
			t.Helper()
			must(t, l.SignalAgent(n, syscall.SIGKILL))
			<-n.Agent.Done()
			began := time.Now()
			must(t, l.StartAgent(n, quiet))
			// While it waits for the apiserver, the agent is alive (the
			// DaemonSet's liveness probe must not restart it) but not ready.
			base := fmt.Sprintf("http://%s:%d", n.IP, pair.Status.AgentPort)
			netlab.Eventually(t, n.Name+" answers while it waits", 5*time.Second, func() error {
				return expectStatus(hc, base+"/healthz", http.StatusOK)
			})
			if err := expectStatus(hc, base+"/readyz", http.StatusServiceUnavailable); err != nil {
				t.Errorf("%s waiting for the apiserver: %v", n.Name, err)
			}
			if n.Listening() {
				t.Errorf("%s listened before it was due to serve its kept configuration", n.Name)
			}
			netlab.Eventually(t, n.Name+" listening again without the apiserver", 30*time.Second, func() error {
				if !n.Listening() {
					return errors.New("not listening")
				}
				return nil
			})
			t.Logf("%s restarted while the apiserver was unreachable: listening after %v", n.Name, time.Since(began).Round(time.Millisecond))
			if err := servingKept(hc, base, "1"); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		restart(lb2)
		start := time.Now()
		must(t, l.SignalAgent(lb1, syscall.SIGKILL))
		// A killed agent's VIP stays on its link; lb2's answers win by their
		// gratuitous ARP.
		netlab.Eventually(t, "VIP on lb2 after lb1 crashed", 15*time.Second, func() error {
			if h := l.VIPHolders(); !contains(h, lb2.Name) {
				return fmt.Errorf("VIP on %v", h)
			}
			return nil
		})
		netlab.Eventually(t, "client served by lb2", 15*time.Second, func() error { return p.LastOK(10) })
		settle()
		outage, failed := probe.Outage(p.Results(), start)
		t.Logf("holder crashed beside an agent restarted without the apiserver: client outage %v (%d failed probes)", outage.Round(time.Millisecond), failed)
		<-lb1.Agent.Done()
		restart(lb1)
		netlab.Eventually(t, "VIP back on lb1", 30*time.Second, func() error {
			if h := l.VIPHolders(); !slices.Equal(h, []string{lb1.Name}) {
				return fmt.Errorf("VIP on %v", h)
			}
			return nil
		})
		netlab.Eventually(t, "client served by lb1", 15*time.Second, func() error { return p.LastOK(10) })
		resume()
		waitHolder(t, l, "lb1 in the status once the apiserver answers", lb1.Name, 90*time.Second)
		// Once their watches are back (client-go's backoff), the agents
		// run the apiserver's configuration again.
		for _, n := range l.Nodes {
			base := fmt.Sprintf("http://%s:%d", n.IP, pair.Status.AgentPort)
			netlab.Eventually(t, n.Name+" serves the apiserver's configuration again", 90*time.Second, func() error {
				return servingKept(hc, base, "0")
			})
		}
	})

	t.Run("service scaled under load", func(t *testing.T) {
		settle()
		start := time.Now()
		must(t, l.SetEndpoints(ctx, web1, web2, web3))
		// After the apiserver outage above, the agents' watches reconnect
		// with client-go's backoff, which grows to 30s with up to 100%
		// jitter during a minute-long outage: the next attempt, and so the
		// new endpoint, may come up to 60s after the apiserver returned.
		netlab.Eventually(t, "web03 serves", 70*time.Second, func() error {
			for _, r := range p.Results() {
				if r.At.After(start) && r.Backend == "web03" {
					return nil
				}
			}
			return fmt.Errorf("no answer from web03 yet")
		})
		mid := time.Now()
		must(t, l.SetEndpoints(ctx, web2, web3))
		time.Sleep(2 * time.Second)
		settle()
		_, failed := probe.Outage(p.Results(), start)
		served := 0
		for _, r := range p.Results() {
			if r.At.After(mid.Add(time.Second)) && r.Backend == "web01" {
				served++
			}
		}
		t.Logf("scaled 2 -> 3 -> 2 backends: web03 served %v after it was added; %d failed probes", mid.Sub(start).Round(time.Millisecond), failed)
		if failed > 0 {
			t.Errorf("%d requests failed while the Service scaled", failed)
		}
		if served > 0 {
			t.Errorf("web01 still got %d requests a second after it left the Service", served)
		}
	})

	t.Run("last backends terminating", func(t *testing.T) {
		// A rollout of the backends that takes the last ready pods away
		// before new ones are ready: the old pods terminate but still serve,
		// and the agents go on using them, as kube-proxy does.
		start := time.Now()
		must(t, l.SetTerminatingEndpoints(ctx, web2, web3))
		time.Sleep(2 * time.Second)
		settle()
		if outage, failed := probe.Outage(p.Results(), start); failed > 0 {
			t.Errorf("%d requests failed (longest outage %v) with only terminating backends", failed, outage)
		}
		if h := l.VIPHolders(); len(h) != 1 || h[0] != lb1.Name {
			t.Errorf("the VIP is on %v, want it kept on lb1", h)
		}
		must(t, l.SetEndpoints(ctx, web2, web3))
	})

	t.Run("rolling restart", func(t *testing.T) {
		// Preemption moves the VIP away from a serving master; production
		// rollouts turn it off (as keepalived's nopreempt) so that every
		// handover is a graceful one.
		patchPair(t, l, PairName, func(p *lbv1.LoadBalancerPair) { p.Spec.Preempt = new(bool) })
		time.Sleep(time.Second)
		settle()
		start := time.Now()
		for _, n := range []*Node{lb2, lb1} {
			must(t, l.SignalAgent(n, syscall.SIGTERM))
			<-n.Agent.Done()
			must(t, l.StartAgent(n, quiet))
			netlab.Eventually(t, n.Name+" back", 30*time.Second, func() error {
				pair, err := l.Pair(ctx)
				if err != nil {
					return err
				}
				for _, a := range pair.Status.Agents {
					if a.Node == n.Name && (a.State == lbv1.StateBackup || a.State == lbv1.StateMaster) && a.Since.After(start) {
						return nil
					}
				}
				return fmt.Errorf("%s not back yet", n.Name)
			})
		}
		settle()
		outage, failed := probe.Outage(p.Results(), start)
		t.Logf("rolling restart of both agents: %d failed probes (outage %v), holder now %v", failed, outage, l.VIPHolders())
		// One handover of the VIP happens (the master's restart). A
		// connection in flight at the instant the client's ARP entry moves
		// to the new master can only be reset: its packets reach a node
		// without its socket. Only those may fail: one, or two when the
		// machine is busy enough that a probe outlasts the 10 ms between
		// probes, all at that instant. A gap in the handover would fail
		// every probe for its length.
		if failed > 2 || outage > 50*time.Millisecond {
			t.Errorf("%d requests failed during the rolling restart (outage %v), want at most those in flight at the handover", failed, outage)
		}
	})

	// Two ways to take the holder's node out of a pair and bring it back:
	// deselect it (spec.nodeSelector), or exclude it from load balancers,
	// as for maintenance.
	for _, way := range []struct {
		name, how    string
		label, unset string
	}{
		{"node deselected and selected again", "deselected", "lbpair.io/lb=false", "lbpair.io/lb=true"},
		{"node excluded from load balancers and back", "excluded", corev1.LabelNodeExcludeBalancers + "=true", corev1.LabelNodeExcludeBalancers + "-"},
	} {
		t.Run(way.name, func(t *testing.T) {
			relabel := func(label string) {
				out, err := l.Kubectl(ctx, "label", "node", lb2.Name, "--overwrite", label)
				if err != nil {
					t.Fatalf("kubectl label: %v\n%s", err, out)
				}
			}
			if !contains(l.VIPHolders(), lb2.Name) {
				// Make lb2 the holder, so taking it out must hand over.
				must(t, l.SignalAgent(lb1, syscall.SIGTERM))
				<-lb1.Agent.Done()
				must(t, l.StartAgent(lb1, quiet))
			}
			netlab.Eventually(t, "lb2 holds the VIP", 15*time.Second, func() error { return onlyOn(l, VIP, lb2) })
			// What lb2 keeps for a restart must go with the node's place in
			// the pair, or a restart during an outage would bring it back.
			kept := filepath.Join(l.VolumeDir(lb2, PairName, "state"), "last-config.json")
			if _, err := os.Stat(kept); err != nil {
				t.Errorf("lb2 keeps no configuration: %v", err)
			}
			settle()
			start := time.Now()
			relabel(way.label)
			netlab.Eventually(t, "lb2 gave up the VIP and closed its listener", 15*time.Second, func() error {
				if lb2.Listening() || contains(l.VIPHolders(), lb2.Name) {
					return fmt.Errorf("lb2 listening %v, VIP on %v", lb2.Listening(), l.VIPHolders())
				}
				return nil
			})
			waitHolder(t, l, "lb1 after lb2 was "+way.how, lb1.Name, 15*time.Second)
			netlab.Eventually(t, "lb2's status entry removed", 15*time.Second, func() error {
				if e := agentEntry(l, lb2.Name); e != nil {
					return fmt.Errorf("lb2 still reports %s (%s)", e.State, e.Reason)
				}
				return nil
			})
			if _, err := os.Stat(kept); !os.IsNotExist(err) {
				t.Errorf("lb2 still keeps its configuration after it was %s: %v", way.how, err)
			}
			settle()
			_, failed := probe.Outage(p.Results(), start)
			t.Logf("holder's node %s: %d failed probes", way.how, failed)
			if failed > 1 {
				t.Errorf("%d requests failed when the holder's node was %s, want at most the one in flight at the handover", failed, way.how)
			}
			relabel(way.unset)
			netlab.Eventually(t, "lb2 back as backup", 15*time.Second, func() error {
				if !lb2.Listening() {
					return fmt.Errorf("lb2 does not listen")
				}
				if e := agentEntry(l, lb2.Name); e == nil || e.State != lbv1.StateBackup {
					return fmt.Errorf("lb2's entry %+v", e)
				}
				if _, err := os.Stat(kept); err != nil {
					return fmt.Errorf("lb2 keeps no configuration: %w", err)
				}
				return nil
			})
		})
	}

	t.Run("virtual IPs added and removed under load", func(t *testing.T) {
		const second, taken = "198.18.0.101", "198.18.0.102"
		// Another pair runs with taken (its manager cleared it; no agent
		// needs to run for that).
		must(t, l.ApplyPair(ctx, strings.Replace(NamedPairYAML("other", taken, "1s"), "virtualRouterID: 51", "virtualRouterID: 52", 1)))
		t.Cleanup(func() {
			other, err := l.NamedPair(ctx, "other")
			if err == nil {
				_ = l.Client.Delete(ctx, other)
			}
		})
		netlab.Eventually(t, "pair other cleared to run with "+taken, 10*time.Second, func() error {
			other, err := l.NamedPair(ctx, "other")
			if err != nil {
				return err
			}
			if !slices.Equal(other.Status.VirtualIPs, []string{taken}) {
				return fmt.Errorf("status.virtualIPs %q", other.Status.VirtualIPs)
			}
			return nil
		})
		holders := l.VIPHolders()
		if len(holders) != 1 {
			t.Fatalf("VIP on %v, want one holder", holders)
		}
		holder := l.node(holders[0])
		setVIPs := func(vips ...string) {
			t.Helper()
			patchPair(t, l, PairName, func(p *lbv1.LoadBalancerPair) { p.Spec.VirtualIPs = vips })
		}
		start := time.Now()

		setVIPs(VIP, second)
		netlab.Eventually(t, "the client served at "+second+" by "+holder.Name, 10*time.Second, func() error {
			if err := onlyOn(l, second, holder); err != nil {
				return err
			}
			return expectStatus(hc, "http://"+net.JoinHostPort(second, fmt.Sprint(Port))+"/", http.StatusOK)
		})

		// Another pair's address is refused, and the agents keep theirs.
		setVIPs(VIP, second, taken)
		waitPairCondition(t, l, PairName, lbv1.ConditionVIPConflict, metav1.ConditionTrue, 10*time.Second)
		settle()
		if got := l.Holders(taken); len(got) != 0 {
			t.Errorf("%s, pair other's address, is on %v", taken, got)
		}
		if err := onlyOn(l, second, holder); err != nil {
			t.Errorf("during the conflict: %v", err)
		}

		setVIPs(VIP)
		waitPairCondition(t, l, PairName, lbv1.ConditionVIPConflict, metav1.ConditionFalse, 10*time.Second)
		netlab.Eventually(t, second+" taken off", 10*time.Second, func() error {
			if got := l.Holders(second); len(got) != 0 {
				return fmt.Errorf("%s on %v", second, got)
			}
			return nil
		})
		settle()
		if err := onlyOn(l, VIP, holder); err != nil {
			t.Errorf("after the changes: %v", err)
		}
		if _, failed := probe.Outage(p.Results(), start); failed > 0 {
			t.Errorf("%d requests to %s failed while the pair's virtual IPs changed, want none", failed, VIP)
		}
		if pair, err := l.Pair(ctx); err == nil && pair.Status.HolderSince != nil && pair.Status.HolderSince.After(start) {
			t.Errorf("the holder changed at %v, during the changes", pair.Status.HolderSince)
		}
	})

	t.Run("unicast peers found from the agent pods", func(t *testing.T) {
		enableUnicast(t, l, PairName)
		// The master's adverts now go to the backup's address, which nobody
		// listed: tcpdump on the backup sees one addressed to it.
		backup := lb1
		if contains(l.VIPHolders(), lb1.Name) {
			backup = lb2
		}
		netlab.Eventually(t, "a unicast VRRP advert to "+backup.Name, 20*time.Second, func() error {
			_, err := captureVRRP(backup, "ip proto 112 and dst host "+backup.IP)
			return err
		})
		waitCondition(t, l, lbv1.ConditionReady, metav1.ConditionTrue, 10*time.Second)
		netlab.Eventually(t, "client served over unicast VRRP", 10*time.Second, func() error { return p.LastOK(10) })
	})

	t.Run("a spec the agents cannot apply is reported", func(t *testing.T) {
		// VRRPv2 with a password from a Secret that does not exist: valid to the
		// apiserver, impossible for the agents, which keep serving with the last spec.
		applied, err := l.Pair(ctx)
		must(t, err)
		holder := applied.Status.Holder
		patchPair(t, l, PairName, func(p *lbv1.LoadBalancerPair) {
			p.Spec.VRRPVersion = 2
			p.Spec.AdvertisementInterval = &metav1.Duration{Duration: time.Second}
			p.Spec.Authentication = &lbv1.AuthenticationSpec{PasswordSecretRef: corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "nope"}, Key: "password"}}
		})
		const why = `Secret "nope" not found`
		netlab.Eventually(t, "every agent reporting the spec it cannot apply", 10*time.Second, func() error {
			p, err := l.Pair(ctx)
			if err != nil {
				return err
			}
			for _, a := range p.Status.Agents {
				if !strings.Contains(a.ConfigError, why) {
					return fmt.Errorf("%s's configError is %q", a.Node, a.ConfigError)
				}
			}
			if c := apimeta.FindStatusCondition(p.Status.Conditions, lbv1.ConditionDegraded); c == nil || !strings.Contains(c.Message, why) {
				return fmt.Errorf("Degraded is %+v", c)
			}
			return nil
		})
		if err := p.LastOK(10); err != nil {
			t.Errorf("clients not served with the last applied spec: %v", err)
		}
		if h := l.VIPHolders(); len(h) != 1 || h[0] != holder {
			t.Errorf("the VIP moved to %v, want it kept on %s", h, holder)
		}

		// Agents may get Secrets but not watch them. They read the password on every
		// sync, and each agent's status refresh (every 10 s) is a watch event, so a
		// sync, for all of them: the Secret's creation and a new password both apply.
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "nope"}, StringData: map[string]string{"password": "first"}}
		must(t, l.Client.Create(ctx, secret))
		t.Cleanup(func() { _ = l.Client.Delete(ctx, secret) })
		waitConfigApplied(t, l, "the spec applied once its Secret exists", 15*time.Second)
		waitCondition(t, l, lbv1.ConditionReady, metav1.ConditionTrue, 15*time.Second)
		advertAuth := func(want string) error {
			out, err := captureVRRP(lb2, "ip proto 112")
			if err != nil {
				return err
			}
			if !strings.Contains(out, "VRRPv2") || !strings.Contains(out, `auth "`+want) {
				return fmt.Errorf("advert %q", out)
			}
			return nil
		}
		netlab.Eventually(t, "VRRPv2 adverts with the Secret's password", 15*time.Second, func() error { return advertAuth("first") })
		netlab.Eventually(t, "client served over VRRPv2", 15*time.Second, func() error { return p.LastOK(10) })
		holder = l.VIPHolders()[0]

		rotated := time.Now()
		secret.StringData = map[string]string{"password": "second"}
		must(t, l.Client.Update(ctx, secret))
		netlab.Eventually(t, "VRRPv2 adverts with the new password", 15*time.Second, func() error { return advertAuth("second") })
		// Whichever agent learnt it first, neither took over from the other.
		time.Sleep(2 * time.Second)
		if h := l.VIPHolders(); len(h) != 1 || h[0] != holder {
			t.Errorf("the VIP moved from %s to %v during the password change", holder, h)
		}
		if outage, failed := probe.Outage(p.Results(), rotated); failed > 0 {
			t.Errorf("clients failed %d times (longest outage %v) during the password change", failed, outage)
		}

		patchPair(t, l, PairName, func(p *lbv1.LoadBalancerPair) { p.Spec = applied.Spec })
		waitConfigApplied(t, l, "the report cleared once the spec is valid again", 10*time.Second)
		// Back to VRRPv3, a new router on each node: lb1 is elected again.
		waitHolder(t, l, "VRRPv3 again", lb1.Name, 30*time.Second)
		netlab.Eventually(t, "the VIP on lb1 alone", 15*time.Second, func() error { return onlyOn(l, VIP, lb1) })
	})

	t.Run("an IPv6 pair beside the IPv4 pair", func(t *testing.T) {
		// A dual-stack cluster runs a pair per family, here on the same nodes,
		// VRID and Service: VRRP for IPv6 is a protocol of its own, and the
		// IPv6 pair's agents proxy to the Service's IPv6 endpoints.
		const pair6 = "web6"
		began, holder4 := time.Now(), l.VIPHolders()
		must(t, l.ApplyPair(ctx, NamedPairYAML(pair6, VIP6, "100ms")))
		agents := map[*Node]*netlab.Proc{}
		t.Cleanup(func() {
			// Whatever failed, the IPv6 pair must not outlive this step.
			if pair, err := l.NamedPair(ctx, pair6); err == nil {
				_ = l.Client.Delete(ctx, pair)
			}
			for n, a := range agents {
				_ = a.Stop(5 * time.Second)
				checkLog(t, n.Name+"/"+pair6, a.Output())
			}
		})
		for _, n := range l.Nodes {
			a, err := l.StartPairAgent(n, pair6, quiet)
			must(t, err)
			agents[n] = a
		}
		p6 := &probe.Prober{Addr: net.JoinHostPort(VIP6, fmt.Sprint(Port)), Period: 10 * time.Millisecond, Timeout: 500 * time.Millisecond, Dial: l.DialFromClient}
		p6.Start()
		defer p6.Stop()

		waitPairHolder(t, l, pair6, "IPv6 pair: lb1 elected", lb1.Name, 30*time.Second)
		waitPairCondition(t, l, pair6, lbv1.ConditionReady, metav1.ConditionTrue, 10*time.Second)
		must(t, onlyOn(l, VIP6, lb1))
		// Each pair's status names the address its agents advertise from.
		for name, want := range map[string]func(*Node, netip.Addr) bool{
			PairName: func(n *Node, a netip.Addr) bool { return a.String() == n.IP },
			pair6:    func(_ *Node, a netip.Addr) bool { return a.Is6() && a.IsLinkLocalUnicast() },
		} {
			pair, err := l.NamedPair(ctx, name)
			must(t, err)
			for _, a := range pair.Status.Agents {
				addr, _ := netip.ParseAddr(a.Address)
				if n := l.node(a.Node); n == nil || !want(n, addr) {
					t.Errorf("%s's status gives %s's address as %q", name, a.Node, a.Address)
				}
			}
		}
		netlab.Eventually(t, "client served over IPv6", 10*time.Second, func() error { return p6.LastOK(10) })
		// The backend sees the holder's own address: neither IPv4 nor the VIP,
		// which would lose the replies of draining connections once it moves.
		resp, err := hc.Get("http://" + net.JoinHostPort(VIP6, fmt.Sprint(Port)) + "/")
		must(t, err)
		resp.Body.Close()
		if from, _, _ := net.SplitHostPort(resp.Header.Get("X-Remote-Addr")); from != lb1.IP6 {
			t.Errorf("the backend saw the IPv6 pair's connection from %q, want lb1's %s", from, lb1.IP6)
		}

		// Unicast, with the peers' IPv6 addresses from the agent pods (which list
		// both families): lb1 advertises to lb2's, from its link-local address.
		enableUnicast(t, l, pair6)
		netlab.Eventually(t, "a unicast VRRP advert to lb2's IPv6 address", 20*time.Second, func() error {
			out, err := captureVRRP(lb2, "ip6 proto 112 and dst host "+lb2.IP6)
			if src, _, _ := strings.Cut(out, " > "); err == nil && !strings.Contains(src, " fe80:") {
				err = fmt.Errorf("not from a link-local address: %s", out)
			}
			return err
		})
		waitPairCondition(t, l, pair6, lbv1.ConditionReady, metav1.ConditionTrue, 10*time.Second)
		must(t, onlyOn(l, VIP6, lb1))

		start := time.Now()
		must(t, agents[lb1].Signal(syscall.SIGKILL))
		netlab.Eventually(t, "IPv6 VIP on lb2", 15*time.Second, func() error {
			if !contains(l.Holders(VIP6), lb2.Name) {
				return fmt.Errorf("%s on %v", VIP6, l.Holders(VIP6))
			}
			return nil
		})
		waitPairHolder(t, l, pair6, "IPv6 pair after kill -9 of lb1's agent", lb2.Name, 15*time.Second)
		// lb2 took over when lb1's unicast adverts stopped. lb1 still has the
		// address its killed agent held: only lb2's unsolicited neighbour
		// advertisement moves the client.
		netlab.Eventually(t, "client served over IPv6 again", 15*time.Second, func() error { return p6.LastOK(10) })
		settle()
		outage, failed := probe.Outage(p6.Results(), start)
		t.Logf("IPv6 pair, agent crash (kill -9): client outage %v (%d failed probes)", outage.Round(time.Millisecond), failed)

		<-agents[lb1].Done()
		a, err := l.StartPairAgent(lb1, pair6, quiet)
		must(t, err)
		agents[lb1] = a
		waitPairHolder(t, l, pair6, "IPv6 pair: lb1 back after restart", lb1.Name, 30*time.Second)
		netlab.Eventually(t, "the restarted agent removed the stale IPv6 VIP and lb2 released", 15*time.Second, func() error { return onlyOn(l, VIP6, lb1) })

		pair, err := l.NamedPair(ctx, pair6)
		must(t, err)
		must(t, l.Client.Delete(ctx, pair))
		netlab.Eventually(t, "no IPv6 VIP and no IPv6 listener left", 20*time.Second, func() error {
			if h := l.Holders(VIP6); len(h) > 0 {
				return fmt.Errorf("%s still on %v", VIP6, h)
			}
			for _, n := range l.Nodes {
				if n.ListeningOn(VIP6) {
					return fmt.Errorf("%s still listens on [%s]:%d", n.Name, VIP6, Port)
				}
			}
			return nil
		})

		// The IPv4 pair, with the same VRID, saw none of it.
		if h := l.VIPHolders(); !slices.Equal(h, holder4) {
			t.Errorf("the IPv4 VIP moved from %v to %v", holder4, h)
		}
		if outage, failed := probe.Outage(p.Results(), began); failed > 0 {
			t.Errorf("the IPv4 pair's clients failed %d times (longest outage %v) while the IPv6 pair ran", failed, outage)
		}
		for _, n := range l.Nodes {
			if !n.ListeningOn(VIP) {
				t.Errorf("%s no longer listens on %s:%d", n.Name, VIP, Port)
			}
		}
	})

	t.Run("pair deleted", func(t *testing.T) {
		pair, err := l.Pair(ctx)
		must(t, err)
		logged := map[*Node]int{}
		for _, n := range l.Nodes {
			logged[n] = len(n.Agent.Output())
		}
		must(t, l.Client.Delete(ctx, pair))
		netlab.Eventually(t, "no VIP and no listener left", 20*time.Second, func() error {
			if h := l.VIPHolders(); len(h) > 0 {
				return fmt.Errorf("VIP still on %v", h)
			}
			for _, n := range l.Nodes {
				if n.Listening() {
					return fmt.Errorf("%s still listens on :%d", n.Name, Port)
				}
			}
			return nil
		})
		// Stopping for a deleted pair is routine: no agent logs an error for it
		// (such as status writes to the deleted pair), now or on the first retry.
		time.Sleep(time.Second)
		for _, n := range l.Nodes {
			for _, line := range strings.Split(n.Agent.Output()[logged[n]:], "\n") {
				if strings.Contains(line, `"level":"error"`) {
					t.Errorf("%s logged an error after the pair was deleted: %s", n.Name, line)
				}
			}
			checkLog(t, n.Name, n.Agent.Output())
		}
	})
}

// enableUnicast registers the named pair's agent pods, which the agents take
// their peers from, and turns unicast on.
func enableUnicast(t *testing.T, l *Lab, name string) {
	t.Helper()
	ctx := context.Background()
	must(t, l.CreatePairAgentPods(ctx, name))
	patchPair(t, l, name, func(p *lbv1.LoadBalancerPair) { p.Spec.Unicast = &lbv1.UnicastSpec{Enabled: true} })
}

// patchPair changes the named pair with change, as a merge patch of what
// changed: the agents' and the manager's status writes go on meanwhile.
func patchPair(t *testing.T, l *Lab, name string, change func(*lbv1.LoadBalancerPair)) {
	t.Helper()
	ctx := context.Background()
	pair, err := l.NamedPair(ctx, name)
	must(t, err)
	before := pair.DeepCopy()
	change(pair)
	must(t, l.Client.Patch(ctx, pair, client.MergeFrom(before)))
}

// captureVRRP waits up to 3 s for one packet matching the tcpdump filter on
// n's link and returns tcpdump's verbose line for it.
func captureVRRP(n *Node, filter string) (string, error) {
	out, err := n.Host.Exec("timeout", "3", "tcpdump", "-i", netlab.HostLink, "-c", "1", "-n", "-v", filter)
	if err != nil {
		return "", fmt.Errorf("%v: %s", err, out)
	}
	return out, nil
}

// onlyOn says where vip is unless n alone has it.
func onlyOn(l *Lab, vip string, n *Node) error {
	if h := l.Holders(vip); len(h) != 1 || h[0] != n.Name {
		return fmt.Errorf("%s on %v", vip, h)
	}
	return nil
}

// checkLog fails the test for every line of an agent's output that is not
// a JSON log entry: everything the agent and its libraries say must reach
// the log pipeline as structured entries.
func checkLog(t *testing.T, agent, out string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "" && !json.Valid([]byte(line)) {
			t.Errorf("%s wrote a line that is not a JSON log entry: %s", agent, line)
		}
	}
}

func waitHolder(t *testing.T, l *Lab, what, want string, timeout time.Duration) time.Time {
	t.Helper()
	return waitPairHolder(t, l, PairName, what, want, timeout)
}

// waitPairHolder waits until the named pair's status.holder is want, and
// returns when it saw it.
func waitPairHolder(t *testing.T, l *Lab, pair, what, want string, timeout time.Duration) time.Time {
	t.Helper()
	var at time.Time
	netlab.Eventually(t, what+": status.holder "+want, timeout, func() error {
		p, err := l.NamedPair(context.Background(), pair)
		if err != nil {
			return err
		}
		if p.Status.Holder != want {
			return fmt.Errorf("holder %q, agents %+v", p.Status.Holder, brief(p.Status.Agents))
		}
		at = time.Now()
		return nil
	})
	return at
}

// agentEntry is node's entry of status.agents, or nil.
func agentEntry(l *Lab, node string) *lbv1.AgentStatus {
	p, err := l.Pair(context.Background())
	if err != nil {
		return nil
	}
	for i := range p.Status.Agents {
		if p.Status.Agents[i].Node == node {
			return &p.Status.Agents[i]
		}
	}
	return nil
}

// waitFailoverEvent waits for the manager's Failover event naming both
// holders, recorded after since.
func waitFailoverEvent(t *testing.T, l *Lab, from, to string, since time.Time) {
	t.Helper()
	want := fmt.Sprintf("virtual IPs moved from %s to %s", from, to)
	netlab.Eventually(t, "a Failover event: "+want, 10*time.Second, func() error {
		var list eventsv1.EventList
		if err := l.Client.List(context.Background(), &list, client.InNamespace(Namespace)); err != nil {
			return err
		}
		var seen []string
		for _, e := range list.Items {
			if e.Reason != "Failover" || e.Regarding.Name != PairName {
				continue
			}
			at := e.EventTime.Time
			if e.Series != nil {
				at = e.Series.LastObservedTime.Time
			}
			if strings.HasPrefix(e.Note, want) && !at.Before(since.Truncate(time.Second)) {
				return nil
			}
			seen = append(seen, e.Note)
		}
		return fmt.Errorf("Failover events %q", seen)
	})
}

// waitConfigApplied waits until no agent reports a configError.
func waitConfigApplied(t *testing.T, l *Lab, what string, timeout time.Duration) {
	t.Helper()
	netlab.Eventually(t, what, timeout, func() error {
		p, err := l.Pair(context.Background())
		if err != nil {
			return err
		}
		for _, a := range p.Status.Agents {
			if a.ConfigError != "" {
				return fmt.Errorf("%s's configError is still %q", a.Node, a.ConfigError)
			}
		}
		return nil
	})
}

func waitCondition(t *testing.T, l *Lab, typ string, want metav1.ConditionStatus, timeout time.Duration) {
	t.Helper()
	waitPairCondition(t, l, PairName, typ, want, timeout)
}

func waitPairCondition(t *testing.T, l *Lab, pair, typ string, want metav1.ConditionStatus, timeout time.Duration) {
	t.Helper()
	netlab.Eventually(t, fmt.Sprintf("%s: condition %s=%s", pair, typ, want), timeout, func() error {
		p, err := l.NamedPair(context.Background(), pair)
		if err != nil {
			return err
		}
		c := apimeta.FindStatusCondition(p.Status.Conditions, typ)
		if c == nil || c.Status != want {
			return fmt.Errorf("%s is %+v; agents %+v", typ, c, brief(p.Status.Agents))
		}
		return nil
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func brief(as []lbv1.AgentStatus) []string {
	var out []string
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s=%s(%s)", a.Node, a.State, a.Reason))
	}
	return out
}

// servingKept checks the agent's lbpair_agent_configuration_kept metric.
func servingKept(hc *http.Client, base, want string) error {
	body, err := getBody(hc, base+"/metrics", http.StatusOK)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "lbpair_agent_configuration_kept "); ok {
			if v != want {
				return fmt.Errorf("lbpair_agent_configuration_kept %s, want %s", v, want)
			}
			return nil
		}
	}
	return fmt.Errorf("no lbpair_agent_configuration_kept in %s/metrics", base)
}

// expectStatus GETs url and wants the status code want.
func expectStatus(hc *http.Client, url string, want int) error {
	_, err := getBody(hc, url, want)
	return err
}

// getBody GETs url and returns the body of an answer with status code want.
func getBody(hc *http.Client, url string, want int) (string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		return "", fmt.Errorf("GET %s: %s %q, want %d", url, resp.Status, body, want)
	}
	return string(body), nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
