//! `--plugins DIR`: seed or update the registry from a folder at start.
//!
//! Every `*.wasm` is validated with its config (from the config file, by plugin name) before
//! anything is recorded. A file whose exact bytes and config are already a version of that
//! plugin changes nothing, so restarting with the same folder keeps whatever an admin made
//! active over the API; a new file or a new config becomes the next, active version.

use super::{AdminError, PluginRecord, Registry, sha256_hex};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read plugin folder {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot read {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("plugin {file} refused: {source}")]
    Refused { file: PathBuf, source: AdminError },
    #[error("plugins {first} and {second} are both named {name:?}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("config given for plugin {0:?}, but no plugin of that name is in the plugin folder")]
    UnknownConfig(String),
}

/// Seed the registry from every `*.wasm` in `dir`, sorted by file name.
pub(super) fn seed_dir(
    registry: &Registry,
    dir: &Path,
    configs: &BTreeMap<String, serde_json::Value>,
) -> Result<(), SeedError> {
    let read_dir = |source| SeedError::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    let empty = serde_json::Value::Object(Default::default());
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for file in files {
        let wasm = std::fs::read(&file).map_err(|source| SeedError::Read {
            file: file.clone(),
            source,
        })?;
        let refused = |source| SeedError::Refused {
            file: file.clone(),
            source,
        };
        let sha256 = sha256_hex(&wasm);
        // The name is only known after describe(), so validate with the config of the file stem
        // first and re-validate with the config of the declared name if it differs.
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .replace('_', "-");
        let mut config = configs.get(&stem).unwrap_or(&empty);
        let mut module = registry.module(&sha256, Some(&wasm), config).map_err(refused)?;
        if module.name() != stem {
            config = configs.get(module.name()).unwrap_or(&empty);
            module = registry.module(&sha256, Some(&wasm), config).map_err(refused)?;
        }
        let name = module.name().to_owned();
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(SeedError::Duplicate {
                name,
                first: first.clone(),
                second: file,
            });
        }
        seen.push((name.clone(), file.clone()));

        let existing = registry.store.plugin(&name).map_err(|e| refused(e.into()))?;
        let known = existing
            .as_ref()
            .is_some_and(|r: &PluginRecord| r.versions.iter().any(|v| v.sha256 == sha256 && v.config == *config));
        if known {
            tracing::info!(plugin = name, file = %file.display(), "plugin folder: already registered");
            continue;
        }
        registry.store.put_wasm(&sha256, &wasm).map_err(|e| refused(e.into()))?;
        let source = format!("dir:{}", file.display());
        let record = super::next_record(&name, existing, &module, sha256, wasm.len(), &source);
        registry.store.put_plugin(&record).map_err(|e| refused(e.into()))?;
        tracing::info!(plugin = name, version = record.active, file = %file.display(), "plugin folder: registered a new version");
    }
    if let Some(name) = configs.keys().find(|n| !seen.iter().any(|(s, _)| s == *n)) {
        return Err(SeedError::UnknownConfig(name.clone()));
    }
    Ok(())
}
