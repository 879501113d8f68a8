package agent

import (
	"context"
	"os"
	"path/filepath"
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
	// lb2 has no usable address, and a listed peer (a keepalived host, say)
	// keeps lb1's list from being empty: lb1 would never reach lb2.
	listedPeer := strings.Replace(unicast, "unicast: {enabled: true}", "unicast: {enabled: true, peers: [198.18.0.20]}", 1)
	lb2Typo := strings.Replace(listedPeer, "{type: InternalIP, address: 198.18.0.12}", "{type: InternalIp, address: 198.18.0.12}", 1)
	lb2Bad := strings.Replace(listedPeer, "address: 198.18.0.12}", "address: 198.18.0.312}", 1)
	for _, tt := range []struct {
		name, file, node string
		// err is part of the error; "" when the file is taken.
		err string
	}{
		{"the seed", string(seed), "lb1", ""},
		{"unicast to the other node's InternalIP", unicast, "lb2", ""},
		{"a node name the file does not know", string(seed), "lb1.example.com", `--node-name "lb1.example.com" is none of the file's Nodes (lb1, lb2)`},
		{"unicast without an address to send to", externalOnly, "lb1", "spec.unicast.enabled: no peer to send to"},
		{"unicast with a listed peer beside the Nodes", listedPeer, "lb1", ""},
		{"unicast to a Node whose address type is misspelt", lb2Typo, "lb1", `the Node "lb2": spec.unicast.enabled needs the address its agent hears adverts on: give it an IPv4 address of type InternalIP`},
		{"unicast to a Node whose address does not parse", lb2Bad, "lb1", `the Node "lb2"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if unicast == string(seed) || lb2Typo == listedPeer || lb2Bad == listedPeer {
				t.Fatal("the seed file is not as the cases expect: an edit found nothing to replace")
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

// TestCheckFlag: `lbpair agent --check` loads a standalone file as a start
// or a reload would and says whether it loads, without running anything:
// the systemd unit's reload runs it before the SIGHUP, so that `systemctl
// reload` fails on a file the agent would refuse.
func TestCheckFlag(t *testing.T) {
	seed := filepath.Join("config", "testdata", "seed.yaml")
	if err := Main(context.Background(), []string{"--config", seed, "--node-name", "lb1", "--check"}); err != nil {
		t.Errorf("--check on the seed file: %v", err)
	}
	err := Main(context.Background(), []string{"--config", seed, "--node-name", "lb3", "--check"})
	if err == nil || !strings.Contains(err.Error(), `--node-name "lb3" is none of the file's Nodes`) {
		t.Errorf("--check with a node the file does not know: %v, want the refusal", err)
	}
	if err := Main(context.Background(), []string{"--node-name", "lb1", "--check"}); err == nil || !strings.Contains(err.Error(), "give --config FILE") {
		t.Errorf("--check without --config: %v, want a refusal naming --config", err)
	}
}
