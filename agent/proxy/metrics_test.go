package proxy

import (
	"bytes"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// holdingBackend is a loopback backend that keeps its connections open until the
// client closes them.
func holdingBackend(t *testing.T) string {
	t.Helper()
	return serveLoopback(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}).String()
}

// backendSeries lists the metric names of the series labelled with backend.
func backendSeries(t *testing.T, reg prometheus.Gatherer, backend string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "backend" && lp.GetValue() == backend {
					out = append(out, mf.GetName())
				}
			}
		}
	}
	return out
}

// TestReaddedListenerDropsRemovedBackendSeries removes a listener while a connection
// runs and adds it back with other backends before that connection ends: the series
// of the backends the new listener does not have go, those it has stay.
func TestReaddedListenerDropsRemovedBackendSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newTestServer(t, WithMetrics(reg))
	gone, kept := holdingBackend(t), holdingBackend(t)
	added := "127.0.0.1:1"
	before := loopbackListener(t, "web", gone, kept)
	if err := s.Apply(Config{Listeners: []ListenerConfig{before}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", before.Addrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	active := s.metrics.active.WithLabelValues("web")
	waitFor(t, "the connection to be accepted", func() bool { return testutil.ToFloat64(active) == 1 })
	if err := s.Apply(Config{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(Config{Listeners: []ListenerConfig{loopbackListener(t, "web", kept, added)}}); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if got := backendSeries(t, reg, gone); len(got) > 0 {
			t.Errorf("%s: series of the removed backend %s remain: %v", when, gone, got)
		}
		for _, b := range []string{kept, added} {
			if got := backendSeries(t, reg, b); !slices.Contains(got, "lbpair_proxy_backend_healthy") {
				t.Errorf("%s: backend %s of the re-added listener has no lbpair_proxy_backend_healthy series: %v", when, b, got)
			}
		}
	}
	check("after the re-add")
	c.Close()
	waitFor(t, "the old connection to end", func() bool { return testutil.ToFloat64(active) == 0 })
	check("after the old connection ended")
}

// TestRefusedConnectionsHaveNoDuration refuses connections for want of a backend and
// over maxConnections: they are counted as refused, and only the proxied connection is
// observed in the duration histogram.
func TestRefusedConnectionsHaveNoDuration(t *testing.T) {
	reg := prometheus.NewRegistry()
	var log bytes.Buffer
	var logMu sync.Mutex
	s := newTestServer(t, WithMetrics(reg), WithAccessLogWriter(lockedWriter{&logMu, &log}))
	dead := loopbackListener(t, "dead", "127.0.0.1:1")
	capped := loopbackListener(t, "capped", holdingBackend(t))
	capped.MaxConnections = 1
	if err := s.Apply(Config{Listeners: []ListenerConfig{dead, capped}, AccessLog: true}); err != nil {
		t.Fatal(err)
	}
	// The access log line is written after the connection's metrics.
	logged := func(listener, end string) func() bool {
		return func() bool {
			logMu.Lock()
			defer logMu.Unlock()
			for _, line := range strings.Split(log.String(), "\n") {
				if strings.HasPrefix(line, `listener="`+listener+`" `) && strings.HasSuffix(line, " end="+end) {
					return true
				}
			}
			return false
		}
	}
	durations := func(listener string) uint64 {
		var n uint64
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "lbpair_proxy_connection_duration_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "listener" && lp.GetValue() == listener {
						n += m.GetHistogram().GetSampleCount()
					}
				}
			}
		}
		return n
	}
	// refusedDial connects to a listener that refuses the connection: on loopback the
	// reset may come before the dial returns.
	refusedDial := func(lc ListenerConfig) {
		c, err := net.Dial("tcp", lc.Addrs[0].String())
		if err != nil && !isReset(err) {
			t.Fatal(err)
		}
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
	}

	refusedDial(dead)
	waitFor(t, "the refusal for want of a backend", logged("dead", "noBackend"))
	if got := testutil.ToFloat64(s.metrics.refused.WithLabelValues("dead", refusedNoBackend)); got != 1 {
		t.Errorf("noBackend refusals counted: %v, want 1", got)
	}
	if n := durations("dead"); n != 0 {
		t.Errorf("the connection refused for want of a backend is observed in the duration histogram: %d samples", n)
	}

	held, err := net.Dial("tcp", capped.Addrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	active := s.metrics.active.WithLabelValues("capped")
	waitFor(t, "the first connection to be accepted", func() bool { return testutil.ToFloat64(active) == 1 })
	refusedDial(capped)
	waitFor(t, "the refusal over maxConnections", logged("capped", "maxConnections"))
	if n := durations("capped"); n != 0 {
		t.Errorf("the connection refused over maxConnections is observed in the duration histogram: %d samples", n)
	}
	held.Close()
	waitFor(t, "the proxied connection to end", logged("capped", "closed"))
	if n := durations("capped"); n != 1 {
		t.Errorf("duration samples after the proxied connection ended: %d, want 1", n)
	}
}
