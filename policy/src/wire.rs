//! The node-state stream's wire form (`septum.nodestate.v1`): a node's state, or the diff
//! between two revisions of it, as one [`pb::Update`]. The controller encodes, the agent decodes;
//! both live here so that a round trip is one function's test.
//!
//! Encoding is total. Decoding checks every field a peer could get wrong (address lengths,
//! prefix lengths the datapath contract allows, 8- and 16-bit fields that arrive as `uint32`,
//! protocols, identity 0, empty names, duplicate keys, deletes in a snapshot) and refuses the
//! whole update with the first problem: an update is applied entirely or not at all.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use septum_datapath_common::{
    Cookie, Identity, IpCacheEntry, LpmData, PolicyEntry, PolicyKeyData, ServiceEntry, ServiceId,
};
use septum_proto::nodestate::v1 as pb;

use crate::allocation::{PolicyKind, Section};
use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::{ObjectKey, Protocol};
use crate::node::{NodeState, NodeStateDiff};
use crate::rules::{PolicyRef, RuleDescription, Tier};
use crate::state::{EndpointState, IdentityDescription, PolicyKey, ServiceVip};

/// One update of a node's state, typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// The controller run the revisions belong to.
    pub epoch: u64,
    /// The revision the diff applies to (ignored for a snapshot).
    pub from_revision: u64,
    /// The revision after it.
    pub revision: u64,
    /// Whether the upserts are the whole state.
    pub snapshot: bool,
    /// The node.
    pub node: String,
    /// What changes (a snapshot: upserts only).
    pub diff: NodeStateDiff,
}

impl Update {
    /// The snapshot of `state` at `revision`.
    pub fn snapshot(epoch: u64, revision: u64, state: &NodeState) -> Self {
        Self {
            epoch,
            from_revision: 0,
            revision,
            snapshot: true,
            node: state.node.clone(),
            diff: NodeStateDiff::between(
                &NodeState {
                    node: state.node.clone(),
                    ..NodeState::default()
                },
                state,
            ),
        }
    }

    /// The state a snapshot describes.
    pub fn to_state(&self) -> NodeState {
        let mut state = NodeState {
            node: self.node.clone(),
            ..NodeState::default()
        };
        self.diff.apply_to(&mut state);
        state
    }
}

