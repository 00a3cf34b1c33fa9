//! The per-shard write-behind cache of plugin state.
//!
//! Reads hit the cache first (misses, including "no such key", are cached too); writes only mark
//! an entry dirty. [`StateCache::commit`] writes every dirty entry to sled, one batch per plugin
//! tree, and drops clean entries once the cache holds more than its capacity. Only the shard
//! thread touches its cache, so there are no locks.

use super::keys;
use std::collections::HashMap;

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
}

pub struct StateCache {
    trees: Vec<sled::Tree>,
    /// Key: slot (2 bytes BE) ‖ actor ‖ user key, i.e. the sled key behind a slot prefix.
    entries: HashMap<Vec<u8>, Entry>,
    dirty: usize,
    capacity: usize,
    key: Vec<u8>,
}

impl StateCache {
    pub fn new(capacity: usize) -> StateCache {
        StateCache {
            trees: Vec::new(),
            entries: HashMap::new(),
            dirty: 0,
            capacity,
            key: Vec::with_capacity(128),
        }
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
        if !self.entries.contains_key(self.key.as_slice()) {
            let tree = self
                .trees
                .get(usize::from(slot.0))
                .ok_or(sled::Error::Unsupported("unknown plugin slot".into()))?;
            let value = tree.get(&self.key[2..])?.map(|v| v.to_vec());
            self.entries.insert(self.key.clone(), Entry { value, dirty: false });
        }
        Ok(self.entries.get(self.key.as_slice()).and_then(|e| e.value.as_deref()))
    }

    /// Set (`Some`) or delete (`None`) a key.
    pub fn set(&mut self, slot: PluginSlot, actor: &str, key: &str, value: Option<Vec<u8>>) {
        self.build_key(slot, actor, key);
        match self.entries.get_mut(self.key.as_slice()) {
            Some(entry) => {
                if !entry.dirty {
                    self.dirty += 1;
                }
                *entry = Entry { value, dirty: true };
            }
            None => {
                self.dirty += 1;
                self.entries.insert(self.key.clone(), Entry { value, dirty: true });
            }
        }
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty
    }

    /// Write every dirty entry to sled (a batch per tree); returns how many were written.
    pub fn commit(&mut self) -> Result<usize, sled::Error> {
        if self.dirty == 0 {
            return Ok(0);
        }
        let mut batches: Vec<sled::Batch> = (0..self.trees.len()).map(|_| sled::Batch::default()).collect();
        let mut written = 0;
        for (key, entry) in self.entries.iter_mut().filter(|(_, e)| e.dirty) {
            let slot = usize::from(u16::from_be_bytes([key[0], key[1]]));
            if let Some(batch) = batches.get_mut(slot) {
                match &entry.value {
                    Some(v) => batch.insert(&key[2..], v.as_slice()),
                    None => batch.remove(&key[2..]),
                }
                written += 1;
            }
        }
        for (tree, batch) in self.trees.iter().zip(batches) {
            tree.apply_batch(batch)?;
        }
        for entry in self.entries.values_mut() {
            entry.dirty = false;
        }
        self.dirty = 0;
        if self.entries.len() > self.capacity {
            self.entries.clear();
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_reach_sled_only_on_commit() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("state/p").expect("tree");
        let mut cache = StateCache::new(10);
        let slot = cache.add_plugin(tree.clone());
        cache.set(slot, "u1", "k", Some(b"v1".to_vec()));
        cache.set(slot, "u1", "k", Some(b"v2".to_vec()));
        assert_eq!(cache.get(slot, "u1", "k").expect("get"), Some(&b"v2"[..]));
        assert!(tree.is_empty());
        assert_eq!(cache.commit().expect("commit"), 1);
        let mut key = Vec::new();
        keys::state_key(&mut key, "u1", "k");
        assert_eq!(tree.get(&key).expect("get").as_deref(), Some(&b"v2"[..]));

        cache.set(slot, "u1", "k", None);
        cache.commit().expect("commit");
        assert!(tree.get(&key).expect("get").is_none());
    }

    #[test]
    fn misses_read_through_and_capacity_evicts_clean_entries() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("state/p").expect("tree");
        let mut key = Vec::new();
        keys::state_key(&mut key, "u2", "k");
        tree.insert(&key, b"old".as_slice()).expect("insert");
        let mut cache = StateCache::new(1);
        let slot = cache.add_plugin(tree);
        assert_eq!(cache.get(slot, "u2", "k").expect("get"), Some(&b"old"[..]));
        assert_eq!(cache.get(slot, "u3", "k").expect("get"), None);
        cache.set(slot, "u4", "k", Some(b"x".to_vec()));
        cache.commit().expect("commit");
        assert_eq!(cache.get(slot, "u4", "k").expect("get"), Some(&b"x"[..]));
    }
}
