//! The index: everything derived from the model that compilation reads (identities and their
//! pods, namespace labels, policy prefixes and pod-in-prefix pairs, each rule's subject and peer
//! sets, isolations), with reverse indexes so that one change touches only what it can affect,
//! and the upkeep that keeps it in step with the rules and identities.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use septum_datapath_common::{Cookie, Identity};

use super::maps::world_prefixes;
use super::{IdentityInfo, Peer};
use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::ObjectKey;
use crate::rules::{Direction, Isolation, PeerMatch, PodMatch, PolicySlot, Rule, RuleKey, RuleSet};
use crate::selector::Labels;

/// An isolation's place: its policy and its position among the policy's isolations.
pub(super) type IsoKey = (PolicySlot, u32);

/// The short handle the indexes use for a rule (a [`RuleKey`] holds strings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct RuleHandle(u32);

#[derive(Clone, Debug)]
pub(super) struct RuleData {
    pub(super) rule: Rule,
    /// Position in evaluation order.
    pub(super) key: RuleKey,
    /// Its handle.
    pub(super) handle: RuleHandle,
    /// Whether a peer is `Any` (then the peer sets are empty).
    pub(super) any: bool,
    /// Identities it applies to.
    pub(super) subjects: BTreeSet<Identity>,
    /// Pod identities it names as peers.
    pub(super) peer_ids: BTreeSet<Identity>,
    /// Policy prefixes (classes) it names as peers.
    pub(super) peer_classes: BTreeSet<Cidr>,
    /// Namespaces where the subject or a pod peer can select pods (its `rules_by_ns` keys).
    pub(super) namespaces: BTreeSet<String>,
}

/// What evaluation reads of an isolation (kept beside the subject index: no lookup by key).
#[derive(Clone, Copy, Debug)]
pub(super) struct IsoBrief {
    pub(super) direction: Direction,
    pub(super) enforce: bool,
    pub(super) cookie: Cookie,
}

impl IsoBrief {
    pub(super) fn of(iso: &Isolation) -> Self {
        Self {
            direction: iso.direction,
            enforce: iso.enforce,
            cookie: iso.cookie,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct IsoData {
    pub(super) iso: Isolation,
    pub(super) subjects: BTreeSet<Identity>,
    /// Namespaces where the subject can select pods (its `isos_by_ns` keys).
    pub(super) namespaces: Vec<String>,
}

/// Everything derived from the model that compilation reads.
#[derive(Clone, Debug, Default)]
pub(super) struct Index {
    pub(super) ns_labels: BTreeMap<String, Labels>,
    pub(super) identities: BTreeMap<Identity, IdentityInfo>,
    pub(super) by_key: HashMap<IdentityKey, Identity>,
    pub(super) by_namespace: BTreeMap<String, BTreeSet<Identity>>,
    pub(super) pod_identity: BTreeMap<ObjectKey, Identity>,
    pub(super) ip_owners: BTreeMap<IpAddr, BTreeSet<ObjectKey>>,
    pub(super) node_ips: BTreeMap<IpAddr, String>,
    pub(super) classes: Vec<Cidr>,
    pub(super) class_ids: BTreeMap<Cidr, Identity>,
    pub(super) pairs: BTreeMap<(Identity, Cidr), (Identity, usize)>,
    pub(super) pairs_by_class: BTreeMap<Cidr, BTreeSet<Identity>>,
    /// Rules by handle.
    pub(super) rules: HashMap<RuleHandle, RuleData>,
    pub(super) isolations: BTreeMap<IsoKey, IsoData>,
    /// Subject identity -> its rules in evaluation order (key -> handle).
    pub(super) subject_rules: BTreeMap<Identity, BTreeMap<RuleKey, RuleHandle>>,
    /// Subject identity -> its isolations in order, with what evaluation reads of them.
    pub(super) subject_isos: BTreeMap<Identity, BTreeMap<IsoKey, IsoBrief>>,
    // Reverse indexes, so that one change touches only what it can affect.
    pub(super) next_handle: RuleHandle,
    pub(super) slot_rules: HashMap<PolicySlot, Vec<RuleHandle>>,
    pub(super) slot_isos: HashMap<PolicySlot, Vec<IsoKey>>,
    /// Namespace -> rules whose subject or a pod peer can select pods in it.
    pub(super) rules_by_ns: HashMap<String, BTreeSet<RuleHandle>>,
    /// Namespace -> isolations whose subject can select pods in it.
    pub(super) isos_by_ns: HashMap<String, BTreeSet<IsoKey>>,
    /// Pod identity -> rules naming it as a peer.
    pub(super) peer_rules: HashMap<Identity, BTreeSet<RuleHandle>>,
    /// Policy prefix -> rules naming it as a peer.
    pub(super) class_rules: HashMap<Cidr, BTreeSet<RuleHandle>>,
    /// Egress rules with named ports (resolved on every destination pod).
    pub(super) named_egress: BTreeSet<RuleHandle>,
}

fn empty_labels() -> &'static Labels {
    static EMPTY: std::sync::OnceLock<Labels> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Labels::new)
}

impl Index {
    pub(super) fn ns_labels(&self, ns: &str) -> &Labels {
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
    fn candidates(&self, m: &PodMatch) -> Vec<Identity> {
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
    fn subjects_of<'a>(
        &self,
        handles: impl IntoIterator<Item = &'a RuleHandle>,
        out: &mut BTreeSet<Identity>,
    ) {
        for h in handles {
            if let Some(d) = self.rules.get(h) {
                out.extend(d.subjects.iter().copied());
            }
        }
    }

    /// Subjects that may hold entries for peer identity `id` (or its pod-in-CIDR pairs).
    pub(super) fn interested_in_peer(&self, id: Identity) -> BTreeSet<Identity> {
        let mut out = BTreeSet::new();
        self.subjects_of(self.peer_rules.get(&id).into_iter().flatten(), &mut out);
        self.subjects_of(&self.named_egress, &mut out);
        for (c, _) in self.pairs_of(id) {
            self.subjects_of(self.class_rules.get(&c).into_iter().flatten(), &mut out);
        }
        out
    }

    /// The pod-in-prefix pairs of pod identity `id`: (prefix, pair identity), by prefix.
    pub(super) fn pairs_of(&self, id: Identity) -> impl Iterator<Item = (Cidr, Identity)> + '_ {
        // The smallest prefix sorts first: the scan starts at the identity's first pair.
        self.pairs
            .range((id, world_prefixes()[0])..)
            .take_while(move |((pid, _), _)| *pid == id)
            .map(|((_, c), (n, _))| (*c, *n))
    }

