package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// LoadBalancerPair is a highly available group of L4 load balancers: agents on the selected
// nodes elect one holder of the virtual IPs with VRRP, and every agent proxies TCP from the
// virtual IPs' ports to the backends, so the holder serves and the others stand by warm.
//
// It replaces the hand-made recipe of nginx `stream` proxying a port to a pool of servers on
// two hosts, with keepalived moving a virtual IP between them.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=lbpair;lbpairs,categories=lbpair
// +kubebuilder:printcolumn:name="VIP",type=string,JSONPath=`.spec.virtualIPs[*]`
// +kubebuilder:printcolumn:name="Holder",type=string,JSONPath=`.status.holder`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="VRID",type=integer,JSONPath=`.status.virtualRouterID`,priority=1
// +kubebuilder:printcolumn:name="Nodes",type=string,JSONPath=`.status.nodes`,priority=1
type LoadBalancerPair struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the object's metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is what the pair should be.
	// +required
	Spec LoadBalancerPairSpec `json:"spec"`

	// status is what the manager and the agents observe.
	// +optional
	Status LoadBalancerPairStatus `json:"status,omitempty"`
}

// LoadBalancerPairSpec is the desired state of a LoadBalancerPair.
//
// keepalived's `state MASTER|BACKUP` has no field: as RFC 5798 says, every agent starts as
// a backup and the highest priority wins, so the initial state only matters for the first
// advertisement interval. keepalived's `track_script` that checks nginx needs no script:
// the agent watches its own proxy (see tracking).
//
// +kubebuilder:validation:XValidation:rule="!has(self.authentication) || self.vrrpVersion == 2",message="authentication is a VRRPv2 feature (RFC 5798 removed it from VRRPv3): set vrrpVersion: 2 or remove authentication"
// +kubebuilder:validation:XValidation:rule="self.vrrpVersion != 3 || (duration(self.advertisementInterval) >= duration('10ms') && duration(self.advertisementInterval) <= duration('40950ms') && int(duration(self.advertisementInterval)) % 10000000 == 0)",fieldPath=".advertisementInterval",message="advertisementInterval must be a multiple of 10ms from 10ms to 40.95s with vrrpVersion 3 (VRRPv3 counts centiseconds)"
// +kubebuilder:validation:XValidation:rule="self.vrrpVersion != 2 || (duration(self.advertisementInterval) >= duration('1s') && duration(self.advertisementInterval) <= duration('255s') && int(duration(self.advertisementInterval)) % 1000000000 == 0)",fieldPath=".advertisementInterval",message="advertisementInterval must be whole seconds from 1s to 255s with vrrpVersion 2"
// +kubebuilder:validation:XValidation:rule="self.vrrpVersion != 2 || self.virtualIPs.all(v, !isIP(v) || ip(v).family() == 4)",fieldPath=".vrrpVersion",message="spec.vrrpVersion 2 (RFC 3768) carries IPv4 only: set spec.vrrpVersion to 3 for IPv6 spec.virtualIPs"
// +kubebuilder:validation:XValidation:rule="!has(self.unicast) || !has(self.unicast.peers) || !self.virtualIPs.all(v, isIP(v)) || !self.unicast.peers.all(p, isIP(p)) || self.unicast.peers.all(p, ip(p).family() == ip(self.virtualIPs[0]).family())",message="unicast.peers must be of the same address family as virtualIPs"
// +kubebuilder:validation:XValidation:rule="!has(self.agentPort) || self.ports.all(p, p.port != self.agentPort)",fieldPath=".agentPort",message="spec.agentPort must differ from every spec.ports[].port: the agents' health and metrics listener on the node and the proxy's listener on the virtual IPs cannot share a TCP port"
type LoadBalancerPairSpec struct {
	// virtualIPs are the addresses the holder adds to its interface and announces, as
	// keepalived's virtual_ipaddress. All must be of one family (IPv4 or IPv6) and usable
	// unicast addresses, not loopback, link-local, multicast or unspecified, each listed
	// once however written (fd00::100 and fd00:0::100 are one address).
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=45
	// +kubebuilder:validation:items:XValidation:rule="isIP(self) && ip(self).isGlobalUnicast()",message="must be a unicast IPv4 or IPv6 address such as 198.18.0.100 or fd00::100 (not loopback, link-local, multicast or unspecified)"
	// +kubebuilder:validation:XValidation:rule="!self.all(x, isIP(x)) || self.all(x, ip(x).family() == ip(self[0]).family())",message="virtualIPs must all be IPv4 or all IPv6: use one pair per address family"
	// +kubebuilder:validation:XValidation:rule="self.all(x, !isIP(x) || self.exists_one(y, isIP(y) && ip(y) == ip(x)))",message="virtualIPs lists one address twice, written two ways (such as fd00::100 and fd00:0::100): list each address once"
	VirtualIPs []string `json:"virtualIPs"`

	// virtualRouterID identifies the pair's VRRP group on the network, as keepalived's
	// virtual_router_id. Every group on one network needs its own. When empty, the manager
	// picks one not used by any other pair and records it in status.virtualRouterID; set it
	// when the pair must join or avoid routers the manager cannot see (an existing keepalived).
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=255
	VirtualRouterID *int32 `json:"virtualRouterID,omitempty"`

	// vrrpVersion is the VRRP protocol version: 3 (RFC 5798, centisecond intervals, IPv4
	// and IPv6) or 2 (RFC 3768, whole seconds, IPv4 only, optional simple-text
	// authentication), to pair with a keepalived that uses it.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Enum=2;3
	VRRPVersion int32 `json:"vrrpVersion,omitempty"`

	// interface is the node's network interface that carries VRRP and the virtual IPs, as
	// keepalived's interface. When empty, each agent uses the interface that holds the node's
	// address on the virtual IPs' subnet (found from the route to the first virtual IP).
	// +optional
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9][A-Za-z0-9_.@-]*$`
	Interface string `json:"interface,omitempty"`

	// advertisementInterval is how often the holder sends VRRP advertisements, as
	// keepalived's advert_int. VRRPv3 carries it in centiseconds: 10ms to 40.95s, a multiple
	// of 10ms. VRRPv2 carries whole seconds: 1s to 255s. A backup takes over after about
	// three intervals of silence, so a shorter interval means a faster failover.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	AdvertisementInterval *metav1.Duration `json:"advertisementInterval,omitempty"`

	// preempt lets a higher-priority agent take the virtual IPs from a lower-priority holder,
	// as keepalived does unless nopreempt is set. With preempt off, the holder keeps the
	// virtual IPs until it fails, which avoids a second failover when a node comes back.
	// +optional
	// +kubebuilder:default=true
	Preempt *bool `json:"preempt,omitempty"`

	// preemptDelay is how long a higher-priority agent waits after starting before it
	// preempts the holder, as keepalived's preempt_delay: time for its proxy and network to
	// settle. Ignored when preempt is false.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('1h')",message="preemptDelay must be from 0s to 1h"
	PreemptDelay *metav1.Duration `json:"preemptDelay,omitempty"`

	// priority sets each agent's VRRP priority, as keepalived's priority: the highest
	// priority holds the virtual IPs.
	// +optional
	Priority *PrioritySpec `json:"priority,omitempty"`

	// authentication is VRRPv2 simple-text authentication, as keepalived's
	// `auth_type PASS` and `auth_pass` (each on a line of its own). It only keeps a misconfigured
	// router from joining by mistake: the password travels in clear text. Only valid with
	// vrrpVersion 2.
	// +optional
	Authentication *AuthenticationSpec `json:"authentication,omitempty"`

	// unicast sends advertisements to each peer's address instead of the VRRP multicast
	// group, for networks that drop multicast, as keepalived's unicast_peer.
	// +optional
	Unicast *UnicastSpec `json:"unicast,omitempty"`

	// announcements tunes the gratuitous ARP (IPv4) or unsolicited neighbour advertisement
	// (IPv6) messages a new holder sends so that switches and hosts update their caches.
	// +optional
	Announcements *AnnouncementsSpec `json:"announcements,omitempty"`

	// tracking says how the agent's own health changes its priority, as keepalived's
	// track_script and track_interface.
	// +optional
	Tracking *TrackingSpec `json:"tracking,omitempty"`

	// ports are the TCP ports proxied from the virtual IPs to backends, as nginx's `stream {
	// server { listen ...; proxy_pass ...; } }`. Names and port numbers must be unique.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(p, self.exists_one(q, q.port == p.port))",message="each port number may appear only once in ports"
	Ports []PortSpec `json:"ports"`

	// drainTimeout is how long an agent that stops (or stops holding the virtual IPs) lets
	// established connections finish before it closes them.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('1h')",message="drainTimeout must be from 0s to 1h"
	DrainTimeout *metav1.Duration `json:"drainTimeout,omitempty"`

	// accessLog writes a line to the agent's log for every connection that ends: the port,
	// client, backend, bytes each way, duration and why it ended, as an access_log in an
	// nginx stream server. Off by default: at high connection rates the lines cost CPU and
	// log volume.
	// +optional
	AccessLog bool `json:"accessLog,omitempty"`

	// agentPort is the port on each node where the agent serves /healthz, /readyz and
	// /metrics. Agents use the host network, so pairs sharing nodes need distinct ports.
	// When unset the manager derives one from the virtual router ID: 9400+VRID for IPv4
	// pairs and 9700+VRID for IPv6 pairs (VRIDs are unique per family; a VRID the manager
	// allocates is one whose port no pair proxies or uses), and reports it in
	// status.agentPort. It must differ from the pair's ports: on a node, the agent's listener
	// and a proxy listener on a virtual IP cannot share a TCP port. A port that another pair
	// proxies, or uses as its agent port, on a node both pairs run on sets the PortConflict
	// condition, and the agents are not started (or updated) with it; agents that already
	// listen on it keep it, and a pair that adds it to its ports is the one in conflict.
	// +optional
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=65535
	AgentPort *int32 `json:"agentPort,omitempty"`

	// The apiserver estimates a rule's CEL cost for strings of unbounded length, as the
	// values here are: the value rule costs one short regex per value (plus prefix and
	// suffix checks that cost nothing), and MaxProperties keeps the total in the budget.

	// nodeSelector selects the nodes that run the pair's agents; all nodes when empty.
	// Usually two or three nodes labelled for the purpose; at most 64 (counting those
	// whose taints the pair tolerates), or the pair is not started. Keys and values are
	// those of labels, as the agents' DaemonSet needs them; at most 8 of them.
	// +optional
	// +kubebuilder:validation:MaxProperties=8
	// +kubebuilder:validation:XValidation:rule=`self.all(k, k.matches('^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$') && k.indexOf('/') <= 253)`,message="spec.nodeSelector keys must be label keys: a name of 1 to 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit, optionally after a DNS subdomain prefix of at most 253 characters and '/' (such as lbpair.io/edge)"
	// +kubebuilder:validation:XValidation:rule=`self.all(k, self[k].size() <= 63 && !self[k].matches('[^-\\w.]') && !self[k].startsWith('-') && !self[k].startsWith('_') && !self[k].startsWith('.') && !self[k].endsWith('-') && !self[k].endsWith('_') && !self[k].endsWith('.'))`,message="spec.nodeSelector values must be label values: empty, or 1 to 63 letters, digits, '-', '_' or '.' that start and end with a letter or digit"
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// The characters of a toleration's key and value are not checked here: corev1's
	// Toleration bounds neither string, and a regex over strings of unbounded length in
	// a list of 32 is far over the apiserver's CEL cost budget.

	// tolerations let the agents run on tainted nodes, such as dedicated edge nodes. Each
	// must be one a pod may have, as the agents' DaemonSet needs it.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:XValidation:rule="!has(self.operator) || self.operator in ['', 'Equal', 'Exists']",fieldPath=".operator",message="spec.tolerations[].operator must be Exists or Equal"
	// +kubebuilder:validation:items:XValidation:rule="(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",fieldPath=".operator",message="spec.tolerations[].operator must be Exists when key is empty (to tolerate every taint)"
	// +kubebuilder:validation:items:XValidation:rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",fieldPath=".value",message="spec.tolerations[].value must be empty when operator is Exists"
	// +kubebuilder:validation:items:XValidation:rule="!has(self.effect) || self.effect in ['', 'NoSchedule', 'PreferNoSchedule', 'NoExecute']",fieldPath=".effect",message="spec.tolerations[].effect must be NoSchedule, PreferNoSchedule, NoExecute or empty (every effect)"
	// +kubebuilder:validation:items:XValidation:rule="!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",fieldPath=".tolerationSeconds",message="spec.tolerations[].tolerationSeconds needs effect NoExecute"
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
}

