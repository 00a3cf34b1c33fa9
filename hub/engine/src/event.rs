//! The hub's own types for what flows through it: events in, actions out.
//!
//! WIT types are converted to these at the runtime boundary (`runtime::instance`); nothing else
//! in the hub sees the generated bindings.

use crate::limits;
use serde::ser::{Serialize, SerializeMap, Serializer};
use std::fmt::Write as _;

/// One event of one actor. `payload` is the MessagePack encoding of a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub actor: String,
    /// Event time, ms since the Unix epoch.
    pub time: i64,
    pub source: String,
    pub payload: Vec<u8>,
}

/// An event on its way through the shards, with how many plugin hops produced it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub event: Event,
    pub hops: u8,
    /// When the hub received the input this event stems from (for event→action latency).
    pub received: std::time::Instant,
    /// Set on inputs from the input stream (durable mode): where the input stands there.
    pub input: Option<crate::durable::Ticket>,
    /// A replayed dead letter of a plugin's failure: only that plugin runs it, since the
    /// others handled the event the first time.
    pub only: Option<String>,
}

/// An action a plugin proposed, as the hub publishes it. (Serde: how a held action waits in
/// its durable timer.)
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    /// Deterministic: derived from the cause event's id, the plugin and the output's position,
    /// so a replay of the same input yields the same id (`Nats-Msg-Id` dedup downstream).
    pub id: String,
    pub name: String,
    pub category: String,
    pub priority: i32,
    pub dedup_key: Option<String>,
    pub actor: String,
    pub plugin: String,
    /// The id of the event (or timer) that caused it.
    pub cause: String,
    pub time: i64,
    pub payload: Vec<u8>,
}

/// A deterministic id for the `index`th output of `plugin` caused by `cause`.
pub fn derived_id(cause: &str, plugin: &str, index: usize) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(cause.as_bytes());
    h.update(&[0]);
    h.update(plugin.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    // `format!` would grow its buffer from empty; this runs for every output.
    let mut id = String::with_capacity(32);
    let _ = write!(id, "{:032x}", h.digest128());
    id
}

/// Serializes MessagePack bytes as the equivalent JSON (or any serde format) without an
/// intermediate value tree. Empty bytes serialize as an empty map.
pub struct MsgpackAsJson<'a>(pub &'a [u8]);

impl Serialize for MsgpackAsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            return s.serialize_map(Some(0))?.end();
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(self.0);
        serde_transcode::Transcoder::new(&mut de).serialize(s)
    }
}

impl Event {
    /// The JSON envelope (`{"id","kind","actor","tenant","time","source","payload"}`, `tenant`
    /// left out for the default one), as published on `hub.events.<kind>` and in dead letters,
    /// so it can be replayed onto `events.<kind>`.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            id: &'a str,
            kind: &'a str,
            actor: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            tenant: Option<&'a str>,
            time: i64,
            source: &'a str,
            payload: MsgpackAsJson<'a>,
        }
        // Sized for the usual case (JSON of a MessagePack map is up to about twice as long), so
        // the buffer of every published event is allocated once.
        let text = self.id.len() + self.kind.len() + self.actor.len() + self.source.len();
        let mut body = Vec::with_capacity(96 + text + 2 * self.payload.len());
        let (tenant, actor) = crate::tenant::split(&self.actor);
        serde_json::to_writer(
            &mut body,
            &Wire {
                id: &self.id,
                kind: &self.kind,
                actor,
                tenant,
                time: self.time,
                source: &self.source,
                payload: MsgpackAsJson(&self.payload),
            },
        )?;
        Ok(body)
    }
}

impl Action {
    /// The JSON body published on `hub.actions.<name>` (`tenant` left out for the default one).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            id: &'a str,
            name: &'a str,
            category: &'a str,
            priority: i32,
            dedup_key: Option<&'a str>,
            actor: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            tenant: Option<&'a str>,
            plugin: &'a str,
            cause: &'a str,
            time: i64,
            payload: MsgpackAsJson<'a>,
        }
        let (tenant, actor) = crate::tenant::split(&self.actor);
        serde_json::to_vec(&Wire {
            id: &self.id,
            name: &self.name,
            category: &self.category,
            priority: self.priority,
            dedup_key: self.dedup_key.as_deref(),
            actor,
            tenant,
            plugin: &self.plugin,
            cause: &self.cause,
            time: self.time,
            payload: MsgpackAsJson(&self.payload),
        })
    }
}

