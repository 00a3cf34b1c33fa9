//! The partition streams: one per partition, `<stream>_<n>` capturing `<subject>.<n>`, each read
//! by the partition's owner through one unfiltered consumer. One stream for every partition, read
//! through subject filters, makes each filtered consumer pay for the others' messages: measured
//! with JetStream alone on nats-server 2.9.10, 32 partitions cost 49.8 µs of server CPU per
//! message in one stream against 35.7 with a stream each (28.8 either way at 4 partitions), a
//! gap that grows with every partition.
//!
//! A stream created anew counts its sequences from 1 again, so a partition's checkpoints hold
//! only for the stream they were counted in: the changelog keeps, per partition, when its stream
//! was created, and a takeover that finds another time starts the partition's checkpoints over
//! (`Restored::count_in_stream`).

use crate::config::Config;
use crate::ingress::stream::{InputStream, StreamError};
use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};

#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(
        "the partition stream {stream} of an earlier version of hub (one stream for every partition) still holds {inputs} inputs not yet processed: run that version until they are (hub_consumer_pending 0), then start this one, which reads a stream per partition"
    )]
    Unprocessed { stream: String, inputs: u64 },
    #[error("cannot read or retire the earlier partition stream {stream}: {detail}")]
    Retire { stream: String, detail: String },
}

/// Every partition's stream, found or created at start, so that forwards and producers
/// publishing to a partition always find it stored.
pub struct PartitionStreams {
    streams: Vec<InputStream>,
}

impl PartitionStreams {
    pub async fn ensure(client: &async_nats::Client, config: &Config) -> Result<PartitionStreams, StreamsError> {
        let c = &config.cluster;
        retire_shared(&jetstream::new(client.clone()), &c.stream, &c.subject).await?;
        // The server sets each stream's limit aside on its disk: the configured total is shared.
        let max_bytes = match c.max_bytes {
            total if total > 0 => (total / i64::from(c.partitions.max(1))).max(1 << 20),
            none => none,
        };
        let streams = futures::stream::iter(0..c.partitions)
            .map(|partition| {
                let input = crate::config::InputConfig {
                    stream: format!("{}_{partition}", c.stream),
                    max_age: c.max_age,
                    max_bytes,
                    ..config.input.clone()
                };
                let subject = format!("{}.{partition}", c.subject);
                async move { InputStream::ensure(client, &input, vec![subject], c.dedup_window).await }
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(PartitionStreams { streams })
    }

    /// The stream of `partition` (one of the configured partitions).
    pub fn get(&self, partition: u16) -> Option<&InputStream> {
        self.streams.get(usize::from(partition))
    }

    /// When the stream of `partition` was created (ns since the epoch), as the changelog keeps it.
    pub fn created(&self, partition: u16) -> Option<&str> {
        self.get(partition).map(|s| s.created.as_str())
    }

    /// How the streams are read (the same for every partition).
    pub fn batch(&self) -> usize {
        self.streams.first().map_or(1, |s| s.config().batch)
    }
}

/// An earlier version kept every partition in one stream named `stream`, on `<subject>.*`,
/// whose subjects overlap the streams of each partition. Once every input in it is processed it
/// is deleted; before, this version does not start (its inputs would be left unread).
async fn retire_shared(js: &jetstream::Context, stream: &str, subject: &str) -> Result<(), StreamsError> {
    let fail = |detail: String| StreamsError::Retire {
        stream: stream.to_owned(),
        detail,
    };
    let mut shared = match js.get_stream(stream).await {
        Ok(shared) => shared,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(js)
                if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(());
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let info = shared.info().await.map_err(|e| fail(e.to_string()))?.clone();
    if info.config.subjects != [format!("{subject}.*")] {
        return Ok(());
    }
    let consumers: Vec<jetstream::consumer::Info> = shared
        .consumers()
        .try_collect()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let inputs = if consumers.is_empty() {
        info.state.messages
    } else {
        consumers.iter().map(|c| c.num_pending + c.num_ack_pending as u64).sum()
    };
    if inputs > 0 {
        return Err(StreamsError::Unprocessed {
            stream: stream.to_owned(),
            inputs,
        });
    }
    js.delete_stream(stream).await.map_err(|e| fail(e.to_string()))?;
    tracing::warn!(
        stream,
        "retired the earlier version's shared partition stream (every input in it was processed); each partition has a stream of its own now"
    );
    Ok(())
}
