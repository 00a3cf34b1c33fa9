//! Reusable scenario building blocks: windows, sequences, absences, deduplication and top-N.
//!
//! A block is a small descriptor (a state key or timer id, and its parameters); it holds no data
//! itself. Everything it remembers lives in the current actor's state under the key the author
//! chooses, so give every block of a plugin its own key and several can coexist. Build blocks once
//! in [`Plugin::new`](crate::Plugin::new) and keep them in the plugin, or build them on the fly:
//! both are cheap. State is kept small: entries that can no longer matter are pruned on every
//! write, and every block has a bound on what it keeps.
//!
//! Times are ms since the Unix epoch, usually [`Event::time`](crate::Event::time).
//!
//! ```
//! use hub_plugin_sdk::blocks::{Dedup, SlidingWindow};
//! use hub_plugin_sdk::time::{DAY, Millis};
//! use hub_plugin_sdk::{Context, Description, Error, Event, Plugin};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Order { amount: f64 }
//!
//! /// Spending 1000 or more within a day becomes `customer.big_spender`, at most once a day.
//! struct BigSpender { spent: SlidingWindow, once: Dedup }
//!
//! impl Plugin for BigSpender {
//!     type Config = serde_json::Map<String, serde_json::Value>;
//!     fn describe() -> Description {
//!         Description::new("big-spender", "0.1.0").subscribe("order.paid").emits("customer.big_spender")
//!     }
//!     fn new(_: Self::Config) -> Result<Self, Error> {
//!         Ok(BigSpender {
//!             spent: SlidingWindow::new("spent", Millis(DAY)),
//!             once: Dedup::new("told", Millis(DAY)),
//!         })
//!     }
//!     fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
//!         let order: Order = event.payload()?;
//!         let day = self.spent.add(cx, event.time, order.amount)?;
//!         if day.sum >= 1000.0 && self.once.first(cx, "big_spender", event.time)? {
//!             cx.emit("customer.big_spender", &day)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut hub = hub_plugin_sdk::testing::TestHub::<BigSpender>::new(serde_json::json!({})).unwrap();
//! let order = |amount: f64| serde_json::json!({ "amount": amount });
//! assert!(hub.send(hub.event("order.paid", "c1", &order(600.0))).unwrap().is_empty());
//! assert_eq!(hub.send(hub.event("order.paid", "c1", &order(500.0))).unwrap().len(), 1);
//! assert!(hub.send(hub.event("order.paid", "c1", &order(100.0))).unwrap().is_empty()); // told today
//! ```

use crate::time::Millis;
use crate::{Context, Error, Timer};
use serde::{Deserialize, Serialize};

fn finite(what: &str, value: f64) -> Result<f64, Error> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::msg(format!("{what} must be a finite number, got {value}")))
    }
}

/// Store `value` under `key`, or delete the key when there is nothing to remember.
fn save<T: Serialize>(cx: &Context, key: &str, value: &[T]) -> Result<(), Error> {
    if value.is_empty() {
        cx.state().delete(key);
        Ok(())
    } else {
        cx.state().set(key, value)
    }
}

/// Count and sum of the values in a window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Totals {
    pub count: u64,
    pub sum: f64,
}

impl Totals {
    fn add(&mut self, count: u64, sum: f64) {
        self.count += count;
        self.sum += sum;
    }
}

/// Sliding window: values of the last `window` ms (exclusive start, inclusive end: (at - window, at]).
///
/// State: the values inside the window, one entry per distinct ms (values recorded at the same ms
/// are summed). Entries that have left the window are dropped on every [`add`](Self::add). At most
/// [`SlidingWindow::MAX_ENTRIES`] distinct times are kept: beyond that the two closest entries are
/// merged at the later time, so an old value may stay counted up to that gap too long (exact
/// unless more than that many distinct ms fall in one window).
///
/// ```
/// # use hub_plugin_sdk::{Context, Error, Event};
/// use hub_plugin_sdk::blocks::SlidingWindow;
/// use hub_plugin_sdk::time::{MINUTE, Millis};
///
/// # fn on_event(cx: &mut Context, event: &Event) -> Result<(), Error> {
/// // In on_event: three failed payments within 10 minutes.
/// let failures = SlidingWindow::new("failures", Millis(10 * MINUTE));
/// if failures.add(cx, event.time, 1.0)?.count >= 3 {
///     failures.clear(cx);
///     cx.emit("payment.trouble", &serde_json::json!({ "failures": 3 }))?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    key: String,
    window: i64,
}

/// (time, count, sum) of the values recorded at one ms.
type SlidingEntry = (i64, u64, f64);

impl SlidingWindow {
    /// The most distinct times one window keeps before merging the closest ones.
    pub const MAX_ENTRIES: usize = 1024;

    pub fn new(key: impl Into<String>, window: Millis) -> Self {
        SlidingWindow {
            key: key.into(),
            window: window.as_ms().max(0),
        }
    }