/// Why an update was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid node-state update: {field}: {message}")]
pub struct WireError {
    /// Which field (`policy_upserts[3].key.prefix_len`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: impl fmt::Display, message: impl Into<String>) -> WireError {
    WireError {
        field: field.to_string(),
        message: message.into(),
    }
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn pod_ref(k: &ObjectKey) -> pb::PodRef {
    pb::PodRef {
        namespace: k.namespace.clone(),
        name: k.name.clone(),
    }
}

fn prefix(c: &Cidr) -> pb::Prefix {
    pb::Prefix {
        addr: addr_bytes(c.addr()),
        len: u32::from(c.len()),
    }
}

fn policy_key(k: &PolicyKey) -> pb::PolicyKey {
    let d = k.data();
    pb::PolicyKey {
        prefix_len: k.prefix_len(),
        subject: d.subject(),
        peer: d.peer(),
        direction: u32::from(d.direction),
        protocol: u32::from(d.protocol),
        port: u32::from(d.port()),
    }
}

fn vip(v: &ServiceVip) -> pb::ServiceVip {
    pb::ServiceVip {
        addr: addr_bytes(v.addr),
        port: u32::from(v.port),
        protocol: u32::from(v.protocol.number()),
    }
}

fn rule(c: &Cookie, d: &RuleDescription) -> pb::RuleDescription {
    pb::RuleDescription {
        cookie: c.get(),
        tier: d.tier.as_str().to_string(),
        kind: d.policy.kind.as_str().to_string(),
        namespace: d.policy.object.namespace.clone(),
        name: d.policy.object.name.clone(),
        section: d.section.as_str().to_string(),
        index: d.index,
        text: d.text.clone(),
    }
}

fn identity(i: &Identity, d: &IdentityDescription) -> pb::IdentityDescription {
    use pb::identity_description::Kind;
    let kind = match d {
        IdentityDescription::Pod(k) => Kind::Pod(pb::PodIdentity {
            namespace: k.namespace.clone(),
            labels: k.labels.clone().into_iter().collect(),
            service_account: k.service_account.clone(),
            named_ports: k
                .named_ports
                .iter()
                .map(|(name, p, port)| pb::NamedPort {
                    name: name.clone(),
                    protocol: u32::from(p.number()),
                    port: u32::from(*port),
                })
                .collect(),
        }),
        IdentityDescription::Cidr(c) => Kind::Cidr(prefix(c)),
        IdentityDescription::PodInCidr { identity, cidr } => Kind::PodInCidr(pb::PodInCidr {
            identity: identity.get(),
            cidr: Some(prefix(cidr)),
        }),
    };
    pb::IdentityDescription {
        identity: i.get(),
        kind: Some(kind),
    }
}

/// The wire form of an update.
pub fn encode(u: &Update) -> pb::Update {
    let d = &u.diff;
    pb::Update {
        epoch: u.epoch,
        from_revision: u.from_revision,
        revision: u.revision,
        snapshot: u.snapshot,
        node: u.node.clone(),
        endpoint_upserts: d
            .endpoints
            .upserts
            .iter()
            .map(|(k, e)| pb::Endpoint {
                pod: Some(pod_ref(k)),
                identity: e.identity.get(),
                flags: u32::from(e.flags),
                mode: u32::from(e.mode),
            })
            .collect(),
        endpoint_deletes: d.endpoints.deletes.iter().map(pod_ref).collect(),
        ipcache_upserts: d
            .ipcache
            .upserts
            .iter()
            .map(|(c, e)| pb::IpCacheEntry {
                prefix: Some(prefix(c)),
                identity: e.identity,
                cidr_identity: e.cidr_identity,
                kind: u32::from(e.kind),
            })
            .collect(),
        ipcache_deletes: d.ipcache.deletes.iter().map(prefix).collect(),
        policy_upserts: d
            .policy
            .upserts
            .iter()
            .map(|(k, e)| pb::PolicyEntry {
                key: Some(policy_key(k)),
                action: u32::from(e.action),
                precedence: u32::from(e.precedence),
                cookie: e.cookie,
            })
            .collect(),
        policy_deletes: d.policy.deletes.iter().map(policy_key).collect(),
        service_upserts: d
            .services
            .upserts
            .iter()
            .map(|(v, e)| pb::ServiceEntry {
                vip: Some(vip(v)),
                service_id: e.service_id,
            })
            .collect(),
        service_deletes: d.services.deletes.iter().map(vip).collect(),
        rule_upserts: d.rules.upserts.iter().map(|(c, r)| rule(c, r)).collect(),
        rule_deletes: d.rules.deletes.iter().map(|c| c.get()).collect(),
        identity_upserts: d
            .identities
            .upserts
            .iter()
            .map(|(i, r)| identity(i, r))
            .collect(),
        identity_deletes: d.identities.deletes.iter().map(|i| i.get()).collect(),
        service_name_upserts: d
            .service_names
            .upserts
            .iter()
            .map(|(id, k)| pb::ServiceName {
                service_id: id.get(),
                namespace: k.namespace.clone(),
                name: k.name.clone(),
            })
            .collect(),
        service_name_deletes: d.service_names.deletes.iter().map(|i| i.get()).collect(),
        pod_address_upserts: d
            .pod_addresses
            .upserts
            .iter()
            .map(|(ip, k)| pb::PodAddress {
                addr: addr_bytes(*ip),
                pod: Some(pod_ref(k)),
            })
            .collect(),
        pod_address_deletes: d
            .pod_addresses
            .deletes
            .iter()
            .map(|ip| addr_bytes(*ip))
            .collect(),
    }
}

fn narrow<T: TryFrom<u32>>(v: u32, field: &str) -> Result<T, WireError> {
    T::try_from(v).map_err(|_| {
        err(
            field,
            format!("{v} does not fit in {} bits", std::mem::size_of::<T>() * 8),
        )
    })
}

fn decode_addr(bytes: &[u8], field: &str) -> Result<IpAddr, WireError> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default())),
        16 => Ok(IpAddr::from(
            <[u8; 16]>::try_from(bytes).unwrap_or_default(),
        )),
        n => Err(err(field, format!("an address is 4 or 16 bytes, not {n}"))),
    }
}

fn decode_object(namespace: &str, name: &str, field: &str) -> Result<ObjectKey, WireError> {
    if namespace.is_empty() || name.is_empty() {
        return Err(err(field, "namespace and name must both be set"));
    }
    Ok(ObjectKey::new(namespace, name))
}

fn decode_pod(p: Option<&pb::PodRef>, field: &str) -> Result<ObjectKey, WireError> {
    let p = p.ok_or_else(|| err(field, "missing"))?;
    decode_object(&p.namespace, &p.name, field)
}

