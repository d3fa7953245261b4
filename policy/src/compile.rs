//! Compilation of the model into [`ClusterState`], full and incremental.
//!
//! [`Engine`] owns the model, the allocation store, the normalized rules and an index (identities,
//! each rule's subject and peer sets, policy prefixes, pod-in-CIDR pairs). A full compile builds
//! the index and compiles every subject identity; [`Engine::apply`] updates the index for one
//! [`Change`] and recompiles only the subjects whose entries can change, returning the minimal
//! [`StateDiff`]. Changes that alter the set of policy prefixes, namespaces or nodes rebuild
//! everything and diff (still minimal, just slower).
//!
//! Per subject and direction, the compiler evaluates the final decision (all tiers, audit
//! included) over the (protocol, port) space for: a peer nothing names (written under
//! `IDENTITY_ANY`), every pod identity some applicable rule names, every policy prefix some
//! applicable rule names, and every pod-in-prefix pair whose pod or prefix is named; each is
//! written only where it differs from the layer below it (see [`crate::state`] for the bands).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use septum_datapath_common::{
    ACTION_ALLOW, ACTION_AUDIT, ACTION_DENY, ENDPOINT_F_EGRESS_POLICY, ENDPOINT_F_INGRESS_POLICY,
    IDENTITY_ANY, IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD, IPCACHE_KIND_CIDR,
    IPCACHE_KIND_POD, IPCACHE_KIND_REMOTE_NODE, IPCACHE_KIND_WORLD, IpCacheEntry, MODE_ENFORCE,
    POLICY_PREFIX_ANY_PORT, POLICY_PREFIX_ANY_PROTO, PolicyEntry, PolicyKeyData, ServiceEntry,
};

use crate::cidr::Cidr;
use crate::identity::{AllocationKey, AllocationStore, IdentityKey};
use crate::model::{Change, Cluster, ObjectKey, Protocol};
use crate::ports::{PortSel, Segmented, range_to_prefixes};
use crate::rules::{
    COOKIE_HOST, Direction, Isolation, PeerMatch, PodMatch, PolicySlot, PortItem, PortMatch, Rule,
    RuleAction, RuleSet, Tier,
};
use crate::selector::Labels;
use crate::state::{
    ClusterState, EndpointState, IdentityDescription, PRECEDENCE_ANY_PEER, PRECEDENCE_HOST,
    PRECEDENCE_PEER, PRECEDENCE_POD_IN_CIDR, PolicyKey, ServiceVip, StateDiff,
};

/// A final decision for one point of the (protocol, port) space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decision {
    /// `ACTION_*`.
    pub action: u8,
    /// The decisive rule's cookie (0: not policed).
    pub cookie: u32,
}

impl Decision {
    /// Nothing polices the flow: allowed, no cookie.
    pub const UNPOLICED: Decision = Decision {
        action: ACTION_ALLOW,
        cookie: 0,
    };

    /// Allowed by a rule.
    pub const fn allow(cookie: u32) -> Self {
        Self {
            action: ACTION_ALLOW,
            cookie,
        }
    }

    /// Denied by a rule.
    pub const fn deny(cookie: u32) -> Self {
        Self {
            action: ACTION_DENY,
            cookie,
        }
    }

    /// Would be denied by an Audit-mode policy.
    pub const fn audit(cookie: u32) -> Self {
        Self {
            action: ACTION_AUDIT,
            cookie,
        }
    }
}

/// One pod identity and its pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityInfo {
    /// Number.
    pub number: u32,
    /// What it stands for.
    pub key: IdentityKey,
    /// Pods that have it.
    pub pods: BTreeSet<ObjectKey>,
}

/// A peer as the evaluator sees it.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// An address no policy prefix contains (and no pod): world, or a node.
    Outside,
    /// An address outside the pods whose most specific policy prefix is this.
    Class(Cidr),
    /// A pod of an identity, at an address whose most specific policy prefix is `class`.
    Pod {
        /// The identity.
        identity: &'a IdentityInfo,
        /// The prefix class of the address.
        class: Option<Cidr>,
    },
}

type RuleKey = (Tier, u32, String, u32, PolicySlot, u32);
type IsoKey = (PolicySlot, u32);

#[derive(Clone, Debug)]
struct RuleData {
    rule: Rule,
    any: bool,
    subjects: BTreeSet<u32>,
    peer_ids: BTreeSet<u32>,
    peer_classes: BTreeSet<Cidr>,
}

#[derive(Clone, Debug)]
struct IsoData {
    iso: Isolation,
    subjects: BTreeSet<u32>,
}

/// Everything derived from the model that compilation reads.
#[derive(Clone, Debug, Default)]
struct Index {
    ns_labels: BTreeMap<String, Labels>,
    identities: BTreeMap<u32, IdentityInfo>,
    by_key: HashMap<IdentityKey, u32>,
    by_namespace: BTreeMap<String, BTreeSet<u32>>,
    pod_identity: BTreeMap<ObjectKey, u32>,
    ip_owners: BTreeMap<IpAddr, BTreeSet<ObjectKey>>,
    node_ips: BTreeMap<IpAddr, String>,
    classes: Vec<Cidr>,
    class_ids: BTreeMap<Cidr, u32>,
    pairs: BTreeMap<(u32, Cidr), (u32, usize)>,
    pairs_by_class: BTreeMap<Cidr, BTreeSet<u32>>,
    rules: BTreeMap<RuleKey, RuleData>,
    isolations: BTreeMap<IsoKey, IsoData>,
    subject_rules: BTreeMap<u32, BTreeSet<RuleKey>>,
    subject_isos: BTreeMap<u32, BTreeSet<IsoKey>>,
}

fn empty_labels() -> &'static Labels {
    static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Labels::new)
}

impl Index {
    fn ns_labels(&self, ns: &str) -> &Labels {
        self.ns_labels.get(ns).unwrap_or_else(|| empty_labels())
    }

    fn pod_match(&self, m: &PodMatch, info: &IdentityInfo) -> bool {
        m.matches(
            &info.key.namespace,
            self.ns_labels(&info.key.namespace),
            &info.key.labels,
            &info.key.service_account,
        )
    }

    /// Identities a pod match may select (narrowed by namespace when exact).
    fn candidates(&self, m: &PodMatch) -> Vec<u32> {
        match &m.namespace {
            crate::rules::NamespaceMatch::Exact(ns) => self
                .by_namespace
                .get(ns)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            crate::rules::NamespaceMatch::Selector(_) => self.identities.keys().copied().collect(),
        }
    }

