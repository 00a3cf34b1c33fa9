//! An actor's ledger: the arbiter's decisions about its actions, and the rules that make them.

use super::{Policies, policy};
use crate::event::Action;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

use crate::limits::LEDGER_DELIVERED;
pub use crate::limits::LEDGER_RECENT;

/// One actor's decisions, oldest first.
///
/// Stored in the `actions` tree with a format tag (see [`Ledger::to_bytes`]); every field of an
/// entry is always written, so an absent optional one cannot shift the others.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub entries: Vec<Entry>,
}

/// Why a stored ledger could not be read.
#[derive(Debug, thiserror::Error)]
#[error("action ledger unreadable: {0}")]
pub struct LedgerError(#[from] rmp_serde::decode::Error);

/// One decision about one proposed action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub name: String,
    pub category: String,
    pub priority: i32,
    pub plugin: String,
    /// When it was decided, ms since the Unix epoch.
    pub time: i64,
    /// Always written (as nil when absent): entries are stored by position, see
    /// [`Ledger::to_bytes`].
    #[serde(default)]
    pub dedup_key: Option<String>,
    pub outcome: Outcome,
}

/// The format tag of stored ledgers: `[LEDGER_FORMAT, [entry…]]`. Earlier versions wrote
/// `[[entry…]]` (and left out absent dedup keys, which broke them); a change to [`Entry`]'s
/// fields gets a new tag.
const LEDGER_FORMAT: u8 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Delivered,
    Suppressed(Reason),
    /// Waiting until `until` (ms) for a higher-ranked action (the category's `hold`); judged
    /// again then, and this entry replaced by the verdict.
    Held {
        until: i64,
    },
}

/// Why an action was held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reason {
    /// An action with the same dedup key was delivered within the dedup window.
    Duplicate { of: String },
    /// An open action of a suppressing category (e.g. a support case holds back offers).
    SuppressedBy { id: String, category: String, until: i64 },
    /// An action of a higher rank was delivered within the conflict window.
    Outranked { by: String, name: String },
    /// The category's contact limit is reached.
    CategoryLimit {
        category: String,
        count: u32,
        window_ms: u64,
    },
    /// The limit on actions of any kind is reached.
    ContactLimit { count: u32, window_ms: u64 },
}

impl Reason {
    /// The label of the decision metric.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Duplicate { .. } => "duplicate",
            Reason::SuppressedBy { .. } => "suppressed_by",
            Reason::Outranked { .. } => "outranked",
            Reason::CategoryLimit { .. } => "category_limit",
            Reason::ContactLimit { .. } => "contact_limit",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let window = |ms: &u64| humantime::format_duration(Duration::from_millis(*ms));
        match self {
            Reason::Duplicate { of } => write!(f, "duplicate of action {of} (same dedup key)"),
            Reason::SuppressedBy { id, category, until } => write!(
                f,
                "held back by the open {category} action {id} until {}",
                crate::event::rfc3339(*until)
            ),
            Reason::Outranked { by, name } => write!(f, "outranked by {name} ({by}) within the conflict window"),
            Reason::CategoryLimit {
                category,
                count,
                window_ms,
            } => write!(f, "{category} limit of {count} per {} reached", window(window_ms)),
            Reason::ContactLimit { count, window_ms } => {
                write!(f, "contact limit of {count} actions per {} reached", window(window_ms))
            }
        }
    }
}

/// What the arbiter says about a proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// First decision about this action.
    Decided(Outcome),
    /// The action was decided before (a replay of its input): do nothing again.
    Replayed,
}

impl Ledger {
    /// The stored form: the format tag, then the entries, each a MessagePack array with every
    /// field. Positional rather than a map with field names: a ledger is read and written
    /// again for every decision, and names made that about twice the work (`hub bench`).
    pub fn to_bytes(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec(&(LEDGER_FORMAT, &self.entries))
    }

    /// Read a stored ledger: the tagged form, or what earlier versions wrote (positional
    /// arrays whose entries without a dedup key are one element short, or maps).
    pub fn from_bytes(bytes: &[u8]) -> Result<Ledger, LedgerError> {
        if let Ok((LEDGER_FORMAT, entries)) = rmp_serde::from_slice::<(u8, Vec<Entry>)>(bytes) {
            return Ok(Ledger { entries });
        }
        match rmp_serde::from_slice(bytes) {
            Ok(ledger) => Ok(ledger),
            Err(e) => legacy_ledger(bytes).ok_or(LedgerError(e)),
        }
    }

