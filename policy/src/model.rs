//! The cluster model the compiler reads: namespaces, pods, nodes, services (with the EndpointSlices
//! that name backends beyond their selectors) and the three kinds of policy (NetworkPolicy v1, septum's FlowPolicy, upstream ClusterNetworkPolicy v1alpha2), in the
//! shapes their APIs define, with the distinctions that carry meaning kept (a missing
//! `policyTypes` is not an empty one; a missing port is not port 0). Changes to the model are
//! [`Change`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::cidr::Cidr;
use crate::selector::{LabelSelector, Labels};

/// Label every namespace carries implicitly (set by the API server since Kubernetes 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Transport protocols that policies name. Serialised as written in Kubernetes objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP (the default when a policy port omits the protocol).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// All protocols, in index order.
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => septum_datapath_common::proto::TCP,
            Self::Udp => septum_datapath_common::proto::UDP,
            Self::Sctp => septum_datapath_common::proto::SCTP,
        }
    }

    /// Index into per-protocol arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Tcp => 0,
            Self::Udp => 1,
            Self::Sctp => 2,
        }
    }

    /// The protocol of an IP protocol number, if it is one policies name.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            septum_datapath_common::proto::TCP => Some(Self::Tcp),
            septum_datapath_common::proto::UDP => Some(Self::Udp),
            septum_datapath_common::proto::SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Name as written in Kubernetes objects.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        }
    }

    /// Parses `TCP`, `UDP` or `SCTP` exactly as the API server accepts them (case-sensitive).
    pub fn from_api(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Parses `TCP`, `UDP` or `SCTP` case-insensitively (command-line input; objects use
    /// [`Protocol::from_api`]).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port given by number or by name (Kubernetes `IntOrString`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A named container port (or Service port name, where a FlowPolicy says so).
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(s) => f.write_str(s),
        }
    }
}

/// `namespace/name` of a namespaced object.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A namespace and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels as written (the implicit `kubernetes.io/metadata.name` is added by
    /// [`Cluster::namespace_labels`]).
    pub labels: Labels,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// `name`, if given.
    pub name: Option<String>,
    /// `containerPort`.
    pub port: u16,
    /// `protocol` (TCP when omitted).
    pub protocol: Protocol,
}

/// A pod: what policy needs to know about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// `status.podIPs` (IPv4 and/or IPv6).
    pub ips: Vec<IpAddr>,
    /// Container ports of every container.
    pub ports: Vec<ContainerPort>,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `spec.hostNetwork`: such pods share their node's addresses and are not endpoints.
    pub host_network: bool,
    /// `spec.serviceAccountName` (`default` when omitted).
    pub service_account: String,
    /// The workload the pod belongs to, `Kind/name` (`Deployment/web`), from its controlling
    /// owner reference; `None` for a bare pod. Policy never reads it; flow logs group by it.
    pub workload: Option<String>,
}

impl Pod {
    /// The pod's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// A node and its addresses (used to tell node traffic apart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Internal addresses.
    pub ips: Vec<IpAddr>,
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`, if given.
    pub name: Option<String>,
    /// `port` (on the VIP).
    pub port: u16,
    /// `protocol` (TCP when omitted).
    pub protocol: Protocol,
    /// `targetPort` (defaults to `port`).
    pub target_port: Option<PortRef>,
}

impl ServicePort {
    /// The backend port: `targetPort`, or `port` when omitted.
    pub fn target(&self) -> PortRef {
        self.target_port
            .clone()
            .unwrap_or(PortRef::Number(self.port))
    }

    /// The port this Service port forwards to on `pod`, the way the EndpointSlice controller
    /// resolves it (`FindPort`): a numeric `targetPort` as is; a named one through the pod's
    /// container port of that name *and this port's protocol*. `None` when the name does not
    /// resolve on the pod: the pod is then not an endpoint of this Service port.
    pub fn target_on(&self, pod: &Pod) -> Option<u16> {
        match self.target() {
            PortRef::Number(n) => Some(n),
            PortRef::Name(name) => pod
                .ports
                .iter()
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str()) && cp.protocol == self.protocol
                })
                .map(|cp| cp.port),
        }
    }
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.selector`; `None` (or empty) means the Service selects no pods by itself.
    pub selector: Option<Labels>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// ClusterIPs, externalIPs and LoadBalancer ingress IPs: every VIP of the Service.
    pub cluster_ips: Vec<IpAddr>,
}

