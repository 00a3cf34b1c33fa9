//! The hub's configuration: one typed struct, loaded from a TOML file and `HUB_*` environment
//! variables (nested keys joined by `__`, e.g. `HUB_NATS__URL`, `HUB_ENGINE__SHARDS`).
//!
//! Every limit and timeout lives here with its default, so there is one place to read them.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub nats: NatsConfig,
    pub http: HttpConfig,
    /// Where sled keeps state, timers and profiles (and a local nats-server its JetStream files).
    pub data_dir: PathBuf,
    pub plugins: PluginsConfig,
    pub engine: EngineConfig,
    pub limits: PluginLimits,
    /// Rules that turn raw messages on non-`events.>` subjects into events.
    pub ingest: Vec<IngestRule>,
    /// Bearer token for admin calls (`HUB_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Contact policies of the arbiter (also `GET/PUT /api/policies`).
    pub policies: crate::arbiter::Policies,
    /// Where each delivery channel goes (`[channels.<name>]`); `push` goes to connected devices
    /// and any other channel to `hub.deliveries.<channel>` unless configured here.
    pub channels: BTreeMap<String, ChannelConfig>,
    pub push: PushConfig,
    pub actions: ActionsConfig,
    pub input: InputConfig,
    pub dead_letters: DeadLettersConfig,
    pub cluster: ClusterConfig,
    /// The tenants inputs may name besides the default one (`[tenants.<name>]`).
    pub tenants: BTreeMap<String, crate::tenant::TenantConfig>,
}

/// Several hub instances sharing one event stream (`[cluster]`; durable mode): inputs are split
/// by actor into `partitions`, each processed by one live instance at a time, which holds a
/// lease on it in a NATS key-value bucket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// How many partitions the actors are split into: fixed for a deployment (changing it
    /// moves actors between partitions). More partitions than instances spread load evenly;
    /// each costs one consumer and one lease.
    pub partitions: u16,
    /// This instance's name, unique in the cluster; empty: `<host>-<pid>`.
    pub instance: String,
    /// How long a lease outlives its holder's last renewal: an instance that dies is replaced
    /// after about this long. Renewed every third of it.
    #[serde(with = "duration_text")]
    pub lease_ttl: Duration,
    /// The key-value bucket of members and leases.
    pub bucket: String,
    /// The partition streams are `<stream>_<partition>`, each capturing `<subject>.<partition>`
    /// (one stream per partition: consumers sharing one stream through subject filters cost the
    /// server more per input with every partition). The changelog's are `<stream>_STATE` and
    /// `<stream>_LOG`.
    pub stream: String,
    pub subject: String,
    /// How long partitioned inputs are kept.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// The partition streams' size limit in bytes, all together (each gets its share: the
    /// server reserves each stream's limit on its disk); -1: none.
    pub max_bytes: i64,
    /// How long the partition stream remembers message ids: a hand-off of the ingest lease
    /// must complete within it, or an input read twice is partitioned twice.
    #[serde(with = "duration_text")]
    pub dedup_window: Duration,
    /// How long state changes gather before they are written to the changelog together: each
    /// key is written once per interval however often it changed, and each partition's log
    /// entry and commit marker once. Inputs are acknowledged after that write, so a longer
    /// interval costs a new owner more inputs to process again (their outputs keep their ids).
    #[serde(with = "duration_text")]
    pub changelog_every: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enabled: false,
            partitions: 32,
            instance: String::new(),
            lease_ttl: Duration::from_secs(6),
            bucket: "HUB_CLUSTER".into(),
            stream: "HUB_PARTS".into(),
            subject: "hub.part".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 << 30,
            dedup_window: Duration::from_secs(10 * 60),
            changelog_every: Duration::from_millis(200),
        }
    }
}

impl ClusterConfig {
    /// The instance name, filled in when not configured.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "hub".into());
        let host: String = host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{host}-{}", std::process::id())
    }
}

/// The stream that keeps dead letters (`[dead_letters]`), for listing and replaying them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLettersConfig {
    pub stream: String,
    /// How long a letter is kept.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// The stream's size limit in bytes (the oldest letters go first); -1: none.
    pub max_bytes: i64,
}

impl Default for DeadLettersConfig {
    fn default() -> Self {
        DeadLettersConfig {
            stream: "HUB_DLQ".into(),
            max_age: Duration::from_secs(14 * 24 * 3600),
            max_bytes: 1 << 30,
        }
    }
}

/// How inputs are read from NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// From a JetStream stream that captures every input subject, through a durable consumer:
    /// what is published while the hub is down waits for it, and each input's effects happen
    /// once, across crashes (acknowledged only once the state it produced is on disk).
    #[default]
    Durable,
    /// Plain subscriptions: the lowest latency, but what arrives while the hub is down, or
    /// between a crash and its last commit, is lost.
    Core,
}

