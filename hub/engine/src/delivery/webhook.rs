//! The webhook sink: an HTTP POST per delivery, with a timeout per attempt, retries with
//! exponential back-off, at most `concurrency` requests in flight to the target, and a dead
//! letter (`hub.dlq.webhook_failed`, or `webhook_rejected` for a 4xx answer that retrying cannot
//! fix) once it gives up.
//!
//! Every attempt carries the same `Idempotency-Key` (the delivery's deterministic id), so a
//! receiver that saw a request whose answer was lost can recognise the retry.

use super::Delivery;
use crate::config::WebhookConfig;
use crate::dead_letter::Reason;
use crate::egress::Egress;
use crate::metrics as m;
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// The queue in front of one webhook target.
pub struct Webhook {
    queue: mpsc::Sender<Delivery>,
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try: a timeout, a connection error, 408, 429 or a 5xx.
    Retry(String),
    /// Not worth another try: any other 4xx.
    Rejected(String),
}

impl Webhook {
    /// Start the target's task on the current tokio runtime.
    pub fn start(channel: &str, config: WebhookConfig, client: reqwest::Client, egress: Egress) -> Webhook {
        let (queue, deliveries) = mpsc::channel(config.queue.max(1));
        tokio::spawn(run(channel.to_owned(), config, client, egress, deliveries));
        Webhook { queue }
    }

    /// Queue a delivery without waiting; gives it back when the queue is full.
    pub fn offer(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        self.queue.try_send(delivery).map_err(|e| match e {
            mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => Box::new(d),
        })
    }
}

async fn run(
    channel: String,
    config: WebhookConfig,
    client: reqwest::Client,
    egress: Egress,
    mut deliveries: mpsc::Receiver<Delivery>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let config = Arc::new(config);
    while let Some(delivery) = deliveries.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (config, client, egress, channel) = (config.clone(), client.clone(), egress.clone(), channel.clone());
        tokio::spawn(async move {
            deliver(&channel, &config, &client, &egress, &delivery).await;
            drop(slot);
        });
    }
}

/// Try until delivered, rejected or out of retries; dead-letter a failure.
async fn deliver(channel: &str, config: &WebhookConfig, client: &reqwest::Client, egress: &Egress, d: &Delivery) {
    let url = config.url.replace(
        "{target}",
        &percent_encoding::utf8_percent_encode(&d.target, percent_encoding::NON_ALPHANUMERIC).to_string(),
    );
    let mut backoff = config.backoff;
    for attempt in 0..=config.retries {
        if attempt > 0 {
            metrics::counter!(m::WEBHOOK_RETRIES, "channel" => channel.to_owned()).increment(1);
            tokio::time::sleep(backoff).await;
            backoff = next_backoff(backoff, config.max_backoff);
        }
        let outcome = post(config, client, &url, d).await;
        let (reason, detail) = match outcome {
            Attempt::Delivered => {
                metrics::counter!(m::WEBHOOK_DELIVERED, "channel" => channel.to_owned()).increment(1);
                return;
            }
            Attempt::Retry(why) if attempt < config.retries => {
                tracing::debug!(channel, url, attempt, error = why, "webhook attempt failed; retrying");
                continue;
            }
            Attempt::Retry(why) => (
                Reason::WebhookFailed,
                format!("POST {url} failed after {} attempts: {why}", attempt + 1),
            ),
            Attempt::Rejected(why) => (Reason::WebhookRejected, format!("POST {url} was rejected: {why}")),
        };
        tracing::warn!(channel, delivery = d.id, detail, "webhook delivery dead-lettered");
        egress.send(d.dead_letter(reason, &detail)).await;
        return;
    }
}

async fn post(config: &WebhookConfig, client: &reqwest::Client, url: &str, d: &Delivery) -> Attempt {
    let (tenant, actor) = crate::tenant::split(&d.actor);
    let mut request = client
        .post(url)
        .timeout(config.timeout)
        .header(reqwest::header::CONTENT_TYPE, &config.content_type)
        .header("Idempotency-Key", &d.id)
        .header(crate::egress::headers::ACTOR, actor)
        .header(crate::egress::headers::TARGET, &d.target);
    if let Some(tenant) = tenant {
        request = request.header(crate::tenant::HEADER, tenant);
    }
    let request = request.body(d.body.clone());
    match request.send().await {
        Ok(answer) if answer.status().is_success() => Attempt::Delivered,
        Ok(answer) => {
            let status = answer.status();
            let why = format!("answered {status}");
            if status.is_server_error()
                || status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
            {
                Attempt::Retry(why)
            } else {
                Attempt::Rejected(why)
            }
        }
        Err(e) if e.is_timeout() => Attempt::Retry(format!("no answer within {:?}", config.timeout)),
        Err(e) => Attempt::Retry(error_chain(&e)),
    }
}

/// reqwest's errors say little at the top ("error sending request"); the cause says why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Exponential back-off: double the wait, up to the cap.
fn next_backoff(current: Duration, max: Duration) -> Duration {
    current.saturating_mul(2).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        let mut wait = Duration::from_millis(200);
        let mut waits = vec![wait.as_millis()];
        for _ in 0..4 {
            wait = next_backoff(wait, Duration::from_secs(1));
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
    }
}
