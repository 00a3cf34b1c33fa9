//! What the hub holds about one actor, and erasing it: the answers of a shard to the admin API's
//! `GET /api/actors/{id}` and `DELETE /api/actors/{id}`.
//!
//! The actor's shard answers between events (see `ShardMsg::Actor`), so a view includes every
//! event routed before the request, and an erase cannot interleave with the actor's events.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A question for the shard that owns an actor.
pub enum ActorRequest {
    Inspect(tokio::sync::oneshot::Sender<ActorState>),
    Erase(tokio::sync::oneshot::Sender<Result<Erased, String>>),
}

/// Each plugin's state and the pending timers of one actor.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActorState {
    /// Plugin name → key → value (MessagePack decoded to JSON; other bytes as `{"bytes_hex"}`).
    #[schema(value_type = Object)]
    pub state: BTreeMap<String, BTreeMap<String, serde_json::Value>>,
    pub timers: Vec<PendingTimer>,
    /// The latest actions proposed for the actor, newest last.
    pub recent_actions: Vec<RecentAction>,
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

/// One action as remembered for an actor.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecentAction {
    pub id: String,
    pub name: String,
    pub category: String,
    pub priority: i32,
    pub plugin: String,
    /// RFC 3339.
    pub time: String,
}

/// How many actions are remembered per actor.
pub const RECENT_ACTIONS: usize = 20;

/// What an erase removed.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Erased {
    pub state_keys: usize,
    pub timers: usize,
    pub recent_actions: usize,
    pub profile: bool,
}

/// Plugin data as JSON: MessagePack decoded, anything else as hex.
pub fn decode_value(bytes: &[u8]) -> serde_json::Value {
    match rmp_serde::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => v,
        Err(_) => {
            let hex = bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
            serde_json::json!({ "bytes_hex": hex })
        }
    }
}
