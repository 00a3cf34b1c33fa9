//! Shadow versions: a candidate that runs on live traffic beside the active version of its
//! plugin, and delivers nothing.
//!
//! A shadow is a live plugin under a name of its own, `<plugin>~shadow<version>` (a name users
//! cannot give: `~` is not allowed in plugin names). The shards call it for the events its plugin
//! takes, after the active version; nothing it outputs is routed, judged, delivered or published,
//! and a call of it that fails is counted here, not dead-lettered. Its supervisor quarantines it
//! like any plugin, and that touches nothing else. Its state and timers are its own and live in
//! the shards' memory (`MemoryStores`, reading the hub's profiles): a shadow adds nothing to the
//! commits, which is what keeps the live path's latency where it was, and it leaves nothing
//! behind when it is dropped or promoted (nor across a restart: it starts again empty).
//!
//! Both versions' outputs go to the plugin's [`ShadowBook`], which matches them as
//! [`backtest::diff`](crate::backtest::diff) does: by name, actor, cause (input event id, or timer
//! id) and rank. An event's outputs are settled once the shadow has run it (the active version
//! runs it first, in the same turn): what only one version gave is added (the shadow) or removed
//! (the active version). A timer's outputs wait up to [`GRACE`] for the other version's timer.

use crate::backtest::diff::{Examples, NameDiff, OutputChange, OutputKind};
use crate::dead_letter::DeadLetter;
use crate::offline::as_json;
use crate::runtime::Output;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What sets a shadow's name apart from its plugin's.
pub const MARK: &str = "~shadow";
/// How long an output waits for the other version's before it counts as added or removed
/// (outputs of one input come within the same turn; a timer's may come later).
pub const GRACE: Duration = Duration::from_secs(60);
/// Examples kept per change and name (the most recent).
const EXAMPLES: usize = 5;
/// Affected actors named per name.
const ACTORS: usize = 20;
/// Outputs waiting for a match at most; beyond, the oldest is settled at once.
const MAX_PENDING: usize = 100_000;

/// The live name of `plugin`'s shadow `version`: its state and timers belong to it.
pub fn shadow_name(plugin: &str, version: u32) -> String {
    format!("{plugin}{MARK}{version}")
}

/// Whether a live name is a shadow's.
pub fn is_shadow(name: &str) -> bool {
    name.contains(MARK)
}

/// `plugin`'s shadow comparison, and whether the shadow is quarantined now.
pub fn status_of(
    registry: &crate::registry::Registry,
    stats: &crate::stats::PluginStats,
    plugin: &str,
) -> Option<ShadowStatus> {
    let mut status = registry.shadow_status(plugin)?;
    status.quarantined = stats.summary(&shadow_name(plugin, status.version)).quarantined;
    Some(status)
}

/// Which version an output comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Active,
    Shadow,
}

/// What the API shows of a shadow (`GET /api/plugins/{name}`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShadowStatus {
    pub version: u32,
    /// When this comparison started (ms since the epoch): at the push, or at the hub's start.
    pub since: i64,
    /// Calls of the shadow, and those that failed by reason (they are not dead-lettered).
    pub calls: u64,
    pub failures: BTreeMap<String, u64>,
    /// Outputs still waiting for the other version's (at most a minute).
    pub pending: u64,
    /// The shadow's calls are refused now, after repeated traps (its active version runs on).
    #[serde(default)]
    pub quarantined: bool,
    /// By action name (and emitted event kind): counts, actors affected, recent examples.
    pub diff: Vec<NameDiff>,
}

/// The running comparison of one plugin's shadow with its active version, fed by every shard.
pub struct ShadowBook {
    pub plugin: String,
    pub version: u32,
    since: i64,
    /// Calls of the shadow (outside the lock: most calls give nothing to compare).
    calls: AtomicU64,
    book: Mutex<Book>,
}

impl std::fmt::Debug for ShadowBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShadowBook")
            .field("plugin", &self.plugin)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// (output kind, name, actor, cause, rank among the call's outputs of that name and actor).
type Key = (OutputKind, String, String, String, usize);

#[derive(Default)]
struct Book {
    names: BTreeMap<(OutputKind, String), Tally>,
    /// Outputs of one version waiting for the other's, and the order they came in.
    pending: HashMap<Key, (Side, serde_json::Value, Instant)>,
    arrivals: VecDeque<(Instant, Key)>,
    /// Pending outputs of input events, by cause, until the shadow has run the event.
    by_cause: HashMap<String, Vec<Key>>,
    failures: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tally {
    active: u64,
    shadow: u64,
    added: u64,
    removed: u64,
    changed: u64,
    actors: BTreeSet<String>,
    /// Actors beyond those kept (counted, not named).
    more_actors: u64,
    examples: Examples,
}

impl ShadowBook {
    pub fn new(plugin: &str, version: u32) -> ShadowBook {
        ShadowBook {
            plugin: plugin.to_owned(),
            version,
            since: crate::event::now_ms(),
            calls: AtomicU64::new(0),
            book: Mutex::new(Book::default()),
        }
    }