    /// Decide about `action` at `now` and record the decision. `released` is true when a held
    /// action's wait is over: it is judged again, and not held twice.
    pub fn decide(&mut self, policies: &Policies, action: &Action, now: i64, released: bool) -> Decision {
        if let Some(i) = self.entries.iter().position(|e| e.id == action.id) {
            if !(released && matches!(self.entries[i].outcome, Outcome::Held { .. })) {
                return Decision::Replayed;
            }
            self.entries.remove(i);
        }
        let hold = policies.hold_of(&action.category);
        let outcome = match self.reason_to_suppress(policies, action, now) {
            Some(reason) => Outcome::Suppressed(reason),
            None if !released && !hold.is_zero() => Outcome::Held {
                until: now.saturating_add(policy::millis(hold)),
            },
            None => Outcome::Delivered,
        };
        self.entries.push(Entry {
            id: action.id.clone(),
            name: action.name.clone(),
            category: action.category.clone(),
            priority: action.priority,
            plugin: action.plugin.clone(),
            time: now,
            dedup_key: action.dedup_key.clone(),
            outcome: outcome.clone(),
        });
        self.prune(policies, now);
        Decision::Decided(outcome)
    }

    fn reason_to_suppress(&self, p: &Policies, action: &Action, now: i64) -> Option<Reason> {
        let within = |e: &Entry, window: Duration| now.saturating_sub(e.time) < policy::millis(window);
        let delivered = || self.entries.iter().rev().filter(|e| e.outcome == Outcome::Delivered);

        if let Some(key) = &action.dedup_key
            && let Some(e) = delivered().find(|e| e.dedup_key.as_ref() == Some(key) && within(e, p.dedup_window))
        {
            return Some(Reason::Duplicate { of: e.id.clone() });
        }
        for rule in p.suppressions.iter().filter(|s| s.suppress.contains(&action.category)) {
            if let Some(e) = delivered().find(|e| e.category == rule.by && within(e, rule.for_)) {
                return Some(Reason::SuppressedBy {
                    id: e.id.clone(),
                    category: e.category.clone(),
                    until: e.time.saturating_add(policy::millis(rule.for_)),
                });
            }
        }
        if !p.conflict_window.is_zero() {
            let rank = p.rank(action);
            if let Some(e) = delivered()
                .take_while(|e| within(e, p.conflict_window))
                .find(|e| (p.priority_of(&e.category), e.priority) > rank)
            {
                return Some(Reason::Outranked {
                    by: e.id.clone(),
                    name: e.name.clone(),
                });
            }
        }
        if let Some(limit) = p.categories.get(&action.category).and_then(|c| c.limit) {
            let sent = delivered()
                .filter(|e| e.category == action.category && within(e, limit.window))
                .count();
            if sent >= limit.count as usize {
                return Some(Reason::CategoryLimit {
                    category: action.category.clone(),
                    count: limit.count,
                    window_ms: policy::millis(limit.window).unsigned_abs(),
                });
            }
        }
        if let Some(limit) = p.max_actions {
            let sent = delivered().take_while(|e| within(e, limit.window)).count();
            if sent >= limit.count as usize {
                return Some(Reason::ContactLimit {
                    count: limit.count,
                    window_ms: policy::millis(limit.window).unsigned_abs(),
                });
            }
        }
        None
    }

    /// Keep the latest LEDGER_RECENT decisions, and the delivered actions any rule can still
    /// count (within the horizon, at most LEDGER_DELIVERED), so the ledger stays small.
    fn prune(&mut self, policies: &Policies, now: i64) {
        let horizon = policy::millis(policies.horizon());
        let len = self.entries.len();
        let mut delivered = 0;
        let mut keep = vec![false; len];
        for (i, e) in self.entries.iter().enumerate().rev() {
            let recent = len - i <= LEDGER_RECENT;
            let counted =
                e.outcome == Outcome::Delivered && now.saturating_sub(e.time) < horizon && delivered < LEDGER_DELIVERED;
            if counted {
                delivered += 1;
            }
            keep[i] = recent || counted;
        }
        let mut flags = keep.into_iter();
        self.entries.retain(|_| flags.next().unwrap_or(true));
    }
}

