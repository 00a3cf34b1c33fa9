//! Reading a pull consumer one request at a time, each for at most a batch of inputs.
//!
//! async-nats's `stream()` keeps requests going by counting the messages it asked for. With
//! small batches that count drifted from the server's while the stream grew: no request waited
//! on the server, the client waited for messages it believed were coming, and reading stopped
//! until the client started over, 5 s past a request's expiry (seen with batches of 16 and 64 on
//! nats-server 2.9). Its one-shot `batch()` does not drift, but when its own timer fires it
//! drops what its subscription holds: inputs already delivered, which the `AckPolicy::All`
//! acknowledgement of a later input would then cover, and which would be lost.
//!
//! So each consumer keeps one inbox subscribed for as long as it is read, and a request is sent
//! only once the previous one ended (all its inputs came, the server said it expired, or its
//! expiry passed), for at most `batch` inputs. At most one batch is ever on its way or waiting in
//! the subscription, and while the reader leaves a stream aside (at its window, its rate, the
//! guard's limit) the rest of that stream's inputs stay in the stream, not in the hub. The reader
//! polls the subscription itself, with no task in between to hand each input on.
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
use tokio::time::{Instant, Sleep};

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
/// back-off); the stream ends with `None` only if its subscription closed, and the reader pulls
/// again.
pub type Pull = Pin<Box<dyn Stream<Item = Option<Result<jetstream::Message, PullError>>> + Send>>;

/// Read `consumer` with requests of at most `batch` inputs (see the module).
pub async fn pull(
    client: &async_nats::Client,
    consumer: &consumer::PullConsumer,
    batch: usize,
) -> Result<Pull, async_nats::SubscribeError> {
    let inbox = Subject::from(client.new_inbox());
    let subscription = client.subscribe(inbox.clone()).await?;
    let puller = Puller {
        context: jetstream::new(client.clone()),
        consumer: consumer.clone(),
        inbox,
        subscription,
        batch: batch.max(1),
        wanted: 0,
        deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
        retry_at: None,
        backoff: BACKOFF_MIN,
    };
    let inputs = futures::stream::unfold(puller, |mut puller| async move {
        let item = puller.next().await?;
        Some((item, puller))
    });
    Ok(Box::pin(inputs.map(Some).chain(futures::stream::once(async { None }))))
}

struct Puller {
    context: jetstream::Context,
    consumer: consumer::PullConsumer,
    inbox: Subject,
    subscription: async_nats::Subscriber,
    batch: usize,
    /// Inputs the current request may still deliver; 0 once it ended.
    wanted: usize,
    /// When the current request is given up on (its expiry and [`END_WAIT`]).
    deadline: Pin<Box<Sleep>>,
    /// No request before this, after a refused one.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Puller {
    /// The next input or error; `None` once the subscription closed.
    async fn next(&mut self) -> Option<Result<jetstream::Message, PullError>> {
        loop {
            if self.wanted == 0
                && let Err(e) = self.request().await
            {
                return Some(Err(e));
            }
            let message = tokio::select! {
                // What already came is read before the request is given up on, so that inputs
                // that waited in the subscription (a paused stream) count against the request
                // that brought them.
                biased;
                message = self.subscription.next() => message?,
                _ = &mut self.deadline => {
                    tracing::debug!(left = self.wanted, "a pull request expired without its end");
                    self.ended();
                    continue;
                }
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    self.wanted = self.wanted.saturating_sub(1);
                    self.backoff = BACKOFF_MIN;
                    return Some(Ok(jetstream::Message {
                        message,
                        context: self.context.clone(),
                    }));
                }
                // The request expired, or (with no wait) found nothing.
                Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => self.ended(),
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                Some(status) => {
                    self.refused();
                    return Some(Err(PullError::Ended {
                        status,
                        description: message.description.unwrap_or_default(),
                    }));
                }
            }
        }
    }

    /// Ask for the next batch, once the back-off after a refused request has passed.
    async fn request(&mut self) -> Result<(), PullError> {
        if let Some(at) = self.retry_at.take() {
            tokio::time::sleep_until(at).await;
        }
        let request = consumer::pull::BatchConfig {
            batch: self.batch,
            expires: Some(EXPIRES),
            ..Default::default()
        };
        if let Err(e) = self.consumer.request_batch(request, self.inbox.clone()).await {
            self.refused();
            return Err(e.into());
        }
        self.wanted = self.batch;
        self.deadline.as_mut().reset(Instant::now() + EXPIRES + END_WAIT);
        Ok(())
    }

    /// The request ended without an error (expired, or found nothing): the next one is sent at
    /// once, and a later refusal's back-off starts over.
    fn ended(&mut self) {
        self.wanted = 0;
        self.backoff = BACKOFF_MIN;
    }

    /// The request ended in an error: the next one waits a back-off, doubling each time.
    fn refused(&mut self) {
        self.wanted = 0;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}