    fn class_of(&self, ip: IpAddr) -> Option<Cidr> {
        self.classes
            .iter()
            .filter(|c| c.contains_ip(ip))
            .max_by_key(|c| c.len())
            .copied()
    }

    fn rule_data(&self, rule: Rule) -> RuleData {
        let any = rule.peers.iter().any(|p| matches!(p, PeerMatch::Any));
        let mut subjects = BTreeSet::new();
        for id in self.candidates(&rule.subject) {
            if self.pod_match(&rule.subject, &self.identities[&id]) {
                subjects.insert(id);
            }
        }
        let mut peer_ids = BTreeSet::new();
        let mut peer_classes = BTreeSet::new();
        if !any {
            for p in &rule.peers {
                match p {
                    PeerMatch::Any => {}
                    PeerMatch::Pods(m) => {
                        for id in self.candidates(m) {
                            if self.pod_match(m, &self.identities[&id]) {
                                peer_ids.insert(id);
                            }
                        }
                    }
                    PeerMatch::Cidr { .. } => {
                        for c in &self.classes {
                            if p.matches_cidr_class(c) {
                                peer_classes.insert(*c);
                            }
                        }
                    }
                }
            }
        }
        RuleData {
            rule,
            any,
            subjects,
            peer_ids,
            peer_classes,
        }
    }

    fn insert_rule(&mut self, key: RuleKey, data: RuleData) {
        for s in &data.subjects {
            self.subject_rules
                .entry(*s)
                .or_default()
                .insert(key.clone());
        }
        self.rules.insert(key, data);
    }

    fn remove_rule(&mut self, key: &RuleKey) -> Option<RuleData> {
        let data = self.rules.remove(key)?;
        for s in &data.subjects {
            if let Some(set) = self.subject_rules.get_mut(s) {
                set.remove(key);
                if set.is_empty() {
                    self.subject_rules.remove(s);
                }
            }
        }
        Some(data)
    }

    fn insert_iso(&mut self, key: IsoKey, iso: Isolation) -> BTreeSet<u32> {
        let mut subjects = BTreeSet::new();
        for id in self.candidates(&iso.subject) {
            if self.pod_match(&iso.subject, &self.identities[&id]) {
                subjects.insert(id);
            }
        }
        for s in &subjects {
            self.subject_isos.entry(*s).or_default().insert(key.clone());
        }
        self.isolations.insert(
            key,
            IsoData {
                iso,
                subjects: subjects.clone(),
            },
        );
        subjects
    }

    fn remove_iso(&mut self, key: &IsoKey) -> BTreeSet<u32> {
        let Some(data) = self.isolations.remove(key) else {
            return BTreeSet::new();
        };
        for s in &data.subjects {
            if let Some(set) = self.subject_isos.get_mut(s) {
                set.remove(key);
                if set.is_empty() {
                    self.subject_isos.remove(s);
                }
            }
        }
        data.subjects
    }

    fn add_slot(&mut self, slot: &PolicySlot, rs: &RuleSet) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        let Some(p) = rs.policies.get(slot) else {
            return affected;
        };
        for (seq, r) in p.rules.iter().enumerate() {
            let key = rule_key(slot, seq as u32, r);
            let data = self.rule_data(r.clone());
            affected.extend(data.subjects.iter().copied());
            self.insert_rule(key, data);
        }
        for (seq, iso) in p.isolations.iter().enumerate() {
            affected.extend(self.insert_iso((slot.clone(), seq as u32), iso.clone()));
        }
        affected
    }

    fn remove_slot(&mut self, slot: &PolicySlot) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        let keys: Vec<RuleKey> = self
            .rules
            .keys()
            .filter(|k| &k.4 == slot)
            .cloned()
            .collect();
        for k in keys {
            if let Some(d) = self.remove_rule(&k) {
                affected.extend(d.subjects);
            }
        }
        let isos: Vec<IsoKey> = self
            .isolations
            .keys()
            .filter(|k| &k.0 == slot)
            .cloned()
            .collect();
        for k in isos {
            affected.extend(self.remove_iso(&k));
        }
        affected
    }

    /// Subjects whose entries for identity `id` (and its pairs) or prefix `class` may exist.
    fn interested(&self, id: Option<u32>, class: Option<Cidr>) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        for d in self.rules.values() {
            let hit = id.is_some_and(|i| d.peer_ids.contains(&i))
                || class.is_some_and(|c| d.peer_classes.contains(&c))
                || (d.rule.direction == Direction::Egress && d.rule.ports.has_named());
            if hit {
                out.extend(d.subjects.iter().copied());
            }
        }
        out
    }

    /// Adds a new identity to every rule's subject and peer sets; returns affected subjects.
    fn index_identity(&mut self, id: u32) -> BTreeSet<u32> {
        let mut affected = BTreeSet::from([id]);
        let info = self.identities[&id].clone();
        let keys: Vec<RuleKey> = self.rules.keys().cloned().collect();
        for k in keys {
            let (subj, peer) = {
                let d = &self.rules[&k];
                let subj = self.pod_match(&d.rule.subject, &info);
                let peer = !d.any
                    && d.rule.peers.iter().any(|p| match p {
                        PeerMatch::Pods(m) => self.pod_match(m, &info),
                        _ => false,
                    });
                (subj, peer)
            };
            let d = self.rules.get_mut(&k).expect("rule key just listed");
            if subj {
                d.subjects.insert(id);
                self.subject_rules.entry(id).or_default().insert(k.clone());
            }
            if peer {
                d.peer_ids.insert(id);
                affected.extend(d.subjects.iter().copied());
            }
        }
        let isos: Vec<IsoKey> = self.isolations.keys().cloned().collect();
        for k in isos {
            let hit = self.pod_match(&self.isolations[&k].iso.subject, &info);
            if hit {
                self.isolations
                    .get_mut(&k)
                    .expect("iso key just listed")
                    .subjects
                    .insert(id);
                self.subject_isos.entry(id).or_default().insert(k);
            }
        }
        affected
    }

    /// Removes an identity from every rule; returns affected subjects (not itself).
    fn unindex_identity(&mut self, id: u32) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        for d in self.rules.values_mut() {
            d.subjects.remove(&id);
            if d.peer_ids.remove(&id) {
                affected.extend(d.subjects.iter().copied());
            }
        }
        for d in self.isolations.values_mut() {
            d.subjects.remove(&id);
        }
        self.subject_rules.remove(&id);
        self.subject_isos.remove(&id);
        affected
    }

    fn peer_matches(&self, d: &RuleData, peer: &Peer<'_>) -> bool {
        if d.any {
            return true;
        }
        match peer {
            Peer::Outside => false,
            Peer::Class(c) => d.peer_classes.contains(c),
            Peer::Pod { identity, class } => {
                d.peer_ids.contains(&identity.number)
                    || class.is_some_and(|c| d.peer_classes.contains(&c))
            }
        }
    }
}

