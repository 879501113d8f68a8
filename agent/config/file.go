package config

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// File is a standalone agent's configuration: the same objects a cluster
// holds, written in one multi-document YAML file. Exactly one
// LoadBalancerPair; Secrets for VRRPv2 authentication; Nodes to give each
// node its priority (the pair's priority label) and address (unicast peers).
type File struct {
	Pair    *lbv1.LoadBalancerPair
	Secrets []corev1.Secret
	Nodes   []corev1.Node

	// pairObject is the pair as written, for validation: decoding into
	// LoadBalancerPair loses an explicit 0 or "" in an optional field.
	pairObject map[string]any
}

// ErrNoPair is returned for a file without a LoadBalancerPair.
var ErrNoPair = errors.New("the file holds no LoadBalancerPair")

// ReadFile reads and parses a standalone configuration file.
func ReadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading agent config: %w", err)
	}
	f, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ParseFile parses a standalone configuration. As `kubectl apply` of the pair
// would, it refuses unknown fields and whatever the CRD's schema and rules
// refuse, gives the pair the CRD's defaults, and drops its status, which only
// the manager and agents write.
func ParseFile(data []byte) (*File, error) {
	var f File
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || isOnlyComments(doc) {
			continue
		}
		if err := f.add(doc); err != nil {
			return nil, fmt.Errorf("document %d: %w", n, err)
		}
	}
	if f.Pair == nil {
		return nil, ErrNoPair
	}
	s, err := schema()
	if err != nil {
		return nil, err
	}
	delete(f.pairObject, "status")
	f.Pair.Status = lbv1.LoadBalancerPairStatus{}
	applyDefaults(f.pairObject, s)
	if err := validate(context.Background(), f.pairObject); err != nil {
		return nil, fmt.Errorf("the LoadBalancerPair is invalid: %w", err)
	}
	if err := Default(f.Pair); err != nil {
		return nil, err
	}
	return &f, nil
}

func (f *File) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return fmt.Errorf("reading apiVersion and kind: %w", err)
	}
	switch {
	case tm.APIVersion == lbv1.GroupVersion.String() && tm.Kind == "LoadBalancerPair":
		if f.Pair != nil {
			return errors.New("a second LoadBalancerPair: a standalone agent runs one pair, give each its own file and agent")
		}
		var p lbv1.LoadBalancerPair
		if err := yaml.UnmarshalStrict(doc, &p); err != nil {
			return fmt.Errorf("reading the LoadBalancerPair: %w", err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return fmt.Errorf("reading the LoadBalancerPair: %w", err)
		}
		// As the apiserver decodes objects: whole numbers as int64.
		if err := utiljson.Unmarshal(j, &f.pairObject); err != nil {
			return fmt.Errorf("reading the LoadBalancerPair: %w", err)
		}
		f.Pair = &p
	case tm.APIVersion == "v1" && tm.Kind == "Secret":
		var s corev1.Secret
		if err := yaml.UnmarshalStrict(doc, &s); err != nil {
			return fmt.Errorf("reading the Secret: %w", err)
		}
		f.Secrets = append(f.Secrets, s)
	case tm.APIVersion == "v1" && tm.Kind == "Node":
		var n corev1.Node
		if err := yaml.UnmarshalStrict(doc, &n); err != nil {
			return fmt.Errorf("reading the Node: %w", err)
		}
		f.Nodes = append(f.Nodes, n)
	default:
		return fmt.Errorf("unsupported object apiVersion %q kind %q: a standalone file holds one %s LoadBalancerPair and optionally v1 Secrets and v1 Nodes",
			tm.APIVersion, tm.Kind, lbv1.GroupVersion)
	}
	return nil
}

func isOnlyComments(doc []byte) bool {
	for _, line := range bytes.Split(doc, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] != '#' && !bytes.Equal(line, []byte("---")) {
			return false
		}
	}
	return true
}

// Node returns the file's Node of that name, or nil.
func (f *File) Node(name string) *corev1.Node {
	for i := range f.Nodes {
		if f.Nodes[i].Name == name {
			return &f.Nodes[i]
		}
	}
	return nil
}
