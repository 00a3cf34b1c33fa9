//! Contact policies: what the arbiter enforces, as the admin writes it (TOML in the config file,
//! JSON through `PUT /api/policies`). Windows are written as durations (`"30s"`, `"24h"`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::limits::{MAX_HOLD, MAX_LIMIT, MAX_WINDOW};

/// `d` in milliseconds for the arbiter's i64 clock, saturating: a window must never wrap
/// negative (which would switch its rule off), even one that bypassed validation.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The arbiter's rules, applied per actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    /// An action is suppressed when one of a higher rank (category priority, then the action's
    /// own priority) was delivered to the same actor within this window. `"0s"` turns it off.
    #[serde(with = "crate::config::duration_text")]
    #[schema(value_type = String, example = "30s")]
    pub conflict_window: Duration,
    /// A delivered action suppresses later ones with the same dedup key within this window.
    #[serde(with = "crate::config::duration_text")]
    #[schema(value_type = String, example = "1h")]
    pub dedup_window: Duration,
    /// At most this many actions of any kind per actor per window.
    pub max_actions: Option<Limit>,
    /// Per category: its priority and its own contact limit.
    pub categories: BTreeMap<String, CategoryPolicy>,
    /// A delivered action of one category holds back others for a while.
    pub suppressions: Vec<Suppression>,
}

/// At most `count` deliveries per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub count: u32,
    #[serde(with = "crate::config::duration_text")]
    #[schema(value_type = String, example = "24h")]
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CategoryPolicy {
    /// Higher wins a conflict; categories not listed have priority 0.
    pub priority: i32,
    pub limit: Option<Limit>,
    /// Actions of this category wait this long before they go out, so that a higher-ranked
    /// action proposed meanwhile (within the conflict window) wins over them even when it comes
    /// second. For categories where a few seconds do not matter (offers), never for support.
    #[serde(with = "crate::config::duration_text")]
    #[schema(value_type = String, example = "5s")]
    pub hold: Duration,
}

/// While an action of category `by` delivered less than `for` ago is open, actions of the
/// categories in `suppress` are held back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Suppression {
    pub by: String,
    pub suppress: Vec<String>,
    #[serde(rename = "for", with = "crate::config::duration_text")]
    #[schema(value_type = String, example = "1h")]
    pub for_: Duration,
}

impl Default for Policies {
    /// No contact limits: every action is delivered unless a plugin's dedup key repeats within
    /// an hour. Real deployments set their own (see [`Policies::example`]).
    fn default() -> Self {
        Policies {
            conflict_window: Duration::ZERO,
            dedup_window: Duration::from_secs(3600),
            max_actions: None,
            categories: BTreeMap::new(),
            suppressions: Vec::new(),
        }
    }
}

impl Policies {
    /// What `hub up` runs with: support outranks alerts outranks offers; within 30 s only the
    /// highest-ranked action reaches a customer (offers wait 2 s for a better one); at most 3 offers a day and 10 actions an hour;
    /// an open support case holds offers back for an hour.
    pub fn example() -> Policies {
        let category = |priority, limit| CategoryPolicy {
            priority,
            limit,
            hold: Duration::ZERO,
        };
        Policies {
            conflict_window: Duration::from_secs(30),
            dedup_window: Duration::from_secs(3600),
            max_actions: Some(Limit {
                count: 10,
                window: Duration::from_secs(3600),
            }),
            categories: BTreeMap::from([
                ("support".to_owned(), category(300, None)),
                ("alert".to_owned(), category(200, None)),
                (
                    "offer".to_owned(),
                    CategoryPolicy {
                        hold: Duration::from_secs(2),
                        ..category(
                            100,
                            Some(Limit {
                                count: 3,
                                window: Duration::from_secs(24 * 3600),
                            }),
                        )
                    },
                ),
            ]),
            suppressions: vec![Suppression {
                by: "support".to_owned(),
                suppress: vec!["offer".to_owned()],
                for_: Duration::from_secs(3600),
            }],
        }
    }

