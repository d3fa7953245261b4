//! The one map diff of septum: the writes that turn a map's contents into the desired contents,
//! used by the policy compiler (its incremental output), the loader (`sync`) and the agent.
//!
//! # Apply order
//!
//! **Upserts before deletes.** Every intermediate state then holds every key that both the old
//! and the new contents hold, with one of their two values: a key being replaced is never
//! missing, so the broader entry behind it (an allow of a whole protocol behind a deny of one
//! port, say) never decides in its place. Deleting first opens exactly that hole. Across maps,
//! writers also upsert the entries an endpoint refers to before the endpoint, and delete the
//! endpoint before them (see the agent's reconcile module).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Upserts and deletes for one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Entries to write (first).
    pub upserts: Vec<(K, V)>,
    /// Keys to remove (after the upserts).
    pub deletes: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> MapDiff<K, V> {
    /// The minimal diff turning `old` into `new`.
    pub fn between(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Self {
        let upserts = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let deletes = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        Self { upserts, deletes }
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }

    /// Applies the diff to an in-memory map, in the documented order.
    pub fn apply_to(&self, map: &mut BTreeMap<K, V>) {
        for (k, v) in &self.upserts {
            map.insert(k.clone(), v.clone());
        }
        for k in &self.deletes {
            map.remove(k);
        }
    }
}
