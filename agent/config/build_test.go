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
		"www":   {netip.MustParseAddr("198.18.1.10")}, // another name of web01
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
			// Stored before the CEL rule refused them: the proxy cannot listen
			// twice on one address, so every agent refused the pair.
			name: "one virtual IP written two ways is listened on once",
			edit: func(f *File) {
				f.Pair.Spec.VRRPVersion, f.Pair.Spec.Authentication = 3, nil
				f.Pair.Spec.VirtualIPs = []string{"fd00:198:18::100", "FD00:198:18::101", "fd00:198:18:0::100"}
			},
			check: func(t *testing.T, s *Settings) {
				if got := fmt.Sprint(s.VRRP.VIPs); got != "[fd00:198:18::100 fd00:198:18::101]" {
					t.Errorf("virtual IPs = %s, want [fd00:198:18::100 fd00:198:18::101]", got)
				}
				if got := fmt.Sprint(s.Proxy.Listeners[0].Addrs); got != "[[fd00:198:18::100]:88 [fd00:198:18::101]:88]" {
					t.Errorf("listener addresses = %s", got)
				}
				checkWarning(t, s, `spec.virtualIPs[2] "fd00:198:18:0::100" is spec.virtualIPs[0] "fd00:198:18::100" written another way`)
			},
		},
		{
			// One address written two ways, or two names of one host: the
			// proxy takes each address once, so they merge, and their
			// weights add up as two server lines of an nginx upstream.
			name: "entries that reach one backend make one, with the sum of their weights",
			edit: func(f *File) {
				f.Pair.Spec.Ports[0].Backend.Static = []lbv1.StaticBackend{
					{Address: "[fd00:198:18:1::10]:80", Weight: 2},
					{Address: "web01:80", Weight: 1},
					{Address: "[FD00:198:18:1:0::10]:80", Weight: 3},
					{Address: "www:80", Weight: 1},
				}
			},
			check: func(t *testing.T, s *Settings) {
				var got []string
				for _, b := range s.Proxy.Listeners[0].Backends {
					got = append(got, fmt.Sprintf("%s weight %d", b.Addr, b.Weight))
				}
				want := []string{"[fd00:198:18:1::10]:80 weight 5", "198.18.1.10:80 weight 2"}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("backends (-want +got):\n%s", diff)
				}
				checkWarning(t, s, `spec.ports[0].backend.static[0].address "[fd00:198:18:1::10]:80" and static[2].address "[FD00:198:18:1:0::10]:80" both reach [fd00:198:18:1::10]:80`)
				checkWarning(t, s, `spec.ports[0].backend.static[1].address "web01:80" and static[3].address "www:80" both reach 198.18.1.10:80`)
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
			// kubectl create secret --from-file keeps the file's last newline,
			// which keepalived's auth_pass cannot have: a password of 8
			// characters and a newline is 8 bytes.
			name: "the password file's line ending is not part of it",
			edit: func(f *File) { f.Secrets[0].StringData["password"] = "s3cret12\r\n" },
			check: func(t *testing.T, s *Settings) {
				if s.VRRP.AuthPassword != "s3cret12" {
					t.Errorf("password %q, want %q", s.VRRP.AuthPassword, "s3cret12")
				}
			},
		},
		{
			name: "stringData wins over data, as the apiserver merges them",
			edit: func(f *File) {
				f.Secrets[0].Data = map[string][]byte{"password": []byte("old")}
				f.Secrets[0].StringData["password"] = "new"
			},
			check: func(t *testing.T, s *Settings) {
				if s.VRRP.AuthPassword != "new" {
					t.Errorf("password %q, want %q", s.VRRP.AuthPassword, "new")
				}
			},
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

// checkWarning checks that s has a warning containing want.
func checkWarning(t *testing.T, s *Settings, want string) {
	t.Helper()
	for _, w := range s.Warnings {
		if strings.Contains(w, want) {
			return
		}
	}
	t.Errorf("no warning contains %q; warnings: %q", want, s.Warnings)
}

// TestBuildHeldBackFamily: while a spec that moved to the other address family
// is in VIP conflict, the manager holds status.virtualIPs at the family the
// agents run. Its unicast peers and vrrpVersion, written for the new family,
// must not keep agents that restart from running the held-back one.
func TestBuildHeldBackFamily(t *testing.T) {
	const waits = "the spec's change to %s waits for its virtual IP conflict to clear"
	agents := []netip.Addr{netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("fd00:198:18::12")}
	r := fakeResolver{"web01": {netip.MustParseAddr("198.18.1.10")}, "web02": {netip.MustParseAddr("198.18.1.11")}}
	toIPv6 := func(t *testing.T) *lbv1.LoadBalancerPair {
		f, err := ParseFile([]byte(seedPair))
		if err != nil {
			t.Fatal(err)
		}
		p := f.Pair
		p.Spec.VRRPVersion, p.Spec.Authentication = 3, nil
		p.Spec.VirtualIPs = []string{"fd00:198:18::100"}
		p.Spec.Unicast = &lbv1.UnicastSpec{Enabled: true, Peers: []string{"fd00:198:18::50"}}
		p.Status.VirtualIPs, p.Status.VirtualRouterID = []string{"198.18.0.100"}, 51
		return p
	}
	t.Run("IPv4 held back: unicast peers listed for IPv6 are left out", func(t *testing.T) {
		s, err := Build(context.Background(), Inputs{Pair: toIPv6(t), Peers: agents, Resolver: r})
		if err != nil {
			t.Fatal(err)
		}
		checkPeers(t, s, "198.18.0.12")
		checkWarning(t, s, "spec.unicast.peers[0] fd00:198:18::50: not of the family of status.virtualIPs 198.18.0.100, left out; "+fmt.Sprintf(waits, "fd00:198:18::100"))
	})
	t.Run("IPv4 held back: no peer left", func(t *testing.T) {
		_, err := Build(context.Background(), Inputs{Pair: toIPv6(t), Resolver: r})
		want := "spec.unicast: no peer of the family of status.virtualIPs 198.18.0.100: spec.unicast.peers[0] fd00:198:18::50 are not of it and no other agent of it is known; " + fmt.Sprintf(waits, "fd00:198:18::100")
		if err == nil || err.Error() != want {
			t.Fatalf("error = %v, want %q", err, want)
		}
	})
	t.Run("IPv6 held back: vrrpVersion 2 of the new IPv4 spec", func(t *testing.T) {
		// IPv4, vrrpVersion 2, with authentication.
		f, err := ParseFile([]byte(seedPair + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: vrrp}\nstringData: {password: s3cret}\n"))
		if err != nil {
			t.Fatal(err)
		}
		p := f.Pair
		p.Spec.AdvertisementInterval = &metav1.Duration{Duration: time.Minute}
		p.Status.VirtualIPs, p.Status.VirtualRouterID = []string{"fd00:198:18::100"}, 51
		s, err := Build(context.Background(), Inputs{Pair: p, Peers: agents, Secrets: f.Secrets, Resolver: r})
		if err != nil {
			t.Fatal(err)
		}
		if v := s.VRRP; v.Version != 3 || v.AuthPassword != "" || v.AdvertInterval != 40950*time.Millisecond || fmt.Sprint(v.VIPs) != "[fd00:198:18::100]" {
			t.Errorf("VRRP version %d, password %q, interval %v, virtual IPs %v; want 3, none, 40.95s, [fd00:198:18::100]", v.Version, v.AuthPassword, v.AdvertInterval, v.VIPs)
		}
		checkWarning(t, s, "spec.vrrpVersion 2: the virtual IPs the agents run (status.virtualIPs, fd00:198:18::100) are IPv6, which needs VRRPv3: using vrrpVersion 3, which has no authentication, with an advertisement interval of 40.95s; "+fmt.Sprintf(waits, "198.18.0.100"))
	})
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
