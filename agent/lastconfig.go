package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/lbpair/lbpair/agent/config"
	"github.com/lbpair/lbpair/agent/proxy"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// lastConfigFile is the file in the state directory that holds the last
// configuration a cluster agent applied.
const lastConfigFile = "last-config.json"

// lastConfig is what a cluster agent last applied: the inputs of
// config.Build, cut down to what Build reads, and the backends of the pair's
// Service ports. The agent keeps it in its state directory, an emptyDir of
// its pod, which outlives the container: an agent restarted (a crash, an OOM
// kill, a failed liveness probe) while the apiserver is unreachable serves
// with it instead of waiting with nothing running, and its node stays a
// standby for the pair.
type lastConfig struct {
	Pair lbv1.LoadBalancerPair `json:"pair"`
	// Node holds the node's name and labels (its priority label), or is nil
	// when the agent did not know its node.
	Node  *corev1.Node `json:"node,omitempty"`
	Peers []netip.Addr `json:"peers,omitempty"`
	// Secret holds the one key of the VRRPv2 password. The state directory
	// is memory-backed, as the kubelet keeps Secret volumes.
	Secret *corev1.Secret `json:"secret,omitempty"`
	// Backends are those of the Service ports, by listener name.
	Backends map[string][]proxy.Backend `json:"backends,omitempty"`
	// Resolved holds the last good addresses of the static backends' host
	// names, for a restart while DNS does not answer either.
	Resolved map[string][]netip.Addr `json:"resolved,omitempty"`
}

// newLastConfig keeps of in what Build reads: of the pair its identity, spec
// and the virtual IPs and VRID the manager gave it, so that status writes
// (every agent's, every 10 s) do not change what is kept. Of resolved, the
// answers for the spec's host names.
func newLastConfig(in config.Inputs, backends map[string][]proxy.Backend, resolved map[string][]netip.Addr) *lastConfig {
	lc := &lastConfig{
		Pair: lbv1.LoadBalancerPair{
			TypeMeta:   metav1.TypeMeta{APIVersion: lbv1.GroupVersion.String(), Kind: "LoadBalancerPair"},
			ObjectMeta: metav1.ObjectMeta{Namespace: in.Pair.Namespace, Name: in.Pair.Name, UID: in.Pair.UID, Generation: in.Pair.Generation},
			Spec:       *in.Pair.Spec.DeepCopy(),
			Status: lbv1.LoadBalancerPairStatus{
				VirtualRouterID: in.Pair.Status.VirtualRouterID,
				VirtualIPs:      in.Pair.Status.VirtualIPs,
			},
		},
		Peers:    in.Peers,
		Backends: backends,
	}
	if in.Node != nil {
		lc.Node = &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: in.Node.Name, Labels: in.Node.Labels}}
	}
	for host := range staticHosts(&in.Pair.Spec) {
		if ips, ok := resolved[host]; ok {
			if lc.Resolved == nil {
				lc.Resolved = map[string][]netip.Addr{}
			}
			lc.Resolved[host] = ips
		}
	}
	if auth := in.Pair.Spec.Authentication; auth != nil {
		ref := auth.PasswordSecretRef
		for _, s := range in.Secrets {
			if v, ok := s.Data[ref.Key]; ok && s.Name == ref.Name {
				lc.Secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Name}, Data: map[string][]byte{ref.Key: v}}
			}
		}
	}
	return lc
}

// inputs are Build's inputs as they were when the configuration was kept,
// resolving host names with r.
func (lc *lastConfig) inputs(r config.Resolver) config.Inputs {
	in := config.Inputs{Pair: &lc.Pair, Node: lc.Node, Peers: lc.Peers, Resolver: r}
	if lc.Secret != nil {
		in.Secrets = []corev1.Secret{*lc.Secret}
	}
	return in
}

// lastConfigStore reads and writes the last configuration in a directory.
type lastConfigStore struct {
	path string
	// kept is what the file holds as last written or read, so that syncs
	// that change nothing neither encode nor write.
	kept *lastConfig
}

func newLastConfigStore(dir string) *lastConfigStore {
	return &lastConfigStore{path: filepath.Join(dir, lastConfigFile)}
}

// save writes lc unless the file already holds it. The file is replaced in
// one rename, so a crash mid-write leaves the previous one.
func (s *lastConfigStore) save(lc *lastConfig) error {
	if reflect.DeepEqual(lc, s.kept) {
		return nil
	}
	data, err := json.Marshal(lc)
	if err != nil {
		return fmt.Errorf("encoding the last configuration: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), lastConfigFile+".*")
	if err != nil {
		return fmt.Errorf("keeping the last configuration: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("keeping the last configuration in %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keeping the last configuration in %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("keeping the last configuration: %w", err)
	}
	s.kept = lc
	return nil
}

// load reads the kept configuration; it returns (nil, zero time, nil) when
// there is none. It refuses one kept for another pair or node, which the
// state directory of a pod cannot hold unless it is shared by mistake.
func (s *lastConfigStore) load(namespace, pair, node string) (*lastConfig, time.Time, error) {
	data, err := os.ReadFile(s.path)
	if os.IsNotExist(err) {
		return nil, time.Time{}, nil
	}
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("reading the last configuration: %w", err)
	}
	fi, err := os.Stat(s.path)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("reading the last configuration: %w", err)
	}
	var lc lastConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&lc); err != nil {
		return nil, time.Time{}, fmt.Errorf("reading the last configuration from %s: %w", s.path, err)
	}
	if lc.Pair.Namespace != namespace || lc.Pair.Name != pair {
		return nil, time.Time{}, fmt.Errorf("%s holds the configuration of pair %s/%s, not %s/%s", s.path, lc.Pair.Namespace, lc.Pair.Name, namespace, pair)
	}
	if lc.Node != nil && lc.Node.Name != node {
		return nil, time.Time{}, fmt.Errorf("%s holds the configuration of node %s, not %s", s.path, lc.Node.Name, node)
	}
	s.kept = &lc
	return &lc, fi.ModTime(), nil
}

// remove deletes the kept configuration, so that a restarted agent does not
// serve a pair that has left its node.
func (s *lastConfigStore) remove() error {
	s.kept = nil
	if err := os.Remove(s.path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing the last configuration: %w", err)
	}
	return nil
}
