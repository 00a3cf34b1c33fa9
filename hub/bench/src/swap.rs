//! The swapping phase's uploads: new versions of the acting plugin go live through the admin API
//! while the paced load runs.

use super::progress::Step;
use anyhow::{Context, bail};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The plugin that gets new versions: the one whose actions the phase times.
pub(super) struct SwapTarget {
    pub(super) name: &'static str,
    pub(super) wasm: PathBuf,
    /// The config of the `i`th new version; each differs from the one before, so each upload is a
    /// real new version with its own init.
    pub(super) config: fn(u64) -> serde_json::Value,
}

/// Run a version of `target` with its next config as a shadow beside the active one
/// (`--shadow`: what a shadow costs the live path).
pub(super) async fn push_shadow(api: SocketAddr, target: &SwapTarget) -> anyhow::Result<()> {
    let file = &target.wasm;
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let response = reqwest::Client::new()
        .put(format!("http://{api}/api/plugins/{}", target.name))
        .header(reqwest::header::CONTENT_TYPE, "application/wasm")
        .query(&[
            ("config", (target.config)(0).to_string()),
            ("shadow", "true".to_owned()),
        ])
        .body(wasm)
        .send()
        .await
        .context("the admin API did not answer")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("unreadable admin API answer")?;
    if !status.is_success() || body["live"] != true {
        bail!("the shadow did not start: {status} {body}");
    }
    Ok(())
}

/// One version going live during the swapping phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct SwapTiming {
    /// The whole upload: validation (describe, instantiate, init) and the switch.
    pub(super) put_ms: f64,
    /// From the switch until every shard served the new version (the upload returns then).
    pub(super) live_ms: f64,
}

/// Upload `count` new versions of `target` evenly over `during`, through the admin API, and
/// count them on `step`.
pub(super) async fn swap_versions(
    api: SocketAddr,
    target: &SwapTarget,
    count: u64,
    during: Duration,
    step: &Step,
) -> anyhow::Result<Vec<SwapTiming>> {
    let file = &target.wasm;
    let wasm = bytes::Bytes::from(std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?);
    let http = reqwest::Client::new();
    let gap = during / u32::try_from(count + 1).unwrap_or(u32::MAX);
    let mut timings = Vec::new();
    step.note(&format!("swap 0/{count}"));
    for i in 0..count {
        tokio::time::sleep(gap).await;
        let config = (target.config)(i);
        let started = Instant::now();
        let response = http
            .put(format!("http://{api}/api/plugins/{}", target.name))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .query(&[("config", config.to_string())])
            .body(wasm.clone())
            .send()
            .await
            .context("the admin API did not answer")?;
        let put_ms = started.elapsed().as_secs_f64() * 1000.0;
        let status = response.status();
        let body: serde_json::Value = response.json().await.context("unreadable admin API answer")?;
        if !status.is_success() || body["live"] != true {
            bail!("swap {i} failed: {status} {body}");
        }
        timings.push(SwapTiming {
            put_ms,
            live_ms: body["live_after_ms"].as_f64().unwrap_or(f64::NAN),
        });
        step.note(&format!("swap {}/{count}", i + 1));
    }
    Ok(timings)
}
