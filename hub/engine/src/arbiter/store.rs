//! Where the live policies are kept: an immutable value behind `arc-swap` (one atomic load per
//! decision on the shards) and its record in sled, so a change made through the API outlives a
//! restart.
//!
//! At start the config file's policies win only when they changed since they were last seeded:
//! an admin who edits the file gets the file; an admin who used the API keeps the API's version
//! across restarts of an unchanged file (the same rule as plugins seeded from a folder).
//!
//! A tenant may have policies of its own (`PUT /api/policies?tenant=`), which its actors are
//! judged by instead of the hub's; they are kept beside the hub's, one record per tenant.
//!
//! The record is a JSON object (fields matched by name, unknown ones ignored), so fields added
//! later cannot shift the others. A record this version cannot read is kept aside (see
//! [`crate::state::unreadable`]) and the config file's policies take over: the hub still starts.

use super::Policies;
use crate::state::unreadable;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const TREE: &str = "policies";
const RECORD_KEY: &[u8] = b"policies";
/// A tenant's own policies are kept at `tenant/<name>`.
const TENANT_PREFIX: &str = "tenant/";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policies: {0}")]
    Invalid(String),
    #[error("policy storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode the policies: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The stored record: the live policies, and the config file's policies they were last seeded
/// from (to tell an edited file from an unchanged one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    live: Policies,
    seeded_from: Policies,
    /// `config` or `api`.
    source: String,
}

impl Record {
    fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A tenant's own policies as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TenantRecord {
    live: Policies,
}

/// The live policies; cheap to clone.
#[derive(Clone)]
pub struct PolicyStore {
    live: Arc<ArcSwap<Policies>>,
    /// The tenants that have policies of their own.
    tenants: Arc<ArcSwap<BTreeMap<String, Arc<Policies>>>>,
    db: sled::Db,
    tree: sled::Tree,
    /// The config file's policies this store was opened with: what the record says it was
    /// seeded from, should the record become unreadable.
    seeded_from: Arc<Policies>,
    /// In a cluster: the policies all instances share, written before a change is kept here.
    shared: Arc<std::sync::OnceLock<Arc<crate::cluster::policies::SharedPolicies>>>,
}

impl PolicyStore {
    /// Open the stored policies, seeding them from the config file's as described above.
    pub fn open(db: &sled::Db, from_config: &Policies) -> Result<PolicyStore, PolicyError> {
        from_config.validate().map_err(PolicyError::Invalid)?;
        let tree = db.open_tree(TREE)?;
        let stored = read(db, &tree)?;
        let live = match stored {
            Some(record) if record.seeded_from == *from_config => {
                if record.source == "api" {
                    tracing::info!("contact policies: keeping the ones last set through the API");
                }
                record.live
            }
            _ => {
                let record = Record {
                    live: from_config.clone(),
                    seeded_from: from_config.clone(),
                    source: "config".to_owned(),
                };
                tree.insert(RECORD_KEY, record.to_bytes()?)?;
                tree.flush()?;
                record.live
            }
        };
        Ok(PolicyStore {
            live: Arc::new(ArcSwap::from_pointee(live)),
            tenants: Arc::new(ArcSwap::from_pointee(read_tenants(db, &tree)?)),
            db: db.clone(),
            tree,
            seeded_from: Arc::new(from_config.clone()),
            shared: Arc::default(),
        })
    }

    /// The policies in force now.
    pub fn load(&self) -> arc_swap::Guard<Arc<Policies>> {
        self.live.load()
    }

    /// The policies the actor of `key` (a qualified key) is judged by: its tenant's own, or
    /// the hub's.
    pub fn for_actor(&self, key: &str) -> Arc<Policies> {
        if let Some(tenant) = crate::tenant::split(key).0
            && let Some(own) = self.tenants.load().get(tenant)
        {
            return own.clone();
        }
        self.live.load_full()
    }

    /// `tenant`'s own policies, if it has any.
    pub fn of_tenant(&self, tenant: &str) -> Option<Arc<Policies>> {
        self.tenants.load().get(tenant).cloned()
    }

    /// The tenants that have policies of their own, and those policies.
    pub fn tenants_own(&self) -> Arc<BTreeMap<String, Arc<Policies>>> {
        self.tenants.load_full()
    }

