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