    /// One call's outcome: its outputs, or the dead letter it would have had. `cause` is what
    /// it ran: an event (its id) or a timer (`timer:<id>`, `event: false`); `actor` whose it was.
    pub fn record(
        &self,
        side: Side,
        cause: &str,
        event: bool,
        actor: &str,
        result: &Result<Vec<Output>, Box<DeadLetter>>,
    ) {
        let settles = side == Side::Shadow && event;
        if side == Side::Shadow {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        if result.as_ref().is_ok_and(Vec::is_empty) && !settles {
            return;
        }
        let now = Instant::now();
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(outputs) => {
                let mut rank: HashMap<(OutputKind, &str, &str), usize> = HashMap::new();
                for output in outputs {
                    let (kind, name, target, shown) = match output {
                        Output::Action {
                            name,
                            category,
                            priority,
                            dedup_key,
                            payload,
                        } => (
                            OutputKind::Action,
                            name.as_str(),
                            actor,
                            serde_json::json!({
                                "category": category, "priority": priority,
                                "dedup_key": dedup_key, "payload": as_json(payload),
                            }),
                        ),
                        Output::Emit {
                            kind,
                            actor: to,
                            payload,
                        } => (
                            OutputKind::Event,
                            kind.as_str(),
                            to.as_deref().unwrap_or(actor),
                            serde_json::json!({"payload": as_json(payload)}),
                        ),
                        Output::Deliver { .. } => continue,
                    };
                    let n = rank.entry((kind, name, target)).or_default();
                    let key = (kind, name.to_owned(), target.to_owned(), cause.to_owned(), *n);
                    *n += 1;
                    book.output(side, key, shown, event, now);
                }
            }
            Err(letter) if side == Side::Shadow => {
                *book.failures.entry(letter.reason().as_str().to_owned()).or_default() += 1;
            }
            Err(_) => {}
        }
        if settles {
            book.settle_cause(cause);
        }
        book.settle(now, GRACE);
    }

    /// The comparison so far.
    pub fn status(&self) -> ShadowStatus {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        book.settle(Instant::now(), GRACE);
        ShadowStatus {
            version: self.version,
            since: self.since,
            calls: self.calls.load(Ordering::Relaxed),
            failures: book.failures.clone(),
            pending: book.pending.len() as u64,
            quarantined: false,
            diff: book
                .names
                .iter()
                .map(|((kind, name), t)| NameDiff {
                    output: *kind,
                    name: name.clone(),
                    active: t.active,
                    candidate: t.shadow,
                    added: t.added,
                    removed: t.removed,
                    changed: t.changed,
                    actors_affected: t.actors.len() as u64 + t.more_actors,
                    actors: t.actors.iter().take(ACTORS).cloned().collect(),
                    examples: t.examples.clone(),
                })
                .collect(),
        }
    }
}

impl Book {
    fn output(&mut self, side: Side, key: Key, shown: serde_json::Value, event: bool, now: Instant) {
        let tally = self.names.entry((key.0, key.1.clone())).or_default();
        match side {
            Side::Active => tally.active += 1,
            Side::Shadow => tally.shadow += 1,
        }
        match self.pending.remove(&key) {
            Some((other, before, _)) if other != side => {
                if before != shown {
                    let (active, shadow) = match side {
                        Side::Shadow => (before, shown),
                        Side::Active => (shown, before),
                    };
                    let tally = self.names.entry((key.0, key.1.clone())).or_default();
                    tally.changed += 1;
                    tally.note(&key, Some(active), Some(shadow));
                }
            }
            // The same version twice for one key (a timer that fired again): the older one
            // stays unmatched.
            Some(older) => {
                self.settle_one(&key, older.0, older.1);
                self.wait(key, side, shown, event, now);
            }
            None => self.wait(key, side, shown, event, now),
        }
    }

    fn wait(&mut self, key: Key, side: Side, shown: serde_json::Value, event: bool, now: Instant) {
        while self.pending.len() >= MAX_PENDING && self.settle_oldest() {}
        if event {
            self.by_cause.entry(key.3.clone()).or_default().push(key.clone());
        }
        self.arrivals.push_back((now, key.clone()));
        self.pending.insert(key, (side, shown, now));
    }

