//! A hub in memory, for testing plugin logic with `cargo test` and no wasm runtime.
//!
//! [`TestHub`] holds one plugin, a virtual clock and, per actor, the state, timers and profile the
//! real hub would keep. Advancing the clock fires due timers in due order, as the hub does.
//! The fake lives in a thread-local, so each test (each test thread) has its own.

use crate::pattern::kind_matches;
use crate::types::{Error, Event, Output, Timer, decode, encode};
use crate::{Context, Plugin, decode_config};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;

/// The start of the virtual clock: 2026-01-01T00:00:00Z.
pub const EPOCH: i64 = 1_767_225_600_000;

#[derive(Default)]
pub(crate) struct FakeHost {
    now: i64,
    state: HashMap<(String, String), Vec<u8>>,
    /// (actor, timer id) → (due, payload)
    timers: BTreeMap<(String, String), (i64, Vec<u8>)>,
    profiles: HashMap<String, Vec<u8>>,
    logs: Vec<String>,
}

thread_local! {
    static FAKE: RefCell<FakeHost> = RefCell::new(FakeHost::default());
}

/// The host imports, answered from the thread's fake.
pub(crate) mod fake {
    use super::FAKE;
    use crate::context::Level;

    pub fn now() -> i64 {
        FAKE.with(|f| f.borrow().now)
    }
    pub fn state_get(actor: &str, key: &str) -> Option<Vec<u8>> {
        FAKE.with(|f| f.borrow().state.get(&(actor.to_owned(), key.to_owned())).cloned())
    }
    pub fn state_set(actor: &str, key: &str, value: &[u8]) {
        FAKE.with(|f| {
            f.borrow_mut()
                .state
                .insert((actor.to_owned(), key.to_owned()), value.to_vec());
        })
    }
    pub fn state_delete(actor: &str, key: &str) {
        FAKE.with(|f| {
            f.borrow_mut().state.remove(&(actor.to_owned(), key.to_owned()));
        })
    }
    pub fn timer_set(actor: &str, id: &str, due: i64, payload: &[u8]) {
        FAKE.with(|f| {
            f.borrow_mut()
                .timers
                .insert((actor.to_owned(), id.to_owned()), (due, payload.to_vec()));
        })
    }
    pub fn timer_cancel(actor: &str, id: &str) {
        FAKE.with(|f| {
            f.borrow_mut().timers.remove(&(actor.to_owned(), id.to_owned()));
        })
    }
    pub fn profile_get(actor: &str) -> Option<Vec<u8>> {
        FAKE.with(|f| f.borrow().profiles.get(actor).cloned())
    }
    pub fn log(level: Level, message: &str) {
        FAKE.with(|f| f.borrow_mut().logs.push(format!("{level:?}: {message}")))
    }
}

/// One plugin running against an in-memory hub with a virtual clock.
pub struct TestHub<P: Plugin> {
    plugin: P,
    next_id: std::cell::Cell<u64>,
    _not_send: PhantomData<*const ()>,
}

impl<P: Plugin> TestHub<P> {
    /// Start a fresh hub (clock at [`EPOCH`], no state) with the plugin built from `config`.
    pub fn new(config: serde_json::Value) -> Result<Self, Error> {
        FAKE.with(|f| {
            *f.borrow_mut() = FakeHost {
                now: EPOCH,
                ..FakeHost::default()
            }
        });
        let plugin = P::new(decode_config(&config.to_string())?)?;
        Ok(TestHub {
            plugin,
            next_id: std::cell::Cell::new(0),
            _not_send: PhantomData,
        })
    }

    /// Re-create the plugin with a new config, keeping state, timers and clock (as the hub does).
    pub fn reconfigure(&mut self, config: serde_json::Value) -> Result<(), Error> {
        self.plugin = P::new(decode_config(&config.to_string())?)?;
        Ok(())
    }

    /// The virtual clock.
    pub fn now(&self) -> i64 {
        fake::now()
    }

    /// An event of `kind` for `actor` at the current virtual time.
    pub fn event<T: Serialize + ?Sized>(&self, kind: &str, actor: &str, payload: &T) -> Event {
        self.next_id.set(self.next_id.get() + 1);
        Event {
            id: format!("test-{}", self.next_id.get()),
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            time: self.now(),
            source: "test".to_owned(),
            payload: encode(payload).unwrap_or_default(),
        }
    }

    /// Deliver one event, as the hub would if the plugin subscribes to its kind.
    pub fn send(&mut self, event: Event) -> Result<Vec<Output>, Error> {
        let subscribed = P::describe().subscribes.iter().any(|p| kind_matches(p, &event.kind));
        if !subscribed {
            return Ok(Vec::new());
        }
        let mut cx = Context::new(event.actor.clone());
        self.plugin.on_event(&mut cx, &event)?;
        Ok(cx.into_outputs())
    }

    /// Move the clock forward by `ms`, firing every timer that comes due, in due order.
    pub fn advance(&mut self, ms: i64) -> Result<Vec<Output>, Error> {
        let until = self.now().saturating_add(ms);
        let mut outputs = Vec::new();
        while let Some(timer) = next_due(until) {
            FAKE.with(|f| {
                let mut f = f.borrow_mut();
                f.now = f.now.max(timer.due);
            });
            let mut cx = Context::new(timer.actor.clone());
            self.plugin.on_timer(&mut cx, &timer)?;
            outputs.extend(cx.into_outputs());
        }
        FAKE.with(|f| f.borrow_mut().now = until);
        Ok(outputs)
    }

    /// Set an actor's profile (any serde value that encodes as a map).
    pub fn set_profile<T: Serialize + ?Sized>(&mut self, actor: &str, profile: &T) -> Result<(), Error> {
        let bytes = encode(profile)?;
        FAKE.with(|f| f.borrow_mut().profiles.insert(actor.to_owned(), bytes));
        Ok(())
    }

    /// The plugin's state for `actor` under `key`.
    pub fn state<T: DeserializeOwned>(&self, actor: &str, key: &str) -> Result<Option<T>, Error> {
        fake::state_get(actor, key).map(|b| decode(&b)).transpose()
    }

    /// Ids of `actor`'s pending timers with their due times.
    pub fn timers(&self, actor: &str) -> Vec<(String, i64)> {
        FAKE.with(|f| {
            f.borrow()
                .timers
                .iter()
                .filter(|((a, _), _)| a == actor)
                .map(|((_, id), (due, _))| (id.clone(), *due))
                .collect()
        })
    }

    /// Log lines the plugin wrote, as `Level: message`.
    pub fn logs(&self) -> Vec<String> {
        FAKE.with(|f| f.borrow().logs.clone())
    }
}

fn next_due(until: i64) -> Option<Timer> {
    FAKE.with(|f| {
        let mut f = f.borrow_mut();
        let (key, due) = f
            .timers
            .iter()
            .filter(|(_, (due, _))| *due <= until)
            .min_by_key(|(_, (due, _))| *due)
            .map(|(k, (due, _))| (k.clone(), *due))?;
        let (_, payload) = f.timers.remove(&key)?;
        Some(Timer {
            id: key.1,
            actor: key.0,
            due,
            payload,
        })
    })
}
