package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// The ClusterRoles the agents are bound to; config/rbac defines them.
const (
	// AgentClusterRole holds the agents' namespaced permissions, bound in
	// each namespace with pairs by a RoleBinding.
	AgentClusterRole = "lbpair-agent"
	// AgentNodesClusterRole lets agents read Nodes (their priority label).
	AgentNodesClusterRole = "lbpair-agent-nodes"
)

// ensureAgentAccess gives the agents of pair's namespace their
// ServiceAccount and bindings. The namespaced objects are shared by the
// namespace's pairs: each pair adds its own owner reference under a field
// manager of its own, so they are garbage collected with the last pair.
func (r *LoadBalancerPairReconciler) ensureAgentAccess(ctx context.Context, pair *lbv1.LoadBalancerPair, ns *corev1.Namespace) error {
	// A pair's name may be longer than a field manager may be.
	owner := client.FieldOwner(lbv1.FieldManagerFor(FieldManager, pair.Name))
	// Apply decodes the server's answer into the apply configuration, and
	// so through the pointers an owner reference or subject shares with the
	// one it was copied from: each object is given references of its own,
	// or the ServiceAccount's answer, which lists the pairs that owned it
	// before this one first, would give the RoleBinding another pair's
	// reference.
	ref := func() *metav1ac.OwnerReferenceApplyConfiguration {
		return metav1ac.OwnerReference().
			WithAPIVersion(lbv1.GroupVersion.String()).
			WithKind("LoadBalancerPair").
			WithName(pair.Name).
			WithUID(pair.UID)
	}
	subject := func() *rbacv1ac.SubjectApplyConfiguration {
		return rbacv1ac.Subject().WithKind("ServiceAccount").WithName(AgentServiceAccount).WithNamespace(pair.Namespace)
	}
	labels := map[string]string{managedByLabel: managerName, nameLabel: agentName}

	sa := corev1ac.ServiceAccount(AgentServiceAccount, pair.Namespace).
		WithLabels(labels).
		WithOwnerReferences(ref())
	if err := r.Apply(ctx, sa, owner, client.ForceOwnership); err != nil {
		return fmt.Errorf("applying ServiceAccount %s/%s: %w", pair.Namespace, AgentServiceAccount, err)
	}
	rb := rbacv1ac.RoleBinding(AgentServiceAccount, pair.Namespace).
		WithLabels(labels).
		WithOwnerReferences(ref()).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(AgentClusterRole)).
		WithSubjects(subject())
	if err := r.Apply(ctx, rb, owner, client.ForceOwnership); err != nil {
		return fmt.Errorf("applying RoleBinding %s/%s: %w", pair.Namespace, AgentServiceAccount, err)
	}
	// A cluster-scoped binding cannot be owned by a namespaced pair. The
	// namespace owns it, so that it goes with the namespace; when only the
	// namespace's last pair goes, it stays and grants nothing until a pair
	// brings the ServiceAccount back.
	nsRef := metav1ac.OwnerReference().WithAPIVersion("v1").WithKind("Namespace").WithName(ns.Name).WithUID(ns.UID)
	crb := rbacv1ac.ClusterRoleBinding(AgentNodesClusterRole + ":" + pair.Namespace).
		WithLabels(labels).
		WithOwnerReferences(nsRef).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(AgentNodesClusterRole)).
		WithSubjects(subject())
	if err := r.Apply(ctx, crb, client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		return fmt.Errorf("applying ClusterRoleBinding %s:%s: %w", AgentNodesClusterRole, pair.Namespace, err)
	}
	return nil
}
