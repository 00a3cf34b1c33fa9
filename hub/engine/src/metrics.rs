//! Prometheus metrics: names in one place, one process-wide recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const EVENTS_IN: &str = "hub_events_in_total";
pub const EVENTS_EMITTED: &str = "hub_events_emitted_total";
pub const ACTIONS_OUT: &str = "hub_actions_total";
pub const DELIVERIES_OUT: &str = "hub_deliveries_total";
pub const DEAD_LETTERS: &str = "hub_dead_letters_total";
pub const PLUGIN_CALLS: &str = "hub_plugin_calls_total";
pub const PLUGIN_ERRORS: &str = "hub_plugin_errors_total";
pub const PLUGIN_CALL_SECONDS: &str = "hub_plugin_call_seconds";
pub const PLUGIN_QUARANTINES: &str = "hub_plugin_quarantines_total";
pub const EVENT_TO_ACTION_SECONDS: &str = "hub_event_to_action_seconds";
pub const SHARD_QUEUE_DEPTH: &str = "hub_shard_queue_depth";
pub const TIMERS_PENDING: &str = "hub_timers_pending";
pub const TIMERS_FIRED: &str = "hub_timers_fired_total";
pub const STATE_COMMITS: &str = "hub_state_commit_seconds";
pub const STATE_COMMIT_ERRORS: &str = "hub_state_commit_errors_total";
/// Durable mode: how long one sled flush (to disk, fsync included) took on the committer thread.
pub const STATE_FLUSHES: &str = "hub_state_flush_seconds";
/// Durable mode: how long NATS took to confirm the shards' outputs before a commit.
pub const OUTPUT_CONFIRMS: &str = "hub_output_confirm_seconds";
pub const PUBLISH_ERRORS: &str = "hub_publish_errors_total";
pub const SLOW_CONSUMER: &str = "hub_nats_slow_consumer_total";
pub const ACTION_DECISIONS: &str = "hub_action_decisions_total";
pub const SINK_OVERFLOW: &str = "hub_sink_overflow_total";
pub const WEBHOOK_DELIVERED: &str = "hub_webhook_delivered_total";
pub const WEBHOOK_RETRIES: &str = "hub_webhook_retries_total";
pub const PUSH_CONNECTIONS: &str = "hub_push_connections";
pub const PUSH_OUTCOMES: &str = "hub_push_total";
pub const UNREADABLE_RECORDS: &str = "hub_unreadable_records_total";
/// Stream inputs delivered again that were applied already (skipped by their checkpoint).
pub const INPUTS_REPLAYED: &str = "hub_inputs_replayed_total";
/// Acknowledgements sent to the input stream (each covers every earlier input).
pub const INPUTS_ACKED: &str = "hub_inputs_acked_total";
/// Inputs received from the stream and not yet acknowledged.
pub const INPUTS_UNACKED: &str = "hub_inputs_unacknowledged";
/// Inputs in the stream the hub's consumer has not received yet (its lag).
pub const CONSUMER_PENDING: &str = "hub_input_consumer_pending";
/// Partition leases this instance took, handed back or lost (`event`).
pub const CLUSTER_LEASES: &str = "hub_cluster_leases_total";
/// How long restoring a partition's state from the changelog took, when this instance took it.
pub const CLUSTER_RESTORE_SECONDS: &str = "hub_cluster_restore_seconds";
/// Partitions this instance processes.
pub const CLUSTER_OWNED: &str = "hub_cluster_partitions_owned";
/// Live instances in the cluster, as this one sees it.
pub const CLUSTER_MEMBERS: &str = "hub_cluster_members";
/// Inputs forwarded from the input stream to their partition (by the ingest lease's holder).
pub const INPUTS_PARTITIONED: &str = "hub_inputs_partitioned_total";
/// Inputs a producer published to another partition than their actor's, moved to their own.
pub const INPUTS_MISROUTED: &str = "hub_inputs_misrouted_total";
/// Stream inputs or timers of a partition this instance no longer owns, left to its owner.
pub const NOT_OWNED: &str = "hub_cluster_not_owned_total";
/// Times the NATS connection was lost.
pub const NATS_DISCONNECTS: &str = "hub_nats_disconnects_total";
/// Time spent without a NATS connection (in core mode, inputs published then are lost).
pub const NATS_DISCONNECTED_MS: &str = "hub_nats_disconnected_milliseconds_total";
/// Commits made without NATS confirming the outputs before them (see `OUTPUT_CONFIRM_PATIENCE`).
pub const OUTPUTS_UNCONFIRMED: &str = "hub_outputs_unconfirmed_total";
/// Inputs that became events, per `tenant` (`default` for those that name none).
pub const TENANT_EVENTS_IN: &str = "hub_tenant_events_in_total";
/// Actions published, per `tenant`.
pub const TENANT_ACTIONS: &str = "hub_tenant_actions_total";
/// Dead letters of a known actor, per `tenant`.
pub const TENANT_DEAD_LETTERS: &str = "hub_tenant_dead_letters_total";
/// Inputs in a tenant's own stream not yet delivered to the hub, per `tenant`: its backlog.
pub const TENANT_BACKLOG: &str = "hub_tenant_backlog";
/// Requests and plugin calls refused for a tenant's quota, per `tenant` and `quota`.
pub const TENANT_QUOTA_REFUSALS: &str = "hub_tenant_quota_refusals_total";
/// Bytes of stored state of a tenant with a quota on them, per `tenant` (see `quota`).
pub const TENANT_STATE_BYTES: &str = "hub_tenant_state_bytes";
/// Pending timers of a tenant with a quota on them, per `tenant`.
pub const TENANT_TIMERS: &str = "hub_tenant_timers_pending";
/// The latency guard's read limit on a stream with a backlog (inputs/s; 0: none), per `stream`
/// (and `tenant`, for a tenant's own stream).
pub const STREAM_READ_LIMIT: &str = "hub_stream_read_limit";
/// What the latency guard steers by, over its last ticks: the 99th percentile of the lag
/// (stored in a stream → outputs handed to NATS) of the inputs of streams read without a
/// backlog, plus that of a round trip through nats-server while a stream is limited.
pub const INPUT_LAG_SECONDS: &str = "hub_input_lag_seconds";
/// The same while streams with a backlog were held back: what the guard keeps it near.
pub const INPUT_LAG_BASELINE_SECONDS: &str = "hub_input_lag_baseline_seconds";
/// The 99th percentile of a message's round trip from the hub through nats-server, timed while
/// the latency guard limits a stream (0 otherwise).
pub const NATS_ROUND_TRIP_SECONDS: &str = "hub_nats_round_trip_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static UPKEEP: std::sync::Once = std::sync::Once::new();

