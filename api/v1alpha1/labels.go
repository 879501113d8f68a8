package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// PairLabel is the label the manager puts on a pair's agent pods, with the
// value PairLabelValue(pair name); agents find their peers by it.
const PairLabel = "lbpair.io/pair"

// PairLabelValue is the value of PairLabel for a pair. Object names may be
// longer than the 63 characters a label value allows: a long name is cut and
// given a hash of the whole, so that two long names stay apart.
func PairLabelValue(name string) string {
	const maxLabel = 63
	if len(name) <= maxLabel {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:52] + "-" + hex.EncodeToString(sum[:])[:10]
}

// ExcludedFromLoadBalancers reports whether a node carries Kubernetes'
// node.kubernetes.io/exclude-from-external-load-balancers label, with any
// value: an operator takes a node out of load balancing with it, for
// maintenance say. Agents do not run there; one that runs hands the virtual
// IPs over and stops, as when its node is deselected.
func ExcludedFromLoadBalancers(node *corev1.Node) bool {
	_, ok := node.Labels[corev1.LabelNodeExcludeBalancers]
	return ok
}

// LabelPriority reads a node's VRRP priority from the value of its
// spec.priority.nodeLabel: a whole number from 1 to 254 (255 belongs to the
// owner of the addresses, which an agent never is). For any other value ok is
// false: the agent ignores it and runs at spec.priority.default, and the
// manager reports it.
func LabelPriority(value string) (priority uint8, ok bool) {
	n, err := strconv.Atoi(value)
	if err != nil || n < 1 || n > 254 {
		return 0, false
	}
	return uint8(n), true
}

// fieldManagerMaxLength is the apiserver's limit on a field manager's length
// (k8s.io/apimachinery metav1 validation's FieldManagerMaxLength).
const fieldManagerMaxLength = 128

// FieldManagerFor is the server-side apply field manager prefix+"/"+name,
// for a manager per pair or per node. Such names run to 253 characters, past
// the apiserver's 128: a long one is cut and given a hash of the whole name,
// so that two long names stay apart. Names short enough are kept as they
// are, so that the fields they already own stay theirs.
func FieldManagerFor(prefix, name string) string {
	m := prefix + "/" + name
	if len(m) <= fieldManagerMaxLength {
		return m
	}
	sum := sha256.Sum256([]byte(name))
	return m[:fieldManagerMaxLength-11] + "-" + hex.EncodeToString(sum[:])[:10]
}
