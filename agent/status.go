package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/lbpair/lbpair/agent/vrrp"
	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

const (
	// statusRefresh is how often an agent rewrites its entry when nothing
	// changed, so that the manager can tell a live agent from a gone one.
	statusRefresh = 10 * time.Second
	// statusTimeout bounds one status write.
	statusTimeout = 10 * time.Second
	// minRetry and maxBackoff bound the wait after a failed write. A
	// transition during the backoff is retried after minRetry, so that a
	// failover reaches the status as soon as the apiserver answers again;
	// maxBackoff stays well below the manager's liveness window.
	minRetry   = time.Second
	maxBackoff = 20 * time.Second
)

// FieldManager is the server-side apply field manager of the agent on node;
// each agent owns exactly its own entry of status.agents. A node name may be
// longer than a field manager may be.
func FieldManager(node string) string { return lbv1.FieldManagerFor("lbpair-agent", node) }

// statusReporter mirrors the agent's state into its entry of the pair's
// status.agents. It writes on every transition (signalled by notify, never
// from the packet path) and every statusRefresh, and backs off while the
// apiserver fails. It starts paused: an agent whose pair is gone or whose
// node is not selected has no entry.
type statusReporter struct {
	log   logr.Logger
	agent *Agent
	key   types.NamespacedName
	node  string
	kick  chan struct{}

	c      client.Client
	addr   func() string
	done   chan struct{}
	paused atomic.Bool
	// configErr is why the pair's current spec was not applied; empty when it was.
	configErr atomic.Pointer[string]
	// writeMu orders writes and removal.
	writeMu sync.Mutex

	// idleSince is when the agent was last seen not running, so that the
	// entry of an agent in Init or Fault keeps its since across refreshes.
	idleSince time.Time
}

func newStatusReporter(log logr.Logger, key types.NamespacedName, node string) *statusReporter {
	r := &statusReporter{log: log, key: key, node: node, kick: make(chan struct{}, 1)}
	r.paused.Store(true)
	return r
}

// notify asks for a write soon; it never blocks.
func (r *statusReporter) notify(vrrp.Transition) {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// setConfigError records why the pair's current spec was not applied (nil: it was),
// and asks for a write when that changes.
func (r *statusReporter) setConfigError(err error) {
	msg := ""
	if err != nil {
		msg = shorten(err.Error(), maxConfigError)
	}
	if old := r.configErr.Swap(&msg); old == nil || *old != msg {
		r.notify(vrrp.Transition{})
	}
}

// The CRD's bounds on status.agents[].configError and reason. The apiserver
// refuses the whole entry when one string is longer, so a long reason (a
// Fault naming many listeners) would freeze the entry while it lasts.
const (
	maxConfigError = 1024
	maxReason      = 256
)

// shorten cuts s to at most limit bytes, on a UTF-8 boundary, ending it
// with "..." when it cuts. The CRD counts characters; bytes are never fewer.
func shorten(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const ellipsis = "..."
	cut := limit - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}

// pause stops the writes until resume, and tells whether they were going.
func (r *statusReporter) pause() bool { return !r.paused.Swap(true) }

// resume starts the writes again, at once if they were paused.
func (r *statusReporter) resume() {
	if r.paused.Swap(false) {
		r.notify(vrrp.Transition{})
	}
}

func (r *statusReporter) start(ctx context.Context, c client.Client, addr func() string) {
	r.c, r.addr, r.done = c, addr, make(chan struct{})
	go r.loop(ctx)
}

func (r *statusReporter) loop(ctx context.Context) {
	defer close(r.done)
	backoff := minRetry
	// Since Go 1.23 a Reset timer never delivers a stale tick, so it needs
	// no draining.
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.kick:
		case <-timer.C:
		}
		err := r.writeUnlessPaused(ctx)
		if err == nil || apierrors.IsNotFound(err) {
			// A pair deleted a moment ago: the cache tells sync soon, which
			// pauses the writes; until then there is nothing to retry.
			backoff = minRetry
			timer.Reset(statusRefresh)
			continue
		}
		delay := jitter(backoff)
		r.log.Error(err, "Writing this agent's status; retrying", "in", delay.Round(time.Millisecond))
		backoff = min(2*backoff, maxBackoff)
		timer.Reset(delay)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.kick:
			// A transition during the backoff is retried after minRetry.
			timer.Reset(minRetry)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		timer.Reset(0)
	}
}

