package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/lbpair/lbpair/agent/proxy"
)

// serviceBackends picks the ready endpoints of a Service port from its
// EndpointSlices. port names the Service port (by name, or by number through
// the Service). Endpoints of the virtual IPs' family are preferred; the
// other family is used only when the Service has none of it, so that a
// dual-stack Service does not count each pod twice. When no endpoint is
// ready, the terminating ones that still serve are used, as kube-proxy does:
// a rollout or a drain that takes the last ready pod away then still has
// pods to finish on, instead of no backend at all. Only TCP ports count:
// the proxy forwards TCP, and a Service may have a UDP port of the same
// number. The error says why port names no TCP port of the Service.
func serviceBackends(svc *corev1.Service, slices []discoveryv1.EndpointSlice, port intstr.IntOrString, preferIPv4 bool) ([]proxy.Backend, error) {
	portName, err := servicePortName(svc, port)
	if err != nil {
		return nil, err
	}
	// Each address, and whether it is ready (else serving while it
	// terminates) in any slice: slices change one at a time, so one address
	// may be in two of them for a moment.
	ready := map[netip.AddrPort]bool{}
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		var target int32
		for _, p := range s.Ports {
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if name == portName && p.Port != nil && (p.Protocol == nil || isTCP(*p.Protocol)) {
				target = *p.Port
				break
			}
		}
		if target < 1 || target > 65535 {
			continue
		}
		for _, e := range s.Endpoints {
			// A nil ready condition means ready; a nil serving one defers to
			// ready; a nil terminating one means not terminating.
			c := e.Conditions
			isReady := c.Ready == nil || *c.Ready
			if !isReady && !(c.Terminating != nil && *c.Terminating && c.Serving != nil && *c.Serving) {
				continue
			}
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					ap := netip.AddrPortFrom(ip.Unmap(), uint16(target))
					ready[ap] = ready[ap] || isReady
				}
			}
		}
	}
	// By family, ready or not.
	type kind struct{ ipv4, ready bool }
	found := map[kind][]proxy.Backend{}
	for ap, r := range ready {
		k := kind{ap.Addr().Is4(), r}
		found[k] = append(found[k], proxy.Backend{Addr: ap, Weight: 1})
	}
	var out []proxy.Backend
	for _, k := range []kind{{preferIPv4, true}, {!preferIPv4, true}, {preferIPv4, false}, {!preferIPv4, false}} {
		if out = found[k]; len(out) > 0 {
			break
		}
	}
	// A stable order keeps the proxy's balancing state across updates.
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Compare(out[j].Addr) < 0 })
	return out, nil
}

// errNoService is why a Service port number maps to nothing without the
// Service, which maps it.
var errNoService = errors.New("the Service is not known")

// isTCP tells whether a port's protocol is TCP, the only one the proxy
// forwards; unset is TCP.
func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }

// servicePortName maps a Service port reference to the name of the
// Service's TCP port, which EndpointSlices carry. An unnamed port (allowed
// when the Service has only one) is "". Without the Service, a name is
// taken as it is. The error says what ports the Service has instead, as a
// common mistake is to give the target port.
func servicePortName(svc *corev1.Service, port intstr.IntOrString) (string, error) {
	byName := port.Type == intstr.String
	if svc == nil {
		if byName {
			return port.StrVal, nil
		}
		return "", errNoService
	}
	var other *corev1.ServicePort // a port of that name or number, but not TCP
	for i, p := range svc.Spec.Ports {
		if (byName && p.Name != port.StrVal) || (!byName && p.Port != port.IntVal) {
			continue
		}
		if isTCP(p.Protocol) {
			return p.Name, nil
		}
		if other == nil {
			other = &svc.Spec.Ports[i]
		}
	}
	tcp := tcpPorts(svc)
	switch {
	case other != nil && tcp == "":
		return "", fmt.Errorf("the Service %q port is %s and it has no TCP port: the agent forwards TCP only", svc.Name, other.Protocol)
	case other != nil:
		return "", fmt.Errorf("the Service %q port is %s: the agent forwards TCP only; use one of its TCP ports: %s", svc.Name, other.Protocol, tcp)
	case tcp == "":
		return "", fmt.Errorf("the Service %q has no such port, and no TCP port: the agent forwards TCP only", svc.Name)
	}
	return "", fmt.Errorf("the Service %q has no such port; use one of its TCP ports, by number or name (the Service port, not the target port): %s", svc.Name, tcp)
}

// tcpPorts lists the Service's TCP ports as "80 (http), 443 (https)", or
// the first few of them: the list goes in the pair's status.
func tcpPorts(svc *corev1.Service) string {
	const most = 8
	var out []string
	n := 0
	for _, p := range svc.Spec.Ports {
		if !isTCP(p.Protocol) {
			continue
		}
		if n++; n > most {
			continue
		}
		if p.Name == "" {
			out = append(out, fmt.Sprint(p.Port))
		} else {
			out = append(out, fmt.Sprintf("%d (%s)", p.Port, p.Name))
		}
	}
	if n > most {
		out = append(out, fmt.Sprintf("and %d more", n-most))
	}
	return strings.Join(out, ", ")
}
