package vrrp

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// vridSeries lists the series of vrid the registry exports, with their
// values.
func vridSeries(t *testing.T, reg prometheus.Gatherer, vrid string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			var labels []string
			ours := false
			for _, l := range m.Label {
				labels = append(labels, l.GetName()+"="+l.GetValue())
				ours = ours || (l.GetName() == "vrid" && l.GetValue() == vrid)
			}
			if ours {
				out[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
		}
	}
	return out
}

func TestMetricsOfAStoppedRouterLeave(t *testing.T) {
	reg := prometheus.NewRegistry()
	old := newMetrics(reg, 5)
	old.setState(Master)
	old.priority.Set(150)
	// A VRID change: the agent makes the new router, then stops the old one.
	nm := newMetrics(reg, 6)
	nm.setState(Backup)
	old.setState(Init)
	old.unregister()
	if got := vridSeries(t, reg, "5"); len(got) > 0 {
		t.Errorf("series of the stopped router's VRID 5 remain: %v", got)
	}
	if got := vridSeries(t, reg, "6"); got[`lbpair_vrrp_state{state=Backup,vrid=6}`] != 1 {
		t.Errorf("the new router's series are not all there: %v", got)
	}
	nm.unregister()
	if got := vridSeries(t, reg, "6"); len(got) > 0 {
		t.Errorf("series of the stopped router's VRID 6 remain: %v", got)
	}
}

func TestMetricsTakenOverStay(t *testing.T) {
	reg := prometheus.NewRegistry()
	old := newMetrics(reg, 5)
	old.priority.Set(150)
	// A restart with the same VRID: the new router takes the series over
	// before the old one stops.
	nm := newMetrics(reg, 5)
	nm.setState(Backup)
	nm.priority.Set(120)
	old.unregister()
	got := vridSeries(t, reg, "5")
	for series, want := range map[string]float64{
		"lbpair_vrrp_priority{vrid=5}":                         120,
		"lbpair_vrrp_state{state=Backup,vrid=5}":               1,
		"lbpair_vrrp_adverts_sent_total{vrid=5}":               0,
		"lbpair_vrrp_adverts_received_total{vrid=5}":           0,
		"lbpair_vrrp_packets_dropped_total{reason=ttl,vrid=5}": 0,
		"lbpair_vrrp_netlink_watches_lost_total{vrid=5}":       0,
	} {
		if v, ok := got[series]; !ok || v != want {
			t.Errorf("%s: %v (exported: %v), want the new router's %v", series, v, ok, want)
		}
	}
}

// TestStoppedRouterLeavesNoSeries stops routers as the agent replaces them:
// the new one is made (and registers its series) before the old one stops.
func TestStoppedRouterLeavesNoSeries(t *testing.T) {
	h := lab(t, "lb1")[0]
	reg := prometheus.NewRegistry()
	cfg := baseConfig(150)
	first := startRouter(t, h, cfg, WithMetrics(reg))
	waitFor(t, "lb1 master", testVIP, map[*node]State{first: Master})

	// A new VRID.
	cfg.VRID = 52
	second := newNode(t, h, cfg, WithMetrics(reg))
	first.stop()
	if got := vridSeries(t, reg, "51"); len(got) > 0 {
		t.Errorf("after a VRID change, series of the old VRID 51 remain: %v", got)
	}
	second.run(t)
	waitFor(t, "lb1 master with VRID 52", testVIP, map[*node]State{second: Master})

	// The same VRID: the old router must not take the new one's series.
	third := newNode(t, h, cfg, WithMetrics(reg))
	second.stop()
	// The new router has not run: its priority is not published yet, where
	// the old one's was 150.
	if got := vridSeries(t, reg, "52"); got["lbpair_vrrp_priority{vrid=52}"] != 0 || len(got) == 0 {
		t.Errorf("after a restart with the same VRID, the series are not the new router's: %v", got)
	}
	third.run(t)
	waitFor(t, "lb1 master again", testVIP, map[*node]State{third: Master})
	if got := vridSeries(t, reg, "52")["lbpair_vrrp_state{state=Master,vrid=52}"]; got != 1 {
		t.Errorf("the running router's state is not exported: lbpair_vrrp_state{state=Master,vrid=52} = %v", got)
	}

	// Stopped and not replaced (the pair was deleted).
	third.stop()
	if got := vridSeries(t, reg, "52"); len(got) > 0 {
		t.Errorf("after the router stopped, series of VRID 52 remain: %v", got)
	}
}