fn rule_key(slot: &PolicySlot, seq: u32, r: &Rule) -> RuleKey {
    (
        r.tier,
        r.order.0,
        r.order.1.clone(),
        r.order.2,
        slot.clone(),
        seq,
    )
}

/// Port selections of a rule for one destination (`named`: the destination pod's named ports).
fn port_sels(ports: &PortMatch, named: Option<&[(String, Protocol, u16)]>) -> Vec<PortSel> {
    match ports {
        PortMatch::Any => vec![PortSel::All],
        PortMatch::Items(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    PortItem::Sel(s) => out.push(*s),
                    PortItem::Named { name, protocol } => {
                        for (n, p, port) in named.unwrap_or(&[]) {
                            if n == name && protocol.is_none_or(|x| x == *p) {
                                out.push(PortSel::Range(*p, *port, *port));
                            }
                        }
                    }
                }
            }
            out
        }
    }
}

/// Whether a rule's ports cover (protocol, port) for a destination with these named ports.
pub fn port_matches(
    ports: &PortMatch,
    named: Option<&[(String, Protocol, u16)]>,
    protocol: Protocol,
    port: u16,
) -> bool {
    port_sels(ports, named).iter().any(|s| match s {
        PortSel::All => true,
        PortSel::Protocol(p) => *p == protocol,
        PortSel::Range(p, lo, hi) => *p == protocol && *lo <= port && port <= *hi,
    })
}

/// Admin-tier paint value: accept, deny or pass, with cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdminVal {
    None,
    Verdict(Decision),
    Pass,
}

struct SubjectCtx<'a> {
    subject: &'a IdentityInfo,
    direction: Direction,
    rules: Vec<&'a RuleData>,
    iso_enforce: u32,
    iso_all: u32,
}

impl Index {
    fn subject_ctx<'a>(&'a self, s: &'a IdentityInfo, direction: Direction) -> SubjectCtx<'a> {
        let rules: Vec<&RuleData> = self
            .subject_rules
            .get(&s.number)
            .into_iter()
            .flatten()
            .map(|k| &self.rules[k])
            .filter(|d| d.rule.direction == direction)
            .collect();
        let (mut iso_enforce, mut iso_all) = (0, 0);
        for k in self.subject_isos.get(&s.number).into_iter().flatten() {
            let iso = &self.isolations[k].iso;
            if iso.direction != direction {
                continue;
            }
            if iso_all == 0 {
                iso_all = iso.cookie;
            }
            if iso.enforce && iso_enforce == 0 {
                iso_enforce = iso.cookie;
            }
        }
        SubjectCtx {
            subject: s,
            direction,
            rules,
            iso_enforce,
            iso_all,
        }
    }

    fn evaluate(&self, ctx: &SubjectCtx<'_>, peer: &Peer<'_>) -> Segmented<Decision> {
        let named: Option<&[(String, Protocol, u16)]> = match (ctx.direction, peer) {
            (Direction::Ingress, _) => Some(&ctx.subject.key.named_ports),
            (Direction::Egress, Peer::Pod { identity, .. }) => Some(&identity.key.named_ports),
            (Direction::Egress, _) => None,
        };
        let mut admin = Segmented::constant(AdminVal::None);
        let mut baseline = Segmented::constant(Decision::UNPOLICED);
        let mut allow_enf = Segmented::constant(0u32);
        let mut allow_all = Segmented::constant(0u32);
        for d in ctx.rules.iter().rev() {
            if !self.peer_matches(d, peer) {
                continue;
            }
            let sels = port_sels(&d.rule.ports, named);
            for sel in sels {
                match d.rule.tier {
                    Tier::Admin => admin.paint(
                        sel,
                        match d.rule.action {
                            RuleAction::Allow => AdminVal::Verdict(Decision::allow(d.rule.cookie)),
                            RuleAction::Deny => AdminVal::Verdict(Decision::deny(d.rule.cookie)),
                            RuleAction::Pass => AdminVal::Pass,
                        },
                    ),
                    Tier::Namespaced => {
                        if d.rule.enforce {
                            allow_enf.paint(sel, d.rule.cookie);
                        }
                        allow_all.paint(sel, d.rule.cookie);
                    }
                    Tier::Baseline => baseline.paint(
                        sel,
                        match d.rule.action {
                            RuleAction::Deny => Decision::deny(d.rule.cookie),
                            _ => Decision::allow(d.rule.cookie),
                        },
                    ),
                    Tier::Builtin => {}
                }
            }
        }
        let tier = |allow: &Segmented<u32>, iso: u32| -> Segmented<Decision> {
            if iso == 0 {
                baseline.clone()
            } else {
                allow.map(|c| {
                    if c != 0 {
                        Decision::allow(c)
                    } else {
                        Decision::deny(iso)
                    }
                })
            }
        };
        let enforced = tier(&allow_enf, ctx.iso_enforce);
        let namespaced = if ctx.iso_all == ctx.iso_enforce {
            enforced
        } else {
            let hypothetical = tier(&allow_all, ctx.iso_all);
            enforced.zip(&hypothetical, |e, h| {
                if e.action == ACTION_DENY {
                    e
                } else if h.action == ACTION_DENY {
                    Decision::audit(h.cookie)
                } else {
                    e
                }
            })
        };
        admin.zip(&namespaced, |a, n| match a {
            AdminVal::Verdict(d) => d,
            AdminVal::Pass | AdminVal::None => n,
        })
    }
}

