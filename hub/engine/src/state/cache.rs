//! The per-shard write-behind cache of plugin state.
//!
//! Reads hit the cache first (misses, including "no such key", are cached too); writes only mark
//! an entry dirty and remember its key. [`StateCache::take_commit`] turns the dirty entries into
//! one sled batch per plugin tree for the committer, without scanning clean entries. Only the
//! shard thread touches its cache, so there are no locks.
//!
//! A key is allocated once, when it enters the cache, and shared with the dirty list; a lookup
//! hashes the key once and allocates nothing (hashbrown's `entry_ref`).

use super::keys;
use crate::quota::{self, Quotas};
use hashbrown::hash_map::EntryRef;
use rustc_hash::FxBuildHasher;
use std::sync::Arc;

/// Slot (2 bytes BE) ‖ actor ‖ user key, i.e. the sled key behind a slot prefix.
type Key = Arc<[u8]>;

/// A plugin's index in a shard's cache (one sled tree each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PluginSlot(pub u16);

impl PluginSlot {
    /// The slot of throw-away instances used to validate a module; they never touch state.
    pub const PROBE: PluginSlot = PluginSlot(u16::MAX);
}

struct Entry {
    value: Option<Vec<u8>>,
    dirty: bool,
    /// The commit that carried the current value to the committer (0: read from sled).
    commit: u64,
}

pub struct StateCache {
    trees: Vec<sled::Tree>,
    entries: hashbrown::HashMap<Key, Entry, FxBuildHasher>,
    dirty: Vec<Key>,
    capacity: usize,
    key: Vec<u8>,
    /// Where the stored bytes of tenants with a quota are counted.
    quotas: Arc<Quotas>,
}

impl StateCache {
    pub fn new(capacity: usize) -> StateCache {
        StateCache {
            trees: Vec::new(),
            entries: hashbrown::HashMap::default(),
            dirty: Vec::new(),
            capacity,
            key: Vec::with_capacity(128),
            quotas: Arc::default(),
        }
    }

    /// Count the writes of tenants with a quota on stored state in `quotas`.
    pub fn counting(mut self, quotas: Arc<Quotas>) -> StateCache {
        self.quotas = quotas;
        self
    }

    /// The quotas this cache counts writes in.
    pub fn quotas(&self) -> &Arc<Quotas> {
        &self.quotas
    }

    /// Register a plugin's state tree; the returned slot addresses it.
    pub fn add_plugin(&mut self, tree: sled::Tree) -> PluginSlot {
        self.trees.push(tree);
        PluginSlot((self.trees.len() - 1) as u16)
    }

    fn build_key(&mut self, slot: PluginSlot, actor: &str, key: &str) {
        self.key.clear();
        self.key.extend_from_slice(&slot.0.to_be_bytes());
        keys::state_key(&mut self.key, actor, key);
    }

    pub fn get(&mut self, slot: PluginSlot, actor: &str, key: &str) -> Result<Option<&[u8]>, sled::Error> {
        self.build_key(slot, actor, key);
        let entry = match self.entries.entry_ref(self.key.as_slice()) {
            EntryRef::Occupied(e) => e.into_mut(),
            EntryRef::Vacant(e) => {
                let tree = self
                    .trees
                    .get(usize::from(slot.0))
                    .ok_or(sled::Error::Unsupported("unknown plugin slot".into()))?;
                let value = tree.get(&self.key[2..])?.map(|v| v.to_vec());
                e.insert(Entry {
                    value,
                    dirty: false,
                    commit: 0,
                })
            }
        };
        Ok(entry.value.as_deref())
    }

    /// Set (`Some`) or delete (`None`) a key.
    pub fn set(&mut self, slot: PluginSlot, actor: &str, key: &str, value: Option<Vec<u8>>) {
        if let Some(usage) = self.quotas.of(actor).cloned() {
            // The old value is read (and so cached) first, to count the difference.
            let old = match self.get(slot, actor, key) {
                Ok(old) => old.map(<[u8]>::len),
                Err(e) => {
                    tracing::warn!(error = %e, "state read failed; the quota counts the key as new");
                    None
                }
            };
            let new = value.as_ref().map(Vec::len);
            usage
                .add_state_bytes(quota::state_entry_bytes(actor, key, new) - quota::state_entry_bytes(actor, key, old));
        }
        self.build_key(slot, actor, key);
        match self.entries.entry_ref(self.key.as_slice()) {
            EntryRef::Occupied(mut e) => {
                if !e.get().dirty {
                    self.dirty.push(Arc::clone(e.key()));
                }
                let entry = e.get_mut();
                entry.dirty = true;
                entry.value = value;
            }
            EntryRef::Vacant(e) => {
                let key = Key::from(self.key.as_slice());
                self.dirty.push(Arc::clone(&key));
                e.insert_with_key(
                    key,
                    Entry {
                        value,
                        dirty: true,
                        commit: 0,
                    },
                );
            }
        }
    }