    /// Give `tenant` policies of its own, or (`None`) judge it by the hub's again; durable
    /// before they take effect. Whether it had policies of its own.
    pub fn set_tenant(&self, tenant: &str, policies: Option<Policies>) -> Result<bool, PolicyError> {
        let key = format!("{TENANT_PREFIX}{tenant}");
        let mut tenants = BTreeMap::clone(&self.tenants.load());
        let had = match policies {
            Some(policies) => {
                policies.validate().map_err(PolicyError::Invalid)?;
                let record = TenantRecord { live: policies };
                self.tree.insert(key.as_bytes(), serde_json::to_vec(&record)?)?;
                tenants.insert(tenant.to_owned(), Arc::new(record.live)).is_some()
            }
            None => {
                self.tree.remove(key.as_bytes())?;
                tenants.remove(tenant).is_some()
            }
        };
        self.tree.flush()?;
        self.tenants.store(Arc::new(tenants));
        Ok(had)
    }

    /// In a cluster: the policies all instances share (see `cluster::policies`).
    pub fn share(&self, shared: Arc<crate::cluster::policies::SharedPolicies>) {
        let _ = self.shared.set(shared);
    }

    pub fn shared(&self) -> Option<&Arc<crate::cluster::policies::SharedPolicies>> {
        self.shared.get()
    }

    /// Replace the policies after validating them; durable before they take effect.
    pub fn replace(&self, policies: Policies) -> Result<(), PolicyError> {
        self.set(policies, "api")
    }

    /// Take the policies another instance of the cluster set.
    pub fn adopt(&self, policies: Policies) -> Result<(), PolicyError> {
        self.set(policies, "cluster")
    }

    fn set(&self, policies: Policies, source: &str) -> Result<(), PolicyError> {
        policies.validate().map_err(PolicyError::Invalid)?;
        let seeded_from = match read(&self.db, &self.tree)? {
            Some(record) => record.seeded_from,
            None => Policies::clone(&self.seeded_from),
        };
        let record = Record {
            live: policies,
            seeded_from,
            source: source.to_owned(),
        };
        self.tree.insert(RECORD_KEY, record.to_bytes()?)?;
        self.tree.flush()?;
        self.live.store(Arc::new(record.live));
        Ok(())
    }
}

/// The stored record, or `None` when there is none or it is unreadable (then kept aside first,
/// so that writing a new one loses nothing).
fn read(db: &sled::Db, tree: &sled::Tree) -> Result<Option<Record>, sled::Error> {
    let Some(bytes) = tree.get(RECORD_KEY)? else {
        return Ok(None);
    };
    match Record::from_bytes(&bytes) {
        Ok(record) => Ok(Some(record)),
        Err(e) => {
            unreadable::keep_aside(db, TREE, RECORD_KEY, &bytes, &e);
            Ok(None)
        }
    }
}