/// Writes entries so that the lookup of (subject, direction, peer) yields `f` where it differs
/// from `fallback` (what the layers below yield).
fn emit(
    out: &mut Vec<(PolicyKey, PolicyEntry)>,
    subject: u32,
    direction: Direction,
    peer: u32,
    precedence: u16,
    f: &Segmented<Decision>,
    fallback: &Segmented<Decision>,
) {
    if f == fallback {
        return;
    }
    let dir = direction.code();
    let mut push = |protocol: u8, port: u16, prefix_len: u32, d: Decision| {
        out.push((
            PolicyKey {
                data: PolicyKeyData::new(subject, dir, peer, protocol, port),
                prefix_len,
            },
            PolicyEntry {
                action: d.action,
                _pad: 0,
                precedence,
                cookie: d.cookie,
            },
        ));
    };
    let cover_all = f.other != fallback.other;
    if cover_all {
        push(0, 0, POLICY_PREFIX_ANY_PROTO, f.other);
    }
    for p in Protocol::ALL {
        let base = if cover_all {
            Segmented::constant(f.other)
        } else {
            fallback.clone()
        };
        let fp = f.segments(p);
        let bp = base.segments(p);
        if fp == bp {
            continue;
        }
        // Option A: blocks where f differs from what the lookup falls back to.
        let diff_a = blocks_where_differs(f, &base, p);
        // Option B: a whole-protocol entry with f's most common value, then blocks.
        let majority = majority_value(&fp);
        let diff_b = blocks_where_differs(f, &Segmented::constant(majority), p);
        if diff_a.len() <= diff_b.len() + 1 {
            for (port, bits, d) in diff_a {
                push(
                    p.number(),
                    port,
                    POLICY_PREFIX_ANY_PORT + u32::from(bits),
                    d,
                );
            }
        } else {
            push(p.number(), 0, POLICY_PREFIX_ANY_PORT, majority);
            for (port, bits, d) in diff_b {
                push(
                    p.number(),
                    port,
                    POLICY_PREFIX_ANY_PORT + u32::from(bits),
                    d,
                );
            }
        }
    }
}

fn majority_value(segs: &[(u16, u16, Decision)]) -> Decision {
    let mut count: BTreeMap<Decision, u32> = BTreeMap::new();
    for (lo, hi, d) in segs {
        *count.entry(*d).or_default() += u32::from(*hi) - u32::from(*lo) + 1;
    }
    count
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|x| x.0)
        .unwrap_or(Decision::UNPOLICED)
}

fn blocks_where_differs(
    f: &Segmented<Decision>,
    base: &Segmented<Decision>,
    p: Protocol,
) -> Vec<(u16, u8, Decision)> {
    let z = f.zip(base, |a, b| if a != b { Some(a) } else { None });
    let mut out = Vec::new();
    for (lo, hi, v) in z.segments(p) {
        if let Some(d) = v {
            for (port, bits) in range_to_prefixes(lo, hi) {
                out.push((port, bits, d));
            }
        }
    }
    out
}

impl Index {
    /// Every entry of one subject identity, sorted, and its endpoint flags.
    fn compile_subject(&self, s: u32) -> (Vec<(PolicyKey, PolicyEntry)>, u8) {
        let mut out = Vec::new();
        let mut flags = 0u8;
        let Some(info) = self.identities.get(&s) else {
            return (out, flags);
        };
        for direction in Direction::BOTH {
            let start = out.len();
            let ctx = self.subject_ctx(info, direction);
            if ctx.rules.is_empty() && ctx.iso_all == 0 {
                continue;
            }
            let generic = self.evaluate(&ctx, &Peer::Outside);
            emit(
                &mut out,
                s,
                direction,
                IDENTITY_ANY,
                PRECEDENCE_ANY_PEER,
                &generic,
                &Segmented::constant(Decision::UNPOLICED),
            );
            let mut special_ids: BTreeSet<u32> = BTreeSet::new();
            let mut special_classes: BTreeSet<Cidr> = BTreeSet::new();
            let mut named_any: BTreeSet<&str> = BTreeSet::new();
            for d in &ctx.rules {
                special_ids.extend(d.peer_ids.iter().copied());
                special_classes.extend(d.peer_classes.iter().copied());
                if direction == Direction::Egress
                    && let PortMatch::Items(items) = &d.rule.ports
                {
                    for i in items {
                        if let PortItem::Named { name, .. } = i
                            && d.any
                        {
                            named_any.insert(name.as_str());
                        }
                    }
                }
            }
            if !named_any.is_empty() {
                for (id, inf) in &self.identities {
                    if inf
                        .key
                        .named_ports
                        .iter()
                        .any(|(n, _, _)| named_any.contains(n.as_str()))
                    {
                        special_ids.insert(*id);
                    }
                }
            }
            let mut pod_layer: BTreeMap<u32, Segmented<Decision>> = BTreeMap::new();
            for id in &special_ids {
                let Some(pinfo) = self.identities.get(id) else {
                    continue;
                };
                let f = self.evaluate(
                    &ctx,
                    &Peer::Pod {
                        identity: pinfo,
                        class: None,
                    },
                );
                emit(&mut out, s, direction, *id, PRECEDENCE_PEER, &f, &generic);
                pod_layer.insert(*id, f);
            }
            for c in &special_classes {
                let f = self.evaluate(&ctx, &Peer::Class(*c));
                emit(
                    &mut out,
                    s,
                    direction,
                    self.class_ids[c],
                    PRECEDENCE_PEER,
                    &f,
                    &generic,
                );
            }
            let mut special_pairs: BTreeSet<(u32, Cidr)> = BTreeSet::new();
            for id in &special_ids {
                for ((pid, class), _) in self.pairs.range((*id, world_prefixes()[0])..) {
                    if pid != id {
                        break;
                    }
                    special_pairs.insert((*id, *class));
                }
            }
            for c in &special_classes {
                for id in self.pairs_by_class.get(c).into_iter().flatten() {
                    special_pairs.insert((*id, *c));
                }
            }
            for (id, class) in &special_pairs {
                let pair = &self.pairs[&(*id, *class)].0;
                let Some(pinfo) = self.identities.get(id) else {
                    continue;
                };
                let f = self.evaluate(
                    &ctx,
                    &Peer::Pod {
                        identity: pinfo,
                        class: Some(*class),
                    },
                );
                let fallback = pod_layer.get(id).unwrap_or(&generic);
                emit(
                    &mut out,
                    s,
                    direction,
                    *pair,
                    PRECEDENCE_POD_IN_CIDR,
                    &f,
                    fallback,
                );
            }
            if out.len() > start {
                if direction == Direction::Ingress {
                    out.push((
                        PolicyKey {
                            data: PolicyKeyData::new(s, direction.code(), IDENTITY_HOST, 0, 0),
                            prefix_len: POLICY_PREFIX_ANY_PROTO,
                        },
                        PolicyEntry {
                            action: ACTION_ALLOW,
                            _pad: 0,
                            precedence: PRECEDENCE_HOST,
                            cookie: COOKIE_HOST,
                        },
                    ));
                    flags |= ENDPOINT_F_INGRESS_POLICY;
                } else {
                    flags |= ENDPOINT_F_EGRESS_POLICY;
                }
            }
        }
        out.sort_by_key(|a| a.0);
        (out, flags)
    }
}

