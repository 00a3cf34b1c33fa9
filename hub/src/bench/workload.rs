//! What a phase publishes: the example pipeline's inputs, rendered before the clock starts, with
//! the outputs each must produce.

use super::{Mix, Slot};
use anyhow::Context;
use bytes::{Bytes, BytesMut};
use std::fmt::Write as _;

/// Failures of one actor that make payment-trouble act (its configured `threshold`).
pub(super) const THRESHOLD: u64 = 3;
/// Actors whose failures are interleaved in one round. Each of them gets its THRESHOLD
/// failures within THRESHOLD × this many failures, so failures that have not yet led to an
/// action (and so do not count as processed) stay far below WINDOW.
const ROUND_ACTORS: u64 = 1_000;

/// What an input leads to, so that expected outputs can be counted exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A raw page view: one `product.viewed`.
    View,
    /// A raw add-to-cart: one `cart.updated`.
    Web,
    /// A payment failure below the threshold: nothing yet.
    Failure,
    /// The payment failure that reaches the threshold: one `support.callback`.
    Trigger,
}

/// One phase's inputs, rendered before the clock starts so that publishing does not allocate.
pub(super) struct Batch {
    /// Run-wide sequence number of the first input; the ids are `w{seq}` and `p{seq}`.
    pub(super) base: u64,
    pub(super) kinds: Vec<Kind>,
    /// Slices of one buffer: cloning one is a reference count, not a copy.
    pub(super) bodies: Vec<Bytes>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.kinds.len()
    }
}

/// Generates a run's inputs. It keeps each actor's failure count across phases, because the same
/// hub sees them all; this is how it knows which failure triggers an action.
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
        let len = usize::try_from(n).context("too many inputs")?;
        let base = self.next_seq;
        let mut buf = BytesMut::with_capacity(len.saturating_mul(112));
        let mut ranges = Vec::with_capacity(len);
        let mut kinds = Vec::with_capacity(len);
        for seq in base..base + n {
            let start = buf.len();
            let kind = match self.mix.slot(seq) {
                Slot::View => {
                    let actor = seq % self.actors;
                    write!(
                        buf,
                        r#"{{"visitor":"c{actor}","event_id":"w{seq}","url":"/p/a1","product":{{"sku":"A1","name":"Shoes","price":59.9}}}}"#
                    )?;
                    Kind::View
                }
                Slot::Cart => {
                    let actor = seq % self.actors;
                    write!(
                        buf,
                        r#"{{"visitor":"c{actor}","event_id":"w{seq}","product":{{"sku":"A1","name":"Shoes","price":59.9}},"qty":1}}"#
                    )?;
                    Kind::Web
                }
                Slot::Payment => {
                    let actor = self.failure_actor();
                    write!(
                        buf,
                        r#"{{"id":"p{seq}","kind":"payment.failed","actor":"c{actor}","payload":{{"amount":20}}}}"#
                    )?;
                    self.count_failure(actor)
                }
            };
            ranges.push(start..buf.len());
            kinds.push(kind);
        }
        self.next_seq = base + n;
        let all = buf.freeze();
        let bodies = ranges.into_iter().map(|r| all.slice(r)).collect();
        Ok(Batch { base, kinds, bodies })
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
    fn count_failure(&mut self, actor: u64) -> Kind {
        let count = &mut self.counts[actor as usize];
        *count += 1;
        if u64::from(*count) >= THRESHOLD {
            *count = 0;
            Kind::Trigger
        } else {
            Kind::Failure
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Mix;
    use crate::bench::phase::Outputs;

    #[test]
    fn every_actor_acts_on_its_third_failure() {
        let mut w = Workload::new(10, Mix::WriteHeavy).expect("workload");
        let batch = w.batch(120).expect("batch");
        // 60 failures over 10 actors, 3 each per round of 10: 2 rounds, 10 triggers each.
        let triggers = batch.kinds.iter().filter(|k| **k == Kind::Trigger).count();
        assert_eq!(triggers, 20);
        assert_eq!(Outputs::Hub.expected(&batch, batch.len()), 60 + 20);
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
}
