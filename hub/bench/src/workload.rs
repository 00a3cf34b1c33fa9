//! What a phase publishes: inputs rendered before the clock starts, each of a kind that says on
//! which subject it goes and exactly which outputs it must produce. Loss is the shortfall against
//! these expectations, so every generator simulates the plugins it drives.

use super::swap::SwapTarget;
use super::{BenchArgs, Mix, examples, scenarios};
use anyhow::Context;
use async_nats::Client;
use bytes::{Bytes, BytesMut};
use hub::config::Config;
use hub::hub::Hub;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A kind of input: where it is published and what the hub must publish for it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InputKind {
    pub(super) subject: &'static str,
    /// Output subjects (`hub.events.<kind>`, `hub.actions.<name>`), one entry per output.
    pub(super) outputs: &'static [&'static str],
}

/// One phase's inputs, rendered before the clock starts so that publishing does not allocate.
pub(super) struct Batch {
    /// Run-wide sequence number of the first input; ids are a letter and the sequence number.
    pub(super) base: u64,
    /// The kinds of input in this batch, each once.
    pub(super) kinds: Vec<&'static InputKind>,
    /// Per input: its index in `kinds`.
    pub(super) inputs: Vec<u8>,
    /// Slices of one buffer: cloning one is a reference count, not a copy.
    pub(super) bodies: Vec<Bytes>,
    /// `due[i]`: the outputs the first `i` inputs must produce.
    due: Vec<u64>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.inputs.len()
    }

    #[cfg(test)]
    pub(super) fn kind(&self, input: usize) -> &'static InputKind {
        self.kinds[usize::from(self.inputs[input])]
    }

    /// Outputs the first `sent` inputs must produce.
    pub(super) fn due(&self, sent: usize) -> u64 {
        self.due[sent.min(self.len())]
    }

    /// Every output subject the batch's kinds produce, each once.
    pub(super) fn output_subjects(&self) -> Vec<&'static str> {
        let mut subjects = Vec::new();
        for subject in self.kinds.iter().flat_map(|k| k.outputs.iter()) {
            if !subjects.contains(subject) {
                subjects.push(*subject);
            }
        }
        subjects
    }

    /// How many of the first `sent` inputs each kind has.
    fn kind_counts(&self, sent: usize) -> Vec<u64> {
        let mut counts = vec![0; self.kinds.len()];
        for &k in &self.inputs[..sent.min(self.len())] {
            counts[usize::from(k)] += 1;
        }
        counts
    }

    /// The first `sent` inputs by subject.
    pub(super) fn inputs_by_subject(&self, sent: usize) -> BTreeMap<String, u64> {
        let mut by_subject = BTreeMap::new();
        for (kind, count) in self.kinds.iter().zip(self.kind_counts(sent)) {
            *by_subject.entry(kind.subject.to_owned()).or_default() += count;
        }
        by_subject
    }

    /// The outputs the first `sent` inputs must produce, by subject (in `output_subjects` order).
    pub(super) fn expected_outputs(&self, sent: usize) -> Vec<u64> {
        let subjects = self.output_subjects();
        let mut expected = vec![0; subjects.len()];
        for (kind, count) in self.kinds.iter().zip(self.kind_counts(sent)) {
            for output in kind.outputs {
                if let Some(i) = subjects.iter().position(|s| s == output) {
                    expected[i] += count;
                }
            }
        }
        expected
    }
}

/// Renders a batch input by input into one buffer.
pub(super) struct BatchWriter {
    base: u64,
    buf: BytesMut,
    ranges: Vec<Range<usize>>,
    kinds: Vec<&'static InputKind>,
    inputs: Vec<u8>,
    due: Vec<u64>,
}

impl BatchWriter {
    /// A writer for `n` inputs numbered from `base`, of about `body_len` bytes each.
    pub(super) fn new(base: u64, n: u64, body_len: usize) -> anyhow::Result<BatchWriter> {
        let len = usize::try_from(n).context("too many inputs")?;
        let mut due = Vec::with_capacity(len + 1);
        due.push(0);
        Ok(BatchWriter {
            base,
            buf: BytesMut::with_capacity(len.saturating_mul(body_len)),
            ranges: Vec::with_capacity(len),
            kinds: Vec::new(),
            inputs: Vec::with_capacity(len),
            due,
        })
    }

