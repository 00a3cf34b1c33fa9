//! Cumulative kWh readings for energy-metering: `events.meter.reading` envelopes, each meter on a
//! clock of its own (the payload's `at`), reporting six hours at a time. Per meter-hour, four
//! readings: the hour's last value
//! (which opens the hour and so closes the one before), an earlier value arriving out of order, a
//! duplicate of the last, and a late reading of the hour before, which the plugin ignores. From a
//! meter's third hour on, each opened hour closes the previous one: `meter.hourly`, at the end of
//! a day `meter.daily` too, and `alert.high_consumption` when the hour's kWh is over the meter's
//! profile threshold (the alert is timed from the reading that closed the hour).

use super::super::workload::{BatchWriter, InputKind, mix64};
use super::Lanes;

/// Every meter's `hourly_threshold_kwh` (its profile is published before the clock starts).
pub(super) const THRESHOLD_KWH: f64 = 4.5;
/// kWh of a high hour (one in ten); other hours use 1 to 3, all whole, so sums are exact.
const HIGH_KWH: u64 = 6;
/// Readings per meter-hour.
const CYCLE: u64 = 4;
/// Hours a meter reports at a time (as a data concentrator uploads them).
const HOURS_PER_VISIT: u64 = 6;
const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;
/// The meters' clocks start on a day (day 20000 of the epoch, in 2024), each meter at an hour of
/// its own (hashed, so it does not depend on when the meter is first dealt), so days do not all
/// close at once.
const FIRST_HOUR: i64 = 20_000 * 24;

/// A reading that closes no hour: all but an hour's first, and the first of a meter's first two
/// hours (there is no base to subtract from yet).
pub(super) static READING: InputKind = kind(&[]);
/// The first reading of an hour from the meter's third on: the hour before closes, …
pub(super) static HOUR: InputKind = kind(&["hub.events.meter.hourly"]);
/// … over the threshold, …
pub(super) static HIGH_HOUR: InputKind = kind(&["hub.events.meter.hourly", "hub.actions.alert.high_consumption"]);
/// … last of its day, …
pub(super) static DAY: InputKind = kind(&["hub.events.meter.hourly", "hub.events.meter.daily"]);
/// … or both.
pub(super) static HIGH_DAY: InputKind = kind(&[
    "hub.events.meter.hourly",
    "hub.events.meter.daily",
    "hub.actions.alert.high_consumption",
]);

const fn kind(outputs: &'static [&'static str]) -> InputKind {
    InputKind {
        subject: "events.meter.reading",
        outputs,
    }
}

/// What the generator knows of a meter.
#[derive(Debug, Clone, Copy, Default)]
struct Meter {
    /// Readings sent so far.
    readings: u64,
    /// Hours opened so far; the open one is `hours - 1`.
    hours: u32,
    /// The cumulative kWh at the end of the open hour.
    kwh: u64,
}

pub(super) struct Meters {
    lanes: Lanes,
    meters: Vec<Meter>,
}

impl Meters {
    pub(super) fn new(meters: usize) -> Meters {
        Meters {
            lanes: Lanes::new(meters as u64, CYCLE * HOURS_PER_VISIT),
            meters: vec![Meter::default(); meters],
        }
    }

    pub(super) fn next(&mut self, seq: u64, w: &mut BatchWriter) -> anyhow::Result<()> {
        let m = self.lanes.next();
        let meter = &mut self.meters[m as usize];
        let step = meter.readings % CYCLE;
        meter.readings += 1;
        let kind = if step == 0 {
            let kind = closing(m, meter.hours);
            meter.kwh += consumption(m, meter.hours);
            meter.hours += 1;
            kind
        } else {
            &READING
        };
        let open = meter.hours - 1;
        let before = meter.kwh - consumption(m, open);
        let (hour, minute, kwh) = match step {
            0 | 2 => (open, 50, meter.kwh),
            1 => (open, 20, before + consumption(m, open) / 2),
            _ => (open.wrapping_sub(1), 55, before),
        };
        let at = hour_of(m, hour) * HOUR_MS + minute * MINUTE_MS;
        w.input(
            kind,
            format_args!(
                r#"{{"id":"m{seq}","kind":"meter.reading","actor":"m{m}","payload":{{"kwh":{kwh}.0,"at":{at}}}}}"#
            ),
        )
    }
}

/// What opening hour `opening` of meter `m` produces: from the third hour on, the hour before
/// closes.
fn closing(m: u64, opening: u32) -> &'static InputKind {
    if opening < 2 {
        return &READING;
    }
    let closed = opening - 1;
    let high = consumption(m, closed) as f64 > THRESHOLD_KWH;
    let day_ends = (hour_of(m, closed) + 1) % 24 == 0;
    match (day_ends, high) {
        (false, false) => &HOUR,
        (false, true) => &HIGH_HOUR,
        (true, false) => &DAY,
        (true, true) => &HIGH_DAY,
    }
}

/// kWh used by meter `m` in its hour `hour`.
fn consumption(m: u64, hour: u32) -> u64 {
    let h = mix64(m << 32 | u64::from(hour));
    if h.is_multiple_of(10) {
        HIGH_KWH
    } else {
        1 + (h >> 8) % 3
    }
}

/// Meter `m`'s hour `hour` in hours since the epoch (`u32::MAX` is the hour before its first).
fn hour_of(m: u64, hour: u32) -> i64 {
    let hour = if hour == u32::MAX { -1 } else { i64::from(hour) };
    FIRST_HOUR + (mix64(!m) % 24) as i64 + hour
}
