//! `hub plugin test`: run plugins offline against recorded events (see `hub::offline`), print
//! what they did, and compare it with a golden file.

use anyhow::{Context, bail};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hub::config::Config;
use hub::event::rfc3339;
use hub::ingress::{IdGen, decode_envelope};
use hub::offline::{Cause, Offline, Record, What};
use hub::runtime::{PluginModule, Runtime};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct TestArgs {
    /// The plugins, called in this order for an event they share (e.g. mapper → scenario → delivery)
    #[arg(required = true)]
    wasm: Vec<PathBuf>,
    /// Recorded events, one envelope per line as published on `events.<kind>` (JSON:
    /// `{"id","kind","actor","time","payload"}`; `time` in ms drives the virtual clock)
    #[arg(long)]
    events: PathBuf,
    /// Profiles to seed: a JSON object of actor → profile object
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// A plugin's config: `JSON` (with one plugin), `NAME=JSON`, or `@FILE` / `NAME=@FILE`
    #[arg(long, value_name = "[NAME=]JSON")]
    config: Vec<String>,
    /// Run the clock on after the last event, firing the timers due by then: a time (ms or
    /// RFC 3339) or `+DURATION` after the last event (e.g. `+1h`)
    #[arg(long)]
    until: Option<String>,
    /// Compare with this golden file (JSON lines as `--json` prints them, without `micros`);
    /// exits non-zero with a diff when they differ
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Write the golden file from this run instead of comparing
    #[arg(long, requires = "expect")]
    update: bool,
    /// Hub config file whose limits (deadline, memory cap, hop limit) to run under [default: the hub's defaults]
    #[arg(long)]
    hub_config: Option<PathBuf>,
}

pub fn run(args: TestArgs, json: bool) -> anyhow::Result<()> {
    let hub = Config::load(args.hub_config.as_deref()).context("hub config")?;
    let runtime = Runtime::new(hub.limits.clone()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let configs = PluginConfigs::parse(&args.config, args.wasm.len())?;
    let mut modules = Vec::new();
    for path in &args.wasm {
        modules.push(load(&runtime, path, &configs)?);
    }
    configs.all_used(&modules)?;
    let mut offline = Offline::new(modules, hub.engine.hop_limit);
    if let Some(path) = &args.profiles {
        seed_profiles(&mut offline, path)?;
    }

    let mut records = Vec::new();
    let mut out = |r: Record| {
        if json {
            // A closed pipe (`| head`) ends the output, not the run.
            let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string(&r).unwrap_or_default());
        }
        records.push(r);
    };
    let events = std::fs::File::open(&args.events).with_context(|| format!("cannot read {}", args.events.display()))?;
    let source = format!("file:{}", args.events.display());
    let mut inputs = 0usize;
    for (index, line) in std::io::BufReader::new(events).lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {}", args.events.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        inputs += 1;
        let number = index + 1;
        let ids = IdGen::for_recorded(number, offline.clock().unwrap_or(0));
        match decode_envelope(
            &source,
            None,
            line.as_bytes(),
            "events.",
            &ids,
            &hub::tenant::Tenants::open(),
        ) {
            Ok(event) => offline.input(event, &mut out),
            Err(e) => out(offline.refused(number, &e)),
        }
    }
    if let Some(until) = &args.until {
        let at = until_time(until, offline.clock())?;
        offline.advance(at, &mut out);
    }

    if !json {
        print_table(&records);
    }
    print_summary(&offline, inputs, &records, json);
    match &args.expect {
        Some(path) => expect(path, &records, args.update),
        None => Ok(()),
    }
}

/// Configs given with `--config`, by plugin name (`None`: the only plugin).
struct PluginConfigs(Vec<(Option<String>, serde_json::Value)>);

impl PluginConfigs {
    fn parse(given: &[String], plugins: usize) -> anyhow::Result<PluginConfigs> {
        let mut all = Vec::new();
        for text in given {
            let trimmed = text.trim_start();
            let (name, value) = match trimmed.split_once('=') {
                Some((name, value)) if !trimmed.starts_with('{') && !trimmed.starts_with('@') => {
                    (Some(name.to_owned()), value)
                }
                _ => (None, trimmed),
            };
            if name.is_none() && plugins > 1 {
                bail!("--config {text:?}: with several plugins, say whose it is: --config NAME=JSON");
            }
            let json = match value.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?,
                None => value.to_owned(),
            };
            let value: serde_json::Value =
                serde_json::from_str(&json).with_context(|| format!("--config {text:?} is not JSON"))?;
            all.push((name, value));
        }
        Ok(PluginConfigs(all))
    }

    fn for_plugin(&self, name: &str) -> serde_json::Value {
        self.0
            .iter()
            .find(|(n, _)| n.as_deref().is_none_or(|n| n == name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| serde_json::json!({}))
    }

    /// A config for a name no plugin has is a typo, not something to ignore.
    fn all_used(&self, modules: &[Arc<PluginModule>]) -> anyhow::Result<()> {
        for (name, _) in &self.0 {
            if let Some(name) = name
                && !modules.iter().any(|m| m.name() == name)
            {
                let names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
                bail!("--config names plugin {name:?}, but the plugins are {names:?}");
            }
        }
        Ok(())
    }
}

fn load(runtime: &Arc<Runtime>, path: &Path, configs: &PluginConfigs) -> anyhow::Result<Arc<PluginModule>> {
    let wasm = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let refused = || format!("{} is refused", path.display());
    let component = PluginModule::compile(runtime, &wasm).with_context(refused)?;
    let name = PluginModule::describe(runtime, &component).with_context(refused)?.name;
    let module = PluginModule::from_component(runtime, &component, &configs.for_plugin(&name)).with_context(refused)?;
    Ok(Arc::new(module))
}

