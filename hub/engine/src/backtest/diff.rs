//! The difference between what two versions of a plugin did with the same inputs.
//!
//! Outputs are matched by what they are and why they happened: an action by its name, actor and
//! cause (the input event's id, or the timer's id for an action a timer took), and the n-th of
//! those when a cause gives several. A matched pair that differs in anything a customer would
//! notice (payload, priority, category, dedup key, or time) is *changed*; an output only the
//! candidate gives is *added*, one only the active version gives is *removed*.

use crate::offline::{Cause, Record, What};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What was compared: actions, or events the plugin emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Action,
    Event,
}

/// The difference for one action name (or emitted event kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NameDiff {
    pub output: OutputKind,
    pub name: String,
    /// How many the active version gave, and the candidate.
    pub active: u64,
    pub candidate: u64,
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    /// Actors with at least one added, removed or changed output.
    pub actors_affected: u64,
    /// Some of them (all of them in a full diff), sorted.
    pub actors: Vec<String>,
    pub examples: Examples,
}

/// Examples of each change (all of them in a full diff).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Examples {
    pub added: Vec<OutputChange>,
    pub removed: Vec<OutputChange>,
    pub changed: Vec<OutputChange>,
}

/// One output that differs: as the active version gave it (`before`) and the candidate (`after`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputChange {
    pub actor: String,
    /// The input event's id, or `timer:<id>`.
    pub cause: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// How much of each difference a report shows.
#[derive(Debug, Clone, Copy)]
pub struct Detail {
    /// Examples per change and name.
    pub examples: usize,
    /// Affected actors named per name.
    pub actors: usize,
}

impl Detail {
    /// Everything: the full diff.
    pub const FULL: Detail = Detail {
        examples: usize::MAX,
        actors: usize::MAX,
    };
}

/// One output, keyed for matching.
type Key = (OutputKind, String, String, String, usize);

/// The outputs of a run by key, with what a customer would see of each.
fn outputs(records: &[Record]) -> BTreeMap<Key, serde_json::Value> {
    let mut seen: BTreeMap<(OutputKind, String, String, String), usize> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for record in records {
        let (kind, name, actor, shown) = match &record.what {
            What::Action {
                name,
                category,
                priority,
                dedup_key,
                actor,
                payload,
                ..
            } => (
                OutputKind::Action,
                name,
                actor,
                serde_json::json!({
                    "at": record.at, "category": category, "priority": priority,
                    "dedup_key": dedup_key, "payload": payload,
                }),
            ),
            What::Emit {
                kind, actor, payload, ..
            } => (
                OutputKind::Event,
                kind,
                actor,
                serde_json::json!({"at": record.at, "payload": payload}),
            ),
            What::Deliver { .. } | What::DeadLetter { .. } => continue,
        };
        let cause = cause_key(&record.cause);
        let n = seen
            .entry((kind, name.clone(), actor.clone(), cause.clone()))
            .or_default();
        out.insert((kind, name.clone(), actor.clone(), cause, *n), shown);
        *n += 1;
    }
    out
}

fn cause_key(cause: &Cause) -> String {
    match cause {
        Cause::Event { id, .. } => id.clone(),
        Cause::Timer { id, .. } => format!("timer:{id}"),
        Cause::Line { line } => format!("line:{line}"),
    }
}

/// The differences between the active version's records and the candidate's, by output name;
/// names where both gave the same are listed too (with no change), so counts can be compared.
pub fn diff(active: &[Record], candidate: &[Record], detail: Detail) -> Vec<NameDiff> {
    let before = outputs(active);
    let after = outputs(candidate);
    // Per name: its counts, and the actors it affects.
    let mut collected: BTreeMap<(OutputKind, String), (NameDiff, BTreeSet<String>)> = BTreeMap::new();
    let change = |key: &Key, before: Option<&serde_json::Value>, after: Option<&serde_json::Value>| OutputChange {
        actor: key.2.clone(),
        cause: key.3.clone(),
        before: before.cloned(),
        after: after.cloned(),
    };
    for (key, old) in &before {
        let (d, actors) = slot(&mut collected, key);
        d.active += 1;
        match after.get(key) {
            Some(new) if new == old => {}
            Some(new) => {
                d.changed += 1;
                actors.insert(key.2.clone());
                if d.examples.changed.len() < detail.examples {
                    d.examples.changed.push(change(key, Some(old), Some(new)));
                }
            }
            None => {
                d.removed += 1;
                actors.insert(key.2.clone());
                if d.examples.removed.len() < detail.examples {
                    d.examples.removed.push(change(key, Some(old), None));
                }
            }
        }
    }
    for (key, new) in &after {
        let (d, actors) = slot(&mut collected, key);
        d.candidate += 1;
        if !before.contains_key(key) {
            d.added += 1;
            actors.insert(key.2.clone());
            if d.examples.added.len() < detail.examples {
                d.examples.added.push(change(key, None, Some(new)));
            }
        }
    }
    collected
        .into_values()
        .map(|(mut d, actors)| {
            d.actors_affected = actors.len() as u64;
            d.actors = actors.into_iter().take(detail.actors).collect();
            d
        })
        .collect()
}

