package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// defaultPriority is spec.priority as the agents read a pair without one:
// the CRD's defaults, which the apiserver gives the fields of a spec.priority
// that is there, and the agent (config.Default) one that is not.
var defaultPriority = lbv1.PrioritySpec{Default: 100, NodeLabel: "lbpair.io/priority"}

// maxIgnoredPriorities bounds the nodes the Degraded condition names for an
// ignored priority label: node names run to 253 characters, label values to 63.
const maxIgnoredPriorities = 8

// prioritySpec is the pair's spec.priority, defaulted as the agents default it.
func prioritySpec(pair *lbv1.LoadBalancerPair) lbv1.PrioritySpec {
	p := defaultPriority
	if s := pair.Spec.Priority; s != nil {
		if s.Default != 0 {
			p.Default = s.Default
		}
		if s.NodeLabel != "" {
			p.NodeLabel = s.NodeLabel
		}
	}
	return p
}

// ignoredPriorityLabel returns the value of node's priority label when the
// agent there ignores it (lbv1.LabelPriority) and runs at
// spec.priority.default instead: keepalived allows 255, say.
func ignoredPriorityLabel(p lbv1.PrioritySpec, node *corev1.Node) (string, bool) {
	v, ok := node.Labels[p.NodeLabel]
	if !ok {
		return "", false
	}
	if _, ok := lbv1.LabelPriority(v); ok {
		return "", false
	}
	return v, true
}

// checkPriorityLabels finds the nodes that run the pair's agents whose
// priority label the agents ignore, which the agents only log. It records a
// Warning Event for each when it is new, or its value is (each status write of
// an agent reconciles the pair), and says which they are for the Degraded
// condition, "" when none is.
func (r *LoadBalancerPairReconciler) checkPriorityLabels(ctx context.Context, pair *lbv1.LoadBalancerPair) (string, error) {
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes, client.MatchingLabelsSelector{Selector: labels.SelectorFromSet(pair.Spec.NodeSelector)}); err != nil {
		return "", fmt.Errorf("listing nodes for their priority labels: %w", err)
	}
	key := types.NamespacedName{Namespace: pair.Namespace, Name: pair.Name}
	if tooManyNodes(pair, nodes.Items) != "" {
		// The pair does not run on these nodes: TooManyNodes says so.
		r.priorityWarnings.Delete(key)
		return "", nil
	}
	p := prioritySpec(pair)
	ignored := map[string]string{} // node to the Event's note
	var names []string             // the nodes, as `node ("value")`
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if !runsAgentOn(pair, n) {
			continue
		}
		if v, bad := ignoredPriorityLabel(p, n); bad {
			ignored[n.Name] = fmt.Sprintf("node %s label %s=%q is not a priority from 1 to 254; its agent runs at spec.priority.default %d", n.Name, p.NodeLabel, v, p.Default)
			names = append(names, fmt.Sprintf("%s (%q)", n.Name, v))
		}
	}
	warned := map[string]string{}
	if v, ok := r.priorityWarnings.Load(key); ok {
		warned = v.(map[string]string)
	}
	for node, note := range ignored {
		if warned[node] != note {
			r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "InvalidPriorityLabel", "CheckPriority", "%s", note)
		}
	}
	// Nodes whose label is valid again, or gone, are forgotten: a value
	// that comes back is reported again.
	r.priorityWarnings.Store(key, ignored)
	if len(names) == 0 {
		return "", nil
	}
	sort.Strings(names)
	if len(names) > maxIgnoredPriorities {
		names = append(names[:maxIgnoredPriorities], fmt.Sprintf("and %d other nodes", len(names)-maxIgnoredPriorities))
	}
	return fmt.Sprintf("priority label %s is not a priority from 1 to 254 on %s, whose agents run at spec.priority.default %d",
		p.NodeLabel, strings.Join(names, ", "), p.Default), nil
}
