//! `hub status`: the dashboard's headline figures as tables (`GET /api/status`), or one
//! tenant's line (`--tenant`, `GET /api/tenants/{name}`), which its own token may ask for.

use super::api_client::{ApiArgs, print_json};
use clap::Args;
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hub::status::{Status, TenantStatus};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Only this tenant's figures and quotas (`default` for inputs that name none): what a
    /// tenant's own token may see
    #[arg(long)]
    tenant: Option<String>,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    if let Some(tenant) = &args.tenant {
        let name = percent_encoding::utf8_percent_encode(tenant, percent_encoding::NON_ALPHANUMERIC);
        let path = format!("/api/tenants/{name}");
        let (body, line): (String, TenantStatus) = args.api.client().get(&path).await?;
        if args.api.json {
            return print_json(&body);
        }
        println!("{}", tenants_table(std::slice::from_ref(&line)));
        return Ok(());
    }
    let (body, s): (String, Status) = args.api.client().get("/api/status").await?;
    if args.api.json {
        return print_json(&body);
    }
    let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    let mut head = Table::new();
    head.load_preset(UTF8_BORDERS_ONLY).set_header([
        "events in/s",
        "events out/s",
        "actions/s",
        "dead letters/s",
        "event→action p50 ms",
        "p99 ms",
        "p99 ms, 1 min",
        "consumer lag",
        "timers",
        "input",
        "up",
    ]);
    head.add_row([
        format!("{:.0}", s.rates.events_in),
        format!("{:.0}", s.rates.events_out),
        format!("{:.0}", s.rates.actions),
        format!("{:.0}", s.rates.dead_letters),
        ms(s.event_to_action_ms.p50),
        ms(s.event_to_action_ms.p99),
        ms(s.event_to_action_ms_1m.p99),
        s.consumer_lag.map_or_else(|| "-".into(), |l| l.to_string()),
        s.timers_pending.to_string(),
        s.input.clone(),
        humantime::format_duration(std::time::Duration::from_secs(s.uptime_s)).to_string(),
    ]);
    println!("{head}");
    println!(
        "since start: {} events in, {} emitted, {} actions, {} dead letters",
        s.totals.events_in, s.totals.events_emitted, s.totals.actions, s.totals.dead_letters
    );

    let mut plugins = Table::new();
    plugins
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["plugin", "version", "state", "calls", "errors", "p50 ms", "p99 ms"]);
    for p in &s.plugins {
        let state = match (p.enabled, p.quarantined) {
            (false, _) => "disabled",
            (true, true) => "QUARANTINED",
            (true, false) => "running",
        };
        plugins.add_row([
            p.name.clone(),
            p.version.to_string(),
            state.into(),
            p.calls.to_string(),
            p.errors.to_string(),
            ms(p.p50_ms),
            ms(p.p99_ms),
        ]);
    }
    println!("{plugins}");

    // Tenants, once the hub has more than the default one.
    if s.tenants.len() > 1 {
        println!("{}", tenants_table(&s.tenants));
    }

    let reasons = |counts: &std::collections::BTreeMap<String, u64>| {
        counts
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &s.dead_letters.kept {
        Some(kept) if !kept.is_empty() => println!("dead letters kept: {} (`hub dlq ls`)", reasons(kept)),
        Some(_) => println!("dead letters kept: none"),
        None => println!("dead letters kept: the dead-letter stream cannot be read"),
    }
    if !s.dead_letters.by_reason.is_empty() {
        println!("dead letters since start: {}", reasons(&s.dead_letters.by_reason));
    }
    let depths: Vec<String> = s
        .shards
        .iter()
        .map(|d| format!("{}/{}", d.queue_depth, d.capacity))
        .collect();
    println!("shard queues (waiting/capacity): {}", depths.join(" "));
    Ok(())
}

/// A line per tenant: its traffic, backlog, share and rates, and each quota as `used/max`.
fn tenants_table(lines: &[TenantStatus]) -> Table {
    let mut tenants = Table::new();
    tenants.load_preset(UTF8_BORDERS_ONLY).set_header([
        "tenant",
        "events in/s",
        "events in",
        "actions",
        "dead letters",
        "backlog",
        "share",
        "rate/s",
        "guard/s",
        "plugins",
        "state bytes",
        "timers",
        "quota refusals",
    ]);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    // What is used against a limit, `used/max`, or what is used.
    let used_of = |used: Option<u64>, max: Option<u64>| match (used, max) {
        (used, Some(max)) => format!("{}/{max}", used.unwrap_or(0)),
        (used, None) => or_dash(used.map(|u| u.to_string())),
    };
    for t in lines {
        tenants.add_row([
            t.name.clone(),
            format!("{:.0}", t.events_in_per_s),
            t.events_in.to_string(),
            t.actions.to_string(),
            t.dead_letters.to_string(),
            or_dash(t.backlog.map(|b| b.to_string())),
            t.share.to_string(),
            or_dash(t.rate.map(|r| r.to_string())),
            or_dash(t.read_limit.map(|l| format!("{l:.0}"))),
            used_of(Some(t.plugins), t.max_plugins.map(u64::from)),
            used_of(t.state_bytes, t.max_state_bytes),
            used_of(t.timers, t.max_timers),
            t.quota_refusals.to_string(),
        ]);
    }
    tenants
}
