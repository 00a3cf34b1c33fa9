//! Which plugins run: loaded from a folder at start (every `*.wasm`, each validated with its
//! config before anything goes live).

use crate::runtime::{LoadError, PluginModule, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read plugin folder {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot read {file}: {source}")]
    Read { file: PathBuf, source: std::io::Error },
    #[error("plugin {file} refused: {source}")]
    Refused { file: PathBuf, source: LoadError },
    #[error("plugins {first} and {second} are both named {name:?}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("config given for plugin {0:?}, but no plugin of that name was loaded")]
    UnknownConfig(String),
}

/// Load and validate every `*.wasm` in `dir`, sorted by file name. Config comes from `configs`
/// by plugin name (the name the plugin gives in `describe()`).
pub fn load_dir(
    runtime: &Arc<Runtime>,
    dir: &Path,
    configs: &BTreeMap<String, serde_json::Value>,
) -> Result<Vec<Arc<PluginModule>>, RegistryError> {
    let read_dir = |source| RegistryError::ReadDir {
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
    let mut loaded: Vec<(PathBuf, Arc<PluginModule>)> = Vec::new();
    for file in files {
        let wasm = std::fs::read(&file).map_err(|source| RegistryError::Read {
            file: file.clone(),
            source,
        })?;
        // The name is only known after describe(), so validate with the config of the file stem
        // first and re-validate with the config of the declared name if it differs.
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .replace('_', "-");
        let refused = |source| RegistryError::Refused {
            file: file.clone(),
            source,
        };
        let mut module = PluginModule::load(runtime, &wasm, configs.get(&stem).unwrap_or(&empty)).map_err(refused)?;
        if module.name() != stem {
            let config = configs.get(module.name()).unwrap_or(&empty);
            module = PluginModule::load(runtime, &wasm, config).map_err(|source| RegistryError::Refused {
                file: file.clone(),
                source,
            })?;
        }
        if let Some((first, _)) = loaded.iter().find(|(_, m)| m.name() == module.name()) {
            return Err(RegistryError::Duplicate {
                name: module.name().to_owned(),
                first: first.clone(),
                second: file,
            });
        }
        tracing::info!(plugin = module.name(), version = module.description.version, file = %file.display(), "plugin loaded");
        loaded.push((file, Arc::new(module)));
    }
    if let Some(name) = configs
        .keys()
        .find(|n| !loaded.iter().any(|(_, m)| m.name() == n.as_str()))
    {
        return Err(RegistryError::UnknownConfig(name.clone()));
    }
    Ok(loaded.into_iter().map(|(_, m)| m).collect())
}
