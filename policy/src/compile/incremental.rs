//! The incremental path: one [`Change`] updates the index and recompiles only what it can
//! affect, tracking every touched key so that the result is the minimal [`StateDiff`] (equal to a
//! full recompile and diff, which the property tests check).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use septum_datapath_common::{Cookie, Identity, IpCacheEntry, PolicyEntry, ServiceId};

use super::{Engine, IdentityInfo};
use crate::allocation::AllocationStore;
use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::{Change, EndpointSlice, ObjectKey, Pod};
use crate::rules::{PolicySlot, RuleDescription};
use crate::state::{
    ClusterState, EndpointState, IdentityDescription, MapDiff, PolicyKey, ServiceVip, StateDiff,
};

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

    fn finish(self, map: &BTreeMap<K, V>) -> MapDiff<K, V> {
        let mut d = MapDiff::default();
        for (k, old) in self.original {
            match (old, map.get(&k)) {
                (Some(o), Some(n)) if &o == n => {}
                (None, None) => {}
                (_, Some(n)) => d.upserts.push((k, n.clone())),
                (Some(_), None) => d.deletes.push(k),
            }
        }
        d
    }
}

impl<K, V> Default for Tracker<K, V> {
    fn default() -> Self {
        Self {
            original: BTreeMap::new(),
        }
    }
}

/// The entries keyed by one peer identity that a pod change may alter.
#[derive(Debug, Default)]
struct PeerSlice {
    /// Peer numbers (the identity, its pod-in-prefix pairs) whose entries may exist now or before.
    clear: BTreeSet<Identity>,
    /// Subjects that may hold entries for them.
    subjects: BTreeSet<Identity>,
}

/// What one pod change touches, gathered step by step, and the maps' original values.
#[derive(Default)]
struct PodUpdate {
    /// Per peer identity whose entries change.
    slices: BTreeMap<Identity, PeerSlice>,
    /// Subjects compiled whole (new identities).
    full: BTreeSet<Identity>,
    /// Identities gone.
    removed_subjects: BTreeSet<Identity>,
    /// Addresses whose ipcache entry is rewritten.
    touched_ips: BTreeSet<IpAddr>,
    identities: Tracker<Identity, IdentityDescription>,
    policy: Tracker<PolicyKey, PolicyEntry>,
    endpoints: Tracker<ObjectKey, EndpointState>,
    ipcache: Tracker<Cidr, IpCacheEntry>,
    pod_addresses: Tracker<IpAddr, ObjectKey>,
}

impl PodUpdate {
    /// The minimal diff of everything touched.
    fn finish(self, state: &ClusterState) -> StateDiff {
        StateDiff {
            ipcache: self.ipcache.finish(&state.ipcache),
            policy: self.policy.finish(&state.policy),
            endpoints: self.endpoints.finish(&state.endpoints),
            services: Default::default(),
            rules: Default::default(),
            identities: self.identities.finish(&state.identities),
            service_names: Default::default(),
            pod_addresses: self.pod_addresses.finish(&state.pod_addresses),
        }
    }
}

