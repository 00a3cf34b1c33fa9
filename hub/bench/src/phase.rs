//! One phase: publish a batch with flow control from one client, count its outputs subject by
//! subject and time its actions on another, and measure. The relay phase runs the same machinery
//! against a plain relay.

use super::cpu::{CpuMark, CpuPerInput};
use super::progress::Step;
use super::workload::Batch;
use super::{Clients, MAX_LATENCY_US};
use anyhow::Context;
use async_nats::header::HeaderName;
use async_nats::{Client, Subject, Subscriber};
use futures::StreamExt;
use hdrhistogram::Histogram;
use hub::egress::headers;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Most inputs that may be published but not yet accounted for by an output. This bounds every
/// queue on the way (client buffers, server, hub subscription, shard queues), so nothing
/// overflows, and async-nats never silently drops anything.
const WINDOW: usize = 20_000;
/// A publisher whose window is full waits until this many more inputs fit. Waking it for each
/// output instead cost a thread wake-up per input on the bench's own side of the machine.
const CHUNK: usize = WINDOW / 10;
/// How long outputs may stop arriving before the missing ones count as lost.
const STALL: Duration = Duration::from_secs(10);

const HUB_OUTPUTS: &str = "hub.>";
const EVENTS_PREFIX: &str = "hub.events.";
const ACTIONS_PREFIX: &str = "hub.actions.";
const DLQ_PREFIX: &str = "hub.dlq.";
const RELAY_IN: &str = "bench.relay.in.>";
const RELAY_PREFIX: &str = "bench.relay.in.";
const RELAY_OUT: &str = "bench.relay.out";

/// What the messages a phase receives are.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outputs {
    /// The hub's: events and actions, each subject counted against what the batch's kinds must
    /// produce, and dead letters (which should not be there).
    Hub,
    /// The relay's: one per input.
    Relay,
}

impl Outputs {
    /// Outputs that the first `sent` inputs of `batch` must produce.
    fn due(self, batch: &Batch, sent: usize) -> u64 {
        match self {
            Outputs::Hub => batch.due(sent),
            Outputs::Relay => sent.min(batch.len()) as u64,
        }
    }

    /// Where the inputs of each of the batch's kinds are published.
    fn subjects(self, batch: &Batch) -> Vec<Subject> {
        let subject = |s: &'static str| match self {
            Outputs::Hub => Subject::from_static(s),
            Outputs::Relay => Subject::from(format!("{RELAY_PREFIX}{s}")),
        };
        batch.kinds.iter().map(|k| subject(k.subject)).collect()
    }
}

/// How a phase publishes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// As fast as the window allows.
    Unpaced,
    /// This many inputs per second.
    Paced(u64),
}

/// What one phase's receiver shares with its publisher and with the phase's driver.
struct Tally {
    /// The clock's zero for the instants kept in atomics below (as ns after it).
    epoch: Instant,
    base: u64,
    /// Per input: when it was published, in ns after `epoch` plus one (0: not yet).
    sent_at: Vec<AtomicU64>,
    /// The output subjects the batch must produce (hub phases), and how many of each arrived.
    subjects: Vec<&'static str>,
    by_subject: Vec<AtomicU64>,
    /// Outputs received on those subjects (or relayed messages).
    outputs: AtomicU64,
    actions: AtomicU64,
    dead_letters: AtomicU64,
    /// Events or actions on subjects no input of the batch produces.
    strays: AtomicU64,
    /// When the last output arrived, in ns after `epoch`.
    last_output: AtomicU64,
    /// Wakes a publisher that waits for room in the window, once `outputs` reaches `room_at`.
    room: Notify,
    room_at: AtomicU64,
}