    /// Everything wrong with these policies, for the admin, or nothing.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        check_window(&mut problems, "conflict_window", self.conflict_window);
        check_window(&mut problems, "dedup_window", self.dedup_window);
        if let Some(l) = &self.max_actions {
            check_limit(&mut problems, "max_actions", l);
        }
        for (name, c) in &self.categories {
            if name.is_empty() {
                problems.push("categories: a category name is empty".to_owned());
            }
            if let Some(l) = &c.limit {
                check_limit(&mut problems, &format!("categories.{name}.limit"), l);
            }
            if c.hold > MAX_HOLD {
                problems.push(format!(
                    "categories.{name}.hold: at most {}, not {}",
                    humantime::format_duration(MAX_HOLD),
                    humantime::format_duration(c.hold)
                ));
            }
        }
        for (i, s) in self.suppressions.iter().enumerate() {
            if s.by.is_empty() {
                problems.push(format!("suppressions[{i}].by is empty"));
            }
            if s.suppress.is_empty() {
                problems.push(format!("suppressions[{i}].suppress names no category"));
            }
            if s.for_.is_zero() {
                problems.push(format!("suppressions[{i}].for must be longer than 0s"));
            }
            check_window(&mut problems, &format!("suppressions[{i}].for"), s.for_);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// How far back any rule looks: delivered actions older than this can be forgotten.
    pub fn horizon(&self) -> Duration {
        let limits = self
            .categories
            .values()
            .filter_map(|c| c.limit.as_ref())
            .chain(self.max_actions.as_ref())
            .map(|l| l.window);
        let suppressions = self.suppressions.iter().map(|s| s.for_);
        limits
            .chain(suppressions)
            .chain([self.conflict_window, self.dedup_window])
            .max()
            .unwrap_or_default()
    }

    pub fn hold_of(&self, category: &str) -> Duration {
        self.categories.get(category).map_or(Duration::ZERO, |c| c.hold)
    }

    pub fn priority_of(&self, category: &str) -> i32 {
        self.categories.get(category).map_or(0, |c| c.priority)
    }

    /// How actions compare: by their category's priority, then by their own. The arbiter
    /// judges the actions of one input highest rank first, so the support call beats the offer.
    pub fn rank(&self, action: &crate::event::Action) -> (i32, i32) {
        (self.priority_of(&action.category), action.priority)
    }
}

fn check_limit(problems: &mut Vec<String>, what: &str, l: &Limit) {
    if l.count == 0 || l.count > MAX_LIMIT {
        problems.push(format!(
            "{what}: count must be between 1 and {MAX_LIMIT}, not {}",
            l.count
        ));
    }
    if l.window.is_zero() {
        problems.push(format!("{what}: window must be longer than 0s"));
    }
    check_window(problems, &format!("{what}.window"), l.window);
}

fn check_window(problems: &mut Vec<String>, what: &str, window: Duration) {
    if window > MAX_WINDOW {
        problems.push(format!(
            "{what}: at most {}, not {}",
            humantime::format_duration(MAX_WINDOW),
            humantime::format_duration(window)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_round_trips_through_json_and_toml() {
        let p = Policies::example();
        let json = serde_json::to_string(&p).expect("json");
        assert_eq!(serde_json::from_str::<Policies>(&json).expect("parse"), p);
        let toml = r#"
            conflict_window = "30s"
            max_actions = { count = 10, window = "1h" }
            [categories.support]
            priority = 300
            [categories.alert]
            priority = 200
            [categories.offer]
            priority = 100
            limit = { count = 3, window = "24h" }
            hold = "2s"
            [[suppressions]]
            by = "support"
            suppress = ["offer"]
            for = "1h"
        "#;
        use figment::providers::Format;
        let parsed: Policies = figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .expect("toml");
        assert_eq!(parsed, p);
        assert_eq!(p.horizon(), Duration::from_secs(24 * 3600));
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        let err = serde_json::from_str::<Policies>(r#"{"conflict_window": "soon"}"#).expect_err("refused");
        assert!(err.to_string().contains("\"soon\" is not a duration"), "{err}");
        let err =
            serde_json::from_str::<Policies>(r#"{"max_action": {"count": 1, "window": "1h"}}"#).expect_err("refused");
        assert!(err.to_string().contains("unknown field `max_action`"), "{err}");

        let mut p = Policies::example();
        p.max_actions = Some(Limit {
            count: 0,
            window: Duration::ZERO,
        });
        p.suppressions[0].suppress.clear();
        let err = p.validate().expect_err("invalid");
        assert!(
            err.contains("max_actions: count must be between 1 and 100, not 0"),
            "{err}"
        );
        assert!(err.contains("max_actions: window must be longer than 0s"), "{err}");
        assert!(err.contains("suppressions[0].suppress names no category"), "{err}");
    }

    #[test]
    fn windows_too_long_for_the_arbiter_are_refused_naming_the_field() {
        let long: Policies = serde_json::from_str(
            r#"{"dedup_window": "300000000years", "conflict_window": "101years",
                "max_actions": {"count": 1, "window": "200years"},
                "categories": {"offer": {"limit": {"count": 1, "window": "1000years"}}},
                "suppressions": [{"by": "support", "suppress": ["offer"], "for": "500years"}]}"#,
        )
        .expect("parses");
        let err = long.validate().expect_err("refused");
        for field in [
            "dedup_window: at most 100years, not 300000000years",
            "conflict_window: at most 100years",
            "max_actions.window: at most 100years",
            "categories.offer.limit.window: at most 100years",
            "suppressions[0].for: at most 100years",
        ] {
            assert!(err.contains(field), "{field} in {err}");
        }

        let mut longest = Policies::example();
        longest.dedup_window = MAX_WINDOW;
        longest.conflict_window = MAX_WINDOW;
        longest.suppressions[0].for_ = MAX_WINDOW;
        longest.validate().expect("100 years is the longest valid window");
        assert_eq!(millis(MAX_WINDOW), 3_155_760_000_000);
    }

    #[test]
    fn window_millis_saturate_instead_of_wrapping_negative() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), i64::MAX);
        let wraps = humantime::parse_duration("300000000years").expect("duration");
        assert!((wraps.as_millis() as i64) < 0, "what the arbiter's cast did");
        assert_eq!(millis(wraps), i64::MAX);
    }
}
