package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

func newPair(ns, name string, vrid *int32, vip string) *lbv1.LoadBalancerPair {
	return &lbv1.LoadBalancerPair{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: lbv1.LoadBalancerPairSpec{
			VirtualIPs:      []string{vip},
			VirtualRouterID: vrid,
			Ports: []lbv1.PortSpec{{Name: "http", Port: 88, Backend: lbv1.BackendSpec{
				Static: []lbv1.StaticBackend{{Address: "198.18.1.10:80"}, {Address: "198.18.1.11:80"}},
			}}},
		},
	}
}

func getPair(t *testing.T, ns, name string) *lbv1.LoadBalancerPair {
	t.Helper()
	var p lbv1.LoadBalancerPair
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &p); err != nil {
		t.Fatal(err)
	}
	return &p
}

// updatePair changes a pair's spec with change, retrying on the write
// conflicts the manager's status writes cause.
func updatePair(t *testing.T, ns, name string, change func(*lbv1.LoadBalancerPair)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		p := getPair(t, ns, name)
		change(p)
		return k8s.Update(context.Background(), p)
	})
	if err != nil {
		t.Fatalf("updating pair %s/%s: %v", ns, name, err)
	}
}

func getDaemonSet(ns, pair string) (*appsv1.DaemonSet, error) {
	var ds appsv1.DaemonSet
	err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: daemonSetName(pair)}, &ds)
	return &ds, err
}

