//! Which input modes a run measures, in which order, and the server state each hub starts from.
//!
//! With `--input both` every run measures both modes, each on a fresh hub, in alternating order
//! (run 1 durable then core, run 2 core then durable, …): a VM's neighbours drift over minutes,
//! and alternating spreads that drift over both modes instead of handing it to whichever always
//! runs second.
//!
//! The hubs of a run share its nats-server, so the JetStream streams one hub leaves behind are
//! deleted before the next starts. Otherwise a durable hub would replay what the core hub before
//! it was fed, a core hub would pay for a stream capturing its inputs, and the action stream's
//! duplicate window would drop the second hub's actions (same inputs, so same `Nats-Msg-Id`),
//! sparing nats-server the work it did for the first.

use super::Input;
use async_nats::Client;
use async_nats::jetstream::context::{DeleteStreamError, DeleteStreamErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use hub::config::{Config, InputMode};
use serde::Serialize;

/// The bench's own input stream, consumer and action stream. The bench deletes its streams
/// between hubs; names of its own mean it never deletes a real hub's on a server given with
/// `--nats`.
const INPUT_STREAM: &str = "HUB_BENCH_INPUT";
const INPUT_CONSUMER: &str = "hub-bench";
const ACTION_STREAM: &str = "HUB_BENCH_ACTIONS";

/// One hub's input mode (`[input] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Mode {
    /// From the input stream with exactly-once effects (the default of `hub up`).
    Durable,
    /// By plain subscriptions.
    Core,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Durable => "durable",
            Mode::Core => "core",
        }
    }

    /// Set the hub's input mode, on the bench's own streams.
    pub(super) fn configure(self, config: &mut Config) {
        config.input.mode = match self {
            Mode::Durable => InputMode::Durable,
            Mode::Core => InputMode::Core,
        };
        config.input.stream = INPUT_STREAM.to_owned();
        config.input.consumer = INPUT_CONSUMER.to_owned();
        config.actions.stream = ACTION_STREAM.to_owned();
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Input {
    /// The modes run `run` (counted from 1) measures, in the order it measures them.
    pub(super) fn order(self, run: u64) -> Vec<Mode> {
        match self {
            Input::Durable => vec![Mode::Durable],
            Input::Core => vec![Mode::Core],
            Input::Both if run % 2 == 1 => vec![Mode::Durable, Mode::Core],
            Input::Both => vec![Mode::Core, Mode::Durable],
        }
    }

    /// The mode the swapping and push phases run in. Running them in both modes would nearly
    /// double a run (each is as long as the paced phase, the push phase connects thousands of
    /// devices first), and neither is what the modes are compared by, so with `both` they run
    /// in durable mode only, the default of `hub up`.
    pub(super) fn extras_mode(self) -> Mode {
        match self {
            Input::Core => Mode::Core,
            Input::Durable | Input::Both => Mode::Durable,
        }
    }
}

/// Delete the bench's streams (and with them the input consumer), if they are there, so the next
/// hub starts from the same empty server state as every other. A server without JetStream has
/// none to delete (and core mode runs on it), so a failure is only a warning: should a stream
/// survive, the next durable hub replays its inputs and the bench fails on unexpected outputs.
pub(super) async fn clear_streams(client: &Client) {
    let js = jetstream::new(client.clone());
    for stream in [INPUT_STREAM, ACTION_STREAM] {
        match js.delete_stream(stream).await {
            Ok(_) => tracing::debug!(stream, "bench stream deleted"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(stream, error = %e, "cannot delete the bench's stream"),
        }
    }
}

fn is_not_found(e: &DeleteStreamError) -> bool {
    matches!(e.kind(), DeleteStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_alternates_which_mode_goes_first() {
        assert_eq!(Input::Both.order(1), [Mode::Durable, Mode::Core]);
        assert_eq!(Input::Both.order(2), [Mode::Core, Mode::Durable]);
        assert_eq!(Input::Both.order(3), [Mode::Durable, Mode::Core]);
        assert_eq!(Input::Core.order(2), [Mode::Core]);
        assert_eq!(Input::Both.extras_mode(), Mode::Durable);
        assert_eq!(Input::Core.extras_mode(), Mode::Core);
    }
}