impl Service {
    /// The service's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// The Service ports a client's `port` refers to. A Service port is identified by its name
    /// (unique within the Service) or by number *and* protocol together: `53` with `Some(UDP)`
    /// is only the UDP port even when 53/TCP exists too. With `protocol` `None`, a number means
    /// every Service port with that number (53/TCP and 53/UDP); a name ignores `protocol` only
    /// when it is `None`, otherwise the named port must have that protocol.
    pub fn ports_matching<'a>(
        &'a self,
        port: &'a PortRef,
        protocol: Option<Protocol>,
    ) -> impl Iterator<Item = &'a ServicePort> + 'a {
        self.ports.iter().filter(move |sp| {
            let same_port = match port {
                PortRef::Name(n) => sp.name.as_deref() == Some(n.as_str()),
                PortRef::Number(x) => sp.port == *x,
            };
            same_port && protocol.is_none_or(|p| p == sp.protocol)
        })
    }

    /// The endpoints of one of this Service's ports among `pods`: every selected pod on which
    /// the port's `targetPort` resolves, with the resolved port (EndpointSlice semantics).
    pub fn endpoints<'a>(
        &'a self,
        port: &'a ServicePort,
        pods: impl IntoIterator<Item = &'a Pod> + 'a,
    ) -> impl Iterator<Item = (&'a Pod, u16)> + 'a {
        pods.into_iter()
            .filter(|p| self.selects(p))
            .filter_map(|p| port.target_on(p).map(|t| (p, t)))
    }

    /// Whether the Service selects `pod` as a backend.
    pub fn selects(&self, pod: &Pod) -> bool {
        !pod.host_network
            && pod.namespace == self.namespace
            && match &self.selector {
                Some(sel) if !sel.is_empty() => {
                    sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                }
                _ => false,
            }
    }
}

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The `managed-by` value of the slices Kubernetes derives from a Service's selector.
pub const ENDPOINTSLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// A port of an EndpointSlice: the backend port of the Service port with the same name and
/// protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    /// `name` (`""` when omitted, which matches an unnamed Service port).
    pub name: String,
    /// `port`; a port without a number forwards nothing (kube-proxy skips it).
    pub port: Option<u16>,
    /// `protocol` (TCP when omitted).
    pub protocol: Protocol,
}

/// An EndpointSlice (discovery.k8s.io/v1): what policy needs of one. Every endpoint counts,
/// whatever its conditions, as every selected pod of a selector counts whatever its readiness.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Option<String>,
    /// Label `endpointslice.kubernetes.io/managed-by`.
    pub managed_by: Option<String>,
    /// Every address of every endpoint, sorted and without duplicates (none for `FQDN`
    /// slices, whose names septum cannot enforce).
    pub addresses: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    /// The slice's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Whether Kubernetes derived the slice from its Service's selector: the engine derives
    /// those endpoints from the selector itself, so such slices are ignored.
    pub fn is_derived(&self) -> bool {
        self.managed_by.as_deref() == Some(ENDPOINTSLICE_CONTROLLER)
    }

    /// The Service whose backends the slice adds to, if it adds any.
    pub fn manual_service(&self) -> Option<ObjectKey> {
        match &self.service {
            Some(s) if !self.is_derived() => Some(ObjectKey::new(&self.namespace, s)),
            _ => None,
        }
    }

    /// The backend port of Service port `sp` on this slice's endpoints, as kube-proxy pairs
    /// them: the slice port of the same name (`""` for an unnamed one) and protocol.
    pub fn port_for(&self, sp: &ServicePort) -> Option<u16> {
        let name = sp.name.as_deref().unwrap_or("");
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == sp.protocol)
            .and_then(|p| p.port)
    }
}

/// One backend of a Service port: where kube-proxy sends what reaches the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceBackend<'a> {
    /// A pod the Service's selector selects, on which the port's targetPort resolves.
    Pod {
        /// The pod.
        pod: &'a Pod,
        /// The targetPort resolved on the pod.
        port: u16,
    },
    /// An address a manual EndpointSlice of the Service names for the port. It is not matched
    /// to a pod even when it is one's: a slice names addresses, not pods.
    Address {
        /// The address.
        ip: IpAddr,
        /// The slice's port for the Service port.
        port: u16,
    },
}

/// `policyTypes` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyType {
    /// Ingress.
    Ingress,
    /// Egress.
    Egress,
}

