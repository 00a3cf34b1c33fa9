//! The push sink: devices (a mobile app, a web page) connect to `/push/{actor}` by WebSocket —
//! or, without an upgrade, as a server-sent-events stream — and receive the deliveries for that
//! actor at the moment they are made (`?tenant=<name>` for an actor of a tenant other than the
//! default; its device token is then made over `<tenant>` U+001F `<actor>`).
//!
//! One task owns the table of connections, so neither the shards nor the HTTP handlers share a
//! lock: they send it commands over a bounded channel. Each connection has its own bounded queue:
//! a device that falls behind misses messages (counted), it never holds up the others. A
//! delivery for an actor with no device connected is published on `hub.deliveries.push` (kept by
//! the action stream), where a gateway to the platforms' push services can take it.

use super::Delivery;
use crate::config::PushConfig;
use crate::egress::Egress;
use crate::metrics as m;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Changes to the connection table (deliveries come on a queue of their own).
enum Command {
    Connect {
        actor: String,
        id: u64,
        messages: mpsc::Sender<Bytes>,
    },
    Disconnect {
        actor: String,
        id: u64,
    },
    /// The hub is stopping: end every connection (so the HTTP server can finish).
    CloseAll,
}

/// Who may connect.
#[derive(Clone)]
enum DeviceAuth {
    /// `?token=` must be hex HMAC-SHA256(secret, actor).
    Secret(Arc<[u8]>),
    /// No secret, listening on loopback: open (the local default).
    Open,
    /// No secret on a non-loopback address: refused.
    Closed,
}

/// The push sink's handle; cheap to clone.
#[derive(Clone)]
pub struct PushHub {
    deliveries: mpsc::Sender<Delivery>,
    commands: mpsc::Sender<Command>,
    connection_queue: usize,
    next_id: Arc<AtomicU64>,
    auth: DeviceAuth,
}

/// One device's connection: its messages, and its removal from the table when dropped.
struct Connection {
    messages: mpsc::Receiver<Bytes>,
    actor: String,
    id: u64,
    commands: mpsc::Sender<Command>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let actor = std::mem::take(&mut self.actor);
        // If the task is busy the entry is pruned at the actor's next delivery instead.
        let _ = self.commands.try_send(Command::Disconnect { actor, id: self.id });
    }
}

impl PushHub {
    /// Start the push task on the current tokio runtime.
    pub fn start(config: &PushConfig, listen: SocketAddr, egress: Egress) -> PushHub {
        let (deliveries, delivered) = mpsc::channel(config.queue.max(1));
        let (commands, rx) = mpsc::channel(1024);
        tokio::spawn(run(rx, delivered, egress));
        let auth = match &config.secret {
            Some(s) if !s.is_empty() => DeviceAuth::Secret(s.as_bytes().into()),
            _ if listen.ip().is_loopback() => DeviceAuth::Open,
            _ => {
                tracing::warn!(%listen, "/push is disabled: set push.secret to serve devices beyond loopback");
                DeviceAuth::Closed
            }
        };
        PushHub {
            deliveries,
            commands,
            connection_queue: config.connection_queue.max(1),
            next_id: Arc::new(AtomicU64::new(0)),
            auth,
        }
    }

    /// Queue a delivery without waiting; gives it back when the queue is full.
    pub fn offer(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        self.deliveries.try_send(delivery).map_err(|e| match e {
            mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => Box::new(d),
        })
    }

    /// End every device connection; devices reconnect to the next hub.
    pub async fn close_all(&self) {
        let _ = self.commands.send(Command::CloseAll).await;
    }

    /// The token a device of `actor` presents when a secret is configured.
    pub fn token(secret: &[u8], actor: &str) -> String {
        hex::encode(mac(secret, actor).finalize().into_bytes())
    }

    fn authorize(&self, actor: &str, token: Option<&str>) -> Result<(), (StatusCode, &'static str)> {
        match &self.auth {
            DeviceAuth::Open => Ok(()),
            DeviceAuth::Closed => Err((
                StatusCode::FORBIDDEN,
                "push is disabled: the hub listens beyond loopback and push.secret is unset",
            )),
            DeviceAuth::Secret(secret) => {
                let given = token
                    .and_then(|t| hex::decode(t).ok())
                    .ok_or((StatusCode::UNAUTHORIZED, "this connection needs ?token=<device token>"))?;
                mac(secret, actor)
                    .verify_slice(&given)
                    .map_err(|_| (StatusCode::UNAUTHORIZED, "wrong device token for this actor"))
            }
        }
    }

    async fn connect(&self, actor: String) -> Option<Connection> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (messages, rx) = mpsc::channel(self.connection_queue);
        let command = Command::Connect {
            actor: actor.clone(),
            id,
            messages,
        };
        self.commands.send(command).await.ok()?;
        Some(Connection {
            messages: rx,
            actor,
            id,
            commands: self.commands.clone(),
        })
    }
}