/// Tracks the original value of every key touched, to produce a minimal diff.
struct Tracker<K, V> {
    original: BTreeMap<K, Option<V>>,
}

impl<K: Ord + Clone, V: Clone + PartialEq> Tracker<K, V> {
    fn new() -> Self {
        Self {
            original: BTreeMap::new(),
        }
    }

    fn set(&mut self, map: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
        let old = match &v {
            Some(v) => map.insert(k.clone(), v.clone()),
            None => map.remove(&k),
        };
        self.original.entry(k).or_insert(old);
    }

    fn finish(self, map: &BTreeMap<K, V>) -> crate::state::MapDiff<K, V> {
        let mut d = crate::state::MapDiff::default();
        for (k, old) in self.original {
            match (old, map.get(&k)) {
                (Some(o), Some(n)) if &o == n => {}
                (None, None) => {}
                (_, Some(n)) => d.upsert.push((k, n.clone())),
                (Some(_), None) => d.delete.push(k),
            }
        }
        d
    }
}

/// The compiler with its model, allocations and current output.
#[derive(Debug)]
pub struct Engine<S: AllocationStore> {
    cluster: Cluster,
    store: S,
    ruleset: RuleSet,
    index: Index,
    state: ClusterState,
    subject_flags: BTreeMap<u32, u8>,
    cidr_refs: BTreeMap<Cidr, usize>,
}

/// Compiles a model in one go (allocating numbers in `store`).
pub fn compile<S: AllocationStore>(cluster: &Cluster, store: S) -> (ClusterState, S) {
    let e = Engine::new(cluster.clone(), store);
    (e.state, e.store)
}

impl<S: AllocationStore> Engine<S> {
    /// Builds the engine and compiles the whole model.
    pub fn new(cluster: Cluster, store: S) -> Self {
        let mut e = Self {
            cluster,
            store,
            ruleset: RuleSet::default(),
            index: Index::default(),
            state: ClusterState::default(),
            subject_flags: BTreeMap::new(),
            cidr_refs: BTreeMap::new(),
        };
        e.rebuild();
        e
    }

    /// The model.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The current compiled state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The allocation store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The normalized rules.
    pub fn ruleset(&self) -> &RuleSet {
        &self.ruleset
    }

    /// The identity of a pod, if it is an endpoint.
    pub fn pod_identity(&self, pod: &ObjectKey) -> Option<u32> {
        self.index.pod_identity.get(pod).copied()
    }

    /// The identities, by number.
    pub fn identities(&self) -> &BTreeMap<u32, IdentityInfo> {
        &self.index.identities
    }

    /// The pod-in-CIDR identity of a pod address, if the address is in a policy prefix.
    pub fn cidr_identity_of(&self, ip: IpAddr) -> u32 {
        self.state
            .ipcache
            .get(&Cidr::host(ip))
            .map(|e| e.cidr_identity)
            .or_else(|| self.index.class_of(ip).map(|c| self.index.class_ids[&c]))
            .unwrap_or(0)
    }

    /// The decision function of `subject` toward a peer, straight from the rules (what the
    /// compiled entries reproduce). Used by explain.
    pub fn decide(
        &self,
        subject: u32,
        direction: Direction,
        peer: &Peer<'_>,
    ) -> Segmented<Decision> {
        match self.index.identities.get(&subject) {
            None => Segmented::constant(Decision::UNPOLICED),
            Some(info) => {
                let ctx = self.index.subject_ctx(info, direction);
                self.index.evaluate(&ctx, peer)
            }
        }
    }

    /// The policy prefix class of an address (most specific policy prefix containing it).
    pub fn class_of(&self, ip: IpAddr) -> Option<Cidr> {
        self.index.class_of(ip)
    }

    /// The rules that apply to a subject in a direction, in evaluation order.
    pub fn rules_of(&self, subject: u32, direction: Direction) -> Vec<&Rule> {
        self.index
            .subject_rules
            .get(&subject)
            .into_iter()
            .flatten()
            .map(|k| &self.index.rules[k].rule)
            .filter(|r| r.direction == direction)
            .collect()
    }

    /// The isolations of a subject in a direction.
    pub fn isolations_of(&self, subject: u32, direction: Direction) -> Vec<&Isolation> {
        self.index
            .subject_isos
            .get(&subject)
            .into_iter()
            .flatten()
            .map(|k| &self.index.isolations[k].iso)
            .filter(|i| i.direction == direction)
            .collect()
    }

    fn identity_of_pod(&mut self, pod: &crate::model::Pod) -> u32 {
        let key = IdentityKey::of_pod(pod);
        self.store.allocate(&AllocationKey::Identity(key))
    }

