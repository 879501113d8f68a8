package controllers

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// realisticNode is a Node with the status a kubelet reports: fifty images,
// conditions, capacity, system information, and annotations of the kind
// network plugins add.
func realisticNode(name string) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{"kubernetes.io/hostname": name, "lbpair.io/lb": "true", "topology.kubernetes.io/zone": "zone-a"},
			Annotations: map[string]string{},
		},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "dedicated", Value: "lb", Effect: corev1.TaintEffectNoSchedule}}},
	}
	for i := range 8 {
		n.Annotations[fmt.Sprintf("network.example/annotation-%d", i)] = fmt.Sprintf(`{"interfaces":["eth%d"],"addresses":["198.18.%d.1/24"],"mac":"02:00:00:00:00:%02x"}`, i, i, i)
	}
	return n
}

func realisticNodeStatus(n *corev1.Node, i int) {
	n.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)}, {Type: corev1.NodeHostName, Address: n.Name}},
		Capacity:  corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("128Gi"), corev1.ResourcePods: resource.MustParse("110")},
		NodeInfo:  corev1.NodeSystemInfo{MachineID: "0123456789abcdef0123456789abcdef", KernelVersion: "6.12.0-1-amd64", OSImage: "Debian GNU/Linux 13", ContainerRuntimeVersion: "containerd://2.1.0", KubeletVersion: "v1.37.0", OperatingSystem: "linux", Architecture: "amd64"},
	}
	for _, t := range []corev1.NodeConditionType{corev1.NodeReady, corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientResources", Message: "kubelet has sufficient resources available", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()})
	}
	for j := range 50 {
		n.Status.Images = append(n.Status.Images, corev1.ContainerImage{
			Names:     []string{fmt.Sprintf("registry.example/team-%d/service-%d@sha256:%064x", j%7, j, j), fmt.Sprintf("registry.example/team-%d/service-%d:v1.%d.0", j%7, j, j)},
			SizeBytes: int64(50+j) << 20,
		})
	}
}

// createNode creates n with its status, as a node and its kubelet would.
func createNode(ctx context.Context, n *corev1.Node, i int) error {
	if err := k8s.Create(ctx, n); err != nil {
		return err
	}
	realisticNodeStatus(n, i)
	return k8s.Status().Update(ctx, n)
}

// TestCacheKeepsWhatTheManagerReads: the manager's cache holds of a Node its labels,
// taints and addresses and nothing of its status besides, and no object its
// managedFields; it holds the DaemonSets the manager writes and no other.
func TestCacheKeepsWhatTheManagerReads(t *testing.T) {
	ctx := context.Background()
	node := realisticNode("cache-test-node")
	if err := createNode(ctx, node, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), node) })
	ns := newNamespace(t)
	foreign := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "someone-elses"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "x"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.example/x"}}},
			},
		},
	}
	if err := k8s.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, newPair(ns, "web", ptrTo(int32(81)), "198.18.0.181")); err != nil {
		t.Fatal(err)
	}

	c := startCache(t, CacheOptions(""))
	var cached corev1.Node
	if err := c.Get(ctx, client.ObjectKey{Name: node.Name}, &cached); err != nil {
		t.Fatal(err)
	}
	want := corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: node.Labels},
		Spec:       corev1.NodeSpec{Taints: node.Spec.Taints},
		Status:     corev1.NodeStatus{Addresses: node.Status.Addresses},
	}
	got := cached.DeepCopy()
	got.TypeMeta, got.UID, got.ResourceVersion, got.CreationTimestamp = metav1.TypeMeta{}, "", "", metav1.Time{}
	if diff := cmp.Diff(want, *got); diff != "" {
		t.Errorf("cached Node (-want +got):\n%s", diff)
	}

	var dss appsv1.DaemonSetList
	eventually(t, "the pair's DaemonSet in the cache", func() error {
		if err := c.List(ctx, &dss, client.InNamespace(ns)); err != nil {
			return err
		}
		if len(dss.Items) != 1 || dss.Items[0].Name != daemonSetName("web") {
			var names []string
			for _, ds := range dss.Items {
				names = append(names, ds.Name)
			}
			return fmt.Errorf("cached DaemonSets %v, want only %s", names, daemonSetName("web"))
		}
		return nil
	})
	var pair lbv1.LoadBalancerPair
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, &pair); err != nil {
		t.Fatal(err)
	}
	if len(pair.ManagedFields) != 0 || len(dss.Items[0].ManagedFields) != 0 {
		t.Errorf("managedFields cached: pair %d entries, DaemonSet %d", len(pair.ManagedFields), len(dss.Items[0].ManagedFields))
	}
}

// startCache runs a cache with opts until the end of the test.
func startCache(t testing.TB, opts cache.Options) cache.Cache {
	t.Helper()
	opts.Scheme = k8s.Scheme()
	c, err := cache.New(restConfig, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.Start(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	// Informers start on first use.
	for _, obj := range []client.Object{&corev1.Node{}, &appsv1.DaemonSet{}, &lbv1.LoadBalancerPair{}} {
		if _, err := c.GetInformer(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	syncCtx, stop := context.WithTimeout(ctx, time.Minute)
	defer stop()
	if !c.WaitForCacheSync(syncCtx) {
		t.Fatal("the cache did not sync")
	}
	return c
}

// BenchmarkNodeCacheMemory measures the heap a cache of 1,000 Nodes with a kubelet's
// status takes, with the manager's cache options and with controller-runtime's
// defaults: go test -run '^$' -bench NodeCacheMemory -benchtime 1x ./controllers/
func BenchmarkNodeCacheMemory(b *testing.B) {
	ctx := context.Background()
	const nodes = 1000
	for i := range nodes {
		n := realisticNode(fmt.Sprintf("bench-node-%04d", i))
		if err := createNode(ctx, n, i); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = k8s.Delete(context.Background(), n) })
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for _, tc := range []struct {
		name string
		opts cache.Options
	}{{"manager", CacheOptions("")}, {"defaults", cache.Options{}}} {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				before := heap()
				c := startCache(b, tc.opts)
				var list corev1.NodeList
				if err := c.List(ctx, &list); err != nil || len(list.Items) < nodes {
					b.Fatalf("%d nodes cached (%v)", len(list.Items), err)
				}
				list = corev1.NodeList{}
				b.ReportMetric(float64(heap()-before)/nodes, "heap-B/node")
			}
		})
	}
}
