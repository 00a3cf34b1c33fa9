//! The example pipeline (`--mix clickstream` and `--mix write-heavy`): the example plugins, raw
//! clickstream messages and payment failures.

use super::Mix;
use super::swap::SwapTarget;
use super::workload::{Batch, BatchWriter, InputKind};
use anyhow::Context;
use hub::config::Config;
use std::path::PathBuf;

/// Failures of one actor that make payment-trouble act (its configured `threshold`).
const THRESHOLD: u64 = 3;
/// Actors whose failures are interleaved in one round. Each of them gets its THRESHOLD
/// failures within THRESHOLD × this many failures, so failures that have not yet led to an
/// action stay far below the flow-control window.
const ROUND_ACTORS: u64 = 1_000;

/// A raw page view: one `product.viewed`.
static VIEW: InputKind = InputKind {
    subject: "web.page_view",
    outputs: &["hub.events.product.viewed"],
};
/// A raw add-to-cart: one `cart.updated`.
static CART: InputKind = InputKind {
    subject: "web.add_to_cart",
    outputs: &["hub.events.cart.updated"],
};
/// A payment failure below the threshold: nothing yet.
static FAILURE: InputKind = InputKind {
    subject: "events.payment.failed",
    outputs: &[],
};
/// The payment failure that reaches the threshold: one `support.callback`.
static TRIGGER: InputKind = InputKind {
    subject: "events.payment.failed",
    outputs: &["hub.actions.support.callback"],
};

/// The hub under test: the local defaults (which map `web.*`), the example plugins, and windows
/// of an hour so that no cart-abandonment timer fires and no failure expires during the bench.
pub(super) fn configure(config: &mut Config) {
    config.plugins.dir = Some(PathBuf::from(hub::EXAMPLE_PLUGINS));
    config.plugins.config.insert(
        "payment-trouble".into(),
        serde_json::json!({"threshold": THRESHOLD, "window": "1h"}),
    );
    config
        .plugins
        .config
        .insert("cart-abandonment".into(), serde_json::json!({"window": "1h"}));
}

/// New versions of payment-trouble (the plugin that acts), alternating its action priority so
/// each is a real new version with its own init.
pub(super) fn swap_target() -> SwapTarget {
    SwapTarget {
        name: "payment-trouble",
        wasm: PathBuf::from(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm"),
        config: |i| serde_json::json!({"threshold": THRESHOLD, "window": "1h", "priority": 100 + (i + 1) % 2}),
    }
}

/// What kind of input the `seq`th is, in tenths.
enum Slot {
    View,
    Cart,
    Payment,
}

fn slot(mix: Mix, seq: u64) -> Slot {
    match (mix, seq % 10) {
        (Mix::WriteHeavy, n) if n % 2 == 0 => Slot::Cart,
        (Mix::WriteHeavy, _) => Slot::Payment,
        (_, 0..6) => Slot::View,
        (_, 6..8) => Slot::Cart,
        (_, _) => Slot::Payment,
    }
}

/// Generates the example pipeline's inputs. It keeps each actor's failure count across phases,
/// which is how it knows which failure triggers an action.
pub(super) struct Workload {
    actors: u64,
    mix: Mix,
    next_seq: u64,
    failures: u64,
    /// Failures per actor since the actor's last action.
    counts: Vec<u8>,
}

impl Workload {
    pub(super) fn new(actors: u64, mix: Mix) -> anyhow::Result<Workload> {
        let len = usize::try_from(actors).context("--actors is too large")?;
        Ok(Workload {
            actors,
            mix,
            next_seq: 0,
            failures: 0,
            counts: vec![0; len],
        })
    }

    /// The next `n` inputs, kinds in the proportions of the mix: web events spread over all
    /// actors, payment failures dealt in rounds (see [`Workload::failure_actor`]).
    pub(super) fn batch(&mut self, n: u64) -> anyhow::Result<Batch> {
        let base = self.next_seq;
        let mut w = BatchWriter::new(base, n, 112)?;
        for seq in base..base + n {
            match slot(self.mix, seq) {
                Slot::View => {
                    let actor = seq % self.actors;
                    w.input(
                        &VIEW,
                        format_args!(
                            r#"{{"visitor":"c{actor}","event_id":"w{seq}","url":"/p/a1","product":{{"sku":"A1","name":"Shoes","price":59.9}}}}"#
                        ),
                    )?;
                }
                Slot::Cart => {
                    let actor = seq % self.actors;
                    w.input(
                        &CART,
                        format_args!(
                            r#"{{"visitor":"c{actor}","event_id":"w{seq}","product":{{"sku":"A1","name":"Shoes","price":59.9}},"qty":1}}"#
                        ),
                    )?;
                }
                Slot::Payment => {
                    let actor = self.failure_actor();
                    let kind = self.count_failure(actor);
                    w.input(
                        kind,
                        format_args!(
                            r#"{{"id":"p{seq}","kind":"payment.failed","actor":"c{actor}","payload":{{"amount":20}}}}"#
                        ),
                    )?;
                }
            }
        }
        self.next_seq = base + n;
        Ok(w.finish())
    }

    /// The actor of the next failure. Rounds of ROUND_ACTORS actors get one failure each in
    /// turn, THRESHOLD times over, so every actor of the round reaches the threshold soon after
    /// its first failure and actions keep coming at a steady pace.
    fn failure_actor(&mut self) -> u64 {
        let round = ROUND_ACTORS.min(self.actors);
        let f = self.failures;
        self.failures += 1;
        (f / (round * THRESHOLD) * round + f % round) % self.actors
    }

    /// Count a failure as payment-trouble will; after an action the count starts again.
    fn count_failure(&mut self, actor: u64) -> &'static InputKind {
        let count = &mut self.counts[actor as usize];
        *count += 1;
        if u64::from(*count) >= THRESHOLD {
            *count = 0;
            &TRIGGER
        } else {
            &FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_actor_acts_on_its_third_failure() {
        let mut w = Workload::new(10, Mix::WriteHeavy).expect("workload");
        let batch = w.batch(120).expect("batch");
        // 60 failures over 10 actors, 3 each per round of 10: 2 rounds, 10 triggers each.
        let triggers = (0..batch.len()).filter(|i| batch.kind(*i) == &TRIGGER).count();
        assert_eq!(triggers, 20);
        assert_eq!(batch.due(batch.len()), 60 + 20);
        assert!(w.counts.iter().all(|c| *c == 0));
    }

    #[test]
    fn bodies_are_the_documented_inputs() {
        let mut w = Workload::new(100, Mix::WriteHeavy).expect("workload");
        let batch = w.batch(2).expect("batch");
        let web: serde_json::Value = serde_json::from_slice(&batch.bodies[0]).expect("web JSON");
        assert_eq!(web["visitor"], "c0");
        assert_eq!(web["event_id"], "w0");
        let failure: serde_json::Value = serde_json::from_slice(&batch.bodies[1]).expect("envelope JSON");
        assert_eq!(failure["id"], "p1");
        assert_eq!(failure["kind"], "payment.failed");
        let next = w.batch(1).expect("batch");
        assert_eq!(next.base, 2);
    }

    #[test]
    fn clickstream_is_six_views_two_carts_two_failures_in_ten() {
        let mut w = Workload::new(100, Mix::Clickstream).expect("workload");
        let batch = w.batch(1_000).expect("batch");
        let inputs = batch.inputs_by_subject(batch.len());
        assert_eq!(
            (
                inputs["web.page_view"],
                inputs["web.add_to_cart"],
                inputs["events.payment.failed"]
            ),
            (600, 200, 200)
        );
    }
}
