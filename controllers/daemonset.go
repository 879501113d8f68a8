package controllers

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"

	lbv1 "github.com/lbpair/lbpair/api/v1alpha1"
)

// Labels on the agents' DaemonSet and pods. PairLabel, with the value
// lbv1.PairLabelValue(pair name), is what agents use to find their peers' pods.
const (
	PairLabel      = lbv1.PairLabel
	nameLabel      = "app.kubernetes.io/name"
	instanceLabel  = "app.kubernetes.io/instance"
	managedByLabel = "app.kubernetes.io/managed-by"
	agentName      = "lbpair-agent"
	managerName    = "lbpair"
)

// AgentServiceAccount is the ServiceAccount the manager creates in each
// namespace with pairs, bound to the lbpair-agent ClusterRoles.
const AgentServiceAccount = "lbpair-agent"

// terminationGrace is the agents' termination grace period in seconds: the
// longest drainTimeout the API allows (1h), plus a margin for the handover
// and the status write, so that the agent's own deadline, not SIGKILL, ends
// any drain. It is an upper bound only, as the agent exits once drained. A
// grace that followed spec.drainTimeout would roll the agents at each change
// (a VIP move per node), and the old pods, deleted with their old grace,
// would be killed while draining to the new, longer deadline.
const terminationGrace = 3600 + drainMargin

// drainMargin is the time an agent needs past its drain: the VRRP handover
// before it and the removal of its status entry after it.
const drainMargin = 10

// livenessGrace is the termination grace, in seconds, of an agent whose
// liveness probe failed (its VRRP router failed): it holds no virtual IP, so
// it need not drain for long, and a restart should not wait an hour.
const livenessGrace = 30 + drainMargin

// agentStateVolume, mounted at agentStateDir, is the agent's --state-dir.
const (
	agentStateVolume = "state"
	agentStateDir    = "/run/lbpair"
)

// AgentSettings are the manager-wide settings of the agents it deploys.
type AgentSettings struct {
	Image           string
	ImagePullPolicy corev1.PullPolicy
	Resources       corev1.ResourceRequirements
	// PriorityClassName is the agents' pods' priority class; empty leaves
	// them at the cluster's default.
	PriorityClassName string
	// ImagePullSecrets name Secrets, in each pair's namespace, that the
	// agents' pods pull the image with (a private registry).
	ImagePullSecrets []string
}

// DefaultAgentResources are the agents' resources unless the manager is
// told otherwise: a proxy with a few thousand connections fits well within.
func DefaultAgentResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
	}
}

// Floors of the agents' resources that ParseAgentResources holds to, well
// under the defaults (a 64Mi memory request) and under what a Go process
// watching the API and proxying can be expected to run in: a value below them
// is a mistake, most often a bare number such as 512, which Kubernetes reads
// as bytes. The DaemonSet rolls by removing a running agent before its
// replacement starts, so such a value would cost every pair an agent.
var (
	minAgentMemory   = resource.MustParse("32Mi")
	minAgentCPULimit = resource.MustParse("10m")
)

// ParseAgentResources reads the agents' resources from the JSON form of a
// container's resources, {"requests": {...}, "limits": {...}}, as the
// manager's --agent-resources flag takes them. An empty string means
// DefaultAgentResources. A request above its limit, a negative quantity, a
// memory quantity (other than a zero request) below 32Mi, a CPU limit below
// 10m or an unknown key is refused here, naming it, rather than by the
// apiserver on every DaemonSet the manager writes or by agents that cannot run.
func ParseAgentResources(s string) (corev1.ResourceRequirements, error) {
	if strings.TrimSpace(s) == "" {
		return DefaultAgentResources(), nil
	}
	var r corev1.ResourceRequirements
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return corev1.ResourceRequirements{}, fmt.Errorf(`want JSON such as {"requests":{"cpu":"100m","memory":"64Mi"},"limits":{"memory":"512Mi"}}: %w`, err)
	}
	if dec.More() {
		return corev1.ResourceRequirements{}, errors.New("want one JSON object, found more after it")
	}
	for _, l := range []struct {
		name string
		list corev1.ResourceList
	}{{"requests", r.Requests}, {"limits", r.Limits}} {
		for name, q := range l.list {
			if q.Sign() < 0 {
				return corev1.ResourceRequirements{}, fmt.Errorf("%s.%s is negative (%s)", l.name, name, q.String())
			}
			if err := checkAgentFloor(l.name, name, q); err != nil {
				return corev1.ResourceRequirements{}, err
			}
		}
	}
	for name, req := range r.Requests {
		if limit, ok := r.Limits[name]; ok && req.Cmp(limit) > 0 {
			return corev1.ResourceRequirements{}, fmt.Errorf("requests.%s (%s) is above limits.%s (%s): raise the limit or lower the request", name, req.String(), name, limit.String())
		}
	}
	return r, nil
}

