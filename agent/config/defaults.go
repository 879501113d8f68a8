// Package config turns a LoadBalancerPair, and the node it runs on, into the
// settings of the agent's VRRP router and proxy. It holds no I/O beyond
// reading a standalone file and resolving backend host names through an
// injected resolver.
package config

import (
	"fmt"
	"sync"

	"k8s.io/apimachinery/pkg/runtime"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
	"github.com/lbpair/lbpair/config/crd"
)

// schema is the openAPIV3Schema of the served version of the CRD, read once.
var schema = sync.OnceValues(func() (map[string]any, error) {
	// Whole numbers as int64, as the apiserver decodes objects: the defaults
	// taken from here must look like numbers read from a file.
	j, err := yaml.YAMLToJSON(crd.LoadBalancerPair)
	if err != nil {
		return nil, fmt.Errorf("reading the embedded CRD: %w", err)
	}
	var doc map[string]any
	if err := utiljson.Unmarshal(j, &doc); err != nil {
		return nil, fmt.Errorf("reading the embedded CRD: %w", err)
	}
	versions, _ := dig(doc, "spec", "versions").([]any)
	for _, v := range versions {
		v, _ := v.(map[string]any)
		if v["name"] == lbv1.GroupVersion.Version {
			if s, ok := dig(v, "schema", "openAPIV3Schema").(map[string]any); ok {
				return s, nil
			}
		}
	}
	return nil, fmt.Errorf("the embedded CRD has no schema for version %s", lbv1.GroupVersion.Version)
})

// optionalObjects are the optional objects whose fields carry defaults. The
// apiserver leaves an absent object absent; the agent reads them as if they
// were given empty, so that every setting has its documented default.
var optionalObjects = [][]string{
	{"spec", "priority"},
	{"spec", "announcements"},
	{"spec", "tracking"},
	{"spec", "ports", "*", "healthCheck"},
	{"spec", "ports", "*", "healthCheck", "passive"},
	{"spec", "ports", "*", "timeouts"},
}

// Default applies the CRD's defaults to pair, as the apiserver does on create
// (absent fields get their default, given ones are kept, even when zero), and
// then fills the optional objects listed above. It is safe on a pair the
// apiserver already defaulted.
func Default(pair *lbv1.LoadBalancerPair) error {
	s, err := schema()
	if err != nil {
		return err
	}
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pair)
	if err != nil {
		return fmt.Errorf("converting the LoadBalancerPair: %w", err)
	}
	for _, path := range optionalObjects {
		ensureObject(obj, path)
	}
	applyDefaults(obj, s)
	var out lbv1.LoadBalancerPair
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj, &out); err != nil {
		return fmt.Errorf("converting the defaulted LoadBalancerPair: %w", err)
	}
	*pair = out
	return nil
}

// applyDefaults walks obj alongside its structural schema and sets every
// absent property that has a default, recursing into present objects and
// array items.
func applyDefaults(obj any, schema map[string]any) {
	switch o := obj.(type) {
	case map[string]any:
		props, _ := schema["properties"].(map[string]any)
		for name, p := range props {
			p, _ := p.(map[string]any)
			if _, present := o[name]; !present {
				if def, ok := p["default"]; ok {
					o[name] = runtime.DeepCopyJSONValue(def)
				}
			}
			if v, present := o[name]; present {
				applyDefaults(v, p)
			}
		}
	case []any:
		items, _ := schema["items"].(map[string]any)
		for _, item := range o {
			applyDefaults(item, items)
		}
	}
}

// ensureObject creates the object at path, where its parent exists; "*"
// stands for every item of an array.
func ensureObject(obj map[string]any, path []string) {
	if len(path) == 0 {
		return
	}
	if len(path) > 1 && path[1] == "*" {
		items, _ := obj[path[0]].([]any)
		for _, item := range items {
			if m, ok := item.(map[string]any); ok {
				ensureObject(m, path[2:])
			}
		}
		return
	}
	child, ok := obj[path[0]].(map[string]any)
	if !ok {
		if len(path) > 1 {
			return
		}
		child = map[string]any{}
		obj[path[0]] = child
	}
	ensureObject(child, path[1:])
}

func dig(obj map[string]any, path ...string) any {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}
