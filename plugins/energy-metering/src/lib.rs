//! Energy metering: meters send cumulative kWh readings (`meter.reading`, keyed by meter id,
//! payload `{"kwh": 1234.5, "at": <ms, optional>}`), sometimes late, duplicated or out of order.
//! Each hour's consumption is the last cumulative value of that hour minus the last of the hour
//! before; when an hour closes (a reading of a later hour arrives) the meter emits
//! `meter.hourly`, and when a day closes, `meter.daily`. An hour above the meter's
//! `hourly_threshold_kwh` (from its profile) raises the action `alert.high_consumption`.
//!
//! Cumulative readings make disorder harmless: within the open hour the highest value wins
//! (duplicates and reordering change nothing), and a late reading for a closed hour is ignored.

use hub_plugin_sdk::time::{DAY, HOUR, Millis};
use hub_plugin_sdk::{Action, Context, Description, Error, Event, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Length of the consumption period for `meter.hourly` (an hour; shorter for tests).
    period: Millis,
    priority: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            period: Millis(HOUR),
            priority: 50,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Reading {
    kwh: f64,
    #[serde(default)]
    at: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct MeterProfile {
    #[serde(default)]
    hourly_threshold_kwh: Option<f64>,
}

/// What a meter remembers between readings.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meter {
    /// Start of the open period and the highest reading in it.
    open: Option<(i64, f64)>,
    /// The cumulative value at the end of the last closed period.
    base: Option<f64>,
    /// Start of the open day and its consumption so far.
    day: Option<(i64, f64)>,
}

/// Payload of `meter.hourly` and `meter.daily`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Consumption {
    pub start: i64,
    pub end: i64,
    pub kwh: f64,
}

const METER: &str = "meter";

pub struct EnergyMetering {
    period: i64,
    priority: i32,
}

impl Plugin for EnergyMetering {
    type Config = Config;

    fn describe() -> Description {
        Description::new("energy-metering", env!("CARGO_PKG_VERSION"))
            .subscribe("meter.reading")
            .emits("meter.hourly")
            .emits("meter.daily")
            .emits("alert.high_consumption")
    }

    fn new(config: Config) -> Result<Self, Error> {
        let period = config.period.as_ms();
        if period <= 0 || DAY % period != 0 {
            return Err(Error::msg("period must divide a day"));
        }
        Ok(EnergyMetering {
            period,
            priority: config.priority,
        })
    }

    fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
        let reading: Reading = event.payload()?;
        let at = reading.at.unwrap_or(event.time);
        let start = at - at.rem_euclid(self.period);
        let mut meter: Meter = cx.state().get(METER)?.unwrap_or_default();
        match meter.open {
            None => meter.open = Some((start, reading.kwh)),
            Some((open, max)) if start == open => meter.open = Some((open, max.max(reading.kwh))),
            Some((open, _)) if start < open => return Ok(()),
            Some((open, max)) => {
                if let Some(base) = meter.base {
                    self.close_period(cx, &mut meter, open, (max - base).max(0.0))?;
                }
                meter.base = Some(max);
                meter.open = Some((start, reading.kwh.max(max)));
            }
        }
        cx.state().set(METER, &meter)
    }
}

impl EnergyMetering {
    /// Emit the consumption of the period that starts at `start`, alert if it is over the
    /// meter's threshold, and close the day when the period was its last.
    fn close_period(&self, cx: &mut Context, meter: &mut Meter, start: i64, kwh: f64) -> Result<(), Error> {
        let end = start + self.period;
        let hourly = Consumption { start, end, kwh };
        cx.emit("meter.hourly", &hourly)?;
        let profile: MeterProfile = cx.profile()?.unwrap_or_default();
        if let Some(threshold) = profile.hourly_threshold_kwh.filter(|t| kwh > *t) {
            let alert = Action::new("alert.high_consumption", "alert")
                .priority(self.priority)
                .dedup_key(format!("high_consumption:{}:{start}", cx.actor()))
                .with_payload(
                    &serde_json::json!({"start": start, "end": end, "kwh": kwh, "threshold_kwh": threshold}),
                )?;
            cx.act(alert);
        }
        let day_start = start - start.rem_euclid(DAY);
        let so_far = match meter.day {
            Some((d, sum)) if d == day_start => sum,
            _ => 0.0,
        };
        let total = so_far + kwh;
        if end - day_start >= DAY {
            cx.emit(
                "meter.daily",
                &Consumption {
                    start: day_start,
                    end: day_start + DAY,
                    kwh: total,
                },
            )?;
            meter.day = None;
        } else {
            meter.day = Some((day_start, total));
        }
        Ok(())
    }
}

export_plugin!(EnergyMetering);

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testing::TestHub;
    use serde_json::json;

    fn reading(hub: &TestHub<EnergyMetering>, at: i64, kwh: f64) -> hub_plugin_sdk::Event {
        hub.event("meter.reading", "m1", &json!({"kwh": kwh, "at": at}))
    }

    fn hourly(out: &[hub_plugin_sdk::Output]) -> Vec<Consumption> {
        out.iter()
            .filter_map(|o| o.as_emit().filter(|e| e.kind == "meter.hourly"))
            .map(|e| e.payload().expect("payload"))
            .collect()
    }

    #[test]
    fn hourly_deltas_survive_duplicates_disorder_and_late_readings() {
        let mut hub = TestHub::<EnergyMetering>::new(json!({})).expect("config");
        let h = HOUR;
        for (at, kwh) in [
            (10, 100.0),
            (h + 5, 101.0),
            (h + 50, 103.0),
            (h + 20, 102.0),
            (h + 50, 103.0),
        ] {
            hub.send(reading(&hub, at, kwh)).expect("call");
        }
        // Hour 2 opens: hour 1 (base 100 → 103) closes with 3 kWh.
        let out = hub.send(reading(&hub, 2 * h + 1, 104.0)).expect("call");
        assert_eq!(
            hourly(&out),
            vec![Consumption {
                start: h,
                end: 2 * h,
                kwh: 3.0
            }]
        );
        assert!(
            hub.send(reading(&hub, h + 30, 102.5)).expect("call").is_empty(),
            "late: ignored"
        );
        let out = hub.send(reading(&hub, 3 * h, 110.0)).expect("call");
        assert_eq!(hourly(&out)[0].kwh, 1.0);
    }

    #[test]
    fn an_hour_over_the_profile_threshold_raises_an_alert_and_days_close() {
        let mut hub = TestHub::<EnergyMetering>::new(json!({})).expect("config");
        hub.set_profile("m1", &json!({"hourly_threshold_kwh": 2.0}))
            .expect("profile");
        let h = HOUR;
        let mut alerts = 0;
        let mut daily = Vec::new();
        for hour in 0..=25 {
            // 1 kWh an hour, 5 kWh in hour 7.
            let kwh = hour as f64 + if hour > 7 { 4.0 } else { 0.0 };
            let out = hub.send(reading(&hub, hour * h + 1, kwh)).expect("call");
            alerts += out.iter().filter(|o| o.as_action().is_some()).count();
            daily.extend(
                out.iter()
                    .filter_map(|o| o.as_emit().filter(|e| e.kind == "meter.daily"))
                    .map(|e| e.payload::<Consumption>().expect("payload")),
            );
        }
        assert_eq!(alerts, 1, "only hour 7 is over 2 kWh");
        assert_eq!(daily.len(), 1);
        assert_eq!(
            (daily[0].start, daily[0].kwh),
            (0, 27.0),
            "hours 1..=23 of day one: 22 + 5"
        );
    }
}
