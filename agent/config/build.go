package config

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpair/lbpair/agent/proxy"
	"github.com/lbpair/lbpair/agent/track"
	"github.com/lbpair/lbpair/agent/vrrp"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// ProxyCheck is the tracker check the proxy reports its health under.
const ProxyCheck = "proxy"

// maxInterval3 is the longest VRRPv3 advertisement interval: 4095 centiseconds.
const maxInterval3 = 40950 * time.Millisecond

// Resolver looks up the addresses of a backend host name; *net.Resolver
// satisfies it.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Inputs is what the agent knows when it builds its settings.
type Inputs struct {
	// Pair is the LoadBalancerPair; Build defaults a copy of it.
	Pair *lbv1.LoadBalancerPair
	// Node is the node this agent runs on; nil when unknown (then the
	// pair's default priority applies).
	Node *corev1.Node
	// Peers are the addresses of the other agents, used for unicast when
	// the spec enables it, with the peers it lists.
	Peers []netip.Addr
	// Secrets holds the Secrets the pair may reference, by name.
	Secrets []corev1.Secret
	// Resolver resolves static backend host names; net.DefaultResolver
	// when nil.
	Resolver Resolver
}

// ServicePort is a listener whose backends are the ready endpoints of a
// Service; the agent feeds them with proxy.Server.SetBackends.
type ServicePort struct {
	Listener string
	Service  string
	Port     intstr.IntOrString
}

// Settings are the agent's runtime settings for one pair.
type Settings struct {
	VRRP     vrrp.Config
	Checks   []track.Check
	Proxy    proxy.Config
	Services []ServicePort
	// Warnings are problems that do not stop the agent, such as an invalid
	// priority label that falls back to the default.
	Warnings []string
}