// PrioritySpec sets the VRRP priority of each agent.
type PrioritySpec struct {
	// default is the priority of an agent whose node has no nodeLabel; 1 to 254.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=254
	Default int32 `json:"default,omitempty"`

	// nodeLabel names a node label whose value (1 to 254) is the priority of the agent on
	// that node, so that `kubectl label node lb1 lbpair.io/priority=150` makes lb1 the
	// preferred holder. A value out of range is ignored with a warning Event. To give every
	// agent spec.priority.default, name a label no node carries.
	// +optional
	// +kubebuilder:default="lbpair.io/priority"
	// +kubebuilder:validation:MaxLength=316
	// +kubebuilder:validation:XValidation:rule="self.size() > 0",message="spec.priority.nodeLabel must name a label: leave it out for lbpair.io/priority, or name one no node carries to give every agent spec.priority.default"
	NodeLabel string `json:"nodeLabel,omitempty"`
}

// AuthenticationSpec is VRRPv2 simple-text authentication.
type AuthenticationSpec struct {
	// passwordSecretRef names a Secret in the pair's namespace and the key that holds the
	// password: 1 to 8 bytes, as keepalived's auth_pass (longer passwords are cut to 8 by
	// keepalived, so they are refused here). In a cluster the agents read the Secret again at
	// least every 10 seconds, so a Secret created late or a new password applies without a
	// restart; for a minute after a change, adverts with the previous password are still
	// accepted, so that routers learning it one after another do not take over from each other.
	// +required
	// +kubebuilder:validation:XValidation:rule="has(self.name) && self.name != ''",fieldPath=".name",message="spec.authentication.passwordSecretRef.name must name the Secret that holds the password"
	// +kubebuilder:validation:XValidation:rule="self.key != ''",fieldPath=".key",message="spec.authentication.passwordSecretRef.key must name the Secret's key that holds the password"
	// +kubebuilder:validation:XValidation:rule="!has(self.optional) || !self.optional",fieldPath=".optional",message="spec.authentication.passwordSecretRef.optional must not be true: the password is not optional when authentication is given (remove authentication to run without one)"
	PasswordSecretRef corev1.SecretKeySelector `json:"passwordSecretRef"`
}

