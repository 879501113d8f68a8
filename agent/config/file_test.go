package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const seedPair = `
apiVersion: lbpair.io/v1alpha1
kind: LoadBalancerPair
metadata: {name: web}
spec:
  virtualIPs: [198.18.0.100]
  virtualRouterID: 51
  vrrpVersion: 2
  advertisementInterval: 1s
  authentication:
    passwordSecretRef: {name: vrrp, key: password}
  ports:
  - name: http
    port: 88
    backend:
      static: [{address: "web01:80"}, {address: "web02:80"}]
`

func TestParseFile(t *testing.T) {
	f, err := ParseFile([]byte(`# the seed recipe
` + seedPair + `
---
apiVersion: v1
kind: Secret
metadata: {name: vrrp}
stringData: {password: s3cret}
---
# lb1 is preferred
apiVersion: v1
kind: Node
metadata:
  name: lb1
  labels: {lbpair.io/priority: "150"}
status:
  addresses: [{type: InternalIP, address: 198.18.0.11}]
---
apiVersion: v1
kind: Node
metadata: {name: lb2}
status:
  addresses: [{type: InternalIP, address: 198.18.0.12}]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := []any{f.Pair.Name, len(f.Secrets), f.Secrets[0].StringData["password"], len(f.Nodes),
		f.Node("lb1").Labels["lbpair.io/priority"], f.Node("lb3") == nil,
		f.Pair.Spec.Ports[0].Timeouts.ConnectAttempts, *f.Pair.Spec.Preempt}
	want := []any{"web", 1, "s3cret", 2, "150", true, int32(3), true}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parsed file (-want +got):\n%s", diff)
	}
}

func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{"no pair", "apiVersion: v1\nkind: Node\nmetadata: {name: lb1}\n", ErrNoPair.Error()},
		{"empty", "# nothing\n", ErrNoPair.Error()},
		{"unknown field", strings.Replace(seedPair, "virtualIPs:", "virtualIP: [198.18.0.1]\n  virtualIPs:", 1), `unknown field "virtualIP"`},
		{"two pairs", seedPair + "---\n" + seedPair, "document 2: a second LoadBalancerPair"},
		{"other kind", seedPair + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", `document 2: unsupported object apiVersion "v1" kind "ConfigMap"`},
		{"bad yaml", seedPair + "---\nkind: [\n", "document 2: reading apiVersion and kind"},
		{"wrong type", strings.Replace(seedPair, "port: 88", "port: eighty-eight", 1), "document 1: reading the LoadBalancerPair:"},
		{"empty priority label", strings.Replace(seedPair, "  vrrpVersion: 2\n", "  vrrpVersion: 2\n  priority: {nodeLabel: ''}\n", 1), "spec.priority.nodeLabel must name a label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFile([]byte(tt.doc))
			if err == nil {
				t.Fatalf("ParseFile succeeded, want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if tt.want == ErrNoPair.Error() && !errors.Is(err, ErrNoPair) {
				t.Errorf("error %v is not ErrNoPair", err)
			}
		})
	}
}