/// A NetworkPolicy peer (`from` / `to` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkPolicyPeer {
    /// `podSelector` and/or `namespaceSelector` (at least one is set). Both set means both must
    /// match (AND); `podSelector` alone means pods in the policy's own namespace.
    Pods {
        /// `podSelector`.
        pod_selector: Option<LabelSelector>,
        /// `namespaceSelector`.
        namespace_selector: Option<LabelSelector>,
    },
    /// `ipBlock`.
    IpBlock {
        /// `cidr`.
        cidr: Cidr,
        /// `except`.
        except: Vec<Cidr>,
    },
}

/// A NetworkPolicy port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicyPort {
    /// `protocol`; TCP when omitted.
    pub protocol: Option<Protocol>,
    /// `port`; every port of the protocol when omitted.
    pub port: Option<PortRef>,
    /// `endPort`: with a numeric `port`, the inclusive end of a range.
    pub end_port: Option<u16>,
}

/// An ingress or egress rule. An empty (or missing) peer list matches every peer; an empty (or
/// missing) port list matches every port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicyRule {
    /// `from` (ingress) or `to` (egress).
    pub peers: Vec<NetworkPolicyPeer>,
    /// `ports`.
    pub ports: Vec<NetworkPolicyPort>,
}

/// A Kubernetes NetworkPolicy (networking.k8s.io/v1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.podSelector` (empty selects every pod of the namespace).
    pub pod_selector: LabelSelector,
    /// `spec.policyTypes`; `None` or an empty list means inferred (Ingress always, Egress if any
    /// egress rule), as the API server's defaulting does.
    pub policy_types: Option<Vec<PolicyType>>,
    /// `spec.ingress`.
    pub ingress: Vec<NetworkPolicyRule>,
    /// `spec.egress`.
    pub egress: Vec<NetworkPolicyRule>,
}

impl NetworkPolicy {
    /// The policy's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// Whether the policy isolates its pods for ingress and for egress, with `policyTypes`
    /// inference as the API server does it.
    pub fn isolates(&self) -> (bool, bool) {
        match &self.policy_types {
            Some(types) if !types.is_empty() => (
                types.contains(&PolicyType::Ingress),
                types.contains(&PolicyType::Egress),
            ),
            // The API server defaults an empty list exactly like a missing one.
            _ => (true, !self.egress.is_empty()),
        }
    }
}

/// FlowPolicy `mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowMode {
    /// Denies drop.
    #[default]
    Enforce,
    /// Would-be denies pass and are reported as audit.
    Audit,
}

/// Which pods a FlowPolicy applies to (all in the policy's namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowSubject {
    /// The backends of a Service of the policy's namespace (through its selector).
    Service(String),
    /// Pods matching a selector.
    Pods(LabelSelector),
    /// Pods running as a service account.
    ServiceAccount(String),
}

/// A FlowPolicy peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowPeer {
    /// The backends of a Service; rule ports may name the Service's ports, which map to their
    /// `targetPort`.
    Service {
        /// Namespace (the policy's when `None`).
        namespace: Option<String>,
        /// Service name.
        name: String,
    },
    /// Pods by selector, as a NetworkPolicy peer (namespace selector absent = policy's namespace).
    Pods {
        /// `namespaceSelector`.
        namespace_selector: Option<LabelSelector>,
        /// `podSelector`.
        pod_selector: Option<LabelSelector>,
    },
    /// Pods running as a service account.
    ServiceAccount {
        /// Namespace (the policy's when `None`).
        namespace: Option<String>,
        /// Service account name.
        name: String,
    },
    /// Addresses in a prefix, minus carve-outs (matches pod IPs too).
    Cidr {
        /// The prefix.
        cidr: Cidr,
        /// Carve-outs inside it.
        except: Vec<Cidr>,
    },
}

/// A FlowPolicy port. When the destination is a Service (an egress Service peer, or an ingress
/// rule of a Service subject), `port` names or numbers a Service port and means its `targetPort`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowPort {
    /// Protocol (TCP when omitted). Toward a Service, a Service port is (number, protocol):
    /// with a protocol only that port; without one every Service port of that number.
    pub protocol: Option<Protocol>,
    /// Port; every port of the protocol when omitted.
    pub port: Option<PortRef>,
    /// Inclusive end of a numeric range.
    pub end_port: Option<u16>,
}

/// One allowed flow pattern. Empty peers = any peer; empty ports = any port and protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowRule {
    /// Peers (`from` or `to`).
    pub peers: Vec<FlowPeer>,
    /// Ports.
    pub ports: Vec<FlowPort>,
}

