// Package crd embeds the generated CustomResourceDefinitions, so that the
// agent's standalone mode applies exactly the defaults the apiserver applies.
package crd

import _ "embed"

// LoadBalancerPair is the generated CRD of the LoadBalancerPair kind.
//
//go:embed bases/lbpair.io_loadbalancerpairs.yaml
var LoadBalancerPair []byte