    /// Record `value` at time `at` (ms); returns the totals of the window ending at `at`. Entries
    /// older than the window are dropped from state.
    ///
    /// Out-of-order values are fine; a value already out of the window of the latest time recorded
    /// is not kept (no later window can contain it). `value` must be finite.
    pub fn add(&self, cx: &mut Context, at: i64, value: f64) -> Result<Totals, Error> {
        let value = finite("sliding window value", value)?;
        let mut entries: Vec<SlidingEntry> = cx.state().get(&self.key)?.unwrap_or_default();
        let latest = entries.last().map_or(at, |e| e.0.max(at));
        let horizon = latest.saturating_sub(self.window);
        entries.retain(|e| e.0 > horizon);
        if at > horizon {
            match entries.binary_search_by_key(&at, |e| e.0) {
                Ok(i) => {
                    entries[i].1 += 1;
                    entries[i].2 += value;
                }
                Err(i) => entries.insert(i, (at, 1, value)),
            }
        }
        if entries.len() > Self::MAX_ENTRIES {
            merge_closest(&mut entries);
        }
        save(cx, &self.key, &entries)?;
        Ok(self.sum(&entries, at))
    }

    /// Totals of the window ending at `at`, without recording anything.
    pub fn totals(&self, cx: &Context, at: i64) -> Result<Totals, Error> {
        let entries: Vec<SlidingEntry> = cx.state().get(&self.key)?.unwrap_or_default();
        Ok(self.sum(&entries, at))
    }

    /// Forget every value.
    pub fn clear(&self, cx: &mut Context) {
        cx.state().delete(&self.key);
    }

    fn sum(&self, entries: &[SlidingEntry], at: i64) -> Totals {
        let start = at.saturating_sub(self.window);
        let mut totals = Totals::default();
        for &(_, count, sum) in entries.iter().filter(|e| e.0 > start && e.0 <= at) {
            totals.add(count, sum);
        }
        totals
    }
}

/// Merge the two adjacent entries closest in time into the later one.
fn merge_closest(entries: &mut Vec<SlidingEntry>) {
    let Some(i) = (0..entries.len().saturating_sub(1)).min_by_key(|&i| entries[i + 1].0.saturating_sub(entries[i].0))
    else {
        return;
    };
    let (_, count, sum) = entries.remove(i);
    entries[i].1 += count;
    entries[i].2 += sum;
}

/// One closed tumbling window: the values added at times in `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Closed {
    pub start: i64,
    pub end: i64,
    pub totals: Totals,
}

/// Tumbling windows aligned to multiples of `size` ms since the epoch (e.g. hours, days).
///
/// State: the open window only (its start and totals). A window closes when a value for a later
/// window arrives, not when its time is up; windows in which nothing was added are never opened,
/// so they are not reported. To report a window right at its end, also arm a timer for `end`.
///
/// ```
/// # use hub_plugin_sdk::{Context, Error, Event};
/// use hub_plugin_sdk::blocks::TumblingWindow;
/// use hub_plugin_sdk::time::{HOUR, Millis};
///
/// # fn on_event(cx: &mut Context, event: &Event) -> Result<(), Error> {
/// // In on_event: page views per hour, reported when the next hour starts.
/// let hourly = TumblingWindow::new("views-per-hour", Millis(HOUR));
/// if let Some(hour) = hourly.add(cx, event.time, 1.0)? {
///     cx.emit("views.hourly", &hour)?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TumblingWindow {
    key: String,
    size: i64,
}

#[derive(Serialize, Deserialize)]
struct OpenWindow {
    start: i64,
    totals: Totals,
}

impl TumblingWindow {
    pub fn new(key: impl Into<String>, size: Millis) -> Self {
        TumblingWindow {
            key: key.into(),
            size: size.as_ms().max(1),
        }
    }

    /// Add `value` to the window containing `at`. When `at` falls in a later window than the open
    /// one, the open window is closed and returned (`Some`), and a new one opens. A value for an
    /// earlier (already closed) window is ignored and returns Ok(None) (late data; authors decide
    /// what to do before calling). `value` must be finite.
    pub fn add(&self, cx: &mut Context, at: i64, value: f64) -> Result<Option<Closed>, Error> {
        let value = finite("tumbling window value", value)?;
        let start = at.saturating_sub(at.rem_euclid(self.size));
        let open: Option<OpenWindow> = cx.state().get(&self.key)?;
        let (mut window, closed) = match open {
            Some(open) if open.start == start => (open, None),
            Some(open) if open.start > start => return Ok(None),
            open => (
                OpenWindow {
                    start,
                    totals: Totals::default(),
                },
                open.map(|o| self.closed(&o)),
            ),
        };
        window.totals.add(1, value);
        cx.state().set(&self.key, &window)?;
        Ok(closed)
    }

    /// The open window, if any.
    pub fn open(&self, cx: &Context) -> Result<Option<Closed>, Error> {
        let open: Option<OpenWindow> = cx.state().get(&self.key)?;
        Ok(open.map(|o| self.closed(&o)))
    }