    /// Every state key of `actor` in plugin tree `slot` with its value as the plugin sees it
    /// (newer cached values over sled's). The cache is scanned whole, not just its dirty keys: a
    /// value committed but not yet applied is in neither sled nor the dirty list. For inspection
    /// and erasure, not the hot path.
    pub fn actor_entries(&mut self, slot: PluginSlot, actor: &str) -> Result<Vec<(String, Vec<u8>)>, sled::Error> {
        let mut prefix = slot.0.to_be_bytes().to_vec();
        keys::push_actor(&mut prefix, actor);
        let mut user_keys = std::collections::BTreeSet::new();
        if let Some(tree) = self.trees.get(usize::from(slot.0)) {
            for key in tree.scan_prefix(&prefix[2..]).keys() {
                user_keys.insert(String::from_utf8_lossy(&key?[prefix.len() - 2..]).into_owned());
            }
        }
        for key in self.entries.keys().filter(|k| k.starts_with(&prefix)) {
            user_keys.insert(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        }
        let mut entries = Vec::with_capacity(user_keys.len());
        for key in user_keys {
            if let Some(value) = self.get(slot, actor, &key)? {
                entries.push((key, value.to_vec()));
            }
        }
        Ok(entries)
    }

    /// The actors of the cached entries whose key starts with `prefix` (a tenant's), written
    /// or not yet committed.
    pub fn actors_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> {
        self.entries
            .iter()
            .filter(|(_, entry)| entry.value.is_some())
            .filter_map(|(key, _)| keys::state_actor(key.get(2..)?))
            .filter(move |a| a.starts_with(prefix))
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    /// The dirty entries as changes of their actors' partitions, for a cluster's changelog (call
    /// before [`StateCache::take_commit`]).
    pub fn log_changes(&self, cluster: &crate::cluster::Cluster, out: &mut Vec<crate::cluster::changelog::Change>) {
        if self.dirty.is_empty() {
            return;
        }
        let names: Vec<Arc<str>> = self
            .trees
            .iter()
            .map(|t| String::from_utf8_lossy(&t.name()).into())
            .collect();
        for key in &self.dirty {
            let Some(entry) = self.entries.get(&**key) else {
                continue;
            };
            let slot = usize::from(u16::from_be_bytes([key[0], key[1]]));
            let (Some(tree), Some(actor)) = (names.get(slot), keys::state_actor(&key[2..])) else {
                continue;
            };
            out.push(crate::cluster::changelog::Change {
                partition: cluster.partition_of(actor),
                tree: tree.clone(),
                key: key[2..].to_vec(),
                value: entry.value.clone(),
            });
        }
    }

    /// Drop every entry of the actors `of` picks, dirty or not: their partition's state was
    /// restored into sled from the changelog, and is read from there again.
    pub fn forget(&mut self, of: impl Fn(&str) -> bool) {
        self.entries
            .retain(|key, _| !keys::state_actor(&key[2..]).is_some_and(&of));
        let entries = &self.entries;
        self.dirty.retain(|key| entries.contains_key(&**key));
    }

    /// The dirty entries as one sled batch per plugin tree, marked clean as of commit `seq`.
    pub fn take_commit(&mut self, seq: u64) -> Vec<(sled::Tree, sled::Batch)> {
        if self.dirty.is_empty() {
            return Vec::new();
        }
        let mut batches: Vec<Option<sled::Batch>> = (0..self.trees.len()).map(|_| None).collect();
        for key in self.dirty.drain(..) {
            let Some(entry) = self.entries.get_mut(&*key) else {
                continue;
            };
            entry.dirty = false;
            entry.commit = seq;
            let slot = usize::from(u16::from_be_bytes([key[0], key[1]]));
            if let Some(batch) = batches.get_mut(slot) {
                let batch = batch.get_or_insert_with(sled::Batch::default);
                match &entry.value {
                    Some(v) => batch.insert(&key[2..], v.as_slice()),
                    None => batch.remove(&key[2..]),
                }
            }
        }
        self.trees
            .iter()
            .zip(batches)
            .filter_map(|(tree, batch)| Some((tree.clone(), batch?)))
            .collect()
    }

    /// When over capacity, drop the clean entries whose values sled already holds (their commit
    /// is applied), so a later miss cannot read an older value from sled.
    pub fn evict(&mut self, applied: u64) {
        if self.entries.len() > self.capacity {
            self.entries.retain(|_, e| e.dirty || e.commit > applied);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(batches: Vec<(sled::Tree, sled::Batch)>) {
        for (tree, batch) in batches {
            tree.apply_batch(batch).expect("apply");
        }
    }

    #[test]
    fn writes_reach_sled_only_through_a_commit() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("state/p").expect("tree");
        let mut cache = StateCache::new(10);
        let slot = cache.add_plugin(tree.clone());
        cache.set(slot, "u1", "k", Some(b"v1".to_vec()));
        cache.set(slot, "u1", "k", Some(b"v2".to_vec()));
        assert_eq!(cache.dirty_count(), 1, "writes to one key coalesce");
        assert_eq!(cache.get(slot, "u1", "k").expect("get"), Some(&b"v2"[..]));
        assert!(tree.is_empty());
        apply(cache.take_commit(1));
        let mut key = Vec::new();
        keys::state_key(&mut key, "u1", "k");
        assert_eq!(tree.get(&key).expect("get").as_deref(), Some(&b"v2"[..]));

        cache.set(slot, "u1", "k", None);
        apply(cache.take_commit(2));
        assert!(tree.get(&key).expect("get").is_none());
        assert!(cache.take_commit(3).is_empty());
    }

    #[test]
    fn actor_entries_include_values_committed_but_not_yet_applied() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let mut cache = StateCache::new(10);
        let slot = cache.add_plugin(db.open_tree("state/p").expect("tree"));
        cache.set(slot, "bob", "k", Some(b"v".to_vec()));
        let _pending = cache.take_commit(1);
        assert_eq!(
            cache.actor_entries(slot, "bob").expect("entries"),
            [("k".to_owned(), b"v".to_vec())],
            "an erase must see it too"
        );
    }

    proptest::proptest! {
        /// Whatever the writes, commits and evictions, a tenant's counted bytes are those of
        /// its live entries, and a count of sled once all is committed finds the same.
        #[test]
        fn a_tenants_stored_bytes_follow_every_write(
            ops in proptest::collection::vec((0u8..3, 0u8..3, proptest::option::of(0usize..20), 0u8..4), 0..60),
        ) {
            let db = sled::Config::new().temporary(true).open().expect("sled");
            let quotas = Arc::new(crate::quota::tests::quotas(Some(1000), None));
            let mut cache = StateCache::new(2).counting(quotas.clone());
            let slot = cache.add_plugin(db.open_tree("state/p").expect("tree"));
            let mut model = std::collections::BTreeMap::new();
            let mut seq = 0;
            for (actor, key, value, then) in ops {
                let actor = ["capped\u{1f}a1", "capped\u{1f}a2", "free\u{1f}a1"][usize::from(actor)];
                let key = format!("k{key}");
                let value = value.map(|len| vec![7u8; len]);
                match &value {
                    Some(v) => model.insert((actor, key.clone()), v.len()),
                    None => model.remove(&(actor, key.clone())),
                };
                cache.set(slot, actor, &key, value);
                if then == 0 {
                    seq += 1;
                    apply(cache.take_commit(seq));
                    cache.evict(seq);
                }
            }
            let expected: i64 = model
                .iter()
                .filter(|((actor, _), _)| actor.starts_with("capped"))
                .map(|((actor, key), len)| crate::quota::state_entry_bytes(actor, key, Some(*len)))
                .sum();
            let usage = quotas.of("capped\u{1f}a1").expect("counted");
            proptest::prop_assert_eq!(usage.state_bytes(), expected);
            apply(cache.take_commit(seq + 1));
            let recounted = crate::quota::tests::quotas(Some(1000), None);
            recounted.count_stored(&db).expect("count");
            proptest::prop_assert_eq!(recounted.of("capped\u{1f}a1").expect("counted").state_bytes(), expected);
        }
    }

    #[test]
    fn misses_read_through_and_eviction_waits_for_the_committer() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("state/p").expect("tree");
        let mut key = Vec::new();
        keys::state_key(&mut key, "u2", "k");
        tree.insert(&key, b"old".as_slice()).expect("insert");
        let mut cache = StateCache::new(0);
        let slot = cache.add_plugin(tree);
        assert_eq!(cache.get(slot, "u2", "k").expect("get"), Some(&b"old"[..]));
        assert_eq!(cache.get(slot, "u3", "k").expect("get"), None);
        cache.set(slot, "u4", "k", Some(b"new".to_vec()));
        let pending = cache.take_commit(1);
        cache.evict(0);
        // Commit 1 is not applied yet: u4's value must still come from the cache.
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get(slot, "u4", "k").expect("get"), Some(&b"new"[..]));
        apply(pending);
        cache.evict(1);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get(slot, "u4", "k").expect("get"), Some(&b"new"[..]));
    }
}
