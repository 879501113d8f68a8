package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// validPair is a valid pair; each case below breaks one rule of the API.
const validPair = `apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata:
  name: NAME
spec:
  virtualIPs: [198.18.0.100]
  virtualRouterID: 51
  advertisementInterval: 1s
  ports:
  - name: http
    port: 88
    backend:
      static:
      - address: 198.18.1.10:80
      - address: web02:80
`

func TestBadInputIsRejectedNamingTheField(t *testing.T) {
	ns := newNamespace(t, "bad-input")
	// Sanity: the base is valid, so each failure below comes from its edit.
	mustKubectl(t, strings.Replace(validPair, "NAME", "valid", 1), "apply", "-n", ns, "-f", "-")

	tests := []struct {
		name     string
		old, new string
		want     []string // substrings of kubectl's error: the field and the fix
	}{
		{"invalid VIP", "[198.18.0.100]", "[198.18.0.300]",
			[]string{"spec.virtualIPs[0]", "must be a unicast IPv4 or IPv6 address"}},
		{"multicast VIP", "[198.18.0.100]", "[224.0.0.18]",
			[]string{"spec.virtualIPs[0]", "not loopback, link-local, multicast or unspecified"}},
		{"mixed VIP families", "[198.18.0.100]", "[198.18.0.100, 'fd00::100']",
			[]string{"spec.virtualIPs", "must all be IPv4 or all IPv6"}},
		{"no VIP", "[198.18.0.100]", "[]",
			[]string{"spec.virtualIPs", "should have at least 1 items"}},
		{"empty priority label", "virtualRouterID: 51", "virtualRouterID: 51\n  priority: {nodeLabel: ''}",
			[]string{"spec.priority.nodeLabel", "must name a label"}},
		{"VRID 0", "virtualRouterID: 51", "virtualRouterID: 0",
			[]string{"spec.virtualRouterID", "greater than or equal to 1"}},
		{"VRID 256", "virtualRouterID: 51", "virtualRouterID: 256",
			[]string{"spec.virtualRouterID", "less than or equal to 255"}},
		{"port 0", "port: 88", "port: 0",
			[]string{"spec.ports[0].port", "greater than or equal to 1"}},
		{"port 65536", "port: 88", "port: 65536",
			[]string{"spec.ports[0].port", "less than or equal to 65535"}},
		{"duplicate port numbers", "  - name: http\n", "  - name: http\n    port: 88\n    backend: {static: [{address: 198.18.1.12:80}]}\n  - name: again\n",
			[]string{"spec.ports", "each port number may appear only once"}},
		{"duplicate port names", "  - name: http\n", "  - name: http\n    port: 89\n    backend: {static: [{address: 198.18.1.12:80}]}\n  - name: http\n",
			[]string{"spec.ports[1]", "Duplicate value"}},
		{"no ports", "  ports:\n  - name: http\n    port: 88\n    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "  ports: []\n",
			[]string{"spec.ports", "should have at least 1 items"}},
		{"advert below 10ms", "advertisementInterval: 1s", "advertisementInterval: 5ms",
			[]string{"spec.advertisementInterval", "multiple of 10ms from 10ms to 40.95s"}},
		{"advert not centiseconds", "advertisementInterval: 1s", "advertisementInterval: 15ms",
			[]string{"spec.advertisementInterval", "multiple of 10ms"}},
		{"advert above 40.95s", "advertisementInterval: 1s", "advertisementInterval: 41s",
			[]string{"spec.advertisementInterval", "to 40.95s"}},
		{"VRRPv2 advert not whole seconds", "advertisementInterval: 1s", "advertisementInterval: 1500ms\n  vrrpVersion: 2",
			[]string{"spec", "whole seconds from 1s to 255s with vrrpVersion 2"}},
		// getMilliseconds() truncates: these passed a rule of whole milliseconds, and
		// every agent refused them.
		{"advert of 100.5ms", "advertisementInterval: 1s", "advertisementInterval: 100.5ms",
			[]string{"spec.advertisementInterval", "multiple of 10ms from 10ms to 40.95s with vrrpVersion 3"}},
		{"advert of 1s1ns", "advertisementInterval: 1s", "advertisementInterval: 1s1ns",
			[]string{"spec.advertisementInterval", "multiple of 10ms"}},
		{"VRRPv2 advert of 2s500us", "advertisementInterval: 1s", "advertisementInterval: 2s500us\n  vrrpVersion: 2",
			[]string{"spec.advertisementInterval", "whole seconds from 1s to 255s with vrrpVersion 2"}},
		{"VRRPv2 advert above 255s", "advertisementInterval: 1s", "advertisementInterval: 256s\n  vrrpVersion: 2",
			[]string{"spec.advertisementInterval", "whole seconds from 1s to 255s with vrrpVersion 2"}},
		{"VRRPv2 with an IPv6 VIP", "[198.18.0.100]", "['fd00::100']\n  vrrpVersion: 2",
			[]string{"spec.vrrpVersion", "spec.vrrpVersion 2 (RFC 3768) carries IPv4 only", "spec.virtualIPs"}},
		{"VRRP version 4", "advertisementInterval: 1s", "advertisementInterval: 1s\n  vrrpVersion: 4",
			[]string{"spec.vrrpVersion", "supported values: \"2\", \"3\""}},
		{"authentication without a Secret name", "advertisementInterval: 1s", "advertisementInterval: 1s\n  vrrpVersion: 2\n  authentication: {passwordSecretRef: {key: password}}",
			[]string{"spec.authentication.passwordSecretRef.name", "must name the Secret that holds the password"}},
		{"authentication without a Secret key", "advertisementInterval: 1s", "advertisementInterval: 1s\n  vrrpVersion: 2\n  authentication: {passwordSecretRef: {name: vrrp, key: ''}}",
			[]string{"spec.authentication.passwordSecretRef.key", "must name the Secret's key"}},
		{"authentication optional", "advertisementInterval: 1s", "advertisementInterval: 1s\n  vrrpVersion: 2\n  authentication: {passwordSecretRef: {name: vrrp, key: password, optional: true}}",
			[]string{"spec.authentication.passwordSecretRef.optional", "must not be true", "the password is not optional"}},
		{"authentication with VRRPv3", "advertisementInterval: 1s", "advertisementInterval: 1s\n  authentication: {passwordSecretRef: {name: vrrp, key: password}}",
			[]string{"spec", "authentication is a VRRPv2 feature", "set vrrpVersion: 2"}},
		{"unicast peer of the other family", "advertisementInterval: 1s", "advertisementInterval: 1s\n  unicast: {enabled: true, peers: ['fd00::12']}",
			[]string{"spec", "unicast.peers must be of the same address family as virtualIPs"}},
		{"unicast peer not an address", "advertisementInterval: 1s", "advertisementInterval: 1s\n  unicast: {enabled: true, peers: [lb2]}",
			[]string{"spec.unicast.peers[0]", "must be an IPv4 or IPv6 address"}},
		{"static backend without port", "198.18.1.10:80", "198.18.1.10",
			[]string{"spec.ports[0].backend.static[0].address", "must be host:port"}},
		{"static backend port too large", "198.18.1.10:80", "198.18.1.10:70000",
			[]string{"spec.ports[0].backend.static[0].address", "the port of address must be from 1 to 65535"}},
		{"static backend bad IPv4", "198.18.1.10:80", "198.18.1.300:80",
			[]string{"spec.ports[0].backend.static[0].address", "looks like an IPv4 address but is not a valid one"}},
		{"static backend bad IPv6", "198.18.1.10:80", "'[fd00::zz]:80'",
			[]string{"spec.ports[0].backend.static[0].address"}},
		{"static backend duplicate", "web02:80", "198.18.1.10:80",
			[]string{"spec.ports[0].backend.static[1]", "Duplicate value"}},
		{"static backend weight 0", "web02:80", "web02:80\n        weight: 0",
			[]string{"spec.ports[0].backend.static[1].weight", "greater than or equal to 1"}},
		{"service and static", "    backend:\n", "    backend:\n      service: {name: web, port: http}\n",
			[]string{"spec.ports[0].backend", "exactly one of service or static"}},
		{"no backend", "    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "    backend: {}\n",
			[]string{"spec.ports[0].backend", "exactly one of service or static"}},
		{"service port name invalid", "    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "    backend:\n      service: {name: web, port: HTTP_S}\n",
			[]string{"spec.ports[0].backend.service.port", "port number from 1 to 65535 or a Service port name"}},
		{"service port number in quotes", "    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "    backend:\n      service: {name: web, port: '80'}\n",
			[]string{"spec.ports[0].backend.service.port", "give the port number unquoted (port: 80"}},
		{"service port name of 64 characters", "    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "    backend:\n      service: {name: web, port: " + strings.Repeat("p", 64) + "}\n",
			[]string{"spec.ports[0].backend.service.port", "may not be more than 63"}},
		{"nodeSelector key with a space", "advertisementInterval: 1s", "advertisementInterval: 1s\n  nodeSelector: {'role edge': 'true'}",
			[]string{"spec.nodeSelector", "keys must be label keys"}},
		{"nodeSelector key with an upper-case prefix", "advertisementInterval: 1s", "advertisementInterval: 1s\n  nodeSelector: {'Example.com/role': edge}",
			[]string{"spec.nodeSelector", "keys must be label keys"}},
		{"nodeSelector value with a space", "advertisementInterval: 1s", "advertisementInterval: 1s\n  nodeSelector: {role: 'edge nodes'}",
			[]string{"spec.nodeSelector", "values must be label values"}},
		{"nodeSelector value ending in a dot", "advertisementInterval: 1s", "advertisementInterval: 1s\n  nodeSelector: {role: 'edge.'}",
			[]string{"spec.nodeSelector", "values must be label values"}},
		{"nodeSelector value of 64 characters", "advertisementInterval: 1s", "advertisementInterval: 1s\n  nodeSelector: {role: " + strings.Repeat("e", 64) + "}",
			[]string{"spec.nodeSelector", "values must be label values"}},
		{"toleration Exists with a value", "advertisementInterval: 1s", "advertisementInterval: 1s\n  tolerations: [{key: k, operator: Exists, value: v}]",
			[]string{"spec.tolerations[0].value", "must be empty when operator is Exists"}},
		{"toleration operator Lt", "advertisementInterval: 1s", "advertisementInterval: 1s\n  tolerations: [{key: k, operator: Lt, value: '5'}]",
			[]string{"spec.tolerations[0].operator", "must be Exists or Equal"}},
		{"toleration without key nor Exists", "advertisementInterval: 1s", "advertisementInterval: 1s\n  tolerations: [{value: v}]",
			[]string{"spec.tolerations[0].operator", "must be Exists when key is empty"}},
		{"toleration effect misspelt", "advertisementInterval: 1s", "advertisementInterval: 1s\n  tolerations: [{key: k, effect: NoScheduel}]",
			[]string{"spec.tolerations[0].effect", "must be NoSchedule, PreferNoSchedule, NoExecute or empty"}},
		{"tolerationSeconds without NoExecute", "advertisementInterval: 1s", "advertisementInterval: 1s\n  tolerations: [{key: k, effect: NoSchedule, tolerationSeconds: 60}]",
			[]string{"spec.tolerations[0].tolerationSeconds", "needs effect NoExecute"}},
		{"unknown balance", "    port: 88\n", "    port: 88\n    balance: Fastest\n",
			[]string{"spec.ports[0].balance", "supported values"}},
		{"unknown PROXY protocol", "    port: 88\n", "    port: 88\n    proxyProtocol: V3\n",
			[]string{"spec.ports[0].proxyProtocol", "supported values"}},
		{"active check timeout above interval", "    port: 88\n", "    port: 88\n    healthCheck: {active: {interval: 1s, timeout: 2s}}\n",
			[]string{"spec.ports[0].healthCheck.active", "active.timeout must not exceed active.interval"}},
		{"agentPort one of the ports", "  ports:\n  - name: http\n    port: 88\n", "  agentPort: 1088\n  ports:\n  - name: http\n    port: 1088\n",
			[]string{"spec.agentPort", "spec.agentPort must differ from every spec.ports[].port", "cannot share a TCP port"}},
		{"duration that is not one", "advertisementInterval: 1s", "advertisementInterval: 1s\n  drainTimeout: 5 seconds",
			[]string{"spec.drainTimeout", "should match"}},
		{"unknown field", "advertisementInterval: 1s", "advertisementInterval: 1s\n  virtualIP: 198.18.0.1",
			[]string{`unknown field "spec.virtualIP"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(validPair, "NAME", "bad", 1)
			if !strings.Contains(doc, tt.old) {
				t.Fatalf("test edit %q does not apply to the base pair", tt.old)
			}
			doc = strings.Replace(doc, tt.old, tt.new, 1)
			out, err := kubectl(t, doc, "apply", "-n", ns, "-f", "-")
			if err == nil {
				t.Fatalf("kubectl apply accepted the pair:\n%s\n%s", doc, out)
			}
			t.Log(strings.TrimSpace(out))
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("error does not mention %q:\n%s", w, out)
				}
			}
		})
	}
}

// Variations of the base pair that the API must accept, so that the rules
// above reject no more than they mean to.
func TestGoodInputIsAccepted(t *testing.T) {
	ns := newNamespace(t, "good-input")
	tests := []struct {
		name     string
		old, new string
	}{
		{"IPv6 VIPs with VRRPv3", "[198.18.0.100]", "['fd00::100', 'fd00::101']\n  vrrpVersion: 3"},
		{"IPv6 VIP with the default version", "[198.18.0.100]", "['fd00::100']"},
		{"IPv4 VIPs with VRRPv2", "[198.18.0.100]", "[198.18.0.100, 198.18.0.101]\n  vrrpVersion: 2"},
		{"agentPort none of the ports", "advertisementInterval: 1s", "advertisementInterval: 1s\n  agentPort: 1088"},
		{"VRRPv2 advert of 60s", "advertisementInterval: 1s", "advertisementInterval: 60s\n  vrrpVersion: 2"},
		{"VRRPv2 advert of 255s", "advertisementInterval: 1s", "advertisementInterval: 4m15s\n  vrrpVersion: 2"},
		{"VRRPv3 advert of 40.95s", "advertisementInterval: 1s", "advertisementInterval: 40.95s"},
		{"VRRPv3 advert of 1.01s", "advertisementInterval: 1s", "advertisementInterval: 1s10ms"},
		{"service port name of 63 characters", "    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "    backend:\n      service: {name: web, port: https-metrics-port-" + strings.Repeat("p", 44) + "}\n"},
		{"service port number", "    backend:\n      static:\n      - address: 198.18.1.10:80\n      - address: web02:80\n", "    backend:\n      service: {name: web, port: 80}\n"},
		{"authentication", "advertisementInterval: 1s", "advertisementInterval: 1s\n  vrrpVersion: 2\n  authentication: {passwordSecretRef: {name: vrrp, key: password, optional: false}}"},
		{"label nodeSelector", "advertisementInterval: 1s", "advertisementInterval: 1s\n  nodeSelector: {lbpair.io/edge: '', kubernetes.io/hostname: lb1, Role_2: A-b_c.D9, " + strings.Repeat("p", 253) + "/" + strings.Repeat("n", 63) + ": " + strings.Repeat("v", 63) + "}"},
		{"tolerations", "advertisementInterval: 1s", "advertisementInterval: 1s\n  tolerations: [{operator: Exists}, {key: node-role.kubernetes.io/edge, effect: NoSchedule}, {key: k, operator: Equal, value: v, effect: NoExecute, tolerationSeconds: 30}, {key: k, operator: Exists, effect: PreferNoSchedule}]"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(validPair, "NAME", fmt.Sprintf("good-%d", i), 1)
			if !strings.Contains(doc, tt.old) {
				t.Fatalf("test edit %q does not apply to the base pair", tt.old)
			}
			doc = strings.Replace(doc, tt.old, tt.new, 1)
			mustKubectl(t, doc, "apply", "-n", ns, "-f", "-")
		})
	}
}

// TestLimitsPolicy: config/policy/lbpair-limits.yaml, bound to the test's namespace
// only, refuses a virtual IP outside its range, a static backend by host name (the
// agent connects to whatever the name resolves to, the node's loopback included,
// which the policy cannot see) and one on the node's loopback or a link-local,
// multicast or unspecified address, and takes the seed's pair.
func TestLimitsPolicy(t *testing.T) {
	ns := newNamespace(t, "limits")
	mustKubectl(t, "", "label", "namespace", ns, "lbpair.io/test-limits=true")
	policy, err := os.ReadFile(filepath.Join(root, "config", "policy", "lbpair-limits.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// The other tests' namespaces are not bound.
	scoped := strings.NewReplacer(
		"name: lbpair-limits\n", "name: lbpair-limits-"+ns+"\n",
		"policyName: lbpair-limits", "policyName: lbpair-limits-"+ns,
		"{key: lbpair.io/unrestricted, operator: DoesNotExist}", "{key: lbpair.io/test-limits, operator: Exists}",
	).Replace(string(policy))
	if strings.Count(scoped, ns) != 3 || !strings.Contains(scoped, "lbpair.io/test-limits") {
		t.Fatalf("the policy file changed: the test cannot scope it to its namespace:\n%s", scoped)
	}
	mustKubectl(t, scoped, "apply", "-f", "-")
	t.Cleanup(func() { _, _ = kubectl(t, scoped, "delete", "-f", "-") })

	// validPair's second backend is the host name web02, which the policy refuses.
	base := strings.Replace(validPair, "address: web02:80", "address: 198.18.1.11:80", 1)
	apply := func(name, old, new string) error {
		pair := strings.Replace(strings.Replace(base, "NAME", name, 1), old, new, 1)
		out, err := kubectl(t, pair, "apply", "--dry-run=server", "-n", ns, "-f", "-")
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	}
	// The policy takes effect once the apiserver has loaded it.
	deadline := time.Now().Add(30 * time.Second)
	for apply("probe", "[198.18.0.100]", "[198.18.5.100]") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the policy refuses nothing after 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	seed, err := os.ReadFile(filepath.Join(root, "config", "samples", "seed.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl(t, string(seed), "apply", "--dry-run=server", "-n", ns, "-f", "-"); err != nil {
		t.Errorf("the seed's pair refused: %v: %s", err, out)
	}
	for _, tt := range []struct{ name, new string }{
		{"private-ipv4", "198.18.1.11:80"},
		{"ula-ipv6", `"[fd00::10]:80"`},
	} {
		if err := apply(tt.name, "198.18.1.11:80", tt.new); err != nil {
			t.Errorf("%s: backend %s refused: %v", tt.name, tt.new, err)
		}
	}
	const hostName = "must be an IP address, not a host name"
	for _, tt := range []struct{ name, old, new, want string }{
		{"vip-outside", "[198.18.0.100]", "[198.18.5.100]", "spec.virtualIPs must be in 198.18.0.0/24"},
		{"metadata", "198.18.1.10:80", "169.254.169.254:80", "may not be the node's own loopback, a link-local address"},
		{"loopback", "198.18.1.10:80", "127.0.0.1:10249", "may not be the node's own loopback"},
		{"ipv6-loopback", "198.18.1.10:80", `"[::1]:80"`, "may not be the node's own loopback"},
		{"unspecified", "198.18.1.10:80", "0.0.0.0:80", "an unspecified address"},
		{"multicast", "198.18.1.10:80", "224.0.1.1:80", "a multicast"},
		// Names resolve to whatever their DNS says, the node's loopback
		// included: LOCALHOST as localhost, 127.0.0.1.nip.io to 127.0.0.1.
		{"localhost", "198.18.1.11:80", "localhost:2379", hostName},
		{"localhost-upper", "198.18.1.11:80", "LOCALHOST:2379", hostName},
		{"nip-io", "198.18.1.11:80", "127.0.0.1.nip.io:10250", hostName},
		{"name", "198.18.1.10:80", "web01:80", hostName},
	} {
		if err := apply(tt.name, tt.old, tt.new); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want a refusal saying %q", tt.name, err, tt.want)
		}
	}
}

// TestSchedulingIsRefusedAsInThePods: the manager copies spec.nodeSelector and
// spec.tolerations into the agents' DaemonSet, so the CRD must refuse what the
// apiserver refuses in a pod, and take what it takes; a pair it took that the
// DaemonSet could not carry ran no agents. Each case goes to both, as a dry run.
// The characters of a toleration's key and value are not checked: corev1's
// Toleration bounds neither string, and a regular expression over strings of
// unbounded length is over the apiserver's CEL cost budget.
func TestSchedulingIsRefusedAsInThePods(t *testing.T) {
	ns := newNamespace(t, "scheduling")
	const daemonSet = `apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agents}
spec:
  selector: {matchLabels: {app: agents}}
  template:
    metadata: {labels: {app: agents}}
    spec:
      containers: [{name: agent, image: agent}]
      FIELD
`
	for _, field := range []string{
		"nodeSelector: {role: edge}",
		"nodeSelector: {lbpair.io/edge: ''}",
		"nodeSelector: {'role edge': 'true'}",
		"nodeSelector: {'/role': edge}",
		"nodeSelector: {'a/b/c': edge}",
		"nodeSelector: {'a..b/role': edge}",
		"nodeSelector: {'-role': edge}",
		"nodeSelector: {" + strings.Repeat("k", 64) + ": edge}",
		"nodeSelector: {" + strings.Repeat("p", 254) + "/role: edge}",
		"nodeSelector: {" + strings.Repeat("p", 253) + "/role: edge}",
		"nodeSelector: {role: 'edge nodes'}",
		"nodeSelector: {role: '-edge'}",
		"nodeSelector: {role: 'edge_'}",
		"nodeSelector: {role: " + strings.Repeat("v", 63) + "}",
		"nodeSelector: {role: " + strings.Repeat("v", 64) + "}",
		"tolerations: [{operator: Exists}]",
		"tolerations: [{operator: Equal}]",
		"tolerations: [{}]",
		"tolerations: [{key: k}]",
		"tolerations: [{key: k, operator: Exists, value: v}]",
		"tolerations: [{key: k, operator: Gt, value: '5'}]",
		"tolerations: [{key: k, operator: Foo}]",
		"tolerations: [{key: k, effect: NoScheduel}]",
		"tolerations: [{key: k, effect: NoExecute, tolerationSeconds: -5}]",
		"tolerations: [{key: k, tolerationSeconds: 5}]",
		"tolerations: [{key: k, effect: PreferNoSchedule, tolerationSeconds: 5}]",
	} {
		t.Run(field, func(t *testing.T) {
			pair := strings.Replace(strings.Replace(validPair, "NAME", "scheduling", 1), "advertisementInterval: 1s", "advertisementInterval: 1s\n  "+field, 1)
			pairOut, pairErr := kubectl(t, pair, "apply", "--dry-run=server", "-n", ns, "-f", "-")
			dsOut, dsErr := kubectl(t, strings.Replace(daemonSet, "FIELD", field, 1), "apply", "--dry-run=server", "-n", ns, "-f", "-")
			if (pairErr == nil) != (dsErr == nil) {
				t.Errorf("the pair: %v %s\nthe DaemonSet: %v %s", pairErr, strings.TrimSpace(pairOut), dsErr, strings.TrimSpace(dsOut))
			}
		})
	}
}
