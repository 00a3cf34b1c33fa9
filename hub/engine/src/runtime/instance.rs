//! One live instance of a plugin on one shard, and the sandbox around each call.
//!
//! Lifecycle: created from a [`PluginModule`] (instantiate, then `init(config)`), called for
//! events and timers until a call traps; a trapped instance is poisoned (wasmtime refuses to
//! enter it again), so [`PluginInstance::recover`] throws the store away and builds a fresh one.
//! Plugin state lives in the shard's stores, never in the instance, so nothing is lost.

use super::Output;
use super::bindings::{Plugin, wit};
use super::host::HostState;
use super::module::{Description, PluginModule};
use super::stores::Stores;
use crate::dead_letter::Reason;
use crate::event::Event;
use crate::state::{DueTimer, PluginSlot};
use std::sync::Arc;
use wasmtime::{Store, Trap};

/// Why a plugin call did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("deadline of {0} ms exceeded (CPU time of the call)")]
    Deadline(u64),
    /// The call blocked (it did not compute) past the cap on a call's wall time.
    #[error("deadline of {0} ms of wall-clock time exceeded (the call blocked)")]
    Stalled(u64),
    #[error("memory limit of {0} bytes exceeded")]
    Memory(usize),
    #[error("panicked: {0}")]
    Panic(String),
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin returned an error: its own message.
    #[error("{0}")]
    Plugin(String),
    /// The call returned outputs the hub cannot take (see `runtime::outputs`).
    #[error("{0}")]
    Output(String),
    /// The call's writes would take its tenant past a quota on what it stores.
    #[error("{0}")]
    Quota(#[from] crate::quota::Exceeded),
    /// The stores could not answer what the quota check asked (sled failed).
    #[error("{0}")]
    Storage(String),
}

impl CallError {
    /// The dead-letter reason.
    pub fn reason(&self) -> Reason {
        match self {
            CallError::Deadline(_) | CallError::Stalled(_) => Reason::Deadline,
            CallError::Memory(_) => Reason::Memory,
            CallError::Panic(_) => Reason::Panic,
            CallError::Trap(_) => Reason::Trap,
            CallError::Plugin(_) => Reason::PluginError,
            CallError::Output(_) => Reason::InvalidOutput,
            CallError::Quota(_) => Reason::Quota,
            CallError::Storage(_) => Reason::Trap,
        }
    }

    /// A trap poisons the instance; a returned error, or a refusal by the hub, does not.
    pub fn is_trap(&self) -> bool {
        !matches!(
            self,
            CallError::Plugin(_) | CallError::Output(_) | CallError::Quota(_) | CallError::Storage(_)
        )
    }
}

pub struct PluginInstance {
    module: Arc<PluginModule>,
    store: Store<HostState>,
    plugin: Option<Plugin>,
}

impl PluginInstance {
    /// Instantiate `module` as plugin `name` and run its `init` with the module's config.
    pub fn new(module: Arc<PluginModule>, name: Arc<str>, slot: PluginSlot) -> Result<PluginInstance, CallError> {
        let mut instance = Self::unstarted(module, name, slot);
        instance.start()?;
        Ok(instance)
    }

    /// Like [`PluginInstance::new`], but a failed start leaves the instance poisoned (the
    /// caller's supervision retries it) instead of returning no instance at all.
    pub fn starting(
        module: Arc<PluginModule>,
        name: Arc<str>,
        slot: PluginSlot,
    ) -> (PluginInstance, Option<CallError>) {
        let mut instance = Self::unstarted(module, name, slot);
        let failed = instance.start().err();
        (instance, failed)
    }

    fn unstarted(module: Arc<PluginModule>, name: Arc<str>, slot: PluginSlot) -> PluginInstance {
        let store = new_store(&module, name, slot);
        PluginInstance {
            module,
            store,
            plugin: None,
        }
    }

    pub fn module(&self) -> &Arc<PluginModule> {
        &self.module
    }

