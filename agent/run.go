package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/lbpair/lbpair/agent/config"
	"github.com/lbpair/lbpair/agent/vrrp"
)

// run starts the agent in the mode the options select.
func run(ctx context.Context, o Options, log logr.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var st *statusReporter
	var hook func(vrrp.Transition)
	if o.ConfigFile == "" {
		st = newStatusReporter(log.WithName("status"), types.NamespacedName{Namespace: o.Namespace, Name: o.Pair}, o.NodeName)
		hook = st.notify
	}
	a := NewAgent(log, reg, hook)

	srv, err := serveHealth(o.HealthAddr, a, reg, log)
	if err != nil {
		return err
	}
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()

	if st != nil {
		st.agent = a
		return runCluster(ctx, o, a, st, log)
	}
	return runStandalone(ctx, o, a, log)
}

// runStandalone runs the pair of a configuration file until ctx ends,
// reloading the file on SIGHUP. A file that does not load is reported and
// the agent keeps its running settings, as `nginx -s reload` does.
func runStandalone(ctx context.Context, o Options, a *Agent, log logr.Logger) error {
	load := func() (*config.Settings, error) { return loadStandalone(ctx, o, log) }
	// Before the first load, which may take seconds (DNS): a SIGHUP not
	// asked for ends the process, and a reload sent just after a start
	// (systemctl enable --now, then reload) must not stop the agent.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	current, err := load()
	if err != nil {
		return err
	}
	s := current
	if err := a.Apply(ctx, s); err != nil {
		return err
	}
	log.Info("Agent started", "mode", "standalone", "vrid", s.VRRP.VRID, "virtualIPs", s.VRRP.VIPs, "priority", s.VRRP.Priority, "listeners", len(s.Proxy.Listeners))

	for {
		select {
		case <-hup:
			next, err := load()
			if err == nil {
				err = a.Apply(ctx, next)
			}
			if err != nil {
				log.Error(err, "Reload failed; keeping the running configuration")
				continue
			}
			current = next
			log.Info("Configuration reloaded", "file", o.ConfigFile)
		case <-ctx.Done():
			log.Info("Stopping: leaving the VRRP group and draining connections", "drainTimeout", current.Proxy.DrainTimeout)
			drainCtx, cancel := context.WithTimeout(context.Background(), current.Proxy.DrainTimeout)
			defer cancel()
			return a.Stop(drainCtx)
		}
	}
}

// loadStandalone reads the options' file and builds its settings for the
// options' node, as a start or a reload does.
func loadStandalone(ctx context.Context, o Options, log logr.Logger) (*config.Settings, error) {
	f, err := config.ReadFile(o.ConfigFile)
	if err != nil {
		return nil, err
	}
	s, err := config.Build(ctx, config.Inputs{
		Pair:    f.Pair,
		Node:    f.Node(o.NodeName),
		Peers:   peerAddresses(f.Nodes, o.NodeName),
		Secrets: f.Secrets,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.ConfigFile, err)
	}
	for _, w := range s.Warnings {
		log.Info("Configuration warning", "warning", w)
	}
	if len(s.Services) > 0 {
		return nil, fmt.Errorf("%s: port %q has a Service backend, which needs cluster mode; give static backends in standalone mode", o.ConfigFile, s.Services[0].Listener)
	}
	if err := checkStandalone(f, o.NodeName, s); err != nil {
		return nil, fmt.Errorf("%s: %w", o.ConfigFile, err)
	}
	return s, nil
}

// checkStandalone refuses what a file may say that would leave the agent
// running, but not as its pair: a node name the file's Nodes do not know
// (the agent would run at the default priority, silently out of the order
// the file gives), and unicast without an address to send to (the adverts
// would go to the multicast group, which the network may drop: both nodes
// would then hold the virtual IPs).
func checkStandalone(f *config.File, nodeName string, s *config.Settings) error {
	if len(f.Nodes) > 0 && f.Node(nodeName) == nil {
		names := make([]string, len(f.Nodes))
		for i, n := range f.Nodes {
			names[i] = n.Name
		}
		return fmt.Errorf("--node-name %q is none of the file's Nodes (%s): set --node-name to this node's metadata.name, or name its Node so", nodeName, strings.Join(names, ", "))
	}
	if u := f.Pair.Spec.Unicast; u != nil && u.Enabled {
		if len(s.VRRP.Peers) == 0 {
			return fmt.Errorf("spec.unicast.enabled: no peer to send to: give the other nodes' Nodes an InternalIP in status.addresses, or list spec.unicast.peers")
		}
		// Each other Node is an agent of the pair that must hear this one: one
		// without an address to send to would take the virtual IPs as well.
		v4 := s.VRRP.VIPs[0].Is4()
		for _, n := range f.Nodes {
			if n.Name == nodeName || slices.ContainsFunc(peerAddresses([]corev1.Node{n}, ""), func(a netip.Addr) bool { return a.Is4() == v4 }) {
				continue
			}
			family := "IPv4"
			if !v4 {
				family = "IPv6"
			}
			return fmt.Errorf("the Node %q: spec.unicast.enabled needs the address its agent hears adverts on: give it an %s address of type InternalIP in status.addresses (it has %v)", n.Name, family, n.Status.Addresses)
		}
	}
	return nil
}
