// Package controllers holds the manager's reconciler: it turns each
// LoadBalancerPair into a DaemonSet of agents, settles VRIDs between pairs,
// and derives the pair's status from the entries its agents write.
package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// FieldManager is the manager's server-side apply field manager.
const FieldManager = "lbpair-manager"

// resync re-reads a pair this often even without events, so that agents
// that stopped refreshing their entry are noticed.
const resync = 30 * time.Second

// LoadBalancerPairReconciler reconciles LoadBalancerPairs.
type LoadBalancerPairReconciler struct {
	client.Client
	Recorder events.EventRecorder
	Agent    AgentSettings
	// APIReader reads from the apiserver, bypassing the cache; the manager's
	// GetAPIReader. A VRID allocation lists the pairs through it (see
	// reconcile), and the pairs' namespaces are read through it. The client
	// is used when nil.
	APIReader client.Reader
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// WatchNamespace limits the pairs reconciled to one namespace; all when
	// empty. The pairs of every namespace are still read (see CacheOptions).
	WatchNamespace string

	// lastHolders remembers each pair's last holder, types.NamespacedName
	// to node name, to name it in the Event for the next one.
	lastHolders sync.Map
	// skews reads the agents' timestamps by the manager's clock.
	skews clockSkews
	// priorityWarnings remembers, for each pair (types.NamespacedName), the
	// nodes whose priority label its agents ignore, to the Warning Event
	// recorded for each (see checkPriorityLabels).
	priorityWarnings sync.Map
}

// The manager writes by server-side apply (create and patch) and patches the
// status (a merge patch, and a JSON patch to remove stale agents' entries);
// it never updates or deletes: garbage collection removes the children. It
// reads only pairs, DaemonSets, Nodes, the pairs' Namespaces (get, to own
// the agents' ClusterRoleBinding) and, at startup, the agents' PriorityClass
// (get, to refuse an --agent-priority-class that names none). rbac_test.go reconciles with
// exactly these permissions, under the OwnerReferencesPermissionEnforcement
// admission plugin (on in OpenShift), which asks for two more: update on
// loadbalancerpairs/finalizers to set blockOwnerDeletion on the DaemonSet's
// owner reference to its pair, and delete on the agents' ServiceAccount and
// RoleBinding, shared by a namespace's pairs, for each pair that adds its
// owner reference to them. The manager makes neither request itself.
// +kubebuilder:rbac:groups=lbpair.io,resources=loadbalancerpairs,verbs=get;list;watch
// +kubebuilder:rbac:groups=lbpair.io,resources=loadbalancerpairs/status,verbs=patch
// +kubebuilder:rbac:groups=lbpair.io,resources=loadbalancerpairs/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=daemonsets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=delete,resourceNames=lbpair-agent
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=rolebindings;clusterrolebindings,verbs=create;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=rolebindings,verbs=delete,resourceNames=lbpair-agent
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles,verbs=bind,resourceNames=lbpair-agent;lbpair-agent-nodes
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=scheduling.k8s.io,resources=priorityclasses,verbs=get

