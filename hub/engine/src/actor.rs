//! What the hub holds about one actor, and erasing it: the answers of a shard to the admin API's
//! `GET /api/actors/{id}` and `DELETE /api/actors/{id}`.
//!
//! The actor's shard answers between events (see `ShardMsg::Actor`, and [`inspect`] and
//! [`erase`]), so a view includes every event routed before the request, and an erase cannot
//! interleave with the actor's events.

mod answers;

pub(crate) use answers::{erase, inspect};

use crate::arbiter::{Entry, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A question for the shard that owns an actor.
pub enum ActorRequest {
    Inspect(tokio::sync::oneshot::Sender<ActorState>),
    Erase(tokio::sync::oneshot::Sender<Result<Erased, String>>),
    /// Set a timer again, due now: the replay of a timer's dead letter.
    Rearm {
        plugin: String,
        id: String,
        payload: Vec<u8>,
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

/// Each plugin's state and the pending timers of one actor.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActorState {
    /// Plugin name → key → value (MessagePack decoded to JSON; other bytes as `{"bytes_hex"}`).
    #[schema(value_type = Object)]
    pub state: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    pub timers: Vec<PendingTimer>,
    /// The actor's action ledger: the arbiter's latest decisions, newest last.
    pub actions: Vec<ActionRecord>,
    /// Reading a plugin's state failed (the view is incomplete).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingTimer {
    pub plugin: String,
    pub id: String,
    /// RFC 3339.
    pub due: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// One decision of the arbiter, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActionRecord {
    pub id: String,
    pub name: String,
    pub category: String,
    pub priority: i32,
    pub plugin: String,
    /// RFC 3339.
    pub time: String,
    /// `delivered`, `suppressed`, or `held` (waiting for a higher-ranked action, see the
    /// category's `hold`).
    pub decision: String,
    /// Why it was suppressed: `duplicate`, `suppressed_by`, `outranked`, `category_limit`,
    /// `contact_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The reason, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
}

impl From<&Entry> for ActionRecord {
    fn from(e: &Entry) -> ActionRecord {
        let (decision, reason, detail) = match &e.outcome {
            Outcome::Delivered => ("delivered", None, None),
            Outcome::Suppressed(r) => ("suppressed", Some(r.label().to_owned()), Some(r.to_string())),
            Outcome::Held { until } => (
                "held",
                None,
                Some(format!(
                    "waiting until {} for a higher-ranked action",
                    crate::event::rfc3339(*until)
                )),
            ),
        };
        ActionRecord {
            id: e.id.clone(),
            name: e.name.clone(),
            category: e.category.clone(),
            priority: e.priority,
            plugin: e.plugin.clone(),
            time: crate::event::rfc3339(e.time),
            decision: decision.to_owned(),
            reason,
            detail,
            dedup_key: e.dedup_key.clone(),
        }
    }
}

/// What an erase removed.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Erased {
    pub state_keys: usize,
    pub timers: usize,
    /// Entries of the action ledger.
    pub actions: usize,
    pub profile: bool,
}

/// Plugin data as JSON: one whole MessagePack value decoded, anything else as hex (raw bytes
/// that merely start like MessagePack, e.g. a little-endian counter, are shown as they are).
pub fn decode_value(bytes: &[u8]) -> serde_json::Value {
    use serde::Deserialize;
    let mut rest = bytes;
    let decoded = serde_json::Value::deserialize(&mut rmp_serde::Deserializer::new(&mut rest));
    match decoded {
        Ok(v) if rest.is_empty() => v,
        _ => {
            let hex = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
            serde_json::json!({ "bytes_hex": hex })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode_value;
    use serde_json::json;

    #[test]
    fn raw_bytes_that_start_like_msgpack_are_shown_as_hex() {
        assert_eq!(decode_value(&5u32.to_le_bytes()), json!({"bytes_hex": "05000000"}));
        assert_eq!(decode_value(&[0x05]), json!(5));
        let map = rmp_serde::to_vec_named(&json!({"a": [1, "x"]})).expect("encode");
        assert_eq!(decode_value(&map), json!({"a": [1, "x"]}));
        assert_eq!(decode_value(&[]), json!({"bytes_hex": ""}));
    }
}
