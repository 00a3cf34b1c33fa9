//! The host imports a plugin sees: state, timers, profile, clock and log, each scoped to the
//! plugin and the actor of the current call.
//!
//! The imports run against a [`Stores`] (see `runtime/stores.rs`): a shard's stores, shared by
//! all plugin instances of that shard, or stores in memory for an offline run. A wasmtime store
//! must own its data, so the caller moves its boxed stores into the instance's [`HostState`] for
//! the duration of a call and takes them back afterwards: one pointer move each way, no locks,
//! no reference counting.
//!
//! A call is atomic: its state writes and timer changes go to a journal ([`CallWrites`]) that
//! its own reads see, and reach the shard's stores only when the call returns `Ok` with valid
//! outputs. A call that traps or fails leaves nothing behind, so replaying its dead letter
//! applies the event once.

use super::bindings::hub::plugin::{clock, log, profile, state, timers, types};
use super::instance::CallError;
use super::stores::Stores;
use crate::quota::{self, Growth};
use crate::state::PluginSlot;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The data of one plugin instance's wasmtime store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limiter: MemoryCap,
    pub(super) plugin: Arc<str>,
    pub(super) slot: PluginSlot,
    /// The actor of the current call (a reused buffer).
    pub(super) actor: String,
    /// The hub's clock for the current call.
    pub(super) now: i64,
    /// Present only during a call; see the module docs.
    pub(super) stores: Option<Box<dyn Stores>>,
    /// The guest's stderr, where Rust guests write their panic message.
    pub(super) stderr: MemoryOutputPipe,
    /// What the current call wrote, applied when it succeeds.
    pub(super) writes: CallWrites,
    /// The current call's budget, checked whenever the epoch deadline passes.
    pub(super) deadline: super::deadline::Deadline,
}

/// One timer change of a call.
enum TimerWrite {
    Set { id: String, due: i64, payload: Vec<u8> },
    Cancel { id: String },
}

/// The state writes and timer changes of one call, in call order. Buffers are kept between
/// calls, so journalling allocates nothing beyond the keys and values the guest hands over.
#[derive(Default)]
pub(super) struct CallWrites {
    /// Key → new value (`None`: deleted); one entry per key, the last write wins.
    state: Vec<(String, Option<Vec<u8>>)>,
    timers: Vec<TimerWrite>,
}

impl CallWrites {
    /// The value this call wrote for `key`, if it wrote one (`Some(None)`: deleted).
    fn read(&self, key: &str) -> Option<Option<&[u8]>> {
        self.state.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_deref())
    }

    fn write(&mut self, key: String, value: Option<Vec<u8>>) {
        match self.state.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.state.push((key, value)),
        }
    }

    /// Whether the journal may apply: refused when it would take the actor's tenant past its
    /// quota on stored state or pending timers (see `crate::quota`). Tenants without such a
    /// quota pass at the cost of one lookup.
    pub(super) fn within_quota(
        &self,
        stores: &mut dyn Stores,
        plugin: &str,
        slot: PluginSlot,
        actor: &str,
    ) -> Result<(), CallError> {
        let Some(usage) = stores.quota(actor) else {
            return Ok(());
        };
        let mut growth = Growth::default();
        for (key, value) in &self.state {
            let old = stores
                .state(slot, actor, key)
                .map_err(|e| CallError::Storage(e.to_string()))?
                .map(<[u8]>::len);
            let new = value.as_ref().map(Vec::len);
            growth.state_bytes += quota::state_entry_bytes(actor, key, new) - quota::state_entry_bytes(actor, key, old);
        }
        // Each timer id ends set or cancelled by its last change; it adds one if it was not
        // pending before and ends set, frees one if it was and ends cancelled.
        let mut last: Vec<(&str, bool)> = Vec::new();
        for change in &self.timers {
            let (id, set) = match change {
                TimerWrite::Set { id, .. } => (id.as_str(), true),
                TimerWrite::Cancel { id } => (id.as_str(), false),
            };
            match last.iter_mut().find(|(seen, _)| *seen == id) {
                Some(entry) => entry.1 = set,
                None => last.push((id, set)),
            }
        }
        for (id, set) in last {
            growth.timers += i64::from(set) - i64::from(stores.has_timer(plugin, actor, id));
        }
        Ok(usage.admit(growth)?)
    }

    /// Apply the journal to the stores, for plugin `plugin` in `slot` and `actor`.
    pub(super) fn apply(&mut self, stores: &mut dyn Stores, plugin: &str, slot: PluginSlot, actor: &str) {
        for (key, value) in self.state.drain(..) {
            stores.set_state(slot, actor, &key, value);
        }
        for change in self.timers.drain(..) {
            match change {
                TimerWrite::Set { id, due, payload } => stores.set_timer(plugin, actor, &id, due, payload),
                TimerWrite::Cancel { id } => stores.cancel_timer(plugin, actor, &id),
            }
        }
    }

    /// Forget the journal: the call failed.
    pub(super) fn discard(&mut self) {
        self.state.clear();
        self.timers.clear();
    }
}