// Reconcile brings one pair's DaemonSet and status in line with its spec and
// its agents' reports.
func (r *LoadBalancerPairReconciler) Reconcile(ctx context.Context, req ctrl.Request) (res ctrl.Result, retErr error) {
	var pair lbv1.LoadBalancerPair
	if err := r.Get(ctx, req.NamespacedName, &pair); err != nil {
		if apierrors.IsNotFound(err) {
			r.lastHolders.Delete(req.NamespacedName)
			r.skews.forget(req.NamespacedName)
			r.priorityWarnings.Delete(req.NamespacedName)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !pair.DeletionTimestamp.IsZero() {
		// The DaemonSet and the agents' access go with the pair by
		// garbage collection; the agents give up the VIPs as they stop.
		return ctrl.Result{}, nil
	}
	before := pair.DeepCopy()
	defer func() {
		if equality.Semantic.DeepEqual(before.Status, pair.Status) {
			return
		}
		// A merge patch carries only the fields the manager changed; it
		// never rewrites status.agents, which the agents own.
		if err := r.Status().Patch(ctx, &pair, client.MergeFrom(before)); err != nil && !apierrors.IsNotFound(err) {
			retErr = errors.Join(retErr, fmt.Errorf("patching status: %w", err))
		}
	}()
	return r.reconcile(ctx, &pair)
}

func (r *LoadBalancerPairReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *LoadBalancerPairReconciler) reconcile(ctx context.Context, pair *lbv1.LoadBalancerPair) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	pair.Status.ObservedGeneration = pair.Generation

	// An allocation, of a VRID or of a virtual IP, reads the pairs from the
	// apiserver: the cache may not yet hold what the previous reconcile wrote
	// to another pair's status, and reconciles run one at a time, so this read
	// sees every allocation made.
	var reader client.Reader = r.Client
	if claimedVRID(pair) == 0 || !runsAllVIPs(pair) {
		reader = r.liveReader()
	}
	var all lbv1.LoadBalancerPairList
	if err := reader.List(ctx, &all); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing pairs for VRID and virtual IP checks: %w", err)
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes); err != nil {
		return ctrl.Result{}, fmt.Errorf("listing nodes for virtual IP checks: %w", err)
	}
	conflicts := append(vipConflicts(pair, all.Items), nodeAddressConflicts(pair, nodes.Items)...)
	if len(conflicts) > 0 {
		msg := vipConflictMessage(conflicts)
		if !apimeta.IsStatusConditionTrue(pair.Status.Conditions, lbv1.ConditionVIPConflict) {
			r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "VIPConflict", "CheckVirtualIPs", "%s", msg)
		}
		r.setCondition(pair, lbv1.ConditionVIPConflict, true, "VIPInUse", msg)
	} else {
		r.setCondition(pair, lbv1.ConditionVIPConflict, false, "VIPsUnique", "no other pair and no node uses these virtual IPs")
	}
	// Before the conflicts' own handling, which may apply the DaemonSet, whose
	// node selection this check guards.
	if msg := tooManyNodes(pair, nodes.Items); msg != "" {
		if c := apimeta.FindStatusCondition(pair.Status.Conditions, lbv1.ConditionAvailable); c == nil || c.Reason != "TooManyNodes" {
			r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "TooManyNodes", "CheckNodes", "%s", msg)
		}
		r.setCondition(pair, lbv1.ConditionAvailable, false, "TooManyNodes", msg)
		log.Info("Too many nodes selected; leaving the agents as they are", "limit", lbv1.MaxAgents)
		return r.updateFromAgents(ctx, pair)
	}
	if len(conflicts) > 0 {
		log.Info("Virtual IP conflict; the agents keep the virtual IPs they run with", "conflicts", conflicts)
		return r.keepRunning(ctx, pair)
	}

	d := decideVRID(pair, all.Items)
	switch {
	case d.Exhausted:
		if c := apimeta.FindStatusCondition(pair.Status.Conditions, lbv1.ConditionVRIDConflict); c == nil || c.Reason != "NoFreeVRID" {
			r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "NoFreeVRID", "AllocateVRID", "no virtual router ID is free")
		}
		r.setCondition(pair, lbv1.ConditionVRIDConflict, true, "NoFreeVRID", "all 255 virtual router IDs of this address family are in use, or derive an agent port that a pair proxies or uses; set spec.virtualRouterID (and spec.agentPort) or delete an unused pair")
		return ctrl.Result{RequeueAfter: resync}, nil
	case len(d.ConflictWith) > 0:
		msg := conflictMessage(claimedVRID(pair), d.ConflictWith)
		if !apimeta.IsStatusConditionTrue(pair.Status.Conditions, lbv1.ConditionVRIDConflict) {
			r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "VRIDConflict", "CheckVRID", "%s", msg)
		}
		r.setCondition(pair, lbv1.ConditionVRIDConflict, true, "VRIDInUse", msg)
		log.Info("VRID conflict; the agents keep the VRID they run with", "vrid", claimedVRID(pair), "with", d.ConflictWith)
		return r.keepRunning(ctx, pair)
	}
	r.setCondition(pair, lbv1.ConditionVRIDConflict, false, "VRIDUnique", fmt.Sprintf("virtual router ID %d is not used by another pair of this address family", d.VRID))
	port := agentPort(pair, d.VRID)
	if msg, holdBack := portConflicts(pair, d.VRID, all.Items, nodes.Items); msg != "" {
		if !apimeta.IsStatusConditionTrue(pair.Status.Conditions, lbv1.ConditionPortConflict) {
			r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "PortConflict", "CheckPorts", "%s", msg)
		}
		r.setCondition(pair, lbv1.ConditionPortConflict, true, "AgentPortInUse", msg)
		if holdBack {
			log.Info("Agent port conflict; the agents keep the agent port they run with", "agentPort", port, "vrid", d.VRID)
			// As for a VRID conflict: the agents of a running pair keep
			// their VRID and agent port, a new pair's are not started.
			return r.keepRunning(ctx, pair)
		}
		// The agents already listen on the agent port, or it is free:
		// holding the update back would protect nothing and only keep
		// new images and template changes from the agents.
		log.Info("Port conflict; updating the agents as usual", "agentPort", port, "vrid", d.VRID)
	} else {
		r.setCondition(pair, lbv1.ConditionPortConflict, false, "PortsUnique", fmt.Sprintf("agent port %d is none of the pair's ports, nor a port or agent port of another pair on its nodes", port))
	}
	if d.Allocated && pair.Status.VirtualRouterID != d.VRID {
		r.Recorder.Eventf(pair, nil, corev1.EventTypeNormal, "VRIDAllocated", "AllocateVRID", "allocated virtual router ID %d", d.VRID)
	}
	// Cleared on every count that holds agents back: they run with these.
	pair.Status.VirtualRouterID = d.VRID
	pair.Status.VirtualIPs = slices.Clone(pair.Spec.VirtualIPs)
	pair.Status.AgentPort = port

	return r.applyAgents(ctx, pair, port)
}

