package config

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// TestParseFileRefusesWhatTheAPIServerRefuses sends pairs the CRD does not allow
// both to a kube-apiserver and to the standalone agent's file parser. Each must be
// refused by both, for the same reasons: the standalone agent, which has no
// apiserver in front of it, must not run with a value a cluster would never let
// through (a loopback virtual IP, a connect timeout of 1ns, ARP announcements every
// 10ms, unicast peers that a missing `enabled` turns off).
func TestParseFileRefusesWhatTheAPIServerRefuses(t *testing.T) {
	c := startAPIServer(t)
	pair := func(vip, spec, port string) string {
		return fmt.Sprintf(`apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata: {name: web, namespace: default}
spec:
  virtualIPs: [%s]
  virtualRouterID: 51
  %s
  ports:
  - name: http
    port: 88
    backend:
      static: [{address: "198.18.1.10:80"}]
    %s
`, vip, spec, port)
	}
	const vip = "198.18.0.100"
	// The control: a pair both accept, whose defaults (vrrpVersion among them) the
	// CEL rules read.
	valid := pair(vip, "advertisementInterval: 100ms", "healthCheck: {active: {}}")
	// Two distinct IPv6 virtual IPs are no duplicates; VRRPv2 takes whole seconds to 255s.
	for _, doc := range []string{valid, pair(`"fd00:198:18::100", "fd00:198:18::101"`, "", ""), pair(vip, "vrrpVersion: 2\n  advertisementInterval: 60s", "")} {
		if err := c.Create(context.Background(), mustUnstructured(t, doc), client.DryRunAll); err != nil {
			t.Fatalf("the apiserver refused the valid pair: %v\n%s", err, doc)
		}
		if _, err := ParseFile([]byte(doc)); err != nil {
			t.Fatalf("the standalone file of the valid pair was refused: %v\n%s", err, doc)
		}
	}
	for _, tc := range []struct{ name, doc string }{
		{"loopback virtual IP", pair("127.0.0.1", "", "")},
		{"multicast virtual IP", pair("224.0.0.18", "", "")},
		{"unspecified virtual IP", pair("0.0.0.0", "", "")},
		{"unicast peers without enabled", pair(vip, "unicast: {peers: [198.18.0.12]}", "")},
		{"active check timeout of 1ns", pair(vip, "", "healthCheck: {active: {timeout: 1ns}}")},
		{"active check every 10ms", pair(vip, "", "healthCheck: {active: {interval: 10ms, timeout: 10ms}}")},
		{"connect timeout of 1ns", pair(vip, "", "timeouts: {connect: 1ns}")},
		{"idle timeout of 0s", pair(vip, "", "timeouts: {idle: 0s}")},
		{"ARP refresh every 10ms", pair(vip, "announcements: {refreshInterval: 10ms}", "")},
		{"fail timeout of 100ms", pair(vip, "", "healthCheck: {passive: {failTimeout: 100ms}}")},
		{"explicit priority 0", pair(vip, "priority: {default: 0}", "")},
		{"explicit connectAttempts 0", pair(vip, "", "timeouts: {connectAttempts: 0}")},
		{"drain timeout of 2h", pair(vip, "drainTimeout: 2h", "")},
		{"interface name with a space", pair(vip, `interface: "eth 0"`, "")},
		{"backend host name with an underscore", strings.Replace(pair(vip, "", ""), "198.18.1.10:80", "web_02:80", 1)},
		{"no ports", strings.Split(pair(vip, "", ""), "  ports:")[0]},
		// The apiserver's set check compares strings: one address written two ways
		// passed it, and every agent's proxy then failed to listen on it twice.
		{"one IPv6 virtual IP written two ways", pair(`"fd00:198:18::100", "fd00:198:18:0::100"`, "", "")},
		{"one IPv6 virtual IP in two cases", pair(`"FD00:198:18::100", "fd00:198:18::100"`, "", "")},
		// Agents refused these intervals: they are not whole centiseconds, or with
		// VRRPv2 whole seconds, which a rule of whole milliseconds let through.
		{"advertisement interval of 100.5ms", pair(vip, "advertisementInterval: 100.5ms", "")},
		{"advertisement interval of 1s1ns", pair(vip, "advertisementInterval: 1s1ns", "")},
		{"VRRPv2 advertisement interval of 2s500us", pair(vip, "vrrpVersion: 2\n  advertisementInterval: 2s500us", "")},
		// Agents found no Secret "" or no Secret at all; the DaemonSet refused these.
		{"password Secret without a name", pair(vip, "vrrpVersion: 2\n  authentication: {passwordSecretRef: {key: pw}}", "")},
		{"optional password Secret", pair(vip, "vrrpVersion: 2\n  authentication: {passwordSecretRef: {name: vrrp, key: pw, optional: true}}", "")},
		{"nodeSelector key with a space", pair(vip, `nodeSelector: {"role edge": "true"}`, "")},
		{"nodeSelector value with a space", pair(vip, `nodeSelector: {role: "edge nodes"}`, "")},
		{"toleration Exists with a value", pair(vip, `tolerations: [{key: k, operator: Exists, value: v}]`, "")},
		{"toleration effect misspelt", pair(vip, `tolerations: [{key: k, effect: NoScheduel}]`, "")},
		{"Service port number in quotes", strings.Replace(pair(vip, "", ""), `static: [{address: "198.18.1.10:80"}]`, `service: {name: web, port: "80"}`, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apiErr := c.Create(context.Background(), mustUnstructured(t, tc.doc), client.DryRunAll)
			var status apierrors.APIStatus
			if !errors.As(apiErr, &status) || status.Status().Details == nil || len(status.Status().Details.Causes) == 0 {
				t.Fatalf("the apiserver did not refuse the pair with reasons: %v", apiErr)
			}
			_, err := ParseFile([]byte(tc.doc))
			if err == nil {
				t.Fatalf("the standalone file was accepted; the apiserver refused it: %v", apiErr)
			}
			for _, cause := range status.Status().Details.Causes {
				if strings.Contains(cause.Message, "some validation rules were not checked") {
					continue // the apiserver's note that CEL waits for the schema
				}
				if !strings.Contains(err.Error(), cause.Message) {
					t.Errorf("the standalone refusal does not give the apiserver's reason %q (%s)\n  standalone: %v", cause.Message, cause.Field, err)
				}
			}
		})
	}
}

func mustUnstructured(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
		t.Fatal(err)
	}
	return &unstructured.Unstructured{Object: obj}
}

// TestParseFileDropsThePairsStatus: status.virtualIPs (which agents run with once the
// manager has cleared them) cannot be set from a file, as the apiserver ignores the
// status of a pair that is created: a standalone agent runs with its spec.
func TestParseFileDropsThePairsStatus(t *testing.T) {
	f, err := ParseFile([]byte(seedPair + "status: {virtualIPs: [127.0.0.1], virtualRouterID: 7}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Pair.Status.VirtualIPs) != 0 || f.Pair.Status.VirtualRouterID != 0 {
		t.Errorf("status kept: %+v", f.Pair.Status)
	}
}
