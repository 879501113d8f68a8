package agent

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
)

// podCache lists its pods in the order given, as the informer's index
// lists them in no set order; nothing else of the cache is used.
type podCache struct {
	cache.Cache
	pods []corev1.Pod
	err  error
}

func (c podCache) List(_ context.Context, list client.ObjectList, _ ...client.ListOption) error {
	list.(*corev1.PodList).Items = c.pods
	return c.err
}

func agentPod(node string, ips ...string) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-" + node}, Spec: corev1.PodSpec{NodeName: node}}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

func TestPeers(t *testing.T) {
	leaving := agentPod("lb1", "198.18.0.11")
	leaving.DeletionTimestamp = &metav1.Time{}
	// lb4 during a rolling update: its old pod, terminating, and its new one
	// share the node's address.
	old, renewed := agentPod("lb4", "198.18.0.14"), agentPod("lb4", "198.18.0.14")
	old.DeletionTimestamp = &metav1.Time{}
	s := &clusterSource{o: Options{Namespace: "prod", Pair: "web", NodeName: "lb2"}, log: logr.Discard(), cache: podCache{pods: []corev1.Pod{
		agentPod("lb3", "198.18.0.13", "fd00:198:18::13"),
		agentPod("lb2", "198.18.0.12"), // this agent
		old,
		leaving, // the master stopping: it waits for an advert from its successor
		agentPod("lb5"),
		renewed,
	}}}
	peers, err := s.peers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range peers {
		got = append(got, a.String())
	}
	want := []string{"198.18.0.11", "198.18.0.13", "198.18.0.14", "fd00:198:18::13"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("peers (-want +got):\n%s", diff)
	}

	// No list is no peers: a unicast pair would advertise to the multicast group.
	s.cache = podCache{err: errors.New("the cache is not synced")}
	if peers, err := s.peers(context.Background()); err == nil {
		t.Errorf("peers without a pod list: %v and no error", peers)
	}
}

// An agent whose spec never applied writes an entry too (Init, with its
// configError); when its node leaves the pair, the entry goes, and stays gone.
func TestDeactivateRemovesTheEntryOfAnAgentNotRunning(t *testing.T) {
	var applied [][]any
	c := fake.NewClientBuilder().WithInterceptorFuncs(interceptor.Funcs{
		SubResourceApply: func(_ context.Context, _ client.Client, _ string, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
			data, err := json.Marshal(obj)
			if err != nil {
				return err
			}
			var u struct {
				Status struct{ Agents []any } `json:"status"`
			}
			if err := json.Unmarshal(data, &u); err != nil {
				return err
			}
			applied = append(applied, u.Status.Agents)
			return nil
		},
	}).Build()
	st := newStatusReporter(logr.Discard(), types.NamespacedName{Namespace: "prod", Name: "web"}, "lb1")
	st.c = c
	s := &clusterSource{log: logr.Discard(), status: st, servingKept: prometheus.NewGauge(prometheus.GaugeOpts{Name: "kept"})}
	// The sync that found the spec invalid resumed the writes.
	st.resume()

	s.deactivate("the node no longer matches spec.nodeSelector")
	if !st.paused.Load() {
		t.Error("the status writes go on after the node left the pair")
	}
	if len(applied) != 1 || len(applied[0]) != 0 {
		t.Errorf("applied %v, want the entry removed once", applied)
	}
	// Every later sync deactivates again: no more writes.
	s.deactivate("the node no longer matches spec.nodeSelector")
	if len(applied) != 1 {
		t.Errorf("applied %v, want the entry removed once", applied)
	}
}
