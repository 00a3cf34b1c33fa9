//! Durable timers of one shard: an in-memory wheel ordered by due time, written behind to the
//! `timers` tree like state.
//!
//! At start every pending timer is loaded from sled and handed to the shard that owns its actor,
//! so the next due timer is always the first entry of an ordered map, and timers survive
//! restarts (including ones that came due while the hub was down: they fire at start).

use super::keys;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;

/// A timer that came due, taken off the wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub plugin: String,
    pub actor: String,
    pub id: String,
    pub due: i64,
    pub payload: Vec<u8>,
}

pub struct TimerWheel {
    tree: sled::Tree,
    /// (due, key) → payload: the firing order.
    queue: BTreeMap<(i64, Vec<u8>), Vec<u8>>,
    /// key → due, to replace or cancel a timer by id.
    due_of: FxHashMap<Vec<u8>, i64>,
    /// Keys changed since the last commit.
    dirty: FxHashSet<Vec<u8>>,
    key: Vec<u8>,
}

impl TimerWheel {
    pub fn new(tree: sled::Tree) -> TimerWheel {
        TimerWheel {
            tree,
            queue: BTreeMap::new(),
            due_of: FxHashMap::default(),
            dirty: FxHashSet::default(),
            key: Vec::with_capacity(128),
        }
    }

    /// Put back a timer read from sled at start (not dirty).
    pub fn restore(&mut self, key: Vec<u8>, due: i64, payload: Vec<u8>) {
        self.due_of.insert(key.clone(), due);
        self.queue.insert((due, key), payload);
    }

    pub fn set(&mut self, plugin: &str, actor: &str, id: &str, due: i64, payload: Vec<u8>) {
        self.key.clear();
        keys::timer_key(&mut self.key, plugin, actor, id);
        let old = match self.due_of.get_mut(self.key.as_slice()) {
            Some(d) => Some(std::mem::replace(d, due)),
            None => {
                self.due_of.insert(self.key.clone(), due);
                None
            }
        };
        // The queue's key owns a copy; the old entry's copy moves to the new position.
        let key = match old.and_then(|old| self.queue.remove_entry(&(old, self.key.clone()))) {
            Some(((_, key), _)) => key,
            None => self.key.clone(),
        };
        if !self.dirty.contains(key.as_slice()) {
            self.dirty.insert(key.clone());
        }
        self.queue.insert((due, key), payload);
    }

    pub fn cancel(&mut self, plugin: &str, actor: &str, id: &str) {
        self.key.clear();
        keys::timer_key(&mut self.key, plugin, actor, id);
        if let Some(due) = self.due_of.remove(self.key.as_slice()) {
            let key = self.key.clone();
            self.queue.remove(&(due, key.clone()));
            self.dirty.insert(key);
        }
    }

    /// The pending timers of `actor`, by due time. A scan of all pending timers: for inspection
    /// and erasure, not the hot path.
    pub fn of_actor(&self, actor: &str) -> Vec<DueTimer> {
        let mut found: Vec<DueTimer> = self
            .due_of
            .iter()
            .filter_map(|(key, due)| {
                let (plugin, a, id) = keys::split_timer_key(key)?;
                (a == actor).then(|| DueTimer {
                    plugin: plugin.to_owned(),
                    actor: a.to_owned(),
                    id: id.to_owned(),
                    due: *due,
                    payload: self.queue.get(&(*due, key.clone())).cloned().unwrap_or_default(),
                })
            })
            .collect();
        found.sort_by_key(|t| t.due);
        found
    }

    /// When the next timer is due, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.queue.first_key_value().map(|((due, _), _)| *due)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Take the earliest timer due at or before `now`.
    pub fn pop_due(&mut self, now: i64) -> Option<DueTimer> {
        if self.next_due()? > now {
            return None;
        }
        let ((due, key), payload) = self.queue.pop_first()?;
        self.due_of.remove(&key);
        let timer = keys::split_timer_key(&key).map(|(plugin, actor, id)| DueTimer {
            plugin: plugin.to_owned(),
            actor: actor.to_owned(),
            id: id.to_owned(),
            due,
            payload,
        });
        self.dirty.insert(key);
        timer.or_else(|| self.pop_due(now))
    }

    /// The timers changed since the last commit, as one batch for the committer.
    pub fn take_commit(&mut self) -> Option<(sled::Tree, sled::Batch)> {
        if self.dirty.is_empty() {
            return None;
        }
        let mut batch = sled::Batch::default();
        for key in self.dirty.drain() {
            match self.due_of.get(&key) {
                Some(due) => {
                    let payload = self.queue.get(&(*due, key.clone())).map_or(&[][..], Vec::as_slice);
                    batch.insert(key.as_slice(), keys::timer_value(*due, payload));
                }
                None => batch.remove(key.as_slice()),
            }
        }
        Some((self.tree.clone(), batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel() -> (sled::Db, TimerWheel) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("timers").expect("tree");
        (db, TimerWheel::new(tree))
    }

    #[test]
    fn fires_in_due_order_and_replaces_by_id() {
        let (_db, mut w) = wheel();
        w.set("p", "a", "t1", 30, vec![1]);
        w.set("p", "b", "t1", 10, vec![2]);
        w.set("p", "a", "t1", 20, vec![3]);
        assert_eq!(w.len(), 2);
        assert!(w.pop_due(5).is_none());
        let first = w.pop_due(100).expect("due");
        assert_eq!((first.actor.as_str(), first.due), ("b", 10));
        let second = w.pop_due(100).expect("due");
        assert_eq!((second.actor.as_str(), second.due, second.payload), ("a", 20, vec![3]));
        assert!(w.pop_due(100).is_none());
    }

    #[test]
    fn commit_persists_sets_and_cancels() {
        let (db, mut w) = wheel();
        w.set("p", "a", "keep", 10, vec![7]);
        w.set("p", "a", "drop", 10, vec![]);
        let (tree, batch) = w.take_commit().expect("changes");
        tree.apply_batch(batch).expect("apply");
        w.cancel("p", "a", "drop");
        let (tree, batch) = w.take_commit().expect("changes");
        tree.apply_batch(batch).expect("apply");
        assert!(w.take_commit().is_none());
        let tree = db.open_tree("timers").expect("tree");
        assert_eq!(tree.len(), 1);
        let (k, v) = tree.iter().next().expect("one").expect("read");
        assert_eq!(keys::split_timer_key(&k), Some(("p", "a", "keep")));
        assert_eq!(keys::split_timer_value(&v), Some((10, &[7u8][..])));
    }
}
