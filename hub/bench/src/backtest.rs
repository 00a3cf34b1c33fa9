//! The backtest phase: once a durable hub has run its phases, its input stream holds every input
//! of the run, and the plugin the swapping phase updates is backtested over all of them: its
//! active version beside a candidate with the next config, as `hub plugin backtest` does. The
//! figure is inputs replayed per second, set against the paced rate: how much faster than real
//! time recorded traffic at that rate replays.

use super::progress::Step;
use super::swap::SwapTarget;
use anyhow::{Context, bail};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Instant;

/// What one backtest took.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct BacktestRun {
    /// Inputs of the stream replayed (through both versions).
    pub(super) inputs: u64,
    /// Of those, events the hub's decoders made (all of them run; the plugin takes its kinds).
    pub(super) events: u64,
    /// The whole request, from upload to report.
    pub(super) wall_ms: f64,
}

impl BacktestRun {
    pub(super) fn inputs_per_s(&self) -> f64 {
        self.inputs as f64 / (self.wall_ms / 1000.0).max(1e-6)
    }
}

/// Backtest `target` over everything the hub at `api` recorded.
pub(super) async fn backtest_phase(api: SocketAddr, target: &SwapTarget, step: &Step) -> anyhow::Result<BacktestRun> {
    let file = &target.wasm;
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    step.note(&format!("{} against its next config", target.name));
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://{api}/api/plugins/{}/backtest", target.name))
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .query(&[
            ("from", "1".to_owned()),
            ("warmup", "0s".to_owned()),
            ("config", (target.config)(0).to_string()),
        ])
        .body(wasm)
        .send()
        .await
        .context("the admin API did not answer")?;
    let status = response.status();
    let report: serde_json::Value = response.json().await.context("unreadable admin API answer")?;
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!("the backtest failed: {status} {report}");
    }
    let count = |field: &str| report["range"][field].as_u64().unwrap_or(0);
    Ok(BacktestRun {
        inputs: count("inputs"),
        events: count("events"),
        wall_ms,
    })
}
