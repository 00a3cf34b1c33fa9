//! The hub's fixed limits: every bound that is not a setting, with why it is what it is. The
//! settings (timeouts, queue sizes, the sandbox's budgets) are in the config table
//! (`config.rs`), with their defaults; between the two, every limit of the hub is in one of two
//! places.

use std::time::Duration;

// What every input meets, whatever path it came by (an envelope on `events.>`, an ingest rule,
// a plugin's emit, `profiles.<actor>`, the API); checked by `event::Event::check` and
// `event::check_actor`. Actor ids longer than the limit would otherwise be cut by the storage
// key (a u16 length) and merge actors.

/// Longest actor id, in bytes.
pub const MAX_ACTOR_BYTES: usize = 1024;
/// Longest event id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;
/// Longest event kind, in bytes.
pub const MAX_KIND_BYTES: usize = 256;
/// Earliest event time: the Unix epoch.
pub const MIN_TIME_MS: i64 = 0;
/// Latest event time: 9999-12-31T23:59:59.999Z (the last instant RFC 3339 can write).
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// Largest stored profile (its MessagePack encoding).
pub const MAX_PROFILE_BYTES: usize = 64 << 10;
/// Profiles each shard keeps copies of for its plugins (bytes, about): 64 MiB holds ~300k
/// profiles of 150 bytes; a shard whose actors' profiles exceed it reads the rest from sled.
pub const PROFILE_CACHE_BYTES: usize = 64 << 20;

/// Room kept beside the largest output for a message's headers (dead-letter reasons, ids), when
/// `limits.max_output_bytes` is lowered to the NATS server's `max_payload`.
pub const HEADER_ROOM_BYTES: usize = 4096;

// Supervision of plugins on a shard.

/// Consecutive traps after which a plugin is quarantined on a shard.
pub const TRAPS_BEFORE_QUARANTINE: u32 = 5;
/// Longest quarantine; back-off doubles from one second up to this.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(300);

// The shard's own bookkeeping.

/// Kinds remembered in a shard's subscription cache before it is reset (a producer inventing
/// kinds cannot grow it without bound).
pub const KIND_CACHE_LIMIT: usize = 4096;
/// One plugin call in this many records its duration in the latency histogram: the
/// distribution stays representative, and the per-record cost leaves the hot path.
pub const LATENCY_SAMPLE_EVERY: u32 = 8;
/// A shard turn that publishes more than this (timers coming due in bulk after a restart)
/// hands its messages to the NATS client in parts.
pub const MAX_PENDING_PUBLISHES: usize = 1024;

// Contact policies and the action ledger.

/// Highest `count` a limit may have: the ledger keeps this many delivered actions per actor
/// within the longest window, which is what lets it enforce any valid limit exactly.
pub const MAX_LIMIT: u32 = 100;
/// Decisions every actor's ledger keeps regardless of age, for people to read.
pub const LEDGER_RECENT: usize = 50;
/// Delivered actions a ledger keeps within the policies' horizon: enough for any valid limit.
pub const LEDGER_DELIVERED: usize = MAX_LIMIT as usize + 28;
/// Longest hold: an action held longer is not "real time" any more.
pub const MAX_HOLD: Duration = Duration::from_secs(3600);
/// Longest window any rule may have (`"100years"`, as humantime counts a year: 365.25 days).
/// The arbiter compares windows in i64 milliseconds; a longer one used to wrap negative there
/// and switch its rule off, so validation refuses it instead.
pub const MAX_WINDOW: Duration = Duration::from_secs(100 * 31_557_600);

// State.

/// Timer-log records are cut at about this size, so sled's leaves stay well below the size at
/// which it stores nodes as separate blob files.
pub const TIMER_RECORD_BYTES: usize = 4096;
/// A shard snapshots its timers once its changes since the last snapshot exceed both this and
/// twice its live timers: the log then holds at most about three times the live timers.
pub const MIN_TIMER_CHANGES_BEFORE_SNAPSHOT: usize = 50_000;
/// How long a starting hub waits for sled's file lock, which the last handle releases from
/// sled's flusher thread a moment after it is dropped.
pub const SLED_LOCK_WAIT: Duration = Duration::from_secs(5);

/// How often the committer flushes for inputs handled without a shard (dead letters, profile
/// updates) when no shard commits, so they are acknowledged too.
pub const IDLE_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long the committer waits for NATS to confirm the shards' outputs before a commit (in
/// durable mode) before it commits anyway, logged and counted: state never waits forever on a
/// server that is gone, but a crash in that moment could lose those outputs.
pub const OUTPUT_CONFIRM_PATIENCE: Duration = Duration::from_secs(30);
/// Reconnection attempts to NATS wait this much longer each (up to 5×): the server is usually
/// back within seconds, and every second away is input a core-mode hub misses.
pub const RECONNECT_DELAY_STEP: Duration = Duration::from_millis(50);
/// How long one confirmation round trip may take.
pub const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(2);
/// Actors are hashed into this many partitions. A partition is the unit of input checkpoints
/// (and of ownership when several hubs share the work); shard = partition mod shards, so any
/// shard count divides the partitions evenly enough.
pub const PARTITIONS: u16 = 4096;

// Admin.

/// How long an admin call waits for every shard to run a change before it answers anyway.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(5);

// Start and stop.

/// How long a new subscription waits for the server to confirm it (a round trip on the same
/// connection) before the hub reports the subscription failed.
pub const SUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping ingress keeps routing what its subscriptions still hold; it only runs
/// out when the connection is down.
pub const INGRESS_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping hub lets queued and cross-shard events settle before it stops the shards.
pub const SHARD_SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a NATS flush may take before the hub goes on without it (and says so).
pub const NATS_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping hub waits for open HTTP connections to finish.
pub const HTTP_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
