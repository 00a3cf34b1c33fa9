//! `--mix scenarios`: every reference scenario loaded at once and driven as one realistic blend
//! over `--actors`, to see what a hub serving several deployments at a time sustains.
//!
//! The hub runs customer-creation, energy-metering, tv-audience, support-first and marketing-cart
//! (twice, as `vip-offers` and `offers`, split by the profile's segment), plus the clickstream
//! example, which turns the shop's raw web events into the `cart.updated` and
//! `checkout.completed` that marketing takes. The other examples are not loaded: payment-trouble
//! and cart-abandonment would duplicate support-first and marketing.
//!
//! The actors are half customers (`c*`: web, payments, database rows), three tenths meters (`m*`)
//! and a fifth TV viewers (`v*`), plus a dozen `channel:*` keys. Before the clock starts, every
//! customer gets a profile (a name; one in ten the `vip` segment) and every meter its
//! `hourly_threshold_kwh`. Each submodule generates one scenario's inputs and knows exactly what
//! each produces. Every window is an hour, so no timer fires during the bench (marketing's offers
//! stay pending, no customer is reported incomplete), and both actions of the blend,
//! `support.callback` and `alert.high_consumption`, are caused directly by an input, so every
//! action is timed from its input's publish.

mod meters;
mod payments;
mod rows;
mod tv;
mod web;

use super::swap::SwapTarget;
use super::workload::{Batch, BatchWriter};
use anyhow::{Context, bail};
use async_nats::Client;
use bytes::Bytes;
use hub::config::{Config, IngestRule};
use hub::hub::Hub;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every plugin's window: longer than any bench, so no timer comes due.
const WINDOW: &str = "1h";
/// Actors of a stream served at a time (see [`Lanes`]).
const LANES: u64 = 1_000;
/// How long the hub may take to apply the profiles published before the clock starts.
const PROFILES_TIMEOUT: Duration = Duration::from_secs(120);

/// The input of each twentieth, interleaved: 25 % page views, 10 % add-to-cart, 5 % checkouts,
/// 10 % payment events, 25 % meter readings, 15 % channel switches, 10 % database rows.
const SLOTS: [Slot; 20] = {
    use Slot::*;
    [
        View, Reading, Switch, View, Payment, Reading, Cart, Row, View, Reading, Switch, Checkout, View, Reading,
        Payment, Cart, Switch, View, Reading, Row,
    ]
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    View,
    Cart,
    Checkout,
    Payment,
    Reading,
    Switch,
    Row,
}

/// Deals a stream's inputs to its actors: LANES lanes take inputs in turn, each serving one actor
/// for `visit` inputs, then the next actor. Lane `l` starts `l % visit` inputs into its first
/// visit, so visits are staggered and outputs (a case opening, an hour closing) keep coming at a
/// steady pace instead of in bursts. Each actor's own inputs follow a sequence kept by its
/// stream, so where a visit starts or ends does not matter.
struct Lanes {
    actors: u64,
    visit: u64,
    dealt: u64,
}

impl Lanes {
    fn new(actors: u64, visit: u64) -> Lanes {
        Lanes {
            actors,
            visit,
            dealt: 0,
        }
    }

    /// The actor of the stream's next input.
    fn next(&mut self) -> u64 {
        let lanes = LANES.min(self.actors);
        let lane = self.dealt % lanes;
        let step = self.dealt / lanes + lane % self.visit;
        self.dealt += 1;
        (step / self.visit * lanes + lane) % self.actors
    }
}

/// The blend's generator; each stream keeps what its plugin remembers across phases.
pub(super) struct Workload {
    customers: usize,
    meter_count: usize,
    next_seq: u64,
    web: web::Web,
    payments: payments::Payments,
    rows: rows::Rows,
    meters: meters::Meters,
    viewers: tv::Viewers,
}

