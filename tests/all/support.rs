//! A fresh NATS server, data folder and NATS client per test, and helpers to talk to the hub.

use async_nats::{Client, Message, Subscriber};
use futures::StreamExt;
use hub::config::Config;
use hub::hub::Hub;
use hub::nats_server::{LocalNats, free_port};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

pub struct Env {
    pub nats: LocalNats,
    pub dir: TempDir,
    pub client: Client,
}

impl Env {
    pub async fn new() -> Env {
        let mut dir = tempfile::tempdir().expect("temp dir");
        // `HUB_TEST_KEEP=1` keeps the test's folder (NATS store, data, instances' logs) to
        // read after a failure.
        if std::env::var_os("HUB_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("test folder kept: {}", dir.path().display());
        }
        let port = free_port().expect("free port");
        let nats = LocalNats::start(port, &dir.path().join("nats"))
            .await
            .expect("nats-server starts");
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 16)
            .connect(nats.url.as_str())
            .await
            .expect("connect");
        Env { nats, dir, client }
    }

    /// The local default with this test's NATS, data folder, the example plugins, 2 shards,
    /// and an HTTP port of its own.
    pub fn config(&self) -> Config {
        let mut config = Config::local_default();
        config.nats.url = self.nats.url.clone();
        config.data_dir = self.dir.path().join("data");
        config.http.listen = "127.0.0.1:0".parse().expect("addr");
        config.plugins.dir = Some(PathBuf::from(hub::EXAMPLE_PLUGINS));
        config.engine.shards = 2;
        config.engine.commit_interval_ms = 20;
        config
    }

    /// A plugin folder holding the examples and the chaos fixture.
    pub fn plugins_with_chaos(&self) -> PathBuf {
        let dir = self.dir.path().join("plugins");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for entry in std::fs::read_dir(hub::EXAMPLE_PLUGINS).expect("plugins built") {
            let path = entry.expect("entry").path();
            let name = path.file_name().expect("file name");
            std::fs::copy(&path, dir.join(name)).expect("copy plugin");
        }
        std::fs::copy(fixture("chaos.wasm"), dir.join("chaos.wasm")).expect("copy chaos");
        dir
    }

    pub async fn start(&self, config: Config) -> Hub {
        Hub::start(config).await.expect("hub starts")
    }

    /// Subscribe, and make sure the server knows before anything is published.
    pub async fn sub(&self, subject: &str) -> Subscriber {
        let sub = self.client.subscribe(subject.to_owned()).await.expect("subscribe");
        round_trip(&self.client).await;
        sub
    }

    /// Publish an event envelope on `events.<kind>`.
    pub async fn send(&self, kind: &str, actor: &str, payload: Value) {
        let body = serde_json::json!({"kind": kind, "actor": actor, "payload": payload});
        self.send_raw(&format!("events.{kind}"), body.to_string().as_bytes())
            .await;
    }

    /// Publish raw bytes on a subject.
    pub async fn send_raw(&self, subject: &str, body: &[u8]) {
        self.client
            .publish(subject.to_owned(), body.to_vec().into())
            .await
            .expect("publish");
        round_trip(&self.client).await;
    }

    /// A raw clickstream message, as the browser collector publishes it on `web.<type>`.
    pub async fn web(&self, kind: &str, body: Value) {
        self.send_raw(&format!("web.{kind}"), body.to_string().as_bytes()).await;
    }
}

/// Wait until the server has processed everything this client sent before.
async fn round_trip(client: &Client) {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.publish(inbox, "".into()).await.expect("publish");
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("NATS round trip")
        .expect("probe");
}

/// The next message, or a failure naming the subject we waited on.
pub async fn next(sub: &mut Subscriber, what: &str, secs: u64) -> Message {
    match tokio::time::timeout(Duration::from_secs(secs), sub.next()).await {
        Ok(Some(msg)) => msg,
        Ok(None) => panic!("subscription for {what} closed"),
        Err(_) => panic!("nothing arrived for {what} within {secs} s"),
    }
}

/// Assert that nothing arrives within `ms`.
pub async fn nothing(sub: &mut Subscriber, what: &str, ms: u64) {
    if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(ms), sub.next()).await {
        panic!(
            "expected nothing for {what}, got {} {}",
            msg.subject,
            String::from_utf8_lossy(&msg.payload)
        );
    }
}

pub fn json(msg: &Message) -> Value {
    serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
        panic!(
            "{} is not JSON ({e}): {}",
            msg.subject,
            String::from_utf8_lossy(&msg.payload)
        )
    })
}

pub fn header(msg: &Message, name: &str) -> String {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.to_string())
        .unwrap_or_else(|| panic!("{} has no header {name}", msg.subject))
}

