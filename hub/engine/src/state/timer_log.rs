//! How pending timers are kept durable: as a log of changes in sled, not as one sled key each.
//!
//! Every pending timer lives in memory anyway (each shard's [`super::TimerWheel`] holds them all,
//! in due order), so sled is read only once, at start. Writing each changed timer as its own key
//! made timers the largest share of sled's work under load (a cart update re-arms its timer:
//! one random B-tree insert each, ~40 % of all sled time in `hub bench`). Instead each shard
//! appends its changes of one commit interval as a few records of ~4 KB, and once the changes
//! since its last snapshot outnumber twice its live timers, it writes a fresh snapshot of the
//! live timers and drops its older records, in one atomic batch.
//!
//! Record key: `shard: u16 BE ‖ seq: u64 BE`. Record value: entries, each
//! `[1: set][key_len: u32 LE][key][due: i64 LE][payload_len: u32 LE][payload]` or
//! `[0: cancel][key_len: u32 LE][key]`, where key is the timer key of [`super::keys`].
//!
//! Replaying every record in key order gives the live timers: the records of one shard are in
//! seq order, and a timer key belongs to one shard only (a start with another shard count
//! rewrites the whole log for the new one, see [`restore`]).
//!
//! The op byte is each entry's format tag: an entry laid out differently must take a new op
//! value, never reuse 0 or 1, so that a version that does not know it refuses the record instead
//! of misreading it. A record that cannot be read (cut short, an unknown op, a timer key that
//! names no actor) is kept aside (see [`super::unreadable`]) before the log is rewritten.

use super::{keys, unreadable};
use rustc_hash::FxHashMap;
use std::sync::Arc;

use crate::limits::{
    MIN_TIMER_CHANGES_BEFORE_SNAPSHOT as MIN_CHANGES_BEFORE_SNAPSHOT, TIMER_RECORD_BYTES as RECORD_BYTES,
};

const SET: u8 = 1;
const CANCEL: u8 = 0;

/// One shard's part of the log.
pub struct TimerLog {
    tree: sled::Tree,
    shard: u16,
    /// Oldest record of this shard still in the log.
    first_seq: u64,
    /// Seq of the next record.
    next_seq: u64,
    /// Entries appended since the last snapshot.
    since_snapshot: usize,
    /// Snapshot at the next commit whatever the log's size (after an actor is erased, so no
    /// older record still holds its timers' payloads).
    snapshot_requested: bool,
}

impl TimerLog {
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Whether the next commit should be a snapshot rather than an append.
    pub fn snapshot_due(&self, changes: usize, live: usize) -> bool {
        self.snapshot_requested || self.since_snapshot + changes > MIN_CHANGES_BEFORE_SNAPSHOT.max(2 * live)
    }

    pub fn snapshot_requested(&self) -> bool {
        self.snapshot_requested
    }

    pub fn request_snapshot(&mut self) {
        self.snapshot_requested = true;
    }

    /// Start appending records to `batch`.
    pub fn writer<'a>(&'a mut self, batch: &'a mut sled::Batch) -> RecordWriter<'a> {
        RecordWriter {
            log: self,
            batch,
            buf: Vec::with_capacity(RECORD_BYTES + 256),
        }
    }

    /// Write every live timer as fresh records and drop this shard's older ones: `batch` must
    /// then be applied atomically (sled applies a batch all or nothing).
    pub fn snapshot<'t>(&mut self, batch: &mut sled::Batch, live: impl Iterator<Item = (&'t [u8], i64, &'t [u8])>) {
        let (first, end) = (self.first_seq, self.next_seq);
        let mut writer = self.writer(batch);
        let mut timers = 0;
        for (key, due, payload) in live {
            writer.set(key, due, payload);
            timers += 1;
        }
        writer.finish();
        tracing::debug!(
            shard = self.shard,
            timers,
            replaced_records = end - first,
            "timer log snapshot"
        );
        for seq in first..end {
            batch.remove(&record_key(self.shard, seq)[..]);
        }
        self.first_seq = end;
        self.since_snapshot = 0;
        self.snapshot_requested = false;
    }
}

