//! Enrichment: what the kernel's numbers mean. A flow event carries addresses, identities and
//! rule cookies; the [`Enricher`], rebuilt from the compiled model on every sync, turns them into
//! namespaces, pods, workloads, labels, Services and the policy rule that decided each side.
//!
//! Pods are found by address first (that names the pod, not just its identity), then by
//! identity (namespace and labels, when the address is not a known pod's). Cookies are looked up
//! in every rule table this agent has seen, so a flow decided just before a policy change still
//! names its rule.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use septum_datapath_common::{
    DropReason, EVENT_F_REPLY, FAMILY_IPV4, FlowEvent, IDENTITY_HOST, IDENTITY_REMOTE_NODE,
    IDENTITY_WORLD, POINT_FROM_POD,
};
use septum_flowlog::aggregate::Observation;
use septum_flowlog::{FlowEnd, Labels, Name, Point, RuleRef, Verdict};
use septum_policy::allocation::Section;
use septum_policy::model::Cluster;
use septum_policy::rules::Tier;
use septum_policy::state::{ClusterState, IdentityDescription};

/// Most cookies remembered from earlier rule tables.
const MAX_REMEMBERED_RULES: usize = 1 << 20;

/// What is known about one pod. Every name is shared: enriching an event copies reference
/// counts, never strings, so a record costs the same whatever the pod's labels are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PodInfo {
    namespace: Name,
    name: Name,
    workload: Name,
    labels: Labels,
}

/// The tables a flow event is enriched from.
#[derive(Clone, Debug, Default)]
pub struct Enricher {
    node: Name,
    /// `node/<this node>`, the workload of the host's own traffic.
    host_workload: Name,
    remote_node: Name,
    world: Name,
    pods: HashMap<IpAddr, PodInfo>,
    identities: HashMap<u32, PodInfo>,
    services: HashMap<IpAddr, Name>,
    rules: HashMap<u32, Arc<RuleRef>>,
}

/// A flow event's addresses.
pub fn event_addrs(ev: &FlowEvent) -> (IpAddr, IpAddr) {
    let ip = |b: [u8; 16]| -> IpAddr {
        if ev.family == FAMILY_IPV4 {
            IpAddr::from([b[0], b[1], b[2], b[3]])
        } else {
            IpAddr::from(b)
        }
    };
    (ip(ev.saddr), ip(ev.daddr))
}

fn rule_ref(d: &septum_policy::rules::RuleDescription) -> RuleRef {
    RuleRef {
        kind: d.policy.kind.as_str().to_string(),
        namespace: d.policy.object.namespace.clone(),
        name: d.policy.object.name.clone(),
        tier: match d.tier {
            Tier::Admin => "Admin".into(),
            Tier::Baseline => "Baseline".into(),
            Tier::Namespaced | Tier::Builtin => String::new(),
        },
        rule_index: match d.section {
            Section::EgressIsolation | Section::IngressIsolation => -1,
            Section::Egress | Section::Ingress => i32::try_from(d.index).unwrap_or(i32::MAX),
        },
    }
}

/// Pod identities as what a flow end shows: namespace and labels.
fn identity_infos(
    identities: &std::collections::BTreeMap<septum_datapath_common::Identity, IdentityDescription>,
) -> HashMap<u32, PodInfo> {
    identities
        .iter()
        .filter_map(|(id, d)| match d {
            IdentityDescription::Pod(k) => Some((
                id.get(),
                PodInfo {
                    namespace: k.namespace.as_str().into(),
                    labels: k.labels.clone().into(),
                    ..PodInfo::default()
                },
            )),
            _ => None,
        })
        .collect()
}

/// The rules of `previous` worth keeping (a flow decided just before a change still names its
/// rule), bounded.
fn remembered(previous: Option<&Enricher>) -> HashMap<u32, Arc<RuleRef>> {
    match previous {
        Some(p) if p.rules.len() < MAX_REMEMBERED_RULES => p.rules.clone(),
        _ => HashMap::new(),
    }
}

impl Enricher {
    /// The tables of a compiled model, remembering `previous`'s rules for cookies that are gone.
    pub fn build(
        node: &str,
        model: &Cluster,
        state: &ClusterState,
        previous: Option<&Enricher>,
    ) -> Self {
        let mut pods = HashMap::new();
        for p in model.pods.values() {
            if p.host_network {
                continue;
            }
            let info = PodInfo {
                namespace: p.namespace.as_str().into(),
                name: p.name.as_str().into(),
                workload: p
                    .workload
                    .clone()
                    .unwrap_or_else(|| format!("Pod/{}", p.name))
                    .into(),
                labels: p.labels.clone().into(),
            };
            for ip in &p.ips {
                pods.insert(*ip, info.clone());
            }
        }
        let identities = identity_infos(&state.identities);
        let mut services = HashMap::new();
        for s in model.services.values() {
            for ip in &s.cluster_ips {
                services.insert(*ip, format!("{}/{}", s.namespace, s.name).into());
            }
        }
        let mut rules = remembered(previous);
        for (cookie, d) in &state.rules {
            rules.insert(cookie.get(), Arc::new(rule_ref(d)));
        }
        Self {
            pods,
            identities,
            services,
            rules,
            ..Self::empty(node)
        }
    }

