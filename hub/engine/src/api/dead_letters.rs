//! `/api/dead-letters`: the kept dead letters (see `dead_letter::kept`), listed by reason,
//! inspected whole, and replayed into the hub once their cause is fixed. A tenant's token sees
//! and replays the letters of its own tenant only.

use super::{ApiError, ApiState, Caller, Failure};
use crate::actor::ActorRequest;
use crate::dead_letter::{KeptError, KeptLetters, Letter, LetterSummary, Replay, Stored};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Letters listed at most per call, and replayed at most per "replay all of a reason".
const MAX_LIST: usize = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Only letters of this reason (e.g. `trap`).
    reason: Option<String>,
    /// How many, newest first [default 50, at most 1000].
    limit: Option<usize>,
}

/// `GET /api/dead-letters`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LetterList {
    pub letters: Vec<LetterSummary>,
    /// Letters kept, by reason.
    pub by_reason: BTreeMap<String, u64>,
}

/// `POST …/replay`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Replayed {
    pub replayed: usize,
    /// Letters that could not be replayed, with why (they stay kept).
    pub refused: Vec<String>,
}

impl From<KeptError> for Failure {
    fn from(e: KeptError) -> Failure {
        let status = match e {
            KeptError::NotFound(_) => StatusCode::NOT_FOUND,
            KeptError::NotReplayable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure::new(status, e.to_string())
    }
}

fn kept(s: &ApiState) -> Result<&KeptLetters, Failure> {
    s.dead_letters.as_ref().ok_or_else(|| {
        Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "dead letters are not kept: the dead-letter stream could not be set up (see the hub's log)",
        )
    })
}

/// The newest dead letters (of one reason, if given), and how many are kept of each reason.
#[utoipa::path(get, path = "/api/dead-letters", tag = "dead letters", params(ListQuery),
    responses((status = 200, body = LetterList), (status = 401, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<LetterList>, Failure> {
    let kept = kept(&s)?;
    let limit = q.limit.unwrap_or(50).min(MAX_LIST);
    if caller == Caller::Admin {
        return Ok(Json(LetterList {
            letters: kept.list(q.reason.as_deref(), limit).await?,
            by_reason: kept.counts().await?,
        }));
    }
    // A tenant's own, among the newest (the counts by reason are its own too).
    let letters: Vec<LetterSummary> = kept
        .list(q.reason.as_deref(), MAX_LIST)
        .await?
        .into_iter()
        .filter(|l| caller.sees(l.tenant.as_deref()))
        .collect();
    let mut by_reason = BTreeMap::new();
    for letter in &letters {
        *by_reason.entry(letter.reason.clone()).or_default() += 1;
    }
    Ok(Json(LetterList {
        letters: letters.into_iter().take(limit).collect(),
        by_reason,
    }))
}

/// One dead letter: where it came from, why, its headers and its body.
#[utoipa::path(get, path = "/api/dead-letters/{seq}", tag = "dead letters",
    params(("seq" = u64, Path, description = "The letter's sequence in the dead-letter stream")),
    responses((status = 200, body = Object), (status = 404, body = ApiError)))]
pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(seq): Path<u64>,
) -> Result<Json<Letter>, Failure> {
    let letter = kept(&s)?.get(seq).await?;
    if !caller.sees(letter.summary.tenant.as_deref()) {
        return Err(KeptError::NotFound(seq).into());
    }
    Ok(Json(letter))
}