/// Appends entries to a batch, cutting records at [`RECORD_BYTES`]; call [`RecordWriter::finish`].
pub struct RecordWriter<'a> {
    log: &'a mut TimerLog,
    batch: &'a mut sled::Batch,
    buf: Vec<u8>,
}

impl RecordWriter<'_> {
    pub fn set(&mut self, key: &[u8], due: i64, payload: &[u8]) {
        push_entry(&mut self.buf, key, Some((due, payload)));
        self.entry_done();
    }

    pub fn cancel(&mut self, key: &[u8]) {
        push_entry(&mut self.buf, key, None);
        self.entry_done();
    }

    fn entry_done(&mut self) {
        self.log.since_snapshot += 1;
        if self.buf.len() >= RECORD_BYTES {
            self.flush_record();
        }
    }

    fn flush_record(&mut self) {
        let key = record_key(self.log.shard, self.log.next_seq);
        self.log.next_seq += 1;
        self.batch.insert(&key[..], self.buf.as_slice());
        self.buf.clear();
    }

    pub fn finish(mut self) {
        if !self.buf.is_empty() {
            self.flush_record();
        }
    }
}

fn record_key(shard: u16, seq: u64) -> [u8; 10] {
    let mut key = [0u8; 10];
    key[..2].copy_from_slice(&shard.to_be_bytes());
    key[2..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn push_entry(buf: &mut Vec<u8>, key: &[u8], timer: Option<(i64, &[u8])>) {
    buf.push(if timer.is_some() { SET } else { CANCEL });
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(key);
    if let Some((due, payload)) = timer {
        buf.extend_from_slice(&due.to_le_bytes());
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(payload);
    }
}

/// One decoded entry: a timer key and its due time and payload, or `None` when cancelled.
type Entry<'a> = (&'a [u8], Option<(i64, &'a [u8])>);

/// The entries of one record, or `None` if it is cut short.
fn decode_record(mut rec: &[u8]) -> Option<Vec<Entry<'_>>> {
    fn take<'a>(rec: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = rec.split_at_checked(n)?;
        *rec = rest;
        Some(head)
    }
    fn len(rec: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(rec, 4)?.try_into().ok()?) as usize)
    }
    let mut entries = Vec::new();
    while let Some((&op, rest)) = rec.split_first() {
        rec = rest;
        let key_len = len(&mut rec)?;
        let key = take(&mut rec, key_len)?;
        let timer = match op {
            SET => {
                let due = i64::from_le_bytes(take(&mut rec, 8)?.try_into().ok()?);
                let payload_len = len(&mut rec)?;
                Some((due, take(&mut rec, payload_len)?))
            }
            CANCEL => None,
            _ => return None,
        };
        entries.push((key, timer));
    }
    Some(entries)
}

/// A pending timer read back at start: key (in the one allocation the wheel keeps), due time,
/// payload.
pub type Restored = (Arc<[u8]>, i64, Vec<u8>);

/// Names of the trees, as records kept aside name them.
const LOG_TREE: &str = "timer-log";
const LEGACY_TREE: &str = "timers";