fn mac(secret: &[u8], actor: &str) -> Hmac<sha2::Sha256> {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(actor.as_bytes());
    mac
}

/// The task that owns the connection table.
async fn run(mut commands: mpsc::Receiver<Command>, mut deliveries: mpsc::Receiver<Delivery>, egress: Egress) {
    let mut devices: HashMap<String, Vec<(u64, mpsc::Sender<Bytes>)>> = HashMap::new();
    let connections = metrics::gauge!(m::PUSH_CONNECTIONS);
    loop {
        // Connections first: a device that got its answer must not miss the next delivery.
        let next = tokio::select! {
            biased;
            command = commands.recv() => command.map(Ok),
            delivery = deliveries.recv() => delivery.map(Err),
        };
        let Some(next) = next else { return };
        match next {
            Ok(Command::Connect { actor, id, messages }) => {
                devices.entry(actor).or_default().push((id, messages));
                connections.increment(1.0);
            }
            Ok(Command::CloseAll) => {
                connections.set(0.0);
                devices.clear();
            }
            Ok(Command::Disconnect { actor, id }) => {
                if let Some(list) = devices.get_mut(&actor) {
                    let before = list.len();
                    list.retain(|(i, _)| *i != id);
                    connections.decrement((before - list.len()) as f64);
                    if list.is_empty() {
                        devices.remove(&actor);
                    }
                }
            }
            Err(delivery) => {
                let mut live = 0;
                if let Some(list) = devices.get_mut(&delivery.target) {
                    for (_, device) in list.iter() {
                        match device.try_send(delivery.body.clone()) {
                            Ok(()) => live += 1,
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                metrics::counter!(m::PUSH_OUTCOMES, "outcome" => "device_behind").increment(1);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
                if live > 0 {
                    metrics::counter!(m::PUSH_OUTCOMES, "outcome" => "live").increment(live);
                } else {
                    metrics::counter!(m::PUSH_OUTCOMES, "outcome" => "offline").increment(1);
                    egress.send(delivery.outbound()).await;
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct DeviceQuery {
    token: Option<String>,
    /// The actor's tenant, when not the default one.
    tenant: Option<String>,
}

/// `GET /push/{actor}`: a WebSocket (text frames for UTF-8 bodies, binary otherwise), or
/// server-sent events when the request is not an upgrade.
pub async fn connect(
    State(push): State<PushHub>,
    Path(actor): Path<String>,
    Query(q): Query<DeviceQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(Err(why)) = q.tenant.as_deref().map(crate::tenant::check_name) {
        return crate::http_error::Failure::new(StatusCode::BAD_REQUEST, why).into_response();
    }
    // Deliveries name the actor by its key, the tenant's name before its id.
    let actor = crate::tenant::qualify(q.tenant.as_deref(), &actor);
    if let Err((status, why)) = push.authorize(&actor, q.token.as_deref()) {
        return crate::http_error::Failure::new(status, why).into_response();
    }
    // Registered before answering: a device that got its answer receives everything after it.
    let Some(connection) = push.connect(actor).await else {
        return crate::http_error::Failure::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is stopping").into_response();
    };
    match upgrade {
        Ok(ws) => ws.on_upgrade(move |socket| serve_websocket(socket, connection)),
        Err(_) => {
            let stream = futures::stream::unfold(connection, |mut c| async move {
                let body = c.messages.recv().await?;
                let event = SseEvent::default().data(String::from_utf8_lossy(&body));
                Some((Ok::<_, Infallible>(event), c))
            });
            Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
        }
    }
}

async fn serve_websocket(mut socket: WebSocket, mut connection: Connection) {
    loop {
        tokio::select! {
            body = connection.messages.recv() => {
                let Some(body) = body else { break };
                let message = match std::str::from_utf8(&body) {
                    Ok(text) => Message::Text(text.into()),
                    Err(_) => Message::Binary(body),
                };
                if socket.send(message).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_tokens_are_per_actor() {
        let hub = DeviceAuth::Secret(b"s3cret".as_slice().into());
        let (commands, _rx) = mpsc::channel(1);
        let (deliveries, _delivered) = mpsc::channel(1);
        let push = PushHub {
            deliveries,
            commands,
            connection_queue: 1,
            next_id: Arc::new(AtomicU64::new(0)),
            auth: hub,
        };
        let token = PushHub::token(b"s3cret", "c1");
        assert!(push.authorize("c1", Some(&token)).is_ok());
        assert_eq!(
            push.authorize("c2", Some(&token)).map_err(|e| e.0),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            push.authorize("c1", None).map_err(|e| e.0),
            Err(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            push.authorize("c1", Some("zz")).map_err(|e| e.0),
            Err(StatusCode::UNAUTHORIZED)
        );
    }
}
