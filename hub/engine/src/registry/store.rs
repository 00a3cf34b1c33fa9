//! The registry's records in sled: every version of every plugin (what it said about itself,
//! its config, the hash of its wasm), the wasm bytes (stored once per hash, so the same module
//! under two names or many config versions costs nothing extra), and compiled artifacts keyed by
//! the engine's compatibility and the wasm hash, so a restart does not recompile.
//!
//! A plugin's record is a JSON object (fields matched by name; fields added later are ignored
//! by older versions). A record that cannot be read is kept aside (see
//! [`crate::state::unreadable`]) and left out: the hub starts with the other plugins, and the
//! name can be uploaded again.

use crate::runtime::Description;
use crate::state::unreadable;
use serde::{Deserialize, Serialize};

const PLUGINS_TREE: &str = "registry.plugins";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode the registry record of {name:?}: {source}")]
    Encode { name: String, source: serde_json::Error },
    #[error("the wasm of {sha256} is missing from the registry")]
    MissingWasm { sha256: String },
}

/// One uploaded version, kept forever (until its plugin is deleted).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionRecord {
    /// 1, 2, 3…: in upload order.
    pub version: u32,
    pub sha256: String,
    pub size: usize,
    /// Milliseconds since the Unix epoch.
    pub uploaded_at: i64,
    /// Where it came from: `api`, `config` (a config update), or `dir:<file>`.
    pub source: String,
    pub description: Description,
    pub config: serde_json::Value,
}

/// A plugin name with its versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PluginRecord {
    pub name: String,
    pub active: u32,
    pub enabled: bool,
    pub versions: Vec<VersionRecord>,
    /// The version running as a shadow beside the active one (absent in records written
    /// before shadows existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<u32>,
    /// The tenants whose events it takes; absent: every tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<Vec<String>>,
}

impl PluginRecord {
    /// A plugin with no version yet, for every tenant.
    pub fn new(name: &str) -> PluginRecord {
        PluginRecord {
            name: name.to_owned(),
            active: 0,
            enabled: true,
            versions: Vec::new(),
            shadow: None,
            tenants: None,
        }
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<PluginRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn version(&self, v: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }

    pub fn active(&self) -> Option<&VersionRecord> {
        self.version(self.active)
    }

    pub fn scope(&self) -> crate::tenant::Scope {
        crate::tenant::Scope::of(self.tenants.as_deref())
    }

    pub fn next_version(&self) -> u32 {
        self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1
    }
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    plugins: sled::Tree,
    wasm: sled::Tree,
    artifacts: sled::Tree,
}

impl Store {
    pub fn open(db: &sled::Db) -> Result<Store, StoreError> {
        Ok(Store {
            db: db.clone(),
            plugins: db.open_tree(PLUGINS_TREE)?,
            wasm: db.open_tree("registry.wasm")?,
            artifacts: db.open_tree("registry.artifacts")?,
        })
    }

    /// Every readable plugin record (unreadable ones are kept aside and left out).
    pub fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError> {
        Ok(self.all_plugins()?.0)
    }

    /// The readable records, and whether any was unreadable.
    fn all_plugins(&self) -> Result<(Vec<PluginRecord>, bool), StoreError> {
        let mut records = Vec::new();
        let mut skipped = false;
        for item in self.plugins.iter() {
            let (key, value) = item?;
            match self.decode(&key, &value) {
                Some(record) => records.push(record),
                None => skipped = true,
            }
        }
        Ok((records, skipped))
    }

