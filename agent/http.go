package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"

	"github.com/lbpair/lbpair/agent/vrrp"
)

// healthIdleTimeout closes a kept-alive connection to the endpoints that
// sends no request for that long; longer than kubelet probes and Prometheus
// scrapes need between requests.
var healthIdleTimeout = 30 * time.Second

// serveHealth starts the HTTP endpoints: /healthz (the process answers and
// its router has not failed), /readyz (the router has joined the group and
// every listener is up, so this agent can take over) and /metrics.
func serveHealth(addr string, a *Agent, reg *prometheus.Registry, log logr.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for health and metrics on %q (--health-addr): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeCheck(w, healthy(a.Status()))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		writeCheck(w, ready(a.Status()))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	// A listener on every address (the DaemonSet's ":port") answers on the
	// virtual IPs too, while this node holds them: their clients must not
	// reach the agent's own endpoints. Probes and scrapes use the node's
	// address.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			if ap, err := netip.ParseAddrPort(local.String()); err == nil && a.isVIP(ap.Addr().Unmap()) {
				w.Header().Set("Connection", "close")
				http.NotFound(w, r)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
	// Addr says where it listens (":0" picks a port). The endpoints are open
	// to the node's network: no client may hold a connection, and the
	// agent's memory with it, for longer than a request and a short idle.
	srv := &http.Server{Handler: handler, Addr: ln.Addr().String(),
		ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: healthIdleTimeout, MaxHeaderBytes: 16 << 10}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error(err, "Health server stopped", "address", addr)
		}
	}()
	return srv, nil
}

// healthy is the liveness check: it fails only when the router failed,
// which a restart may mend. An agent that waits for the apiserver, has no
// valid configuration or was taken out of its pair runs no router, and is
// healthy: a restart would not help, and the kubelet's crash-loop backoff
// would delay it by up to 5 minutes once it can run.
func healthy(st Status) error {
	if st.Err != nil {
		return fmt.Errorf("VRRP router failed: %w", st.Err)
	}
	return nil
}

func ready(st Status) error {
	if err := healthy(st); err != nil {
		return err
	}
	if !st.Running {
		return errors.New("VRRP router not running")
	}
	switch st.VRRP.State {
	case vrrp.Init:
		return errors.New("VRRP router has not joined the group yet")
	case vrrp.Fault:
		// Not ready, so that a rolling update of the DaemonSet stops at an agent
		// that could not take the VIP over, before it restarts the holder.
		return fmt.Errorf("VRRP router in Fault: %s", st.VRRP.Reason)
	}
	var down []string
	for _, p := range st.Ports {
		if !p.Listening {
			down = append(down, p.Name)
		}
	}
	if len(down) > 0 {
		return fmt.Errorf("listeners not up: %s", strings.Join(down, ", "))
	}
	return nil
}

func writeCheck(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

// peerAddresses lists the internal addresses of every node but self.
func peerAddresses(nodes []corev1.Node, self string) []netip.Addr {
	var out []netip.Addr
	for _, n := range nodes {
		if n.Name == self {
			continue
		}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}