/// Replay one dead letter into the hub; it leaves the kept letters once replayed.
#[utoipa::path(post, path = "/api/dead-letters/{seq}/replay", tag = "dead letters",
    params(("seq" = u64, Path, description = "The letter's sequence in the dead-letter stream")),
    responses((status = 200, body = Replayed), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub async fn replay_one(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(seq): Path<u64>,
    headers: HeaderMap,
) -> Result<Json<Replayed>, Failure> {
    let kept = kept(&s)?;
    let letter = kept.stored(seq).await?;
    if !caller.sees(letter.summary().tenant.as_deref()) {
        return Err(KeptError::NotFound(seq).into());
    }
    replay(&s, &headers, kept, &letter).await?;
    Ok(Json(Replayed {
        replayed: 1,
        refused: Vec::new(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReasonQuery {
    /// The reason whose letters to replay (e.g. `trap`).
    reason: String,
}

/// Replay every kept letter of one reason (up to 1000 per call), oldest first.
#[utoipa::path(post, path = "/api/dead-letters/replay", tag = "dead letters", params(ReasonQuery),
    responses((status = 200, body = Replayed), (status = 401, body = ApiError)))]
pub async fn replay_reason(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ReasonQuery>,
    headers: HeaderMap,
) -> Result<Json<Replayed>, Failure> {
    let kept = kept(&s)?;
    let mut letters = kept.newest(Some(&q.reason), MAX_LIST).await?;
    letters.retain(|l| caller.sees(l.summary().tenant.as_deref()));
    letters.reverse();
    let mut done = Replayed {
        replayed: 0,
        refused: Vec::new(),
    };
    for letter in &letters {
        match replay(&s, &headers, kept, letter).await {
            Ok(()) => done.replayed += 1,
            Err(e @ (KeptError::NotReplayable { .. } | KeptError::NotFound(_))) => done.refused.push(e.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(done))
}

/// Send a letter where it goes (see `dead_letter::kept`), then forget it.
async fn replay(s: &ApiState, headers: &HeaderMap, kept: &KeptLetters, letter: &Stored) -> Result<(), KeptError> {
    let seq = letter.seq();
    let failed = |detail: String| KeptError::Publish { seq, detail };
    let publish = |subject: String, headers: async_nats::HeaderMap, body: bytes::Bytes| async move {
        s.nats
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(|e| failed(e.to_string()))?;
        s.nats.flush().await.map_err(|e| failed(e.to_string()))
    };
    match kept.replay_of(letter)? {
        Replay::Publish { subject, headers, body } => publish(subject, headers, body).await?,
        // The sink takes it without waiting; what it hands back (the `nats` sink's message,
        // or a new letter when its queue is full) is published here.
        Replay::Deliver(delivery) => {
            if let Some(out) = s.sinks.deliver(delivery) {
                publish(out.subject, out.headers.unwrap_or_default(), out.payload).await?;
            }
        }
        Replay::Timer {
            plugin,
            actor,
            id,
            payload,
        } => {
            // In a cluster a timer is set where its actor's partition is processed: a timer
            // set elsewhere would be left to the owner, which would never see it.
            if let Some(cluster) = &s.cluster {
                let partition = cluster.partition_of(&actor);
                if !cluster.owns(partition) {
                    return at_owner(cluster, partition, seq, headers).await;
                }
            }
            let (reply, done) = tokio::sync::oneshot::channel();
            let request = ActorRequest::Rearm {
                plugin,
                id,
                payload,
                reply,
            };
            let stopped = || failed("the shards have stopped".into());
            s.router.ask(&actor, request).await.map_err(|_| stopped())?;
            done.await.map_err(|_| stopped())?;
        }
    }
    kept.remove(seq).await
}

/// Have the instance that processes `partition` replay letter `seq` (the dead-letter stream is
/// shared), with the caller's credentials; it forgets the letter once replayed.
async fn at_owner(
    cluster: &crate::cluster::Cluster,
    partition: u16,
    seq: u64,
    headers: &HeaderMap,
) -> Result<(), KeptError> {
    let refuse = |why: String| KeptError::NotReplayable { seq, why };
    let owner = cluster.owner_of(partition).ok_or_else(|| {
        refuse(format!(
            "its timer's actor is in partition {partition}, which no instance processes at the moment; try again in a few seconds"
        ))
    })?;
    let path = format!("/api/dead-letters/{seq}/replay");
    match super::on_member(&owner.http, reqwest::Method::POST, &path, headers).await {
        Ok(answer) if answer.status().is_success() => Ok(()),
        Ok(answer) => Err(refuse(format!(
            "{} (which processes its timer's actor) answered {}: {}",
            owner.instance,
            answer.status(),
            answer.text().await.unwrap_or_default()
        ))),
        Err(e) => Err(KeptError::Publish {
            seq,
            detail: format!(
                "{} (which processes its timer's actor) cannot be reached: {e}",
                owner.instance
            ),
        }),
    }
}
