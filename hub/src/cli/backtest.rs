//! `hub plugin backtest`: what a candidate version would have done with the recorded inputs,
//! beside the active version (`POST /api/plugins/{name}/backtest`), printed as a table of the
//! differences per action name with a few examples each.

use super::api_client::{Client, print_json};
use anyhow::Context;
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hub::backtest::Report;
use hub::backtest::diff::{NameDiff, OutputChange, OutputKind};
use std::path::PathBuf;

#[derive(Args)]
pub struct BacktestArgs {
    /// The plugin whose active version the candidate is compared with
    name: String,
    /// The candidate .wasm
    candidate: PathBuf,
    /// Where the range starts: a sequence of the input stream (1200), a time
    /// (2026-11-30T08:00:00Z) or a duration ago (24h)
    #[arg(long)]
    from: String,
    /// Where it ends, as --from [default: the last input stored now]
    #[arg(long)]
    to: Option<String>,
    /// The candidate's config as a JSON object [default: the active version's]
    #[arg(long)]
    config: Option<String>,
    /// How long before --from inputs run, unreported, to build state up
    #[arg(long, default_value = "1h")]
    warmup: String,
    /// Every difference and affected actor, not a few of each (with --json: the full diff)
    #[arg(long)]
    full: bool,
    /// Inputs of the range run at most
    #[arg(long)]
    max_inputs: Option<u64>,
}

pub async fn run(client: Client, args: BacktestArgs, json: bool) -> anyhow::Result<()> {
    let wasm = std::fs::read(&args.candidate).with_context(|| format!("cannot read {}", args.candidate.display()))?;
    let mut query = vec![("from", args.from), ("warmup", args.warmup)];
    query.extend(args.to.map(|t| ("to", t)));
    query.extend(args.config.map(|c| ("config", c)));
    query.extend(args.max_inputs.map(|n| ("max_inputs", n.to_string())));
    if args.full || json {
        query.push(("full", "true".into()));
    }
    let request = client
        .request(reqwest::Method::POST, &format!("/api/plugins/{}/backtest", args.name))
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .query(&query)
        .body(wasm);
    eprintln!(
        "backtesting {} against {}: replaying the range through both versions…",
        args.name,
        args.candidate.display()
    );
    let body = client.send(request).await?;
    if json {
        return print_json(&body);
    }
    let report: Report = serde_json::from_str(&body).context("unexpected answer")?;
    print_report(&report, &args.candidate.display().to_string());
    Ok(())
}

fn print_report(r: &Report, file: &str) {
    let c = &r.candidate;
    println!(
        "backtest of {}: active v{} against {file} ({} {}, sha256 {}…, config {})",
        r.plugin,
        r.active_version,
        c.name,
        c.version,
        &c.sha256[..c.sha256.len().min(12)],
        c.config
    );
    let g = &r.range;
    match (g.first_seq, g.last_seq, g.first_at, g.last_at) {
        (Some(first), Some(last), Some(from), Some(to)) => println!(
            "range: inputs {first}–{last} ({} inputs, {} events), stored {} → {} ({})",
            g.inputs,
            g.events,
            clock(from),
            clock(to),
            humantime::format_duration(std::time::Duration::from_millis((to - from).max(0) as u64))
        ),
        _ => println!("range: no inputs"),
    }
    if !g.refused.is_empty() {
        println!("  refused at input (dead-lettered then too): {}", counts(&g.refused));
    }
    let s = &r.speed;
    println!(
        "replayed in {:.2} s ({} warm-up inputs first): {:.0} inputs/s{}",
        s.wall_ms as f64 / 1000.0,
        g.warmup_inputs,
        s.inputs_per_s,
        s.faster_than_real_time
            .map(|x| format!(", {x:.0}× faster than real time"))
            .unwrap_or_default()
    );

    print_diff_table(&r.diff, "candidate");
    for (name, run) in [("active", &r.active), ("candidate", &r.candidate_run)] {
        println!(
            "{name}: {} calls, p50 {} µs, p99 {} µs, {} timers pending at the end{}",
            run.calls,
            run.p50_us,
            run.p99_us,
            run.timers_pending,
            if run.dead_letters.is_empty() {
                String::new()
            } else {
                format!(", FAILED CALLS: {}", counts(&run.dead_letters))
            }
        );
    }
    if r.identical {
        println!("no difference: the candidate does what the active version does with these inputs");
    }
    print_examples(&r.diff);
    println!();
    for note in &r.notes {
        println!("note: {note}");
    }
}

/// Per output name: how many each version gave and how they differ.
pub(super) fn print_diff_table(diff: &[NameDiff], candidate: &str) {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "",
        "active",
        candidate,
        "added",
        "removed",
        "changed",
        "actors affected",
    ]);
    for d in diff {
        let what = match d.output {
            OutputKind::Action => format!("action {}", d.name),
            OutputKind::Event => format!("event {}", d.name),
        };
        table.add_row([
            what,
            d.active.to_string(),
            d.candidate.to_string(),
            d.added.to_string(),
            d.removed.to_string(),
            d.changed.to_string(),
            d.actors_affected.to_string(),
        ]);
    }
    println!("{table}");
}

/// The affected actors and the examples of every name that differs.
pub(super) fn print_examples(diff: &[NameDiff]) {
    for d in diff.iter().filter(|d| d.added + d.removed + d.changed > 0) {
        println!(
            "\n{} — actors: {}{}",
            d.name,
            d.actors.join(", "),
            more(d.actors_affected, d.actors.len())
        );
        for (label, changes) in [
            ("added", &d.examples.added),
            ("removed", &d.examples.removed),
            ("changed", &d.examples.changed),
        ] {
            for change in changes {
                println!("  {label:<8} {}", example(change));
            }
        }
    }
}

/// One example: the output as given, or for a changed one only what changed.
fn example(c: &OutputChange) -> String {
    let shown = match (&c.before, &c.after) {
        (Some(before), Some(after)) => {
            let mut changes = Vec::new();
            changed_fields("", before, after, &mut changes);
            changes.join(", ")
        }
        (Some(one), None) | (None, Some(one)) => one.to_string(),
        (None, None) => String::new(),
    };
    format!("{} (cause {}): {shown}", c.actor, c.cause)
}

/// `path: before → after` for every field that differs (objects compared key by key).
fn changed_fields(path: &str, before: &serde_json::Value, after: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let (x, y) = (a.get(key).unwrap_or(&Value::Null), b.get(key).unwrap_or(&Value::Null));
                changed_fields(&field, x, y, out);
            }
        }
        _ if before != after => out.push(format!("{path}: {before} → {after}")),
        _ => {}
    }
}

fn more(all: u64, shown: usize) -> String {
    match all.saturating_sub(shown as u64) {
        0 => String::new(),
        n => format!(" and {n} more (--full)"),
    }
}

fn counts(map: &std::collections::BTreeMap<String, u64>) -> String {
    map.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time as the server's clock shows it, UTC.
pub(super) fn clock(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}
