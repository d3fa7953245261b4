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
    /// Position in evaluation order.
    key: RuleKey,
    /// Short handle the indexes use (a [`RuleKey`] holds strings).
    handle: u32,
    any: bool,
    subjects: BTreeSet<u32>,
    peer_ids: BTreeSet<u32>,
    peer_classes: BTreeSet<Cidr>,
    /// Namespaces where the subject or a pod peer can select pods (its `rules_by_ns` keys).
    namespaces: BTreeSet<String>,
}

/// What evaluation reads of an isolation (kept beside the subject index: no lookup by key).
#[derive(Clone, Copy, Debug)]
struct IsoBrief {
    direction: Direction,
    enforce: bool,
    cookie: u32,
}

impl IsoBrief {
    fn of(iso: &Isolation) -> Self {
        Self {
            direction: iso.direction,
            enforce: iso.enforce,
            cookie: iso.cookie,
        }
    }
}

#[derive(Clone, Debug)]
struct IsoData {
    iso: Isolation,
    subjects: BTreeSet<u32>,
    /// Namespaces where the subject can select pods (its `isos_by_ns` keys).
    namespaces: Vec<String>,
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
    /// Rules by handle.
    rules: HashMap<u32, RuleData>,
    isolations: BTreeMap<IsoKey, IsoData>,
    /// Subject identity -> its rules in evaluation order (key -> handle).
    subject_rules: BTreeMap<u32, BTreeMap<RuleKey, u32>>,
    /// Subject identity -> its isolations in order, with what evaluation reads of them.
    subject_isos: BTreeMap<u32, BTreeMap<IsoKey, IsoBrief>>,
    // Reverse indexes, so that one change touches only what it can affect.
    next_handle: u32,
    slot_rules: HashMap<PolicySlot, Vec<u32>>,
    slot_isos: HashMap<PolicySlot, Vec<IsoKey>>,
    /// Namespace -> rules whose subject or a pod peer can select pods in it.
    rules_by_ns: HashMap<String, BTreeSet<u32>>,
    /// Namespace -> isolations whose subject can select pods in it.
    isos_by_ns: HashMap<String, BTreeSet<IsoKey>>,
    /// Pod identity -> rules naming it as a peer.
    peer_rules: HashMap<u32, BTreeSet<u32>>,
    /// Policy prefix -> rules naming it as a peer.
    class_rules: HashMap<Cidr, BTreeSet<u32>>,
    /// Egress rules with named ports (resolved on every destination pod).
    named_egress: BTreeSet<u32>,
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

    /// Namespaces a pod match can select pods in. Namespace labels enter the index only in a
    /// rebuild, so this set holds until the next one.
    fn match_namespaces(&self, m: &PodMatch) -> Vec<String> {
        match &m.namespace {
            crate::rules::NamespaceMatch::Exact(ns) => vec![ns.clone()],
            crate::rules::NamespaceMatch::Selector(sel) => self
                .ns_labels
                .iter()
                .filter(|(_, labels)| sel.matches(labels))
                .map(|(ns, _)| ns.clone())
                .collect(),
        }
    }

    /// Identities a pod match may select (narrowed by namespace).
    fn candidates(&self, m: &PodMatch) -> Vec<u32> {
        self.match_namespaces(m)
            .iter()
            .filter_map(|ns| self.by_namespace.get(ns))
            .flatten()
            .copied()
            .collect()
    }