/// The input stream and its consumer (`[input]`; durable mode).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InputConfig {
    pub mode: InputMode,
    /// The stream that captures `events.>`, `profiles.>` and the ingest rules' subjects.
    pub stream: String,
    /// The hub's durable consumer of that stream.
    pub consumer: String,
    /// How long inputs are kept (for replays and backtests), whether consumed or not.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// The stream's size limit in bytes (the oldest inputs go first); -1: none.
    pub max_bytes: i64,
    /// How long the server waits for an acknowledgement before it delivers an input again.
    /// Inputs are acknowledged once their state is on disk (a commit interval or so), so this
    /// only matters when the hub is stalled.
    #[serde(with = "duration_text")]
    pub ack_wait: Duration,
    /// Inputs delivered but not yet acknowledged, at most: what bounds the hub's memory when
    /// shards are saturated (the server stops delivering until acknowledgements catch up).
    pub max_ack_pending: i64,
    /// Inputs asked for per pull request: a stream has at most this many on their way to the
    /// hub or waiting in it ahead of the shards (keep it below `[nats] subscription_capacity`).
    pub batch: usize,
    /// With tenants' own streams: inputs of one stream queued ahead of the shards at most
    /// (times its tenant's share). A flooding tenant's backlog stays in its stream, so another
    /// tenant's input waits behind at most this many of its inputs.
    pub tenant_window: usize,
    /// With tenants' own streams: the latency guard reads streams with a backlog more slowly
    /// while the 99th percentile of the other streams' lag (with a round trip through
    /// nats-server, the way in and out of the hub) exceeds this factor of its unloaded
    /// value (measured by holding the backlogged streams back for a moment); a factor below 1
    /// counts as 1. 0 turns it off: a backlog is then drained at the shards' full speed, and
    /// the other tenants' latency rises with the machine's load.
    pub latency_guard: f64,
}

/// The sink of one delivery channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "sink", rename_all = "lowercase")]
pub enum ChannelConfig {
    /// Published on `hub.deliveries.<channel>`, which the action stream keeps.
    Nats,
    /// An HTTP POST to a URL.
    Webhook(WebhookConfig),
    /// To the devices connected on `/push/{target}`.
    Push,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST; `{target}` is replaced by the delivery's target (URL-encoded).
    pub url: String,
    /// One attempt's budget, connecting included.
    #[serde(with = "duration_text")]
    pub timeout: Duration,
    /// Attempts after the first, with exponential back-off; then the delivery is dead-lettered.
    pub retries: u32,
    /// Wait before the first retry; doubles up to `max_backoff`.
    #[serde(with = "duration_text")]
    pub backoff: Duration,
    #[serde(with = "duration_text")]
    pub max_backoff: Duration,
    /// Requests in flight to this target at most.
    pub concurrency: usize,
    /// Deliveries waiting for a request slot; more are dead-lettered (`sink_overflow`).
    pub queue: usize,
    pub content_type: String,
}

/// Live delivery to devices on `/push/{actor}` (WebSocket, or server-sent events).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Messages waiting for one connection; a device that falls further behind misses them
    /// (counted), it never holds up the others.
    pub connection_queue: usize,
    /// Deliveries waiting for the push task; more are dead-lettered (`sink_overflow`).
    pub queue: usize,
    /// When set, a device must present `?token=` = hex HMAC-SHA256(secret, actor). Without it,
    /// `/push` is open only when the hub listens on loopback.
    pub secret: Option<String>,
}