// keepRunning handles a pair whose spec asks for another pair's VRID or
// virtual IP: bad input never disturbs a running pair. Its agents read the
// VRID and virtual IPs the manager cleared from its status, which stays, and
// its DaemonSet, which holds neither, is still applied with the agent port
// they run with: new images and template changes reach them. A pair never
// cleared to run gets no agents.
func (r *LoadBalancerPairReconciler) keepRunning(ctx context.Context, pair *lbv1.LoadBalancerPair) (ctrl.Result, error) {
	if pair.Status.AgentPort == 0 {
		return r.updateFromAgents(ctx, pair)
	}
	return r.applyAgents(ctx, pair, pair.Status.AgentPort)
}

// applyAgents applies the agents' access and DaemonSet, with their agent
// port, then derives the status from their entries.
func (r *LoadBalancerPairReconciler) applyAgents(ctx context.Context, pair *lbv1.LoadBalancerPair, port int32) (ctrl.Result, error) {
	// Read from the apiserver, not the cache, which would watch every
	// namespace: the manager only needs its pairs' ones.
	var ns corev1.Namespace
	if err := r.liveReader().Get(ctx, client.ObjectKey{Name: pair.Namespace}, &ns); err != nil {
		return ctrl.Result{}, fmt.Errorf("reading namespace %s: %w", pair.Namespace, err)
	}
	err := r.ensureAgentAccess(ctx, pair, &ns)
	if err != nil {
		r.applyFailed(pair, "ApplyAgentAccess", err.Error())
	} else {
		err = r.applyDaemonSet(ctx, pair, port, &ns)
	}
	// The agents run on whatever was applied before, and fail over: the
	// status follows them even while an apply fails (a policy webhook that
	// refuses a new image, say), or it would name a holder long gone.
	res, uerr := r.updateFromAgents(ctx, pair)
	if err := errors.Join(err, uerr); err != nil {
		return ctrl.Result{}, err
	}
	return res, nil
}

// applyFailed reports, in the Available condition, an apply of the agents'
// objects that failed, with a Warning Event only when the failure is new:
// each status write of an agent reconciles the pair again.
func (r *LoadBalancerPairReconciler) applyFailed(pair *lbv1.LoadBalancerPair, action, msg string) {
	if c := apimeta.FindStatusCondition(pair.Status.Conditions, lbv1.ConditionAvailable); c == nil || c.Reason != "ApplyFailed" || c.Message != msg {
		r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "ApplyFailed", action, "%s", msg)
	}
	r.setCondition(pair, lbv1.ConditionAvailable, false, "ApplyFailed", msg)
}