func TestCreateWritesTheAgentsDaemonSet(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	p := newPair(ns, "web", ptrTo(int32(51)), "198.18.0.100")
	p.Spec.NodeSelector = map[string]string{"lbpair.io/lb": "true"}
	p.Spec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "lb", Effect: corev1.TaintEffectNoSchedule}}
	p.Spec.DrainTimeout = &metav1.Duration{Duration: 45 * time.Second}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}

	var ds *appsv1.DaemonSet
	eventually(t, "DaemonSet created", func() (err error) { ds, err = getDaemonSet(ns, "web"); return err })
	pod := ds.Spec.Template.Spec
	c := pod.Containers[0]
	var env []string
	for _, e := range c.Env {
		env = append(env, e.Name+"="+e.ValueFrom.FieldRef.FieldPath)
	}
	got := map[string]any{
		"hostNetwork":   pod.HostNetwork,
		"dnsPolicy":     string(pod.DNSPolicy),
		"sa":            pod.ServiceAccountName,
		"grace":         *pod.TerminationGracePeriodSeconds,
		"livenessGrace": *c.LivenessProbe.TerminationGracePeriodSeconds,
		"nodeSelector":  pod.NodeSelector["lbpair.io/lb"],
		"toleration":    pod.Tolerations[0].Key + "=" + pod.Tolerations[0].Value,
		"image":         c.Image,
		"args":          strings.Join(c.Args, " "),
		"env":           strings.Join(env, ","),
		"port":          fmt.Sprint(c.Ports[0].ContainerPort, "/", c.Ports[0].HostPort),
		"readiness":     c.ReadinessProbe.HTTPGet.Path,
		"liveness":      c.LivenessProbe.HTTPGet.Path,
		"caps":          fmt.Sprint(c.SecurityContext.Capabilities.Drop, c.SecurityContext.Capabilities.Add),
		"runAsUser":     *c.SecurityContext.RunAsUser,
		"cpuRequest":    c.Resources.Requests.Cpu().String(),
		"podLabel":      ds.Spec.Template.Labels[PairLabel],
		"maxSurge":      ds.Spec.UpdateStrategy.RollingUpdate.MaxSurge.IntValue(),
		"owner":         ds.OwnerReferences[0].Kind + "/" + ds.OwnerReferences[0].Name,
		"controller":    *ds.OwnerReferences[0].Controller,
		"affinity":      fmt.Sprint(pod.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms),
		"stateMount":    fmt.Sprint(c.VolumeMounts[0].Name, " ", c.VolumeMounts[0].MountPath),
		"stateVolume":   fmt.Sprint(pod.Volumes[0].Name, " ", pod.Volumes[0].EmptyDir.Medium, " ", pod.Volumes[0].EmptyDir.SizeLimit),
	}
	want := map[string]any{
		"hostNetwork":   true,
		"dnsPolicy":     "ClusterFirstWithHostNet",
		"sa":            AgentServiceAccount,
		"grace":         int64(3610),
		"livenessGrace": int64(40),
		"nodeSelector":  "true",
		"toleration":    "dedicated=lb",
		"image":         testImage,
		"args":          "agent --pair=web --health-addr=:9451 --state-dir=/run/lbpair",
		"env":           "NODE_NAME=spec.nodeName,POD_NAME=metadata.name,POD_NAMESPACE=metadata.namespace,POD_IP=status.podIP",
		"port":          "9451/9451",
		"readiness":     "/readyz",
		"liveness":      "/healthz",
		"caps":          "[ALL] [NET_ADMIN NET_RAW NET_BIND_SERVICE]",
		"runAsUser":     int64(0),
		"cpuRequest":    "50m",
		"podLabel":      "web",
		"maxSurge":      0,
		"owner":         "LoadBalancerPair/web",
		"controller":    true,
		"affinity":      fmt.Sprintf("[{[{%s DoesNotExist []}] []}]", corev1.LabelNodeExcludeBalancers),
		"stateMount":    "state /run/lbpair",
		"stateVolume":   "state Memory 16Mi",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DaemonSet (-want +got):\n%s", diff)
	}

	eventually(t, "status written", func() error {
		p := getPair(t, ns, "web")
		if p.Status.ObservedGeneration != p.Generation || p.Status.VirtualRouterID != 51 || p.Status.AgentPort != 9451 {
			return fmt.Errorf("status %+v", p.Status)
		}
		// No DaemonSet controller runs in envtest: the agents are not
		// available, and no agent reported, so nothing is ready.
		for typ, want := range map[string]metav1.ConditionStatus{lbv1.ConditionAvailable: metav1.ConditionFalse, lbv1.ConditionReady: metav1.ConditionFalse, lbv1.ConditionVRIDConflict: metav1.ConditionFalse} {
			c := apimeta.FindStatusCondition(p.Status.Conditions, typ)
			if c == nil || c.Status != want {
				return fmt.Errorf("condition %s = %+v, want %s", typ, c, want)
			}
		}
		return nil
	})
	eventually(t, "Created event", func() error {
		if _, ok := eventReasons(t, ns, "web")["Created"]; !ok {
			return errors.New("no Created event")
		}
		return nil
	})

	// The agents' access: a ServiceAccount and RoleBinding owned by the pair,
	// and the binding to read nodes.
	var sa corev1.ServiceAccount
	eventually(t, "agent ServiceAccount", func() error {
		return k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: AgentServiceAccount}, &sa)
	})
	if len(sa.OwnerReferences) != 1 || sa.OwnerReferences[0].Name != "web" {
		t.Errorf("ServiceAccount owners = %+v, want the pair", sa.OwnerReferences)
	}
	var rb rbacv1.RoleBinding
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: AgentServiceAccount}, &rb); err != nil {
		t.Fatal(err)
	}
	if rb.RoleRef.Name != AgentClusterRole || rb.Subjects[0].Name != AgentServiceAccount {
		t.Errorf("RoleBinding = %+v", rb)
	}
	var crb rbacv1.ClusterRoleBinding
	if err := k8s.Get(ctx, types.NamespacedName{Name: AgentNodesClusterRole + ":" + ns}, &crb); err != nil {
		t.Fatal(err)
	}
	// Owned by the namespace, so that garbage collection removes it with the
	// namespace (envtest runs no garbage collector: the reference is checked).
	if err := ownedByNamespace(crb, ns); err != nil {
		t.Error(err)
	}

	// A second pair in the namespace shares the access objects and adds
	// its own owner reference, so they outlive the first pair.
	if err := k8s.Create(ctx, newPair(ns, "api", ptrTo(int32(52)), "198.18.0.101")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "second owner on the ServiceAccount", func() error {
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: AgentServiceAccount}, &sa); err != nil {
			return err
		}
		if len(sa.OwnerReferences) != 2 {
			return fmt.Errorf("owners %+v", sa.OwnerReferences)
		}
		return nil
	})
}

