//! The full compile: the index and every output map rebuilt from the model (the first compile,
//! and changes to namespaces, nodes or the set of policy prefixes).

use std::collections::BTreeMap;
use std::net::IpAddr;

use septum_datapath_common::{IPCACHE_KIND_WORLD, Identity, IpCacheEntry, ServiceId};

use super::index::Index;
use super::maps::{cidr_entry, world_prefixes};
use super::{Engine, IdentityInfo};
use crate::allocation::AllocationStore;
use crate::cidr::Cidr;
use crate::identity::IdentityKey;
use crate::model::ObjectKey;
use crate::rules::{PolicySlot, RuleSet};
use crate::state::{ClusterState, StateDiff};

impl<S: AllocationStore> Engine<S> {
    pub(super) fn identity_of_pod(&mut self, pod: &crate::model::Pod) -> Identity {
        self.store.allocate_identity(IdentityKey::of_pod(pod))
    }

    /// Rebuilds everything from the model; returns the diff from the previous state.
    pub(super) fn rebuild(&mut self) -> StateDiff {
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
            let n = self.store.allocate_identity(key.clone());
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
            let n = self.store.allocate_cidr(*c);
            ix.class_ids.insert(*c, n);
        }
        // Pairs in sorted order.
        let mut pairs: BTreeMap<(Identity, Cidr), usize> = BTreeMap::new();
        for (ip, owners) in &ix.ip_owners {
            for o in owners {
                if let (Some(c), Some(id)) = (ix.class_of(*ip), ix.pod_identity.get(o)) {
                    *pairs.entry((*id, c)).or_default() += 1;
                }
            }
        }
        for ((id, c), count) in pairs {
            let n = self.store.allocate_pod_in_cidr(id, c);
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
        for (ip, owners) in &self.index.ip_owners {
            if let Some(o) = owners.iter().next() {
                st.pod_addresses.insert(*ip, o.clone());
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
                identity: Identity::WORLD.get(),
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
                if let std::collections::btree_map::Entry::Vacant(v) = st.services.entry(vip) {
                    v.insert(e);
                    st.service_names
                        .insert(ServiceId::new(e.service_id), k.clone());
                }
            }
        }
        st.rules = self.ruleset.descriptions();
        st.identities = self.identity_table();
        self.state = st;
        StateDiff::between(&old, &self.state)
    }
}