/// Numbers for which 0 means nothing (`zero` says so), each once: the deletes of the tables
/// keyed by cookie, identity or service id.
fn nonzero_keys<K: Ord + Clone + fmt::Debug>(
    numbers: &[u32],
    field: &str,
    zero: &str,
    key: impl Fn(u32) -> K,
) -> Result<Vec<K>, WireError> {
    unique_keys(
        numbers.iter().enumerate().map(|(i, n)| match n {
            0 => Err(err(format!("{field}[{i}]"), zero)),
            n => Ok(key(*n)),
        }),
        field,
    )
}

fn decode_prefix(p: Option<&pb::Prefix>, field: &str) -> Result<Cidr, WireError> {
    let p = p.ok_or_else(|| err(field, "missing"))?;
    let addr = decode_addr(&p.addr, &format!("{field}.addr"))?;
    let len: u8 = narrow(p.len, &format!("{field}.len"))?;
    let cidr = Cidr::new(addr, len).map_err(|e| err(format!("{field}.len"), e.to_string()))?;
    if cidr.addr() != addr {
        return Err(err(field, format!("{addr}/{len} has host bits set")));
    }
    Ok(cidr)
}

fn decode_policy_key(k: Option<&pb::PolicyKey>, field: &str) -> Result<PolicyKey, WireError> {
    let k = k.ok_or_else(|| err(field, "missing"))?;
    let data = PolicyKeyData::new(
        k.subject,
        narrow(k.direction, &format!("{field}.direction"))?,
        k.peer,
        narrow(k.protocol, &format!("{field}.protocol"))?,
        narrow(k.port, &format!("{field}.port"))?,
    );
    if !data.valid_prefix(k.prefix_len) {
        return Err(err(
            format!("{field}.prefix_len"),
            format!("{} is not a prefix length policy keys use", k.prefix_len),
        ));
    }
    let key = PolicyKey::new(k.prefix_len, data);
    if key.data() != data {
        return Err(err(field, "bits beyond the prefix length are set"));
    }
    if key.subject().get() == 0 {
        return Err(err(format!("{field}.subject"), "identity 0 is no identity"));
    }
    Ok(key)
}

fn decode_vip(v: Option<&pb::ServiceVip>, field: &str) -> Result<ServiceVip, WireError> {
    let v = v.ok_or_else(|| err(field, "missing"))?;
    let protocol = Protocol::from_number(narrow(v.protocol, &format!("{field}.protocol"))?)
        .ok_or_else(|| {
            err(
                format!("{field}.protocol"),
                format!("{} is not TCP (6), UDP (17) or SCTP (132)", v.protocol),
            )
        })?;
    Ok(ServiceVip {
        addr: decode_addr(&v.addr, &format!("{field}.addr"))?,
        port: narrow(v.port, &format!("{field}.port"))?,
        protocol,
    })
}

