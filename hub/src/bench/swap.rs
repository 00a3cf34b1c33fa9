//! The swapping phase's uploads: new versions of the acting plugin go live through the admin API
//! while the paced load runs.

use super::workload::THRESHOLD;
use anyhow::{Context, bail};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// One version going live during the swapping phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct SwapTiming {
    /// The whole upload: validation (describe, instantiate, init) and the switch.
    pub(super) put_ms: f64,
    /// From the switch until every shard served the new version (the upload returns then).
    pub(super) live_ms: f64,
}

/// Upload `count` new versions of payment-trouble (alternating its action priority, so each
/// is a real new version with its own init) evenly over `during`, through the admin API.
pub(super) async fn swap_versions(api: SocketAddr, count: u64, during: Duration) -> anyhow::Result<Vec<SwapTiming>> {
    let file = Path::new(crate::EXAMPLE_PLUGINS).join("payment_trouble.wasm");
    let wasm = bytes::Bytes::from(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?);
    let http = reqwest::Client::new();
    let gap = during / u32::try_from(count + 1).unwrap_or(u32::MAX);
    let mut timings = Vec::new();
    for i in 0..count {
        tokio::time::sleep(gap).await;
        let config = serde_json::json!({"threshold": THRESHOLD, "window": "1h", "priority": 100 + (i + 1) % 2});
        let started = Instant::now();
        let response = http
            .put(format!("http://{api}/api/plugins/payment-trouble"))
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
    }
    Ok(timings)
}