// UnicastSpec configures unicast advertisements.
type UnicastSpec struct {
	// enabled turns unicast on. The agents of the pair send to each other; peers adds
	// routers that are not agents of the pair, such as a keepalived host during a migration.
	// +required
	Enabled bool `json:"enabled"`

	// peers are extra addresses to send advertisements to, of the same family as the
	// virtual IPs.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=45
	// +kubebuilder:validation:items:XValidation:rule="isIP(self)",message="must be an IPv4 or IPv6 address"
	Peers []string `json:"peers,omitempty"`
}

// AnnouncementsSpec tunes the address announcements of a new holder.
type AnnouncementsSpec struct {
	// repeat is how many messages each burst sends, as keepalived's garp_master_repeat.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Repeat int32 `json:"repeat,omitempty"`

	// delay is when a second burst follows the first after taking over, as keepalived's
	// garp_master_delay; 0s sends no second burst.
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('0s') && duration(self) <= duration('1h')",message="announcements.delay must be from 0s to 1h"
	Delay *metav1.Duration `json:"delay,omitempty"`

	// refreshInterval repeats a burst for as long as the agent holds the virtual IPs, as
	// keepalived's garp_master_refresh; 0s (the default) sends none.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) == duration('0s') || (duration(self) >= duration('1s') && duration(self) <= duration('24h'))",message="announcements.refreshInterval must be 0s (off) or from 1s to 24h"
	RefreshInterval *metav1.Duration `json:"refreshInterval,omitempty"`
}

