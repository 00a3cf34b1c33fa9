//! Durable timers of one shard: an in-memory wheel ordered by due time, its changes written
//! behind to the shard's part of the timer log ([`TimerLog`]) once per commit, like state.
//!
//! At start every pending timer is read back from sled and handed to the shard that owns its
//! actor, so the next due timer is always the first entry of an ordered map, and timers survive
//! restarts (including ones that came due while the hub was down: they fire at start).

use super::keys;
use super::timer_log::TimerLog;
use crate::quota::Quotas;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A timer that came due, taken off the wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    /// Whose timer it is: a plugin's name, or the arbiter's name for the timers that release
    /// held actions (`arbiter::HELD_ACTIONS`, which names no plugin: plugin names have no dots).
    pub owner: String,
    pub actor: String,
    pub id: String,
    pub due: i64,
    pub payload: Vec<u8>,
}

impl DueTimer {
    /// What the outputs of its call derive their ids from, as an event's id for an event's
    /// outputs: the same timer gives the same ids, whoever runs it (the hub, or an offline run).
    pub fn cause_id(&self) -> String {
        format!("timer:{}:{}:{}:{}", self.owner, self.actor, self.id, self.due)
    }
}

/// A timer key (see [`keys::timer_key`]), allocated once and shared by the wheel's maps.
type Key = Arc<[u8]>;

pub struct TimerWheel {
    log: TimerLog,
    /// (due, key): the firing order.
    queue: BTreeSet<(i64, Key)>,
    /// key → (due, payload), to replace or cancel a timer by id.
    timers: FxHashMap<Key, (i64, Vec<u8>)>,
    /// Keys changed since the last commit.
    dirty: FxHashSet<Key>,
    key: Vec<u8>,
    /// Where the pending timers of tenants with a quota on them are counted.
    quotas: Arc<Quotas>,
}

impl TimerWheel {
    pub fn new(log: TimerLog) -> TimerWheel {
        TimerWheel {
            log,
            queue: BTreeSet::new(),
            timers: FxHashMap::default(),
            dirty: FxHashSet::default(),
            key: Vec::with_capacity(128),
            quotas: Arc::default(),
        }
    }

    /// Count the pending timers of tenants with a quota on them in `quotas`, from those the
    /// wheel holds now on.
    pub fn counting(mut self, quotas: Arc<Quotas>) -> TimerWheel {
        self.quotas = quotas;
        if !self.quotas.is_empty() {
            for key in self.timers.keys() {
                self.count(key, 1);
            }
        }
        self
    }

    /// A timer of `key` was added (1) or removed (-1).
    fn count(&self, key: &[u8], delta: i64) {
        if self.quotas.is_empty() {
            return;
        }
        if let Some(usage) = keys::timer_actor(key).and_then(|actor| self.quotas.of(actor)) {
            usage.add_timers(delta);
        }
    }

    /// Put back a timer read from sled at start (not dirty).
    pub fn restore(&mut self, key: Key, due: i64, payload: Vec<u8>) {
        self.queue.insert((due, key.clone()));
        match self.timers.insert(key.clone(), (due, payload)) {
            Some((old_due, _)) if old_due != due => {
                self.queue.remove(&(old_due, key));
            }
            Some(_) => {}
            None => self.count(&key, 1),
        }
    }

    /// Whether a timer `id` of `owner` for `actor` is pending.
    pub fn contains(&mut self, owner: &str, actor: &str, id: &str) -> bool {
        self.key.clear();
        keys::timer_key(&mut self.key, owner, actor, id);
        self.timers.contains_key(self.key.as_slice())
    }

    pub fn set(&mut self, owner: &str, actor: &str, id: &str, due: i64, payload: Vec<u8>) {
        self.key.clear();
        keys::timer_key(&mut self.key, owner, actor, id);
        let key = match self.timers.get_key_value(self.key.as_slice()) {
            Some((key, (old_due, _))) => {
                let key = key.clone();
                self.queue.remove(&(*old_due, key.clone()));
                key
            }
            None => {
                let key = Key::from(self.key.as_slice());
                self.count(&key, 1);
                key
            }
        };
        self.queue.insert((due, key.clone()));
        self.dirty.insert(key.clone());
        self.timers.insert(key, (due, payload));
    }

    pub fn cancel(&mut self, owner: &str, actor: &str, id: &str) {
        self.key.clear();
        keys::timer_key(&mut self.key, owner, actor, id);
        if let Some((key, (due, _))) = self.timers.remove_entry(self.key.as_slice()) {
            self.queue.remove(&(due, key.clone()));
            self.count(&key, -1);
            self.dirty.insert(key);
        }
    }

    /// Cancel every timer of `actor`, and have the next commit rewrite this shard's log so that
    /// no older record keeps their payloads (a privacy erasure). Returns how many there were.
    pub fn erase_actor(&mut self, actor: &str) -> usize {
        let timers = self.of_actor(actor);
        for t in &timers {
            self.cancel(&t.owner, actor, &t.id);
        }
        if !timers.is_empty() {
            self.log.request_snapshot();
        }
        timers.len()
    }

