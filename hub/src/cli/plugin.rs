//! `hub plugin …`: writing plugins offline (`new`, `build`, `test`: see `author`), and a client of
//! the admin REST API (`/api/plugins`) for the rest.

use super::api_client::{ApiArgs, print_json};
use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hub::api::plugins::{PluginDetail, PluginSummary};
use std::path::PathBuf;

#[derive(Args)]
pub struct PluginArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Start a plugin project (Rust or Python) that builds and whose tests pass as written
    New(super::author::new::NewArgs),
    /// Build a plugin project into a component and show what the hub sees of it
    Build(super::author::build::BuildArgs),
    /// Run plugins offline on recorded events, on the hub's runtime and a virtual clock
    Test(super::author::test::TestArgs),
    #[command(flatten)]
    Admin(AdminCommand),
}

/// What goes through the admin API of a running hub.
#[derive(Subcommand)]
enum AdminCommand {
    /// List plugins: active version, subscriptions, calls, errors, latency
    Ls,
    /// Upload a .wasm as the next version of NAME and make it live once validated
    Push {
        name: String,
        file: PathBuf,
        /// Config as a JSON object [default: the active version's config]
        #[arg(long)]
        config: Option<String>,
        /// Run it as a shadow beside the active version instead: own state and timers,
        /// delivering nothing, its outputs compared (see `hub plugin show`)
        #[arg(long)]
        shadow: bool,
    },
    /// Make the shadow of NAME its active version
    Promote { name: String },
    /// Stop the shadow of NAME and drop its state
    Drop { name: String },
    /// Versions of a plugin (hashes, times, configs) and its statistics
    Show { name: String },
    /// Set new config (a JSON object) for the running code
    Config { name: String, config: String },
    /// Run a disabled plugin again
    Enable { name: String },
    /// Stop running a plugin without forgetting it
    Disable { name: String },
    /// Go back to the previous version, or to --to N
    Rollback {
        name: String,
        #[arg(long)]
        to: Option<u32>,
    },
    /// Stop a plugin and forget its versions
    Rm { name: String },
    /// Replay recorded inputs through the active version and a candidate; show what differs
    Backtest(super::backtest::BacktestArgs),
}

pub async fn run(args: PluginArgs) -> anyhow::Result<()> {
    let command = match args.command {
        PluginCommand::New(a) => return super::author::new::run(a),
        PluginCommand::Build(a) => return super::author::build::run(a),
        PluginCommand::Test(a) => return super::author::test::run(a, args.api.json),
        PluginCommand::Admin(command) => command,
    };
    let client = args.api.client();
    let json = args.api.json;
    match command {
        AdminCommand::Ls => {
            let body = client
                .send(client.request(reqwest::Method::GET, "/api/plugins"))
                .await?;
            if json {
                return print_json(&body);
            }
            let list: Vec<PluginSummary> = serde_json::from_str(&body).context("unexpected answer")?;
            print_list(&list);
        }
        AdminCommand::Show { name } => {
            let body = client
                .send(client.request(reqwest::Method::GET, &path(&name, "")))
                .await?;
            if json {
                return print_json(&body);
            }
            let detail: PluginDetail = serde_json::from_str(&body).context("unexpected answer")?;
            print_detail(&detail);
        }
        AdminCommand::Push {
            name,
            file,
            config,
            shadow,
        } => {
            let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut request = client
                .request(reqwest::Method::PUT, &path(&name, ""))
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(wasm);
            if let Some(config) = config {
                request = request.query(&[("config", config)]);
            }
            if shadow {
                request = request.query(&[("shadow", "true")]);
            }
            client.change(request, json).await?;
        }
        AdminCommand::Promote { name } => {
            client
                .change(client.request(reqwest::Method::POST, &path(&name, "/promote")), json)
                .await?;
        }
        AdminCommand::Drop { name } => {
            client
                .change(client.request(reqwest::Method::DELETE, &path(&name, "/shadow")), json)
                .await?;
        }
        AdminCommand::Config { name, config } => {
            let request = client
                .request(reqwest::Method::PUT, &path(&name, "/config"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(config);
            client.change(request, json).await?;
        }
        AdminCommand::Enable { name } => {
            client
                .change(client.request(reqwest::Method::POST, &path(&name, "/enable")), json)
                .await?;
        }
        AdminCommand::Disable { name } => {
            client
                .change(client.request(reqwest::Method::POST, &path(&name, "/disable")), json)
                .await?;
        }
        AdminCommand::Rollback { name, to } => {
            let body = to
                .map(|v| serde_json::json!({ "version": v }).to_string())
                .unwrap_or_default();
            let request = client
                .request(reqwest::Method::POST, &path(&name, "/rollback"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
            client.change(request, json).await?;
        }
        AdminCommand::Backtest(a) => super::backtest::run(client, a, json).await?,
        AdminCommand::Rm { name } => {
            client
                .change(client.request(reqwest::Method::DELETE, &path(&name, "")), json)
                .await?;
        }
    }
    Ok(())
}

fn path(name: &str, rest: &str) -> String {
    format!("/api/plugins/{name}{rest}")
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn print_list(list: &[PluginSummary]) {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "name",
        "version",
        "enabled",
        "module",
        "subscribes",
        "calls",
        "errors",
        "p50 ms",
        "p99 ms",
    ]);
    for p in list {
        table.add_row([
            p.name.clone(),
            match p.shadow_version {
                Some(shadow) => format!("{} (shadow {shadow})", p.active_version),
                None => p.active_version.to_string(),
            },
            p.enabled.to_string(),
            format!("{} {}", p.module, p.module_version),
            p.subscribes.join(", "),
            p.stats.calls.to_string(),
            p.stats.errors.to_string(),
            ms(p.stats.latency_p50_ms),
            ms(p.stats.latency_p99_ms),
        ]);
    }
    println!("{table}");
}

fn print_detail(d: &PluginDetail) {
    let state = if d.enabled { "enabled" } else { "disabled" };
    println!("{}: version {} active, {state}", d.name, d.active_version);
    println!(
        "calls {}  errors {}  p50 {} ms  p99 {} ms",
        d.stats.calls,
        d.stats.errors,
        ms(d.stats.latency_p50_ms),
        ms(d.stats.latency_p99_ms)
    );
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["", "version", "uploaded", "sha256", "module", "source", "config"]);
    for v in &d.versions {
        table.add_row([
            if v.active { "*".into() } else { String::new() },
            v.version.to_string(),
            v.uploaded_at.clone(),
            v.sha256.chars().take(12).collect(),
            format!("{} {}", v.description.name, v.description.version),
            v.source.clone(),
            v.config.to_string(),
        ]);
    }
    println!("{table}");
    if let Some(s) = &d.shadow {
        println!(
            "\nshadow: version {} since {}, {} calls{}{}",
            s.version,
            super::backtest::clock(s.since),
            s.calls,
            if s.quarantined { ", QUARANTINED" } else { "" },
            if s.failures.is_empty() {
                String::new()
            } else {
                let failed: Vec<String> = s.failures.iter().map(|(r, n)| format!("{r} {n}")).collect();
                format!(", failed calls: {}", failed.join(", "))
            }
        );
        super::backtest::print_diff_table(&s.diff, "shadow");
        if s.pending > 0 {
            println!("{} outputs wait up to a minute for the other version's", s.pending);
        }
        super::backtest::print_examples(&s.diff);
    }
}