    fn closed(&self, open: &OpenWindow) -> Closed {
        Closed {
            start: open.start,
            end: open.start.saturating_add(self.size),
            totals: open.totals,
        }
    }
}

/// "A then B within T": remember when A happened; on B, the time of the latest A if it was within T.
///
/// State: the time of the latest unmatched A.
///
/// ```
/// # use hub_plugin_sdk::{Context, Error, Event};
/// use hub_plugin_sdk::blocks::Sequence;
/// use hub_plugin_sdk::time::{MINUTE, Millis};
///
/// # fn on_event(cx: &mut Context, event: &Event) -> Result<(), Error> {
/// // In on_event: a password reset followed by a payout change within 30 minutes.
/// let takeover = Sequence::new("reset-then-payout", Millis(30 * MINUTE));
/// match event.kind.as_str() {
///     "account.password_reset" => takeover.first(cx, event.time)?,
///     "account.payout_changed" => {
///         if let Some(reset) = takeover.then(cx, event.time)? {
///             cx.emit("fraud.suspected", &serde_json::json!({ "reset_at": reset }))?;
///         }
///     }
///     _ => {}
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Sequence {
    key: String,
    within: i64,
}

impl Sequence {
    pub fn new(key: impl Into<String>, within: Millis) -> Self {
        Sequence {
            key: key.into(),
            within: within.as_ms().max(0),
        }
    }

    /// A happened at `at`. Only the latest A is remembered.
    pub fn first(&self, cx: &mut Context, at: i64) -> Result<(), Error> {
        let latest = match cx.state().get::<i64>(&self.key)? {
            Some(previous) => previous.max(at),
            None => at,
        };
        cx.state().set(&self.key, &latest)
    }

    /// B happened at `at`: Some(time of A) if an A happened in [at - within, at] (and forget it, so
    /// one A matches one B); None otherwise. An A too old to match any later B is forgotten too.
    pub fn then(&self, cx: &mut Context, at: i64) -> Result<Option<i64>, Error> {
        let Some(a) = cx.state().get::<i64>(&self.key)? else {
            return Ok(None);
        };
        if a > at {
            return Ok(None);
        }
        cx.state().delete(&self.key);
        Ok((a >= at.saturating_sub(self.within)).then_some(a))
    }
}

/// "A not followed by B within T", on a durable timer: `start` on A arms a timer named `id`;
/// `cancel` on B disarms it; when the timer fires (the plugin's on_timer gets a Timer whose id == this
/// id, check with `is`), B did not happen in time.
///
/// State: none besides the timer. T counts from the hub's clock ([`Context::now`]) at `start`.
///
/// ```
/// # use hub_plugin_sdk::{Context, Error, Event, Timer};
/// use hub_plugin_sdk::blocks::Absence;
/// use hub_plugin_sdk::time::{MINUTE, Millis};
///
/// let no_check_in = Absence::new("no-check-in", Millis(15 * MINUTE));
/// # fn on_event(no_check_in: &Absence, cx: &mut Context, event: &Event) -> Result<(), Error> {
/// // In on_event:
/// match event.kind.as_str() {
///     "booking.made" => no_check_in.start(cx, &event.id)?,
///     _ => no_check_in.cancel(cx), // checked in
/// }
/// # Ok(())
/// # }
/// # fn on_timer(no_check_in: &Absence, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
/// // In on_timer:
/// if no_check_in.is(timer) {
///     let booking: String = timer.payload()?;
///     cx.emit("alert.no_show", &serde_json::json!({ "booking": booking }))?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Absence {
    id: String,
    within: i64,
}

impl Absence {
    pub fn new(id: impl Into<String>, within: Millis) -> Self {
        Absence {
            id: id.into(),
            within: within.as_ms().max(0),
        }
    }

    /// Arm (or re-arm, replacing) the timer; `payload` comes back with the timer.
    pub fn start<T: Serialize + ?Sized>(&self, cx: &mut Context, payload: &T) -> Result<(), Error> {
        cx.timers().set_after(&self.id, self.within, payload)
    }

    /// Disarm the timer (B happened); nothing happens if it is not armed.
    pub fn cancel(&self, cx: &mut Context) {
        cx.timers().cancel(&self.id);
    }

    /// Whether `timer` is this block's timer.
    pub fn is(&self, timer: &Timer) -> bool {
        timer.id == self.id
    }
}