/// The tenants' own policies; an unreadable record is kept aside and its tenant judged by the
/// hub's policies until it is given new ones.
fn read_tenants(db: &sled::Db, tree: &sled::Tree) -> Result<BTreeMap<String, Arc<Policies>>, sled::Error> {
    let mut tenants = BTreeMap::new();
    for entry in tree.scan_prefix(TENANT_PREFIX) {
        let (key, bytes) = entry?;
        let tenant = String::from_utf8_lossy(&key[TENANT_PREFIX.len()..]).into_owned();
        match serde_json::from_slice::<TenantRecord>(&bytes) {
            Ok(record) => {
                tenants.insert(tenant, Arc::new(record.live));
            }
            // Left where it is (kept aside once, however many starts read it) until replaced.
            Err(e) => unreadable::keep_aside(db, TREE, &key, &bytes, &e),
        }
    }
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::super::{CategoryPolicy, Limit, Suppression};
    use super::*;
    use crate::limits::MAX_WINDOW;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Reopen as a restarted hub would (waiting for the lock the last handle releases late).
    fn open(dir: &std::path::Path) -> sled::Db {
        crate::state::open_when_unlocked(&sled::Config::new().path(dir)).expect("db")
    }

    #[test]
    fn api_changes_outlive_a_restart_until_the_file_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Policies::example();
        let mut api = file.clone();
        api.conflict_window = Duration::from_secs(5);
        {
            let db = open(dir.path());
            let store = PolicyStore::open(&db, &file).expect("open");
            store.replace(api.clone()).expect("replace");
            assert_eq!(**store.load(), api);
            let mut bad = api.clone();
            bad.dedup_window = Duration::ZERO;
            bad.max_actions = Some(super::super::Limit {
                count: 1000,
                window: Duration::from_secs(1),
            });
            let err = store.replace(bad).expect_err("refused");
            assert!(err.to_string().contains("count must be between 1 and 100"), "{err}");
            assert_eq!(**store.load(), api, "a refused change leaves the live policies");
        }
        {
            let db = open(dir.path());
            let store = PolicyStore::open(&db, &file).expect("open");
            assert_eq!(**store.load(), api, "unchanged file: the API's version stays");
        }
        let db = open(dir.path());
        let edited = Policies::default();
        let store = PolicyStore::open(&db, &edited).expect("open");
        assert_eq!(**store.load(), edited, "an edited file wins");
    }

    #[test]
    fn a_tenants_own_policies_judge_its_actors_alone_and_outlive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = Policies::example();
        let own = Policies {
            conflict_window: Duration::from_secs(5),
            ..Policies::default()
        };
        let acme = crate::tenant::qualify(Some("acme"), "alice");
        let globex = crate::tenant::qualify(Some("globex"), "alice");
        {
            let db = open(dir.path());
            let store = PolicyStore::open(&db, &file).expect("open");
            assert!(!store.set_tenant("acme", Some(own.clone())).expect("set"));
            assert_eq!(*store.for_actor(&acme), own);
            assert_eq!(*store.for_actor("alice"), file, "the default tenant: the hub's");
            assert_eq!(*store.for_actor(&globex), file, "a tenant without its own: the hub's");
            let mut bad = own.clone();
            bad.max_actions = Some(Limit {
                count: 1000,
                window: Duration::from_secs(1),
            });
            store.set_tenant("acme", Some(bad)).expect_err("refused");
            assert_eq!(*store.for_actor(&acme), own, "a refused change leaves its policies");
        }
        {
            let db = open(dir.path());
            let store = PolicyStore::open(&db, &file).expect("open");
            assert_eq!(store.of_tenant("acme").as_deref(), Some(&own));
            assert!(store.set_tenant("acme", None).expect("forget"));
            assert_eq!(*store.for_actor(&acme), file);
        }
        let db = open(dir.path());
        let store = PolicyStore::open(&db, &file).expect("open");
        assert_eq!(store.of_tenant("acme"), None);
    }

    #[test]
    fn a_tenants_policies_record_with_a_future_field_is_read() {
        let record: TenantRecord =
            serde_json::from_str(r#"{"live": {"conflict_window": "5s"}, "since": 17}"#).expect("read");
        assert_eq!(record.live.conflict_window, Duration::from_secs(5));
    }

    #[test]
    fn an_unreadable_tenants_policies_record_is_kept_aside_and_the_hubs_policies_judge_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let key = format!("{TENANT_PREFIX}acme").into_bytes();
        let garbage = b"{\"live\": 7".to_vec();
        db.open_tree(TREE)
            .expect("tree")
            .insert(&key, garbage.clone())
            .expect("insert");
        let file = Policies::example();
        let store = PolicyStore::open(&db, &file).expect("the hub starts");
        assert_eq!(*store.for_actor(&crate::tenant::qualify(Some("acme"), "alice")), file);
        assert_eq!(
            unreadable::list(&db).expect("list"),
            vec![(TREE.to_owned(), key, garbage)]
        );
    }

    #[test]
    fn an_unreadable_policies_record_is_kept_aside_and_the_config_file_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let garbage = b"{\"live\": [1, 2".to_vec();
        db.open_tree(TREE)
            .expect("tree")
            .insert(RECORD_KEY, garbage.clone())
            .expect("insert");
        let file = Policies::example();
        let store = PolicyStore::open(&db, &file).expect("the hub starts");
        assert_eq!(**store.load(), file, "the config file's policies take over");
        assert_eq!(
            unreadable::list(&db).expect("list"),
            vec![(TREE.to_owned(), RECORD_KEY.to_vec(), garbage)]
        );
        let tree = db.open_tree(TREE).expect("tree");
        let record = Record::from_bytes(&tree.get(RECORD_KEY).expect("get").expect("record")).expect("readable");
        assert_eq!((record.live, record.source.as_str()), (file, "config"));
    }

    #[test]
    fn replace_keeps_an_unreadable_policies_record_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let file = Policies::example();
        let store = PolicyStore::open(&db, &file).expect("open");
        let tree = db.open_tree(TREE).expect("tree");
        tree.insert(RECORD_KEY, &b"\xff not json"[..]).expect("insert");
        let api = Policies::default();
        store.replace(api.clone()).expect("replace");
        assert_eq!(**store.load(), api);
        assert_eq!(
            unreadable::list(&db).expect("list"),
            vec![(TREE.to_owned(), RECORD_KEY.to_vec(), b"\xff not json".to_vec())]
        );
        let record = Record::from_bytes(&tree.get(RECORD_KEY).expect("get").expect("record")).expect("readable");
        assert_eq!(
            record.seeded_from, file,
            "seeded from the file the store was opened with, so an unchanged file keeps the API's"
        );
    }

    #[test]
    fn a_policies_record_with_a_future_field_is_read() {
        let record = Record {
            live: Policies::example(),
            seeded_from: Policies::default(),
            source: "api".to_owned(),
        };
        let mut value = serde_json::to_value(&record).expect("json");
        value["written_by"] = serde_json::json!({"version": "9.9"});
        let bytes = serde_json::to_vec(&value).expect("json");
        assert_eq!(Record::from_bytes(&bytes).expect("readable"), record);
    }

    /// The stored form is fixed: a change to it must be deliberate (and readable by both sides).
    #[test]
    fn the_policies_record_encoding_is_pinned() {
        let record = Record {
            live: Policies::example(),
            seeded_from: Policies::default(),
            source: "config".to_owned(),
        };
        let text = String::from_utf8(record.to_bytes().expect("encode")).expect("utf-8");
        assert_eq!(text, PINNED);
        assert_eq!(Record::from_bytes(PINNED.as_bytes()).expect("decode"), record);
    }

    const PINNED: &str = concat!(
        r#"{"live":{"conflict_window":"30s","dedup_window":"1h","max_actions":{"count":10,"window":"1h"},"#,
        r#""categories":{"alert":{"priority":200,"limit":null,"hold":"0s"},"#,
        r#""offer":{"priority":100,"limit":{"count":3,"window":"1day"},"hold":"2s"},"#,
        r#""support":{"priority":300,"limit":null,"hold":"0s"}},"#,
        r#""suppressions":[{"by":"support","suppress":["offer"],"for":"1h"}]},"#,
        r#""seeded_from":{"conflict_window":"0s","dedup_window":"1h","max_actions":null,"categories":{},"suppressions":[]},"#,
        r#""source":"config"}"#
    );

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(MAX_WINDOW),
            (0..=MAX_WINDOW.as_secs(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n).min(MAX_WINDOW)),
            (0..100_000u64).prop_map(Duration::from_millis),
        ]
    }

    prop_compose! {
        fn limit()(count in any::<u32>(), window in duration()) -> Limit {
            Limit { count, window }
        }
    }

    prop_compose! {
        fn category()(priority in any::<i32>(), limit in proptest::option::of(limit()), hold in duration())
            -> CategoryPolicy {
            CategoryPolicy { priority, limit, hold }
        }
    }

    prop_compose! {
        fn suppression()(
            by in any::<String>(),
            suppress in proptest::collection::vec(any::<String>(), 0..3),
            for_ in duration(),
        ) -> Suppression {
            Suppression { by, suppress, for_ }
        }
    }

    prop_compose! {
        fn policies()(
            conflict_window in duration(),
            dedup_window in duration(),
            max_actions in proptest::option::of(limit()),
            categories in proptest::collection::btree_map(any::<String>(), category(), 0..4),
            suppressions in proptest::collection::vec(suppression(), 0..3),
        ) -> Policies {
            Policies { conflict_window, dedup_window, max_actions, categories, suppressions }
        }
    }

    prop_compose! {
        fn record()(live in policies(), seeded_from in policies(), source in any::<String>()) -> Record {
            Record { live, seeded_from, source }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn policies_records_round_trip(record in record()) {
            let bytes = record.to_bytes().expect("encode");
            prop_assert_eq!(Record::from_bytes(&bytes).expect("decode"), record);
        }

        #[test]
        fn a_tenants_policies_records_round_trip(live in policies()) {
            let record = TenantRecord { live };
            let bytes = serde_json::to_vec(&record).expect("encode");
            prop_assert_eq!(serde_json::from_slice::<TenantRecord>(&bytes).expect("decode"), record);
        }
    }
}