    /// Append one input of `kind` whose body is `body`.
    pub(super) fn input(&mut self, kind: &'static InputKind, body: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
        let index = match self.kinds.iter().position(|k| std::ptr::eq(*k, kind)) {
            Some(i) => i,
            None => {
                self.kinds.push(kind);
                self.kinds.len() - 1
            }
        };
        let start = self.buf.len();
        self.buf.write_fmt(body)?;
        self.ranges.push(start..self.buf.len());
        self.inputs
            .push(u8::try_from(index).context("more than 256 kinds of input")?);
        let due = self.due.last().copied().unwrap_or(0) + kind.outputs.len() as u64;
        self.due.push(due);
        Ok(())
    }

    pub(super) fn finish(self) -> Batch {
        let all = self.buf.freeze();
        Batch {
            base: self.base,
            kinds: self.kinds,
            inputs: self.inputs,
            bodies: self.ranges.into_iter().map(|r| all.slice(r)).collect(),
            due: self.due,
        }
    }
}

/// A run's input generator. It keeps what the hub's plugins remember across phases (the same hub
/// sees them all): this is how it knows what each input produces.
pub(super) enum Workload {
    Examples(examples::Workload),
    Scenarios(scenarios::Workload),
}

impl Workload {
    pub(super) fn new(args: &BenchArgs) -> anyhow::Result<Workload> {
        Ok(match args.mix {
            Mix::Clickstream | Mix::WriteHeavy => Workload::Examples(examples::Workload::new(args.actors, args.mix)?),
            Mix::Scenarios => Workload::Scenarios(scenarios::Workload::new(args.actors)?),
        })
    }

    /// The next `n` inputs.
    pub(super) fn batch(&mut self, n: u64) -> anyhow::Result<Batch> {
        match self {
            Workload::Examples(w) => w.batch(n),
            Workload::Scenarios(w) => w.batch(n),
        }
    }

    /// Set up the hub's plugins (and ingest rules) for this workload.
    pub(super) fn configure(&self, config: &mut Config) {
        match self {
            Workload::Examples(_) => examples::configure(config),
            Workload::Scenarios(_) => scenarios::configure(config),
        }
    }

    /// The plugin whose new versions go live during the swapping phase.
    pub(super) fn swap_target(&self) -> SwapTarget {
        match self {
            Workload::Examples(_) => examples::swap_target(),
            Workload::Scenarios(_) => scenarios::swap_target(),
        }
    }

    /// A plugin that subscribes to no kind of input of this workload, for `--idle-plugins`.
    pub(super) fn idle_plugin(&self) -> PathBuf {
        match self {
            Workload::Examples(_) => Path::new(hub::REFERENCE_PLUGINS).join("customer_creation.wasm"),
            Workload::Scenarios(_) => scenarios::idle_plugin(),
        }
    }

    /// Make a freshly started hub ready for the first phase (plugins, profiles) before the clock
    /// starts.
    pub(super) async fn prepare(&self, hub: &Hub, publisher: &Client) -> anyhow::Result<()> {
        match self {
            Workload::Examples(_) => Ok(()),
            Workload::Scenarios(w) => w.prepare(hub, publisher).await,
        }
    }
}

/// A small, fast, deterministic hash (splitmix64's finaliser): the generators' only source of
/// variety, so every run gets the same inputs and the same expected outputs.
pub(super) fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    static QUIET: InputKind = InputKind {
        subject: "in.quiet",
        outputs: &[],
    };
    static LOUD: InputKind = InputKind {
        subject: "in.loud",
        outputs: &["hub.events.a", "hub.events.b", "hub.events.a"],
    };

    #[test]
    fn a_batch_knows_what_each_prefix_must_produce() {
        let mut w = BatchWriter::new(7, 3, 8).expect("writer");
        for kind in [&QUIET, &LOUD, &QUIET] {
            w.input(kind, format_args!("{{}}")).expect("input");
        }
        let batch = w.finish();
        assert_eq!(batch.base, 7);
        assert_eq!((batch.due(0), batch.due(1), batch.due(2), batch.due(3)), (0, 0, 3, 3));
        assert_eq!(batch.output_subjects(), ["hub.events.a", "hub.events.b"]);
        assert_eq!(batch.expected_outputs(1), [0, 0]);
        assert_eq!(batch.expected_outputs(3), [2, 1]);
        assert_eq!(batch.inputs_by_subject(3)["in.quiet"], 2);
        assert_eq!(batch.kind(1), &LOUD);
        assert_eq!(&batch.bodies[2][..], b"{}");
    }
}