/// Deduplication by key within a window: `first` is true the first time a key is seen within `window`.
///
/// State: each key with the latest time it was seen, for keys seen within the window; at most
/// [`Dedup::MAX_KEYS`] keys, the least recently seen dropped first (a dropped key counts as new).
///
/// ```
/// # use hub_plugin_sdk::{Context, Error, Event};
/// use hub_plugin_sdk::blocks::Dedup;
/// use hub_plugin_sdk::time::{HOUR, Millis};
///
/// # fn on_event(cx: &mut Context, event: &Event) -> Result<(), Error> {
/// // In on_event: report a viewed product once, and not again until it goes an hour unviewed.
/// #[derive(serde::Deserialize)]
/// struct View { product: String }
/// let view: View = event.payload()?;
/// if Dedup::new("alerted", Millis(HOUR)).first(cx, &view.product, event.time)? {
///     cx.emit("product.viewed", &serde_json::json!({ "product": view.product }))?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Dedup {
    key: String,
    window: i64,
    max_keys: usize,
}

impl Dedup {
    /// The most keys one block keeps.
    pub const MAX_KEYS: usize = 1024;

    pub fn new(key: impl Into<String>, window: Millis) -> Self {
        Dedup {
            key: key.into(),
            window: window.as_ms().max(0),
            max_keys: Self::MAX_KEYS,
        }
    }

    /// True if `dedup_key` was not seen in (at - window, at]; records it either way (so a key seen
    /// again and again stays a duplicate until it has not been seen for `window`).
    pub fn first(&self, cx: &mut Context, dedup_key: &str, at: i64) -> Result<bool, Error> {
        let mut seen: Vec<(String, i64)> = cx.state().get(&self.key)?.unwrap_or_default();
        let start = at.saturating_sub(self.window);
        let first = match seen.iter_mut().find(|(k, _)| k == dedup_key) {
            Some((_, t)) => {
                let first = !(*t > start && *t <= at);
                *t = (*t).max(at);
                first
            }
            None => {
                seen.push((dedup_key.to_owned(), at));
                true
            }
        };
        let latest = seen.iter().map(|(_, t)| *t).max().unwrap_or(at);
        let horizon = latest.saturating_sub(self.window);
        seen.retain(|(_, t)| *t > horizon);
        if seen.len() > self.max_keys {
            seen.sort_by_key(|(_, t)| *t);
            seen.drain(..seen.len() - self.max_keys);
        }
        save(cx, &self.key, &seen)?;
        Ok(first)
    }
}

/// Top-N per actor: weights accumulated by item, the N heaviest kept in order.
///
/// State: up to 4 × N items with their weights, heaviest first. When more items are seen, the
/// lightest are dropped and their weight forgotten (a heavy-hitters approximation: exact as long
/// as the actor has at most 4 × N distinct items).
///
/// ```
/// # use hub_plugin_sdk::{Context, Error, Event};
/// use hub_plugin_sdk::blocks::TopN;
///
/// # fn on_event(cx: &mut Context, event: &Event) -> Result<(), Error> {
/// // In on_event: the customer's three favourite categories by spend.
/// #[derive(serde::Deserialize)]
/// struct Order { category: String, amount: f64 }
/// let order: Order = event.payload()?;
/// let favourites = TopN::new("favourite-categories", 3).add(cx, &order.category, order.amount)?;
/// cx.emit("customer.favourites", &favourites)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TopN {
    key: String,
    n: usize,
    tracked: usize,
}

impl TopN {
    pub fn new(key: impl Into<String>, n: usize) -> Self {
        TopN {
            key: key.into(),
            n,
            tracked: n.saturating_mul(4),
        }
    }

    /// Add `weight` to `item`; returns the top N (heaviest first; ties by name) after the update.
    /// `weight` may be negative but must be finite.
    pub fn add(&self, cx: &mut Context, item: &str, weight: f64) -> Result<Vec<(String, f64)>, Error> {
        let weight = finite("top-n weight", weight)?;
        let mut items: Vec<(String, f64)> = cx.state().get(&self.key)?.unwrap_or_default();
        match items.iter_mut().find(|(name, _)| name == item) {
            Some((_, w)) => *w += weight,
            None => items.push((item.to_owned(), weight)),
        }
        items.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        items.truncate(self.tracked);
        save(cx, &self.key, &items)?;
        items.truncate(self.n);
        Ok(items)
    }