impl Workload {
    pub(super) fn new(actors: u64) -> anyhow::Result<Workload> {
        if actors < 10 {
            bail!("--mix scenarios needs at least 10 actors");
        }
        let actors = usize::try_from(actors).context("--actors is too large")?;
        let customers = actors / 2;
        let meter_count = actors / 10 * 3;
        let viewers = actors - customers - meter_count;
        Ok(Workload {
            customers,
            meter_count,
            next_seq: 0,
            web: web::Web::new(customers),
            payments: payments::Payments::new(customers),
            rows: rows::Rows::new(customers),
            meters: meters::Meters::new(meter_count),
            viewers: tv::Viewers::new(viewers),
        })
    }

    /// The next `n` inputs, in the proportions of SLOTS.
    pub(super) fn batch(&mut self, n: u64) -> anyhow::Result<Batch> {
        let base = self.next_seq;
        let mut w = BatchWriter::new(base, n, 128)?;
        for seq in base..base + n {
            match SLOTS[(seq % SLOTS.len() as u64) as usize] {
                Slot::View => self.web.view(seq, &mut w)?,
                Slot::Cart => self.web.add_to_cart(seq, &mut w)?,
                Slot::Checkout => self.web.checkout(seq, &mut w)?,
                Slot::Payment => self.payments.next(seq, &mut w)?,
                Slot::Reading => self.meters.next(seq, &mut w)?,
                Slot::Switch => self.viewers.next(seq, &mut w)?,
                Slot::Row => self.rows.next(seq, &mut w)?,
            }
        }
        self.next_seq = base + n;
        Ok(w.finish())
    }