// TrackingSpec says how an agent's health changes its VRRP priority.
type TrackingSpec struct {
	// proxyWeight is how much an agent's priority drops while its proxy cannot serve (a
	// listener is down or a port has no healthy backend). 0, the default, gives up the
	// virtual IPs at once (the Fault state), as a keepalived track_script without weight;
	// a weight keeps the agent in the election at a lower priority, for pairs that would
	// rather keep a degraded holder than none. An agent whose interface is down always
	// goes to Fault.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=253
	ProxyWeight int32 `json:"proxyWeight,omitempty"`
}

// PortSpec is one TCP port proxied from the virtual IPs to a set of backends.
type PortSpec struct {
	// name identifies the port in status, metrics and logs; a DNS label.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// port is the TCP port listened on at each virtual IP, as nginx's listen.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`

	// backend is where connections go, as nginx's upstream and proxy_pass: a Service's
	// ready endpoints or a static list of addresses. Exactly one of the two.
	// +required
	Backend BackendSpec `json:"backend"`

	// balance picks the backend for each new connection: RoundRobin (weighted),
	// LeastConnections, RandomTwoChoices (the less loaded of two picked at random), or
	// SourceHash (a consistent hash of the client address, so a client keeps its backend and
	// few clients move when a backend is added or removed).
	// +optional
	// +kubebuilder:default=RoundRobin
	Balance BalanceAlgorithm `json:"balance,omitempty"`

	// healthCheck marks failing backends down. Without it, passive checks with nginx's
	// defaults apply (one failed connect takes a backend out for 10s).
	// +optional
	HealthCheck *HealthCheckSpec `json:"healthCheck,omitempty"`

	// proxyProtocol sends a PROXY protocol header to the backend at the start of each
	// connection so it sees the client's address: None, V1 (text) or V2 (binary). The
	// backend must expect it.
	// +optional
	// +kubebuilder:default=None
	ProxyProtocol ProxyProtocolVersion `json:"proxyProtocol,omitempty"`

	// timeouts bound connecting to a backend and idle connections.
	// +optional
	Timeouts *TimeoutsSpec `json:"timeouts,omitempty"`

	// maxConnections caps the connections open at once through this port on each agent;
	// new ones beyond it are refused (closed at once) and counted. 0 means no cap.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10000000
	MaxConnections int32 `json:"maxConnections,omitempty"`
}