/// Collects `(key, value)` pairs, refusing a key that appears twice (a peer that sends two
/// values for one key has a bug the agent must not paper over by picking one).
fn unique<K: Ord + Clone + fmt::Debug, V>(
    items: impl IntoIterator<Item = Result<(K, V), WireError>>,
    field: &str,
) -> Result<Vec<(K, V)>, WireError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let (k, v) = item?;
        if !seen.insert(k.clone()) {
            return Err(err(format!("{field}[{i}]"), format!("{k:?} appears twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn unique_keys<K: Ord + Clone + fmt::Debug>(
    items: impl IntoIterator<Item = Result<K, WireError>>,
    field: &str,
) -> Result<Vec<K>, WireError> {
    Ok(
        unique(items.into_iter().map(|k| k.map(|k| (k, ()))), field)?
            .into_iter()
            .map(|(k, ())| k)
            .collect(),
    )
}

/// The typed form of a wire update, or the first thing wrong with it.
fn decode_rule(r: &pb::RuleDescription, f: &str) -> Result<(Cookie, RuleDescription), WireError> {
    if r.cookie == 0 {
        return Err(err(format!("{f}.cookie"), "cookie 0 is no rule"));
    }
    let tier = [Tier::Admin, Tier::Namespaced, Tier::Baseline, Tier::Builtin]
        .into_iter()
        .find(|t| t.as_str() == r.tier)
        .ok_or_else(|| err(format!("{f}.tier"), format!("{:?}: no tier", r.tier)))?;
    let kind: PolicyKind = r
        .kind
        .parse()
        .map_err(|_| err(format!("{f}.kind"), format!("{:?}: no policy kind", r.kind)))?;
    let section: Section = r.section.parse().map_err(|_| {
        err(
            format!("{f}.section"),
            format!("{:?}: no section", r.section),
        )
    })?;
    if r.name.is_empty() {
        return Err(err(format!("{f}.name"), "missing"));
    }
    Ok((
        Cookie::new(r.cookie),
        RuleDescription {
            tier,
            policy: PolicyRef {
                kind,
                object: ObjectKey::new(&r.namespace, &r.name),
            },
            section,
            index: r.index,
            text: r.text.clone(),
        },
    ))
}

fn decode_identity(
    d: &pb::IdentityDescription,
    f: &str,
) -> Result<(Identity, IdentityDescription), WireError> {
    use pb::identity_description::Kind;
    if d.identity == 0 {
        return Err(err(format!("{f}.identity"), "identity 0 is no identity"));
    }
    let desc = match &d.kind {
        None => return Err(err(format!("{f}.kind"), "missing")),
        Some(Kind::Pod(p)) => IdentityDescription::Pod(IdentityKey {
            namespace: p.namespace.clone(),
            labels: p.labels.clone().into_iter().collect(),
            service_account: p.service_account.clone(),
            named_ports: p
                .named_ports
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let nf = format!("{f}.pod.named_ports[{i}]");
                    let number: u8 = narrow(n.protocol, &format!("{nf}.protocol"))?;
                    let protocol = Protocol::from_number(number).ok_or_else(|| {
                        err(
                            format!("{nf}.protocol"),
                            format!("{number}: not TCP, UDP or SCTP"),
                        )
                    })?;
                    Ok((
                        n.name.clone(),
                        protocol,
                        narrow(n.port, &format!("{nf}.port"))?,
                    ))
                })
                .collect::<Result<_, WireError>>()?,
        }),
        Some(Kind::Cidr(c)) => {
            IdentityDescription::Cidr(decode_prefix(Some(c), &format!("{f}.cidr"))?)
        }
        Some(Kind::PodInCidr(p)) => {
            if p.identity == 0 {
                return Err(err(
                    format!("{f}.pod_in_cidr.identity"),
                    "identity 0 is no identity",
                ));
            }
            IdentityDescription::PodInCidr {
                identity: Identity::new(p.identity),
                cidr: decode_prefix(p.cidr.as_ref(), &format!("{f}.pod_in_cidr.cidr"))?,
            }
        }
    };
    Ok((Identity::new(d.identity), desc))
}

pub fn decode(u: &pb::Update) -> Result<Update, WireError> {
    if u.node.is_empty() {
        return Err(err("node", "missing"));
    }
    if u.revision == 0 {
        return Err(err("revision", "revisions start at 1"));
    }
    if !u.snapshot && u.from_revision >= u.revision {
        return Err(err(
            "from_revision",
            format!(
                "a delta goes forward ({} -> {})",
                u.from_revision, u.revision
            ),
        ));
    }
    let endpoints = unique(
        u.endpoint_upserts.iter().enumerate().map(|(i, e)| {
            let f = format!("endpoint_upserts[{i}]");
            let key = decode_pod(e.pod.as_ref(), &format!("{f}.pod"))?;
            if e.identity == 0 {
                return Err(err(format!("{f}.identity"), "identity 0 is no identity"));
            }
            Ok((
                key,
                EndpointState {
                    identity: Identity::new(e.identity),
                    flags: narrow(e.flags, &format!("{f}.flags"))?,
                    mode: narrow(e.mode, &format!("{f}.mode"))?,
                },
            ))
        }),
        "endpoint_upserts",
    )?;
    let ipcache = unique(
        u.ipcache_upserts.iter().enumerate().map(|(i, e)| {
            let f = format!("ipcache_upserts[{i}]");
            Ok((
                decode_prefix(e.prefix.as_ref(), &format!("{f}.prefix"))?,
                IpCacheEntry {
                    identity: e.identity,
                    cidr_identity: e.cidr_identity,
                    kind: narrow(e.kind, &format!("{f}.kind"))?,
                    _pad: [0; 3],
                },
            ))
        }),
        "ipcache_upserts",
    )?;
    let policy = unique(
        u.policy_upserts.iter().enumerate().map(|(i, e)| {
            let f = format!("policy_upserts[{i}]");
            Ok((
                decode_policy_key(e.key.as_ref(), &format!("{f}.key"))?,
                PolicyEntry {
                    action: narrow(e.action, &format!("{f}.action"))?,
                    _pad: 0,
                    precedence: narrow(e.precedence, &format!("{f}.precedence"))?,
                    cookie: e.cookie,
                },
            ))
        }),
        "policy_upserts",
    )?;
    let services = unique(
        u.service_upserts.iter().enumerate().map(|(i, e)| {
            let f = format!("service_upserts[{i}]");
            Ok((
                decode_vip(e.vip.as_ref(), &format!("{f}.vip"))?,
                ServiceEntry {
                    service_id: e.service_id,
                },
            ))
        }),
        "service_upserts",
    )?;
    let rules = unique(
        u.rule_upserts
            .iter()
            .enumerate()
            .map(|(i, r)| decode_rule(r, &format!("rule_upserts[{i}]"))),
        "rule_upserts",
    )?;
    let identities = unique(
        u.identity_upserts
            .iter()
            .enumerate()
            .map(|(i, d)| decode_identity(d, &format!("identity_upserts[{i}]"))),
        "identity_upserts",
    )?;
    let service_names = unique(
        u.service_name_upserts.iter().enumerate().map(|(i, n)| {
            let f = format!("service_name_upserts[{i}]");
            if n.service_id == 0 {
                return Err(err(format!("{f}.service_id"), "service id 0 is no Service"));
            }
            Ok((
                ServiceId::new(n.service_id),
                decode_object(&n.namespace, &n.name, &f)?,
            ))
        }),
        "service_name_upserts",
    )?;
    let pod_addresses = unique(
        u.pod_address_upserts.iter().enumerate().map(|(i, a)| {
            let f = format!("pod_address_upserts[{i}]");
            Ok((
                decode_addr(&a.addr, &format!("{f}.addr"))?,
                decode_pod(a.pod.as_ref(), &format!("{f}.pod"))?,
            ))
        }),
        "pod_address_upserts",
    )?;
    let deletes = u.endpoint_deletes.len()
        + u.ipcache_deletes.len()
        + u.policy_deletes.len()
        + u.service_deletes.len()
        + u.rule_deletes.len()
        + u.identity_deletes.len()
        + u.service_name_deletes.len()
        + u.pod_address_deletes.len();
    if u.snapshot && deletes > 0 {
        return Err(err("snapshot", "a snapshot carries no deletes"));
    }
    let mut diff = NodeStateDiff::default();
    diff.endpoints.upserts = endpoints;
    diff.endpoints.deletes = unique_keys(
        u.endpoint_deletes
            .iter()
            .enumerate()
            .map(|(i, p)| decode_pod(Some(p), &format!("endpoint_deletes[{i}]"))),
        "endpoint_deletes",
    )?;
    diff.ipcache.upserts = ipcache;
    diff.ipcache.deletes = unique_keys(
        u.ipcache_deletes
            .iter()
            .enumerate()
            .map(|(i, p)| decode_prefix(Some(p), &format!("ipcache_deletes[{i}]"))),
        "ipcache_deletes",
    )?;
    diff.policy.upserts = policy;
    diff.policy.deletes = unique_keys(
        u.policy_deletes
            .iter()
            .enumerate()
            .map(|(i, k)| decode_policy_key(Some(k), &format!("policy_deletes[{i}]"))),
        "policy_deletes",
    )?;
    diff.services.upserts = services;
    diff.services.deletes = unique_keys(
        u.service_deletes
            .iter()
            .enumerate()
            .map(|(i, v)| decode_vip(Some(v), &format!("service_deletes[{i}]"))),
        "service_deletes",
    )?;
    diff.rules.upserts = rules;
    diff.rules.deletes = nonzero_keys(
        &u.rule_deletes,
        "rule_deletes",
        "cookie 0 is no rule",
        Cookie::new,
    )?;
    diff.identities.upserts = identities;
    diff.identities.deletes = nonzero_keys(
        &u.identity_deletes,
        "identity_deletes",
        "identity 0 is no identity",
        Identity::new,
    )?;
    diff.service_names.upserts = service_names;
    diff.service_names.deletes = nonzero_keys(
        &u.service_name_deletes,
        "service_name_deletes",
        "service id 0 is no Service",
        ServiceId::new,
    )?;
    diff.pod_addresses.upserts = pod_addresses;
    diff.pod_addresses.deletes = unique_keys(
        u.pod_address_deletes
            .iter()
            .enumerate()
            .map(|(i, a)| decode_addr(a, &format!("pod_address_deletes[{i}]"))),
        "pod_address_deletes",
    )?;
    Ok(Update {
        epoch: u.epoch,
        from_revision: if u.snapshot { 0 } else { u.from_revision },
        revision: u.revision,
        snapshot: u.snapshot,
        node: u.node.clone(),
        diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use septum_datapath_common::{POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO};

    fn arb_cidr() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32)
                .prop_map(|(a, l)| Cidr::new(IpAddr::from(a), l).expect("v4 prefix")),
            (any::<[u8; 16]>(), 0u8..=128)
                .prop_map(|(a, l)| Cidr::new(IpAddr::from(a), l).expect("v6 prefix")),
        ]
    }

    fn arb_policy_key() -> impl Strategy<Value = PolicyKey> {
        (
            1u32..,
            any::<u32>(),
            0u8..2,
            any::<u8>(),
            any::<u16>(),
            prop_oneof![
                Just(POLICY_PREFIX_ANY_PROTO),
                POLICY_PREFIX_ANY_PORT..=septum_datapath_common::POLICY_PREFIX_FULL
            ],
        )
            .prop_map(|(s, p, d, proto, port, len)| {
                PolicyKey::new(len, PolicyKeyData::new(s, d, p, proto, port))
            })
    }

    fn arb_vip() -> impl Strategy<Value = ServiceVip> {
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            prop::sample::select(Protocol::ALL.to_vec()),
        )
            .prop_map(|(a, port, protocol)| ServiceVip {
                addr: IpAddr::from(a),
                port,
                protocol,
            })
    }

    fn arb_state() -> impl Strategy<Value = NodeState> {
        let ipc = (arb_cidr(), any::<u32>(), any::<u32>(), any::<u8>()).prop_map(
            |(c, identity, cidr_identity, kind)| {
                (
                    c,
                    IpCacheEntry {
                        identity,
                        cidr_identity,
                        kind,
                        _pad: [0; 3],
                    },
                )
            },
        );
        let pol = (arb_policy_key(), any::<u8>(), any::<u16>(), any::<u32>()).prop_map(
            |(k, action, precedence, cookie)| {
                (
                    k,
                    PolicyEntry {
                        action,
                        _pad: 0,
                        precedence,
                        cookie,
                    },
                )
            },
        );
        let svc =
            (arb_vip(), any::<u32>()).prop_map(|(v, service_id)| (v, ServiceEntry { service_id }));
        let tiers = [Tier::Admin, Tier::Namespaced, Tier::Baseline, Tier::Builtin];
        let kinds = [
            PolicyKind::ClusterNetworkPolicy,
            PolicyKind::FlowPolicy,
            PolicyKind::NetworkPolicy,
            PolicyKind::Builtin,
        ];
        let sections = [
            Section::Egress,
            Section::EgressIsolation,
            Section::Ingress,
            Section::IngressIsolation,
        ];
        let rule = (
            1u32..,
            prop::sample::select(tiers.to_vec()),
            prop::sample::select(kinds.to_vec()),
            "[a-c]{0,3}",
            "[a-z]{1,4}",
            prop::sample::select(sections.to_vec()),
            any::<u32>(),
            ".{0,12}",
        )
            .prop_map(|(c, tier, kind, ns, name, section, index, text)| {
                (
                    Cookie::new(c),
                    RuleDescription {
                        tier,
                        policy: PolicyRef {
                            kind,
                            object: ObjectKey::new(ns, name),
                        },
                        section,
                        index,
                        text,
                    },
                )
            });
        let pod_identity = (
            "[a-c]{1,3}",
            prop::collection::btree_map("[a-z]{1,3}", "[a-z0-9]{0,3}", 0..3),
            "[a-z]{0,4}",
            prop::collection::vec(
                (
                    "[a-z]{1,4}",
                    prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
                    any::<u16>(),
                ),
                0..3,
            ),
        )
            .prop_map(|(namespace, labels, service_account, named_ports)| {
                IdentityDescription::Pod(IdentityKey {
                    namespace,
                    labels,
                    service_account,
                    named_ports,
                })
            });
        let description = prop_oneof![
            pod_identity,
            arb_cidr().prop_map(IdentityDescription::Cidr),
            (1u32.., arb_cidr()).prop_map(|(i, cidr)| IdentityDescription::PodInCidr {
                identity: Identity::new(i),
                cidr,
            }),
        ];
        let ident = (1u32.., description).prop_map(|(i, d)| (Identity::new(i), d));
        (
            prop::collection::vec(
                ("[a-c]{1,3}", "[a-z]{1,4}", 1u32.., any::<u8>(), any::<u8>()),
                0..6,
            ),
            prop::collection::vec(ipc, 0..8),
            prop::collection::vec(pol, 0..8),
            prop::collection::vec(svc, 0..4),
            prop::collection::vec(rule, 0..4),
            prop::collection::vec(ident, 0..4),
            prop::collection::btree_map(1u32.., ("[a-c]{1,3}", "[a-z]{1,4}"), 0..4),
            prop::collection::btree_map(
                prop_oneof![
                    any::<[u8; 4]>().prop_map(IpAddr::from),
                    any::<[u8; 16]>().prop_map(IpAddr::from),
                ],
                ("[a-c]{1,3}", "[a-z]{1,4}"),
                0..4,
            ),
        )
            .prop_map(
                |(eps, ipc, pol, svc, rules, idents, names, addrs)| NodeState {
                    node: "node-a".into(),
                    endpoints: eps
                        .into_iter()
                        .map(|(ns, n, id, flags, mode)| {
                            (
                                ObjectKey::new(ns, n),
                                EndpointState {
                                    identity: Identity::new(id),
                                    flags,
                                    mode,
                                },
                            )
                        })
                        .collect(),
                    ipcache: ipc.into_iter().collect(),
                    policy: pol.into_iter().collect(),
                    services: svc.into_iter().collect(),
                    rules: rules.into_iter().collect(),
                    identities: idents.into_iter().collect(),
                    service_names: names
                        .into_iter()
                        .map(|(id, (ns, n))| (ServiceId::new(id), ObjectKey::new(ns, n)))
                        .collect(),
                    pod_addresses: addrs
                        .into_iter()
                        .map(|(ip, (ns, n))| (ip, ObjectKey::new(ns, n)))
                        .collect(),
                },
            )
    }

    proptest! {
        /// Every state survives the wire as a snapshot, and every diff between two states
        /// survives it as a delta that takes the old state exactly to the new one.
        #[test]
        fn snapshots_and_deltas_round_trip(old in arb_state(), new in arb_state()) {
            let snap = Update::snapshot(7, 3, &new);
            let back = decode(&encode(&snap)).expect("a snapshot decodes");
            prop_assert_eq!(&back, &snap);
            prop_assert_eq!(back.to_state(), new.clone());

            let delta = Update {
                epoch: 7,
                from_revision: 3,
                revision: 4,
                snapshot: false,
                node: "node-a".into(),
                diff: NodeStateDiff::between(&old, &new),
            };
            let back = decode(&encode(&delta)).expect("a delta decodes");
            prop_assert_eq!(&back, &delta);
            let mut applied = old.clone();
            back.diff.apply_to(&mut applied);
            prop_assert_eq!(applied, new);
        }

        /// Whatever bytes arrive, decoding returns (it never panics).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            use prost::Message as _;
            if let Ok(u) = pb::Update::decode(bytes.as_slice()) {
                let _ = decode(&u);
            }
        }
    }

    fn base() -> pb::Update {
        pb::Update {
            epoch: 1,
            from_revision: 1,
            revision: 2,
            node: "n".into(),
            ..pb::Update::default()
        }
    }

    fn refused(u: pb::Update) -> WireError {
        decode(&u).expect_err("must be refused")
    }

    #[test]
    fn malformed_fields_are_refused_with_their_path() {
        let good_rule = pb::RuleDescription {
            cookie: 7,
            tier: "namespaced".into(),
            kind: "NetworkPolicy".into(),
            namespace: "shop".into(),
            name: "web-in".into(),
            section: "ingress".into(),
            index: 0,
            text: String::new(),
        };
        for (edit, field) in [
            (
                (|r: &mut pb::RuleDescription| r.cookie = 0) as fn(&mut pb::RuleDescription),
                "rule_upserts[0].cookie",
            ),
            (|r| r.tier = "gold".into(), "rule_upserts[0].tier"),
            (|r| r.kind = "Policy".into(), "rule_upserts[0].kind"),
            (|r| r.section = "sideways".into(), "rule_upserts[0].section"),
            (|r| r.name.clear(), "rule_upserts[0].name"),
        ] {
            let mut u = base();
            let mut r = good_rule.clone();
            edit(&mut r);
            u.rule_upserts.push(r);
            assert_eq!(refused(u).field, field);
        }
        let mut u = base();
        u.identity_upserts.push(pb::IdentityDescription {
            identity: 9,
            kind: Some(pb::identity_description::Kind::Pod(pb::PodIdentity {
                named_ports: vec![pb::NamedPort {
                    name: "http".into(),
                    protocol: 1,
                    port: 80,
                }],
                ..Default::default()
            })),
        });
        assert_eq!(
            refused(u).field,
            "identity_upserts[0].pod.named_ports[0].protocol"
        );
        let mut u = base();
        u.identity_upserts.push(pb::IdentityDescription {
            identity: 9,
            kind: None,
        });
        assert_eq!(refused(u).field, "identity_upserts[0].kind");

        let name = |service_id: u32, namespace: &str, name: &str| pb::ServiceName {
            service_id,
            namespace: namespace.into(),
            name: name.into(),
        };
        for (n, field) in [
            (name(0, "shop", "web"), "service_name_upserts[0].service_id"),
            (name(3, "", "web"), "service_name_upserts[0]"),
            (name(3, "shop", ""), "service_name_upserts[0]"),
        ] {
            let mut u = base();
            u.service_name_upserts.push(n);
            assert_eq!(refused(u).field, field);
        }
        let mut u = base();
        u.service_name_upserts = vec![name(3, "shop", "web"), name(3, "shop", "api")];
        assert_eq!(refused(u).field, "service_name_upserts[1]");
        let mut u = base();
        u.service_name_deletes.push(0);
        assert_eq!(refused(u).field, "service_name_deletes[0]");
        for (a, field) in [
            (
                pb::PodAddress {
                    addr: vec![10, 0, 0],
                    pod: Some(pod_ref(&ObjectKey::new("shop", "web"))),
                },
                "pod_address_upserts[0].addr",
            ),
            (
                pb::PodAddress {
                    addr: vec![10, 0, 0, 1],
                    pod: None,
                },
                "pod_address_upserts[0].pod",
            ),
            (
                pb::PodAddress {
                    addr: vec![10, 0, 0, 1],
                    pod: Some(pod_ref(&ObjectKey::new("shop", ""))),
                },
                "pod_address_upserts[0].pod",
            ),
        ] {
            let mut u = base();
            u.pod_address_upserts.push(a);
            assert_eq!(refused(u).field, field);
        }
        let mut u = base();
        u.pod_address_deletes.push(vec![1, 2]);
        assert_eq!(refused(u).field, "pod_address_deletes[0]");

        let mut u = base();
        u.ipcache_upserts.push(pb::IpCacheEntry {
            prefix: Some(pb::Prefix {
                addr: vec![10, 0, 0],
                len: 24,
            }),
            ..Default::default()
        });
        let e = refused(u);
        assert_eq!(e.field, "ipcache_upserts[0].prefix.addr");
        assert!(e.message.contains("4 or 16 bytes"), "{e}");

        let mut u = base();
        u.ipcache_deletes.push(pb::Prefix {
            addr: vec![10, 0, 0, 1],
            len: 24,
        });
        assert!(refused(u).message.contains("host bits"));

        let mut u = base();
        u.ipcache_deletes.push(pb::Prefix {
            addr: vec![10, 0, 0, 0],
            len: 33,
        });
        assert_eq!(refused(u).field, "ipcache_deletes[0].len");

        let mut u = base();
        u.policy_deletes.push(pb::PolicyKey {
            prefix_len: 40,
            subject: 5,
            ..Default::default()
        });
        assert_eq!(refused(u).field, "policy_deletes[0].prefix_len");

        let mut u = base();
        u.policy_upserts.push(pb::PolicyEntry {
            key: Some(pb::PolicyKey {
                prefix_len: 96,
                subject: 5,
                port: 70_000,
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = refused(u);
        assert_eq!(e.field, "policy_upserts[0].key.port");
        assert!(e.message.contains("16 bits"), "{e}");

        let mut u = base();
        u.service_deletes.push(pb::ServiceVip {
            addr: vec![10, 96, 0, 1],
            port: 80,
            protocol: 1,
        });
        assert!(refused(u).message.contains("not TCP"));

        let mut u = base();
        u.endpoint_upserts.push(pb::Endpoint {
            pod: Some(pb::PodRef {
                namespace: "ns".into(),
                name: "a".into(),
            }),
            identity: 0,
            ..Default::default()
        });
        assert_eq!(refused(u).field, "endpoint_upserts[0].identity");

        let mut u = base();
        let ep = pb::Endpoint {
            pod: Some(pb::PodRef {
                namespace: "ns".into(),
                name: "a".into(),
            }),
            identity: 9,
            ..Default::default()
        };
        u.endpoint_upserts = vec![ep.clone(), ep];
        assert!(refused(u).message.contains("twice"));

        let mut u = base();
        u.snapshot = true;
        u.endpoint_deletes.push(pb::PodRef {
            namespace: "ns".into(),
            name: "a".into(),
        });
        assert_eq!(refused(u).field, "snapshot");

        let mut u = base();
        u.from_revision = 2;
        assert_eq!(refused(u).field, "from_revision");

        let mut u = base();
        u.node.clear();
        assert_eq!(refused(u).field, "node");
    }
}
