//! A client of the hub's admin REST API, shared by the commands that talk to a running hub
//! (`hub plugin …`, `hub status`, `hub dlq …`).

use anyhow::{Context, bail};
use clap::Args;
use hub::registry::Change;

/// Where the hub's API is and how to call it.
#[derive(Args)]
pub struct ApiArgs {
    /// Base URL of the hub's HTTP API
    #[arg(long, env = "HUB_API", default_value = "http://127.0.0.1:8080", global = true)]
    api: String,
    /// Admin bearer token
    #[arg(long, env = "HUB_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON answer instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

impl ApiArgs {
    pub fn client(&self) -> Client {
        Client {
            http: reqwest::Client::new(),
            api: self.api.trim_end_matches('/').to_owned(),
            token: self.token.clone(),
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    api: String,
    token: Option<String>,
}

impl Client {
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.api));
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    /// Send, and turn an error answer into the API's own message.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<String> {
        let response = request
            .send()
            .await
            .with_context(|| format!("no answer from the hub at {}", self.api))?;
        let status = response.status();
        let body = response.text().await.context("cannot read the answer")?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    pub async fn change(&self, request: reqwest::RequestBuilder, json: bool) -> anyhow::Result<()> {
        let body = self.send(request).await?;
        if json {
            return print_json(&body);
        }
        let c: Change = serde_json::from_str(&body).context("unexpected answer")?;
        let what = if c.changed { "now" } else { "already" };
        let state = if c.enabled { "enabled" } else { "disabled" };
        println!("{}: {what} at version {} ({state})", c.name, c.version);
        if let Some(shadow) = c.shadow {
            println!(
                "version {shadow} runs as a shadow: `hub plugin show {}` compares it",
                c.name
            );
        }
        if c.changed {
            if c.live {
                println!("live on every shard after {:.1} ms", c.live_after_ms);
            } else {
                println!("saved, but not every shard picked it up yet");
            }
        }
        Ok(())
    }
}

pub fn print_json(body: &str) -> anyhow::Result<()> {
    let value: serde_json::Value = serde_json::from_str(body).context("unexpected answer")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

impl Client {
    /// GET `path` and decode the answer.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<(String, T)> {
        let body = self.send(self.request(reqwest::Method::GET, path)).await?;
        let value = serde_json::from_str(&body).context("unexpected answer")?;
        Ok((body, value))
    }
}