    /// The shadow has run event `cause`: what waits of it was given by one version only.
    fn settle_cause(&mut self, cause: &str) {
        for key in self.by_cause.remove(cause).unwrap_or_default() {
            if let Some((side, shown, _)) = self.pending.remove(&key) {
                self.settle_one(&key, side, shown);
            }
        }
    }

    /// Count the outputs that waited longer than `grace` as given by one version only.
    fn settle(&mut self, now: Instant, grace: Duration) {
        while self
            .arrivals
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= grace)
        {
            self.settle_oldest();
        }
    }

    /// Settle the output that has waited longest, if it still waits; false when none is left.
    fn settle_oldest(&mut self) -> bool {
        let Some((at, key)) = self.arrivals.pop_front() else {
            return false;
        };
        // Only the entry that arrived then (one matched or settled since is gone, or newer).
        if self.pending.get(&key).is_some_and(|(_, _, when)| *when == at)
            && let Some((side, shown, _)) = self.pending.remove(&key)
        {
            self.by_cause.remove(&key.3);
            self.settle_one(&key, side, shown);
        }
        true
    }

    fn settle_one(&mut self, key: &Key, side: Side, shown: serde_json::Value) {
        let tally = self.names.entry((key.0, key.1.clone())).or_default();
        match side {
            Side::Active => {
                tally.removed += 1;
                tally.note(key, Some(shown), None);
            }
            Side::Shadow => {
                tally.added += 1;
                tally.note(key, None, Some(shown));
            }
        }
    }
}

impl Tally {
    /// Remember an actor and keep the change as a recent example.
    fn note(&mut self, key: &Key, before: Option<serde_json::Value>, after: Option<serde_json::Value>) {
        if self.actors.len() < 10_000 {
            self.actors.insert(key.2.clone());
        } else if !self.actors.contains(&key.2) {
            self.more_actors += 1;
        }
        let list = match (&before, &after) {
            (Some(_), Some(_)) => &mut self.examples.changed,
            (None, _) => &mut self.examples.added,
            (_, None) => &mut self.examples.removed,
        };
        if list.len() == EXAMPLES {
            list.remove(0);
        }
        list.push(OutputChange {
            actor: key.2.clone(),
            cause: key.3.clone(),
            before,
            after,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(priority: i32) -> Output {
        Output::Action {
            name: "offer.a".into(),
            category: "offer".into(),
            priority,
            dedup_key: None,
            payload: vec![0x80],
        }
    }

    #[test]
    fn outputs_are_matched_by_cause_and_unmatched_ones_settle_after_the_grace() {
        let book = ShadowBook::new("p", 2);
        // Events: the active version runs each first, then the shadow settles it.
        book.record(Side::Active, "e1", true, "ann", &Ok(vec![action(1)]));
        book.record(Side::Shadow, "e1", true, "ann", &Ok(vec![action(1)]));
        book.record(Side::Active, "e2", true, "bob", &Ok(vec![action(1)]));
        book.record(Side::Shadow, "e2", true, "bob", &Ok(vec![action(9)]));
        book.record(Side::Active, "e3", true, "cid", &Ok(vec![]));
        book.record(Side::Shadow, "e3", true, "cid", &Ok(vec![action(1)]));
        book.record(Side::Active, "e4", true, "dan", &Ok(vec![action(1)]));
        // Timers: each version's own, matched within the grace.
        book.record(Side::Shadow, "timer:t", false, "eve", &Ok(vec![action(1)]));
        book.record(Side::Active, "timer:t", false, "eve", &Ok(vec![action(1)]));
        book.record(Side::Shadow, "timer:u", false, "fay", &Ok(vec![action(1)]));
        let status = book.status();
        let d = &status.diff[0];
        assert_eq!((d.active, d.candidate, d.changed, d.added), (4, 5, 1, 1));
        assert_eq!(
            status.pending, 2,
            "e4 waits for the shadow, timer:u for the active version"
        );
        assert_eq!(status.calls, 5);

        let mut inner = book.book.lock().expect("lock");
        inner.settle(Instant::now() + GRACE, GRACE);
        let t = &inner.names[&(OutputKind::Action, "offer.a".to_owned())];
        assert_eq!((t.added, t.removed, t.changed), (2, 1, 1));
        assert_eq!(
            t.actors.iter().map(String::as_str).collect::<Vec<_>>(),
            ["bob", "cid", "dan", "fay"]
        );
        assert!(inner.pending.is_empty() && inner.by_cause.is_empty());
    }

    #[test]
    fn a_shadow_name_is_one_no_plugin_can_have() {
        let name = shadow_name("payment-trouble", 3);
        assert!(is_shadow(&name) && !crate::runtime::valid_name(&name));
        assert!(!is_shadow("payment-trouble"));
    }
}