impl Tally {
    fn new(batch: &Batch) -> Tally {
        let subjects = batch.output_subjects();
        Tally {
            epoch: Instant::now(),
            base: batch.base,
            sent_at: (0..batch.len()).map(|_| AtomicU64::new(0)).collect(),
            by_subject: subjects.iter().map(|_| AtomicU64::new(0)).collect(),
            subjects,
            outputs: AtomicU64::new(0),
            actions: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            strays: AtomicU64::new(0),
            last_output: AtomicU64::new(0),
            room: Notify::new(),
            room_at: AtomicU64::new(u64::MAX),
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Count a message the batch's inputs do not produce.
    fn stray(&self, subject: &str) {
        if subject.starts_with(DLQ_PREFIX) {
            self.dead_letters.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(subject, "dead letter during the bench");
        } else if (subject.starts_with(EVENTS_PREFIX) || subject.starts_with(ACTIONS_PREFIX))
            && self.strays.fetch_add(1, Ordering::Relaxed) == 0
        {
            tracing::warn!(subject, "an output no input of the phase should produce");
        }
    }
}

/// Expected and received outputs of one subject.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct OutputCount {
    pub(super) expected: u64,
    pub(super) received: u64,
}

/// A phase as measured, before it is reduced to figures.
pub(super) struct PhaseOutcome {
    pub(super) sent: u64,
    pub(super) expected: u64,
    pub(super) received: u64,
    /// Expected outputs that did not arrive, subject by subject.
    pub(super) lost: u64,
    /// Outputs beyond what was expected, subject by subject, and on subjects not expected at all.
    pub(super) unexpected: u64,
    pub(super) actions: u64,
    pub(super) dead_letters: u64,
    /// The inputs sent, by subject.
    pub(super) inputs: BTreeMap<String, u64>,
    /// Hub phases: each output subject, expected and received.
    pub(super) outputs: BTreeMap<String, OutputCount>,
    /// From the first publish to the last output received.
    pub(super) elapsed: Duration,
    /// From the first publish to the last.
    pub(super) publishing: Duration,
    /// Actions timed from the publish of the input that caused them.
    pub(super) latency: Histogram<u64>,
    /// CPU time from the first publish to the last output, per input.
    pub(super) cpu: Option<CpuPerInput>,
}

/// Publish a batch with flow control, collect its outputs, and measure, showing how far
/// publishing got on `step`.
pub(super) async fn run_phase(
    clients: &Clients,
    batch: &Batch,
    outputs: Outputs,
    pace: Pace,
    step: &Step,
) -> anyhow::Result<PhaseOutcome> {
    let subject = match outputs {
        Outputs::Hub => HUB_OUTPUTS,
        Outputs::Relay => RELAY_OUT,
    };
    let sub = clients
        .receiver
        .subscribe(subject)
        .await
        .context("cannot subscribe to the outputs")?;
    // The server must know the subscription before the first input goes out on another connection.
    clients.receiver.flush().await.context("cannot flush the receiver")?;
    let tally = Arc::new(Tally::new(batch));
    let latency =
        Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a latency histogram")?;
    let (stop, stopped) = watch::channel(false);
    let receiver = tokio::spawn(receive(sub, tally.clone(), outputs, stopped, latency));

    let cpu = CpuMark::now(clients.server_pid);
    let published = publish(&clients.publisher, batch, outputs, &tally, pace, step).await;
    let flushed = clients.publisher.flush().await;
    let sent = published.as_ref().map_or(0, |p| p.sent);
    let expected = outputs.due(batch, sent);
    if published.is_ok() && flushed.is_ok() {
        step.set(sent as u64);
        step.note("waiting for outputs");
        wait_for_outputs(&tally, expected).await;
    }
    let cpu = cpu.and_then(|mark| mark.per_input(sent as u64));
    let _ = stop.send(true);
    let latency = receiver.await.context("the receiver task failed")?;
    let published = published?;
    flushed.context("cannot flush the publisher")?;
    if published.stalled {
        tracing::warn!(
            sent = published.sent,
            of = batch.len(),
            "outputs stopped coming; publishing gave up"
        );
    }

    let received = tally.outputs.load(Ordering::Acquire);
    let (lost, unexpected, by_subject) = match outputs {
        Outputs::Relay => (expected.saturating_sub(received), 0, BTreeMap::new()),
        Outputs::Hub => {
            let mut by_subject = BTreeMap::new();
            let (mut lost, mut unexpected) = (0, tally.strays.load(Ordering::Acquire));
            for ((subject, count), expected) in tally
                .subjects
                .iter()
                .zip(&tally.by_subject)
                .zip(batch.expected_outputs(sent))
            {
                let received = count.load(Ordering::Acquire);
                lost += expected.saturating_sub(received);
                unexpected += received.saturating_sub(expected);
                by_subject.insert((*subject).to_owned(), OutputCount { expected, received });
            }
            (lost, unexpected, by_subject)
        }
    };
    let last_output = tally.at(tally.last_output.load(Ordering::Acquire));
    Ok(PhaseOutcome {
        sent: sent as u64,
        expected,
        received,
        lost,
        unexpected,
        actions: tally.actions.load(Ordering::Acquire),
        dead_letters: tally.dead_letters.load(Ordering::Acquire),
        inputs: batch.inputs_by_subject(sent),
        outputs: by_subject,
        elapsed: last_output.saturating_duration_since(published.started),
        publishing: published.finished.saturating_duration_since(published.started),
        latency,
        cpu,
    })
}

/// How far publishing got.
struct Published {
    sent: usize,
    started: Instant,
    finished: Instant,
    /// Outputs stopped coming while the window was full, so the rest was not sent.
    stalled: bool,
}

/// Publish a batch, unpaced or at a rate, never with more than WINDOW inputs unaccounted for.
async fn publish(
    client: &Client,
    batch: &Batch,
    outputs: Outputs,
    tally: &Tally,
    pace: Pace,
    step: &Step,
) -> anyhow::Result<Published> {
    let subjects = outputs.subjects(batch);
    let total = batch.len();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = match pace {
            Pace::Unpaced => total,
            Pace::Paced(rate) => {
                ticker.tick().await;
                due_by_now(started, rate, total)
            }
        };
        while sent < due {
            // Inputs before the window must be accounted for: their outputs must have arrived.
            // When they have not, wait until a chunk more fits (those inputs are out already).
            let settled = (sent + 1).saturating_sub(WINDOW);
            if tally.outputs.load(Ordering::Acquire) < outputs.due(batch, settled)
                && !wait_for_room(tally, outputs.due(batch, settled + CHUNK)).await
            {
                return Ok(Published {
                    sent,
                    started,
                    finished: Instant::now(),
                    stalled: true,
                });
            }
            let subject = subjects[usize::from(batch.inputs[sent])].clone();
            tally.sent_at[sent].store(tally.nanos(Instant::now()) + 1, Ordering::Release);
            client
                .publish(subject, batch.bodies[sent].clone())
                .await
                .context("cannot publish an input")?;
            sent += 1;
            step.advance(sent);
        }
    }
    Ok(Published {
        sent,
        started,
        finished: Instant::now(),
        stalled: false,
    })
}

