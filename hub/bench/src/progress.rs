//! Progress of `hub bench` and `hub crash-test` on stderr: one line per step saying what is
//! happening (`run 2/3 · durable · unpaced · 312k/1.0M events`), cleared when the step ends, so
//! that what stays on the screen is the report alone.
//!
//! indicatif draws nothing where stderr is not a terminal (CI, a pipe) or `TERM` is dumb; there a
//! step prints one plain line when it starts instead, so a log still says where a long run is
//! without a redraw per update.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use std::fmt::Write;
use std::time::Duration;

/// A step with a known length: what it is, how far it got, and its elapsed time.
const COUNTING: &str = "{prefix} · {done}/{total} {msg} {wide_bar:.cyan/blue} {elapsed}";
/// A step of unknown length.
const WAITING: &str = "{spinner:.cyan} {prefix}{msg} {elapsed}";
/// How often a visible step is redrawn when nothing advances it (the spinner, the elapsed time).
const TICK: Duration = Duration::from_millis(100);
/// [`Step::advance`] tells the bar only every this many items: a per-input call in a publishing
/// loop then costs a remainder, not a clock read.
const SHOW_EVERY: usize = 1 << 10;

/// One step of a long command, shown from its creation until it is dropped.
pub(crate) struct Step {
    bar: ProgressBar,
    /// What is counted ("events", "inputs"); empty for a step of unknown length.
    unit: &'static str,
}

impl Step {
    /// A step over `total` `unit`s, moved on with [`Step::advance`] or [`Step::set`].
    pub(crate) fn counting(label: String, total: u64, unit: &'static str) -> Step {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if bar.is_hidden() {
            eprintln!("{label} · {} {unit}", count(total));
        }
        Step::show(bar, COUNTING, label, unit)
    }

    /// A step whose length is not known (starting a hub, waiting for one to catch up).
    pub(crate) fn waiting(label: String) -> Step {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if bar.is_hidden() {
            eprintln!("{label}");
        }
        Step::show(bar, WAITING, label, "")
    }

    fn show(bar: ProgressBar, template: &str, label: String, unit: &'static str) -> Step {
        bar.set_style(style(template));
        bar.set_prefix(label);
        bar.set_message(unit);
        if !bar.is_hidden() {
            bar.enable_steady_tick(TICK);
        }
        Step { bar, unit }
    }

    /// Move on to `done`, cheaply enough to call for every input.
    pub(crate) fn advance(&self, done: usize) {
        if done.is_multiple_of(SHOW_EVERY) {
            self.set(done as u64);
        }
    }

    /// Move on to `done` now.
    pub(crate) fn set(&self, done: u64) {
        self.bar.set_position(done);
    }

    /// Say what the step is doing besides counting ("swap 2/5", "waiting for outputs"); an empty
    /// note removes the last.
    pub(crate) fn note(&self, note: &str) {
        self.bar.set_message(detail(self.unit, note));
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The style of a step: the template with the counts in short form.
fn style(template: &str) -> ProgressStyle {
    // The templates are constants, which the tests parse.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key("done", |s: &ProgressState, w: &mut dyn Write| {
            let _ = w.write_str(&count(s.pos()));
        })
        .with_key("total", |s: &ProgressState, w: &mut dyn Write| {
            let _ = w.write_str(&count(s.len().unwrap_or(0)));
        })
}

/// The message after the counts: the unit, then the note ("events · swap 2/5"); for a step of
/// unknown length, the note alone after the label.
fn detail(unit: &str, note: &str) -> String {
    match (unit, note) {
        (unit, "") => unit.to_owned(),
        ("", note) => format!(" · {note}"),
        (unit, note) => format!("{unit} · {note}"),
    }
}

/// A count in at most four characters, rounded down so that a step never looks done before it
/// is: 999, 1.5k, 312k, 1.0M, 25M.
pub(crate) fn count(n: u64) -> String {
    let (unit, suffix) = match n {
        0..1_000 => return n.to_string(),
        1_000..1_000_000 => (1_000, "k"),
        _ => (1_000_000, "M"),
    };
    let whole = n / unit;
    if whole < 10 {
        format!("{whole}.{}{suffix}", n % unit * 10 / unit)
    } else {
        format!("{whole}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_short_and_rounded_down() {
        let shown: Vec<String> = [0, 999, 1_000, 1_999, 22_000, 312_400, 999_999, 1_000_000, 25_000_000]
            .into_iter()
            .map(count)
            .collect();
        assert_eq!(
            shown,
            ["0", "999", "1.0k", "1.9k", "22k", "312k", "999k", "1.0M", "25M"]
        );
    }

    #[test]
    fn the_message_is_the_unit_then_the_note() {
        assert_eq!(detail("events", ""), "events");
        assert_eq!(detail("events", "swap 2/5"), "events · swap 2/5");
        assert_eq!(detail("", "12k pending"), " · 12k pending");
        assert_eq!(detail("", ""), "");
    }

    #[test]
    fn the_templates_parse() {
        for template in [COUNTING, WAITING] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