// BalanceAlgorithm is how a port picks a backend for a new connection.
// +kubebuilder:validation:Enum=RoundRobin;LeastConnections;RandomTwoChoices;SourceHash
type BalanceAlgorithm string

// The balancing algorithms.
const (
	BalanceRoundRobin       BalanceAlgorithm = "RoundRobin"
	BalanceLeastConnections BalanceAlgorithm = "LeastConnections"
	BalanceRandomTwoChoices BalanceAlgorithm = "RandomTwoChoices"
	BalanceSourceHash       BalanceAlgorithm = "SourceHash"
)

// ProxyProtocolVersion is the PROXY protocol header sent to backends, if any.
// +kubebuilder:validation:Enum=None;V1;V2
type ProxyProtocolVersion string

// The PROXY protocol versions.
const (
	ProxyProtocolNone ProxyProtocolVersion = "None"
	ProxyProtocolV1   ProxyProtocolVersion = "V1"
	ProxyProtocolV2   ProxyProtocolVersion = "V2"
)

// BackendSpec is where a port's connections go: exactly one of service and static.
// +kubebuilder:validation:XValidation:rule="has(self.service) != has(self.static)",message="backend needs exactly one of service or static"
type BackendSpec struct {
	// service sends connections to the ready endpoints of a Service in the pair's namespace,
	// read from its EndpointSlices, so backends follow the Service as it scales. When none
	// is ready, the terminating endpoints that still serve are used, as kube-proxy does.
	// +optional
	Service *ServiceBackend `json:"service,omitempty"`

	// static is a fixed list of backends, as the servers of an nginx upstream block.
	// Entries that reach one address and port (one address written two ways, or two names
	// of one host) make one backend whose weight is the sum of theirs, as two server lines
	// of an nginx upstream would get the share of both.
	// +optional
	// +listType=map
	// +listMapKey=address
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	Static []StaticBackend `json:"static,omitempty"`
}