    /// Cluster mode's tables: this node's own pods by address, and from the node-state stream
    /// the other nodes' pods by address, the cluster's identities (an end known only by its
    /// identity is named by namespace and labels), the Services of the VIPs and the rules,
    /// remembering `previous`'s rules for cookies that are gone.
    pub fn from_endpoints<'a>(
        node: &str,
        pods: impl Iterator<Item = (&'a [IpAddr], &'a septum_policy::model::ObjectKey)>,
        state: &septum_policy::node::NodeState,
        previous: Option<&Enricher>,
    ) -> Self {
        let mut out = Self::empty(node);
        let identities = identity_infos(&state.identities);
        for (ips, key) in pods {
            // The pod's labels are its identity's (the CNI ADD names only the pod).
            let labels = state
                .endpoints
                .get(key)
                .and_then(|e| identities.get(&e.identity.get()))
                .map(|i| i.labels.clone())
                .unwrap_or_default();
            let info = PodInfo {
                namespace: key.namespace.as_str().into(),
                name: key.name.as_str().into(),
                workload: format!("Pod/{}", key.name).into(),
                labels,
            };
            for ip in ips {
                out.pods.insert(*ip, info.clone());
            }
        }
        // The other nodes' pods by address, with their identity's labels (what the ipcache
        // maps the address to).
        for (ip, key) in &state.pod_addresses {
            if out.pods.contains_key(ip) {
                continue;
            }
            let labels = state
                .ipcache
                .get(&septum_policy::cidr::Cidr::host(*ip))
                .and_then(|e| identities.get(&e.identity))
                .map(|i| i.labels.clone())
                .unwrap_or_default();
            out.pods.insert(
                *ip,
                PodInfo {
                    namespace: key.namespace.as_str().into(),
                    name: key.name.as_str().into(),
                    workload: format!("Pod/{}", key.name).into(),
                    labels,
                },
            );
        }
        out.identities = identities;
        // A VIP names its Service (the one owning it: a VIP shared by two Services belongs to
        // the first by key, for every port).
        for (vip, e) in &state.services {
            if let Some(k) = state
                .service_names
                .get(&septum_datapath_common::ServiceId::new(e.service_id))
            {
                out.services
                    .entry(vip.addr)
                    .or_insert_with(|| format!("{}/{}", k.namespace, k.name).into());
            }
        }
        out.rules = remembered(previous);
        for (cookie, d) in &state.rules {
            out.rules.insert(cookie.get(), Arc::new(rule_ref(d)));
        }
        out
    }

    /// An empty table for `node` (before the first model).
    pub fn empty(node: &str) -> Self {
        Self {
            node: node.into(),
            host_workload: format!("node/{node}").into(),
            remote_node: "remote-node".into(),
            world: "world".into(),
            ..Self::default()
        }
    }

    /// The Service whose VIP `ip` is.
    pub fn service(&self, ip: IpAddr) -> Option<&str> {
        self.services.get(&ip).map(Name::as_str)
    }

    /// One end of a flow.
    pub fn end(&self, ip: IpAddr, port: u16, identity: u32) -> FlowEnd {
        let mut end = FlowEnd {
            ip: Some(ip),
            port,
            identity,
            ..FlowEnd::default()
        };
        if let Some(p) = self.pods.get(&ip) {
            end.namespace.clone_from(&p.namespace);
            end.pod.clone_from(&p.name);
            end.workload.clone_from(&p.workload);
            end.labels.clone_from(&p.labels);
        } else if let Some(p) = self.identities.get(&identity) {
            end.namespace.clone_from(&p.namespace);
            end.labels.clone_from(&p.labels);
        } else if identity == IDENTITY_HOST {
            end.workload.clone_from(&self.host_workload);
        } else if identity == IDENTITY_REMOTE_NODE {
            end.workload.clone_from(&self.remote_node);
        } else if identity == IDENTITY_WORLD {
            end.workload.clone_from(&self.world);
        }
        if let Some(s) = self.services.get(&ip) {
            end.service.clone_from(s);
        }
        end
    }

    /// The rule a cookie names (`None` for 0: the side was not policed).
    pub fn rule(&self, cookie: u32) -> Option<Arc<RuleRef>> {
        if cookie == 0 {
            return None;
        }
        Some(self.rules.get(&cookie).cloned().unwrap_or_else(|| {
            Arc::new(RuleRef {
                kind: "unknown".into(),
                name: format!("cookie-{cookie}"),
                rule_index: -1,
                ..RuleRef::default()
            })
        }))
    }

    /// A flow event as an observation at wall time `time_ms`; `None` when the event's codes
    /// are not this build's (a layout mismatch, counted by the caller).
    pub fn observe(&self, ev: &FlowEvent, time_ms: i64) -> Option<Observation> {
        let verdict = match septum_datapath_common::Verdict::from_u8(ev.verdict)? {
            septum_datapath_common::Verdict::Forwarded => Verdict::Forwarded,
            septum_datapath_common::Verdict::Dropped => Verdict::Dropped,
            septum_datapath_common::Verdict::Audit => Verdict::Audit,
        };
        DropReason::from_u8(ev.drop_reason)?;
        let point = if ev.point == POINT_FROM_POD {
            Point::FromPod
        } else {
            Point::ToPod
        };
        let (s, d) = event_addrs(ev);
        Some(Observation {
            time_ms,
            node: self.node.clone(),
            point,
            protocol: ev.protocol,
            src: self.end(s, ev.sport, ev.src_identity),
            dst: self.end(d, ev.dport, ev.dst_identity),
            verdict,
            drop_reason: ev.drop_reason,
            egress_rule: self.rule(ev.egress_cookie),
            ingress_rule: self.rule(ev.ingress_cookie),
            tcp_flags: ev.tcp_flags,
            bytes: u64::from(ev.packet_len),
            is_reply: ev.flags & EVENT_F_REPLY != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use septum_datapath_common::{POINT_TO_POD, proto};
    use septum_policy::model::{ObjectKey, Pod, Service};

    fn model() -> Cluster {
        let mut c = Cluster::default();
        let web = Pod {
            namespace: "shop".into(),
            name: "web-7d9f-abcde".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ips: vec!["10.0.0.2".parse().unwrap()],
            service_account: "default".into(),
            workload: Some("Deployment/web".into()),
            ..Pod::default()
        };
        c.pods.insert(web.key(), web);
        let svc = Service {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            ..Service::default()
        };
        c.services.insert(ObjectKey::new("shop", "web"), svc);
        c
    }

    fn event(saddr: [u8; 4], daddr: [u8; 4]) -> FlowEvent {
        let mut s = [0u8; 16];
        s[..4].copy_from_slice(&saddr);
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&daddr);
        FlowEvent {
            saddr: s,
            daddr: d,
            sport: 40000,
            dport: 80,
            family: FAMILY_IPV4,
            protocol: proto::TCP,
            point: POINT_TO_POD,
            verdict: 2,
            drop_reason: 2,
            src_identity: IDENTITY_WORLD,
            dst_identity: 300,
            ingress_cookie: 99,
            packet_len: 60,
            ..FlowEvent::default()
        }
    }

    #[test]
    fn ends_are_named_by_address_and_services_by_vip() {
        let e = Enricher::build("n1", &model(), &ClusterState::default(), None);
        let o = e.observe(&event([1, 2, 3, 4], [10, 0, 0, 2]), 5).unwrap();
        assert_eq!(o.dst.pod, "web-7d9f-abcde");
        assert_eq!(o.dst.workload, "Deployment/web");
        assert_eq!(o.dst.labels["app"], "web");
        assert_eq!(o.src.workload, "world");
        assert_eq!(o.verdict, Verdict::Dropped);
        assert_eq!(o.point, Point::ToPod);
        // A cookie no table knows is still reported, not hidden.
        assert_eq!(o.ingress_rule.unwrap().name, "cookie-99");
        assert!(o.egress_rule.is_none());
        let o = e
            .observe(&event([10, 0, 0, 2], [10, 96, 0, 10]), 5)
            .unwrap();
        assert_eq!(o.dst.service, "shop/web");
    }

    #[test]
    fn cluster_mode_names_remote_ends_by_identity_and_rules_from_the_stream() {
        use septum_datapath_common::{Cookie, Identity};
        use septum_policy::identity::IdentityKey;
        use septum_policy::rules::RuleDescription;
        use septum_policy::state::EndpointState;
        let mut state = septum_policy::node::NodeState::default();
        let labels = |app: &str| [("app".to_string(), app.to_string())].into();
        for (id, ns, app) in [(300, "shop", "web"), (301, "team", "client")] {
            state.identities.insert(
                Identity::new(id),
                IdentityDescription::Pod(IdentityKey {
                    namespace: ns.into(),
                    labels: labels(app),
                    service_account: "default".into(),
                    named_ports: Vec::new(),
                }),
            );
        }
        let web = ObjectKey::new("shop", "web-1");
        state.endpoints.insert(
            web.clone(),
            EndpointState {
                identity: Identity::new(300),
                flags: 0,
                mode: 0,
            },
        );
        state.rules.insert(
            Cookie::new(99),
            RuleDescription {
                tier: Tier::Namespaced,
                policy: septum_policy::rules::PolicyRef {
                    kind: septum_policy::allocation::PolicyKind::NetworkPolicy,
                    object: ObjectKey::new("shop", "web-in"),
                },
                section: Section::IngressIsolation,
                index: 0,
                text: String::new(),
            },
        );
        // A VIP of service id 5, named by the stream; id 6 has no name and names nothing.
        for (port, id) in [(80, 5), (53, 6)] {
            state.services.insert(
                septum_policy::state::ServiceVip {
                    addr: [10, 96, 0, 20 + port as u8 % 2].into(),
                    port,
                    protocol: septum_policy::model::Protocol::Tcp,
                },
                septum_datapath_common::ServiceEntry { service_id: id },
            );
        }
        state.service_names.insert(
            septum_datapath_common::ServiceId::new(5),
            ObjectKey::new("shop", "web"),
        );
        let ips: Vec<IpAddr> = vec!["10.0.0.2".parse().unwrap()];
        let e = Enricher::from_endpoints("n1", [(ips.as_slice(), &web)].into_iter(), &state, None);
        let to_vip = |last: u8| {
            e.observe(&event([10, 0, 0, 2], [10, 96, 0, last]), 5)
                .unwrap()
                .dst
                .service
        };
        assert_eq!(to_vip(20), "shop/web");
        assert_eq!(to_vip(21), "");
        let mut ev = event([10, 1, 0, 9], [10, 0, 0, 2]);
        ev.src_identity = 301;
        let o = e.observe(&ev, 5).unwrap();
        // The local pod by name with its identity's labels; the remote end, whose address the
        // stream does not name, by identity.
        assert_eq!(o.dst.pod, "web-1");
        assert_eq!(o.dst.labels["app"], "web");
        assert_eq!(o.src.namespace, "team");
        assert_eq!(o.src.labels["app"], "client");
        assert_eq!(o.src.pod, "");
        // A pod of another node the stream names: by name, with its address's identity's labels.
        let mut named = state.clone();
        named.pod_addresses.insert(
            "10.1.0.9".parse().unwrap(),
            ObjectKey::new("team", "client-1"),
        );
        named.ipcache.insert(
            septum_policy::cidr::Cidr::host("10.1.0.9".parse().unwrap()),
            septum_datapath_common::IpCacheEntry {
                identity: 301,
                cidr_identity: 0,
                kind: septum_datapath_common::IPCACHE_KIND_POD,
                _pad: [0; 3],
            },
        );
        let e2 = Enricher::from_endpoints("n1", [(ips.as_slice(), &web)].into_iter(), &named, None);
        let o2 = e2.observe(&ev, 5).unwrap();
        assert_eq!(
            (
                o2.src.namespace.as_str(),
                o2.src.pod.as_str(),
                o2.src.workload.as_str()
            ),
            ("team", "client-1", "Pod/client-1")
        );
        assert_eq!(o2.src.labels["app"], "client");
        assert_eq!(o2.dst.pod, "web-1");
        let rule = o.ingress_rule.unwrap();
        assert_eq!(
            (
                rule.kind.as_str(),
                rule.namespace.as_str(),
                rule.name.as_str(),
                rule.rule_index
            ),
            ("NetworkPolicy", "shop", "web-in", -1)
        );
        // A later table without the cookie still names it (a flow decided just before).
        let later = Enricher::from_endpoints(
            "n1",
            std::iter::empty(),
            &septum_policy::node::NodeState::default(),
            Some(&e),
        );
        assert_eq!(later.rule(99).unwrap().name, "web-in");
    }

    #[test]
    fn events_with_unknown_codes_are_refused() {
        let e = Enricher::empty("n1");
        let mut ev = event([1, 1, 1, 1], [2, 2, 2, 2]);
        ev.verdict = 77;
        assert!(e.observe(&ev, 0).is_none());
        let mut ev = event([1, 1, 1, 1], [2, 2, 2, 2]);
        ev.drop_reason = 200;
        assert!(e.observe(&ev, 0).is_none());
    }
}