// checkAgentFloor refuses a quantity of the agents' resources too small for
// an agent to run under (see minAgentMemory), with the likely intent when it
// is a bare number.
func checkAgentFloor(list string, name corev1.ResourceName, q resource.Quantity) error {
	var floor resource.Quantity
	switch {
	case name == corev1.ResourceMemory && !(list == "requests" && q.IsZero()):
		floor = minAgentMemory
	case name == corev1.ResourceCPU && list == "limits":
		floor = minAgentCPULimit
	default:
		return nil
	}
	if q.Cmp(floor) >= 0 {
		return nil
	}
	s := q.String()
	if name == corev1.ResourceMemory && isDigits(s) {
		return fmt.Errorf("%s.%s is %s bytes, below the %s an agent needs: did you mean %sMi?", list, name, s, floor.String(), s)
	}
	return fmt.Errorf("%s.%s (%s) is below the %s an agent needs", list, name, s, floor.String())
}

func isDigits(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

// daemonSetName names a pair's DaemonSet, shortened with a hash when the
// pair's name is too long for a label value.
func daemonSetName(pair string) string {
	name := "lbpair-" + pair
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(pair))
	return name[:52] + "-" + hex.EncodeToString(sum[:])[:10]
}

func podLabels(pair *lbv1.LoadBalancerPair) map[string]string {
	return map[string]string{
		nameLabel:     agentName,
		instanceLabel: lbv1.PairLabelValue(pair.Name),
		PairLabel:     lbv1.PairLabelValue(pair.Name),
	}
}