// applyDaemonSet writes the agents' DaemonSet by server-side apply and
// reports its rollout in the Available condition.
func (r *LoadBalancerPairReconciler) applyDaemonSet(ctx context.Context, pair *lbv1.LoadBalancerPair, port int32, ns *corev1.Namespace) error {
	key := types.NamespacedName{Namespace: pair.Namespace, Name: daemonSetName(pair.Name)}
	var existing appsv1.DaemonSet
	existed := true
	if err := r.Get(ctx, key, &existing); apierrors.IsNotFound(err) {
		existed = false
	} else if err != nil {
		return fmt.Errorf("reading DaemonSet %s: %w", key, err)
	}
	ac := desiredDaemonSet(pair, port, r.Agent)
	if err := r.Apply(ctx, ac, client.FieldOwner(FieldManager), client.ForceOwnership); err != nil {
		r.applyFailed(pair, "ApplyDaemonSet", fmt.Sprintf("applying DaemonSet %s: %v", key.Name, err))
		return fmt.Errorf("applying DaemonSet %s: %w", key, err)
	}
	// Apply decodes the server's answer into ac: the cache may not have the
	// DaemonSet yet, the answer does.
	generation := ptr.Deref(ac.Generation, 0)
	switch {
	case !existed && generation == 1:
		r.Recorder.Eventf(pair, nil, corev1.EventTypeNormal, "Created", "ApplyDaemonSet", "created DaemonSet %s", key.Name)
	case existed && generation != existing.Generation:
		r.Recorder.Eventf(pair, nil, corev1.EventTypeNormal, "Updated", "ApplyDaemonSet", "updated DaemonSet %s", key.Name)
	}
	var st appsv1.DaemonSetStatus
	if ac.Status != nil {
		st = appsv1.DaemonSetStatus{
			DesiredNumberScheduled: ptr.Deref(ac.Status.DesiredNumberScheduled, 0),
			UpdatedNumberScheduled: ptr.Deref(ac.Status.UpdatedNumberScheduled, 0),
			NumberAvailable:        ptr.Deref(ac.Status.NumberAvailable, 0),
			ObservedGeneration:     ptr.Deref(ac.Status.ObservedGeneration, 0),
		}
	}
	ok, msg := daemonSetAvailable(st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberAvailable, st.ObservedGeneration, generation)
	reason := "AgentsAvailable"
	switch hint := podSecurityHint(ns); {
	case !ok && hint != "":
		reason, msg = "PodSecurity", msg+"; "+hint
	case !ok:
		reason = "AgentsNotAvailable"
	}
	r.setCondition(pair, lbv1.ConditionAvailable, ok, reason, msg)
	return nil
}

