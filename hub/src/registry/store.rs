//! The registry's records in sled: every version of every plugin (what it said about itself,
//! its config, the hash of its wasm), the wasm bytes (stored once per hash, so the same module
//! under two names or many config versions costs nothing extra), and compiled artifacts keyed by
//! the engine's compatibility and the wasm hash, so a restart does not recompile.

use crate::runtime::Description;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("registry record of {name:?} is unreadable: {source}")]
    Corrupt { name: String, source: serde_json::Error },
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
}

impl PluginRecord {
    pub fn version(&self, v: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }

    pub fn active(&self) -> Option<&VersionRecord> {
        self.version(self.active)
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
            plugins: db.open_tree("registry.plugins")?,
            wasm: db.open_tree("registry.wasm")?,
            artifacts: db.open_tree("registry.artifacts")?,
        })
    }

    pub fn plugins(&self) -> Result<Vec<PluginRecord>, StoreError> {
        self.plugins
            .iter()
            .map(|item| {
                let (key, value) = item?;
                serde_json::from_slice(&value).map_err(|source| StoreError::Corrupt {
                    name: String::from_utf8_lossy(&key).into_owned(),
                    source,
                })
            })
            .collect()
    }

    pub fn plugin(&self, name: &str) -> Result<Option<PluginRecord>, StoreError> {
        match self.plugins.get(name)? {
            Some(value) => serde_json::from_slice(&value)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    name: name.to_owned(),
                    source,
                }),
            None => Ok(None),
        }
    }

    /// Write a record and make it durable before the change goes live.
    pub fn put_plugin(&self, record: &PluginRecord) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).map_err(|source| StoreError::Corrupt {
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
        let in_use: std::collections::HashSet<String> = self
            .plugins()?
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

    #[test]
    fn sha256_of_nothing() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
