package vrrp

import (
	"errors"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the router's Prometheus series, labelled by VRID.
type metrics struct {
	state       *prometheus.GaugeVec
	priority    prometheus.Gauge
	transitions *prometheus.CounterVec
	sent        prometheus.Counter
	received    prometheus.Counter
	dropped     *prometheus.CounterVec
	watchesLost prometheus.Counter
	collectors  []prometheus.Collector
	// reg is where the collectors were registered; nil when nowhere.
	reg prometheus.Registerer
}

// registerMu makes a router's registration and its unregistration atomic
// with respect to each other: unregister checks which router's collectors
// are registered before it removes them.
var registerMu sync.Mutex

func newMetrics(reg prometheus.Registerer, vrid uint8) *metrics {
	labels := prometheus.Labels{"vrid": strconv.Itoa(int(vrid))}
	m := &metrics{
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "lbpair_vrrp_state", Help: "1 for the router's current VRRP state, 0 for the others.", ConstLabels: labels,
		}, []string{"state"}),
		priority: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "lbpair_vrrp_priority", Help: "The router's effective VRRP priority, after tracking.", ConstLabels: labels,
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbpair_vrrp_transitions_total", Help: "VRRP state transitions, by the state entered.", ConstLabels: labels,
		}, []string{"to"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lbpair_vrrp_adverts_sent_total", Help: "VRRP advertisements sent.", ConstLabels: labels,
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lbpair_vrrp_adverts_received_total", Help: "VRRP advertisements received and accepted.", ConstLabels: labels,
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "lbpair_vrrp_packets_dropped_total", Help: "VRRP packets dropped, by reason.", ConstLabels: labels,
		}, []string{"reason"}),
		watchesLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "lbpair_vrrp_netlink_watches_lost_total", Help: "Netlink watches of the interface that ended (the kernel dropped what they could not take) and were opened again.", ConstLabels: labels,
		}),
	}
	// Every drop reason is exported from the start, so that alerts on
	// rate() see the series before the first drop.
	for _, reason := range []string{"ttl", "malformed", "checksum", "version", "vrid", "auth", "interval", "addresses"} {
		m.dropped.WithLabelValues(reason)
	}
	m.collectors = []prometheus.Collector{m.state, m.priority, m.transitions, m.sent, m.received, m.dropped, m.watchesLost}
	m.reg = reg
	if reg != nil {
		registerMu.Lock()
		defer registerMu.Unlock()
		for _, c := range m.collectors {
			// A router replacing another of the same VRID takes over its
			// series.
			if err := reg.Register(c); err != nil {
				if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
					reg.Unregister(are.ExistingCollector)
					_ = reg.Register(c)
				}
			}
		}
	}
	return m
}

// unregister removes the router's series from the registry, as it stops for
// good: a router replaced by one of another VRID, or not replaced at all,
// must not leave its last state exported. Collectors another router of the
// same VRID took over stay: Unregister removes whatever collector has the
// same descriptors, so each is first checked to still be this router's.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	registerMu.Lock()
	defer registerMu.Unlock()
	for _, c := range m.collectors {
		// Registering again is the registry's only identity check: it
		// reports which collector holds these descriptors, if any.
		err := m.reg.Register(c)
		var are prometheus.AlreadyRegisteredError
		if err == nil || (errors.As(err, &are) && are.ExistingCollector == c) {
			m.reg.Unregister(c)
		}
	}
}

func (m *metrics) setState(s State) {
	for _, st := range []State{Init, Backup, Master, Fault} {
		v := 0.0
		if st == s {
			v = 1
		}
		m.state.WithLabelValues(st.String()).Set(v)
	}
}