func TestUpdateFlowsToTheDaemonSet(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(60)), "198.18.0.100")); err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	eventually(t, "DaemonSet created", func() (err error) { ds, err = getDaemonSet(ns, "web"); return err })
	firstGeneration := ds.Generation

	updatePair(t, ns, "web", func(p *lbv1.LoadBalancerPair) {
		p.Spec.NodeSelector = map[string]string{"role": "edge"}
		p.Spec.AgentPort = ptrTo(int32(19000))
	})
	eventually(t, "DaemonSet updated", func() (err error) {
		ds, err = getDaemonSet(ns, "web")
		if err != nil {
			return err
		}
		if ds.Spec.Template.Spec.NodeSelector["role"] != "edge" || ds.Spec.Template.Spec.Containers[0].Ports[0].HostPort != 19000 {
			return fmt.Errorf("template not updated: %+v", ds.Spec.Template.Spec.NodeSelector)
		}
		return nil
	})
	if ds.Generation == firstGeneration {
		t.Errorf("DaemonSet generation did not move")
	}
	eventually(t, "Updated event", func() error {
		if _, ok := eventReasons(t, ns, "web")["Updated"]; !ok {
			return errors.New("no Updated event")
		}
		return nil
	})
}

// TestDrainTimeoutDoesNotRollTheAgents: the running agents take a new
// drainTimeout in place; the pod template, whose termination grace covers any
// drainTimeout, does not change, so no rollout moves the VIP and no old pod
// is killed while it drains to the new deadline.
func TestDrainTimeoutDoesNotRollTheAgents(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(61)), "198.18.0.100")); err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	eventually(t, "DaemonSet created", func() (err error) { ds, err = getDaemonSet(ns, "web"); return err })
	firstGeneration := ds.Generation

	updatePair(t, ns, "web", func(p *lbv1.LoadBalancerPair) { p.Spec.DrainTimeout = &metav1.Duration{Duration: 10 * time.Minute} })
	eventually(t, "the change reconciled", func() error {
		if p := getPair(t, ns, "web"); p.Status.ObservedGeneration != p.Generation {
			return fmt.Errorf("observedGeneration %d of %d", p.Status.ObservedGeneration, p.Generation)
		}
		return nil
	})
	ds, err := getDaemonSet(ns, "web")
	if err != nil {
		t.Fatal(err)
	}
	if ds.Generation != firstGeneration {
		t.Errorf("DaemonSet generation %d after a drainTimeout change, want %d: the agents would roll", ds.Generation, firstGeneration)
	}
	if got := ptr.Deref(ds.Spec.Template.Spec.TerminationGracePeriodSeconds, 0); got != terminationGrace {
		t.Errorf("terminationGracePeriodSeconds %d, want %d", got, terminationGrace)
	}
}

func TestDeleteLeavesGarbageCollectionToOwnerReferences(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	p := newPair(ns, "web", ptrTo(int32(61)), "198.18.0.100")
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	eventually(t, "DaemonSet created", func() (err error) { ds, err = getDaemonSet(ns, "web"); return err })
	ref := ds.OwnerReferences[0]
	if ref.UID != getPair(t, ns, "web").UID || !*ref.BlockOwnerDeletion {
		t.Errorf("owner reference %+v does not point at the pair with blockOwnerDeletion", ref)
	}
	if err := k8s.Delete(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, "pair gone", func() error {
		var gone lbv1.LoadBalancerPair
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), &gone); err == nil {
			return errors.New("still there")
		}
		return nil
	})
}