// ServiceBackend names a Service and one of its ports.
type ServiceBackend struct {
	// name is the Service's name, in the pair's namespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// port is the Service port, by name or number; connections go to the endpoints' target
	// port behind it. A name (a DNS label, as Service port names are) needs a letter: a
	// string of digits is a number written in quotes, as a Helm template easily does.
	// +required
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? (self >= 1 && self <= 65535) : self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="port must be a port number from 1 to 65535 or a Service port name"
	// +kubebuilder:validation:XValidation:rule="type(self) == int || !self.matches('^[0-9]+$')",message="port is a number in quotes: give the port number unquoted (port: 80, not port: \"80\"), or the Service port's name, which needs a letter"
	Port intstr.IntOrString `json:"port"`
}

// StaticBackend is one backend address.
type StaticBackend struct {
	// address is host:port, where host is an IPv4 address, a bracketed IPv6 address
	// ([fd00::10]:8080) or a DNS name the agent resolves, as nginx does, when the
	// configuration is loaded.
	// +required
	// +kubebuilder:validation:MinLength=3
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:XValidation:rule=`self.matches('^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*):[0-9]{1,5}$')`,message="address must be host:port, such as web01:80, 198.18.1.10:80 or [fd00::10]:80"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^.*:[0-9]{1,5}$') || (int(self.substring(self.lastIndexOf(':') + 1)) >= 1 && int(self.substring(self.lastIndexOf(':') + 1)) <= 65535)",message="the port of address must be from 1 to 65535"
	// +kubebuilder:validation:XValidation:rule="!self.startsWith('[') || !self.contains(']') || isIP(self.substring(1, self.indexOf(']')))",message="the bracketed host of address must be an IPv6 address"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[0-9.]+:[0-9]+$') || isIP(self.substring(0, self.lastIndexOf(':')))",message="the host of address looks like an IPv4 address but is not a valid one"
	Address string `json:"address"`

	// weight is the backend's share of connections under RoundRobin, as nginx's weight;
	// 1 to 1000.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	Weight int32 `json:"weight,omitempty"`
}

// HealthCheckSpec configures how backends are found to be failing.
type HealthCheckSpec struct {
	// passive marks a backend down after failed connection attempts, as nginx's max_fails
	// and fail_timeout.
	// +optional
	Passive *PassiveHealthCheck `json:"passive,omitempty"`

	// active probes each backend with a TCP connection at an interval, as HAProxy's check
	// with inter, rise and fall.
	// +optional
	Active *ActiveHealthCheck `json:"active,omitempty"`
}

// PassiveHealthCheck marks a backend down after failures seen on real connections.
type PassiveHealthCheck struct {
	// maxFails is how many failed attempts within failTimeout mark the backend down for
	// failTimeout, whatever succeeds in between; 0 turns passive checks off. As in nginx,
	// a port's only backend is never marked down by them (active checks still apply).
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	MaxFails *int32 `json:"maxFails,omitempty"`

	// failTimeout is both the window in which failures count and how long the backend then
	// stays down.
	// +optional
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="failTimeout must be from 1s to 1h"
	FailTimeout *metav1.Duration `json:"failTimeout,omitempty"`
}

