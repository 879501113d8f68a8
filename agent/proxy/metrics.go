package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus collectors. Hot paths hold the label children, so
// a connection costs no label lookups.
type metrics struct {
	accepted    *prometheus.CounterVec
	active      *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	healthy     *prometheus.GaugeVec
	selections  *prometheus.CounterVec
	connectErrs *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

// Refusal reasons, the values of the refused counter's reason label.
const (
	refusedMaxConnections = "maxConnections"
	refusedNoBackend      = "noBackend"
	refusedOutOfResources = "outOfResources"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "lbpair", "proxy"
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_accepted_total", Help: "Client connections accepted."}, []string{"listener"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_active", Help: "Client connections open now."}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "connections_refused_total", Help: "Client connections closed without being proxied, by reason (maxConnections, noBackend, outOfResources: the agent's file descriptors, memory or local ports)."},
			[]string{"listener", "reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "bytes_total", Help: "Bytes proxied, by direction (clientToBackend, backendToClient)."},
			[]string{"listener", "direction"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub,
			Name: "backend_healthy", Help: "1 when the backend may take new connections, 0 when a health check took it out."},
			[]string{"listener", "backend"}),
		selections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "backend_selections_total", Help: "Times the balancer chose the backend for a connection attempt."},
			[]string{"listener", "backend"}),
		connectErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub,
			Name: "backend_connect_errors_total", Help: "Failed connects to a backend, by reason (refused, timeout, unreachable, other)."},
			[]string{"listener", "backend", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub,
			Name: "connection_duration_seconds", Help: "How long proxied connections lasted.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"listener"}),
	}
	if reg != nil {
		reg.MustRegister(m.accepted, m.active, m.refused, m.bytes, m.healthy, m.selections, m.connectErrs, m.duration)
	}
	return m
}

// listenerMetrics are one listener's children.
type listenerMetrics struct {
	accepted, refusedMax, refusedNoBackend, refusedOutOfResources prometheus.Counter
	active                                                        prometheus.Gauge
	bytesUp, bytesDown                                            prometheus.Counter
	duration                                                      prometheus.Observer
}

func (m *metrics) forListener(name string) *listenerMetrics {
	return &listenerMetrics{
		accepted:              m.accepted.WithLabelValues(name),
		refusedMax:            m.refused.WithLabelValues(name, refusedMaxConnections),
		refusedNoBackend:      m.refused.WithLabelValues(name, refusedNoBackend),
		refusedOutOfResources: m.refused.WithLabelValues(name, refusedOutOfResources),
		active:                m.active.WithLabelValues(name),
		bytesUp:               m.bytes.WithLabelValues(name, "clientToBackend"),
		bytesDown:             m.bytes.WithLabelValues(name, "backendToClient"),
		duration:              m.duration.WithLabelValues(name),
	}
}

// deleteListener drops a removed listener's series.
func (m *metrics) deleteListener(name string) {
	l := prometheus.Labels{"listener": name}
	for _, v := range []interface{ DeletePartialMatch(prometheus.Labels) int }{
		m.accepted, m.active, m.refused, m.bytes, m.healthy, m.selections, m.connectErrs, m.duration,
	} {
		v.DeletePartialMatch(l)
	}
}

// deleteBackend drops a removed backend's series.
func (m *metrics) deleteBackend(listener, backend string) {
	l := prometheus.Labels{"listener": listener, "backend": backend}
	m.healthy.DeletePartialMatch(l)
	m.selections.DeletePartialMatch(l)
	m.connectErrs.DeletePartialMatch(l)
}