    /// Subjects that may hold entries for addresses in policy prefix `class`.
    pub(super) fn interested_in_class(&self, class: Cidr) -> BTreeSet<Identity> {
        let mut out = BTreeSet::new();
        self.subjects_of(self.class_rules.get(&class).into_iter().flatten(), &mut out);
        out
    }

    pub(super) fn class_of(&self, ip: IpAddr) -> Option<Cidr> {
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
            handle: RuleHandle::default(),
            any,
            subjects,
            peer_ids,
            peer_classes,
        }
    }

    fn insert_rule(&mut self, mut data: RuleData) {
        let key = data.key.clone();
        let h = self.next_handle;
        self.next_handle = RuleHandle(h.0.wrapping_add(1));
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
        self.slot_rules.entry(key.slot).or_default().push(h);
        self.rules.insert(h, data);
    }

    fn remove_rule(&mut self, h: RuleHandle) -> Option<RuleData> {
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

    fn insert_iso(&mut self, key: IsoKey, iso: Isolation) -> BTreeSet<Identity> {
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

    fn remove_iso(&mut self, key: &IsoKey) -> BTreeSet<Identity> {
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

    pub(super) fn add_slot(&mut self, slot: &PolicySlot, rs: &RuleSet) -> BTreeSet<Identity> {
        let mut affected = BTreeSet::new();
        let Some(p) = rs.policies.get(slot) else {
            return affected;
        };
        for (seq, r) in p.rules.iter().enumerate() {
            let key = RuleKey::of(slot, seq as u32, r);
            let data = self.rule_data(key, r.clone());
            affected.extend(data.subjects.iter().copied());
            self.insert_rule(data);
        }
        for (seq, iso) in p.isolations.iter().enumerate() {
            affected.extend(self.insert_iso((slot.clone(), seq as u32), iso.clone()));
        }
        affected
    }

    pub(super) fn remove_slot(&mut self, slot: &PolicySlot) -> BTreeSet<Identity> {
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
    pub(super) fn index_identity(&mut self, id: Identity) {
        let info = self.identities[&id].clone();
        let handles: Vec<RuleHandle> = self
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
    pub(super) fn unindex_identity(&mut self, id: Identity) {
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

    pub(super) fn peer_matches(&self, d: &RuleData, peer: &Peer<'_>) -> bool {
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