// ActiveHealthCheck probes backends with TCP connections.
// +kubebuilder:validation:XValidation:rule="duration(self.timeout) <= duration(self.interval)",message="active.timeout must not exceed active.interval"
type ActiveHealthCheck struct {
	// interval is the time between two probes of one backend.
	// +optional
	// +kubebuilder:default="2s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('1h')",message="active.interval must be from 100ms to 1h"
	Interval *metav1.Duration `json:"interval,omitempty"`

	// timeout bounds one probe's connect.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10ms') && duration(self) <= duration('1h')",message="active.timeout must be from 10ms to 1h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// rise is how many probes in a row must succeed to mark a down backend up.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Rise int32 `json:"rise,omitempty"`

	// fall is how many probes in a row must fail to mark an up backend down.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	Fall int32 `json:"fall,omitempty"`
}

// TimeoutsSpec bounds the stages of a proxied connection.
type TimeoutsSpec struct {
	// connect bounds connecting to one backend, as nginx's proxy_connect_timeout; on
	// timeout or refusal the next backend is tried, up to connectAttempts.
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10ms') && duration(self) <= duration('10m')",message="timeouts.connect must be from 10ms to 10m"
	Connect *metav1.Duration `json:"connect,omitempty"`

	// connectAttempts is how many backends one client connection may try, as nginx's
	// proxy_next_upstream_tries.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=16
	ConnectAttempts int32 `json:"connectAttempts,omitempty"`

	// idle closes a connection on which neither side sent anything for this long, from
	// when its backend connection is established, as nginx's proxy_timeout.
	// +optional
	// +kubebuilder:default="10m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('168h')",message="timeouts.idle must be from 1s to 168h"
	Idle *metav1.Duration `json:"idle,omitempty"`
}