// writeUnlessPaused writes the entry unless the reporter is paused. It holds
// writeMu so that a write cannot land after remove.
func (r *statusReporter) writeUnlessPaused(ctx context.Context) error {
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	if r.paused.Load() {
		return nil
	}
	return r.write(ctx)
}

// jitter spreads d over [d/2, d), so that agents that lost the apiserver
// together do not come back in step.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d/2)
}

// entry is this agent's status.agents item.
func (r *statusReporter) entry(now time.Time) lbv1.AgentStatus {
	return r.entryOf(r.agent.Status(), now)
}

// entryOf builds the status.agents item from the agent's status st.
func (r *statusReporter) entryOf(st Status, now time.Time) lbv1.AgentStatus {
	if st.Running {
		r.idleSince = time.Time{}
	} else if r.idleSince.IsZero() {
		r.idleSince = now
	}
	e := lbv1.AgentStatus{
		Node:           r.node,
		State:          lbv1.StateInit,
		Since:          metav1.NewMicroTime(r.idleSince),
		LastUpdateTime: metav1.NewMicroTime(now),
		Address:        r.addr(),
	}
	if msg := r.configErr.Load(); msg != nil {
		e.ConfigError = *msg
	}
	if st.Running {
		e.Since = metav1.NewMicroTime(now)
		e.State = lbv1.VRRPState(st.VRRP.State.String())
		e.Priority = int32(st.VRRP.EffectivePriority)
		e.Reason = shorten(st.VRRP.Reason, maxReason)
		if !st.VRRP.Since.IsZero() {
			e.Since = metav1.NewMicroTime(st.VRRP.Since)
		}
		// Not the pod's address: the router sends from the interface it runs on,
		// and from a link-local address for IPv6.
		if a := st.VRRP.Address; a.IsValid() {
			e.Address = a.WithZone("").String()
		}
	} else if st.Err != nil {
		e.State, e.Reason = lbv1.StateFault, shorten(st.Err.Error(), maxReason)
	}
	for _, p := range st.Ports {
		e.Ports = append(e.Ports, lbv1.PortStatus{Name: p.Name, HealthyBackends: int32(p.HealthyBackends), Backends: int32(p.Backends)})
	}
	return e
}

func (r *statusReporter) write(ctx context.Context) error {
	e := r.entry(time.Now())
	item, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&e)
	if err != nil {
		return fmt.Errorf("encoding status entry: %w", err)
	}
	return r.apply(ctx, []any{item})
}

// remove gives up this agent's entry, on a graceful stop.
func (r *statusReporter) remove() {
	if r.c == nil {
		return
	}
	r.writeMu.Lock()
	defer r.writeMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.apply(ctx, []any{}); err != nil && !apierrors.IsNotFound(err) {
		r.log.Error(err, "Removing this agent's status entry")
	}
}

func (r *statusReporter) apply(ctx context.Context, agents []any) error {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": lbv1.GroupVersion.String(),
		"kind":       "LoadBalancerPair",
		"metadata":   map[string]any{"name": r.key.Name, "namespace": r.key.Namespace},
		"status":     map[string]any{"agents": agents},
	}}
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	err := r.c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldManager(r.node)), client.ForceOwnership)
	if err != nil {
		return fmt.Errorf("applying status.agents[%s] of %s: %w", r.node, r.key, err)
	}
	return nil
}