// desiredDaemonSet is the agents' DaemonSet for a pair, as an apply
// configuration: the manager owns exactly these fields.
func desiredDaemonSet(pair *lbv1.LoadBalancerPair, port int32, s AgentSettings) *appsv1ac.DaemonSetApplyConfiguration {
	labels := podLabels(pair)
	dsLabels := map[string]string{managedByLabel: managerName}
	for k, v := range labels {
		dsLabels[k] = v
	}
	fieldEnv := func(name, path string) *corev1ac.EnvVarApplyConfiguration {
		return corev1ac.EnvVar().WithName(name).WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath(path)))
	}
	probe := func(path string, period, failures int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString("health"))).
			WithPeriodSeconds(period).WithFailureThreshold(failures).WithTimeoutSeconds(2)
	}
	container := corev1ac.Container().
		WithName("agent").
		WithImage(s.Image).
		WithArgs("agent", "--pair="+pair.Name, "--health-addr=:"+strconv.Itoa(int(port)), "--state-dir="+agentStateDir).
		WithEnv(
			fieldEnv("NODE_NAME", "spec.nodeName"),
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("POD_IP", "status.podIP"),
		).
		WithPorts(corev1ac.ContainerPort().WithName("health").WithContainerPort(port).WithHostPort(port).WithProtocol(corev1.ProtocolTCP)).
		WithReadinessProbe(probe("/readyz", 5, 3)).
		WithLivenessProbe(probe("/healthz", 10, 3).WithInitialDelaySeconds(10).WithTerminationGracePeriodSeconds(livenessGrace)).
		WithResources(resources(s.Resources)).
		WithVolumeMounts(corev1ac.VolumeMount().WithName(agentStateVolume).WithMountPath(agentStateDir)).
		WithSecurityContext(corev1ac.SecurityContext().
			// The agent adds addresses (NET_ADMIN), sends VRRP and ARP
			// (NET_RAW) and may listen below 1024 (NET_BIND_SERVICE);
			// nothing else.
			WithRunAsUser(0).
			WithRunAsNonRoot(false).
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithCapabilities(corev1ac.Capabilities().
				WithDrop("ALL").
				WithAdd("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")))
	if s.ImagePullPolicy != "" {
		container.WithImagePullPolicy(s.ImagePullPolicy)
	}
	pullSecrets := make([]*corev1ac.LocalObjectReferenceApplyConfiguration, len(s.ImagePullSecrets))
	for i, name := range s.ImagePullSecrets {
		pullSecrets[i] = corev1ac.LocalObjectReference().WithName(name)
	}
	podSpec := corev1ac.PodSpec().
		WithHostNetwork(true).
		WithDNSPolicy(corev1.DNSClusterFirstWithHostNet).
		WithServiceAccountName(AgentServiceAccount).
		WithTerminationGracePeriodSeconds(terminationGrace).
		// The container runtime's default seccomp filter: the agent needs
		// sockets, netlink and raw packets, none of what it blocks.
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
		WithContainers(container).
		WithImagePullSecrets(pullSecrets...).
		// The agent keeps its last configuration here, to serve with it when
		// its container restarts while the apiserver is unreachable. An
		// emptyDir lives as long as the pod, and so covers the restarts the
		// kubelet makes without the apiserver; in memory, because it holds
		// the VRRPv2 password.
		WithVolumes(corev1ac.Volume().WithName(agentStateVolume).
			WithEmptyDir(corev1ac.EmptyDirVolumeSource().WithMedium(corev1.StorageMediumMemory).WithSizeLimit(resource.MustParse("16Mi")))).
		// A node taken out of load balancing gets no agent, and the DaemonSet
		// controller stops the one running there, which hands the VIP over.
		WithAffinity(corev1ac.Affinity().WithNodeAffinity(corev1ac.NodeAffinity().
			WithRequiredDuringSchedulingIgnoredDuringExecution(corev1ac.NodeSelector().
				WithNodeSelectorTerms(corev1ac.NodeSelectorTerm().
					WithMatchExpressions(corev1ac.NodeSelectorRequirement().
						WithKey(corev1.LabelNodeExcludeBalancers).
						WithOperator(corev1.NodeSelectorOpDoesNotExist))))))
	if s.PriorityClassName != "" {
		podSpec.WithPriorityClassName(s.PriorityClassName)
	}
	if len(pair.Spec.NodeSelector) > 0 {
		podSpec.WithNodeSelector(pair.Spec.NodeSelector)
	}
	for _, t := range pair.Spec.Tolerations {
		tc := corev1ac.Toleration().WithOperator(t.Operator).WithEffect(t.Effect)
		if t.Key != "" {
			tc.WithKey(t.Key)
		}
		if t.Value != "" {
			tc.WithValue(t.Value)
		}
		if t.TolerationSeconds != nil {
			tc.WithTolerationSeconds(*t.TolerationSeconds)
		}
		podSpec.WithTolerations(tc)
	}
	return appsv1ac.DaemonSet(daemonSetName(pair.Name), pair.Namespace).
		WithLabels(dsLabels).
		WithOwnerReferences(ownerReference(pair)).
		WithSpec(appsv1ac.DaemonSetSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(labels)).
			// One node at a time, never two agents of a node at once: they
			// share the host network and ports.
			WithUpdateStrategy(appsv1ac.DaemonSetUpdateStrategy().
				WithType("RollingUpdate").
				WithRollingUpdate(appsv1ac.RollingUpdateDaemonSet().WithMaxUnavailable(intstr.FromInt32(1)).WithMaxSurge(intstr.FromInt32(0)))).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(labels).
				WithSpec(podSpec)))
}

