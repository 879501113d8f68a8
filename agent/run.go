package agent

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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
	load := func() (*config.Settings, error) {
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
		return s, nil
	}
	current, err := load()
	if err != nil {
		return err
	}
	s := current
	if err := a.Apply(ctx, s); err != nil {
		return err
	}
	log.Info("Agent started", "mode", "standalone", "vrid", s.VRRP.VRID, "virtualIPs", s.VRRP.VIPs, "priority", s.VRRP.Priority, "listeners", len(s.Proxy.Listeners))

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
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
