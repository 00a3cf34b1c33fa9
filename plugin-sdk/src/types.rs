//! The plain-Rust shapes of what crosses the plugin boundary.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;

/// A plugin error: the message reaches the hub's dead-letter subject or the admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn msg(message: impl Into<String>) -> Self {
        Error(message.into())
    }
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

/// Encode a value as the MessagePack map every payload is.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    rmp_serde::to_vec_named(value).map_err(Error::from)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::msg(format!("cannot decode payload: {e}")))
}

/// One event of one actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub actor: String,
    /// Event time, ms since the Unix epoch.
    pub time: i64,
    pub source: String,
    /// MessagePack map.
    pub payload: Vec<u8>,
}

/// Kinds of the events that bring actions to delivery plugins start with this.
pub const ACTION_PREFIX: &str = "action.";

impl Event {
    /// Decode the payload into `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload)
    }

    /// For a delivery plugin: the name of the action this event brings (its kind is
    /// `action.<name>`, its id the action's id, its payload the action's payload).
    pub fn action_name(&self) -> Option<&str> {
        self.kind.strip_prefix(ACTION_PREFIX)
    }
}

/// A timer of this plugin that came due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub id: String,
    pub actor: String,
    pub due: i64,
    pub payload: Vec<u8>,
}

impl Timer {
    /// Decode what was stored with the timer.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload)
    }
}

/// An event for the hub to route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    pub kind: String,
    /// `None`: the actor of the current call.
    pub actor: Option<String>,
    pub payload: Vec<u8>,
}

impl Emitted {
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload)
    }
}

/// An action for the arbiter: an offer, a callback, an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub name: String,
    pub category: String,
    pub priority: i32,
    pub dedup_key: Option<String>,
    pub payload: Vec<u8>,
}

impl Action {
    /// An action `name` (e.g. `offer.cart_reminder`) of `category` (e.g. `offer`), priority 0.
    pub fn new(name: impl Into<String>, category: impl Into<String>) -> Self {
        Action {
            name: name.into(),
            category: category.into(),
            priority: 0,
            dedup_key: None,
            payload: Vec::new(),
        }
    }
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    pub fn dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }
    /// Attach a payload (any serde value that encodes as a map).
    pub fn with_payload<T: Serialize + ?Sized>(mut self, payload: &T) -> Result<Self, Error> {
        self.payload = encode(payload)?;
        Ok(self)
    }
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.payload)
    }
}

/// A rendered message for a delivery channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub channel: String,
    pub target: String,
    pub body: Vec<u8>,
}

/// What one call produced, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Emit(Emitted),
    Action(Action),
    Deliver(Delivery),
}

impl Output {
    pub fn as_emit(&self) -> Option<&Emitted> {
        match self {
            Output::Emit(e) => Some(e),
            _ => None,
        }
    }
    pub fn as_action(&self) -> Option<&Action> {
        match self {
            Output::Action(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_delivery(&self) -> Option<&Delivery> {
        match self {
            Output::Deliver(d) => Some(d),
            _ => None,
        }
    }
}

/// Who a plugin is and what it subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    pub name: String,
    pub version: String,
    pub subscribes: Vec<String>,
    pub emits: Vec<String>,
}

impl Description {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Description {
            name: name.into(),
            version: version.into(),
            subscribes: Vec::new(),
            emits: Vec::new(),
        }
    }
    /// Subscribe to an event kind; `*` matches one dot-separated token, a final `>` the rest.
    ///
    /// Delivery plugins subscribe to actions the arbiter let through with patterns that start
    /// with `action.`: `action.offer.*` takes every action named `offer.<something>`, `action.>`
    /// takes them all. Other patterns (even `>`) never match actions.
    pub fn subscribe(mut self, pattern: impl Into<String>) -> Self {
        self.subscribes.push(pattern.into());
        self
    }
    /// Declare an event kind or action name this plugin may produce.
    pub fn emits(mut self, kind: impl Into<String>) -> Self {
        self.emits.push(kind.into());
        self
    }
}