/// Read every pending timer (from the log, and from `legacy`, the one-key-per-timer tree of
/// earlier versions). Returns one log per shard of `shards` and the timers, each with the shard
/// that owns it.
///
/// When every record is readable and already belongs to the shard that owns its timers, the log
/// is kept as it is: each shard's next snapshot replaces its records. Otherwise (another shard
/// count, legacy timers, an unreadable record) the log is rewritten as one snapshot per shard and
/// `legacy` emptied. Rewriting at every start grew sled's files by the whole log each time
/// (1.2 GB after five restarts with 600k timers): sled reclaims the space of removed records
/// only slowly. The rewrite drops every old record, so one that cannot be read is first kept
/// aside in `db` (the database of both trees) with its sled key, rather than lost with only a
/// log line.
pub fn restore(
    db: &sled::Db,
    log: &sled::Tree,
    legacy: &sled::Tree,
    shards: usize,
    shard_of: impl Fn(&str) -> usize,
) -> Result<(Vec<TimerLog>, Vec<Vec<Restored>>), sled::Error> {
    let mut live: FxHashMap<Arc<[u8]>, (i64, Vec<u8>)> = FxHashMap::default();
    for entry in legacy.iter() {
        let (key, value) = entry?;
        match keys::split_timer_value(&value) {
            Some((due, payload)) if keys::timer_actor(&key).is_some() => {
                live.insert(Arc::from(&key[..]), (due, payload.to_vec()));
            }
            Some(_) => unreadable::keep_aside(db, LEGACY_TREE, &key, &value, &"a timer key that names no actor"),
            None => unreadable::keep_aside(
                db,
                LEGACY_TREE,
                &key,
                &value,
                &"a timer value shorter than its due time",
            ),
        }
    }
    let mut batch = sled::Batch::default();
    let mut next_seq = 0;
    // Per shard: its oldest record and the entries in its records, while the log can be kept.
    let mut kept: Option<Vec<(Option<u64>, usize)>> = legacy.is_empty().then(|| vec![(None, 0); shards]);
    for record in log.iter() {
        let (key, value) = record?;
        batch.remove(key.clone());
        let (record_shard, seq) = match (key.get(..2), key.get(2..)) {
            (Some(shard), Some(seq)) if seq.len() == 8 => (
                usize::from(u16::from_be_bytes([shard[0], shard[1]])),
                u64::from_be_bytes(<[u8; 8]>::try_from(seq).unwrap_or_default()),
            ),
            _ => (usize::MAX, 0),
        };
        next_seq = next_seq.max(seq + 1);
        let Some(entries) = decode_record(&value) else {
            kept = None;
            unreadable::keep_aside(
                db,
                LOG_TREE,
                &key,
                &value,
                &"a timer log record cut short or of an unknown op",
            );
            continue;
        };
        if entries.iter().any(|(key, _)| keys::timer_actor(key).is_none()) {
            // Its other entries still count: only the one without an actor cannot be placed.
            unreadable::keep_aside(db, LOG_TREE, &key, &value, &"a timer key that names no actor");
            kept = None;
        }
        if let Some(shards_seen) = kept.as_mut() {
            let owned_here = entries
                .iter()
                .filter_map(|(key, _)| keys::timer_actor(key))
                .all(|actor| shard_of(actor) == record_shard);
            match shards_seen.get_mut(record_shard) {
                Some((first, count)) if owned_here => {
                    *first = Some(first.map_or(seq, |f: u64| f.min(seq)));
                    *count += entries.len();
                }
                _ => kept = None,
            }
        }
        for (key, timer) in entries.into_iter().filter(|(key, _)| keys::timer_actor(key).is_some()) {
            match timer {
                Some((due, payload)) => {
                    live.insert(Arc::from(key), (due, payload.to_vec()));
                }
                None => {
                    live.remove(key);
                }
            }
        }
    }

    let mut owned: Vec<Vec<Restored>> = (0..shards).map(|_| Vec::new()).collect();
    for (key, (due, payload)) in live {
        let Some(actor) = keys::timer_actor(&key) else {
            continue; // Kept aside above, with its record.
        };
        if let Some(timers) = owned.get_mut(shard_of(actor)) {
            timers.push((key, due, payload));
        }
    }
    if let Some(shards_seen) = kept {
        let logs = shards_seen
            .into_iter()
            .enumerate()
            .map(|(shard, (first, entries))| TimerLog {
                tree: log.clone(),
                shard: u16::try_from(shard).unwrap_or(u16::MAX),
                first_seq: first.unwrap_or(next_seq),
                next_seq,
                since_snapshot: entries,
                snapshot_requested: false,
            })
            .collect();
        return Ok((logs, owned));
    }
    // Fresh seqs above every old one, so no new record shares a key with one being removed.
    let mut logs = Vec::with_capacity(shards);
    for (shard, timers) in owned.iter().enumerate() {
        let mut shard_log = TimerLog {
            tree: log.clone(),
            shard: u16::try_from(shard).unwrap_or(u16::MAX),
            first_seq: next_seq,
            next_seq,
            since_snapshot: 0,
            snapshot_requested: false,
        };
        shard_log.snapshot(&mut batch, timers.iter().map(|(k, d, p)| (&k[..], *d, p.as_slice())));
        logs.push(shard_log);
    }
    log.apply_batch(batch)?;
    if !legacy.is_empty() {
        log.flush()?;
        legacy.clear()?;
    }
    Ok((logs, owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A temporary database with the log and the legacy tree.
    fn trees() -> (sled::Db, sled::Tree, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let log = db.open_tree("timer-log").expect("tree");
        let legacy = db.open_tree("timers").expect("tree");
        (db, log, legacy)
    }

    fn key(actor: &str, id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        keys::timer_key(&mut k, "p", actor, id);
        k
    }

    #[test]
    fn records_round_trip_and_reject_truncation() {
        let mut buf = Vec::new();
        push_entry(&mut buf, b"k1", Some((-7, b"payload")));
        push_entry(&mut buf, b"k2", None);
        let entries = decode_record(&buf).expect("whole record");
        assert_eq!(
            entries,
            vec![(&b"k1"[..], Some((-7, &b"payload"[..]))), (&b"k2"[..], None)]
        );
        assert!(decode_record(&buf[..buf.len() - 3]).is_none());
    }

    #[test]
    fn restore_replays_the_log_and_rewrites_it_for_a_new_shard_count() {
        let (db, log, legacy) = trees();
        legacy
            .insert(key("old", "t"), keys::timer_value(5, b"from before the log"))
            .expect("insert");
        let (mut logs, owned) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
        assert_eq!(owned[0].len(), 1);
        assert!(legacy.is_empty(), "the legacy tree is migrated into the log");

        // Shard 0 appends a set, a replacement and a cancel over two commits.
        let mut batch = sled::Batch::default();
        let mut w = logs[0].writer(&mut batch);
        w.set(&key("a", "t"), 10, b"first");
        w.set(&key("b", "t"), 20, b"b");
        w.finish();
        log.apply_batch(batch).expect("apply");
        let mut batch = sled::Batch::default();
        let mut w = logs[0].writer(&mut batch);
        w.set(&key("a", "t"), 30, b"second");
        w.cancel(&key("b", "t"));
        w.cancel(&key("old", "t"));
        w.finish();
        log.apply_batch(batch).expect("apply");

        // Restart with two shards: actor "a" goes to shard 1.
        let (_, owned) = restore(&db, &log, &legacy, 2, |actor| usize::from(actor == "a")).expect("restore");
        assert!(owned[0].is_empty());
        assert_eq!(owned[1], vec![(key("a", "t").into(), 30, b"second".to_vec())]);
        // And the rewritten log alone holds the same.
        let (_, again) = restore(&db, &log, &legacy, 2, |actor| usize::from(actor == "a")).expect("restore");
        assert_eq!(again, owned);
    }

    fn record_keys(log: &sled::Tree) -> Vec<Vec<u8>> {
        log.iter().keys().map(|k| k.expect("key").to_vec()).collect()
    }

    #[test]
    fn a_restart_with_the_same_shard_count_keeps_the_log_instead_of_rewriting_it() {
        let (db, log, legacy) = trees();
        let shard_of = |actor: &str| usize::from(actor == "a");
        let (mut logs, _) = restore(&db, &log, &legacy, 2, shard_of).expect("restore");
        let mut batch = sled::Batch::default();
        let mut w = logs[1].writer(&mut batch);
        w.set(&key("a", "t"), 10, b"a");
        w.finish();
        let mut w = logs[0].writer(&mut batch);
        w.set(&key("b", "t"), 20, b"b");
        w.finish();
        log.apply_batch(batch).expect("apply");
        let before = record_keys(&log);

        let (mut logs, owned) = restore(&db, &log, &legacy, 2, shard_of).expect("restore");
        assert_eq!(record_keys(&log), before, "nothing rewritten");
        assert_eq!(owned[1], vec![(key("a", "t").into(), 10, b"a".to_vec())]);
        assert_eq!(owned[0], vec![(key("b", "t").into(), 20, b"b".to_vec())]);

        // New records go after the kept ones, and a snapshot still replaces them all.
        let mut batch = sled::Batch::default();
        logs[1].snapshot(&mut batch, std::iter::once((&key("a", "t")[..], 40, &b"a2"[..])));
        log.apply_batch(batch).expect("apply");
        let (_, owned) = restore(&db, &log, &legacy, 2, shard_of).expect("restore");
        assert_eq!(owned[1], vec![(key("a", "t").into(), 40, b"a2".to_vec())]);
        assert_eq!(owned[0].len(), 1);

        // Another shard count rewrites it.
        restore(&db, &log, &legacy, 3, |_| 2).expect("restore");
        assert_ne!(record_keys(&log), before);
    }

    #[test]
    fn a_snapshot_replaces_the_older_records() {
        let (db, log, legacy) = trees();
        let (mut logs, _) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
        for i in 0..3 {
            let mut batch = sled::Batch::default();
            let mut w = logs[0].writer(&mut batch);
            w.set(&key("a", "t"), i, &[0u8; 3000]);
            w.finish();
            log.apply_batch(batch).expect("apply");
        }
        assert_eq!(log.len(), 3);
        let live = [(key("a", "t"), 2i64, vec![0u8; 3000])];
        let mut batch = sled::Batch::default();
        logs[0].snapshot(
            &mut batch,
            live.iter().map(|(k, d, p)| (k.as_slice(), *d, p.as_slice())),
        );
        log.apply_batch(batch).expect("apply");
        assert_eq!(
            log.len(),
            1,
            "one record holds the snapshot; the three older ones are gone"
        );
        let (_, owned) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
        assert_eq!(owned[0], vec![(key("a", "t").into(), 2, vec![0u8; 3000])]);
    }

    #[test]
    fn unreadable_timer_records_are_kept_aside_at_restore() {
        let (db, log, legacy) = trees();
        let short_value = b"\x00\x01".to_vec();
        legacy.insert(key("old", "short"), short_value.clone()).expect("insert");
        let no_actor = b"\x05pl".to_vec();
        legacy
            .insert(no_actor.clone(), keys::timer_value(1, b"x"))
            .expect("insert");
        legacy
            .insert(key("old", "fine"), keys::timer_value(2, b"legacy"))
            .expect("insert");

        let mut cut = Vec::new();
        push_entry(&mut cut, &key("a", "t"), Some((3, b"cut")));
        cut.truncate(cut.len() - 1);
        log.insert(record_key(0, 0), cut.clone()).expect("insert");
        let mut unknown_op = Vec::new();
        push_entry(&mut unknown_op, &key("a", "u"), None);
        unknown_op[0] = 7;
        log.insert(record_key(0, 1), unknown_op.clone()).expect("insert");
        let mut mixed = Vec::new();
        push_entry(&mut mixed, &key("b", "t"), Some((4, b"kept")));
        push_entry(&mut mixed, b"\x09", Some((5, b"lost key")));
        log.insert(record_key(1, 0), mixed.clone()).expect("insert");

        let (_, owned) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
        let mut timers = owned[0].clone();
        timers.sort();
        assert_eq!(
            timers,
            vec![
                (key("b", "t").into(), 4, b"kept".to_vec()),
                (key("old", "fine").into(), 2, b"legacy".to_vec()),
            ],
            "the readable timers are restored"
        );
        let mut kept = unreadable::list(&db).expect("list");
        kept.sort();
        assert_eq!(
            kept,
            vec![
                (LOG_TREE.to_owned(), record_key(0, 0).to_vec(), cut),
                (LOG_TREE.to_owned(), record_key(0, 1).to_vec(), unknown_op),
                (LOG_TREE.to_owned(), record_key(1, 0).to_vec(), mixed),
                (LEGACY_TREE.to_owned(), key("old", "short"), short_value),
                (LEGACY_TREE.to_owned(), no_actor, keys::timer_value(1, b"x")),
            ]
        );
        // The rewritten log holds only what was readable; a second start keeps nothing more aside.
        let (_, again) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
        assert_eq!(again[0].len(), 2);
        assert_eq!(unreadable::list(&db).expect("list").len(), 5);
    }

    /// The stored form is fixed: a change to it must take a new op (see the module's doc).
    #[test]
    fn the_timer_log_encoding_is_pinned() {
        let mut buf = Vec::new();
        push_entry(&mut buf, b"k1", Some((-7, b"pay")));
        push_entry(&mut buf, b"k2", None);
        assert_eq!(
            buf,
            [
                &[SET, 2, 0, 0, 0][..],
                b"k1",
                &(-7i64).to_le_bytes(),
                &[3, 0, 0, 0],
                b"pay",
                &[CANCEL, 2, 0, 0, 0],
                b"k2",
            ]
            .concat()
        );
        assert_eq!(record_key(1, 2), [0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    }

    type Written = (Vec<u8>, Option<(i64, Vec<u8>)>);

    fn entry() -> impl Strategy<Value = Written> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
        (bytes(), proptest::option::of((any::<i64>(), bytes())))
    }

    prop_compose! {
        /// A timer key as the hub writes them: any plugin name within its 255 bytes, any actor and id.
        fn timer_key()(plugin in "\\PC{0,40}", actor in "\\PC{0,6}", id in any::<String>()) -> Vec<u8> {
            let mut k = Vec::new();
            keys::timer_key(&mut k, &plugin, &actor, &id);
            k
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn timer_log_records_round_trip(entries in proptest::collection::vec(entry(), 0..8)) {
            let mut buf = Vec::new();
            for (key, timer) in &entries {
                push_entry(&mut buf, key, timer.as_ref().map(|(due, payload)| (*due, payload.as_slice())));
            }
            let decoded = decode_record(&buf).expect("whole record");
            let decoded: Vec<Written> = decoded
                .into_iter()
                .map(|(key, timer)| (key.to_vec(), timer.map(|(due, payload)| (due, payload.to_vec()))))
                .collect();
            prop_assert_eq!(decoded, entries);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Through sled, cut into records and rewritten by a restart: the live timers come back.
        #[test]
        fn restored_timers_are_the_ones_written(
            changes in proptest::collection::vec(
                (timer_key(), proptest::option::of((any::<i64>(), proptest::collection::vec(any::<u8>(), 0..2000)))),
                0..24,
            ),
        ) {
            let (db, log, legacy) = trees();
            let (mut logs, _) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
            let mut model = std::collections::BTreeMap::new();
            let mut batch = sled::Batch::default();
            let mut w = logs[0].writer(&mut batch);
            for (key, timer) in &changes {
                match timer {
                    Some((due, payload)) => {
                        w.set(key, *due, payload);
                        model.insert(key.clone(), (*due, payload.clone()));
                    }
                    None => {
                        w.cancel(key);
                        model.remove(key);
                    }
                }
            }
            w.finish();
            log.apply_batch(batch).expect("apply");
            for _ in 0..2 {
                let (_, owned) = restore(&db, &log, &legacy, 1, |_| 0).expect("restore");
                let restored: std::collections::BTreeMap<Vec<u8>, (i64, Vec<u8>)> = owned[0]
                    .iter()
                    .map(|(key, due, payload)| (key.to_vec(), (*due, payload.clone())))
                    .collect();
                prop_assert_eq!(&restored, &model);
            }
            prop_assert!(unreadable::list(&db).expect("list").is_empty());
        }
    }
}
