package controllers

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// applyClusterRoles creates or replaces, through c, the ClusterRoles of a
// config/rbac file.
func applyClusterRoles(t *testing.T, c client.Client, file string) {
	t.Helper()
	ctx := context.Background()
	data, err := os.ReadFile(filepath.Join(repoRoot, "config", "rbac", file))
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		var role rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict(doc, &role); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if role.Name == "" {
			continue
		}
		_ = c.Delete(ctx, &role)
		role.ResourceVersion = ""
		if err := c.Create(ctx, &role); err != nil {
			t.Fatalf("creating ClusterRole %s: %v", role.Name, err)
		}
	}
}

// The manager's generated ClusterRole is all it needs: a reconcile made with
// exactly its permissions creates the DaemonSet and the agents' access, and
// patches the status (merge patch and the JSON patch removing stale agents'
// entries), without a Forbidden error.
func TestReconcileWithTheManagersClusterRoleOnly(t *testing.T) {
	ctx := context.Background()
	c := managerClient(t, restConfig, k8s)

	ns := newNamespace(t)
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(212)), "198.18.0.212")); err != nil {
		t.Fatal(err)
	}
	// A fresh entry: the suite's manager keeps it, while the reconciler
	// below, once it has seen it and its clock has run ten minutes on, finds
	// it stale and removes it, and so has a status of its own to patch.
	now := metav1.NewMicroTime(time.Now())
	reportAgent(t, ns, "web", lbv1.AgentStatus{Node: ns + "-lb1", State: lbv1.StateMaster, Priority: 100, Since: now, LastUpdateTime: now})
	eventually(t, "the suite's manager sees the holder", func() error {
		if h := getPair(t, ns, "web").Status.Holder; h != ns+"-lb1" {
			return fmt.Errorf("holder %q", h)
		}
		return nil
	})

	var ahead time.Duration
	r := &LoadBalancerPairReconciler{
		Client:   c,
		Recorder: events.NewFakeRecorder(100),
		Agent:    AgentSettings{Image: testImage, Resources: DefaultAgentResources()},
		Now:      func() time.Time { return time.Now().Add(ahead) },
	}
	req := ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "web"}}
	for _, ahead = range []time.Duration{0, 10 * time.Minute} {
		if _, err := r.Reconcile(ctx, req); err != nil {
			t.Fatalf("reconcile with the manager's ClusterRole only, %v on: %v", ahead, err)
		}
	}
	p := getPair(t, ns, "web")
	if len(p.Status.Agents) != 0 || p.Status.Holder != "" {
		t.Errorf("status.agents = %+v, holder %q: want the stale entry and its holder gone", p.Status.Agents, p.Status.Holder)
	}
	if _, err := getDaemonSet(ns, "web"); err != nil {
		t.Errorf("DaemonSet: %v", err)
	}
}

// managerClient binds the manager's generated ClusterRoles, from config/rbac,
// to a user on the apiserver of cfg, through admin, and returns a client
// acting as that user.
func managerClient(t *testing.T, cfg *rest.Config, admin client.Client) client.Client {
	t.Helper()
	ctx := context.Background()
	applyClusterRoles(t, admin, "role.yaml")
	applyClusterRoles(t, admin, "agent_role.yaml")
	const user = "test:lbpair-manager"
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-lbpair-manager"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "lbpair-manager"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if err := admin.Create(ctx, crb); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user}
	c, err := client.New(cfg, client.Options{Scheme: admin.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	// The RBAC authorizer watches bindings: wait until the user can read.
	eventually(t, "the binding in effect", func() error {
		var l lbv1.LoadBalancerPairList
		return c.List(ctx, &l, client.Limit(1))
	})
	return c
}

// The manager's ClusterRole is enough under the
// OwnerReferencesPermissionEnforcement admission plugin, which OpenShift
// enables by default. The plugin asks for permissions beyond the requests'
// own: to set blockOwnerDeletion on the DaemonSet's owner reference, update
// on the pair's finalizers; to change the owner references of an existing
// object, as a namespace's second pair does on the agents' shared
// ServiceAccount and RoleBinding, delete on that object. The suite's
// manager would create those objects first, as an administrator, so this
// test has an apiserver of its own, where only the reconciler under test
// writes.
func TestReconcileWithTheManagersClusterRoleUnderOwnerReferencesPermissionEnforcement(t *testing.T) {
	ctx := context.Background()
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: filepath.Join(repoRoot, "bin"),
	}
	env.ControlPlane.GetAPIServer().Configure().Append("enable-admission-plugins", "OwnerReferencesPermissionEnforcement")
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting an apiserver with OwnerReferencesPermissionEnforcement: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping the apiserver: %v", err)
		}
	})
	admin, err := client.New(cfg, client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	c := managerClient(t, cfg, admin)

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "orpe"}}
	if err := admin.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	r := &LoadBalancerPairReconciler{
		Client:   c,
		Recorder: events.NewFakeRecorder(100),
		Agent:    AgentSettings{Image: testImage, Resources: DefaultAgentResources()},
	}
	for i, name := range []string{"web", "api"} {
		if err := admin.Create(ctx, newPair(ns.Name, name, ptrTo(int32(214+i)), fmt.Sprintf("198.18.0.%d", 214+i))); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Reconcile(ctx, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: ns.Name, Name: name}}); err != nil {
			t.Fatalf("reconcile of pair %d of a namespace with the manager's ClusterRole only: %v", i+1, err)
		}
		var ds appsv1.DaemonSet
		if err := admin.Get(ctx, types.NamespacedName{Namespace: ns.Name, Name: daemonSetName(name)}, &ds); err != nil {
			t.Fatalf("DaemonSet of %s: %v", name, err)
		}
	}
	var sa corev1.ServiceAccount
	var rb rbacv1.RoleBinding
	for _, o := range []client.Object{&sa, &rb} {
		if err := admin.Get(ctx, types.NamespacedName{Namespace: ns.Name, Name: AgentServiceAccount}, o); err != nil {
			t.Fatal(err)
		}
		var owners []string
		for _, ref := range o.GetOwnerReferences() {
			owners = append(owners, ref.Name)
		}
		if slices.Sort(owners); !slices.Equal(owners, []string{"api", "web"}) {
			t.Errorf("%T %s owners %q, want both pairs", o, o.GetName(), owners)
		}
	}
}