/// The JetStream stream that keeps actions and deliveries (`hub.actions.>`, `hub.deliveries.>`),
/// and emitted events if asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    pub stream: String,
    /// How long a message id is remembered: a replay within it delivers nothing twice.
    #[serde(with = "duration_text")]
    pub dedup_window: Duration,
    /// How long actions are kept.
    #[serde(with = "duration_text")]
    pub max_age: Duration,
    /// Keep the events plugins emit (`hub.events.>`) in this stream too, each with its id as
    /// `Nats-Msg-Id`: a reader of the stream then sees each emitted event once across crashes
    /// (a plain subscriber may see one again after a crash, with the same id). Off by default:
    /// storing every emitted event costs the server and the hub throughput.
    pub keep_events: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    /// Messages buffered per subscription. async-nats drops silently past this, so it is large.
    pub subscription_capacity: usize,
    /// Messages queued for publishing before shards wait (backpressure).
    pub outbound_capacity: usize,
    /// Subject prefix for events in envelopes (`<prefix>.<kind>`).
    pub events_subject: String,
    /// Subject prefix for profile updates (`<prefix>.<actor>`, a JSON object merged in).
    pub profiles_subject: String,
    /// Subject prefix of tenants' own subjects: `<prefix>.<tenant>.<input subject>` is an input
    /// of that tenant, kept in its own stream (durable mode) so it never waits behind another
    /// tenant's backlog.
    pub tenants_subject: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Every `*.wasm` in this folder is loaded at start.
    pub dir: Option<PathBuf>,
    /// Per-plugin parameters (by plugin name), passed to the plugin's `init` as JSON.
    pub config: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Shard threads; 0 means one per core.
    pub shards: usize,
    /// Events a shard takes from its queue at once.
    pub batch_size: usize,
    /// Bounded queue in front of each shard (backpressure on ingress).
    pub queue_capacity: usize,
    /// How often each shard commits its dirty state and timers to sled.
    pub commit_interval_ms: u64,
    /// How many times an event may be re-emitted by plugins before the chain is cut.
    pub hop_limit: u8,
    /// Cached state entries per shard before clean entries are dropped after a commit.
    pub cache_entries: usize,
}

/// The sandbox around every plugin call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// CPU-time budget of one call: a plugin computing longer is stopped (`deadline`). Time the
    /// OS spends running other threads does not count.
    pub call_timeout_ms: u64,
    /// Wall-clock cap of one call, for a call that blocks without computing.
    pub call_wall_timeout_ms: u64,
    /// Linear memory cap per plugin instance.
    pub memory_bytes: usize,
    /// Granularity of the epoch ticker.
    pub epoch_tick_ms: u64,
    /// Largest accepted plugin module.
    pub max_module_bytes: usize,
    /// Largest output a call may return (an emitted event as published, an action, a delivery
    /// body); a call returning a larger one fails as `invalid_output`, atomically. Lowered at
    /// start to the NATS server's `max_payload` less room for headers.
    pub max_output_bytes: usize,
}

/// How a raw message on a subject becomes an event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IngestRule {
    /// NATS subject pattern to subscribe to, e.g. `web.*`.
    pub subject: String,
    /// Event kind; `{N}` is the Nth token of the subject (1-based), `{subject}` the whole subject.
    pub kind: String,
    /// Header holding the actor…
    #[serde(default)]
    pub actor_header: Option<String>,
    /// …or a JSON pointer into the body, e.g. `/visitor`.
    #[serde(default)]
    pub actor_pointer: Option<String>,
    /// Optional header or JSON pointer for the event id (generated otherwise).
    #[serde(default)]
    pub id_header: Option<String>,
    #[serde(default)]
    pub id_pointer: Option<String>,
    /// Optional JSON pointer for the event time (ms number or RFC 3339 string; now otherwise).
    #[serde(default)]
    pub time_pointer: Option<String>,
    /// The tenant of the rule's events: a name, or a template like `kind` (`{2}`: the second
    /// token of the subject); the default tenant (or the `Hub-Tenant` header's) otherwise.
    #[serde(default)]
    pub tenant: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats: NatsConfig::default(),
            http: HttpConfig::default(),
            data_dir: PathBuf::from("data"),
            plugins: PluginsConfig::default(),
            engine: EngineConfig::default(),
            limits: PluginLimits::default(),
            ingest: Vec::new(),
            admin_token: None,
            policies: crate::arbiter::Policies::default(),
            channels: BTreeMap::new(),
            push: PushConfig::default(),
            actions: ActionsConfig::default(),
            input: InputConfig::default(),
            dead_letters: DeadLettersConfig::default(),
            cluster: ClusterConfig::default(),
            tenants: BTreeMap::new(),
        }
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            mode: InputMode::Durable,
            stream: "HUB_INPUT".into(),
            consumer: "hub".into(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 << 30,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 50_000,
            batch: 1000,
            tenant_window: 8,
            latency_guard: 1.25,
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            subscription_capacity: 1 << 18,
            outbound_capacity: 1 << 16,
            events_subject: "events".into(),
            profiles_subject: "profiles".into(),
            tenants_subject: "tenant".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            shards: 0,
            batch_size: 256,
            queue_capacity: 8192,
            commit_interval_ms: 50,
            hop_limit: 8,
            cache_entries: 1_000_000,
        }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout_ms: 100,
            call_wall_timeout_ms: 1000,
            memory_bytes: 64 << 20,
            epoch_tick_ms: 1,
            max_module_bytes: 32 << 20,
            max_output_bytes: (1 << 20) - 4096,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            url: String::new(),
            timeout: Duration::from_secs(5),
            retries: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            concurrency: 8,
            queue: 10_000,
            content_type: "application/json".into(),
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            connection_queue: 256,
            queue: 65_536,
            secret: None,
        }
    }
}