// LoadBalancerPairStatus is the observed state of a LoadBalancerPair.
type LoadBalancerPairStatus struct {
	// observedGeneration is the spec generation the manager last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// virtualRouterID is the VRRP router ID the agents use: spec.virtualRouterID, or the
	// one the manager allocated.
	// +optional
	VirtualRouterID int32 `json:"virtualRouterID,omitempty"`

	// virtualIPs are the virtual IPs the agents run with: spec.virtualIPs, once the manager
	// found none of them used by another pair or a node, and the pair's VRID free. A spec
	// that names another pair's virtual IP, or a node's address, leaves this, and so the
	// agents, as they were, and sets the VIPConflict condition.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MaxLength=45
	VirtualIPs []string `json:"virtualIPs,omitempty"`

	// agentPort is the node port of the agents' health and metrics endpoint.
	// +optional
	AgentPort int32 `json:"agentPort,omitempty"`

	// holder is the node whose agent holds the virtual IPs, as its agents report; empty
	// when none does.
	// +optional
	Holder string `json:"holder,omitempty"`

	// holderSince is when the holder took the virtual IPs.
	// +optional
	HolderSince *metav1.Time `json:"holderSince,omitempty"`

	// nodes sums up the agents for `kubectl get -o wide`, as node:state pairs
	// (lb1:Master,lb2:Backup); the manager writes it from agents.
	// +optional
	Nodes string `json:"nodes,omitempty"`

	// agents is each agent's own report, one entry per node, written by that agent;
	// at most 64 entries: a pair runs on at most 64 nodes.
	// +optional
	// +listType=map
	// +listMapKey=node
	// +kubebuilder:validation:MaxItems=64
	Agents []AgentStatus `json:"agents,omitempty"`

	// conditions: Ready (a holder exists and serves the spec; when none does and a conflict
	// keeps the agents from starting, its reason is VIPConflict, VRIDConflict or
	// PortConflict, and VIPConflict or VRIDConflict when the holder serves on with the
	// virtual IPs and VRID it had because the spec asks for another pair's),
	// Available (the agents are running; reason PodSecurity when the namespace's Pod
	// Security level forbids their pods), Degraded (fewer healthy agents than selected nodes,
	// or backends down), SplitBrain (more than one agent holds the virtual IPs),
	// VRIDConflict, VIPConflict and PortConflict.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AgentStatus is one agent's report of its part in the election and its proxy.
type AgentStatus struct {
	// node is the agent's node.
	// +required
	// +kubebuilder:validation:MaxLength=253
	Node string `json:"node"`

	// state is the agent's VRRP state.
	// +required
	State VRRPState `json:"state"`

	// priority is the agent's effective priority: configured, less any tracking penalty.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=255
	Priority int32 `json:"priority,omitempty"`

	// since is when the agent entered its state.
	// +required
	Since metav1.MicroTime `json:"since"`

	// reason is why the agent entered its state, such as MasterDown, Preempted,
	// HigherPriority, Shutdown, InterfaceDown or ProxyUnhealthy.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	Reason string `json:"reason,omitempty"`

	// address is the node address the agent sends advertisements from: the primary IPv4
	// address of its interface, or for IPv6 its link-local address (RFC 5798). Until the
	// agent runs VRRP, the node's address.
	// +optional
	// +kubebuilder:validation:MaxLength=45
	Address string `json:"address,omitempty"`

	// configError says why the agent could not apply the pair's current spec, such as a
	// missing Secret or a backend name that does not resolve. The agent keeps running the
	// last spec it applied, if any. Empty when the current spec is applied.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	ConfigError string `json:"configError,omitempty"`

	// lastUpdateTime is when the agent last wrote this entry; the manager treats an entry
	// not refreshed for a while as stale.
	// +required
	LastUpdateTime metav1.MicroTime `json:"lastUpdateTime"`

	// ports reports the backends each port can reach.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Ports []PortStatus `json:"ports,omitempty"`
}

// PortStatus is one port's backend health as one agent sees it.
type PortStatus struct {
	// name is the port's name in spec.ports.
	// +required
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name"`

	// healthyBackends is how many backends pass health checks.
	// +required
	HealthyBackends int32 `json:"healthyBackends"`

	// backends is how many backends the port has.
	// +required
	Backends int32 `json:"backends"`
}

// VRRPState is an agent's state in the VRRP election.
// +kubebuilder:validation:Enum=Init;Backup;Master;Fault
type VRRPState string

// The VRRP states an agent reports.
const (
	StateInit   VRRPState = "Init"
	StateBackup VRRPState = "Backup"
	StateMaster VRRPState = "Master"
	StateFault  VRRPState = "Fault"
)

// MaxAgents is the most nodes a pair runs on: status.agents holds at most this
// many entries (its MaxItems marker says the same).
const MaxAgents = 64

// Condition types of a LoadBalancerPair.
const (
	// ConditionReady is true when one agent holds the virtual IPs and its proxy serves.
	ConditionReady = "Ready"
	// ConditionAvailable is true when the pair's agents are running.
	ConditionAvailable = "Available"
	// ConditionDegraded is true when fewer agents are healthy than nodes are selected, or
	// backends are down.
	ConditionDegraded = "Degraded"
	// ConditionSplitBrain is true when more than one agent holds the virtual IPs.
	ConditionSplitBrain = "SplitBrain"
	// ConditionVRIDConflict is true when another pair on the same network uses the same
	// virtual router ID.
	ConditionVRIDConflict = "VRIDConflict"
	// ConditionVIPConflict is true when another pair already uses one of the pair's
	// virtual IPs, or a node has it as its address.
	ConditionVIPConflict = "VIPConflict"
	// ConditionPortConflict is true when the pair's agent port is also one of its ports,
	// or, on a node the pair shares with another pair, that pair's agent port (unless this
	// pair keeps it) or, unless the pair's agents already listen on it, one of that pair's
	// ports; or when one of the pair's ports is the agent port that pair's agents listen on.
	// The agents are held back only when their agent port is new and taken.
	ConditionPortConflict = "PortConflict"
)

// +kubebuilder:object:root=true

// LoadBalancerPairList is a list of LoadBalancerPairs.
type LoadBalancerPairList struct {
	metav1.TypeMeta `json:",inline"`
	// metadata is the list's metadata.
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	// items are the LoadBalancerPairs.
	Items []LoadBalancerPair `json:"items"`
}