/// Event kinds that start with this are actions handed to delivery plugins, whose
/// subscriptions to actions start with it too (`action.offer.*`).
pub const ACTION_KIND_PREFIX: &str = "action.";

/// An input may not take a kind reserved for actions on their way to delivery.
pub fn check_input_kind(kind: &str) -> Result<(), String> {
    if kind.starts_with(ACTION_KIND_PREFIX) {
        return Err(format!(
            "event kinds starting with {ACTION_KIND_PREFIX:?} are reserved for actions on their way to delivery"
        ));
    }
    Ok(())
}

/// An event kind the hub accepts: at most [`limits::MAX_KIND_BYTES`] of dot-separated tokens
/// (kinds become subjects).
pub fn check_kind(kind: &str) -> Result<(), String> {
    if kind.len() > limits::MAX_KIND_BYTES || !is_subject_safe(kind) {
        return Err(format!(
            "kind {kind:?} must be at most {} bytes of dot-separated tokens without spaces or wildcards",
            limits::MAX_KIND_BYTES
        ));
    }
    Ok(())
}

/// An actor id the hub accepts: not empty, at most [`limits::MAX_ACTOR_BYTES`].
pub fn check_actor(actor: &str) -> Result<(), String> {
    if actor.is_empty() {
        return Err("the actor id is empty".into());
    }
    if actor.len() > limits::MAX_ACTOR_BYTES {
        return Err(format!(
            "the actor id is {} bytes long; at most {} are allowed",
            actor.len(),
            limits::MAX_ACTOR_BYTES
        ));
    }
    if actor.contains(crate::tenant::SEPARATOR) {
        return Err("the actor id contains U+001F, which the hub keeps to separate a tenant from its actors".into());
    }
    Ok(())
}

impl Event {
    /// Check the event against [`limits`]; the error says what is wrong, for a dead letter.
    pub fn check(&self) -> Result<(), String> {
        check_actor(&self.actor)?;
        if self.id.is_empty() || self.id.len() > limits::MAX_ID_BYTES {
            return Err(format!(
                "the event id must be 1 to {} bytes long (it is {})",
                limits::MAX_ID_BYTES,
                self.id.len()
            ));
        }
        check_kind(&self.kind)?;
        check_time(self.time)
    }
}

/// An event time the hub accepts: ms since the Unix epoch, up to the year 9999.
pub fn check_time(time: i64) -> Result<(), String> {
    if (limits::MIN_TIME_MS..=limits::MAX_TIME_MS).contains(&time) {
        Ok(())
    } else {
        Err(format!(
            "time {time} is out of range: ms since the Unix epoch, from {} to {}",
            limits::MIN_TIME_MS,
            limits::MAX_TIME_MS
        ))
    }
}

/// Whether `s` can stand as dot-separated tokens in a NATS subject (no wildcards, spaces or
/// empty tokens): event kinds and action names become subjects.
pub fn is_subject_safe(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'))
}

/// Wall clock in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch as RFC 3339 (what the admin API shows).
pub fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_id("e1", "p", 0), derived_id("e1", "p", 0));
        assert_ne!(derived_id("e1", "p", 0), derived_id("e1", "p", 1));
        assert_ne!(derived_id("e1", "p", 0), derived_id("e1", "q", 0));
    }

    #[test]
    fn payload_is_rendered_as_json() {
        let payload = rmp_serde::to_vec_named(&serde_json::json!({"a": [1, "x"], "b": {"c": true}})).expect("encode");
        let event = Event {
            id: "1".into(),
            kind: "k".into(),
            actor: "u".into(),
            time: 5,
            source: "s".into(),
            payload,
        };
        let json: serde_json::Value = serde_json::from_slice(&event.to_json().expect("json")).expect("parse");
        assert_eq!(json["payload"], serde_json::json!({"a": [1, "x"], "b": {"c": true}}));
        assert_eq!(json["actor"], "u");
    }

    #[test]
    fn subjects_refuse_wildcards_and_gaps() {
        assert!(is_subject_safe("offer.cart_reminder"));
        assert!(!is_subject_safe("offer.*"));
        assert!(!is_subject_safe("a..b"));
        assert!(!is_subject_safe("has space"));
        assert!(!is_subject_safe(""));
    }
}