    /// The actors with a pending timer whose key starts with `prefix` (a tenant's).
    pub fn actors_with_prefix(&self, prefix: &str) -> impl Iterator<Item = &str> {
        self.timers
            .keys()
            .filter_map(|key| keys::timer_actor(key))
            .filter(move |a| a.starts_with(prefix))
    }

    /// The pending timers of `actor`, by due time. A scan of all pending timers: for inspection
    /// and erasure, not the hot path.
    pub fn of_actor(&self, actor: &str) -> Vec<DueTimer> {
        let mut found: Vec<DueTimer> = self
            .timers
            .iter()
            .filter_map(|(key, (due, payload))| {
                let (owner, a, id) = keys::split_timer_key(key)?;
                (a == actor).then(|| DueTimer {
                    owner: owner.to_owned(),
                    actor: a.to_owned(),
                    id: id.to_owned(),
                    due: *due,
                    payload: payload.clone(),
                })
            })
            .collect();
        found.sort_by_key(|t| t.due);
        found
    }

    /// When the next timer is due, if any.
    pub fn next_due(&self) -> Option<i64> {
        self.queue.first().map(|(due, _)| *due)
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
        let (due, key) = self.queue.pop_first()?;
        let payload = match self.timers.remove(&key) {
            Some((_, payload)) => {
                self.count(&key, -1);
                payload
            }
            None => Vec::new(),
        };
        let timer = keys::split_timer_key(&key).map(|(owner, actor, id)| DueTimer {
            owner: owner.to_owned(),
            actor: actor.to_owned(),
            id: id.to_owned(),
            due,
            payload,
        });
        self.dirty.insert(key);
        timer.or_else(|| self.pop_due(now))
    }

    /// The timers changed since the last commit as changes of their actors' partitions, for a
    /// cluster's changelog (call before [`TimerWheel::take_commit`]).
    pub fn log_changes(&self, cluster: &crate::cluster::Cluster, out: &mut Vec<crate::cluster::changelog::Change>) {
        if self.dirty.is_empty() {
            return;
        }
        let tree: Arc<str> = crate::cluster::changelog::TIMERS.into();
        for key in &self.dirty {
            let Some(actor) = keys::timer_actor(key) else {
                continue;
            };
            out.push(crate::cluster::changelog::Change {
                partition: cluster.partition_of(actor),
                tree: tree.clone(),
                key: key.to_vec(),
                value: self
                    .timers
                    .get(key)
                    .map(|(due, payload)| keys::timer_value(*due, payload)),
            });
        }
    }

    /// Replace the timers of the actors `of` picks with `restored` (a partition's, read back
    /// from the changelog), and rewrite this shard's log at the next commit to match.
    pub fn replace(&mut self, of: impl Fn(&str) -> bool, restored: Vec<(Key, i64, Vec<u8>)>) {
        let gone: Vec<Key> = self
            .timers
            .keys()
            .filter(|key| keys::timer_actor(key).is_some_and(&of))
            .cloned()
            .collect();
        for key in gone {
            if let Some((due, _)) = self.timers.remove(&key) {
                self.queue.remove(&(due, key.clone()));
                self.count(&key, -1);
            }
            self.dirty.remove(&key);
        }
        for (key, due, payload) in restored {
            self.restore(key, due, payload);
        }
        self.log.request_snapshot();
    }

    /// Leave a timer just taken off the wheel pending in sled, unfired: its actor's partition
    /// belongs to another instance now (cluster mode), which fires it.
    pub fn set_aside(&mut self, timer: &DueTimer) {
        self.key.clear();
        keys::timer_key(&mut self.key, &timer.owner, &timer.actor, &timer.id);
        self.dirty.remove(self.key.as_slice());
    }