    /// Load the plugins, then publish every profile on `profiles.<actor>` and wait until the hub
    /// has applied them all.
    pub(super) async fn prepare(&self, hub: &Hub, publisher: &Client) -> anyhow::Result<()> {
        for (name, wasm, config) in deployments() {
            let bytes = Bytes::from(std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?);
            hub.registry()
                .upload(name, bytes, Some(config))
                .await
                .with_context(|| format!("cannot load {name}"))?;
        }
        let started = Instant::now();
        let mut last = String::new();
        for c in 0..self.customers {
            let segment = if c.is_multiple_of(10) { "vip" } else { "regular" };
            last = format!("c{c}");
            let profile = format!(r#"{{"name":"Customer {c}","segment":"{segment}"}}"#);
            publish_profile(publisher, &last, profile).await?;
        }
        for m in 0..self.meter_count {
            last = format!("m{m}");
            let profile = format!(r#"{{"hourly_threshold_kwh":{}}}"#, meters::THRESHOLD_KWH);
            publish_profile(publisher, &last, profile).await?;
        }
        publisher.flush().await.context("cannot flush the profiles")?;
        // One subscription applies profiles in the order they were published: once the last is
        // there, all are.
        wait_for_profile(hub, &last).await?;
        tracing::info!(
            profiles = self.customers + self.meter_count,
            ms = started.elapsed().as_millis() as u64,
            "bench profiles applied"
        );
        Ok(())
    }
}

/// The plugins of the blend: name, file and config.
fn deployments() -> [(&'static str, PathBuf, serde_json::Value); 7] {
    let reference = |file: &str| Path::new(hub::REFERENCE_PLUGINS).join(file);
    [
        (
            "clickstream",
            Path::new(hub::EXAMPLE_PLUGINS).join("clickstream.wasm"),
            serde_json::json!({}),
        ),
        (
            "customer-creation",
            reference("customer_creation.wasm"),
            serde_json::json!({ "window": WINDOW }),
        ),
        (
            "energy-metering",
            reference("energy_metering.wasm"),
            serde_json::json!({}),
        ),
        ("tv-audience", reference("tv_audience.wasm"), serde_json::json!({})),
        ("support-first", reference("support_first.wasm"), support_config(None)),
        (
            "vip-offers",
            reference("marketing_cart.wasm"),
            serde_json::json!({"segment": "vip", "window": WINDOW}),
        ),
        (
            "offers",
            reference("marketing_cart.wasm"),
            serde_json::json!({"skip_segment": "vip", "window": WINDOW}),
        ),
    ]
}

fn support_config(priority: Option<u64>) -> serde_json::Value {
    let mut config = serde_json::json!({"threshold": payments::THRESHOLD, "window": WINDOW});
    if let Some(priority) = priority {
        config["priority"] = priority.into();
    }
    config
}

/// The hub's side: no plugin folder (the plugins are uploaded by `prepare`), and the database
/// rows' subjects mapped by an ingest rule next to the local default for `web.*`.
pub(super) fn configure(config: &mut Config) {
    config.plugins.dir = None;
    config.ingest.push(IngestRule {
        subject: "db.*".into(),
        kind: "db.{2}".into(),
        actor_header: None,
        actor_pointer: Some("/customer_id".into()),
        id_header: None,
        id_pointer: Some("/row_id".into()),
        time_pointer: None,
        tenant: None,
    });
}

/// New versions of support-first (which proposes most of the blend's actions), alternating its
/// action priority.
pub(super) fn swap_target() -> SwapTarget {
    SwapTarget {
        name: "support-first",
        wasm: Path::new(hub::REFERENCE_PLUGINS).join("support_first.wasm"),
        config: |i| support_config(Some(100 + (i + 1) % 2)),
    }
}

/// A plugin subscribed to nothing in the blend (`count.tick`), for `--idle-plugins`.
pub(super) fn idle_plugin() -> PathBuf {
    Path::new(hub::FIXTURE_PLUGINS).join("counter.wasm")
}

async fn publish_profile(publisher: &Client, actor: &str, profile: String) -> anyhow::Result<()> {
    publisher
        .publish(format!("profiles.{actor}"), Bytes::from(profile))
        .await
        .context("cannot publish a profile")
}

/// Poll the admin API until `actor` has a profile.
async fn wait_for_profile(hub: &Hub, actor: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/actors/{actor}", hub.http_addr());
    let started = Instant::now();
    loop {
        let body: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .context("the admin API did not answer")?
            .json()
            .await
            .context("unreadable admin API answer")?;
        if !body["profile"].is_null() {
            return Ok(());
        }
        if started.elapsed() > PROFILES_TIMEOUT {
            bail!("the profiles were not applied within {PROFILES_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::InputKind;

    fn count(batch: &Batch, kind: &InputKind) -> usize {
        (0..batch.len()).filter(|i| std::ptr::eq(batch.kind(*i), kind)).count()
    }

    fn body(batch: &Batch, i: usize) -> serde_json::Value {
        serde_json::from_slice(&batch.bodies[i]).expect("JSON body")
    }

    #[test]
    fn the_blend_has_the_documented_proportions() {
        let mut w = Workload::new(1_000).expect("workload");
        let batch = w.batch(20_000).expect("batch");
        let inputs = batch.inputs_by_subject(batch.len());
        let share = |subjects: &[&str]| {
            let n: u64 = subjects.iter().map(|s| inputs.get(*s).copied().unwrap_or(0)).sum();
            n * 100 / 20_000
        };
        assert_eq!(share(&["web.page_view"]), 25);
        assert_eq!(share(&["web.add_to_cart"]), 10);
        assert_eq!(share(&["web.checkout_submit"]), 5);
        assert_eq!(share(&["events.payment.failed", "events.support.closed"]), 10);
        assert_eq!(share(&["events.meter.reading"]), 25);
        assert_eq!(share(&["events.tv.switch"]), 15);
        assert_eq!(share(&["db.customer", "db.address", "db.account"]), 10);
        let ids: std::collections::HashSet<String> = (0..batch.len())
            .map(|i| {
                let b = body(&batch, i);
                ["id", "event_id", "row_id"]
                    .iter()
                    .find_map(|k| b[*k].as_str().map(str::to_owned))
                    .expect("an id")
            })
            .collect();
        assert_eq!(ids.len(), batch.len(), "every input has an id of its own");
    }

    #[test]
    fn every_customer_opens_one_case_and_has_it_closed_in_five_payment_events() {
        let mut w = Workload::new(20).expect("workload");
        // 10 customers × 5 payment events = 50 payment slots, in 500 inputs.
        let batch = w.batch(500).expect("batch");
        assert_eq!(count(&batch, &payments::OPENS_CASE), 10);
        assert_eq!(count(&batch, &payments::CLOSES_CASE), 10);
        assert_eq!(count(&batch, &payments::FAILURE), 30);
    }

    #[test]
    fn a_customer_is_created_once_by_its_third_row() {
        let mut w = Workload::new(20).expect("workload");
        // 10 customers × 3 rows = 30 row slots in 300 inputs; then 30 more rows are updates.
        let first = w.batch(300).expect("batch");
        let second = w.batch(300).expect("batch");
        let created = |b: &Batch| {
            b.expected_outputs(b.len())
                .iter()
                .zip(b.output_subjects())
                .find(|(_, s)| *s == "hub.events.customer.created")
                .map_or(0, |(n, _)| *n)
        };
        assert_eq!(created(&first), 10);
        assert_eq!(created(&second), 0);
        let update = (0..second.len())
            .map(|i| body(&second, i))
            .find(|b| b["row_id"].is_string())
            .expect("a row");
        assert_eq!(update["op"], "update");
    }

    #[test]
    fn meters_close_each_hour_from_their_third_and_alert_over_the_threshold() {
        let mut w = meters::Meters::new(1);
        let mut writer = BatchWriter::new(0, 4 * 30, 100).expect("writer");
        for seq in 0..4 * 30 {
            w.next(seq, &mut writer).expect("reading");
        }
        let batch = writer.finish();
        // 30 hours opened: hours 1..=28 closed (the 29th is still open).
        let hourly = batch
            .output_subjects()
            .iter()
            .position(|s| *s == "hub.events.meter.hourly");
        assert_eq!(hourly.map(|i| batch.expected_outputs(batch.len())[i]), Some(28));
        let reading = |i: usize| body(&batch, i)["payload"].clone();
        // Within an hour: the last value first, an earlier one, the duplicate, a late one.
        let (last, early, dup, late) = (reading(8), reading(9), reading(10), reading(11));
        assert_eq!(last, dup);
        assert!(early["kwh"].as_f64() <= last["kwh"].as_f64());
        assert!(late["at"].as_i64() < early["at"].as_i64());
        let alerts = count(&batch, &meters::HIGH_HOUR) + count(&batch, &meters::HIGH_DAY);
        let days = count(&batch, &meters::DAY) + count(&batch, &meters::HIGH_DAY);
        assert!(alerts > 0 && (1..=2).contains(&days), "alerts {alerts}, days {days}");
    }

    #[test]
    fn switches_produce_what_tv_audience_does() {
        let mut v = tv::Viewers::new(3);
        let mut writer = BatchWriter::new(0, 300, 100).expect("writer");
        for seq in 0..300 {
            v.next(seq, &mut writer).expect("switch");
        }
        let batch = writer.finish();
        // Replay per viewer: what was watched decides what a switch produces.
        let mut watching: [Option<String>; 3] = Default::default();
        for i in 0..batch.len() {
            let b = body(&batch, i);
            let viewer: usize = b["actor"].as_str().and_then(|a| a[1..].parse().ok()).expect("viewer");
            let to = b["payload"]["channel"].as_str().map(str::to_owned);
            let from = std::mem::replace(&mut watching[viewer], to.clone());
            let outputs = match (from.is_some(), to.is_some()) {
                _ if from == to => 0,
                (true, true) => 4,
                _ => 2,
            };
            assert_eq!(batch.kind(i).outputs.len(), outputs, "switch {i}: {b}");
        }
    }
}