    /// Rebuilds everything from the model; returns the diff from the previous state.
    fn rebuild(&mut self) -> StateDiff {
        let old = std::mem::take(&mut self.state);
        self.ruleset = RuleSet::build(&self.cluster, &mut self.store);
        let mut ix = Index::default();
        for ns in self.cluster.namespaces.keys() {
            ix.ns_labels
                .insert(ns.clone(), self.cluster.namespace_labels(ns));
        }
        // Identities, allocated in sorted key order.
        let mut keys: BTreeMap<IdentityKey, Vec<ObjectKey>> = BTreeMap::new();
        for (k, p) in &self.cluster.pods {
            if p.host_network {
                continue;
            }
            keys.entry(IdentityKey::of_pod(p))
                .or_default()
                .push(k.clone());
            ix.ns_labels
                .entry(p.namespace.clone())
                .or_insert_with(|| self.cluster.namespace_labels(&p.namespace));
            for ip in &p.ips {
                ix.ip_owners.entry(*ip).or_default().insert(k.clone());
            }
        }
        for (key, pods) in keys {
            let n = self.store.allocate(&AllocationKey::Identity(key.clone()));
            for p in &pods {
                ix.pod_identity.insert(p.clone(), n);
            }
            ix.by_namespace
                .entry(key.namespace.clone())
                .or_default()
                .insert(n);
            ix.by_key.insert(key.clone(), n);
            ix.identities.insert(
                n,
                IdentityInfo {
                    number: n,
                    key,
                    pods: pods.into_iter().collect(),
                },
            );
        }
        for (name, node) in &self.cluster.nodes {
            for ip in &node.ips {
                ix.node_ips.entry(*ip).or_insert_with(|| name.clone());
            }
        }
        self.cidr_refs.clear();
        for p in self.ruleset.policies.values() {
            for c in p.cidrs() {
                *self.cidr_refs.entry(c).or_default() += 1;
            }
        }
        ix.classes = self.cidr_refs.keys().copied().collect();
        for c in &ix.classes {
            let n = self.store.allocate(&AllocationKey::Cidr(*c));
            ix.class_ids.insert(*c, n);
        }
        // Pairs in sorted order.
        let mut pairs: BTreeMap<(u32, Cidr), usize> = BTreeMap::new();
        for (ip, owners) in &ix.ip_owners {
            for o in owners {
                if let (Some(c), Some(id)) = (ix.class_of(*ip), ix.pod_identity.get(o)) {
                    *pairs.entry((*id, c)).or_default() += 1;
                }
            }
        }
        for ((id, c), count) in pairs {
            let n = self.store.allocate(&AllocationKey::PodInCidr {
                identity: id,
                cidr: c,
            });
            ix.pairs.insert((id, c), (n, count));
            ix.pairs_by_class.entry(c).or_default().insert(id);
        }
        let slots: Vec<PolicySlot> = self.ruleset.policies.keys().cloned().collect();
        for slot in &slots {
            ix.add_slot(slot, &self.ruleset);
        }
        self.index = ix;
        // Output.
        let mut st = ClusterState::default();
        self.subject_flags.clear();
        for s in self.index.identities.keys() {
            let (entries, flags) = self.index.compile_subject(*s);
            st.policy.extend(entries);
            if flags != 0 {
                self.subject_flags.insert(*s, flags);
            }
        }
        let ips: Vec<IpAddr> = self
            .index
            .ip_owners
            .keys()
            .chain(self.index.node_ips.keys())
            .copied()
            .collect();
        for ip in ips {
            if let Some(e) = self.ipcache_host_entry(ip) {
                st.ipcache.insert(Cidr::host(ip), e);
            }
        }
        for c in &self.index.classes {
            if !st.ipcache.contains_key(c) {
                let id = self.index.class_ids[c];
                st.ipcache.insert(*c, cidr_entry(id));
            }
        }
        for world in world_prefixes() {
            st.ipcache.entry(world).or_insert(IpCacheEntry {
                identity: IDENTITY_WORLD,
                cidr_identity: 0,
                kind: IPCACHE_KIND_WORLD,
                _pad: [0; 3],
            });
        }
        for (k, p) in &self.cluster.pods {
            if let Some(e) = self.endpoint_of(k, p.host_network) {
                st.endpoints.insert(k.clone(), e);
            }
        }
        let svc_keys: Vec<ObjectKey> = self.cluster.services.keys().cloned().collect();
        for k in svc_keys {
            for (vip, e) in self.service_entries(&k) {
                // Two Services claiming one VIP: the first by key owns it.
                st.services.entry(vip).or_insert(e);
            }
        }
        st.rules = self.ruleset.descriptions();
        st.identities = self.identity_table();
        self.state = st;
        StateDiff::between(&old, &self.state)
    }

    fn identity_table(&self) -> BTreeMap<u32, IdentityDescription> {
        let mut t = BTreeMap::new();
        for (n, i) in &self.index.identities {
            t.insert(*n, IdentityDescription::Pod(i.key.clone()));
        }
        for (c, n) in &self.index.class_ids {
            t.insert(*n, IdentityDescription::Cidr(*c));
        }
        for ((id, c), (n, _)) in &self.index.pairs {
            t.insert(
                *n,
                IdentityDescription::PodInCidr {
                    identity: *id,
                    cidr: *c,
                },
            );
        }
        t
    }

    fn endpoint_of(&self, k: &ObjectKey, host_network: bool) -> Option<EndpointState> {
        if host_network {
            return None;
        }
        let id = *self.index.pod_identity.get(k)?;
        Some(EndpointState {
            identity: id,
            flags: self.subject_flags.get(&id).copied().unwrap_or(0),
            mode: MODE_ENFORCE,
        })
    }

    fn service_entries(&mut self, k: &ObjectKey) -> Vec<(ServiceVip, ServiceEntry)> {
        let Some(svc) = self.cluster.services.get(k) else {
            return Vec::new();
        };
        if svc.cluster_ips.is_empty() || svc.ports.is_empty() {
            return Vec::new();
        }
        let svc = svc.clone();
        let id = self.store.allocate(&AllocationKey::Service(k.clone()));
        let mut out = Vec::new();
        for ip in &svc.cluster_ips {
            for p in &svc.ports {
                out.push((
                    ServiceVip {
                        addr: *ip,
                        port: p.port,
                        protocol: p.protocol,
                    },
                    ServiceEntry { service_id: id },
                ));
            }
        }
        out
    }

    /// The owner of a VIP: the first Service (by key) exposing it.
    fn service_vip_entry(&mut self, vip: &ServiceVip) -> Option<ServiceEntry> {
        let owner = self
            .cluster
            .services
            .values()
            .find(|s| {
                s.cluster_ips.contains(&vip.addr)
                    && s.ports
                        .iter()
                        .any(|p| p.port == vip.port && p.protocol == vip.protocol)
            })?
            .key();
        let id = self.store.allocate(&AllocationKey::Service(owner));
        Some(ServiceEntry { service_id: id })
    }

    fn ipcache_host_entry(&self, ip: IpAddr) -> Option<IpCacheEntry> {
        let class = self.index.class_of(ip);
        if let Some(owner) = self.index.ip_owners.get(&ip).and_then(|o| o.iter().next()) {
            let id = self.index.pod_identity[owner];
            let cidr_identity = class
                .and_then(|c| self.index.pairs.get(&(id, c)))
                .map_or(0, |p| p.0);
            return Some(IpCacheEntry {
                identity: id,
                cidr_identity,
                kind: IPCACHE_KIND_POD,
                _pad: [0; 3],
            });
        }
        if self.index.node_ips.contains_key(&ip) {
            return Some(IpCacheEntry {
                identity: IDENTITY_REMOTE_NODE,
                cidr_identity: class.map_or(0, |c| self.index.class_ids[&c]),
                kind: IPCACHE_KIND_REMOTE_NODE,
                _pad: [0; 3],
            });
        }
        let host = Cidr::host(ip);
        self.index.class_ids.get(&host).map(|id| cidr_entry(*id))
    }