// updateFromAgents derives holder and conditions from the agents' entries,
// removes entries of agents that are gone, and reports failovers.
func (r *LoadBalancerPairReconciler) updateFromAgents(ctx context.Context, pair *lbv1.LoadBalancerPair) (ctrl.Result, error) {
	now := r.now()
	skews := r.skews.observe(types.NamespacedName{Namespace: pair.Namespace, Name: pair.Name}, pair.Status.Agents, now)
	s := summarizeAgents(pair.Status.Agents, pair.Status.Holder, pair.Status.HolderSince, now, skews)
	if len(s.Stale) > 0 {
		if err := r.removeAgentEntries(ctx, pair, s.Stale); err != nil {
			return ctrl.Result{}, err
		}
	}
	desired, err := r.desiredAgents(ctx, pair)
	if err != nil {
		return ctrl.Result{}, err
	}
	if s.IgnoredPriorities, err = r.checkPriorityLabels(ctx, pair); err != nil {
		return ctrl.Result{}, err
	}
	if s.Holder != pair.Status.Holder {
		r.reportHolderChange(pair, s)
	}
	if len(s.Masters) > 1 && !apimeta.IsStatusConditionTrue(pair.Status.Conditions, lbv1.ConditionSplitBrain) {
		r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "SplitBrain", "Election", "agents on %s all hold the virtual IPs", strings.Join(s.Masters, ", "))
	}
	pair.Status.Holder = s.Holder
	pair.Status.HolderSince = s.HolderSince
	pair.Status.Nodes = nodesSummary(pair.Status.Agents, s.Stale, s.Unknown)
	for _, c := range agentConditions(s, desired, pair.Generation) {
		apimeta.SetStatusCondition(&pair.Status.Conditions, c)
	}
	if s.Holder == "" {
		// No agent serves: a conflict that keeps them from starting is the
		// reason to show first.
		for _, t := range []string{lbv1.ConditionVIPConflict, lbv1.ConditionVRIDConflict, lbv1.ConditionPortConflict} {
			if c := apimeta.FindStatusCondition(pair.Status.Conditions, t); c != nil && c.Status == metav1.ConditionTrue {
				r.setCondition(pair, lbv1.ConditionReady, false, t, "no agent holds the virtual IPs: "+c.Message)
				break
			}
		}
	} else {
		// A running pair whose spec asks for another pair's VRID or virtual
		// IP serves on with what it had: it is not ready with the spec it has
		// now, which kubectl wait and rollout tools read Ready for.
		for _, t := range []string{lbv1.ConditionVIPConflict, lbv1.ConditionVRIDConflict} {
			if c := apimeta.FindStatusCondition(pair.Status.Conditions, t); c != nil && c.Status == metav1.ConditionTrue {
				r.setCondition(pair, lbv1.ConditionReady, false, t, fmt.Sprintf("%s serves the virtual IPs %s with virtual router ID %d, not the spec's: %s",
					s.Holder, strings.Join(pair.Status.VirtualIPs, ", "), pair.Status.VirtualRouterID, c.Message))
				break
			}
		}
	}
	requeue := resync
	if !s.NextChange.IsZero() {
		// A little after the change, so that the entry has crossed the line.
		requeue = min(requeue, s.NextChange.Sub(now)+time.Second)
	}
	return ctrl.Result{RequeueAfter: max(requeue, time.Second)}, nil
}

// reportHolderChange records an Event for a change of holder. A master that
// fails or stops usually reports Fault or Backup before the new master
// reports Master, so the status passes through "no holder": the Event for
// the new holder still names the one before, remembered per pair.
func (r *LoadBalancerPairReconciler) reportHolderChange(pair *lbv1.LoadBalancerPair, s agentSummary) {
	key := types.NamespacedName{Namespace: pair.Namespace, Name: pair.Name}
	if s.Holder == "" {
		r.Recorder.Eventf(pair, nil, corev1.EventTypeWarning, "NoHolder", "Failover", "no agent holds the virtual IPs (was %s)", pair.Status.Holder)
		return
	}
	previous := pair.Status.Holder
	if previous == "" {
		if last, ok := r.lastHolders.Load(key); ok {
			previous = last.(string)
		}
	}
	r.lastHolders.Store(key, s.Holder)
	because := ""
	if s.HolderEntry != nil && s.HolderEntry.Reason != "" {
		because = ": " + s.HolderEntry.Reason
	}
	if previous == "" || previous == s.Holder {
		r.Recorder.Eventf(pair, nil, corev1.EventTypeNormal, "HolderElected", "Failover", "%s holds the virtual IPs%s", s.Holder, because)
		return
	}
	r.Recorder.Eventf(pair, nil, corev1.EventTypeNormal, "Failover", "Failover", "virtual IPs moved from %s to %s%s", previous, s.Holder, because)
}

// desiredAgents is how many agents should run: the DaemonSet's count once a
// DaemonSet controller has seen it, else the nodes the pair selects that are
// not excluded from load balancers.
func (r *LoadBalancerPairReconciler) desiredAgents(ctx context.Context, pair *lbv1.LoadBalancerPair) (int32, error) {
	var ds appsv1.DaemonSet
	err := r.Get(ctx, types.NamespacedName{Namespace: pair.Namespace, Name: daemonSetName(pair.Name)}, &ds)
	if err == nil && ds.Status.ObservedGeneration > 0 {
		return ds.Status.DesiredNumberScheduled, nil
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("reading the pair's DaemonSet: %w", err)
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes, client.MatchingLabelsSelector{Selector: labels.SelectorFromSet(pair.Spec.NodeSelector)}); err != nil {
		return 0, fmt.Errorf("listing nodes: %w", err)
	}
	n := int32(0)
	for i := range nodes.Items {
		if !lbv1.ExcludedFromLoadBalancers(&nodes.Items[i]) {
			n++
		}
	}
	return n, nil
}

