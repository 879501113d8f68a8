package agent

import (
	"net/netip"
	"sort"

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
// pods to finish on, instead of no backend at all.
func serviceBackends(svc *corev1.Service, slices []discoveryv1.EndpointSlice, port intstr.IntOrString, preferIPv4 bool) []proxy.Backend {
	portName, ok := servicePortName(svc, port)
	if !ok {
		return nil
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
			if name == portName && p.Port != nil {
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
	return out
}

// servicePortName maps a Service port reference to the port's name, which
// EndpointSlices carry. An unnamed port (allowed when the Service has only
// one) is "".
func servicePortName(svc *corev1.Service, port intstr.IntOrString) (string, bool) {
	if port.Type == intstr.String {
		return port.StrVal, true
	}
	if svc == nil {
		return "", false
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == port.IntVal {
			return p.Name, true
		}
	}
	return "", false
}