/// septum's FlowPolicy (septum.dev/v1alpha1), in the namespaced tier beside NetworkPolicy. A
/// direction whose rule list is present (even empty) isolates the subject in that direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowPolicy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Enforce or Audit.
    pub mode: FlowMode,
    /// The pods it applies to.
    pub subject: FlowSubject,
    /// Allowed inbound flows; `None` leaves ingress alone.
    pub ingress: Option<Vec<FlowRule>>,
    /// Allowed outbound flows; `None` leaves egress alone.
    pub egress: Option<Vec<FlowRule>>,
}

impl FlowPolicy {
    /// The policy's key.
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// ClusterNetworkPolicy tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpTier {
    /// Evaluated before NetworkPolicy.
    Admin,
    /// Evaluated after NetworkPolicy, for traffic no NetworkPolicy isolates.
    Baseline,
}

/// ClusterNetworkPolicy rule action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CnpAction {
    /// Allow, skipping every later tier.
    Accept,
    /// Drop.
    Deny,
    /// Skip the rest of this tier: in Admin, NetworkPolicy decides; in Baseline, the default
    /// allow.
    Pass,
}

/// ClusterNetworkPolicy subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CnpSubject {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// Selected pods of the selected namespaces.
    Pods {
        /// `namespaceSelector`.
        namespace_selector: LabelSelector,
        /// `podSelector`.
        pod_selector: LabelSelector,
    },
}

/// ClusterNetworkPolicy peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CnpPeer {
    /// Every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// Selected pods of the selected namespaces.
    Pods {
        /// `namespaceSelector`.
        namespace_selector: LabelSelector,
        /// `podSelector`.
        pod_selector: LabelSelector,
    },
    /// `networks` (egress only): prefixes, matching pod IPs too.
    Networks(Vec<Cidr>),
}

/// ClusterNetworkPolicy `protocols` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CnpPort {
    /// Every port of a protocol.
    AnyPort(Protocol),
    /// An inclusive port range (a single port has `start == end`).
    Range {
        /// Protocol.
        protocol: Protocol,
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// `destinationNamedPort`: resolved on the destination pod, any protocol.
    Named(String),
}

/// One ClusterNetworkPolicy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CnpRule {
    /// `name` (optional upstream; used in descriptions).
    pub name: String,
    /// Action.
    pub action: CnpAction,
    /// Peers (`from` / `to`); must not be empty.
    pub peers: Vec<CnpPeer>,
    /// Ports; empty = every port and protocol.
    pub ports: Vec<CnpPort>,
}

/// Upstream ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetworkPolicy {
    /// Name (cluster-scoped).
    pub name: String,
    /// Tier.
    pub tier: CnpTier,
    /// Priority: lower is evaluated first (0..=1000).
    pub priority: u32,
    /// Subject.
    pub subject: CnpSubject,
    /// Ingress rules, in order.
    pub ingress: Vec<CnpRule>,
    /// Egress rules, in order.
    pub egress: Vec<CnpRule>,
}

/// The whole model, keyed for deterministic iteration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Pods by key.
    pub pods: BTreeMap<ObjectKey, Pod>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Services by key.
    pub services: BTreeMap<ObjectKey, Service>,
    /// EndpointSlices by key.
    pub endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// NetworkPolicies by key.
    pub network_policies: BTreeMap<ObjectKey, NetworkPolicy>,
    /// FlowPolicies by key.
    pub flow_policies: BTreeMap<ObjectKey, FlowPolicy>,
    /// ClusterNetworkPolicies by name.
    pub cluster_network_policies: BTreeMap<String, ClusterNetworkPolicy>,
}

