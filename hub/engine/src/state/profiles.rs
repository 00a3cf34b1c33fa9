//! Actor profiles: what is known about an actor (name, segment, thresholds…), kept in sled as a
//! MessagePack map, which is what plugins read through the `profile` import.
//!
//! Updates are JSON merge patches (RFC 7386: a key set to `null` is removed, objects merge), from
//! NATS `profiles.<actor>` and the admin API. Each update is an atomic compare-and-swap on the
//! actor's key, so concurrent updates never lose one another.
//!
//! A stored profile that cannot be read is never overwritten: an update of it (merge or
//! replacement) is refused, so what was stored stays for an operator to inspect or repair;
//! erasing the actor removes it.
//!
//! Plugins read profiles through each shard's [`ProfileCache`]: a sled read waits while the
//! committer applies a commit (sled applies batches under a lock that every read waits for), and
//! scenarios read the profile of nearly every event they act on. Every write bumps a version of
//! the actor's stripe *after* it is stored, and a cached profile is used only while its stripe
//! is at the version read before it was fetched, so a shard never serves a profile older than
//! the last update that returned.

use crate::limits;
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("a profile update must be a JSON object")]
    NotAnObject,
    /// The actor id or the resulting profile is outside `crate::limits`.
    #[error("{0}")]
    Invalid(String),
    #[error("the stored profile of {actor:?} is unreadable ({detail}); it is left as it is, not updated")]
    Corrupt { actor: String, detail: String },
    #[error("cannot encode the profile of {actor:?}: {detail}")]
    Encode { actor: String, detail: String },
    #[error("profile storage: {0}")]
    Sled(#[from] sled::Error),
}

/// Actors are hashed into this many version stripes: an update invalidates the cached profiles
/// of its stripe (about 1 in 4096 of the actors), and the stripes take 32 KiB.
const STRIPES: usize = 4096;

/// The profiles of every actor. Clones share the tree and the versions of its stripes, so every
/// writer must go through one of them (the hub's is `Db::profiles`).
/// Told of every change to a stored profile (`None`: removed): a cluster's changelog keeps them.
pub type ProfileJournal = Arc<dyn Fn(&str, Option<&[u8]>) + Send + Sync>;

#[derive(Clone)]
pub struct Profiles {
    tree: sled::Tree,
    versions: Arc<[AtomicU64]>,
    journal: Arc<std::sync::OnceLock<ProfileJournal>>,
}

impl Profiles {
    /// The actors with a profile whose key starts with `prefix` (a tenant's).
    pub fn actors_with_prefix(&self, prefix: &str) -> Result<Vec<String>, sled::Error> {
        let mut found = Vec::new();
        for key in self.tree.scan_prefix(prefix.as_bytes()).keys() {
            if let Ok(actor) = String::from_utf8(key?.to_vec()) {
                found.push(actor);
            }
        }
        Ok(found)
    }

    pub fn new(tree: sled::Tree) -> Profiles {
        Profiles {
            tree,
            versions: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            journal: Arc::default(),
        }
    }

    /// Tell `journal` of every change from now on (set once).
    pub fn set_journal(&self, journal: ProfileJournal) {
        let _ = self.journal.set(journal);
    }

    /// Replace the profiles of the actors `of` picks with `restored` (actor, stored bytes): a
    /// partition's, read back from a cluster's changelog.
    pub fn restore(&self, of: impl Fn(&str) -> bool, restored: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), ProfileError> {
        let mut batch = sled::Batch::default();
        let mut touched = Vec::new();
        for key in self.tree.iter().keys() {
            let key = key?;
            if std::str::from_utf8(&key).is_ok_and(&of) {
                batch.remove(key.clone());
                touched.push(key.to_vec());
            }
        }
        for (actor, stored) in restored {
            batch.insert(actor.as_slice(), stored);
            touched.push(actor);
        }
        self.tree.apply_batch(batch)?;
        for actor in touched {
            self.changed(&actor);
        }
        Ok(())
    }

