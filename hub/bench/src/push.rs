//! The push phase: the paced load again, with the `notify` delivery plugin rendering every
//! support callback for the customer's devices, and one WebSocket device connected on
//! `/push/{actor}` for every customer that will get one. It measures event→action latency the
//! way a customer sees it: from the publish of the failure that triggers the callback, through
//! the plugins, the arbiter and the delivery plugin, to the message arriving on the device.

use super::MAX_LATENCY_US;
use super::phase::due_by_now;
use super::progress::{Step, count};
use super::workload::Batch;
use anyhow::Context;
use async_nats::Client;
use futures::StreamExt;
use hdrhistogram::Histogram;
use hub::hub::Hub;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The action the examples' triggering input leads to.
const CALLBACK: &str = "hub.actions.support.callback";
/// WebSocket handshakes in flight while devices connect.
const CONNECTING: usize = 64;
/// How long pushes may stop arriving before the missing ones count as lost.
const STALL: Duration = Duration::from_secs(10);

/// One push phase as measured.
pub(super) struct PushOutcome {
    pub(super) devices: u64,
    pub(super) expected: u64,
    pub(super) received: u64,
    /// Time to connect every device.
    pub(super) connecting: Duration,
    pub(super) latency: Histogram<u64>,
}

/// Load `notify` (support actions → push), connect the devices, publish `batch` at `rate` per
/// second, and time every push from the publish of the input that caused it, saying which of
/// these it does on `step`.
pub(super) async fn push_phase(
    hub: &Hub,
    publisher: &Client,
    batch: &Batch,
    rate: u64,
    step: &Step,
) -> anyhow::Result<PushOutcome> {
    // The triggering inputs of each customer, in order: each brings one push.
    let mut triggers: HashMap<String, Vec<usize>> = HashMap::new();
    for input in 0..batch.len() {
        let kind = batch.kinds[usize::from(batch.inputs[input])];
        if kind.outputs.contains(&CALLBACK) {
            let actor = actor_of(&batch.bodies[input]).context("a triggering input without an actor")?;
            triggers.entry(actor).or_default().push(input);
        }
    }
    let expected = triggers.values().map(|v| v.len() as u64).sum();

    let file = Path::new(hub::REFERENCE_PLUGINS).join("notify.wasm");
    let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let routes =
        serde_json::json!({"routes": [{"actions": "support.*", "channel": "push", "title": "We will call you"}]});
    hub.registry()
        .upload("notify", wasm.into(), Some(routes))
        .await
        .context("cannot load the notify plugin")?;

    step.note(&format!("connecting {} devices", count(triggers.len() as u64)));
    let connecting = Instant::now();
    let (pushed, mut arrivals) = mpsc::unbounded_channel::<(usize, Instant)>();
    let addr = hub.http_addr();
    let devices = futures::stream::iter(triggers)
        .map(|(actor, inputs)| {
            let pushed = pushed.clone();
            async move {
                let url = format!("ws://{addr}/push/{actor}");
                let (mut device, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .with_context(|| format!("device of {actor} cannot connect"))?;
                tokio::spawn(async move {
                    for input in inputs {
                        match device.next().await {
                            Some(Ok(_)) => {
                                let _ = pushed.send((input, Instant::now()));
                            }
                            _ => return,
                        }
                    }
                });
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONNECTING)
        .collect::<Vec<_>>()
        .await;
    drop(pushed);
    let device_count = devices.len() as u64;
    devices.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let connecting = connecting.elapsed();

    step.note("");
    let sent_at = publish_paced(publisher, batch, rate, step).await?;
    step.set(sent_at.len() as u64);
    step.note("waiting for pushes");
    let mut latency = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3).context("cannot create a histogram")?;
    let mut received = 0;
    while received < expected {
        match tokio::time::timeout(STALL, arrivals.recv()).await {
            Ok(Some((input, at))) => {
                received += 1;
                latency.saturating_record(at.saturating_duration_since(sent_at[input]).as_micros() as u64);
            }
            Ok(None) | Err(_) => break,
        }
    }
    Ok(PushOutcome {
        devices: device_count,
        expected,
        received,
        connecting,
        latency,
    })
}

/// Publish every input of `batch` at `rate` per second; when each went out.
async fn publish_paced(client: &Client, batch: &Batch, rate: u64, step: &Step) -> anyhow::Result<Vec<Instant>> {
    let subjects: Vec<async_nats::Subject> = batch.kinds.iter().map(|k| k.subject.into()).collect();
    let mut sent_at = Vec::with_capacity(batch.len());
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    while sent_at.len() < batch.len() {
        ticker.tick().await;
        let due = due_by_now(started, rate, batch.len());
        while sent_at.len() < due {
            let input = sent_at.len();
            sent_at.push(Instant::now());
            client
                .publish(
                    subjects[usize::from(batch.inputs[input])].clone(),
                    batch.bodies[input].clone(),
                )
                .await
                .context("cannot publish an input")?;
            step.advance(sent_at.len());
        }
    }
    client.flush().await.context("cannot flush the publisher")?;
    Ok(sent_at)
}

/// The `actor` of an event envelope.
fn actor_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        actor: String,
    }
    serde_json::from_slice::<Envelope>(body).ok().map(|e| e.actor)
}
