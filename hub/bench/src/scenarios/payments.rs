//! Payment trouble for support-first: `events.payment.failed` and `events.support.closed`
//! envelopes. Each customer goes through cases in turn: three failures (the third opens it:
//! `support.opened`, which both marketing deployments take to hold offers back, and the action
//! `support.callback`, timed from that failure), a fourth failure that the open case swallows,
//! and the agent closing the case, after which counting starts afresh.

use super::super::workload::{BatchWriter, InputKind};
use super::Lanes;

/// Failures that open a case (support-first's configured `threshold`).
pub(super) const THRESHOLD: u64 = 3;
/// Payment events per customer and case: THRESHOLD failures, one more, the closing.
const CYCLE: u64 = THRESHOLD + 2;

/// A failure below the threshold, or during an open case: nothing.
pub(super) static FAILURE: InputKind = InputKind {
    subject: "events.payment.failed",
    outputs: &[],
};
/// The failure that reaches the threshold: the case opens.
pub(super) static OPENS_CASE: InputKind = InputKind {
    subject: "events.payment.failed",
    outputs: &["hub.events.support.opened", "hub.actions.support.callback"],
};
/// The agent closes the case: state only (support-first and both marketing deployments).
pub(super) static CLOSES_CASE: InputKind = InputKind {
    subject: "events.support.closed",
    outputs: &[],
};

pub(super) struct Payments {
    lanes: Lanes,
    /// Per customer: payment events so far, modulo CYCLE.
    steps: Vec<u8>,
}

impl Payments {
    pub(super) fn new(customers: usize) -> Payments {
        Payments {
            lanes: Lanes::new(customers as u64, CYCLE),
            steps: vec![0; customers],
        }
    }

    pub(super) fn next(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let c = self.lanes.next();
        let steps = &mut self.steps[c as usize];
        let step = u64::from(*steps);
        *steps = ((step + 1) % CYCLE) as u8;
        if step == CYCLE - 1 {
            return w.input(
                &CLOSES_CASE,
                format_args!(
                    r#"{{"id":"s{seq}","kind":"support.closed","actor":"c{c}","payload":{{"resolution":"card replaced"}}}}"#
                ),
            );
        }
        let kind = if step == THRESHOLD - 1 { &OPENS_CASE } else { &FAILURE };
        w.input(
            kind,
            format_args!(
                r#"{{"id":"p{seq}","kind":"payment.failed","actor":"c{c}","payload":{{"amount":{},"reason":"card_declined"}}}}"#,
                20 + 5 * step
            ),
        )
    }
}