    fn stripe(&self, actor: &[u8]) -> &AtomicU64 {
        &self.versions[(xxhash_rust::xxh3::xxh3_64(actor) % STRIPES as u64) as usize]
    }

    /// A write of `actor`'s profile is stored: cached copies of its stripe are stale.
    fn changed(&self, actor: &[u8]) {
        self.stripe(actor).fetch_add(1, Ordering::Release);
    }

    /// A cache of these profiles for one shard, holding at most about `bytes`.
    pub fn cache(&self, bytes: usize) -> ProfileCache {
        ProfileCache {
            profiles: self.clone(),
            entries: FxHashMap::default(),
            bytes: 0,
            capacity: bytes,
        }
    }

    /// Erase every profile.
    pub fn clear(&self) -> Result<(), ProfileError> {
        self.tree.clear()?;
        self.versions.iter().for_each(|v| {
            v.fetch_add(1, Ordering::Release);
        });
        Ok(())
    }

    pub fn get(&self, actor: &str) -> Result<Option<Value>, ProfileError> {
        match self.tree.get(actor.as_bytes())? {
            Some(bytes) => decode(actor, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Merge `patch` into the actor's profile and return the result.
    pub fn merge(&self, actor: &str, patch: &Value) -> Result<Value, ProfileError> {
        self.update(actor, |profile| json_patch::merge(profile, patch), patch)
    }

    /// Replace the actor's profile with `profile`.
    pub fn replace(&self, actor: &str, profile: &Value) -> Result<Value, ProfileError> {
        self.update(actor, |current| *current = profile.clone(), profile)
    }

    /// Erase the profile; true if there was one.
    pub fn remove(&self, actor: &str) -> Result<bool, ProfileError> {
        let removed = self.tree.remove(actor.as_bytes())?.is_some();
        self.changed(actor.as_bytes());
        if let Some(journal) = self.journal.get() {
            journal(actor, None);
        }
        Ok(removed)
    }

    /// Apply `change` to the stored profile. An unreadable one is refused even for a
    /// replacement, which does not need it: overwriting it would lose it silently.
    fn update(&self, actor: &str, change: impl Fn(&mut Value), input: &Value) -> Result<Value, ProfileError> {
        if !input.is_object() {
            return Err(ProfileError::NotAnObject);
        }
        // The id as given (the key may name a tenant before it).
        crate::event::check_actor(crate::tenant::split(actor).1).map_err(ProfileError::Invalid)?;
        loop {
            let old = self.tree.get(actor.as_bytes())?;
            let mut profile = match &old {
                Some(bytes) => decode(actor, bytes)?,
                None => Value::Object(Default::default()),
            };
            change(&mut profile);
            let encoded = encode(&profile).map_err(|e| ProfileError::Encode {
                actor: actor.to_owned(),
                detail: e.to_string(),
            })?;
            if encoded.len() > limits::MAX_PROFILE_BYTES {
                return Err(ProfileError::Invalid(format!(
                    "the profile would be {} bytes as stored; at most {} are allowed",
                    encoded.len(),
                    limits::MAX_PROFILE_BYTES
                )));
            }
            let journal = self.journal.get();
            let logged = journal.map(|_| encoded.clone());
            if self
                .tree
                .compare_and_swap(actor.as_bytes(), old, Some(encoded))?
                .is_ok()
            {
                self.changed(actor.as_bytes());
                if let (Some(journal), Some(stored)) = (journal, logged) {
                    journal(actor, Some(&stored));
                }
                return Ok(profile);
            }
        }
    }
}

/// A profile as a shard fetched it.
struct Cached {
    /// Its stripe's version, read before it was fetched.
    version: u64,
    stored: Option<Box<[u8]>>,
}

/// One shard's copies of the profiles its plugins read, as stored (MessagePack bytes), absent
/// ones included. Dropped whole when over its capacity: the shard reads them again from sled.
pub struct ProfileCache {
    profiles: Profiles,
    entries: FxHashMap<Box<str>, Cached>,
    bytes: usize,
    capacity: usize,
}

impl ProfileCache {
    /// What an entry is counted for: its actor, its profile and 64 bytes of bookkeeping.
    fn entry_bytes(actor: &str, stored: Option<&[u8]>) -> usize {
        actor.len() + stored.map_or(0, <[u8]>::len) + 64
    }

    /// The actor's profile as stored.
    pub fn get(&mut self, actor: &str) -> Result<Option<Vec<u8>>, sled::Error> {
        let version = self.profiles.stripe(actor.as_bytes()).load(Ordering::Acquire);
        if let Some(cached) = self.entries.get(actor)
            && cached.version == version
        {
            return Ok(cached.stored.as_deref().map(<[u8]>::to_vec));
        }
        let stored = self.profiles.tree.get(actor.as_bytes())?;
        let size = Self::entry_bytes(actor, stored.as_deref());
        if self.bytes + size > self.capacity {
            self.entries.clear();
            self.bytes = 0;
        }
        let value = stored.as_deref().map(<[u8]>::to_vec);
        let entry = Cached {
            version,
            stored: value.as_deref().map(Box::from),
        };
        if let Some(old) = self.entries.insert(actor.into(), entry) {
            self.bytes -= Self::entry_bytes(actor, old.stored.as_deref());
        }
        self.bytes += size;
        Ok(value)
    }
}

/// The stored form: a MessagePack map (keys by name), what plugins read.
fn encode(profile: &Value) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(profile)
}

fn decode(actor: &str, bytes: &[u8]) -> Result<Value, ProfileError> {
    rmp_serde::from_slice(bytes).map_err(|e| ProfileError::Corrupt {
        actor: actor.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn profiles() -> Profiles {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        Profiles::new(db.open_tree("profiles").expect("tree"))
    }

    #[test]
    fn a_corrupt_profile_is_never_overwritten_by_an_update() {
        let p = profiles();
        let garbage = b"\xc1 not msgpack".to_vec();
        p.tree.insert("a", garbage.clone()).expect("insert");
        for update in [
            p.merge("a", &json!({"segment": "vip"})),
            p.replace("a", &json!({"name": "Ann"})),
        ] {
            let err = update.expect_err("refused");
            assert!(matches!(err, ProfileError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("left as it is"), "{err}");
        }
        assert_eq!(p.tree.get("a").expect("get").as_deref(), Some(&garbage[..]));
        assert!(p.remove("a").expect("erasure still removes it"));
    }

    /// Stored as a map with its keys, so what is stored never depends on a field's position.
    #[test]
    fn the_profile_encoding_is_pinned() {
        let profile = json!({"a": 1, "b": [true, null], "c": 1.5});
        let bytes = encode(&profile).expect("encode");
        assert_eq!(
            bytes,
            [
                &[0x83, 0xa1, b'a', 0x01, 0xa1, b'b', 0x92, 0xc3, 0xc0, 0xa1, b'c', 0xcb][..],
                &1.5f64.to_be_bytes()
            ]
            .concat()
        );
        assert_eq!(decode("a", &bytes).expect("decode"), profile);
    }

    prop_compose! {
        fn profile()(fields in proptest::collection::btree_map(any::<String>(), crate::strategies::json_value(4, 48), 0..6)) -> Value {
            Value::Object(fields.into_iter().collect())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn profiles_round_trip(profile in profile()) {
            let bytes = encode(&profile).expect("encode");
            prop_assert_eq!(decode("a", &bytes).expect("decode"), profile.clone());
            let p = profiles();
            prop_assert_eq!(p.replace("a", &profile).expect("replace"), profile.clone());
            prop_assert_eq!(p.get("a").expect("get"), Some(profile));
        }
    }

    #[test]
    fn updates_merge_and_null_removes() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let p = Profiles::new(db.open_tree("profiles").expect("tree"));
        p.merge(
            "a",
            &json!({"name": "Ann", "segment": "vip", "address": {"city": "Oslo"}}),
        )
        .expect("merge");
        let merged = p
            .merge("a", &json!({"segment": null, "address": {"zip": "0150"}}))
            .expect("merge");
        assert_eq!(
            merged,
            json!({"name": "Ann", "address": {"city": "Oslo", "zip": "0150"}})
        );
        assert_eq!(p.get("a").expect("get"), Some(merged));
        assert!(matches!(p.merge("a", &json!([1])), Err(ProfileError::NotAnObject)));
        assert!(p.remove("a").expect("remove"));
        assert_eq!(p.get("a").expect("get"), None);
    }

    #[test]
    fn profiles_over_the_limit_and_long_actor_ids_are_refused() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let p = Profiles::new(db.open_tree("profiles").expect("tree"));
        let big = json!({"notes": "x".repeat(limits::MAX_PROFILE_BYTES)});
        assert!(matches!(p.replace("a", &big), Err(ProfileError::Invalid(_))));
        assert!(matches!(p.merge("a", &big), Err(ProfileError::Invalid(_))));
        assert_eq!(p.get("a").expect("get"), None, "nothing stored");
        let long = "v".repeat(limits::MAX_ACTOR_BYTES + 1);
        let err = p.merge(&long, &json!({"name": "Ann"})).expect_err("long actor id");
        assert!(err.to_string().contains("at most 1024"), "{err}");
    }

    #[test]
    fn a_cached_profile_gives_way_to_an_update_through_any_handle() {
        let p = profiles();
        let writer = p.clone();
        let mut cache = p.cache(1 << 20);
        assert_eq!(cache.get("a").expect("get"), None);
        writer.merge("a", &json!({"segment": "vip"})).expect("merge");
        let stored = |p: &Profiles| p.tree.get("a").expect("get").map(|v| v.to_vec());
        assert_eq!(
            cache.get("a").expect("get"),
            stored(&p),
            "the absence was cached, then updated"
        );
        assert_eq!(cache.get("a").expect("get"), stored(&p));
        writer.replace("a", &json!({"segment": "gold"})).expect("replace");
        assert_eq!(cache.get("a").expect("get"), stored(&p));
        writer.remove("a").expect("remove");
        assert_eq!(cache.get("a").expect("get"), None);
        writer.merge("a", &json!({"x": 1})).expect("merge");
        writer.clear().expect("clear");
        assert_eq!(cache.get("a").expect("get"), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Merge(u8, Value),
        Remove(u8),
        Read(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..8u8, crate::strategies::json_value(2, 8)).prop_map(|(a, v)| Op::Merge(a, json!({"v": v}))),
            (0..8u8).prop_map(Op::Remove),
            (0..8u8).prop_map(Op::Read),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the updates and however small the cache, a read gives what is stored.
        #[test]
        fn the_cache_reads_what_is_stored(ops in proptest::collection::vec(op(), 1..60), capacity in 0..2048usize) {
            let p = profiles();
            let mut cache = p.cache(capacity);
            for op in ops {
                match op {
                    Op::Merge(a, patch) => {
                        p.merge(&a.to_string(), &patch).expect("merge");
                    }
                    Op::Remove(a) => {
                        p.remove(&a.to_string()).expect("remove");
                    }
                    Op::Read(a) => {
                        let actor = a.to_string();
                        let stored = p.tree.get(&actor).expect("get").map(|v| v.to_vec());
                        prop_assert_eq!(cache.get(&actor).expect("cached"), stored);
                    }
                }
                let counted: usize = cache
                    .entries
                    .iter()
                    .map(|(a, c)| ProfileCache::entry_bytes(a, c.stored.as_deref()))
                    .sum();
                prop_assert_eq!(cache.bytes, counted);
                prop_assert!(cache.entries.len() <= 1 || cache.bytes <= capacity, "held to its capacity");
            }
        }
    }
}