    /// Whether the last call trapped and the instance awaits [`PluginInstance::recover`].
    pub fn is_poisoned(&self) -> bool {
        self.plugin.is_none()
    }

    /// Replace a poisoned instance with a fresh one.
    pub fn recover(&mut self) -> Result<(), CallError> {
        let slot = self.store.data().slot;
        let name = self.store.data().plugin.clone();
        self.store = new_store(&self.module, name, slot);
        self.plugin = None;
        self.start()
    }

    fn start(&mut self) -> Result<(), CallError> {
        arm(&mut self.store, &self.module);
        let plugin = self
            .module
            .pre
            .instantiate(&mut self.store)
            .map_err(|e| classify(e, &self.store, &self.module))?;
        arm(&mut self.store, &self.module);
        match plugin.call_init(&mut self.store, &self.module.config) {
            Ok(Ok(())) => {
                self.plugin = Some(plugin);
                Ok(())
            }
            Ok(Err(msg)) => Err(CallError::Plugin(msg)),
            Err(e) => Err(classify(e, &self.store, &self.module)),
        }
    }

    /// Call `describe()` on a throw-away instance (no `init`: describe must not need config).
    pub(super) fn describe(module: &PluginModule) -> Result<Description, CallError> {
        let mut store = new_store(module, "probe".into(), PluginSlot::PROBE);
        arm(&mut store, module);
        let plugin = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(e, &store, module))?;
        arm(&mut store, module);
        let d = plugin
            .call_describe(&mut store)
            .map_err(|e| classify(e, &store, module))?;
        Ok(Description {
            name: d.name,
            version: d.version,
            subscribes: d.subscribes,
            emits: d.emits,
        })
    }

    /// Handle one event of one actor; `stores` is lent to the instance for the call, and `now`
    /// is what the plugin's clock reads (the hub's, or a virtual one).
    pub fn on_event<S: Stores>(
        &mut self,
        stores: &mut Option<Box<S>>,
        event: &Event,
        now: i64,
    ) -> Result<Vec<Output>, CallError> {
        let arg = wit::Event {
            id: &event.id,
            kind: &event.kind,
            // The plugin sees the id as given; its tenant scopes what the call touches.
            actor: crate::tenant::split(&event.actor).1,
            time: event.time,
            source: &event.source,
            payload: &event.payload,
        };
        let delivering = event.kind.starts_with(crate::event::ACTION_KIND_PREFIX);
        self.call(stores, &event.actor, now, delivering, |plugin, store| {
            plugin.call_on_event(store, arg)
        })
    }

    /// A timer of this plugin came due.
    pub fn on_timer<S: Stores>(
        &mut self,
        stores: &mut Option<Box<S>>,
        timer: &DueTimer,
        now: i64,
    ) -> Result<Vec<Output>, CallError> {
        let arg = wit::Timer {
            id: &timer.id,
            actor: crate::tenant::split(&timer.actor).1,
            due: timer.due,
            payload: &timer.payload,
        };
        self.call(stores, &timer.actor, now, false, |plugin, store| {
            plugin.call_on_timer(store, arg)
        })
    }

    /// Run one call atomically: its writes reach `stores` only if it returns `Ok` and its
    /// outputs are valid (`delivering`: the call delivers an action, so it may not propose one).
    fn call<S: Stores>(
        &mut self,
        stores: &mut Option<Box<S>>,
        actor: &str,
        now: i64,
        delivering: bool,
        f: impl FnOnce(&Plugin, &mut Store<HostState>) -> wasmtime::Result<Result<Vec<wit::Output>, String>>,
    ) -> Result<Vec<Output>, CallError> {
        let Some(plugin) = self.plugin.as_ref() else {
            return Err(CallError::Trap("instance is poisoned by an earlier trap".into()));
        };
        arm(&mut self.store, &self.module);
        let data = self.store.data_mut();
        data.actor.clear();
        data.actor.push_str(actor);
        data.now = now;
        data.stores = stores.take().map(|s| s as Box<dyn Stores>);
        let result = f(plugin, &mut self.store);
        let data = self.store.data_mut();
        // The stores go back to their owner as the type it lent.
        *stores = data.stores.take().and_then(|s| s.into_any().downcast::<S>().ok());
        let outcome = match result {
            Ok(Ok(outputs)) => {
                let outputs: Vec<Output> = outputs.into_iter().map(from_wit).collect();
                super::outputs::check(&outputs, delivering, self.module.runtime.limits()).map(|()| outputs)
            }
            Ok(Err(msg)) => Err(CallError::Plugin(msg)),
            Err(e) => {
                let err = classify(e, &self.store, &self.module);
                self.plugin = None;
                Err(err)
            }
        };
        let data = self.store.data_mut();
        let outcome = match (outcome, stores.as_deref_mut()) {
            (Ok(outputs), Some(stores)) => data
                .writes
                .within_quota(stores, &data.plugin, data.slot, &data.actor)
                .map(|()| {
                    data.writes.apply(stores, &data.plugin, data.slot, &data.actor);
                    outputs
                }),
            (outcome, _) => outcome,
        };
        if outcome.is_err() {
            data.writes.discard();
        }
        outcome
    }
}