impl<S: AllocationStore> Engine<S> {
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
            Change::UpsertEndpointSlice(s) => self.apply_endpoint_slice(change, s.key(), Some(s)),
            Change::DeleteEndpointSlice(k) => self.apply_endpoint_slice(change, k.clone(), None),
            _ => {
                self.cluster.apply(change);
                self.rebuild()
            }
        }
    }

    fn recompile_subjects(
        &mut self,
        subjects: &BTreeSet<Identity>,
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
        subjects: &BTreeSet<Identity>,
        peer: Option<Identity>,
        clear: &BTreeSet<Identity>,
        policy: &mut Tracker<PolicyKey, PolicyEntry>,
        full: &mut BTreeSet<Identity>,
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
                for (k, _) in self.state.policy.range(PolicyKey::peer_start(*s, *p)..) {
                    if k.subject() != *s || k.peer() != *p {
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

    /// A pod created, changed or deleted: the old pod leaves the index, the new one enters it,
    /// then only the entries those moves can change are recompiled.
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
        // hostNetwork pods are not endpoints: they never enter the index.
        let old_pod = self
            .cluster
            .pods
            .get(&key)
            .filter(|p| !p.host_network)
            .cloned();
        self.cluster.apply(change);
        let new_pod = self
            .cluster
            .pods
            .get(&key)
            .filter(|p| !p.host_network)
            .cloned();
        let mut up = PodUpdate::default();
        if let Some(old) = &old_pod {
            self.unindex_pod(&key, old, &mut up);
        }
        if let Some(new) = &new_pod {
            self.index_pod(&key, new, &mut up);
        }
        self.drop_removed_subjects(&mut up);
        self.recompile_slices(&mut up);
        let full: BTreeSet<Identity> = std::mem::take(&mut up.full)
            .into_iter()
            .filter(|s| self.index.identities.contains_key(s))
            .collect();
        self.recompile_subjects(&full, &mut up.policy, &mut up.endpoints);
        if new_pod.is_some() {
            let e = self.endpoint_of(&key, false);
            up.endpoints.set(&mut self.state.endpoints, key, e);
        }
        for ip in std::mem::take(&mut up.touched_ips) {
            let e = self.ipcache_host_entry(ip);
            up.ipcache.set(&mut self.state.ipcache, Cidr::host(ip), e);
            let owner = self
                .index
                .ip_owners
                .get(&ip)
                .and_then(|o| o.iter().next())
                .cloned();
            up.pod_addresses
                .set(&mut self.state.pod_addresses, ip, owner);
        }
        up.finish(&self.state)
    }

    /// Step 1: the old pod leaves the index (its addresses, its share of pod-in-prefix pairs,
    /// its identity when it was the last pod of it) and its endpoint entry goes.
    fn unindex_pod(&mut self, key: &ObjectKey, old: &Pod, up: &mut PodUpdate) {
        let Some(id) = self.index.pod_identity.remove(key) else {
            return;
        };
        for ip in &old.ips {
            up.touched_ips.insert(*ip);
            if let Some(o) = self.index.ip_owners.get_mut(ip) {
                o.remove(key);
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
                    self.drop_pair(id, c, n, up);
                }
            }
        }
        let info = self
            .index
            .identities
            .get_mut(&id)
            .expect("indexed pod has an identity");
        info.pods.remove(key);
        if info.pods.is_empty() {
            self.drop_identity(id, up);
        }
        up.endpoints
            .set(&mut self.state.endpoints, key.clone(), None);
    }

    /// A pod-in-prefix pair lost its last address: its entries in every interested subject go.
    fn drop_pair(&mut self, id: Identity, c: Cidr, n: Identity, up: &mut PodUpdate) {
        // Subjects interested in the pair, read before it leaves the index.
        let mut interested = self.index.interested_in_peer(id);
        interested.extend(self.index.interested_in_class(c));
        self.index.pairs.remove(&(id, c));
        if let Some(set) = self.index.pairs_by_class.get_mut(&c) {
            set.remove(&id);
        }
        up.identities.set(&mut self.state.identities, n, None);
        let slice = up.slices.entry(id).or_default();
        slice.clear.insert(n);
        slice.subjects.extend(interested);
    }

    /// An identity lost its last pod: it leaves every rule and isolation, and as a peer its
    /// entries in every interested subject go.
    fn drop_identity(&mut self, id: Identity, up: &mut PodUpdate) {
        let interested = self.index.interested_in_peer(id);
        let slice = up.slices.entry(id).or_default();
        slice.clear.insert(id);
        slice.subjects.extend(interested);
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
        up.removed_subjects.insert(id);
        up.identities.set(&mut self.state.identities, id, None);
    }

    /// Step 2: the new pod enters the index (its identity, new if no pod had it, its addresses
    /// and pod-in-prefix pairs), and the subjects interested in what is new are noted.
    fn index_pod(&mut self, key: &ObjectKey, new: &Pod, up: &mut PodUpdate) {
        let id = self.identity_of_pod(new);
        self.index.pod_identity.insert(key.clone(), id);
        if let Some(info) = self.index.identities.get_mut(&id) {
            info.pods.insert(key.clone());
        } else {
            self.add_identity(id, key, new, up);
        }
        for ip in &new.ips {
            up.touched_ips.insert(*ip);
            self.index
                .ip_owners
                .entry(*ip)
                .or_default()
                .insert(key.clone());
            if let Some(c) = self.index.class_of(*ip) {
                if let Some(entry) = self.index.pairs.get_mut(&(id, c)) {
                    entry.1 += 1;
                } else {
                    self.add_pair(id, c, up);
                }
            }
        }
        // Subjects interested in the new identity or its new pairs (read with the pairs in the
        // index).
        if let Some(slice) = up.slices.get_mut(&id) {
            slice.subjects.extend(self.index.interested_in_peer(id));
        }
    }

    /// A new identity: it joins the rules and isolations that select it and is compiled whole.
    fn add_identity(&mut self, id: Identity, key: &ObjectKey, pod: &Pod, up: &mut PodUpdate) {
        let k = IdentityKey::of_pod(pod);
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
        up.removed_subjects.remove(&id);
        self.index.index_identity(id);
        up.full.insert(id);
        up.slices.entry(id).or_default().clear.insert(id);
        up.identities.set(
            &mut self.state.identities,
            id,
            Some(IdentityDescription::Pod(k)),
        );
    }

    /// A pod identity's first address in a policy prefix: a new pod-in-prefix identity.
    fn add_pair(&mut self, id: Identity, c: Cidr, up: &mut PodUpdate) {
        let n = self.store.allocate_pod_in_cidr(id, c);
        self.index.pairs.insert((id, c), (n, 1));
        self.index.pairs_by_class.entry(c).or_default().insert(id);
        up.identities.set(
            &mut self.state.identities,
            n,
            Some(IdentityDescription::PodInCidr {
                identity: id,
                cidr: c,
            }),
        );
        up.slices.entry(id).or_default().clear.insert(n);
    }

    /// Step 3: the entries of identities gone as subjects go.
    fn drop_removed_subjects(&mut self, up: &mut PodUpdate) {
        for s in &up.removed_subjects {
            let old_keys: Vec<PolicyKey> = self.state.policy_of(*s).map(|(k, _)| *k).collect();
            for k in old_keys {
                up.policy.set(&mut self.state.policy, k, None);
            }
            self.subject_flags.remove(s);
        }
    }

    /// Step 4: per peer identity whose entries change, the entries keyed by it (and its pairs)
    /// in each interested subject are recomputed whole.
    fn recompile_slices(&mut self, up: &mut PodUpdate) {
        for (peer, slice) in std::mem::take(&mut up.slices) {
            let PeerSlice {
                mut clear,
                subjects,
            } = slice;
            let alive = self.index.identities.contains_key(&peer);
            if alive {
                // Every current pair too: the slice is recomputed whole.
                clear.extend(self.index.pairs_of(peer).map(|(_, n)| n));
            }
            let subjects: BTreeSet<Identity> = subjects
                .into_iter()
                .filter(|s| !up.removed_subjects.contains(s))
                .collect();
            self.recompile_peer_slice(
                &subjects,
                alive.then_some(peer),
                &clear,
                &mut up.policy,
                &mut up.full,
            );
        }
    }

    fn apply_policy(&mut self, change: &Change, slot: PolicySlot) -> StateDiff {
        self.cluster.apply(change);
        self.refresh_slots(&[slot], Vec::new())
    }

    fn refresh_slots(&mut self, slots: &[PolicySlot], services: Vec<ObjectKey>) -> StateDiff {
        let old_descriptions: BTreeMap<Cookie, RuleDescription> = slots
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
        let mut names = Tracker::new();
        for slot in slots {
            affected.extend(self.index.remove_slot(slot));
            affected.extend(self.index.add_slot(slot, &self.ruleset));
        }
        let descriptions: BTreeMap<Cookie, RuleDescription> = slots
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
        let affected: BTreeSet<Identity> = affected
            .into_iter()
            .filter(|s| self.index.identities.contains_key(s))
            .collect();
        self.recompile_subjects(&affected, &mut policy, &mut endpoints);
        for k in services {
            let id = self.store.service_id(k.clone()).map(ServiceId::get);
            let mut vips: BTreeSet<ServiceVip> = self
                .state
                .services
                .iter()
                .filter(|(_, e)| Some(e.service_id) == id)
                .map(|(v, _)| *v)
                .collect();
            vips.extend(self.service_entries(&k).into_iter().map(|(v, _)| v));
            // The Services whose VIPs change hands (this one, and any other that owned or now
            // owns one of its VIPs): each keeps its name while it owns a VIP.
            let mut owners: BTreeMap<ServiceId, ObjectKey> = BTreeMap::new();
            if let Some(id) = id {
                owners.insert(ServiceId::new(id), k.clone());
            }
            for v in vips {
                if let Some(old) = self.state.services.get(&v)
                    && let Some(name) = self
                        .state
                        .service_names
                        .get(&ServiceId::new(old.service_id))
                {
                    owners.insert(ServiceId::new(old.service_id), name.clone());
                }
                let e = self.service_vip_entry(&v).map(|(owner, e)| {
                    owners.insert(ServiceId::new(e.service_id), owner);
                    e
                });
                svc.set(&mut self.state.services, v, e);
            }
            for (id, name) in owners {
                let owns = self
                    .state
                    .services
                    .values()
                    .any(|e| e.service_id == id.get());
                names.set(&mut self.state.service_names, id, owns.then_some(name));
            }
        }
        StateDiff {
            ipcache: Default::default(),
            policy: policy.finish(&self.state.policy),
            endpoints: endpoints.finish(&self.state.endpoints),
            services: svc.finish(&self.state.services),
            rules: rules.finish(&self.state.rules),
            identities: Default::default(),
            service_names: names.finish(&self.state.service_names),
            pod_addresses: Default::default(),
        }
    }

    fn apply_service(&mut self, change: &Change, key: ObjectKey) -> StateDiff {
        self.cluster.apply(change);
        let slots = self.slots_naming(std::slice::from_ref(&key));
        self.refresh_slots(&slots, vec![key])
    }

    /// A slice changes the backends of the Service it named before and of the one it names now
    /// (its label may move it); only FlowPolicies naming those read slices. VIPs stay.
    fn apply_endpoint_slice(
        &mut self,
        change: &Change,
        key: ObjectKey,
        new: Option<&EndpointSlice>,
    ) -> StateDiff {
        let old = self.cluster.endpoint_slices.get(&key);
        if old == new {
            return StateDiff::default();
        }
        let mut services: Vec<ObjectKey> = old
            .and_then(|s| s.manual_service())
            .into_iter()
            .chain(new.and_then(|s| s.manual_service()))
            .collect();
        services.dedup();
        self.cluster.apply(change);
        let slots = self.slots_naming(&services);
        self.refresh_slots(&slots, Vec::new())
    }

    /// The FlowPolicies that name any of `services` (as subject or peer).
    fn slots_naming(&self, services: &[ObjectKey]) -> Vec<PolicySlot> {
        self.cluster
            .flow_policies
            .iter()
            .filter(|(_, fp)| {
                services
                    .iter()
                    .any(|s| crate::rules::references_service(fp, s))
            })
            .map(|(k, _)| PolicySlot::Flow(k.clone()))
            .collect()
    }
}