/// The entry of `key`'s name, made when it is the first.
fn slot<'a>(
    collected: &'a mut BTreeMap<(OutputKind, String), (NameDiff, BTreeSet<String>)>,
    key: &Key,
) -> &'a mut (NameDiff, BTreeSet<String>) {
    collected.entry((key.0, key.1.clone())).or_insert_with(|| {
        let d = NameDiff {
            output: key.0,
            name: key.1.clone(),
            active: 0,
            candidate: 0,
            added: 0,
            removed: 0,
            changed: 0,
            actors_affected: 0,
            actors: Vec::new(),
            examples: Examples::default(),
        };
        (d, BTreeSet::new())
    })
}

/// Whether a diff shows no difference at all.
pub fn identical(diff: &[NameDiff]) -> bool {
    diff.iter().all(|d| d.added == 0 && d.removed == 0 && d.changed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn action(actor: &str, cause: &str, priority: i32, at: i64) -> Record {
        Record {
            at,
            plugin: Some("p".into()),
            cause: Cause::Event {
                id: cause.into(),
                kind: "x".into(),
                actor: actor.into(),
            },
            what: What::Action {
                name: "offer.a".into(),
                category: "offer".into(),
                priority,
                dedup_key: None,
                actor: actor.into(),
                id: format!("{cause}-0"),
                payload: serde_json::json!({}),
            },
            micros: 7,
        }
    }

    #[test]
    fn added_removed_and_changed_actions_are_told_apart() {
        let active = [action("ann", "e1", 1, 10), action("bob", "e2", 1, 20)];
        let candidate = [action("ann", "e1", 5, 10), action("cid", "e3", 1, 30)];
        let d = diff(
            &active,
            &candidate,
            Detail {
                examples: 3,
                actors: 10,
            },
        );
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!((d.active, d.candidate, d.added, d.removed, d.changed), (2, 2, 1, 1, 1));
        assert_eq!(d.actors, ["ann", "bob", "cid"]);
        assert_eq!(d.examples.added[0].actor, "cid");
        assert_eq!(d.examples.removed[0].actor, "bob");
        assert_eq!(
            d.examples.changed[0].before.as_ref().map(|b| &b["priority"]),
            Some(&serde_json::json!(1))
        );
    }

    fn records() -> impl Strategy<Value = Vec<Record>> {
        proptest::collection::vec(
            ("[a-c]", "e[0-3]", 0i32..3, 0i64..3).prop_map(|(a, c, p, t)| action(&a, &c, p, t)),
            0..20,
        )
    }

    proptest! {
        #[test]
        fn a_run_against_itself_differs_in_nothing(a in records()) {
            let d = diff(&a, &a, Detail::FULL);
            prop_assert!(identical(&d));
            prop_assert_eq!(d.iter().map(|d| d.active).sum::<u64>(), a.len() as u64);
        }

        #[test]
        fn swapping_the_runs_swaps_added_and_removed(a in records(), b in records()) {
            let ab = diff(&a, &b, Detail::FULL);
            let ba = diff(&b, &a, Detail::FULL);
            prop_assert_eq!(ab.len(), ba.len());
            for (x, y) in ab.iter().zip(&ba) {
                prop_assert_eq!((x.added, x.removed, x.changed), (y.removed, y.added, y.changed));
                prop_assert_eq!(x.active + x.added, x.candidate + x.removed);
            }
        }
    }
}