// removeAgentEntries deletes entries of agents that stopped reporting. A
// JSON patch with a test per entry removes exactly those entries and fails,
// to be retried, if the list moved meanwhile; agents' own writes are never
// overwritten.
func (r *LoadBalancerPairReconciler) removeAgentEntries(ctx context.Context, pair *lbv1.LoadBalancerPair, nodes []string) error {
	stale := map[string]bool{}
	for _, n := range nodes {
		stale[n] = true
	}
	var ops []map[string]any
	// Remove from the end so earlier indexes stay valid.
	// Each removal tests that the entry is still the one found stale: an
	// agent back from its outage, or a cache that lags, must not lose a fresh
	// entry (the patch then fails as a whole, and the next reconcile looks
	// again).
	for i := len(pair.Status.Agents) - 1; i >= 0; i-- {
		if e := pair.Status.Agents[i]; stale[e.Node] {
			path := fmt.Sprintf("/status/agents/%d", i)
			ops = append(ops,
				map[string]any{"op": "test", "path": path + "/node", "value": e.Node},
				map[string]any{"op": "test", "path": path + "/lastUpdateTime", "value": e.LastUpdateTime},
				map[string]any{"op": "remove", "path": path})
		}
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	if err := r.Status().Patch(ctx, pair.DeepCopy(), client.RawPatch(types.JSONPatchType, patch)); err != nil {
		return fmt.Errorf("removing status entries of gone agents %v: %w", nodes, err)
	}
	r.Recorder.Eventf(pair, nil, corev1.EventTypeNormal, "AgentGone", "Cleanup", "removed the status of agents that stopped reporting: %s", strings.Join(nodes, ", "))
	// pair.Status.Agents is left as read: the status merge patch must never
	// carry the list, which the agents own.
	return nil
}

func (r *LoadBalancerPairReconciler) setCondition(pair *lbv1.LoadBalancerPair, t string, ok bool, reason, msg string) {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	apimeta.SetStatusCondition(&pair.Status.Conditions, metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg, ObservedGeneration: pair.Generation})
}

// CacheOptions is the manager's cache for a reconciler of the pairs of
// watchNamespace, or of every namespace when it is empty. The pairs
// themselves are cached from every namespace all the same: a VRID must be
// unique across all pairs, whichever manager runs them, and a conflict with
// a pair of another namespace must be seen, and rechecked when that pair
// changes, as one within the namespace is.
//
// The cache holds every Node of the cluster, so it keeps of each only what
// the manager reads (nodeForCache), and only the DaemonSets the manager
// writes; no object keeps its managedFields, which on a pair grow with an
// entry per agent.
func CacheOptions(watchNamespace string) cache.Options {
	opts := cache.Options{
		DefaultTransform: cache.TransformStripManagedFields(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Node{}:      {Transform: nodeForCache},
			&appsv1.DaemonSet{}: {Label: labels.SelectorFromSet(labels.Set{managedByLabel: managerName})},
		},
	}
	if watchNamespace != "" {
		opts.DefaultNamespaces = map[string]cache.Config{watchNamespace: {}}
		// An empty map, not nil, caches every namespace. Nodes are
		// cluster-scoped, so the default namespace does not limit them.
		opts.ByObject[&lbv1.LoadBalancerPair{}] = cache.ByObject{Namespaces: map[string]cache.Config{}}
	}
	return opts
}