    /// Applies one change to the model and returns the minimal diff of the compiled state.
    pub fn apply(&mut self, change: &Change) -> StateDiff {
        match change {
            Change::UpsertPod(_) | Change::DeletePod(_) => self.apply_pod(change),
            Change::UpsertNetworkPolicy(p) => {
                self.apply_policy(change, PolicySlot::Network(p.key()))
            }
            Change::DeleteNetworkPolicy(k) => {
                self.apply_policy(change, PolicySlot::Network(k.clone()))
            }
            Change::UpsertFlowPolicy(p) => self.apply_policy(change, PolicySlot::Flow(p.key())),
            Change::DeleteFlowPolicy(k) => self.apply_policy(change, PolicySlot::Flow(k.clone())),
            Change::UpsertClusterNetworkPolicy(p) => {
                self.apply_policy(change, PolicySlot::Cluster(p.name.clone()))
            }
            Change::DeleteClusterNetworkPolicy(n) => {
                self.apply_policy(change, PolicySlot::Cluster(n.clone()))
            }
            Change::UpsertService(s) => self.apply_service(change, s.key()),
            Change::DeleteService(k) => self.apply_service(change, k.clone()),
            _ => {
                self.cluster.apply(change);
                self.rebuild()
            }
        }
    }

    fn recompile_subjects(
        &mut self,
        subjects: &BTreeSet<u32>,
        policy: &mut Tracker<PolicyKey, PolicyEntry>,
        endpoints: &mut Tracker<ObjectKey, EndpointState>,
    ) {
        for s in subjects {
            let old_keys: Vec<PolicyKey> = self.state.policy_of(*s).map(|(k, _)| *k).collect();
            let (entries, flags) = self.index.compile_subject(*s);
            let new_keys: BTreeSet<PolicyKey> = entries.iter().map(|(k, _)| *k).collect();
            for k in old_keys {
                if !new_keys.contains(&k) {
                    policy.set(&mut self.state.policy, k, None);
                }
            }
            for (k, v) in entries {
                if self.state.policy.get(&k) != Some(&v) {
                    policy.set(&mut self.state.policy, k, Some(v));
                }
            }
            let old_flags = self.subject_flags.get(s).copied().unwrap_or(0);
            if flags != 0 {
                self.subject_flags.insert(*s, flags);
            } else {
                self.subject_flags.remove(s);
            }
            if old_flags != flags
                && let Some(info) = self.index.identities.get(s)
            {
                for p in info.pods.clone() {
                    let e = self.endpoint_of(&p, false);
                    endpoints.set(&mut self.state.endpoints, p, e);
                }
            }
        }
    }

