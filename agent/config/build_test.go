package config

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"

	"github.com/lbpair/lbpair/agent/proxy"
	"github.com/lbpair/lbpair/agent/track"
	"github.com/lbpair/lbpair/agent/vrrp"
)

var lbv1ServiceBackend = lbv1.ServiceBackend{Name: "web", Port: intstr.FromString("http")}

// fakeResolver answers from a table and fails for anything else.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, errors.New("no such host")
}

func TestBuildSeed(t *testing.T) {
	f, err := ReadFile("testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Build(context.Background(), Inputs{Pair: f.Pair, Node: f.Node("lb2"), Peers: nil, Secrets: f.Secrets})
	if err != nil {
		t.Fatal(err)
	}
	wantVRRP := vrrp.Config{
		Version: 2, VRID: 51, Priority: 90, AdvertInterval: time.Second, Preempt: true,
		VIPs: []netip.Addr{netip.MustParseAddr("198.18.0.100")}, AuthPassword: "s3cret",
		Announce: vrrp.Announce{Repeat: 5, Delay: 5 * time.Second},
	}
	wantProxy := proxy.Config{DrainTimeout: 30 * time.Second, Listeners: []proxy.ListenerConfig{{
		Name:  "http",
		Addrs: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.100:88")},
		Backends: []proxy.Backend{
			{Addr: netip.MustParseAddrPort("198.18.1.10:80"), Weight: 1},
			{Addr: netip.MustParseAddrPort("198.18.1.11:80"), Weight: 1},
		},
		Balance:         proxy.RoundRobin,
		Passive:         proxy.PassiveCheck{MaxFails: 1, FailTimeout: 10 * time.Second},
		ConnectTimeout:  5 * time.Second,
		ConnectAttempts: 3,
		IdleTimeout:     10 * time.Minute,
	}}}
	cmpAddrs := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	cmpAddrPorts := cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })
	if diff := cmp.Diff(wantVRRP, s.VRRP, cmpAddrs); diff != "" {
		t.Errorf("VRRP (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantProxy, s.Proxy, cmpAddrPorts); diff != "" {
		t.Errorf("proxy (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]track.Check{{Name: ProxyCheck, Weight: 0}}, s.Checks); diff != "" {
		t.Errorf("checks (-want +got):\n%s", diff)
	}
}

func TestBuild(t *testing.T) {
	base := func() *File {
		f, err := ParseFile([]byte(seedPair + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: vrrp}\nstringData: {password: s3cret}\n"))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	resolver := fakeResolver{
		"web01": {netip.MustParseAddr("198.18.1.10")},
		"web02": {netip.MustParseAddr("198.18.1.11"), netip.MustParseAddr("fd00:198:18:1::11")},
	}
	peers := []netip.Addr{netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("fd00:198:18::12")}
	tests := []struct {
		name    string
		edit    func(f *File)
		check   func(t *testing.T, s *Settings)
		wantErr string
	}{
		{
			name: "names resolve to every address, each a backend",
			check: func(t *testing.T, s *Settings) {
				var got []string
				for _, b := range s.Proxy.Listeners[0].Backends {
					got = append(got, b.Addr.String())
				}
				want := []string{"198.18.1.10:80", "198.18.1.11:80", "[fd00:198:18:1::11]:80"}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("backends (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "unicast without listed peers uses the other agents of the same family",
			edit: func(f *File) { f.Pair.Spec.Unicast = &lbv1.UnicastSpec{Enabled: true} },
			check: func(t *testing.T, s *Settings) {
				if got := s.VRRP.Peers; len(got) != 1 || got[0] != peers[0] {
					t.Errorf("peers = %v, want [%v]", got, peers[0])
				}
			},
		},
		{
			// The listed peers are routers besides the agents (a keepalived
			// host): listing them must not leave the agents deaf to each other.
			name: "listed unicast peers add to the other agents, sorted",
			edit: func(f *File) {
				f.Pair.Spec.Unicast = &lbv1.UnicastSpec{Enabled: true, Peers: []string{"198.18.0.13", "198.18.0.10"}}
			},
			check: func(t *testing.T, s *Settings) {
				checkPeers(t, s, "198.18.0.10", "198.18.0.12", "198.18.0.13")
			},
		},
		{
			name: "a listed unicast peer that is an agent is sent to once",
			edit: func(f *File) {
				f.Pair.Spec.Unicast = &lbv1.UnicastSpec{Enabled: true, Peers: []string{"198.18.0.12"}}
			},
			check: func(t *testing.T, s *Settings) { checkPeers(t, s, "198.18.0.12") },
		},
		{
			name: "a listed unicast peer of the other family",
			edit: func(f *File) {
				f.Pair.Spec.Unicast = &lbv1.UnicastSpec{Enabled: true, Peers: []string{"198.18.0.13", "fd00:198:18::13"}}
			},
			wantErr: "spec.unicast.peers[1]: fd00:198:18::13 is not of the virtual IPs' family",
		},
		{
			name: "multicast ignores discovered peers",
			check: func(t *testing.T, s *Settings) {
				if len(s.VRRP.Peers) != 0 {
					t.Errorf("peers = %v, want none", s.VRRP.Peers)
				}
			},
		},
		{
			name: "a Service backend becomes a ServicePort",
			edit: func(f *File) {
				f.Pair.Spec.Ports[0].Backend.Static = nil
				f.Pair.Spec.Ports[0].Backend.Service = &lbv1ServiceBackend
			},
			check: func(t *testing.T, s *Settings) {
				if len(s.Services) != 1 || s.Services[0].Listener != "http" || s.Services[0].Service != "web" {
					t.Errorf("services = %+v", s.Services)
				}
			},
		},
		{
			name: "the access log is off unless asked for",
			check: func(t *testing.T, s *Settings) {
				if s.Proxy.AccessLog {
					t.Error("access log on by default")
				}
			},
		},
		{
			name: "accessLog turns on the proxy's access log",
			edit: func(f *File) { f.Pair.Spec.AccessLog = true },
			check: func(t *testing.T, s *Settings) {
				if !s.Proxy.AccessLog {
					t.Error("access log off with spec.accessLog true")
				}
			},
		},
		{
			name: "the virtual IPs the manager cleared win over the spec's",
			edit: func(f *File) {
				f.Pair.Spec.VirtualIPs = []string{"198.18.0.200"}
				f.Pair.Status.VirtualIPs = []string{"198.18.0.100", "198.18.0.101"}
			},
			check: func(t *testing.T, s *Settings) {
				if got := fmt.Sprint(s.VRRP.VIPs); got != "[198.18.0.100 198.18.0.101]" {
					t.Errorf("virtual IPs = %s, want status.virtualIPs [198.18.0.100 198.18.0.101]", got)
				}
			},
		},
		{
			name: "the spec's virtual IPs until the manager clears them",
			edit: func(f *File) { f.Pair.Spec.VirtualIPs = []string{"198.18.0.200"} },
			check: func(t *testing.T, s *Settings) {
				if got := fmt.Sprint(s.VRRP.VIPs); got != "[198.18.0.200]" {
					t.Errorf("virtual IPs = %s, want spec.virtualIPs [198.18.0.200]", got)
				}
			},
		},
		{
			name:    "unresolvable backend names its field",
			edit:    func(f *File) { f.Pair.Spec.Ports[0].Backend.Static[1].Address = "web09:80" },
			wantErr: `spec.ports[0].backend.static[1].address: resolving "web09"`,
		},
		{
			name:    "missing VRID",
			edit:    func(f *File) { f.Pair.Spec.VirtualRouterID = nil },
			wantErr: "spec.virtualRouterID: not set",
		},
		{
			name:    "VRID out of range",
			edit:    func(f *File) { f.Pair.Spec.VirtualRouterID = new(int32(300)) },
			wantErr: "spec.virtualRouterID 300: use 1 to 255",
		},
		{
			name:    "default priority out of range",
			edit:    func(f *File) { f.Pair.Spec.Priority.Default = 400 },
			wantErr: "spec.priority.default 400: use 1 to 254",
		},
		{
			name:    "negative proxy weight",
			edit:    func(f *File) { f.Pair.Spec.Tracking = &lbv1.TrackingSpec{ProxyWeight: -20} },
			wantErr: "spec.tracking.proxyWeight -20: use 0",
		},
		{
			name:    "a flood of announcements",
			edit:    func(f *File) { f.Pair.Spec.Announcements.Repeat = 1000 },
			wantErr: "spec.announcements.repeat 1000: use 1 to 100",
		},
		{
			name:    "port out of range",
			edit:    func(f *File) { f.Pair.Spec.Ports[0].Port = 70000 },
			wantErr: "spec.ports[0].port 70000: use 1 to 65535",
		},
		{
			name:    "missing Secret",
			edit:    func(f *File) { f.Secrets = nil },
			wantErr: `spec.authentication.passwordSecretRef: Secret "vrrp" not found`,
		},
		{
			name:    "missing key",
			edit:    func(f *File) { f.Secrets[0].StringData = map[string]string{"pass": "x"} },
			wantErr: `Secret "vrrp" has no key "password"`,
		},
		{
			name:    "password too long for VRRPv2",
			edit:    func(f *File) { f.Secrets[0].StringData["password"] = "123456789" },
			wantErr: "must be 1 to 8 bytes",
		},
		{
			name:    "mixed families",
			edit:    func(f *File) { f.Pair.Spec.VirtualIPs = append(f.Pair.Spec.VirtualIPs, "fd00::100") },
			wantErr: "spec.virtualIPs[1]: fd00::100 mixes address families",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := base()
			if tt.edit != nil {
				tt.edit(f)
			}
			s, err := Build(context.Background(), Inputs{Pair: f.Pair, Peers: peers, Secrets: f.Secrets, Resolver: resolver})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, s)
		})
	}
}

// checkPeers checks the unicast peers of s, in order.
func checkPeers(t *testing.T, s *Settings, want ...string) {
	t.Helper()
	var got []string
	for _, p := range s.VRRP.Peers {
		got = append(got, p.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}
}

func TestNodePriority(t *testing.T) {
	spec := &lbv1.PrioritySpec{Default: 100, NodeLabel: "lbpair.io/priority"}
	node := func(v string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "lb1", Labels: map[string]string{"lbpair.io/priority": v}}}
	}
	tests := []struct {
		name        string
		node        *corev1.Node
		want        uint8
		wantWarning bool
	}{
		{"no node", nil, 100, false},
		{"no label", &corev1.Node{}, 100, false},
		{"label", node("150"), 150, false},
		{"254 is the highest a label gives", node("254"), 254, false},
		{"255 is reserved for the address owner", node("255"), 100, true},
		{"zero", node("0"), 100, true},
		{"not a number", node("high"), 100, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warning := nodePriority(spec, tt.node)
			if got != tt.want || (warning != "") != tt.wantWarning {
				t.Errorf("nodePriority = %d, %q; want %d, warning %v", got, warning, tt.want, tt.wantWarning)
			}
		})
	}
}