    /// Namespaces in which a rule can select subjects or pod peers.
    fn rule_namespaces(&self, rule: &Rule) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.match_namespaces(&rule.subject).into_iter().collect();
        for p in &rule.peers {
            if let PeerMatch::Pods(m) = p {
                out.extend(self.match_namespaces(m));
            }
        }
        out
    }

    /// Subjects of the given rules.
    fn subjects_of<'a>(&self, handles: impl IntoIterator<Item = &'a u32>, out: &mut BTreeSet<u32>) {
        for h in handles {
            if let Some(d) = self.rules.get(h) {
                out.extend(d.subjects.iter().copied());
            }
        }
    }

    /// Subjects that may hold entries for peer identity `id` (or its pod-in-CIDR pairs).
    fn interested_in_peer(&self, id: u32) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        self.subjects_of(self.peer_rules.get(&id).into_iter().flatten(), &mut out);
        self.subjects_of(&self.named_egress, &mut out);
        for ((pid, c), _) in self.pairs.range((id, world_prefixes()[0])..) {
            if *pid != id {
                break;
            }
            self.subjects_of(self.class_rules.get(c).into_iter().flatten(), &mut out);
        }
        out
    }

    /// Subjects that may hold entries for addresses in policy prefix `class`.
    fn interested_in_class(&self, class: Cidr) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        self.subjects_of(self.class_rules.get(&class).into_iter().flatten(), &mut out);
        out
    }

    fn class_of(&self, ip: IpAddr) -> Option<Cidr> {
        self.classes
            .iter()
            .filter(|c| c.contains_ip(ip))
            .max_by_key(|c| c.len())
            .copied()
    }

    fn rule_data(&self, key: RuleKey, rule: Rule) -> RuleData {
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
            namespaces: self.rule_namespaces(&rule),
            rule,
            key,
            handle: 0,
            any,
            subjects,
            peer_ids,
            peer_classes,
        }
    }

    fn insert_rule(&mut self, mut data: RuleData) {
        let key = data.key.clone();
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1);
        data.handle = h;
        for s in &data.subjects {
            self.subject_rules
                .entry(*s)
                .or_default()
                .insert(key.clone(), h);
        }
        for id in &data.peer_ids {
            self.peer_rules.entry(*id).or_default().insert(h);
        }
        for c in &data.peer_classes {
            self.class_rules.entry(*c).or_default().insert(h);
        }
        if data.rule.direction == Direction::Egress && data.rule.ports.has_named() {
            self.named_egress.insert(h);
        }
        for ns in &data.namespaces {
            self.rules_by_ns.entry(ns.clone()).or_default().insert(h);
        }
        self.slot_rules.entry(key.4).or_default().push(h);
        self.rules.insert(h, data);
    }

    fn remove_rule(&mut self, h: u32) -> Option<RuleData> {
        let data = self.rules.remove(&h)?;
        for s in &data.subjects {
            if let Some(set) = self.subject_rules.get_mut(s) {
                set.remove(&data.key);
                if set.is_empty() {
                    self.subject_rules.remove(s);
                }
            }
        }
        for id in &data.peer_ids {
            remove_from(&mut self.peer_rules, id, &h);
        }
        for c in &data.peer_classes {
            remove_from(&mut self.class_rules, c, &h);
        }
        self.named_egress.remove(&h);
        for ns in &data.namespaces {
            remove_from(&mut self.rules_by_ns, ns, &h);
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
            self.subject_isos
                .entry(*s)
                .or_default()
                .insert(key.clone(), IsoBrief::of(&iso));
        }
        let namespaces = self.match_namespaces(&iso.subject);
        for ns in &namespaces {
            self.isos_by_ns
                .entry(ns.clone())
                .or_default()
                .insert(key.clone());
        }
        self.slot_isos
            .entry(key.0.clone())
            .or_default()
            .push(key.clone());
        self.isolations.insert(
            key,
            IsoData {
                iso,
                subjects: subjects.clone(),
                namespaces,
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
        for ns in &data.namespaces {
            remove_from(&mut self.isos_by_ns, ns, key);
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
            let data = self.rule_data(key, r.clone());
            affected.extend(data.subjects.iter().copied());
            self.insert_rule(data);
        }
        for (seq, iso) in p.isolations.iter().enumerate() {
            affected.extend(self.insert_iso((slot.clone(), seq as u32), iso.clone()));
        }
        affected
    }

    fn remove_slot(&mut self, slot: &PolicySlot) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        for h in self.slot_rules.remove(slot).unwrap_or_default() {
            if let Some(d) = self.remove_rule(h) {
                affected.extend(d.subjects);
            }
        }
        for k in self.slot_isos.remove(slot).unwrap_or_default() {
            affected.extend(self.remove_iso(&k));
        }
        affected
    }

    /// Adds a new identity to the subject and peer sets of the rules and isolations that can
    /// select it (those of its namespace).
    fn index_identity(&mut self, id: u32) {
        let info = self.identities[&id].clone();
        let handles: Vec<u32> = self
            .rules_by_ns
            .get(&info.key.namespace)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for h in handles {
            let Some(d) = self.rules.get(&h) else {
                continue;
            };
            let (subj, peer) = {
                let subj = self.pod_match(&d.rule.subject, &info);
                let peer = !d.any
                    && d.rule.peers.iter().any(|p| match p {
                        PeerMatch::Pods(m) => self.pod_match(m, &info),
                        _ => false,
                    });
                (subj, peer)
            };
            let d = self.rules.get_mut(&h).expect("indexed rule exists");
            if subj {
                d.subjects.insert(id);
                self.subject_rules
                    .entry(id)
                    .or_default()
                    .insert(d.key.clone(), h);
            }
            if peer {
                d.peer_ids.insert(id);
                self.peer_rules.entry(id).or_default().insert(h);
            }
        }
        let isos: Vec<IsoKey> = self
            .isos_by_ns
            .get(&info.key.namespace)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for k in isos {
            let data = &self.isolations[&k];
            if self.pod_match(&data.iso.subject, &info) {
                let brief = IsoBrief::of(&data.iso);
                self.isolations
                    .get_mut(&k)
                    .expect("indexed isolation exists")
                    .subjects
                    .insert(id);
                self.subject_isos.entry(id).or_default().insert(k, brief);
            }
        }
    }

    /// Removes an identity from every rule and isolation.
    fn unindex_identity(&mut self, id: u32) {
        for h in self
            .subject_rules
            .remove(&id)
            .unwrap_or_default()
            .into_values()
        {
            if let Some(d) = self.rules.get_mut(&h) {
                d.subjects.remove(&id);
            }
        }
        for h in self.peer_rules.remove(&id).unwrap_or_default() {
            if let Some(d) = self.rules.get_mut(&h) {
                d.peer_ids.remove(&id);
            }
        }
        for k in self
            .subject_isos
            .remove(&id)
            .unwrap_or_default()
            .into_keys()
        {
            if let Some(d) = self.isolations.get_mut(&k) {
                d.subjects.remove(&id);
            }
        }
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

/// Removes `value` from the set at `key`, dropping the set when it empties.
fn remove_from<K: Eq + std::hash::Hash, V: Ord>(
    map: &mut HashMap<K, BTreeSet<V>>,
    key: &K,
    value: &V,
) {
    if let Some(set) = map.get_mut(key) {
        set.remove(value);
        if set.is_empty() {
            map.remove(key);
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
            .flat_map(|m| m.values())
            .map(|h| &self.rules[h])
            .filter(|d| d.rule.direction == direction)
            .collect();
        let (mut iso_enforce, mut iso_all) = (0, 0);
        for iso in self
            .subject_isos
            .get(&s.number)
            .into_iter()
            .flat_map(|m| m.values())
        {
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
    let covered;
    let base = if cover_all {
        covered = Segmented::constant(f.other);
        &covered
    } else {
        fallback
    };
    for p in Protocol::ALL {
        // Both are normalized, so equal segment lists are equal functions.
        if f.protos[p.index()] == base.protos[p.index()] {
            continue;
        }
        // Option A: blocks where f differs from what the lookup falls back to.
        let diff_a = blocks_where_differs(f, base, p);
        // Option B: a whole-protocol entry with f's most common value, then blocks.
        let majority = majority_value(&f.segments(p));
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

/// What compiling one subject in one direction needs besides the peer.
struct DirCompile<'a> {
    ctx: SubjectCtx<'a>,
    /// The decision toward peers nothing more specific names.
    generic: Segmented<Decision>,
    /// Policy prefixes some rule names as a peer.
    classes: BTreeSet<Cidr>,
    /// Named ports of egress rules toward any peer (every pod with such a port is special).
    named_any: BTreeSet<&'a str>,
}

impl DirCompile<'_> {
    /// Whether a pod identity gets entries of its own (the decision toward it may differ from
    /// the generic one).
    fn is_special(&self, id: u32, info: &IdentityInfo) -> bool {
        self.ctx.rules.iter().any(|d| d.peer_ids.contains(&id))
            || (!self.named_any.is_empty()
                && info
                    .key
                    .named_ports
                    .iter()
                    .any(|(n, _, _)| self.named_any.contains(n.as_str())))
    }
}

impl Index {
    /// The compile context of a subject in a direction; `None` when nothing applies to it.
    fn dir_compile<'a>(
        &'a self,
        info: &'a IdentityInfo,
        direction: Direction,
    ) -> Option<DirCompile<'a>> {
        let ctx = self.subject_ctx(info, direction);
        if ctx.rules.is_empty() && ctx.iso_all == 0 {
            return None;
        }
        let generic = self.evaluate(&ctx, &Peer::Outside);
        let mut classes = BTreeSet::new();
        let mut named_any = BTreeSet::new();
        for d in &ctx.rules {
            classes.extend(d.peer_classes.iter().copied());
            if direction == Direction::Egress
                && d.any
                && let PortMatch::Items(items) = &d.rule.ports
            {
                for i in items {
                    if let PortItem::Named { name, .. } = i {
                        named_any.insert(name.as_str());
                    }
                }
            }
        }
        Some(DirCompile {
            ctx,
            generic,
            classes,
            named_any,
        })
    }

    /// Entries keyed by pod identity `id` and by its pod-in-CIDR identities.
    fn emit_peer(&self, dc: &DirCompile<'_>, id: u32, out: &mut Vec<(PolicyKey, PolicyEntry)>) {
        let Some(pinfo) = self.identities.get(&id) else {
            return;
        };
        let s = dc.ctx.subject.number;
        let direction = dc.ctx.direction;
        let special = dc.is_special(id, pinfo);
        let pod_layer = special.then(|| {
            let f = self.evaluate(
                &dc.ctx,
                &Peer::Pod {
                    identity: pinfo,
                    class: None,
                },
            );
            emit(out, s, direction, id, PRECEDENCE_PEER, &f, &dc.generic);
            f
        });
        for ((pid, class), (pair, _)) in self.pairs.range((id, world_prefixes()[0])..) {
            if *pid != id {
                break;
            }
            if !special && !dc.classes.contains(class) {
                continue;
            }
            let f = self.evaluate(
                &dc.ctx,
                &Peer::Pod {
                    identity: pinfo,
                    class: Some(*class),
                },
            );
            let fallback = pod_layer.as_ref().unwrap_or(&dc.generic);
            emit(
                out,
                s,
                direction,
                *pair,
                PRECEDENCE_POD_IN_CIDR,
                &f,
                fallback,
            );
        }
    }

    /// Every entry of one subject identity, sorted, and its endpoint flags.
    fn compile_subject(&self, s: u32) -> (Vec<(PolicyKey, PolicyEntry)>, u8) {
        let mut out = Vec::new();
        let mut flags = 0u8;
        let Some(info) = self.identities.get(&s) else {
            return (out, flags);
        };
        for direction in Direction::BOTH {
            let start = out.len();
            let Some(dc) = self.dir_compile(info, direction) else {
                continue;
            };
            emit(
                &mut out,
                s,
                direction,
                IDENTITY_ANY,
                PRECEDENCE_ANY_PEER,
                &dc.generic,
                &Segmented::constant(Decision::UNPOLICED),
            );
            // Identities with entries of their own, or with pairs in a named prefix.
            let mut ids: BTreeSet<u32> = BTreeSet::new();
            for d in &dc.ctx.rules {
                ids.extend(d.peer_ids.iter().copied());
            }
            if !dc.named_any.is_empty() {
                ids.extend(
                    self.identities
                        .iter()
                        .filter(|(id, inf)| dc.is_special(**id, inf))
                        .map(|(id, _)| *id),
                );
            }
            for c in &dc.classes {
                ids.extend(self.pairs_by_class.get(c).into_iter().flatten().copied());
            }
            for id in ids {
                self.emit_peer(&dc, id, &mut out);
            }
            for c in &dc.classes {
                let f = self.evaluate(&dc.ctx, &Peer::Class(*c));
                emit(
                    &mut out,
                    s,
                    direction,
                    self.class_ids[c],
                    PRECEDENCE_PEER,
                    &f,
                    &dc.generic,
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

    /// The entries of subject `s` keyed by peer identity `peer` and its pod-in-CIDR identities
    /// (none if `peer` is gone), or `None` if entries toward one peer can decide whether the
    /// subject is policed at all in a direction (then only a whole-subject compile is exact).
    fn compile_subject_peer(
        &self,
        s: u32,
        peer: Option<u32>,
    ) -> Option<Vec<(PolicyKey, PolicyEntry)>> {
        let info = self.identities.get(&s)?;
        let mut out = Vec::new();
        for direction in Direction::BOTH {
            let Some(dc) = self.dir_compile(info, direction) else {
                continue;
            };
            if dc.generic == Segmented::constant(Decision::UNPOLICED) {
                return None;
            }
            if let Some(id) = peer {
                self.emit_peer(&dc, id, &mut out);
            }
        }
        Some(out)
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
            .flat_map(|m| m.values())
            .map(|h| &self.index.rules[h].rule)
            .filter(|r| r.direction == direction)
            .collect()
    }

    /// The isolations of a subject in a direction.
    pub fn isolations_of(&self, subject: u32, direction: Direction) -> Vec<&Isolation> {
        self.index
            .subject_isos
            .get(&subject)
            .into_iter()
            .flat_map(|m| m.keys())
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

    /// Recompiles, in each subject, only the entries keyed by one peer identity and its
    /// pod-in-CIDR identities (`clear`: every peer number whose entries may exist now or
    /// before). Subjects where that is not exact are recompiled whole.
    fn recompile_peer_slice(
        &mut self,
        subjects: &BTreeSet<u32>,
        peer: Option<u32>,
        clear: &BTreeSet<u32>,
        policy: &mut Tracker<PolicyKey, PolicyEntry>,
        full: &mut BTreeSet<u32>,
    ) {
        for s in subjects {
            if full.contains(s) || !self.index.identities.contains_key(s) {
                continue;
            }
            let Some(entries) = self.index.compile_subject_peer(*s, peer) else {
                full.insert(*s);
                continue;
            };
            let new_keys: BTreeSet<PolicyKey> = entries.iter().map(|(k, _)| *k).collect();
            let mut stale = Vec::new();
            for p in clear {
                let start = PolicyKey {
                    data: PolicyKeyData::new(*s, 0, *p, 0, 0),
                    prefix_len: 0,
                };
                for (k, _) in self.state.policy.range(start..) {
                    if k.data.subject() != *s || k.data.peer() != *p {
                        break;
                    }
                    if !new_keys.contains(k) {
                        stale.push(*k);
                    }
                }
            }
            for k in stale {
                policy.set(&mut self.state.policy, k, None);
            }
            for (k, v) in entries {
                if self.state.policy.get(&k) != Some(&v) {
                    policy.set(&mut self.state.policy, k, Some(v));
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
        // Per peer identity whose entries change: the peer numbers to clear and the subjects
        // that may hold entries for it.
        let mut slices: BTreeMap<u32, (BTreeSet<u32>, BTreeSet<u32>)> = BTreeMap::new();
        // Subjects compiled whole (new identities), and identities gone.
        let mut full: BTreeSet<u32> = BTreeSet::new();
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
                        // Subjects interested in the pair, read before it leaves the index.
                        let mut interested = self.index.interested_in_peer(id);
                        interested.extend(self.index.interested_in_class(c));
                        self.index.pairs.remove(&(id, c));
                        if let Some(set) = self.index.pairs_by_class.get_mut(&c) {
                            set.remove(&id);
                        }
                        ident.set(&mut self.state.identities, n, None);
                        let slice = slices.entry(id).or_default();
                        slice.0.insert(n);
                        slice.1.extend(interested);
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
                let interested = self.index.interested_in_peer(id);
                let slice = slices.entry(id).or_default();
                slice.0.insert(id);
                slice.1.extend(interested);
                self.index.unindex_identity(id);
                let info = self
                    .index
                    .identities
                    .remove(&id)
                    .expect("identity just seen");
                self.index.by_key.remove(&info.key);
                if let Some(set) = self.index.by_namespace.get_mut(&info.key.namespace) {
                    set.remove(&id);
                }
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
                self.index.index_identity(id);
                full.insert(id);
                let slice = slices.entry(id).or_default();
                slice.0.insert(id);
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
                        slices.entry(id).or_default().0.insert(n);
                    }
                }
            }
            // Subjects interested in the new identity or its new pairs (read with the pairs
            // in the index).
            if let Some(slice) = slices.get_mut(&id) {
                slice.1.extend(self.index.interested_in_peer(id));
            }
        }
        for s in &removed_subjects {
            let old_keys: Vec<PolicyKey> = self.state.policy_of(*s).map(|(k, _)| *k).collect();
            for k in old_keys {
                policy.set(&mut self.state.policy, k, None);
            }
            self.subject_flags.remove(s);
        }
        for (peer, (mut clear, subjects)) in slices {
            let alive = self.index.identities.contains_key(&peer);
            if alive {
                // Every current pair too: the slice is recomputed whole.
                for ((pid, _), (n, _)) in self.index.pairs.range((peer, world_prefixes()[0])..) {
                    if *pid != peer {
                        break;
                    }
                    clear.insert(*n);
                }
            }
            let subjects: BTreeSet<u32> = subjects
                .into_iter()
                .filter(|s| !removed_subjects.contains(s))
                .collect();
            self.recompile_peer_slice(
                &subjects,
                alive.then_some(peer),
                &clear,
                &mut policy,
                &mut full,
            );
        }
        let full: BTreeSet<u32> = full
            .into_iter()
            .filter(|s| self.index.identities.contains_key(s))
            .collect();
        self.recompile_subjects(&full, &mut policy, &mut endpoints);
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