    /// The timers changed since the last commit, as one batch for the committer: appended to
    /// the log, or, when the log has grown to several times the live timers, a snapshot of them
    /// that replaces this shard's older records.
    pub fn take_commit(&mut self) -> Option<(sled::Tree, sled::Batch)> {
        if self.dirty.is_empty() && !self.log.snapshot_requested() {
            return None;
        }
        let mut batch = sled::Batch::default();
        if self.log.snapshot_due(self.dirty.len(), self.queue.len()) {
            self.dirty.clear();
            let live = self
                .timers
                .iter()
                .map(|(key, (due, payload))| (&key[..], *due, payload.as_slice()));
            self.log.snapshot(&mut batch, live);
        } else {
            let mut writer = self.log.writer(&mut batch);
            for key in self.dirty.drain() {
                match self.timers.get(&key) {
                    Some((due, payload)) => writer.set(&key, *due, payload),
                    None => writer.cancel(&key),
                }
            }
            writer.finish();
        }
        Some((self.log.tree().clone(), batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::timer_log;

    fn wheel() -> (sled::Db, TimerWheel) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let (log, legacy) = trees(&db);
        let (mut logs, _) = timer_log::restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
        (db, TimerWheel::new(logs.remove(0)))
    }

    fn trees(db: &sled::Db) -> (sled::Tree, sled::Tree) {
        (
            db.open_tree("timer-log").expect("tree"),
            db.open_tree("timers").expect("tree"),
        )
    }

    /// What a restart would read back.
    fn restored(db: &sled::Db) -> Vec<timer_log::Restored> {
        let (log, legacy) = trees(db);
        timer_log::restore(db, &log, &legacy, 1, |_| 0)
            .expect("restore")
            .1
            .remove(0)
    }

    fn commit(w: &mut TimerWheel) {
        let (tree, batch) = w.take_commit().expect("changes");
        tree.apply_batch(batch).expect("apply");
    }

    proptest::proptest! {
        /// Whatever sets, cancels, firings and erasures a tenant's timers go through, its
        /// counted timers are those pending; a wheel counting from a restart finds the same.
        #[test]
        fn a_tenants_pending_timers_follow_every_change(
            ops in proptest::collection::vec((0u8..5, 0u8..3, 0u8..3, 0i64..50), 0..60),
        ) {
            let quotas = std::sync::Arc::new(crate::quota::tests::quotas(None, Some(100)));
            let (_db, wheel) = wheel();
            let mut wheel = wheel.counting(quotas.clone());
            let actors = ["capped\u{1f}a1", "capped\u{1f}a2", "free\u{1f}a1"];
            for (op, actor, id, due) in ops {
                let (actor, id) = (actors[usize::from(actor)], format!("t{id}"));
                match op {
                    0 | 1 => wheel.set("p", actor, &id, due, vec![]),
                    2 => wheel.cancel("p", actor, &id),
                    3 => while wheel.pop_due(due).is_some() {},
                    _ => {
                        wheel.erase_actor(actor);
                    }
                }
            }
            let pending = |wheel: &TimerWheel| {
                actors[..2].iter().map(|a| wheel.of_actor(a).len() as i64).sum::<i64>()
            };
            let usage = quotas.of("capped\u{1f}a1").expect("counted");
            proptest::prop_assert_eq!(usage.timers(), pending(&wheel));
            let recounted = std::sync::Arc::new(crate::quota::tests::quotas(None, Some(100)));
            let (_db2, mut restarted) = super::tests::wheel();
            for (key, (due, payload)) in &wheel.timers {
                restarted.restore(key.clone(), *due, payload.clone());
            }
            let restarted = restarted.counting(recounted.clone());
            proptest::prop_assert_eq!(recounted.of("capped\u{1f}a1").expect("counted").timers(), pending(&restarted));
        }
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
    fn commit_persists_sets_cancels_and_fired_timers() {
        let (db, mut w) = wheel();
        w.set("p", "a", "keep", 10, vec![7]);
        w.set("p", "a", "drop", 10, vec![]);
        w.set("p", "a", "fire", 5, vec![]);
        commit(&mut w);
        w.cancel("p", "a", "drop");
        assert_eq!(w.pop_due(5).map(|t| t.id), Some("fire".to_owned()));
        commit(&mut w);
        assert!(w.take_commit().is_none());
        let mut key = Vec::new();
        keys::timer_key(&mut key, "p", "a", "keep");
        assert_eq!(restored(&db), vec![(key.into(), 10, vec![7])]);
    }

    #[test]
    fn the_log_stays_a_small_multiple_of_the_live_timers() {
        let (db, mut w) = wheel();
        for round in 0..120 {
            for actor in 0..1_000 {
                w.set("p", &actor.to_string(), "t", round, vec![0; 40]);
            }
            commit(&mut w);
        }
        let (log, _) = trees(&db);
        let bytes: usize = log.iter().map(|r| r.expect("read").1.len()).sum();
        // 120,000 changes of 1,000 timers: without snapshots the log would hold them all.
        assert!(bytes < 70_000 * 60, "log holds {bytes} bytes");
        let timers = restored(&db);
        assert_eq!(timers.len(), 1_000);
        assert!(timers.iter().all(|(_, due, _)| *due == 119));
    }

    #[test]
    fn erasing_an_actor_leaves_no_record_of_its_timers() {
        let (db, mut w) = wheel();
        w.set("p", "a", "t", 10, b"secret cart".to_vec());
        w.set("p", "b", "t", 10, b"other".to_vec());
        commit(&mut w);
        assert_eq!(w.erase_actor("a"), 1);
        commit(&mut w);
        let (log, _) = trees(&db);
        let leaked = log
            .iter()
            .any(|r| r.expect("read").1.windows(11).any(|w| w == b"secret cart"));
        assert!(!leaked, "an older log record still holds the erased actor's payload");
        assert_eq!(restored(&db).len(), 1);
    }
}