// Build translates a pair into settings. Errors name the field at fault.
func Build(ctx context.Context, in Inputs) (*Settings, error) {
	pair := in.Pair.DeepCopy()
	if err := Default(pair); err != nil {
		return nil, err
	}
	spec := &pair.Spec
	var s Settings

	// The manager clears the virtual IPs to run with in status, as the VRID,
	// once no other pair uses them, so a spec that takes another pair's
	// address never reaches running agents. The spec's are used as they are
	// where no manager runs (standalone), and until a manager first clears them.
	field, list := "spec.virtualIPs", spec.VirtualIPs
	if len(pair.Status.VirtualIPs) > 0 {
		field, list = "status.virtualIPs", pair.Status.VirtualIPs
	}
	vips := make([]netip.Addr, 0, len(list))
	listed := map[netip.Addr]int{} // address -> index in list
	for i, v := range list {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not an IP address", field, i, v)
		}
		if len(vips) > 0 && a.Is4() != vips[0].Is4() {
			return nil, fmt.Errorf("%s[%d]: %s mixes address families; use one pair per family", field, i, a)
		}
		// One address written two ways (fd00::100, fd00:0::100) passed the
		// apiserver before its CEL rule refused it, and ratcheting keeps such
		// pairs updatable: listen on it once rather than fail to listen twice.
		a = a.Unmap()
		if k, dup := listed[a]; dup {
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s[%d] %q is %s[%d] %q written another way: using it once; list each address once in spec.virtualIPs", field, i, v, field, k, list[k]))
			continue
		}
		listed[a] = i
		vips = append(vips, a)
	}
	if len(vips) == 0 {
		return nil, errors.New("spec.virtualIPs: at least one virtual IP is required")
	}
	// While the spec's virtual IPs are in conflict, the manager holds status
	// at those the agents run. When the spec moved to the other family, its
	// unicast peers and vrrpVersion are written for addresses the agents do
	// not run yet: the agents build for the family they run, or they would
	// run nothing until the conflict clears.
	heldBack := ""
	if field == "status.virtualIPs" && len(spec.VirtualIPs) > 0 {
		if a, err := netip.ParseAddr(spec.VirtualIPs[0]); err == nil && a.Unmap().Is4() != vips[0].Is4() {
			heldBack = fmt.Sprintf("; the spec's change to %s waits for its virtual IP conflict to clear", spec.VirtualIPs[0])
		}
	}

	// The manager settles VRIDs between pairs and records the one to run
	// with in status; the spec's is used as is only where no manager runs
	// (standalone), so a conflicting spec change never moves running agents.
	vrid := pair.Status.VirtualRouterID
	if vrid == 0 && spec.VirtualRouterID != nil {
		vrid = *spec.VirtualRouterID
		if vrid < 1 || vrid > 255 { // in a standalone file; the apiserver enforces it
			return nil, fmt.Errorf("spec.virtualRouterID %d: use 1 to 255", vrid)
		}
	}
	if vrid < 1 || vrid > 255 {
		return nil, errors.New("spec.virtualRouterID: not set and none allocated yet (status.virtualRouterID); set it from 1 to 255: a standalone agent has no manager to allocate one")
	}

	// Bounds the apiserver enforces, checked again for standalone files: out of range,
	// these would wrap around or invert (a negative proxyWeight would raise the priority
	// of a node whose proxy fails).
	if d := spec.Priority.Default; d < 1 || d > 254 {
		return nil, fmt.Errorf("spec.priority.default %d: use 1 to 254", d)
	}
	if w := spec.Tracking.ProxyWeight; w < 0 || w > 253 {
		return nil, fmt.Errorf("spec.tracking.proxyWeight %d: use 0 (give up the virtual IPs) to 253", w)
	}
	if r := spec.Announcements.Repeat; r < 1 || r > 100 {
		return nil, fmt.Errorf("spec.announcements.repeat %d: use 1 to 100", r)
	}
	priority, warning := nodePriority(spec.Priority, in.Node)
	if warning != "" {
		s.Warnings = append(s.Warnings, warning)
	}

	version, interval := int(spec.VRRPVersion), duration(spec.AdvertisementInterval)
	if heldBack != "" && vips[0].Is6() && version == 2 {
		// VRRPv2 carries IPv4 only: a spec moved to IPv4 with vrrpVersion 2
		// keeps the agents that run IPv6 on VRRPv3, which has no
		// authentication and intervals up to 40.95s.
		version, interval = 3, min(interval, maxInterval3)
		s.Warnings = append(s.Warnings, fmt.Sprintf("spec.vrrpVersion 2: the virtual IPs the agents run (status.virtualIPs, %s) are IPv6, which needs VRRPv3: using vrrpVersion 3, which has no authentication, with an advertisement interval of %v%s", vips[0], interval, heldBack))
	}
	var pw string
	if version == int(spec.VRRPVersion) {
		var err error
		if pw, err = password(spec, in.Secrets); err != nil {
			return nil, err
		}
	}

	// The agents of the pair send to each other; the listed peers are
	// routers besides them (a keepalived host during a migration), so they
	// add to the agents found rather than replace them: listing only the
	// keepalived host must not leave the agents deaf to each other. Sorted,
	// so that the same peers make the same configuration.
	var peers []netip.Addr
	if spec.Unicast != nil && spec.Unicast.Enabled {
		for _, p := range in.Peers {
			if p = p.Unmap(); p.Is4() == vips[0].Is4() {
				peers = append(peers, p)
			}
		}
		var dropped []string
		for i, p := range spec.Unicast.Peers {
			a, err := netip.ParseAddr(p)
			if err != nil {
				return nil, fmt.Errorf("spec.unicast.peers[%d]: %q is not an IP address", i, p)
			}
			// Checked here, where the index is the spec's: the router's
			// own check sees the merged list.
			if a = a.Unmap(); a.Is4() != vips[0].Is4() {
				if heldBack != "" { // listed for the spec's new family
					dropped = append(dropped, fmt.Sprintf("spec.unicast.peers[%d] %s", i, a))
					continue
				}
				return nil, fmt.Errorf("spec.unicast.peers[%d]: %s is not of the virtual IPs' family", i, a)
			}
			peers = append(peers, a)
		}
		slices.SortFunc(peers, netip.Addr.Compare)
		peers = slices.Compact(peers)
		if len(dropped) > 0 {
			if len(peers) == 0 {
				// Without a peer, the adverts would go to the multicast
				// group, which a unicast pair's network may drop.
				return nil, fmt.Errorf("spec.unicast: no peer of the family of status.virtualIPs %s: %s are not of it and no other agent of it is known%s", vips[0], strings.Join(dropped, ", "), heldBack)
			}
			s.Warnings = append(s.Warnings, fmt.Sprintf("%s: not of the family of status.virtualIPs %s, left out%s", strings.Join(dropped, ", "), vips[0], heldBack))
		}
	}

	s.VRRP = vrrp.Config{
		Version:        version,
		VRID:           uint8(vrid),
		Priority:       priority,
		AdvertInterval: interval,
		Preempt:        *spec.Preempt,
		PreemptDelay:   duration(spec.PreemptDelay),
		Interface:      spec.Interface,
		VIPs:           vips,
		Peers:          peers,
		AuthPassword:   pw,
		Announce: vrrp.Announce{
			Repeat:  int(spec.Announcements.Repeat),
			Delay:   duration(spec.Announcements.Delay),
			Refresh: duration(spec.Announcements.RefreshInterval),
		},
	}
	if err := s.VRRP.Validate(); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	s.Checks = []track.Check{{Name: ProxyCheck, Weight: int(spec.Tracking.ProxyWeight)}}

	resolver := in.Resolver
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	s.Proxy.DrainTimeout = duration(spec.DrainTimeout)
	s.Proxy.AccessLog = spec.AccessLog
	warn := func(w string) { s.Warnings = append(s.Warnings, w) }
	for i := range spec.Ports {
		l, svc, err := listener(ctx, resolver, vips, &spec.Ports[i], fmt.Sprintf("spec.ports[%d]", i), warn)
		if err != nil {
			return nil, err
		}
		s.Proxy.Listeners = append(s.Proxy.Listeners, l)
		if svc != nil {
			s.Services = append(s.Services, *svc)
		}
	}
	if err := s.Proxy.Validate(); err != nil {
		return nil, fmt.Errorf("spec.ports: %w", err)
	}
	return &s, nil
}