/// GET a path from the hub's HTTP server (plain HTTP/1.1, connection closed by the server).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect http");
    let request = format!("GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

/// The path of a built reference scenario plugin.
pub fn reference(file: &str) -> PathBuf {
    PathBuf::from(hub::REFERENCE_PLUGINS).join(file)
}

/// A plugin folder of its own holding copies of `files`.
pub fn plugin_folder(env: &Env, name: &str, files: &[PathBuf]) -> PathBuf {
    let dir = env.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for file in files {
        std::fs::copy(file, dir.join(file.file_name().expect("file name"))).expect("copy plugin");
    }
    dir
}

/// A plugin folder `name` holding the examples and the `notify` delivery plugin.
pub fn examples_with_notify(env: &Env, name: &str) -> PathBuf {
    let examples = std::fs::read_dir(hub::EXAMPLE_PLUGINS)
        .expect("examples built")
        .map(|e| e.expect("entry").path());
    let files: Vec<_> = examples.chain([reference("notify.wasm")]).collect();
    plugin_folder(env, name, &files)
}

/// A raw `web.add_to_cart` body of the browser collector: one pair of shoes for `visitor`.
pub fn shoes(visitor: &str) -> Value {
    serde_json::json!({"visitor": visitor, "product": {"sku": "A1", "name": "Shoes", "price": 59.9}, "qty": 1})
}

/// A `cart.updated` payload: one pair of shoes.
pub fn shoes_cart() -> Value {
    serde_json::json!({"items": [{"sku": "A1", "name": "Shoes", "price": 59.9, "qty": 1}], "total": 59.9})
}

/// The path of a built fixture plugin.
/// One request a test receiver took: idempotency key, target, body, and what it answered.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Value, u16)>>>;

/// An HTTP receiver (a CRM, say) on `/hook/{target}` that answers its `n`-th request (from 0)
/// with the status `answer(n)`.
pub async fn crm(answer: impl Fn(usize) -> u16 + Send + Sync + 'static) -> (std::net::SocketAddr, Received) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    type Answer = std::sync::Arc<dyn Fn(usize) -> u16 + Send + Sync>;
    async fn hook(
        State((received, answer)): State<(Received, Answer)>,
        Path(target): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> StatusCode {
        let mut r = received.lock().expect("lock");
        let status = answer(r.len());
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        r.push((key.to_owned(), target, body, status));
        StatusCode::from_u16(status).expect("status")
    }
    let received: Received = Default::default();
    let answer: Answer = std::sync::Arc::new(answer);
    let app = axum::Router::new()
        .route("/hook/{target}", axum::routing::post(hook))
        .with_state((received.clone(), answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

/// A webhook channel to the receiver at `address` (`/hook/{target}`), retrying `retries` times
/// `backoff` apart (doubling).
pub fn webhook(address: std::net::SocketAddr, retries: u32, backoff: Duration) -> hub::config::ChannelConfig {
    hub::config::ChannelConfig::Webhook(hub::config::WebhookConfig {
        url: format!("http://{address}/hook/{{target}}"),
        retries,
        backoff,
        ..hub::config::WebhookConfig::default()
    })
}

pub fn fixture(file: &str) -> PathBuf {
    PathBuf::from(hub::FIXTURE_PLUGINS).join(file)
}

/// A client of the hub's admin API.
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(hub: &Hub, token: Option<&str>) -> Api {
        Api {
            base: format!("http://{}", hub.http_addr()),
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(r: reqwest::RequestBuilder) -> (u16, Value) {
        let response = r.send().await.expect("API answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        Self::send(self.request(reqwest::Method::POST, path).body(body.to_owned())).await
    }

    pub async fn put_json(&self, path: &str, body: &str) -> (u16, Value) {
        Self::send(
            self.request(reqwest::Method::PUT, path)
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// PATCH with a JSON merge patch.
    pub async fn request_raw_patch(&self, path: &str, body: &[u8]) -> (u16, Value) {
        Self::send(
            self.request(reqwest::Method::PATCH, path)
                .header("content-type", "application/merge-patch+json")
                .body(body.to_vec()),
        )
        .await
    }

    /// PUT any body with any content type.
    pub async fn request_raw_put(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        Self::send(
            self.request(reqwest::Method::PUT, path)
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// POST a module to `path` with `query`.
    pub async fn post_wasm(&self, path: &str, wasm: Vec<u8>, query: &[(&str, &str)]) -> (u16, Value) {
        Self::send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/wasm")
                .query(query)
                .body(wasm),
        )
        .await
    }

    /// Upload a module as plugin `name` with `query` (`config`, `shadow`).
    pub async fn push_query(&self, name: &str, wasm: Vec<u8>, query: &[(&str, &str)]) -> (u16, Value) {
        Self::send(
            self.request(reqwest::Method::PUT, &format!("/api/plugins/{name}"))
                .header("content-type", "application/wasm")
                .query(query)
                .body(wasm),
        )
        .await
    }

    /// Upload a module as plugin `name`, optionally with a config.
    pub async fn push(&self, name: &str, wasm: Vec<u8>, config: Option<&str>) -> (u16, Value) {
        let query: Vec<(&str, &str)> = config.map(|c| ("config", c)).into_iter().collect();
        self.push_query(name, wasm, &query).await
    }
}

/// The built payment-trouble example, to upload.
pub fn payment_trouble_wasm() -> Vec<u8> {
    std::fs::read(std::path::Path::new(hub::EXAMPLE_PLUGINS).join("payment_trouble.wasm")).expect("plugin built")
}

/// The sum of the series on the `/metrics` of the hub at `http` whose line starts with `name`
/// (a metric's name, or its name and labels: `hub_tenant_backlog{tenant="acme"}`).
pub async fn metric(http: std::net::SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