    fn apply_pod(&mut self, change: &Change) -> StateDiff {
        let key = match change {
            Change::UpsertPod(p) => p.key(),
            Change::DeletePod(k) => k.clone(),
            _ => return StateDiff::default(),
        };
        if let Change::UpsertPod(p) = change
            && !self.index.ns_labels.contains_key(&p.namespace)
        {
            // A pod in a namespace the index has not seen: rebuild (namespace labels enter the
            // index only there).
            self.cluster.apply(change);
            return self.rebuild();
        }
        let old_pod = self.cluster.pods.get(&key).cloned();
        self.cluster.apply(change);
        let new_pod = self.cluster.pods.get(&key).cloned();
        let mut affected: BTreeSet<u32> = BTreeSet::new();
        let mut removed_subjects: BTreeSet<u32> = BTreeSet::new();
        let mut touched_ips: BTreeSet<IpAddr> = BTreeSet::new();
        let mut ident = Tracker::new();
        let mut policy = Tracker::new();
        let mut endpoints = Tracker::new();
        let mut ipcache = Tracker::new();

        if let Some(old) = old_pod.as_ref().filter(|p| !p.host_network)
            && let Some(id) = self.index.pod_identity.remove(&key)
        {
            for ip in &old.ips {
                touched_ips.insert(*ip);
                if let Some(o) = self.index.ip_owners.get_mut(ip) {
                    o.remove(&key);
                    if o.is_empty() {
                        self.index.ip_owners.remove(ip);
                    }
                }
                if let Some(c) = self.index.class_of(*ip)
                    && let Some(entry) = self.index.pairs.get_mut(&(id, c))
                {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        let n = entry.0;
                        self.index.pairs.remove(&(id, c));
                        if let Some(set) = self.index.pairs_by_class.get_mut(&c) {
                            set.remove(&id);
                        }
                        ident.set(&mut self.state.identities, n, None);
                        affected.extend(self.index.interested(Some(id), Some(c)));
                    }
                }
            }
            let info = self
                .index
                .identities
                .get_mut(&id)
                .expect("indexed pod has an identity");
            info.pods.remove(&key);
            if info.pods.is_empty() {
                let info = self
                    .index
                    .identities
                    .remove(&id)
                    .expect("identity just seen");
                self.index.by_key.remove(&info.key);
                if let Some(set) = self.index.by_namespace.get_mut(&info.key.namespace) {
                    set.remove(&id);
                }
                affected.extend(self.index.interested(Some(id), None));
                affected.extend(self.index.unindex_identity(id));
                removed_subjects.insert(id);
                ident.set(&mut self.state.identities, id, None);
            }
            endpoints.set(&mut self.state.endpoints, key.clone(), None);
        }
        if let Some(new) = new_pod.as_ref().filter(|p| !p.host_network) {
            let id = self.identity_of_pod(new);
            self.index.pod_identity.insert(key.clone(), id);
            if let Some(info) = self.index.identities.get_mut(&id) {
                info.pods.insert(key.clone());
            } else {
                let k = IdentityKey::of_pod(new);
                self.index.by_key.insert(k.clone(), id);
                self.index
                    .by_namespace
                    .entry(k.namespace.clone())
                    .or_default()
                    .insert(id);
                self.index.identities.insert(
                    id,
                    IdentityInfo {
                        number: id,
                        key: k.clone(),
                        pods: BTreeSet::from([key.clone()]),
                    },
                );
                removed_subjects.remove(&id);
                affected.extend(self.index.index_identity(id));
                affected.extend(self.index.interested(Some(id), None));
                ident.set(
                    &mut self.state.identities,
                    id,
                    Some(IdentityDescription::Pod(k)),
                );
            }
            for ip in &new.ips {
                touched_ips.insert(*ip);
                self.index
                    .ip_owners
                    .entry(*ip)
                    .or_default()
                    .insert(key.clone());
                if let Some(c) = self.index.class_of(*ip) {
                    if let Some(entry) = self.index.pairs.get_mut(&(id, c)) {
                        entry.1 += 1;
                    } else {
                        let n = self.store.allocate(&AllocationKey::PodInCidr {
                            identity: id,
                            cidr: c,
                        });
                        self.index.pairs.insert((id, c), (n, 1));
                        self.index.pairs_by_class.entry(c).or_default().insert(id);
                        ident.set(
                            &mut self.state.identities,
                            n,
                            Some(IdentityDescription::PodInCidr {
                                identity: id,
                                cidr: c,
                            }),
                        );
                        affected.extend(self.index.interested(Some(id), Some(c)));
                    }
                }
            }
        }
        for s in &removed_subjects {
            let old_keys: Vec<PolicyKey> = self.state.policy_of(*s).map(|(k, _)| *k).collect();
            for k in old_keys {
                policy.set(&mut self.state.policy, k, None);
            }
            self.subject_flags.remove(s);
            affected.remove(s);
        }
        let affected: BTreeSet<u32> = affected
            .into_iter()
            .filter(|s| self.index.identities.contains_key(s))
            .collect();
        self.recompile_subjects(&affected, &mut policy, &mut endpoints);
        if let Some(new) = new_pod.as_ref().filter(|p| !p.host_network) {
            let e = self.endpoint_of(&key, false);
            endpoints.set(&mut self.state.endpoints, new.key(), e);
        }
        for ip in touched_ips {
            let e = self.ipcache_host_entry(ip);
            ipcache.set(&mut self.state.ipcache, Cidr::host(ip), e);
        }
        StateDiff {
            ipcache: ipcache.finish(&self.state.ipcache),
            policy: policy.finish(&self.state.policy),
            endpoints: endpoints.finish(&self.state.endpoints),
            services: Default::default(),
            rules: Default::default(),
            identities: ident.finish(&self.state.identities),
        }
    }

    fn apply_policy(&mut self, change: &Change, slot: PolicySlot) -> StateDiff {
        self.cluster.apply(change);
        self.refresh_slots(&[slot], Vec::new())
    }

    fn refresh_slots(&mut self, slots: &[PolicySlot], services: Vec<ObjectKey>) -> StateDiff {
        let old_descriptions: BTreeMap<u32, crate::rules::RuleDescription> = slots
            .iter()
            .filter_map(|s| self.ruleset.policies.get(s))
            .flat_map(|p| p.descriptions.iter().map(|(k, v)| (*k, v.clone())))
            .collect();
        let mut ruleset = std::mem::take(&mut self.ruleset);
        for slot in slots {
            for c in ruleset
                .policies
                .get(slot)
                .map(|p| p.cidrs())
                .unwrap_or_default()
            {
                if let Some(n) = self.cidr_refs.get_mut(&c) {
                    *n -= 1;
                    if *n == 0 {
                        self.cidr_refs.remove(&c);
                    }
                }
            }
            ruleset.refresh(&self.cluster, slot, &mut self.store);
            for c in ruleset
                .policies
                .get(slot)
                .map(|p| p.cidrs())
                .unwrap_or_default()
            {
                *self.cidr_refs.entry(c).or_default() += 1;
            }
        }
        self.ruleset = ruleset;
        let new_classes: Vec<Cidr> = self.cidr_refs.keys().copied().collect();
        if new_classes != self.index.classes {
            return self.rebuild();
        }
        let mut affected = BTreeSet::new();
        let mut policy = Tracker::new();
        let mut endpoints = Tracker::new();
        let mut rules = Tracker::new();
        let mut svc = Tracker::new();
        for slot in slots {
            affected.extend(self.index.remove_slot(slot));
            affected.extend(self.index.add_slot(slot, &self.ruleset));
        }
        let descriptions: BTreeMap<u32, crate::rules::RuleDescription> = slots
            .iter()
            .filter_map(|s| self.ruleset.policies.get(s))
            .flat_map(|p| p.descriptions.iter().map(|(k, v)| (*k, v.clone())))
            .collect();
        for c in old_descriptions.keys() {
            if !descriptions.contains_key(c) {
                rules.set(&mut self.state.rules, *c, None);
            }
        }
        for (c, d) in descriptions {
            if self.state.rules.get(&c) != Some(&d) {
                rules.set(&mut self.state.rules, c, Some(d));
            }
        }
        let affected: BTreeSet<u32> = affected
            .into_iter()
            .filter(|s| self.index.identities.contains_key(s))
            .collect();
        self.recompile_subjects(&affected, &mut policy, &mut endpoints);
        for k in services {
            let id = self.store.get(&AllocationKey::Service(k.clone()));
            let mut vips: BTreeSet<ServiceVip> = self
                .state
                .services
                .iter()
                .filter(|(_, e)| Some(e.service_id) == id)
                .map(|(v, _)| *v)
                .collect();
            vips.extend(self.service_entries(&k).into_iter().map(|(v, _)| v));
            for v in vips {
                let e = self.service_vip_entry(&v);
                svc.set(&mut self.state.services, v, e);
            }
        }
        StateDiff {
            ipcache: Default::default(),
            policy: policy.finish(&self.state.policy),
            endpoints: endpoints.finish(&self.state.endpoints),
            services: svc.finish(&self.state.services),
            rules: rules.finish(&self.state.rules),
            identities: Default::default(),
        }
    }

    fn apply_service(&mut self, change: &Change, key: ObjectKey) -> StateDiff {
        self.cluster.apply(change);
        let slots: Vec<PolicySlot> = self
            .cluster
            .flow_policies
            .iter()
            .filter(|(_, fp)| crate::validate::flow_policy_references(fp, &key))
            .map(|(k, _)| PolicySlot::Flow(k.clone()))
            .collect();
        self.refresh_slots(&slots, vec![key])
    }

    /// The full recompile of the current model with this engine's allocations (what every
    /// incremental result must equal).
    pub fn full_recompile(&self) -> ClusterState
    where
        S: Clone,
    {
        compile(&self.cluster, self.store.clone()).0
    }
}

fn cidr_entry(id: u32) -> IpCacheEntry {
    IpCacheEntry {
        identity: id,
        cidr_identity: id,
        kind: IPCACHE_KIND_CIDR,
        _pad: [0; 3],
    }
}

fn world_prefixes() -> [Cidr; 2] {
    [
        Cidr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0).expect("valid /0"),
        Cidr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).expect("valid /0"),
    ]
}