func listener(ctx context.Context, r Resolver, vips []netip.Addr, p *lbv1.PortSpec, path string, warn func(string)) (proxy.ListenerConfig, *ServicePort, error) {
	if p.Port < 1 || p.Port > 65535 {
		return proxy.ListenerConfig{}, nil, fmt.Errorf("%s.port %d: use 1 to 65535", path, p.Port)
	}
	l := proxy.ListenerConfig{
		Name:            p.Name,
		ConnectTimeout:  duration(p.Timeouts.Connect),
		ConnectAttempts: int(p.Timeouts.ConnectAttempts),
		IdleTimeout:     duration(p.Timeouts.Idle),
		MaxConnections:  int(p.MaxConnections),
		Passive: proxy.PassiveCheck{
			MaxFails:    int(*p.HealthCheck.Passive.MaxFails),
			FailTimeout: duration(p.HealthCheck.Passive.FailTimeout),
		},
	}
	for _, v := range vips {
		l.Addrs = append(l.Addrs, netip.AddrPortFrom(v, uint16(p.Port)))
	}
	switch p.Balance {
	case lbv1.BalanceRoundRobin:
		l.Balance = proxy.RoundRobin
	case lbv1.BalanceLeastConnections:
		l.Balance = proxy.LeastConnections
	case lbv1.BalanceRandomTwoChoices:
		l.Balance = proxy.RandomTwoChoices
	case lbv1.BalanceSourceHash:
		l.Balance = proxy.SourceHash
	default:
		return l, nil, fmt.Errorf("%s.balance: unknown algorithm %q; use RoundRobin, LeastConnections, RandomTwoChoices or SourceHash", path, p.Balance)
	}
	switch p.ProxyProtocol {
	case lbv1.ProxyProtocolNone:
		l.ProxyProtocol = proxy.ProxyProtocolNone
	case lbv1.ProxyProtocolV1:
		l.ProxyProtocol = proxy.ProxyProtocolV1
	case lbv1.ProxyProtocolV2:
		l.ProxyProtocol = proxy.ProxyProtocolV2
	default:
		return l, nil, fmt.Errorf("%s.proxyProtocol: unknown version %q; use None, V1 or V2", path, p.ProxyProtocol)
	}
	if a := p.HealthCheck.Active; a != nil {
		l.Active = &proxy.ActiveCheck{Interval: duration(a.Interval), Timeout: duration(a.Timeout), Rise: int(a.Rise), Fall: int(a.Fall)}
	}
	switch {
	case p.Backend.Service != nil && len(p.Backend.Static) > 0:
		return l, nil, fmt.Errorf("%s.backend: give either service or static, not both", path)
	case p.Backend.Service != nil:
		return l, &ServicePort{Listener: p.Name, Service: p.Backend.Service.Name, Port: p.Backend.Service.Port}, nil
	case len(p.Backend.Static) == 0:
		return l, nil, fmt.Errorf("%s.backend: give a service or at least one static address", path)
	}
	// Entries may reach one address: one written two ways ([fd00::10]:80,
	// [FD00:0::10]:80) or two names of one host (web01:80, www:80), which a
	// DNS change can bring about at any sync. The proxy takes an address
	// once, so they make one backend, at the first entry's place, with the
	// sum of their weights: as in an nginx upstream, where each server line
	// is a peer, a host listed twice gets the share of both lines.
	type origin struct{ backend, entry int }
	seen := map[netip.AddrPort]origin{}
	for j, b := range p.Backend.Static {
		addrs, err := resolveBackend(ctx, r, b.Address)
		if err != nil {
			return l, nil, fmt.Errorf("%s.backend.static[%d].address: %w", path, j, err)
		}
		for _, a := range addrs {
			o, dup := seen[a]
			switch {
			case !dup:
				seen[a] = origin{len(l.Backends), j}
				l.Backends = append(l.Backends, proxy.Backend{Addr: a, Weight: int(b.Weight)})
			case o.entry != j: // not a name that resolves to one address twice
				l.Backends[o.backend].Weight += int(b.Weight)
				warn(fmt.Sprintf("%s.backend.static[%d].address %q and static[%d].address %q both reach %s: one backend of weight %d, the sum of theirs",
					path, o.entry, p.Backend.Static[o.entry].Address, j, b.Address, a, l.Backends[o.backend].Weight))
			}
		}
	}
	return l, nil, nil
}