fn seed_profiles(offline: &mut Offline, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON object of actor → profile", path.display()))?;
    for (actor, profile) in all {
        if !profile.is_object() {
            bail!("{}: the profile of {actor:?} is not a JSON object", path.display());
        }
        offline.put_profile(&actor, rmp_serde::to_vec_named(&profile)?);
    }
    Ok(())
}

/// `--until`: ms since the epoch, RFC 3339, or `+DURATION` after the clock.
fn until_time(text: &str, clock: Option<i64>) -> anyhow::Result<i64> {
    if let Some(rest) = text.strip_prefix('+') {
        let d = humantime::parse_duration(rest).with_context(|| format!("--until {text}: not a duration"))?;
        let Some(clock) = clock else {
            bail!("--until {text}: there was no event to count from");
        };
        return Ok(clock.saturating_add(d.as_millis().try_into().unwrap_or(i64::MAX)));
    }
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(text)
        .with_context(|| format!("--until {text}: expected ms, an RFC 3339 time, or +DURATION"))?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    Ok(ms.try_into().unwrap_or(i64::MAX))
}

fn cause_text(cause: &Cause) -> String {
    match cause {
        Cause::Event { id, kind, actor } => format!("{kind} {actor} ({id})"),
        Cause::Timer { id, actor, .. } => format!("timer {id} {actor}"),
        Cause::Line { line } => format!("line {line}"),
    }
}

fn what_text(what: &What) -> (String, String) {
    match what {
        What::Emit {
            kind, actor, payload, ..
        } => (format!("emit {kind} → {actor}"), payload.to_string()),
        What::Action {
            name,
            category,
            priority,
            actor,
            payload,
            ..
        } => (
            format!("action {name} → {actor} [{category} {priority}]"),
            payload.to_string(),
        ),
        What::Deliver {
            channel,
            target,
            body,
            body_hex,
        } => (
            format!("deliver {channel} → {target}"),
            body.clone().or_else(|| body_hex.clone()).unwrap_or_default(),
        ),
        What::DeadLetter { reason, detail } => (format!("DEAD LETTER {reason}"), detail.clone()),
    }
}

fn print_table(records: &[Record]) {
    if records.is_empty() {
        println!("no outputs");
        return;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["at", "cause", "plugin", "output", "payload", "µs"]);
    for r in records {
        let (output, payload) = what_text(&r.what);
        table.add_row([
            rfc3339(r.at),
            cause_text(&r.cause),
            r.plugin.clone().unwrap_or_default(),
            output,
            shorten(&payload, 80),
            r.micros.to_string(),
        ]);
    }
    println!("{table}");
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Calls and times per plugin, what is left pending, and counts; on stderr with `--json`, so
/// stdout stays JSON lines.
fn print_summary(offline: &Offline, inputs: usize, records: &[Record], json: bool) {
    let mut text = String::new();
    let dead = records
        .iter()
        .filter(|r| matches!(r.what, What::DeadLetter { .. }))
        .count();
    text.push_str(&format!(
        "{}, {}, {}\n",
        count(inputs, "input"),
        count(records.len() - dead, "output"),
        count(dead, "dead letter")
    ));
    for run in offline.runs() {
        text.push_str(&format!(
            "  {}: {} calls, {} errors, per call p50 {} µs, p99 {} µs, max {} µs\n",
            run.name,
            run.calls,
            run.errors,
            run.quantile(0.5),
            run.quantile(0.99),
            run.quantile(1.0)
        ));
    }
    let pending = offline.pending();
    if let Some(first) = pending.first() {
        text.push_str(&format!(
            "{} pending, the first due {} ({} {} {}): --until runs the clock past them\n",
            count(pending.len(), "timer"),
            rfc3339(first.due),
            first.owner,
            first.id,
            first.actor
        ));
    }
    if json {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A record as the golden file holds it: its JSON without the call time.
fn golden_line(r: &Record) -> anyhow::Result<String> {
    Ok(golden_form(serde_json::to_value(r)?))
}

/// A line of a golden file in the same form (so key order and spacing do not matter).
fn normalized(line: &str) -> String {
    serde_json::from_str(line).map_or_else(|_| line.to_owned(), golden_form)
}

/// A record without its call time, which differs from run to run.
fn golden_form(mut value: serde_json::Value) -> String {
    if let Some(map) = value.as_object_mut() {
        map.remove("micros");
    }
    value.to_string()
}

fn expect(path: &Path, records: &[Record], update: bool) -> anyhow::Result<()> {
    let actual = records.iter().map(golden_line).collect::<anyhow::Result<Vec<_>>>()?;
    if update {
        let mut text = actual.join("\n");
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {} records to {}", actual.len(), path.display());
        return Ok(());
    }
    if !path.exists() {
        bail!(
            "{} does not exist: check the outputs above, then write them with --update",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let expected: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(normalized).collect();
    if expected == actual {
        eprintln!("matches {} ({} records)", path.display(), actual.len());
        return Ok(());
    }
    let expected = expected.join("\n") + "\n";
    let actual = actual.join("\n") + "\n";
    let diff = similar::TextDiff::from_lines(&expected, &actual);
    let header = format!("{} (expected)", path.display());
    eprint!("{}", diff.unified_diff().context_radius(2).header(&header, "this run"));
    let changed = diff
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .count();
    bail!(
        "the outputs differ from {} ({changed} lines): rerun with --update to accept them",
        path.display()
    )
}