/// How many of `total` inputs should be out at `rate` per second since `started`: a late tick
/// catches up instead of losing rate.
pub(super) fn due_by_now(started: Instant, rate: u64, total: usize) -> usize {
    let due = started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000;
    usize::try_from(due).unwrap_or(usize::MAX).min(total)
}

/// Wait until `needed` outputs have arrived. False if none arrived during STALL: outputs were
/// lost and the window will never open again.
async fn wait_for_room(tally: &Tally, needed: u64) -> bool {
    tally.room_at.store(needed, Ordering::SeqCst);
    let room = loop {
        // Read after publishing `room_at`: the receiver adds to `outputs` before it reads
        // `room_at`, so either this sees its output or it sees the threshold and notifies (and
        // notify_one keeps a permit for a waiter that is not waiting yet).
        let received = tally.outputs.load(Ordering::SeqCst);
        if received >= needed {
            break true;
        }
        let woken = tokio::time::timeout(STALL, tally.room.notified()).await;
        if woken.is_err() && tally.outputs.load(Ordering::SeqCst) == received {
            break false;
        }
    };
    tally.room_at.store(u64::MAX, Ordering::SeqCst);
    room
}

/// Wait until `expected` outputs have arrived, or none has arrived for STALL.
async fn wait_for_outputs(tally: &Tally, expected: u64) {
    let mut seen = tally.outputs.load(Ordering::Acquire);
    let mut since = Instant::now();
    while seen < expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = tally.outputs.load(Ordering::Acquire);
        if now != seen {
            seen = now;
            since = Instant::now();
        } else if since.elapsed() >= STALL {
            tracing::warn!(
                received = seen,
                expected,
                "no output for {STALL:?}; counting the rest as lost"
            );
            return;
        }
    }
}

