//! What the hub tells of its NATS connection: every outage is counted, timed and logged.
//!
//! In durable mode nothing published during an outage is lost (it waits in the input stream).
//! In core mode the hub cannot see what it never received, so it makes the loss visible by what
//! it can measure: `hub_nats_disconnects_total` and `hub_nats_disconnected_milliseconds_total`
//! (inputs lost ≈ the producers' rate × that time), plus `hub_nats_slow_consumer_total` for
//! messages the client dropped itself.

use crate::config::InputMode;
use crate::metrics as m;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Watches the connection's events (async-nats `event_callback`).
#[derive(Clone)]
pub struct ConnectionWatch {
    mode: InputMode,
    /// When the current outage began.
    down_since: Arc<Mutex<Option<Instant>>>,
}

impl ConnectionWatch {
    pub fn new(mode: InputMode) -> ConnectionWatch {
        ConnectionWatch {
            mode,
            down_since: Arc::default(),
        }
    }

    pub fn on_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::SlowConsumer(sid) => {
                metrics::counter!(m::SLOW_CONSUMER).increment(1);
                tracing::error!(sid, "NATS slow consumer: the client dropped messages");
            }
            async_nats::Event::Disconnected => {
                let mut down = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
                if down.is_none() {
                    *down = Some(Instant::now());
                    metrics::counter!(m::NATS_DISCONNECTS).increment(1);
                }
                match self.mode {
                    InputMode::Durable => tracing::warn!("NATS connection lost; inputs wait in the input stream"),
                    InputMode::Core => {
                        tracing::error!("NATS connection lost; in core mode inputs published meanwhile are lost")
                    }
                }
            }
            async_nats::Event::Connected => {
                let began = self.down_since.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(began) = began {
                    let outage = began.elapsed();
                    metrics::counter!(m::NATS_DISCONNECTED_MS).increment(outage.as_millis() as u64);
                    tracing::warn!(outage_ms = outage.as_millis() as u64, mode = ?self.mode, "NATS connection back");
                }
            }
            other => tracing::info!(event = %other, "NATS connection event"),
        }
    }
}

/// Times a message's round trip from a client through nats-server and back to the same
/// client: how long nats-server, and the machine it shares, takes to pass a message on.
pub struct RoundTrips {
    client: async_nats::Client,
    subject: async_nats::Subject,
    echoes: async_nats::Subscriber,
    seq: u64,
}

/// How one round trip went.
#[derive(Debug, PartialEq)]
pub enum RoundTrip {
    Back(std::time::Duration),
    /// Not back within its patience, or not sent: the connection is down or reconnecting,
    /// which says nothing of the load.
    Lost,
    /// The subscription ended: the client is gone.
    Closed,
}

impl RoundTrips {
    /// Subscribe `client` to an inbox of its own to send the messages to.
    pub async fn new(client: async_nats::Client) -> Result<RoundTrips, async_nats::SubscribeError> {
        let subject = async_nats::Subject::from(client.new_inbox());
        let echoes = client.subscribe(subject.clone()).await?;
        Ok(RoundTrips {
            client,
            subject,
            echoes,
            seq: 0,
        })
    }

    /// Send a message and wait up to `patience` for it to come back.
    pub async fn time(&mut self, patience: std::time::Duration) -> RoundTrip {
        use futures::StreamExt;
        self.seq += 1;
        let seq = self.seq.to_be_bytes();
        let sent = Instant::now();
        if self
            .client
            .publish(self.subject.clone(), seq.to_vec().into())
            .await
            .is_err()
        {
            return RoundTrip::Lost;
        }
        // An echo of an earlier round trip that outlived its patience is passed over.
        let echoes = &mut self.echoes;
        let back = async {
            while let Some(echo) = echoes.next().await {
                if echo.payload.as_ref() == seq {
                    return true;
                }
            }
            false
        };
        match tokio::time::timeout(patience, back).await {
            Ok(true) => RoundTrip::Back(sent.elapsed()),
            Ok(false) => RoundTrip::Closed,
            Err(_) => RoundTrip::Lost,
        }
    }
}