/// Install the recorder once per process and return the handle that renders `/metrics`.
///
/// The recorder keeps every histogram sample until upkeep folds them into the buckets, so an
/// OS thread does that every few seconds: without it, memory grows with every plugin call
/// whenever nothing scrapes `/metrics`.
pub fn install() -> PrometheusHandle {
    let handle = recorder();
    UPKEEP.call_once(|| {
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("hub-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "metrics upkeep thread not started");
        }
    });
    handle
}

fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .and_then(|b| b.install_recorder());
            match recorder {
                Ok(handle) => {
                    describe();
                    handle
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics stays empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(EVENTS_IN, "Events accepted from NATS");
    describe_counter!(NATS_DISCONNECTS, "Times the NATS connection was lost");
    describe_counter!(
        NATS_DISCONNECTED_MS,
        "Milliseconds without a NATS connection (core mode: inputs published then are lost)"
    );
    describe_counter!(EVENTS_EMITTED, "Events emitted by plugins");
    describe_counter!(ACTIONS_OUT, "Actions that passed the arbiter");
    describe_counter!(
        ACTION_DECISIONS,
        "Arbiter decisions by category, decision (delivered, suppressed) and reason"
    );
    describe_counter!(DELIVERIES_OUT, "Deliveries rendered by delivery plugins, by channel");
    describe_counter!(
        SINK_OVERFLOW,
        "Deliveries dead-lettered because a sink's queue was full"
    );
    describe_counter!(WEBHOOK_DELIVERED, "Webhook deliveries answered with 2xx");
    describe_counter!(WEBHOOK_RETRIES, "Webhook attempts after a failed one");
    describe_gauge!(PUSH_CONNECTIONS, "Devices connected on /push");
    describe_counter!(
        PUSH_OUTCOMES,
        "Push deliveries: live (to connected devices), offline (to hub.deliveries.push), device_behind"
    );
    describe_counter!(DEAD_LETTERS, "Messages sent to hub.dlq.<reason>");
    describe_counter!(PLUGIN_CALLS, "Plugin calls");
    describe_counter!(PLUGIN_ERRORS, "Plugin calls that trapped or returned an error");
    describe_histogram!(PLUGIN_CALL_SECONDS, "Duration of plugin calls");
    describe_counter!(
        PLUGIN_QUARANTINES,
        "Times a plugin was quarantined after repeated traps"
    );
    describe_histogram!(
        EVENT_TO_ACTION_SECONDS,
        "From receiving an input to publishing its action"
    );
    describe_gauge!(SHARD_QUEUE_DEPTH, "Events waiting in front of a shard");
    describe_gauge!(TIMERS_PENDING, "Durable timers waiting on a shard");
    describe_counter!(TIMERS_FIRED, "Durable timers that fired");
    describe_histogram!(
        STATE_COMMITS,
        "Time to apply one shard commit to sled (committer thread)"
    );
    describe_counter!(STATE_COMMIT_ERRORS, "Failed attempts to apply a state batch to sled");
    describe_histogram!(
        STATE_FLUSHES,
        "Durable mode: time to flush sled to disk after a group of commits (committer thread)"
    );
    describe_histogram!(
        OUTPUT_CONFIRMS,
        "Durable mode: time for NATS to confirm the shards' outputs before a group of commits"
    );
    describe_counter!(PUBLISH_ERRORS, "NATS publish failures");
    describe_counter!(
        UNREADABLE_RECORDS,
        "Stored records that could not be read, kept aside in the `unreadable` tree, by tree"
    );
    describe_counter!(
        SLOW_CONSUMER,
        "NATS slow-consumer events (messages dropped by the client)"
    );
}
