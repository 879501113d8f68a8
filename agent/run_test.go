package agent

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/lbpair/lbpair/agent/config"
)

// TestCheckStandalone: a file that would run the agent out of its pair, at
// the default priority or advertising to a multicast group the network drops,
// is refused with what to change.
func TestCheckStandalone(t *testing.T) {
	seed, err := os.ReadFile("config/testdata/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	unicast := strings.Replace(string(seed), "  advertisementInterval: 1s", "  advertisementInterval: 1s\n  unicast: {enabled: true}", 1)
	externalOnly := strings.ReplaceAll(unicast, "type: InternalIP", "type: ExternalIP")
	for _, tt := range []struct {
		name, file, node string
		// err is part of the error; "" when the file is taken.
		err string
	}{
		{"the seed", string(seed), "lb1", ""},
		{"unicast to the other node's InternalIP", unicast, "lb2", ""},
		{"a node name the file does not know", string(seed), "lb1.example.com", `--node-name "lb1.example.com" is none of the file's Nodes (lb1, lb2)`},
		{"unicast without an address to send to", externalOnly, "lb1", "spec.unicast.enabled: no peer to send to"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if unicast == string(seed) {
				t.Fatal("the seed file has no advertisementInterval line to add unicast to")
			}
			f, err := config.ParseFile([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			s, err := config.Build(context.Background(), config.Inputs{Pair: f.Pair, Node: f.Node(tt.node), Peers: peerAddresses(f.Nodes, tt.node), Secrets: f.Secrets})
			if err != nil {
				t.Fatal(err)
			}
			err = checkStandalone(f, tt.node, s)
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("error %v, want one containing %q", err, tt.err)
			}
		})
	}
}
