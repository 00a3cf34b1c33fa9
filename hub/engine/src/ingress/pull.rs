//! Reading a pull consumer one request at a time, each for no more inputs than the reader has
//! room for.
//!
//! async-nats's `stream()` keeps requests going by counting the messages it asked for. With
//! small batches that count drifted from the server's while the stream grew: no request waited
//! on the server, the client waited for messages it believed were coming, and reading stopped
//! until the client started over, 5 s past a request's expiry (seen with batches of 16 and 64 on
//! nats-server 2.9). Its one-shot `batch()` does not drift, but when its own timer fires it
//! drops what its subscription holds: inputs already delivered, which the `AckPolicy::All`
//! acknowledgement of a later input would then cover, and which would be lost.
//!
//! So a task per consumer keeps one inbox subscribed for as long as it reads, and sends a
//! request only once the previous one ended (all its inputs came, the server said it expired,
//! or its expiry passed), for at most the room left in a buffer of `batch` inputs. Everything
//! the server delivers fits in the buffer, so the task never stops reading its subscription,
//! and while the reader leaves a stream aside (at its window, its rate, the guard's limit) the
//! rest of that stream's inputs stay in the stream, not in the hub.
//!
//! A request's end is awaited only [`END_WAIT`] past its expiry: nats-server 2.9 at times
//! forgets an expired request that had delivered part of its inputs without saying so (no 408;
//! seen on an idle tenant's stream that began to receive 1000/s), and a second's wait for that
//! end held the stream's next inputs back for a second. A request sent before the old one's end
//! came may overlap it; what both deliver arrives on the same subscription, and nothing is
//! dropped (a late end then ends the new request early, which costs one more request).

use async_nats::jetstream::{self, consumer};
use async_nats::{StatusCode, Subject};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How long a request waits on the server for inputs: an idle consumer costs one request per
/// expiry.
const EXPIRES: Duration = Duration::from_secs(1);
/// How long past its expiry a request's end is awaited (a round trip to the server, with room
/// for a busy machine): in the rare case that it never comes, inputs published meanwhile wait
/// this long at most.
const END_WAIT: Duration = Duration::from_millis(5);
/// Back-off after a refused or failed request, doubling up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot send a pull request: {0}")]
    Request(#[from] consumer::pull::BatchRequestError),
    #[error("the server ended a pull request: {status} {description}")]
    Ended { status: StatusCode, description: String },
}

/// One consumer's inputs. Errors are reported as they happen and reading goes on (after a
/// back-off); the stream ends with `None` only if its task stopped, and the reader pulls again.
pub type Pull = Pin<Box<dyn Stream<Item = Option<Result<jetstream::Message, PullError>>> + Send>>;

/// Read `consumer` with requests of at most `batch` inputs (see the module).
pub async fn pull(
    client: &async_nats::Client,
    consumer: &consumer::PullConsumer,
    batch: usize,
) -> Result<Pull, async_nats::SubscribeError> {
    let batch = batch.max(1);
    let inbox = Subject::from(client.new_inbox());
    let subscription = client.subscribe(inbox.clone()).await?;
    let (tx, rx) = mpsc::channel(batch);
    let puller = Puller {
        context: jetstream::new(client.clone()),
        consumer: consumer.clone(),
        inbox,
        subscription,
        tx,
        batch,
    };
    tokio::spawn(puller.run());
    Ok(Box::pin(
        ReceiverStream::new(rx)
            .map(Some)
            .chain(futures::stream::once(async { None })),
    ))
}

struct Puller {
    context: jetstream::Context,
    consumer: consumer::PullConsumer,
    inbox: Subject,
    subscription: async_nats::Subscriber,
    tx: mpsc::Sender<Result<jetstream::Message, PullError>>,
    batch: usize,
}

/// How a request ended.
enum Ended {
    /// All its inputs came, or it expired: request again.
    Done,
    /// The server refused or ended it: request again after a back-off.
    Refused,
    /// The reader no longer reads this consumer.
    Closed,
}

impl Puller {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            // Half a buffer's room at least, so a busy reader is not sent a request per input.
            let Ok(room) = self.tx.reserve_many(self.batch.div_ceil(2)).await else {
                return;
            };
            drop(room);
            let wanted = self.tx.capacity();
            let request = consumer::pull::BatchConfig {
                batch: wanted,
                expires: Some(EXPIRES),
                ..Default::default()
            };
            let ended = match self.consumer.request_batch(request, self.inbox.clone()).await {
                Ok(()) => self.receive(wanted).await,
                Err(e) => match self.tx.send(Err(e.into())).await {
                    Ok(()) => Ended::Refused,
                    Err(_) => Ended::Closed,
                },
            };
            match ended {
                Ended::Done => backoff = BACKOFF_MIN,
                Ended::Refused => {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Ended::Closed => return,
            }
        }
    }

    /// Forward the inputs of a request for `wanted` until it ends.
    async fn receive(&mut self, mut wanted: usize) -> Ended {
        let deadline = tokio::time::sleep(EXPIRES + END_WAIT);
        tokio::pin!(deadline);
        while wanted > 0 {
            let message = tokio::select! {
                message = self.subscription.next() => match message {
                    Some(message) => message,
                    None => return Ended::Closed,
                },
                _ = &mut deadline => {
                    tracing::debug!(left = wanted, "a pull request expired without its end");
                    return Ended::Done;
                }
                _ = self.tx.closed() => return Ended::Closed,
            };
            let item = match message.status {
                None | Some(StatusCode::OK) => {
                    wanted -= 1;
                    Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    })
                }
                // The request expired, or (with no wait) found nothing.
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => return Ended::Done,
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(status) => Err(PullError::Ended {
                    status,
                    description: message.description.unwrap_or_default(),
                }),
            };
            let refused = item.is_err();
            // Never waits in practice: the request asked for no more than the room left. (A
            // lost request's inputs arriving late may wait here; they wait in the subscription
            // meanwhile.)
            if self.tx.send(item).await.is_err() {
                return Ended::Closed;
            }
            if refused {
                return Ended::Refused;
            }
        }
        Ended::Done
    }
}
