//! What a plugin may do during one call, scoped to the current actor.

use crate::host;
use crate::types::{Action, Delivery, Emitted, Error, Output, decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Log levels, as in the WIT `log` interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The handle a plugin gets for one call: state, timers, profile and clock of the current actor,
/// and the outputs it produces, in order.
pub struct Context {
    actor: String,
    outputs: Vec<Output>,
}

impl Context {
    #[doc(hidden)]
    pub fn new(actor: String) -> Self {
        Context {
            actor,
            outputs: Vec::new(),
        }
    }

    #[doc(hidden)]
    pub fn into_outputs(self) -> Vec<Output> {
        self.outputs
    }

    /// The actor this call is for.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The hub's clock, ms since the Unix epoch (virtual in tests).
    pub fn now(&self) -> i64 {
        host::now()
    }

    /// This plugin's state for the current actor.
    pub fn state(&self) -> State<'_> {
        State { actor: &self.actor }
    }

    /// This plugin's durable timers for the current actor.
    pub fn timers(&self) -> Timers<'_> {
        Timers { actor: &self.actor }
    }

    /// The current actor's profile decoded as `T`, if there is one.
    pub fn profile<T: DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        host::profile_get(&self.actor).map(|bytes| decode(&bytes)).transpose()
    }

    /// Emit an event of `kind` for the current actor.
    pub fn emit<T: Serialize + ?Sized>(&mut self, kind: &str, payload: &T) -> Result<(), Error> {
        self.outputs.push(Output::Emit(Emitted {
            kind: kind.to_owned(),
            actor: None,
            payload: encode(payload)?,
        }));
        Ok(())
    }

    /// Emit an event of `kind` for another actor (re-keying: e.g. a channel instead of a viewer).
    pub fn emit_for<T: Serialize + ?Sized>(&mut self, actor: &str, kind: &str, payload: &T) -> Result<(), Error> {
        self.outputs.push(Output::Emit(Emitted {
            kind: kind.to_owned(),
            actor: Some(actor.to_owned()),
            payload: encode(payload)?,
        }));
        Ok(())
    }

    /// Propose an action to the arbiter.
    pub fn act(&mut self, action: Action) {
        self.outputs.push(Output::Action(action));
    }

    /// Hand a rendered message to a delivery channel (delivery plugins).
    pub fn deliver(&mut self, channel: &str, target: &str, body: impl Into<Vec<u8>>) {
        self.outputs.push(Output::Deliver(Delivery {
            channel: channel.to_owned(),
            target: target.to_owned(),
            body: body.into(),
        }));
    }

    /// Write a line to the hub's log, attributed to this plugin.
    pub fn log(&self, level: Level, message: &str) {
        host::log(level, message);
    }
}

/// Typed key/value state of this plugin for one actor (MessagePack on the wire).
pub struct State<'a> {
    actor: &'a str,
}

impl State<'_> {
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        host::state_get(self.actor, key).map(|bytes| decode(&bytes)).transpose()
    }
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        host::state_set(self.actor, key, &encode(value)?);
        Ok(())
    }
    pub fn delete(&self, key: &str) {
        host::state_delete(self.actor, key);
    }
}

/// Durable timers of this plugin for one actor.
pub struct Timers<'a> {
    actor: &'a str,
}

impl Timers<'_> {
    /// Fire timer `id` at `due` (ms since the epoch), replacing any timer with that id.
    pub fn set_at<T: Serialize + ?Sized>(&self, id: &str, due: i64, payload: &T) -> Result<(), Error> {
        host::timer_set(self.actor, id, due, &encode(payload)?);
        Ok(())
    }
    /// Fire timer `id` `delay_ms` from now.
    pub fn set_after<T: Serialize + ?Sized>(&self, id: &str, delay_ms: i64, payload: &T) -> Result<(), Error> {
        self.set_at(id, host::now().saturating_add(delay_ms), payload)
    }
    pub fn cancel(&self, id: &str) {
        host::timer_cancel(self.actor, id);
    }
}