impl HostState {
    pub(super) fn new(plugin: Arc<str>, slot: PluginSlot, memory_bytes: usize) -> HostState {
        let stderr = MemoryOutputPipe::new(4096);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new().stderr(stderr.clone()).build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap::new(memory_bytes),
            plugin,
            slot,
            actor: String::new(),
            now: 0,
            stores: None,
            stderr,
            writes: CallWrites::default(),
            deadline: super::deadline::Deadline::default(),
        }
    }

    /// The stores and the current actor, borrowed side by side.
    fn scope(&mut self) -> wasmtime::Result<(&mut dyn Stores, &str)> {
        let stores = self
            .stores
            .as_deref_mut()
            .ok_or_else(|| wasmtime::format_err!("host import called outside of an event or timer call"))?;
        Ok((stores, &self.actor))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it did, so a guest that aborts because an
/// allocation failed is reported as out of memory rather than as a generic trap.
pub(super) struct MemoryCap {
    max: usize,
    pub(super) hit: bool,
}

impl MemoryCap {
    fn new(max: usize) -> Self {
        MemoryCap { max, hit: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for HostState {}

impl state::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(written) = self.writes.read(&key) {
            return Ok(written.map(<[u8]>::to_vec));
        }
        let slot = self.slot;
        let (stores, actor) = self.scope()?;
        Ok(stores.state(slot, actor, &key)?.map(<[u8]>::to_vec))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.scope()?;
        self.writes.write(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.scope()?;
        self.writes.write(key, None);
        Ok(())
    }
}

impl timers::Host for HostState {
    fn set(&mut self, id: String, due: i64, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.scope()?;
        self.writes.timers.push(TimerWrite::Set { id, due, payload });
        Ok(())
    }

    fn cancel(&mut self, id: String) -> wasmtime::Result<()> {
        self.scope()?;
        self.writes.timers.push(TimerWrite::Cancel { id });
        Ok(())
    }
}

impl profile::Host for HostState {
    fn get(&mut self) -> wasmtime::Result<Option<Vec<u8>>> {
        let (stores, actor) = self.scope()?;
        Ok(stores.profile(actor)?)
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> i64 {
        self.now
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.plugin;
        let tenant = crate::tenant::name_of(&self.actor);
        let actor = crate::tenant::split(&self.actor).1;
        match level {
            log::Level::Trace => tracing::trace!(plugin, tenant, actor, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, tenant, actor, "{message}"),
            log::Level::Info => tracing::info!(plugin, tenant, actor, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, tenant, actor, "{message}"),
            log::Level::Error => tracing::error!(plugin, tenant, actor, "{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Exceeded, Kind, Quotas, Usage};
    use crate::runtime::stores::{MemoryStores, StoreError};

    /// The quota a call was refused for.
    fn refusal(result: Result<(), CallError>, what: &str) -> Exceeded {
        match result {
            Err(CallError::Quota(exceeded)) => exceeded,
            other => panic!("{what}: {other:?}"),
        }
    }

    /// Memory stores whose actors all belong to tenant `capped`.
    struct Capped {
        memory: MemoryStores,
        quotas: Quotas,
    }

    impl Stores for Capped {
        fn state(&mut self, slot: PluginSlot, actor: &str, key: &str) -> Result<Option<&[u8]>, StoreError> {
            self.memory.state(slot, actor, key)
        }
        fn set_state(&mut self, slot: PluginSlot, actor: &str, key: &str, value: Option<Vec<u8>>) {
            self.memory.set_state(slot, actor, key, value);
        }
        fn set_timer(&mut self, plugin: &str, actor: &str, id: &str, due: i64, payload: Vec<u8>) {
            self.memory.set_timer(plugin, actor, id, due, payload);
        }
        fn cancel_timer(&mut self, plugin: &str, actor: &str, id: &str) {
            self.memory.cancel_timer(plugin, actor, id);
        }
        fn has_timer(&mut self, plugin: &str, actor: &str, id: &str) -> bool {
            self.memory.has_timer(plugin, actor, id)
        }
        fn quota(&self, actor: &str) -> Option<Arc<Usage>> {
            self.quotas.of(actor).cloned()
        }
        fn profile(&mut self, actor: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.memory.profile(actor)
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
            self
        }
    }

    #[test]
    fn a_calls_growth_counts_each_key_and_timer_by_its_last_write() {
        const ACTOR: &str = "capped\u{1f}ann";
        let slot = PluginSlot(0);
        let mut stores = Capped {
            memory: MemoryStores::default(),
            quotas: crate::quota::tests::quotas(Some(1_000), Some(2)),
        };
        stores.set_state(slot, ACTOR, "k", Some(vec![0; 10]));
        stores.set_timer("p", ACTOR, "old", 5, vec![]);
        stores.set_timer("p", ACTOR, "kept", 5, vec![]);
        let usage = stores.quota(ACTOR).expect("counted");
        usage.add_timers(2);

        // A new timer set twice, one set then cancelled (which adds nothing) and a pending one
        // set again: one more pending, three in all, past the quota of two.
        let mut writes = CallWrites::default();
        for change in [
            TimerWrite::Set {
                id: "new".into(),
                due: 1,
                payload: vec![],
            },
            TimerWrite::Set {
                id: "new".into(),
                due: 2,
                payload: vec![],
            },
            TimerWrite::Set {
                id: "brief".into(),
                due: 1,
                payload: vec![],
            },
            TimerWrite::Cancel { id: "brief".into() },
            TimerWrite::Set {
                id: "kept".into(),
                due: 9,
                payload: vec![],
            },
        ] {
            writes.timers.push(change);
        }
        let refused = refusal(
            writes.within_quota(&mut stores, "p", slot, ACTOR),
            "three timers where two may be",
        );
        assert_eq!((refused.kind, refused.used, refused.adding), (Kind::Timers, 2, 1));

        // With a pending one cancelled it fits; a value grown by 5 bytes counts 5.
        writes.timers.push(TimerWrite::Cancel { id: "old".into() });
        writes.write("k".into(), Some(vec![0; 15]));
        writes.write("gone".into(), None);
        // 996 bytes held: 5 more reach 1,001, past 1,000.
        usage.add_state_bytes(996 - usage.state_bytes());
        let refused = refusal(
            writes.within_quota(&mut stores, "p", slot, ACTOR),
            "past the state quota",
        );
        assert_eq!((refused.kind, refused.adding), (Kind::StateBytes, 5));
        writes.write("k".into(), Some(vec![0; 14]));
        let fits = writes.within_quota(&mut stores, "p", slot, ACTOR);
        assert_eq!(fits, Ok(()), "4 more reach 1,000 exactly");
    }
}