// resolveBackend turns host:port into addresses. A name resolves to all its
// addresses, each a backend of the same weight, as nginx does with a
// `server` line naming a host.
func resolveBackend(ctx context.Context, r Resolver, hostport string) ([]netip.AddrPort, error) {
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("%q is not host:port: %w", hostport, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("%q: port must be from 1 to 65535", hostport)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.Unmap(), uint16(port))}, nil
	}
	ips, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("resolving %q: %w", host, err)
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("resolving %q: no addresses", host)
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, a := range ips {
		out = append(out, netip.AddrPortFrom(a.Unmap(), uint16(port)))
	}
	return out, nil
}

// nodePriority reads the agent's priority from the node's label, falling back
// to the pair's default with a warning when the label is not a valid priority.
func nodePriority(p *lbv1.PrioritySpec, node *corev1.Node) (uint8, string) {
	def := uint8(p.Default)
	if node == nil {
		return def, ""
	}
	v, ok := node.Labels[p.NodeLabel]
	if !ok {
		return def, ""
	}
	n, ok := lbv1.LabelPriority(v)
	if !ok {
		return def, fmt.Sprintf("node %s label %s=%q is not a priority from 1 to 254; using spec.priority.default %d", node.Name, p.NodeLabel, v, def)
	}
	return n, ""
}

// password reads the VRRPv2 password from the referenced Secret.
func password(spec *lbv1.LoadBalancerPairSpec, secrets []corev1.Secret) (string, error) {
	if spec.Authentication == nil {
		return "", nil
	}
	ref := spec.Authentication.PasswordSecretRef
	for _, s := range secrets {
		if s.Name != ref.Name {
			continue
		}
		// stringData, a write-only convenience of the API, is merged over
		// data when a Secret is written: a file that has both means it.
		v, ok := s.Data[ref.Key]
		if sv, found := s.StringData[ref.Key]; found {
			v, ok = []byte(sv), true
		}
		if !ok {
			return "", fmt.Errorf("spec.authentication.passwordSecretRef: Secret %q has no key %q", ref.Name, ref.Key)
		}
		// A Secret made from a file (kubectl create secret --from-file) keeps
		// the file's line ending, which keepalived's auth_pass never has:
		// with it, each side would drop the other's adverts.
		if t, ok := bytes.CutSuffix(v, []byte("\n")); ok {
			v, _ = bytes.CutSuffix(t, []byte("\r"))
		}
		if len(v) == 0 || len(v) > 8 {
			return "", fmt.Errorf("spec.authentication.passwordSecretRef: the password in Secret %q key %q must be 1 to 8 bytes (VRRPv2 carries 8), it is %d", ref.Name, ref.Key, len(v))
		}
		return string(v), nil
	}
	return "", fmt.Errorf("spec.authentication.passwordSecretRef: Secret %q not found", ref.Name)
}

// duration reads an optional duration; absent means zero.
func duration(d *metav1.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.Duration
}