// A binding made before the manager set its owner, as older versions did,
// gains the namespace as owner at the next reconcile.
func TestAnExistingNodesBindingGainsTheNamespaceOwner(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: AgentNodesClusterRole + ":" + ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: AgentNodesClusterRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: AgentServiceAccount, Namespace: ns}},
	}
	if err := k8s.Create(ctx, crb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), crb) })
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(80)), "198.18.0.80")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the namespace owning the binding", func() error {
		var got rbacv1.ClusterRoleBinding
		if err := k8s.Get(ctx, types.NamespacedName{Name: crb.Name}, &got); err != nil {
			return err
		}
		return ownedByNamespace(got, ns)
	})
}

// ownedByNamespace checks that namespace ns is the binding's one owner.
func ownedByNamespace(crb rbacv1.ClusterRoleBinding, ns string) error {
	var nsObj corev1.Namespace
	if err := k8s.Get(context.Background(), types.NamespacedName{Name: ns}, &nsObj); err != nil {
		return err
	}
	if o := crb.OwnerReferences; len(o) != 1 || o[0].Kind != "Namespace" || o[0].APIVersion != "v1" || o[0].Name != ns || o[0].UID != nsObj.UID {
		return fmt.Errorf("ClusterRoleBinding %s owners = %+v, want namespace %s (uid %s)", crb.Name, o, ns, nsObj.UID)
	}
	return nil
}

// ownerUIDs lists the UIDs of an object's owners.
func ownerUIDs(o client.Object) []types.UID {
	var uids []types.UID
	for _, ref := range o.GetOwnerReferences() {
		uids = append(uids, ref.UID)
	}
	slices.Sort(uids)
	return uids
}

// Every pair of a namespace owns the agents' ServiceAccount and RoleBinding,
// so that they stay while one pair is left. Apply decodes the server's
// answer into the apply configuration: the ServiceAccount's answer, which
// lists the owners before this pair, must not change the owner the
// RoleBinding is then given.
func TestAgentAccessIsOwnedByEveryPairOfTheNamespace(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	var want []types.UID
	for i, name := range []string{"web", "api"} {
		p := newPair(ns, name, ptrTo(int32(233+i)), fmt.Sprintf("198.18.0.%d", 233+i))
		if err := k8s.Create(ctx, p); err != nil {
			t.Fatal(err)
		}
		// One after the other, so that the second pair finds the objects.
		eventually(t, "DaemonSet of "+name, func() error { _, err := getDaemonSet(ns, name); return err })
		want = append(want, p.UID)
	}
	slices.Sort(want)
	eventually(t, "both pairs owning the agents' access", func() error {
		var sa corev1.ServiceAccount
		var rb rbacv1.RoleBinding
		for _, o := range []client.Object{&sa, &rb} {
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: AgentServiceAccount}, o); err != nil {
				return err
			}
			if got := ownerUIDs(o); !slices.Equal(got, want) {
				return fmt.Errorf("%T owners %v, want %v", o, got, want)
			}
		}
		return nil
	})
}

// A pair may have a name of 253 characters; the field manager it adds its
// owner reference to the agents' access under may have 128.
func TestAPairWithTheLongestNameReconciles(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t)
	name := strings.Repeat("a", 253)
	p := newPair(ns, name, ptrTo(int32(235)), "198.18.0.235")
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, "DaemonSet and agents' access of the pair", func() error {
		if _, err := getDaemonSet(ns, name); err != nil {
			return err
		}
		var sa corev1.ServiceAccount
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: AgentServiceAccount}, &sa); err != nil {
			return err
		}
		if got := ownerUIDs(&sa); !slices.Equal(got, []types.UID{p.UID}) {
			return fmt.Errorf("ServiceAccount owners %v, want the pair %s", got, p.UID)
		}
		return nil
	})
}