    /// The plugin's record; `None` also when it is unreadable (then kept aside).
    pub fn plugin(&self, name: &str) -> Result<Option<PluginRecord>, StoreError> {
        Ok(match self.plugins.get(name)? {
            Some(value) => self.decode(name.as_bytes(), &value),
            None => None,
        })
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Option<PluginRecord> {
        match PluginRecord::from_bytes(value) {
            Ok(record) => Some(record),
            Err(e) => {
                unreadable::keep_aside(&self.db, PLUGINS_TREE, key, value, &e);
                None
            }
        }
    }

    /// Write a record and make it durable before the change goes live.
    pub fn put_plugin(&self, record: &PluginRecord) -> Result<(), StoreError> {
        let value = record.to_bytes().map_err(|source| StoreError::Encode {
            name: record.name.clone(),
            source,
        })?;
        self.plugins.insert(record.name.as_bytes(), value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Remove a plugin, and the wasm and artifacts no other plugin uses.
    pub fn delete_plugin(&self, name: &str) -> Result<(), StoreError> {
        let Some(gone) = self.plugin(name)? else {
            return Ok(());
        };
        self.plugins.remove(name)?;
        let (others, some_unreadable) = self.all_plugins()?;
        if some_unreadable {
            // An unreadable record may use the same wasm: keep it, for the record's repair.
            self.db.flush()?;
            return Ok(());
        }
        let in_use: std::collections::HashSet<String> = others
            .into_iter()
            .flat_map(|p| p.versions.into_iter().map(|v| v.sha256))
            .collect();
        for v in gone.versions.iter().filter(|v| !in_use.contains(&v.sha256)) {
            self.wasm.remove(v.sha256.as_bytes())?;
            for key in self.artifacts.scan_prefix(v.sha256.as_bytes()).keys() {
                self.artifacts.remove(key?)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    pub fn put_wasm(&self, sha256: &str, wasm: &[u8]) -> Result<(), StoreError> {
        if !self.wasm.contains_key(sha256)? {
            self.wasm.insert(sha256.as_bytes(), wasm)?;
        }
        Ok(())
    }

    pub fn has_wasm(&self, sha256: &str) -> bool {
        self.wasm.contains_key(sha256).unwrap_or(false)
    }

    pub fn wasm(&self, sha256: &str) -> Result<sled::IVec, StoreError> {
        self.wasm.get(sha256)?.ok_or_else(|| StoreError::MissingWasm {
            sha256: sha256.to_owned(),
        })
    }

    pub fn artifact(&self, sha256: &str, engine: &str) -> Result<Option<sled::IVec>, StoreError> {
        Ok(self.artifacts.get(artifact_key(sha256, engine))?)
    }

    pub fn put_artifact(&self, sha256: &str, engine: &str, artifact: &[u8]) -> Result<(), StoreError> {
        self.artifacts.insert(artifact_key(sha256, engine), artifact)?;
        Ok(())
    }
}

/// `<sha256>/<engine key>`: by hash first, so a deleted module's artifacts share a prefix.
fn artifact_key(sha256: &str, engine: &str) -> Vec<u8> {
    format!("{sha256}/{engine}").into_bytes()
}

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn store() -> (sled::Db, Store) {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let store = Store::open(&db).expect("store");
        (db, store)
    }

    fn record(name: &str, sha256: &str) -> PluginRecord {
        PluginRecord {
            name: name.to_owned(),
            active: 1,
            enabled: true,
            versions: vec![VersionRecord {
                version: 1,
                sha256: sha256.to_owned(),
                size: 3,
                uploaded_at: 1_700_000_000_000,
                source: "api".to_owned(),
                description: Description {
                    name: name.to_owned(),
                    version: "0.1.0".to_owned(),
                    subscribes: vec!["cart.*".to_owned()],
                    emits: vec![],
                },
                config: json!({"label": "blue"}),
            }],
            shadow: None,
            tenants: None,
        }
    }

    #[test]
    fn an_unreadable_registry_record_is_kept_aside_and_the_others_are_read() {
        let (db, store) = store();
        store.put_plugin(&record("good", "aa")).expect("put");
        store.put_wasm("aa", b"one").expect("wasm");
        store.put_wasm("bb", b"two").expect("wasm");
        let garbage = br#"{"name": "bad", "active": "#.to_vec();
        db.open_tree(PLUGINS_TREE)
            .expect("tree")
            .insert("bad", garbage.clone())
            .expect("insert");

        assert_eq!(store.plugins().expect("the hub starts"), vec![record("good", "aa")]);
        assert_eq!(store.plugin("bad").expect("read"), None);
        assert_eq!(
            unreadable::list(&db).expect("list"),
            vec![(PLUGINS_TREE.to_owned(), b"bad".to_vec(), garbage)]
        );

        // Deleting another plugin keeps every wasm while a record that may use it is unreadable.
        store.put_plugin(&record("other", "bb")).expect("put");
        store.delete_plugin("other").expect("delete");
        assert_eq!(&store.wasm("bb").expect("kept")[..], b"two");
    }

    #[test]
    fn a_registry_record_with_a_future_field_is_read() {
        let mut value = serde_json::to_value(record("p", "aa")).expect("json");
        value["owner"] = json!("team-a");
        value["versions"][0]["signature"] = json!({"alg": "ed25519"});
        value["versions"][0]["description"]["world"] = json!("hub:plugin/plugin@0.2.0");
        let bytes = serde_json::to_vec(&value).expect("json");
        assert_eq!(PluginRecord::from_bytes(&bytes).expect("readable"), record("p", "aa"));
    }

    /// The stored form is fixed: a change to it must be deliberate (and readable by both sides).
    #[test]
    fn the_registry_record_encoding_is_pinned() {
        let pinned = concat!(
            r#"{"name":"p","active":1,"enabled":true,"versions":[{"version":1,"sha256":"aa","size":3,"#,
            r#""uploaded_at":1700000000000,"source":"api","description":{"name":"p","version":"0.1.0","#,
            r#""subscribes":["cart.*"],"emits":[]},"config":{"label":"blue"}}]}"#
        );
        let text = String::from_utf8(record("p", "aa").to_bytes().expect("encode")).expect("utf-8");
        assert_eq!(text, pinned);
        assert_eq!(
            PluginRecord::from_bytes(pinned.as_bytes()).expect("decode"),
            record("p", "aa")
        );
    }

    fn json_object() -> impl Strategy<Value = Value> {
        proptest::collection::btree_map(any::<String>(), crate::strategies::json_value(3, 32), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    prop_compose! {
        fn description()(
            name in any::<String>(),
            version in any::<String>(),
            subscribes in proptest::collection::vec(any::<String>(), 0..3),
            emits in proptest::collection::vec(any::<String>(), 0..3),
        ) -> Description {
            Description { name, version, subscribes, emits }
        }
    }

    prop_compose! {
        fn version_record()(
            version in any::<u32>(),
            sha256 in any::<String>(),
            size in any::<usize>(),
            uploaded_at in any::<i64>(),
            source in any::<String>(),
            description in description(),
            config in json_object(),
        ) -> VersionRecord {
            VersionRecord { version, sha256, size, uploaded_at, source, description, config }
        }
    }

    prop_compose! {
        fn plugin_record()(
            name in any::<String>(),
            active in any::<u32>(),
            enabled in any::<bool>(),
            versions in proptest::collection::vec(version_record(), 0..3),
            shadow in proptest::option::of(any::<u32>()),
            tenants in proptest::option::of(proptest::collection::vec(any::<String>(), 0..3)),
        ) -> PluginRecord {
            PluginRecord { name, active, enabled, versions, shadow, tenants }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn registry_records_round_trip(record in plugin_record()) {
            let bytes = record.to_bytes().expect("encode");
            prop_assert_eq!(PluginRecord::from_bytes(&bytes).expect("decode"), record);
        }

        #[test]
        fn a_record_written_before_shadows_reads_without_one(record in plugin_record()) {
            let mut old = serde_json::to_value(&record).expect("encode");
            if let Some(map) = old.as_object_mut() {
                map.remove("shadow");
                map.remove("tenants");
            }
            let read = PluginRecord::from_bytes(old.to_string().as_bytes()).expect("decode");
            prop_assert_eq!(read, PluginRecord { shadow: None, tenants: None, ..record });
        }
    }

    #[test]
    fn sha256_of_nothing() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