func ownerReference(pair *lbv1.LoadBalancerPair) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(lbv1.GroupVersion.String()).
		WithKind("LoadBalancerPair").
		WithName(pair.Name).
		WithUID(pair.UID).
		WithController(true).
		WithBlockOwnerDeletion(true)
}

func resources(r corev1.ResourceRequirements) *corev1ac.ResourceRequirementsApplyConfiguration {
	ac := corev1ac.ResourceRequirements()
	if len(r.Requests) > 0 {
		ac.WithRequests(r.Requests)
	}
	if len(r.Limits) > 0 {
		ac.WithLimits(r.Limits)
	}
	return ac
}

// daemonSetAvailable tells whether every scheduled agent runs the current
// template and is available.
func daemonSetAvailable(desired, updated, available int32, observed, generation int64) (bool, string) {
	switch {
	case observed < generation:
		return false, "the DaemonSet controller has not seen the latest template yet"
	case desired == 0:
		return false, noNodes
	case updated < desired:
		return false, fmt.Sprintf("%d of %d agents run the current template", updated, desired)
	case available < desired:
		return false, fmt.Sprintf("%d of %d agents are available", available, desired)
	}
	return true, fmt.Sprintf("%d of %d agents are available", available, desired)
}

// podSecurityEnforce is the namespace label that sets the Pod Security level
// the apiserver enforces on its pods.
const podSecurityEnforce = "pod-security.kubernetes.io/enforce"

// podSecurityHint explains agents that do not come up in a namespace whose
// Pod Security level forbids their pods; the DaemonSet controller says so
// only in the DaemonSet's events. "" when the level allows them.
func podSecurityHint(ns *corev1.Namespace) string {
	level := ns.Labels[podSecurityEnforce]
	if level != "baseline" && level != "restricted" {
		return ""
	}
	return fmt.Sprintf("namespace %s enforces the Pod Security level %q, which forbids the agents' pods (host network, hostPort, NET_ADMIN and NET_RAW): label it %s=privileged",
		ns.Name, level, podSecurityEnforce)
}

// runsAgentOn tells whether the pair's DaemonSet would run an agent on node:
// the node matches spec.nodeSelector, is not excluded from load balancers
// (the DaemonSet's node affinity), and the pair tolerates the taints that
// keep pods off it. The DaemonSet controller itself tolerates the taints of
// node conditions (node.kubernetes.io/...), which come and go.
func runsAgentOn(pair *lbv1.LoadBalancerPair, node *corev1.Node) bool {
	if !labels.SelectorFromSet(pair.Spec.NodeSelector).Matches(labels.Set(node.Labels)) || lbv1.ExcludedFromLoadBalancers(node) {
		return false
	}
	for i := range node.Spec.Taints {
		taint := &node.Spec.Taints[i]
		if taint.Effect == corev1.TaintEffectPreferNoSchedule || strings.HasPrefix(taint.Key, "node.kubernetes.io/") {
			continue
		}
		if !slices.ContainsFunc(pair.Spec.Tolerations, func(t corev1.Toleration) bool { return t.ToleratesTaint(logr.Discard(), taint, true) }) {
			return false
		}
	}
	return true
}

// tooManyNodes is why a pair that selects more nodes than it may run on is
// not started; "" when it selects few enough.
func tooManyNodes(pair *lbv1.LoadBalancerPair, nodes []corev1.Node) string {
	n := 0
	for i := range nodes {
		if runsAgentOn(pair, &nodes[i]) {
			n++
		}
	}
	if n <= lbv1.MaxAgents {
		return ""
	}
	what := "spec.nodeSelector"
	if len(pair.Spec.NodeSelector) == 0 {
		what = "spec.nodeSelector is empty, so it"
	}
	return fmt.Sprintf("%s selects %d nodes whose taints the pair tolerates; a pair runs on at most %d: set spec.nodeSelector to the few nodes that may hold the virtual IPs", what, n, lbv1.MaxAgents)
}
