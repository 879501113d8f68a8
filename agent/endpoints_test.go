package agent

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/lbpair/lbpair/agent/proxy"
)

func slice(family discoveryv1.AddressType, ports map[string]int32, eps ...discoveryv1.Endpoint) discoveryv1.EndpointSlice {
	s := discoveryv1.EndpointSlice{AddressType: family, Endpoints: eps}
	for name, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(p)})
	}
	return s
}

func endpoint(ready *bool, addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
}

// terminating is an endpoint on its way out, still serving or not.
func terminating(serving bool, addrs ...string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(serving), Terminating: ptr.To(true)}}
}

func backends(addrs ...string) []proxy.Backend {
	var out []proxy.Backend
	for _, a := range addrs {
		out = append(out, proxy.Backend{Addr: netip.MustParseAddrPort(a), Weight: 1})
	}
	return out
}

func TestServiceBackends(t *testing.T) {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
		{Name: "http", Port: 80}, {Name: "metrics", Port: 9090},
	}}}
	web := map[string]int32{"http": 8080, "metrics": 9100}
	// One number, two protocols, the UDP port first.
	syslog := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "syslog"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
		{Name: "syslog-udp", Port: 514, Protocol: corev1.ProtocolUDP},
		{Name: "syslog-tcp", Port: 514, Protocol: corev1.ProtocolTCP},
	}}}
	syslogSlice := discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("syslog-udp"), Port: ptr.To(int32(5514)), Protocol: ptr.To(corev1.ProtocolUDP)},
			{Name: ptr.To("syslog-tcp"), Port: ptr.To(int32(6514)), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
		Endpoints: []discoveryv1.Endpoint{endpoint(nil, "198.18.1.10")}}
	tests := []struct {
		name       string
		svc        *corev1.Service
		slices     []discoveryv1.EndpointSlice
		port       intstr.IntOrString
		preferIPv4 bool
		want       []proxy.Backend
		wantErr    string
	}{
		{
			name: "by name, ready and unknown-ready endpoints, not unready ones",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web,
				endpoint(ptr.To(true), "198.18.1.11"), endpoint(nil, "198.18.1.10"), endpoint(ptr.To(false), "198.18.1.12"))},
			port: intstr.FromString("http"), preferIPv4: true,
			want: backends("198.18.1.10:8080", "198.18.1.11:8080"),
		},
		{
			name:   "by Service port number maps to the named target port",
			svc:    svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10"))},
			port:   intstr.FromInt32(9090), preferIPv4: true,
			want: backends("198.18.1.10:9100"),
		},
		{
			name:   "a number the Service does not have (its target port) gives nothing, and says which it has",
			svc:    svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10"))},
			port:   intstr.FromInt32(8080), preferIPv4: true,
			wantErr: `the Service "web" has no such port; use one of its TCP ports, by number or name (the Service port, not the target port): 80 (http), 9090 (metrics)`,
		},
		{
			name:   "a name the Service does not have gives nothing, and says which it has",
			svc:    svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10"))},
			port:   intstr.FromString("https"), preferIPv4: true,
			wantErr: `the Service "web" has no such port; use one of its TCP ports, by number or name (the Service port, not the target port): 80 (http), 9090 (metrics)`,
		},
		{
			name:   "a number without the Service (not in the cache yet) gives nothing",
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10"))},
			port:   intstr.FromInt32(80), preferIPv4: true,
			wantErr: errNoService.Error(),
		},
		{
			name:   "a number shared by a UDP and a TCP port maps to the TCP one",
			svc:    syslog,
			slices: []discoveryv1.EndpointSlice{syslogSlice},
			port:   intstr.FromInt32(514), preferIPv4: true,
			want: backends("198.18.1.10:6514"),
		},
		{
			name:   "a UDP port by name gives nothing, and says which TCP ports there are",
			svc:    syslog,
			slices: []discoveryv1.EndpointSlice{syslogSlice},
			port:   intstr.FromString("syslog-udp"), preferIPv4: true,
			wantErr: `the Service "syslog" port is UDP: the agent forwards TCP only; use one of its TCP ports: 514 (syslog-tcp)`,
		},
		{
			name:   "a UDP-only number gives nothing",
			svc:    &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dns"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}}}},
			slices: []discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptr.To("dns"), Port: ptr.To(int32(5353)), Protocol: ptr.To(corev1.ProtocolUDP)}}, Endpoints: []discoveryv1.Endpoint{endpoint(nil, "198.18.1.10")}}},
			port:   intstr.FromInt32(53), preferIPv4: true,
			wantErr: `the Service "dns" port is UDP and it has no TCP port: the agent forwards TCP only`,
		},
		{
			name:   "by name without the Service, a UDP slice port of that name gives nothing",
			slices: []discoveryv1.EndpointSlice{syslogSlice},
			port:   intstr.FromString("syslog-udp"), preferIPv4: true,
		},
		{
			name: "dual stack prefers the virtual IPs' family",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{
				slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10")),
				slice(discoveryv1.AddressTypeIPv6, web, endpoint(nil, "fd00:198:18::10")),
			},
			port: intstr.FromString("http"), preferIPv4: false,
			want: backends("[fd00:198:18::10]:8080"),
		},
		{
			name:   "the other family when the Service has only that",
			svc:    svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10"))},
			port:   intstr.FromString("http"), preferIPv4: false,
			want: backends("198.18.1.10:8080"),
		},
		{
			name: "duplicates across slices count once; FQDN slices are ignored",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{
				slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10")),
				slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10")),
				slice(discoveryv1.AddressTypeFQDN, web, endpoint(nil, "web.example")),
			},
			port: intstr.FromString("http"), preferIPv4: true,
			want: backends("198.18.1.10:8080"),
		},
		{
			name: "terminating endpoints are left out while any is ready",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web,
				endpoint(nil, "198.18.1.10"), terminating(true, "198.18.1.11"), terminating(false, "198.18.1.12"))},
			port: intstr.FromString("http"), preferIPv4: true,
			want: backends("198.18.1.10:8080"),
		},
		{
			name: "with none ready, the terminating ones that still serve",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{slice(discoveryv1.AddressTypeIPv4, web,
				endpoint(ptr.To(false), "198.18.1.10"), terminating(true, "198.18.1.11"), terminating(false, "198.18.1.12"))},
			port: intstr.FromString("http"), preferIPv4: true,
			want: backends("198.18.1.11:8080"),
		},
		{
			name: "an address ready in one slice and terminating in another counts as ready",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{
				slice(discoveryv1.AddressTypeIPv4, web, terminating(true, "198.18.1.10"), terminating(true, "198.18.1.11")),
				slice(discoveryv1.AddressTypeIPv4, web, endpoint(nil, "198.18.1.10")),
			},
			port: intstr.FromString("http"), preferIPv4: true,
			want: backends("198.18.1.10:8080"),
		},
		{
			name: "a ready endpoint of the other family before a terminating one of the virtual IPs' family",
			svc:  svc,
			slices: []discoveryv1.EndpointSlice{
				slice(discoveryv1.AddressTypeIPv4, web, terminating(true, "198.18.1.11")),
				slice(discoveryv1.AddressTypeIPv6, web, endpoint(nil, "fd00:198:18::10")),
			},
			port: intstr.FromString("http"), preferIPv4: true,
			want: backends("[fd00:198:18::10]:8080"),
		},
		{
			name:   "an unnamed single port",
			svc:    &corev1.Service{Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}},
			slices: []discoveryv1.EndpointSlice{{AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Port: ptr.To(int32(8080))}}, Endpoints: []discoveryv1.Endpoint{endpoint(nil, "198.18.1.10")}}},
			port:   intstr.FromInt32(80), preferIPv4: true,
			want: backends("198.18.1.10:8080"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := serviceBackends(tt.svc, tt.slices, tt.port, tt.preferIPv4)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.wantErr {
				t.Errorf("error %q, want %q", gotErr, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("backends (-want +got):\n%s", diff)
			}
		})
	}
}