/// Count a phase's outputs until told to stop, and time every action from the publish of the
/// input that caused it (its id is in the `Hub-Cause` header).
async fn receive(
    mut sub: Subscriber,
    tally: Arc<Tally>,
    outputs: Outputs,
    mut stop: watch::Receiver<bool>,
    mut latency: Histogram<u64>,
) -> Histogram<u64> {
    let cause_header = HeaderName::from_static(headers::CAUSE);
    loop {
        let msg = tokio::select! {
            biased;
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let received = Instant::now();
        if let Outputs::Hub = outputs {
            let subject = msg.subject.as_str();
            let Some(i) = tally.subjects.iter().position(|s| *s == subject) else {
                tally.stray(subject);
                continue;
            };
            tally.by_subject[i].fetch_add(1, Ordering::Relaxed);
            if subject.starts_with(ACTIONS_PREFIX) {
                tally.actions.fetch_add(1, Ordering::Relaxed);
                let cause = msg.headers.as_ref().and_then(|h| h.get(cause_header.clone()));
                if let Some(sent) = cause.and_then(|c| sent_at(&tally, c.as_str())) {
                    latency.saturating_record(received.saturating_duration_since(sent).as_micros() as u64);
                }
            }
        }
        tally.last_output.store(tally.nanos(received), Ordering::Release);
        let outputs = tally.outputs.fetch_add(1, Ordering::SeqCst) + 1;
        if outputs >= tally.room_at.load(Ordering::SeqCst) {
            tally.room.notify_one();
        }
    }
    latency
}

/// When the input with id `<letter><seq>` was published, if it belongs to this phase. Other
/// causes are not inputs (an emitted event's derived id is 32 hex digits) and are not timed.
fn sent_at(tally: &Tally, id: &str) -> Option<Instant> {
    let seq: u64 = id.strip_prefix(|c: char| c.is_ascii_lowercase())?.parse().ok()?;
    let index = usize::try_from(seq.checked_sub(tally.base)?).ok()?;
    match tally.sent_at.get(index)?.load(Ordering::Acquire) {
        0 => None,
        nanos => Some(tally.at(nanos - 1)),
    }
}

/// Run the relay and push the unpaced phase's bodies through it.
pub(super) async fn relay_phase(clients: &Clients, inputs: &Batch, step: &Step) -> anyhow::Result<PhaseOutcome> {
    let sub = clients
        .relay
        .subscribe(RELAY_IN)
        .await
        .context("relay cannot subscribe")?;
    clients.relay.flush().await.context("relay cannot flush")?;
    let relay = tokio::spawn(relay(clients.relay.clone(), sub));
    let outcome = run_phase(clients, inputs, Outputs::Relay, Pace::Unpaced, step).await;
    relay.abort();
    outcome
}

/// The plain relay: every message in is republished, payload untouched, on RELAY_OUT.
async fn relay(client: Client, mut sub: Subscriber) -> anyhow::Result<()> {
    let out = Subject::from_static(RELAY_OUT);
    while let Some(msg) = sub.next().await {
        client
            .publish(out.clone(), msg.payload)
            .await
            .context("relay cannot publish")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{BatchWriter, InputKind};

    static INPUT: InputKind = InputKind {
        subject: "in",
        outputs: &["hub.actions.a"],
    };

    #[test]
    fn only_inputs_of_the_phase_are_timed() {
        let mut w = BatchWriter::new(10, 2, 2).expect("writer");
        w.input(&INPUT, format_args!("{{}}")).expect("input");
        w.input(&INPUT, format_args!("{{}}")).expect("input");
        let tally = Tally::new(&w.finish());
        tally.sent_at[1].store(5, Ordering::Release);
        assert!(sent_at(&tally, "p11").is_some());
        assert!(sent_at(&tally, "p10").is_none(), "not published yet");
        assert!(sent_at(&tally, "p9").is_none(), "an earlier phase's");
        assert!(sent_at(&tally, "11").is_none());
        assert!(
            sent_at(&tally, "a1234567890123456789012345678901").is_none(),
            "a derived id"
        );
    }
}
