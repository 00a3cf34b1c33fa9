//! A plugin version ready to run: compiled, linked, and validated before it may go live.

use super::Runtime;
use super::bindings::PluginPre;
use super::instance::{CallError, PluginInstance};
use hub_plugin_sdk::pattern::{kind_matches, pattern_error};
use std::sync::Arc;
use wasmtime::component::Component;

/// What a plugin said about itself in `describe()`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub subscribes: Vec<String>,
    pub emits: Vec<String>,
}

impl Description {
    /// Whether an event of `kind` reaches this plugin. Subscriptions to actions (`action.…`) and
    /// to events are kept apart, so a plugin that takes every event (`>`) gets no actions.
    pub fn takes(&self, kind: &str) -> bool {
        let action = kind.starts_with(crate::event::ACTION_KIND_PREFIX);
        self.subscribes
            .iter()
            .any(|pat| pat.starts_with(crate::event::ACTION_KIND_PREFIX) == action && kind_matches(pat, kind))
    }
}

/// Why a plugin module was refused. Each message tells the admin what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("module is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly component: {0} (build plugins with `cargo build --target wasm32-wasip2`)")]
    NotAComponent(String),
    #[error("the component does not fit the hub:plugin/plugin@0.1.0 world: {0}")]
    WrongWorld(String),
    #[error("describe() failed: {0}")]
    Describe(CallError),
    #[error("describe() is not usable: {0}")]
    BadDescription(String),
    #[error("init rejected the config: {0}")]
    ConfigRejected(String),
    #[error("init trapped: {0}")]
    InitTrapped(CallError),
}

/// A compiled, validated plugin version with its config. Shards instantiate it.
pub struct PluginModule {
    pub(super) runtime: Arc<Runtime>,
    pub(super) pre: PluginPre<super::HostState>,
    pub description: Description,
    /// The JSON object handed to `init`.
    pub config: String,
}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("description", &self.description)
            .finish()
    }
}

const COMPONENT_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
const CORE_MODULE_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

impl PluginModule {
    /// Compile and validate `wasm`: the right kind of binary, the right world, a sane
    /// `describe()`, and an `init` that accepts `config`. Nothing of it is live yet.
    pub fn load(runtime: &Arc<Runtime>, wasm: &[u8], config: &serde_json::Value) -> Result<PluginModule, LoadError> {
        let component = Self::compile(runtime, wasm)?;
        Self::from_component(runtime, &component, config)
    }

    /// Check the size and header of `wasm` and compile it (the expensive step, 70–240 ms).
    pub fn compile(runtime: &Arc<Runtime>, wasm: &[u8]) -> Result<Component, LoadError> {
        let limit = runtime.limits().max_module_bytes;
        if wasm.len() > limit {
            return Err(LoadError::TooLarge {
                size: wasm.len(),
                limit,
            });
        }
        match wasm.get(..8) {
            Some(h) if h == COMPONENT_HEADER => {}
            Some(h) if h == CORE_MODULE_HEADER => {
                return Err(LoadError::NotAComponent(
                    "this is a core module, not a component".into(),
                ));
            }
            _ => return Err(LoadError::NotAComponent("no WebAssembly header".into())),
        }
        Component::from_binary(&runtime.engine, wasm).map_err(|e| LoadError::NotAComponent(format!("{e:#}")))
    }

    /// Link a compiled component against the hub's world and validate it with `config`
    /// (`describe()` sane, instantiates, `init` accepts the config), on a probe instance that
    /// never touches state.
    pub fn from_component(
        runtime: &Arc<Runtime>,
        component: &Component,
        config: &serde_json::Value,
    ) -> Result<PluginModule, LoadError> {
        if !config.is_object() {
            return Err(LoadError::ConfigRejected("the config must be a JSON object".into()));
        }
        let module = Arc::new(Self::described(runtime, component, config.to_string())?);
        match PluginInstance::new(module.clone(), "probe".into(), crate::state::PluginSlot::PROBE) {
            Ok(_) => {}
            Err(CallError::Plugin(msg)) => return Err(LoadError::ConfigRejected(msg)),
            Err(e) => return Err(LoadError::InitTrapped(e)),
        }
        Arc::try_unwrap(module).map_err(|_| LoadError::BadDescription("module still in use".into()))
    }

    /// What a compiled component says about itself (checked as for loading), without running
    /// its `init`: for tools that show a plugin before anyone chose its config.
    pub fn describe(runtime: &Arc<Runtime>, component: &Component) -> Result<Description, LoadError> {
        Ok(Self::described(runtime, component, String::new())?.description)
    }

    /// Link `component` against the hub's world and ask it to `describe()` itself.
    fn described(runtime: &Arc<Runtime>, component: &Component, config: String) -> Result<PluginModule, LoadError> {
        let instance_pre = runtime
            .linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = PluginPre::new(instance_pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let mut module = PluginModule {
            runtime: runtime.clone(),
            pre,
            description: Description {
                name: String::new(),
                version: String::new(),
                subscribes: Vec::new(),
                emits: Vec::new(),
            },
            config,
        };
        module.description = PluginInstance::describe(&module).map_err(LoadError::Describe)?;
        validate(&module.description)?;
        Ok(module)
    }

    pub fn name(&self) -> &str {
        &self.description.name
    }
}

/// Whether `name` can name a plugin: 1–64 letters, digits, '-' or '_' (it appears in subjects,
/// metric labels, sled tree names and URLs).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn validate(d: &Description) -> Result<(), LoadError> {
    if !valid_name(&d.name) {
        return Err(LoadError::BadDescription(format!(
            "name {:?} must be 1–64 characters of letters, digits, '-' or '_'",
            d.name
        )));
    }
    if d.subscribes.is_empty() {
        return Err(LoadError::BadDescription("it subscribes to no event kinds".into()));
    }
    if let Some(e) = d.subscribes.iter().find_map(|p| pattern_error(p)) {
        return Err(LoadError::BadDescription(e));
    }
    Ok(())
}