// nodeForCache keeps of a Node what the manager reads: its labels
// (nodeSelector, exclusion from load balancers), taints (tolerations) and
// addresses (virtual IPs that are a node's). The rest of a node's status (its
// images, conditions, capacity) runs to tens of kilobytes a node.
func nodeForCache(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              n.Name,
			UID:               n.UID,
			ResourceVersion:   n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp,
			DeletionTimestamp: n.DeletionTimestamp,
			Labels:            n.Labels,
		},
		Spec:   corev1.NodeSpec{Taints: n.Spec.Taints},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}, nil
}

// watched tells whether the reconciler runs the pairs of namespace ns.
func (r *LoadBalancerPairReconciler) watched(ns string) bool {
	return r.WatchNamespace == "" || ns == r.WatchNamespace
}

// SetupWithManager registers the reconciler. Besides its own pair and
// DaemonSet, a pair is reconciled when another pair appears, goes, changes
// its spec or takes, gives up or loses a VRID or virtual IPs, since that may
// settle or create a conflict; that other pair may be of any namespace.
func (r *LoadBalancerPairReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		For(&lbv1.LoadBalancerPair{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool { return r.watched(o.GetNamespace()) }))).
		Owns(&appsv1.DaemonSet{}).
		Watches(&lbv1.LoadBalancerPair{}, handler.EnqueueRequestsFromMapFunc(r.otherPairs), builder.WithPredicates(predicate.Funcs{
			UpdateFunc:  func(e event.UpdateEvent) bool { return conflictInputsChanged(e.ObjectOld, e.ObjectNew) },
			CreateFunc:  func(event.CreateEvent) bool { return true },
			DeleteFunc:  func(event.DeleteEvent) bool { return true },
			GenericFunc: func(event.GenericEvent) bool { return false },
		})).
		Named("loadbalancerpair").
		Complete(r)
}

// conflictInputsChanged tells whether an update of a pair can change another
// pair's VRID, virtual IP or port decision: decideVRID, vipConflicts and
// portConflicts read the spec, status.virtualRouterID, status.virtualIPs,
// status.agentPort and the VRIDConflict and PortConflict conditions. Two
// pairs allocated together may both see the other without a VRID yet and
// take the same one; the later status write of each makes the other
// recheck, and the loser moves.
func conflictInputsChanged(oldObj, newObj client.Object) bool {
	o, okOld := oldObj.(*lbv1.LoadBalancerPair)
	n, okNew := newObj.(*lbv1.LoadBalancerPair)
	if !okOld || !okNew {
		return true
	}
	inConflict := func(p *lbv1.LoadBalancerPair, t string) bool {
		return apimeta.IsStatusConditionTrue(p.Status.Conditions, t)
	}
	return o.Generation != n.Generation ||
		o.Status.VirtualRouterID != n.Status.VirtualRouterID ||
		!slices.Equal(o.Status.VirtualIPs, n.Status.VirtualIPs) ||
		o.Status.AgentPort != n.Status.AgentPort ||
		inConflict(o, lbv1.ConditionVRIDConflict) != inConflict(n, lbv1.ConditionVRIDConflict) ||
		inConflict(o, lbv1.ConditionPortConflict) != inConflict(n, lbv1.ConditionPortConflict)
}

// liveReader reads from the apiserver when the reconciler has an APIReader.
func (r *LoadBalancerPairReconciler) liveReader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

func (r *LoadBalancerPairReconciler) otherPairs(ctx context.Context, obj client.Object) []reconcile.Request {
	var all lbv1.LoadBalancerPairList
	if err := r.List(ctx, &all); err != nil {
		logf.FromContext(ctx).Error(err, "Listing pairs to recheck VRIDs")
		return nil
	}
	var out []reconcile.Request
	for _, p := range all.Items {
		if p.UID != obj.GetUID() && r.watched(p.Namespace) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}})
		}
	}
	return out
}

// nodesSummary lists the agents as node:state, for the NODES column. Stale
// entries are left out, and unknown ones show as Unknown rather than as the
// state they last reported.
func nodesSummary(agents []lbv1.AgentStatus, stale, unknown []string) string {
	var parts []string
	for _, a := range agents {
		switch {
		case slices.Contains(stale, a.Node):
		case slices.Contains(unknown, a.Node):
			parts = append(parts, a.Node+":Unknown")
		default:
			parts = append(parts, a.Node+":"+string(a.State))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