/// A fresh store for plugin `name`: state and timers belong to the name, not the module, so a
/// new version (or the same module under a second name) sees the right data.
fn new_store(module: &PluginModule, name: Arc<str>, slot: PluginSlot) -> Store<HostState> {
    let limits = module.runtime.limits();
    let host = HostState::new(name, slot, limits.memory_bytes);
    let mut store = Store::new(&module.runtime.engine, host);
    store.limiter(|host| &mut host.limiter);
    let runtime = module.runtime.clone();
    store.epoch_deadline_callback(move |mut cx| cx.data_mut().deadline.next(runtime.ticks()));
    store
}

/// Give the next call (or instantiation) its full budget and a clean memory-cap flag.
fn arm(store: &mut Store<HostState>, module: &PluginModule) {
    let budget = module.runtime.budget();
    let data = store.data_mut();
    data.limiter.hit = false;
    data.deadline.begin(module.runtime.ticks(), budget);
    store.set_epoch_deadline(budget.first_ticks());
}

/// Turn a wasmtime error into the reason an admin can act on.
fn classify(err: wasmtime::Error, store: &Store<HostState>, module: &PluginModule) -> CallError {
    let host = store.data();
    if host.limiter.hit {
        return CallError::Memory(module.runtime.limits().memory_bytes);
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => match host.deadline.exceeded {
            Some(super::deadline::Exceeded::Wall) => CallError::Stalled(module.runtime.limits().call_wall_timeout_ms),
            _ => CallError::Deadline(module.runtime.limits().call_timeout_ms),
        },
        Some(Trap::UnreachableCodeReached) => {
            let stderr = host.stderr.contents();
            let text = String::from_utf8_lossy(&stderr);
            match text.find("panicked") {
                Some(at) => CallError::Panic(text[at..].trim().chars().take(500).collect()),
                None => CallError::Trap("unreachable code reached (the plugin aborted)".into()),
            }
        }
        Some(trap) => CallError::Trap(trap.to_string()),
        None => CallError::Trap(format!("{err:#}")),
    }
}

fn from_wit(output: wit::Output) -> Output {
    match output {
        wit::Output::Emit(e) => Output::Emit {
            kind: e.kind,
            actor: e.actor,
            payload: e.payload,
        },
        wit::Output::Action(a) => Output::Action {
            name: a.name,
            category: a.category,
            priority: a.priority,
            dedup_key: a.dedup_key,
            payload: a.payload,
        },
        wit::Output::Deliver(d) => Output::Deliver {
            channel: d.channel,
            target: d.target,
            body: d.body,
        },
    }
}