    /// The top N (heaviest first; ties by name).
    pub fn top(&self, cx: &Context) -> Result<Vec<(String, f64)>, Error> {
        let mut items: Vec<(String, f64)> = cx.state().get(&self.key)?.unwrap_or_default();
        items.truncate(self.n);
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{EPOCH, TestHub};
    use crate::time::{HOUR, MINUTE};
    use crate::{Description, Event, Output, Plugin};
    use serde::de::DeserializeOwned;
    use serde_json::json;

    /// Every block, driven by events: `at` defaults to the event time.
    struct Blocks {
        sliding: SlidingWindow,
        tumbling: TumblingWindow,
        sequence: Sequence,
        absence: Absence,
        dedup: Dedup,
        top: TopN,
    }

    #[derive(Deserialize)]
    struct NoConfig {}

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct In {
        at: Option<i64>,
        value: f64,
        key: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Tumbled {
        closed: Option<Closed>,
        open: Option<Closed>,
    }

    impl Plugin for Blocks {
        type Config = NoConfig;
        fn describe() -> Description {
            Description::new("blocks", "0.0.0").subscribe(">")
        }
        fn new(_: NoConfig) -> Result<Self, Error> {
            Ok(Blocks {
                sliding: SlidingWindow::new("sliding", Millis(10 * MINUTE)),
                tumbling: TumblingWindow::new("tumbling", Millis(HOUR)),
                sequence: Sequence::new("sequence", Millis(10 * MINUTE)),
                absence: Absence::new("absence", Millis(15 * MINUTE)),
                dedup: Dedup::new("dedup", Millis(10 * MINUTE)),
                top: TopN::new("top", 3),
            })
        }
        fn on_event(&self, cx: &mut Context, event: &Event) -> Result<(), Error> {
            let input: In = event.payload()?;
            let at = input.at.unwrap_or(event.time);
            match event.kind.as_str() {
                "sliding.add" => {
                    let totals = self.sliding.add(cx, at, input.value)?;
                    cx.emit("out", &totals)
                }
                "sliding.totals" => {
                    let totals = self.sliding.totals(cx, at)?;
                    cx.emit("out", &totals)
                }
                "sliding.clear" => {
                    self.sliding.clear(cx);
                    Ok(())
                }
                "tumbling.add" => {
                    let closed = self.tumbling.add(cx, at, input.value)?;
                    let open = self.tumbling.open(cx)?;
                    cx.emit("out", &Tumbled { closed, open })
                }
                "sequence.a" => self.sequence.first(cx, at),
                "sequence.b" => {
                    let a = self.sequence.then(cx, at)?;
                    cx.emit("out", &a)
                }
                "absence.a" => self.absence.start(cx, &input.key),
                "absence.b" => {
                    self.absence.cancel(cx);
                    Ok(())
                }
                "absence.other" => cx.timers().set_after("other", MINUTE, &input.key),
                "dedup" => {
                    let first = self.dedup.first(cx, &input.key, at)?;
                    cx.emit("out", &first)
                }
                "top.add" => {
                    let top = self.top.add(cx, &input.key, input.value)?;
                    cx.emit("out", &top)
                }
                "top" => {
                    let top = self.top.top(cx)?;
                    cx.emit("out", &top)
                }
                other => Err(Error::msg(format!("unexpected {other}"))),
            }
        }
        fn on_timer(&self, cx: &mut Context, timer: &Timer) -> Result<(), Error> {
            let key: String = timer.payload()?;
            let kind = if self.absence.is(timer) { "absent" } else { "other" };
            cx.emit(kind, &key)
        }
    }

    fn hub() -> TestHub<Blocks> {
        TestHub::new(json!({})).expect("config")
    }

    /// Send an event to `u1` and return everything it produced.
    fn fire(hub: &mut TestHub<Blocks>, kind: &str, payload: serde_json::Value) -> Vec<Output> {
        let event = hub.event(kind, "u1", &payload);
        hub.send(event).expect("call")
    }

    /// Send an event to `actor` and decode the one output it emits.
    fn ask_for<T: DeserializeOwned>(
        hub: &mut TestHub<Blocks>,
        actor: &str,
        kind: &str,
        payload: serde_json::Value,
    ) -> T {
        let event = hub.event(kind, actor, &payload);
        let out = hub.send(event).expect("call");
        assert_eq!(out.len(), 1, "{kind}: {out:?}");
        out[0].as_emit().expect("emit").payload().expect("payload")
    }

    fn ask<T: DeserializeOwned>(hub: &mut TestHub<Blocks>, kind: &str, payload: serde_json::Value) -> T {
        ask_for(hub, "u1", kind, payload)
    }

    fn emitted(outputs: &[Output]) -> Vec<(String, String)> {
        outputs
            .iter()
            .map(|o| {
                let e = o.as_emit().expect("emit");
                (e.kind.clone(), e.payload().expect("payload"))
            })
            .collect()
    }

    fn totals(count: u64, sum: f64) -> Totals {
        Totals { count, sum }
    }

    #[test]
    fn sliding_window_expires_values_at_the_boundary() {
        let mut hub = hub();
        let t: Totals = ask(&mut hub, "sliding.add", json!({"value": 1.0}));
        assert_eq!(t, totals(1, 1.0));
        hub.advance(5 * MINUTE).expect("advance");
        let t: Totals = ask(&mut hub, "sliding.add", json!({"value": 2.0}));
        assert_eq!(t, totals(2, 3.0));
        // Exactly one window later the first value is out: (at - window, at].
        hub.advance(5 * MINUTE).expect("advance");
        let t: Totals = ask(&mut hub, "sliding.add", json!({"value": 4.0}));
        assert_eq!(t, totals(2, 6.0));
        let kept: Vec<SlidingEntry> = hub.state("u1", "sliding").expect("state").expect("kept");
        assert_eq!(
            kept.iter().map(|e| e.0).collect::<Vec<_>>(),
            [EPOCH + 5 * MINUTE, EPOCH + 10 * MINUTE]
        );

        hub.advance(5 * MINUTE - 1).expect("advance");
        let t: Totals = ask(&mut hub, "sliding.totals", json!({}));
        assert_eq!(t, totals(2, 6.0));
        hub.advance(1).expect("advance");
        let t: Totals = ask(&mut hub, "sliding.totals", json!({}));
        assert_eq!(t, totals(1, 4.0));
        // Reading does not write; values at the same ms add up; the window is per actor.
        let t: Totals = ask(
            &mut hub,
            "sliding.add",
            json!({"value": 1.5, "at": EPOCH + 10 * MINUTE}),
        );
        assert_eq!(t, totals(3, 7.5));
        let t: Totals = ask_for(&mut hub, "u2", "sliding.add", json!({"value": 7.0}));
        assert_eq!(t, totals(1, 7.0));

        hub.advance(10 * MINUTE).expect("advance");
        let t: Totals = ask(&mut hub, "sliding.totals", json!({}));
        assert_eq!(t, Totals::default());
        assert!(fire(&mut hub, "sliding.clear", json!({})).is_empty());
        assert_eq!(hub.state::<Vec<SlidingEntry>>("u1", "sliding").expect("state"), None);
        assert!(
            hub.state::<Vec<SlidingEntry>>("u2", "sliding")
                .expect("state")
                .is_some()
        );
    }

    #[test]
    fn sliding_window_takes_out_of_order_values() {
        let mut hub = hub();
        let mut add =
            |value: f64, at: i64| ask::<Totals>(&mut hub, "sliding.add", json!({"value": value, "at": EPOCH + at}));
        assert_eq!(add(1.0, 5 * MINUTE), totals(1, 1.0));
        assert_eq!(add(2.0, MINUTE), totals(1, 2.0), "the window ending at 1m");
        assert_eq!(
            add(4.0, 11 * MINUTE),
            totals(2, 5.0),
            "1m is out of this window, 5m is in"
        );
        assert_eq!(add(8.0, 30 * MINUTE), totals(1, 8.0));
        // Older than the window of the latest time: no later window can hold it, it is not kept.
        assert_eq!(add(16.0, 20 * MINUTE), totals(0, 0.0));
        let kept: Vec<SlidingEntry> = hub.state("u1", "sliding").expect("state").expect("kept");
        assert_eq!(kept, [(EPOCH + 30 * MINUTE, 1, 8.0)]);
    }

    #[test]
    fn sliding_window_state_stays_bounded() {
        let mut hub = hub();
        let n = SlidingWindow::MAX_ENTRIES as u64 + 100;
        for i in 0..n {
            let t: Totals = ask(&mut hub, "sliding.add", json!({"value": 1.0, "at": EPOCH + i as i64}));
            assert_eq!(t, totals(i + 1, (i + 1) as f64));
        }
        let kept: Vec<SlidingEntry> = hub.state("u1", "sliding").expect("state").expect("kept");
        assert_eq!(kept.len(), SlidingWindow::MAX_ENTRIES);
        assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(kept.iter().map(|e| e.1).sum::<u64>(), n, "merged, not lost");
        // The closest (oldest) entries were merged at the later time: 0..=100 ms now expire with 100 ms.
        assert_eq!(kept[0], (EPOCH + 100, 101, 101.0));
        let t: Totals = ask(&mut hub, "sliding.totals", json!({"at": EPOCH + 10 * MINUTE + 99}));
        assert_eq!(t.count, n);
        let t: Totals = ask(&mut hub, "sliding.totals", json!({"at": EPOCH + 10 * MINUTE + 100}));
        assert_eq!(t, totals(n - 101, (n - 101) as f64));
    }

    #[test]
    fn tumbling_window_closes_on_a_later_window_and_ignores_late_values() {
        let mut hub = hub();
        let hour = |start: i64, count, sum| Closed {
            start,
            end: start + HOUR,
            totals: totals(count, sum),
        };
        let out: Tumbled = ask(
            &mut hub,
            "tumbling.add",
            json!({"value": 1.0, "at": EPOCH + 10 * MINUTE}),
        );
        assert_eq!(
            out,
            Tumbled {
                closed: None,
                open: Some(hour(EPOCH, 1, 1.0))
            }
        );
        let out: Tumbled = ask(&mut hub, "tumbling.add", json!({"value": 2.0, "at": EPOCH + HOUR - 1}));
        assert_eq!(
            out,
            Tumbled {
                closed: None,
                open: Some(hour(EPOCH, 2, 3.0))
            }
        );
        let out: Tumbled = ask(&mut hub, "tumbling.add", json!({"value": 5.0, "at": EPOCH + HOUR}));
        assert_eq!(
            out,
            Tumbled {
                closed: Some(hour(EPOCH, 2, 3.0)),
                open: Some(hour(EPOCH + HOUR, 1, 5.0))
            }
        );
        // Late: the first hour is closed, the value is ignored.
        let out: Tumbled = ask(
            &mut hub,
            "tumbling.add",
            json!({"value": 7.0, "at": EPOCH + 30 * MINUTE}),
        );
        assert_eq!(
            out,
            Tumbled {
                closed: None,
                open: Some(hour(EPOCH + HOUR, 1, 5.0))
            }
        );
        // Empty hours in between are skipped.
        let out: Tumbled = ask(
            &mut hub,
            "tumbling.add",
            json!({"value": 1.0, "at": EPOCH + 3 * HOUR + 1}),
        );
        assert_eq!(
            out,
            Tumbled {
                closed: Some(hour(EPOCH + HOUR, 1, 5.0)),
                open: Some(hour(EPOCH + 3 * HOUR, 1, 1.0))
            }
        );
        // Alignment holds before the epoch too.
        let out: Tumbled = ask_for(&mut hub, "u2", "tumbling.add", json!({"value": 1.0, "at": -1}));
        assert_eq!(out.open, Some(hour(-HOUR, 1, 1.0)));
    }

    #[test]
    fn sequence_matches_b_within_t_of_a_once() {
        let mut hub = hub();
        let b = |hub: &mut TestHub<Blocks>| ask::<Option<i64>>(hub, "sequence.b", json!({}));
        assert_eq!(b(&mut hub), None);

        assert!(fire(&mut hub, "sequence.a", json!({})).is_empty());
        hub.advance(10 * MINUTE).expect("advance");
        assert_eq!(b(&mut hub), Some(EPOCH), "B exactly T after A matches");
        assert_eq!(b(&mut hub), None, "one A matches one B");

        let a = hub.now();
        fire(&mut hub, "sequence.a", json!({}));
        hub.advance(10 * MINUTE + 1).expect("advance");
        assert_eq!(b(&mut hub), None, "too late");
        assert_eq!(
            hub.state::<i64>("u1", "sequence").expect("state"),
            None,
            "stale A forgotten"
        );

        // The latest of several As is the one matched.
        fire(&mut hub, "sequence.a", json!({}));
        hub.advance(MINUTE).expect("advance");
        let latest = hub.now();
        fire(&mut hub, "sequence.a", json!({}));
        fire(&mut hub, "sequence.a", json!({"at": a}));
        hub.advance(MINUTE).expect("advance");
        assert_eq!(b(&mut hub), Some(latest));
        assert_eq!(b(&mut hub), None);
    }

    #[test]
    fn absence_fires_after_t_without_b() {
        let mut hub = hub();
        assert!(fire(&mut hub, "absence.a", json!({"key": "booking-1"})).is_empty());
        assert_eq!(hub.timers("u1"), [("absence".to_owned(), EPOCH + 15 * MINUTE)]);
        assert!(hub.advance(15 * MINUTE - 1).expect("advance").is_empty());
        let out = hub.advance(1).expect("advance");
        assert_eq!(emitted(&out), [("absent".to_owned(), "booking-1".to_owned())]);
        assert!(hub.timers("u1").is_empty());

        // Re-arming replaces the timer: it fires once, T after the last start.
        fire(&mut hub, "absence.a", json!({"key": "booking-2"}));
        hub.advance(10 * MINUTE).expect("advance");
        fire(&mut hub, "absence.a", json!({"key": "booking-3"}));
        assert!(hub.advance(10 * MINUTE).expect("advance").is_empty());
        let out = hub.advance(5 * MINUTE).expect("advance");
        assert_eq!(emitted(&out), [("absent".to_owned(), "booking-3".to_owned())]);
    }

    #[test]
    fn absence_is_cancelled_by_b_and_knows_its_timer() {
        let mut hub = hub();
        fire(&mut hub, "absence.a", json!({"key": "booking-1"}));
        fire(&mut hub, "absence.other", json!({"key": "x"}));
        hub.advance(5 * MINUTE).expect("advance");
        fire(&mut hub, "absence.b", json!({}));
        assert!(hub.timers("u1").is_empty());
        assert!(hub.advance(HOUR).expect("advance").is_empty());
        // Only the other timer fired (before the cancel), and it was not taken for the absence.
        fire(&mut hub, "absence.other", json!({"key": "y"}));
        let out = hub.advance(MINUTE).expect("advance");
        assert_eq!(emitted(&out), [("other".to_owned(), "y".to_owned())]);
        // Cancelling with nothing armed is harmless.
        assert!(fire(&mut hub, "absence.b", json!({})).is_empty());
    }

    #[test]
    fn dedup_within_and_after_the_window() {
        let mut hub = hub();
        let mut first = |key: &str, at: i64| ask::<bool>(&mut hub, "dedup", json!({"key": key, "at": EPOCH + at}));
        assert!(first("k1", 0));
        assert!(first("k2", 0));
        assert!(!first("k1", 0), "same ms");
        assert!(!first("k1", 10 * MINUTE - 1), "within the window");
        assert!(first("k2", 10 * MINUTE), "exactly one window later");
        // k1 was seen again at 10m - 1: still a duplicate until 20m - 1.
        assert!(!first("k1", 20 * MINUTE - 2));
        assert!(first("k1", 30 * MINUTE));
        assert!(!first("k1", 30 * MINUTE + 1));
        let kept: Vec<(String, i64)> = hub.state("u1", "dedup").expect("state").expect("kept");
        assert_eq!(kept, [("k1".to_owned(), EPOCH + 30 * MINUTE + 1)], "k2 pruned");
    }

    #[test]
    fn dedup_keeps_a_bounded_number_of_keys() {
        let mut hub = hub();
        let n = Dedup::MAX_KEYS as i64 + 10;
        for i in 0..n {
            assert!(ask::<bool>(
                &mut hub,
                "dedup",
                json!({"key": format!("k{i}"), "at": EPOCH + i})
            ));
        }
        let kept: Vec<(String, i64)> = hub.state("u1", "dedup").expect("state").expect("kept");
        assert_eq!(kept.len(), Dedup::MAX_KEYS);
        // The oldest keys were dropped and count as new; recent ones are still duplicates.
        assert!(ask::<bool>(&mut hub, "dedup", json!({"key": "k0", "at": EPOCH + n})));
        assert!(!ask::<bool>(
            &mut hub,
            "dedup",
            json!({"key": format!("k{}", n - 1), "at": EPOCH + n})
        ));
    }

    #[test]
    fn top_n_orders_by_weight_then_name() {
        let mut hub = hub();
        let mut add =
            |item: &str, w: f64| ask::<Vec<(String, f64)>>(&mut hub, "top.add", json!({"key": item, "value": w}));
        let top = |items: &[(&str, f64)]| items.iter().map(|(i, w)| (i.to_string(), *w)).collect::<Vec<_>>();
        assert_eq!(add("a", 1.0), top(&[("a", 1.0)]));
        assert_eq!(add("b", 2.0), top(&[("b", 2.0), ("a", 1.0)]));
        assert_eq!(add("c", 1.0), top(&[("b", 2.0), ("a", 1.0), ("c", 1.0)]));
        assert_eq!(
            add("d", 1.0),
            top(&[("b", 2.0), ("a", 1.0), ("c", 1.0)]),
            "ties by name"
        );
        assert_eq!(add("d", 0.5), top(&[("b", 2.0), ("d", 1.5), ("a", 1.0)]));
        assert_eq!(add("a", 2.0), top(&[("a", 3.0), ("b", 2.0), ("d", 1.5)]));
        assert_eq!(add("b", -1.5), top(&[("a", 3.0), ("d", 1.5), ("c", 1.0)]));
        let now: Vec<(String, f64)> = ask(&mut hub, "top", json!({}));
        assert_eq!(now, top(&[("a", 3.0), ("d", 1.5), ("c", 1.0)]));
    }

    #[test]
    fn top_n_tracks_a_bounded_number_of_items() {
        let mut hub = hub();
        for i in 0..20 {
            ask::<Vec<(String, f64)>>(&mut hub, "top.add", json!({"key": format!("i{i:02}"), "value": i + 1}));
        }
        let kept: Vec<(String, f64)> = hub.state("u1", "top").expect("state").expect("kept");
        assert_eq!(kept.len(), 12, "4 × n");
        assert_eq!(kept.last(), Some(&("i08".to_owned(), 9.0)));
        let top: Vec<(String, f64)> = ask(&mut hub, "top", json!({}));
        assert_eq!(
            top,
            [
                ("i19".to_owned(), 20.0),
                ("i18".to_owned(), 19.0),
                ("i17".to_owned(), 18.0)
            ]
        );
        // A dropped item starts again from nothing, and is dropped again while it is the lightest.
        ask::<Vec<(String, f64)>>(&mut hub, "top.add", json!({"key": "i00", "value": 1.0}));
        let kept: Vec<(String, f64)> = hub.state("u1", "top").expect("state").expect("kept");
        assert_eq!(kept.len(), 12);
        assert!(kept.iter().all(|(name, _)| name != "i00"));
    }

    #[test]
    fn non_finite_values_are_refused() {
        #[derive(Serialize)]
        struct Raw {
            value: f64,
            key: &'static str,
        }
        let mut hub = hub();
        for kind in ["sliding.add", "tumbling.add", "top.add"] {
            let event = hub.event(
                kind,
                "u1",
                &Raw {
                    value: f64::NAN,
                    key: "a",
                },
            );
            let err = hub.send(event).expect_err("refused");
            assert!(err.message().contains("finite"), "{err}");
            let event = hub.event(
                kind,
                "u1",
                &Raw {
                    value: f64::INFINITY,
                    key: "a",
                },
            );
            assert!(hub.send(event).is_err());
        }
        let t: Totals = ask(&mut hub, "sliding.totals", json!({}));
        assert_eq!(t, Totals::default());
    }
}
