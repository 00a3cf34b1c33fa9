//! Channel switches for tv-audience: `events.tv.switch` envelopes from viewers zapping a few
//! channels at a time. A switch leaves the
//! old channel and joins the new one, each as an event re-keyed to `channel:<id>`, where the
//! channel's count changes and `tv.audience` is published. A switch to the channel already
//! watched (or off while off) changes nothing. The channels are a dozen hot keys.

use super::super::workload::{BatchWriter, InputKind, mix64};
use super::Lanes;

const CHANNELS: [&str; 12] = [
    "news", "sports", "movies", "kids", "music", "series", "docs", "weather", "cooking", "travel", "science", "comedy",
];

/// Nothing changes.
pub(super) static SAME: InputKind = kind(&[]);
/// Off to a channel: `tv.joined`, then that channel's `tv.audience`.
pub(super) static JOINS: InputKind = kind(&["hub.events.tv.joined", "hub.events.tv.audience"]);
/// A channel to off: `tv.left`, then that channel's `tv.audience`.
pub(super) static LEAVES: InputKind = kind(&["hub.events.tv.left", "hub.events.tv.audience"]);
/// One channel to another: both.
pub(super) static CHANGES: InputKind = kind(&[
    "hub.events.tv.left",
    "hub.events.tv.joined",
    "hub.events.tv.audience",
    "hub.events.tv.audience",
]);

const fn kind(outputs: &'static [&'static str]) -> InputKind {
    InputKind {
        subject: "events.tv.switch",
        outputs,
    }
}

/// Switches a viewer makes in a row (zapping).
const ZAPS: u64 = 4;

pub(super) struct Viewers {
    lanes: Lanes,
    switches: u64,
    /// Per viewer: the channel watched (an index into CHANNELS), if any.
    watching: Vec<Option<u8>>,
}

impl Viewers {
    pub(super) fn new(viewers: usize) -> Viewers {
        Viewers {
            lanes: Lanes::new(viewers as u64, ZAPS),
            switches: 0,
            watching: vec![None; viewers],
        }
    }

    /// The next switch: viewers zap a few channels in turn; one switch in eight turns the set off.
    pub(super) fn next(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let v = self.lanes.next();
        let h = mix64(self.switches ^ 0x7465_6c65);
        self.switches += 1;
        let to = (!h.is_multiple_of(8)).then(|| ((h >> 8) % CHANNELS.len() as u64) as u8);
        let from = std::mem::replace(&mut self.watching[v as usize], to);
        let kind = match (from, to) {
            (a, b) if a == b => &SAME,
            (None, _) => &JOINS,
            (_, None) => &LEAVES,
            _ => &CHANGES,
        };
        match to {
            Some(c) => w.input(
                kind,
                format_args!(
                    r#"{{"id":"t{seq}","kind":"tv.switch","actor":"v{v}","payload":{{"channel":"{}"}}}}"#,
                    CHANNELS[usize::from(c)]
                ),
            ),
            None => w.input(
                kind,
                format_args!(r#"{{"id":"t{seq}","kind":"tv.switch","actor":"v{v}","payload":{{"channel":null}}}}"#),
            ),
        }
    }
}