impl Cluster {
    /// The effective labels of a namespace: its labels plus `kubernetes.io/metadata.name`. A
    /// namespace missing from the model has only the implicit label.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self
            .namespaces
            .get(name)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        labels
    }

    /// The EndpointSlices that add backends to Service `svc` beyond its selector: those naming
    /// it, except the ones Kubernetes derives from the selector. A Service without a selector
    /// has only these (its endpoints are managed by hand, or mirrored from its Endpoints).
    pub fn manual_slices<'a>(
        &'a self,
        svc: &'a ObjectKey,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let start = ObjectKey::new(&svc.namespace, "");
        self.endpoint_slices
            .range(start..)
            .take_while(move |(k, _)| k.namespace == svc.namespace)
            .map(|(_, s)| s)
            .filter(move |s| !s.is_derived() && s.service.as_deref() == Some(svc.name.as_str()))
    }

    /// The endpoints of Service port `sp` of `svc` that its manual slices name: each address
    /// with its backend port, sorted and without duplicates.
    pub fn manual_endpoints(&self, svc: &Service, sp: &ServicePort) -> Vec<(IpAddr, u16)> {
        let key = svc.key();
        let mut out: Vec<(IpAddr, u16)> = self
            .manual_slices(&key)
            .filter_map(|s| s.port_for(sp).map(|port| (s, port)))
            .flat_map(|(s, port)| s.addresses.iter().map(move |a| (*a, port)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The backends of Service port `sp` of `svc`, as kube-proxy merges them: the selected pods
    /// on which its targetPort resolves, in key order, then what its manual EndpointSlices name
    /// for it ([`Cluster::manual_endpoints`], all a Service without a selector has). The two
    /// parts are not deduplicated against each other.
    pub fn service_backends<'a>(
        &'a self,
        svc: &'a Service,
        sp: &'a ServicePort,
    ) -> impl Iterator<Item = ServiceBackend<'a>> + 'a {
        let selected = svc
            .endpoints(sp, self.pods.values())
            .map(|(pod, port)| ServiceBackend::Pod { pod, port });
        let manual = self
            .manual_endpoints(svc, sp)
            .into_iter()
            .map(|(ip, port)| ServiceBackend::Address { ip, port });
        selected.chain(manual)
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change) {
        match change.clone() {
            Change::UpsertNamespace(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            Change::DeleteNamespace(name) => {
                self.namespaces.remove(&name);
            }
            Change::UpsertPod(p) => {
                self.pods.insert(p.key(), p);
            }
            Change::DeletePod(k) => {
                self.pods.remove(&k);
            }
            Change::UpsertNode(n) => {
                self.nodes.insert(n.name.clone(), n);
            }
            Change::DeleteNode(name) => {
                self.nodes.remove(&name);
            }
            Change::UpsertService(s) => {
                self.services.insert(s.key(), s);
            }
            Change::DeleteService(k) => {
                self.services.remove(&k);
            }
            Change::UpsertEndpointSlice(s) => {
                self.endpoint_slices.insert(s.key(), s);
            }
            Change::DeleteEndpointSlice(k) => {
                self.endpoint_slices.remove(&k);
            }
            Change::UpsertNetworkPolicy(p) => {
                self.network_policies.insert(p.key(), p);
            }
            Change::DeleteNetworkPolicy(k) => {
                self.network_policies.remove(&k);
            }
            Change::UpsertFlowPolicy(p) => {
                self.flow_policies.insert(p.key(), p);
            }
            Change::DeleteFlowPolicy(k) => {
                self.flow_policies.remove(&k);
            }
            Change::UpsertClusterNetworkPolicy(p) => {
                self.cluster_network_policies.insert(p.name.clone(), p);
            }
            Change::DeleteClusterNetworkPolicy(name) => {
                self.cluster_network_policies.remove(&name);
            }
        }
    }
}

/// One change to the model (what a watch event becomes). Upserts cover creates, updates and
/// relabels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A namespace was created or relabelled.
    UpsertNamespace(Namespace),
    /// A namespace was deleted.
    DeleteNamespace(String),
    /// A pod was created or changed (labels, IPs, ports).
    UpsertPod(Pod),
    /// A pod was deleted.
    DeletePod(ObjectKey),
    /// A node was created or changed.
    UpsertNode(Node),
    /// A node was deleted.
    DeleteNode(String),
    /// A Service was created or changed.
    UpsertService(Service),
    /// A Service was deleted.
    DeleteService(ObjectKey),
    /// An EndpointSlice was created or changed.
    UpsertEndpointSlice(EndpointSlice),
    /// An EndpointSlice was deleted.
    DeleteEndpointSlice(ObjectKey),
    /// A NetworkPolicy was created or changed.
    UpsertNetworkPolicy(NetworkPolicy),
    /// A NetworkPolicy was deleted.
    DeleteNetworkPolicy(ObjectKey),
    /// A FlowPolicy was created or changed.
    UpsertFlowPolicy(FlowPolicy),
    /// A FlowPolicy was deleted.
    DeleteFlowPolicy(ObjectKey),
    /// A ClusterNetworkPolicy was created or changed.
    UpsertClusterNetworkPolicy(ClusterNetworkPolicy),
    /// A ClusterNetworkPolicy was deleted.
    DeleteClusterNetworkPolicy(String),
}
