//! Durations in plugin configs and timer arithmetic, in the hub's unit (milliseconds).

use serde::{Deserialize, Deserializer};

pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// A span of time in a config: a number of milliseconds, or a string such as `"30m"`,
/// `"90s"`, `"2h 30m"` or `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub i64);

impl Millis {
    pub fn as_ms(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) if ms >= 0 => Ok(Millis(ms)),
            Raw::Ms(ms) => Err(serde::de::Error::custom(format!("duration must not be negative: {ms}"))),
            Raw::Text(text) => humantime::parse_duration(&text)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
                .and_then(|d| {
                    i64::try_from(d.as_millis())
                        .map(Millis)
                        .map_err(|_| serde::de::Error::custom("duration too large"))
                }),
        }
    }
}
