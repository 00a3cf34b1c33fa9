//! The seam between the plugin host imports and where their data lives. The imports (state,
//! timers, profile; the clock is the `now` each call is given) run against a [`Stores`]: the
//! shard's [`ShardStores`] (write-behind cache over sled, the durable timer wheel, a cache of the
//! profiles) on a running hub, or [`MemoryStores`] for a plugin run offline on a virtual clock (the
//! plugin test runner, backtests, shadow runs). Either way the plugin runs in the same sandbox.

use crate::quota::Usage;
use crate::state::{DueTimer, PluginSlot, ProfileCache, StateCache, TimerWheel};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Why a store could not answer an import; the call traps with it.
#[derive(Debug, thiserror::Error)]
#[error("state storage: {0}")]
pub struct StoreError(#[from] sled::Error);

/// What the host imports read and write, scoped by the host to a plugin and an actor.
pub trait Stores: Any + Send {
    fn state(&mut self, slot: PluginSlot, actor: &str, key: &str) -> Result<Option<&[u8]>, StoreError>;
    /// Set (`Some`) or delete (`None`) a key.
    fn set_state(&mut self, slot: PluginSlot, actor: &str, key: &str, value: Option<Vec<u8>>);
    fn set_timer(&mut self, plugin: &str, actor: &str, id: &str, due: i64, payload: Vec<u8>);
    fn cancel_timer(&mut self, plugin: &str, actor: &str, id: &str);
    fn has_timer(&mut self, plugin: &str, actor: &str, id: &str) -> bool;
    /// The quotas of the actor's tenant on stored state and timers, and what it holds against
    /// them, if it has such quotas (offline runs have none).
    fn quota(&self, actor: &str) -> Option<Arc<Usage>> {
        let _ = actor;
        None
    }
    /// The actor's profile as a MessagePack map.
    fn profile(&mut self, actor: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// For handing the concrete stores back to their owner after a call.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// The per-shard stores plugins read and write through their imports.
pub struct ShardStores {
    pub state: StateCache,
    pub timers: TimerWheel,
    pub profiles: ProfileCache,
}

impl Stores for ShardStores {
    fn state(&mut self, slot: PluginSlot, actor: &str, key: &str) -> Result<Option<&[u8]>, StoreError> {
        Ok(self.state.get(slot, actor, key)?)
    }

    fn set_state(&mut self, slot: PluginSlot, actor: &str, key: &str, value: Option<Vec<u8>>) {
        self.state.set(slot, actor, key, value);
    }

    fn set_timer(&mut self, plugin: &str, actor: &str, id: &str, due: i64, payload: Vec<u8>) {
        self.timers.set(plugin, actor, id, due, payload);
    }

    fn cancel_timer(&mut self, plugin: &str, actor: &str, id: &str) {
        self.timers.cancel(plugin, actor, id);
    }

    fn has_timer(&mut self, plugin: &str, actor: &str, id: &str) -> bool {
        self.timers.contains(plugin, actor, id)
    }

    fn quota(&self, actor: &str) -> Option<Arc<Usage>> {
        self.state.quotas().of(actor).cloned()
    }

    fn profile(&mut self, actor: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.profiles.get(actor)?)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Stores that live in memory only, for running plugins offline: nothing is written to disk, and
/// timers wait in a map until the caller's virtual clock reaches them ([`MemoryStores::pop_due`]).
#[derive(Default)]
pub struct MemoryStores {
    state: HashMap<(PluginSlot, String, String), Vec<u8>>,
    /// (plugin, actor, id) → (due, payload).
    timers: BTreeMap<TimerKey, (i64, Vec<u8>)>,
    /// The same timers by due time, so the next one due is found without a scan (a backtest
    /// holds a timer for many actors at once).
    by_due: BTreeSet<(i64, TimerKey)>,
    profiles: HashMap<String, Vec<u8>>,
    /// Where profiles not seeded come from: a running hub's, read only (backtests).
    stored_profiles: Option<ProfileCache>,
}

/// (plugin, actor, id).
type TimerKey = (String, String, String);

impl std::fmt::Debug for MemoryStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStores")
            .field("state", &self.state.len())
            .field("timers", &self.timers.len())
            .field("profiles", &self.profiles.len())
            .finish_non_exhaustive()
    }
}

impl MemoryStores {
    /// Profiles read from `stored` (a running hub's, never written to) unless seeded.
    pub fn reading_profiles(stored: ProfileCache) -> MemoryStores {
        MemoryStores {
            stored_profiles: Some(stored),
            ..MemoryStores::default()
        }
    }

    /// Seed an actor's profile (a MessagePack map).
    pub fn put_profile(&mut self, actor: &str, profile: Vec<u8>) {
        self.profiles.insert(actor.to_owned(), profile);
    }

    /// Timers still pending, earliest first.
    pub fn pending(&self) -> Vec<DueTimer> {
        self.by_due
            .iter()
            .filter_map(|(due, key)| {
                let (owner, actor, id) = key.clone();
                let payload = self.timers.get(key)?.1.clone();
                Some(DueTimer {
                    owner,
                    actor,
                    id,
                    due: *due,
                    payload,
                })
            })
            .collect()
    }

    /// When the earliest timer is due.
    pub fn next_due(&self) -> Option<i64> {
        self.by_due.first().map(|(due, _)| *due)
    }

    /// Forget everything about `actor`: its state in every plugin, its timers, a seeded profile.
    pub fn forget_actor(&mut self, actor: &str) {
        self.state.retain(|(_, a, _), _| a != actor);
        let keys: Vec<TimerKey> = self.timers.keys().filter(|(_, a, _)| a == actor).cloned().collect();
        for (plugin, actor, id) in keys {
            self.cancel_timer(&plugin, &actor, &id);
        }
        self.profiles.remove(actor);
    }

    /// Take the earliest timer due at `now` or before, if any.
    pub fn pop_due(&mut self, now: i64) -> Option<DueTimer> {
        let first = self.by_due.first().filter(|(due, _)| *due <= now)?.clone();
        self.by_due.remove(&first);
        let (_, key) = first;
        let (due, payload) = self.timers.remove(&key)?;
        let (owner, actor, id) = key;
        Some(DueTimer {
            owner,
            actor,
            id,
            due,
            payload,
        })
    }
}

impl Stores for MemoryStores {
    fn state(&mut self, slot: PluginSlot, actor: &str, key: &str) -> Result<Option<&[u8]>, StoreError> {
        Ok(self
            .state
            .get(&(slot, actor.to_owned(), key.to_owned()))
            .map(Vec::as_slice))
    }

    fn set_state(&mut self, slot: PluginSlot, actor: &str, key: &str, value: Option<Vec<u8>>) {
        let k = (slot, actor.to_owned(), key.to_owned());
        match value {
            Some(v) => self.state.insert(k, v),
            None => self.state.remove(&k),
        };
    }

    fn set_timer(&mut self, plugin: &str, actor: &str, id: &str, due: i64, payload: Vec<u8>) {
        let key = (plugin.to_owned(), actor.to_owned(), id.to_owned());
        if let Some((old, _)) = self.timers.insert(key.clone(), (due, payload)) {
            self.by_due.remove(&(old, key.clone()));
        }
        self.by_due.insert((due, key));
    }

    fn cancel_timer(&mut self, plugin: &str, actor: &str, id: &str) {
        let key = (plugin.to_owned(), actor.to_owned(), id.to_owned());
        if let Some((due, _)) = self.timers.remove(&key) {
            self.by_due.remove(&(due, key));
        }
    }

    fn has_timer(&mut self, plugin: &str, actor: &str, id: &str) -> bool {
        let key = (plugin.to_owned(), actor.to_owned(), id.to_owned());
        self.timers.contains_key(&key)
    }

    fn profile(&mut self, actor: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match (self.profiles.get(actor), &mut self.stored_profiles) {
            (Some(seeded), _) => Ok(Some(seeded.clone())),
            (None, Some(stored)) => Ok(stored.get(actor)?),
            (None, None) => Ok(None),
        }
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PluginLimits;
    use crate::event::Event;
    use crate::runtime::{Output, PluginInstance, PluginModule, Runtime};
    use serde_json::json;
    use std::sync::Arc;

    const MINUTE: i64 = 60_000;

    proptest::proptest! {
        #[test]
        fn timers_come_due_in_due_order_as_last_set(
            ops in proptest::collection::vec((0u8..4, 0u8..3, 0i64..100, proptest::bool::ANY), 0..60),
        ) {
            let mut stores = MemoryStores::default();
            let mut model: BTreeMap<(String, String), i64> = BTreeMap::new();
            for (actor, id, due, set) in ops {
                let (actor, id) = (format!("a{actor}"), format!("t{id}"));
                if set {
                    stores.set_timer("p", &actor, &id, due, vec![]);
                    model.insert((actor, id), due);
                } else {
                    stores.cancel_timer("p", &actor, &id);
                    model.remove(&(actor, id));
                }
            }
            proptest::prop_assert_eq!(stores.pending().len(), model.len());
            let mut fired = Vec::new();
            while let Some(t) = stores.pop_due(50) {
                fired.push((t.due, (t.actor, t.id)));
            }
            let mut expected: Vec<_> = model.iter().filter(|(_, d)| **d <= 50).map(|(k, d)| (*d, k.clone())).collect();
            expected.sort();
            proptest::prop_assert_eq!(fired, expected);
            proptest::prop_assert!(stores.pending().iter().all(|t| t.due > 50));
        }
    }

    #[test]
    fn forgetting_an_actor_takes_its_state_timers_and_profile_and_nothing_else() {
        let mut stores = MemoryStores::default();
        for actor in ["ann", "bob"] {
            stores.set_state(PluginSlot(0), actor, "k", Some(vec![1]));
            stores.set_timer("p", actor, "t", 5, vec![]);
            stores.put_profile(actor, vec![0x80]);
        }
        stores.forget_actor("ann");
        assert!(stores.state(PluginSlot(0), "ann", "k").expect("state").is_none());
        assert!(stores.profile("ann").expect("profile").is_none());
        assert_eq!(
            stores.pending().iter().map(|t| t.actor.as_str()).collect::<Vec<_>>(),
            ["bob"]
        );
        assert_eq!(
            stores.state(PluginSlot(0), "bob", "k").expect("state"),
            Some(&[1u8][..])
        );
        assert_eq!(stores.next_due(), Some(5));
    }

    #[test]
    fn a_plugin_runs_in_memory_on_a_virtual_clock() {
        let runtime = Runtime::new(PluginLimits::default()).expect("runtime");
        let wasm = std::fs::read(format!("{}/cart_abandonment.wasm", crate::EXAMPLE_PLUGINS)).expect("plugin built");
        let module = PluginModule::load(&runtime, &wasm, &json!({"window": "30m"})).expect("valid plugin");
        let mut instance =
            PluginInstance::new(Arc::new(module), "cart-abandonment".into(), PluginSlot(0)).expect("instance");
        let mut stores = Some(Box::new(MemoryStores::default()));

        // The clock is the events' time: a 30-minute window passes in no time at all.
        let t0 = 1_796_000_000_000;
        let cart = json!({"items": [{"sku": "A1", "name": "Shoes", "price": 59.9, "qty": 1}], "total": 59.9});
        let event = Event {
            id: "e1".into(),
            kind: "cart.updated".into(),
            actor: "u1".into(),
            time: t0,
            source: "test".into(),
            payload: rmp_serde::to_vec_named(&cart).expect("payload"),
        };
        let out = instance.on_event(&mut stores, &event, t0).expect("call");
        assert!(out.is_empty(), "{out:?}");
        let memory = stores.as_mut().expect("the stores come back");
        let pending = memory.pending();
        assert_eq!((pending.len(), pending[0].due), (1, t0 + 30 * MINUTE));
        assert!(memory.pop_due(t0 + 30 * MINUTE - 1).is_none());
        let due = memory.pop_due(t0 + 30 * MINUTE).expect("due at the end of the window");

        let out = instance.on_timer(&mut stores, &due, due.due).expect("timer call");
        assert!(
            matches!(&out[..], [Output::Action { name, category, .. }] if name == "offer.cart_reminder" && category == "offer"),
            "{out:?}"
        );
        assert!(stores.as_ref().expect("stores").pending().is_empty());
    }
}