impl Default for ActionsConfig {
    fn default() -> Self {
        ActionsConfig {
            stream: "HUB_ACTIONS".into(),
            dedup_window: Duration::from_secs(600),
            max_age: Duration::from_secs(7 * 24 * 3600),
            keep_events: false,
        }
    }
}

impl EngineConfig {
    /// The number of shard threads to run.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

impl Config {
    /// Defaults, then the TOML file (if any), then `HUB_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        Self::load_over(Config::default(), file)
    }

    /// Like [`Config::load`], starting from `base` instead of the defaults.
    pub fn load_over(base: Config, file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(base));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment.merge(env_overrides()).extract().map_err(Box::new)
    }

    /// The local default of `hub up`: the example clickstream collector's subject is mapped, and
    /// the example contact policies apply.
    pub fn local_default() -> Config {
        Config {
            policies: crate::arbiter::Policies::example(),
            ingest: vec![IngestRule {
                subject: "web.*".into(),
                kind: "web.{2}".into(),
                actor_header: None,
                actor_pointer: Some("/visitor".into()),
                id_header: None,
                id_pointer: Some("/event_id".into()),
                time_pointer: Some("/ts".into()),
                tenant: None,
            }],
            ..Config::default()
        }
    }
}

/// Durations as text (`"90s"`, `"1h 30m"`), as admins write them.
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\" or \"24h\": {e}")))
    }
}

/// `HUB_*` variables that address this config (sections joined by `__`). Other `HUB_` variables
/// (set by tools, or for other programs) are not ours to refuse.
fn env_overrides() -> Env {
    const SECTIONS: [&str; 13] = [
        "cluster__",
        "tenants__",
        "dead_letters__",
        "nats__",
        "http__",
        "plugins__",
        "engine__",
        "limits__",
        "policies__",
        "channels__",
        "push__",
        "actions__",
        "input__",
    ];
    Env::prefixed("HUB_")
        .filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            key == "data_dir" || key == "admin_token" || SECTIONS.iter().any(|s| key.starts_with(s))
        })
        .split("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's signature")]
    fn file_and_env_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            "data_dir = \"/tmp/x\"\n[engine]\nshards = 3\n[plugins.config.cart-abandonment]\nwindow = \"5m\"\n",
        )
        .expect("write");
        figment::Jail::expect_with(|jail| {
            jail.set_env("HUB_NATS__URL", "nats://10.0.0.1:4222");
            jail.set_env("HUB_SOMETHING_ELSE", "not ours");
            let config = Config::load(Some(&file)).expect("load");
            assert_eq!(config.engine.shards, 3);
            assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
            assert_eq!(config.plugins.config["cart-abandonment"]["window"], "5m");
            assert_eq!(config.engine.commit_interval_ms, 50);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's signature")]
    fn tenants_are_declared_by_environment_variables_as_documented() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HUB_TENANTS__ACME__TOKEN", "acme-secret");
            jail.set_env("HUB_TENANTS__GLOBEX__SHARE", "3");
            let config = Config::load(None).expect("load");
            assert_eq!(config.tenants["acme"].token.as_deref(), Some("acme-secret"));
            assert_eq!(config.tenants["acme"].share, 1, "the default share");
            assert_eq!(config.tenants["globex"].share, 3);
            Ok(())
        });
    }

    #[test]
    fn channels_and_policies_from_toml() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hub.toml");
        std::fs::write(
            &file,
            r#"
            [channels.crm]
            sink = "webhook"
            url = "http://crm.local/hooks/{target}"
            retries = 2
            [channels.sms]
            sink = "nats"
            [policies]
            conflict_window = "10s"
            [policies.categories.offer]
            priority = 1
            limit = { count = 2, window = "1h" }
            "#,
        )
        .expect("write");
        let config = Config::load(Some(&file)).expect("load");
        match &config.channels["crm"] {
            ChannelConfig::Webhook(w) => {
                assert_eq!(w.retries, 2);
                assert_eq!(w.timeout, Duration::from_secs(5), "defaults fill the rest");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.channels["sms"], ChannelConfig::Nats);
        assert_eq!(config.policies.conflict_window, Duration::from_secs(10));
        assert_eq!(config.policies.categories["offer"].priority, 1);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("hub.toml");
        std::fs::write(&file, "[engine]\nshardz = 3\n").expect("write");
        let err = Config::load(Some(&file)).expect_err("refused");
        assert!(err.to_string().contains("shardz"), "{err}");
    }
}