/// Entries of a positional ledger written when the dedup key was skipped if absent: seven
/// elements, the dedup key missing before the outcome. Put it back and read the ledger again.
fn legacy_ledger(bytes: &[u8]) -> Option<Ledger> {
    /// Fields of an entry; the dedup key is the seventh.
    const ENTRY_FIELDS: usize = 8;
    let mut value = rmpv::decode::read_value(&mut &bytes[..]).ok()?;
    let rmpv::Value::Array(fields) = &mut value else {
        return None;
    };
    let Some(rmpv::Value::Array(entries)) = fields.first_mut() else {
        return None;
    };
    for entry in entries.iter_mut() {
        if let rmpv::Value::Array(f) = entry
            && f.len() == ENTRY_FIELDS - 1
        {
            f.insert(ENTRY_FIELDS - 2, rmpv::Value::Nil);
        }
    }
    // Encoded again and read by rmp-serde, which knows the enums' encoding (rmpv does not).
    let mut repaired = Vec::with_capacity(bytes.len() + entries.len());
    rmpv::encode::write_value(&mut repaired, &value).ok()?;
    rmp_serde::from_slice(&repaired).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::Limit;
    use crate::limits::MAX_LIMIT;

    const MIN: i64 = 60_000;

    fn action(id: &str, category: &str, priority: i32) -> Action {
        Action {
            id: id.to_owned(),
            name: format!("{category}.{id}"),
            category: category.to_owned(),
            priority,
            dedup_key: None,
            actor: "c1".to_owned(),
            plugin: "p".to_owned(),
            cause: "e".to_owned(),
            time: 0,
            payload: Vec::new(),
        }
    }

    fn outcome(d: Decision) -> Outcome {
        match d {
            Decision::Decided(o) => o,
            Decision::Replayed => panic!("not a replay"),
        }
    }

    fn reason(d: Decision) -> &'static str {
        match outcome(d) {
            Outcome::Suppressed(r) => r.label(),
            Outcome::Delivered => "delivered",
            Outcome::Held { .. } => "held",
        }
    }

    /// The example policies without the hold on offers.
    fn policies() -> Policies {
        let mut p = Policies::example();
        p.categories.get_mut("offer").expect("offer").hold = Duration::ZERO;
        p
    }

    #[test]
    fn a_held_offer_loses_to_a_support_call_that_comes_second() {
        let mut p = Policies::example();
        p.suppressions.clear();
        let mut ledger = Ledger::default();
        let offer = action("o1", "offer", 1);
        assert_eq!(
            outcome(ledger.decide(&p, &offer, 0, false)),
            Outcome::Held { until: 2_000 }
        );
        assert_eq!(
            ledger.decide(&p, &offer, 500, false),
            Decision::Replayed,
            "a replay while held"
        );
        assert_eq!(
            reason(ledger.decide(&p, &action("s1", "support", 1), 1_000, false)),
            "delivered"
        );
        assert_eq!(reason(ledger.decide(&p, &offer, 2_000, true)), "outranked");
        assert_eq!(ledger.entries.len(), 2, "the verdict replaced the held entry");

        let later = action("o2", "offer", 1);
        assert_eq!(reason(ledger.decide(&p, &later, 40_000, false)), "held");
        assert_eq!(reason(ledger.decide(&p, &later, 42_000, true)), "delivered");
        assert_eq!(
            ledger.decide(&p, &later, 42_001, true),
            Decision::Replayed,
            "released once"
        );
    }

    #[test]
    fn support_wins_over_an_offer_of_the_same_event_and_the_conflict_window() {
        let p = policies();
        let mut batch = [action("o1", "offer", 5), action("s1", "support", 1)];
        batch.sort_by_key(|a| std::cmp::Reverse(p.rank(a)));
        let mut ledger = Ledger::default();
        let decided: Vec<_> = batch.iter().map(|a| reason(ledger.decide(&p, a, 0, false))).collect();
        assert_eq!(
            decided,
            ["delivered", "suppressed_by"],
            "support first, offer held back"
        );

        let mut p = policies();
        p.suppressions.clear();
        let mut ledger = Ledger::default();
        assert_eq!(
            reason(ledger.decide(&p, &action("a1", "alert", 0), 0, false)),
            "delivered"
        );
        assert_eq!(
            reason(ledger.decide(&p, &action("o2", "offer", 9), 10_000, false)),
            "outranked"
        );
        assert_eq!(
            reason(ledger.decide(&p, &action("o3", "offer", 9), 30_000, false)),
            "delivered",
            "the conflict window has passed"
        );
        assert_eq!(
            reason(ledger.decide(&p, &action("o4", "offer", 1), 31_000, false)),
            "outranked",
            "within a category the action's own priority ranks"
        );
    }

    #[test]
    fn category_and_contact_limits_count_delivered_actions_in_their_windows() {
        let mut p = policies();
        p.conflict_window = Duration::ZERO;
        let mut ledger = Ledger::default();
        for i in 0..3 {
            let d = ledger.decide(&p, &action(&format!("o{i}"), "offer", 1), i * MIN, false);
            assert_eq!(outcome(d), Outcome::Delivered);
        }
        match outcome(ledger.decide(&p, &action("o3", "offer", 1), 3 * MIN, false)) {
            Outcome::Suppressed(r) => assert_eq!(r.to_string(), "offer limit of 3 per 1day reached"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reason(ledger.decide(&p, &action("o4", "offer", 1), 24 * 60 * MIN, false)),
            "delivered",
            "the first offer left the 24h window"
        );
        let mut ledger = Ledger::default();
        for i in 0..10 {
            ledger.decide(&p, &action(&format!("a{i}"), "alert", 1), i, false);
        }
        assert_eq!(
            reason(ledger.decide(&p, &action("a10", "alert", 1), 10, false)),
            "contact_limit"
        );
        assert_eq!(
            reason(ledger.decide(&p, &action("a11", "alert", 1), 60 * MIN, false)),
            "delivered"
        );
    }

    #[test]
    fn dedup_keys_and_replays() {
        let p = Policies::default();
        let mut ledger = Ledger::default();
        let mut a = action("x1", "alert", 1);
        a.dedup_key = Some("meter-7:2026-11-22T10".to_owned());
        assert_eq!(reason(ledger.decide(&p, &a, 0, false)), "delivered");
        assert_eq!(
            ledger.decide(&p, &a, 1, false),
            Decision::Replayed,
            "same id: decided before"
        );
        a.id = "x2".to_owned();
        assert_eq!(reason(ledger.decide(&p, &a, MIN, false)), "duplicate");
        a.id = "x3".to_owned();
        assert_eq!(
            reason(ledger.decide(&p, &a, 61 * MIN, false)),
            "delivered",
            "outside the window"
        );
        assert_eq!(ledger.entries.len(), 3);
    }

    #[test]
    fn the_ledger_stays_small_and_keeps_what_limits_need() {
        let mut p = policies();
        p.conflict_window = Duration::ZERO;
        p.max_actions = None;
        p.categories.get_mut("offer").expect("offer").limit = Some(Limit {
            count: MAX_LIMIT,
            window: Duration::from_secs(24 * 3600),
        });
        let mut ledger = Ledger::default();
        for i in 0..1000 {
            ledger.decide(&p, &action(&format!("o{i}"), "offer", 1), i, false);
        }
        assert!(ledger.entries.len() <= LEDGER_RECENT + LEDGER_DELIVERED);
        let delivered = ledger
            .entries
            .iter()
            .filter(|e| e.outcome == Outcome::Delivered)
            .count();
        assert_eq!(
            delivered, MAX_LIMIT as usize,
            "exactly the limit got through, and is still known"
        );
        let last = ledger.entries.last().expect("entries");
        assert_eq!(last.id, "o999");
    }

    /// Ledgers as versions before the map encoding wrote them: positional arrays, with the
    /// dedup key left out when absent.
    #[derive(Serialize)]
    struct LegacyEntry<'a> {
        id: &'a str,
        name: &'a str,
        category: &'a str,
        priority: i32,
        plugin: &'a str,
        time: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        dedup_key: &'a Option<String>,
        outcome: &'a Outcome,
    }

    fn legacy_bytes(ledger: &Ledger) -> Vec<u8> {
        let entries: Vec<LegacyEntry<'_>> = ledger
            .entries
            .iter()
            .map(|e| LegacyEntry {
                id: &e.id,
                name: &e.name,
                category: &e.category,
                priority: e.priority,
                plugin: &e.plugin,
                time: e.time,
                dedup_key: &e.dedup_key,
                outcome: &e.outcome,
            })
            .collect();
        rmp_serde::to_vec(&(entries,)).expect("encode")
    }

    #[test]
    fn an_action_without_a_dedup_key_keeps_the_ledger_readable() {
        let p = policies();
        let mut ledger = Ledger::default();
        for i in 0..5 {
            ledger.decide(&p, &action(&format!("o{i}"), "offer", 1), i * MIN, false);
        }
        let read = Ledger::from_bytes(&ledger.to_bytes().expect("encode")).expect("readable");
        assert_eq!(read, ledger);
        assert_eq!(
            read.entries.iter().filter(|e| e.outcome == Outcome::Delivered).count(),
            3,
            "the limit of 3 offers a day still counts what was delivered"
        );
        let legacy = Ledger::from_bytes(&legacy_bytes(&ledger)).expect("a ledger the old encoding broke reads");
        assert_eq!(legacy, ledger);
    }

    mod formats {
        use super::super::*;
        use super::legacy_bytes;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![Just(String::new()), ".{0,12}", "[a-z.]{1,8}"]
        }

        fn reason() -> impl Strategy<Value = Reason> {
            prop_oneof![
                text().prop_map(|of| Reason::Duplicate { of }),
                (text(), text(), any::<i64>()).prop_map(|(id, category, until)| Reason::SuppressedBy {
                    id,
                    category,
                    until
                }),
                (text(), text()).prop_map(|(by, name)| Reason::Outranked { by, name }),
                (text(), any::<u32>(), any::<u64>()).prop_map(|(category, count, window_ms)| {
                    Reason::CategoryLimit {
                        category,
                        count,
                        window_ms,
                    }
                }),
                (any::<u32>(), any::<u64>()).prop_map(|(count, window_ms)| Reason::ContactLimit { count, window_ms }),
            ]
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            prop_oneof![
                Just(Outcome::Delivered),
                reason().prop_map(Outcome::Suppressed),
                any::<i64>().prop_map(|until| Outcome::Held { until }),
            ]
        }

        prop_compose! {
            fn entry()(
                id in text(), name in text(), category in text(), priority in any::<i32>(), plugin in text(),
                time in any::<i64>(), dedup_key in proptest::option::of(text()), outcome in outcome(),
            ) -> Entry {
                Entry { id, name, category, priority, plugin, time, dedup_key, outcome }
            }
        }

        prop_compose! {
            fn action()(
                id in text(), name in text(), category in text(), priority in any::<i32>(),
                dedup_key in proptest::option::of(text()), actor in text(), plugin in text(), cause in text(),
                time in any::<i64>(), payload in proptest::collection::vec(any::<u8>(), 0..16),
            ) -> Action {
                Action { id, name, category, priority, dedup_key, actor, plugin, cause, time, payload }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn ledgers_round_trip(entries in proptest::collection::vec(entry(), 0..8)) {
                let ledger = Ledger { entries };
                let bytes = ledger.to_bytes().expect("encode");
                prop_assert_eq!(Ledger::from_bytes(&bytes).expect("decode"), ledger.clone());
                prop_assert_eq!(Ledger::from_bytes(&legacy_bytes(&ledger)).expect("legacy"), ledger);
            }

            /// A held action waits in its timer's payload in this form.
            #[test]
            fn held_actions_round_trip(action in action()) {
                let bytes = rmp_serde::to_vec_named(&action).expect("encode");
                prop_assert_eq!(rmp_serde::from_slice::<Action>(&bytes).expect("decode"), action);
            }
        }

        #[test]
        fn a_ledger_in_the_tagged_form_keeps_its_tag_and_every_field() {
            let mut ledger = Ledger::default();
            ledger.decide(&Policies::default(), &super::action("a1", "alert", 1), 5, false);
            let bytes = ledger.to_bytes().expect("encode");
            let value = rmpv::decode::read_value(&mut &bytes[..]).expect("msgpack");
            let rmpv::Value::Array(top) = value else {
                panic!("{value:?}")
            };
            assert_eq!(top[0], rmpv::Value::from(LEDGER_FORMAT));
            let rmpv::Value::Array(entries) = &top[1] else {
                panic!("{top:?}")
            };
            assert_eq!(
                entries[0].as_array().map(Vec::len),
                Some(8),
                "an absent dedup key is written as nil"
            );
        }

        #[test]
        fn a_ledger_entry_tolerates_fields_added_later() {
            let stored = serde_json::json!({"entries": [{
                "id": "a", "name": "n", "category": "offer", "priority": 1, "plugin": "p", "time": 5,
                "outcome": "Delivered", "channel_hint": "added by a later version"
            }]});
            let bytes = rmp_serde::to_vec_named(&stored).expect("encode");
            let ledger = Ledger::from_bytes(&bytes).expect("decode");
            assert_eq!(ledger.entries[0].dedup_key, None);
            assert_eq!(ledger.entries[0].outcome, Outcome::Delivered);
        }
    }
}
