//! The endpoints that stream: an attempt's log (capped, or followed as it grows) and the
//! event log as server-sent events. Both read in bounded pieces, so a follower holds bounded
//! memory however long it stays.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keel_model::RunId;
use keel_store::{AnyStore, StatusQuery, Store};
use serde::Deserialize;

use super::{ApiContext, ApiError};
use crate::inspect::{EventFilter, event_json};

/// Bytes of log returned when `max_bytes` is not given, and the most a request may ask for.
const DEFAULT_LOG_BYTES: u64 = 1 << 20;
const MAX_LOG_BYTES: u64 = 16 << 20;
/// The largest `from`: no log Keel keeps comes near a tebibyte, and a file system refuses to
/// seek much further.
const MAX_LOG_FROM: u64 = 1 << 40;
/// The most bytes read from a log (or events from the store) at once.
const CHUNK: usize = 64 * 1024;
const EVENT_PAGE: u32 = 100;
/// How often a follower looks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);
/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEP_ALIVE_EVERY: u32 = 75;
/// Runs an event stream remembers before it forgets them all and looks them up again.
const RUNS_REMEMBERED: usize = 4096;

#[derive(Deserialize)]
pub struct LogPath {
    pipeline: String,
    run: i64,
    task: String,
    attempt: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    max_bytes: Option<u64>,
    #[serde(default)]
    follow: bool,
    /// Start at this byte of the log instead of `max_bytes` before its end: a page that shows
    /// the log up to a byte follows it from there. Past the end, nothing has come yet.
    from: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
    run: Option<i64>,
}

pub async fn log(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<LogPath>, PathRejection>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let Query(query) = query?;
    let max_bytes = match query.max_bytes {
        None => DEFAULT_LOG_BYTES,
        Some(bytes @ 1..=MAX_LOG_BYTES) => bytes,
        Some(bytes) => {
            return Err(ApiError::bad_request(
                format!("max_bytes {bytes} is out of range"),
                format!("ask for 1 to {MAX_LOG_BYTES} bytes"),
            ));
        }
    };
    if let Some(from) = query.from.filter(|from| *from > MAX_LOG_FROM) {
        return Err(ApiError::bad_request(
            format!("from {from} is out of range"),
            format!(
                "ask for a byte from 0 to {MAX_LOG_FROM}; x-keel-log-size says how long the log is"
            ),
        ));
    }
    served.check_task(&path.task)?;
    let record = served.run(path.run).await?;
    let mut status_query = StatusQuery::new(served.spec().name.clone()).run(record.id);
    status_query.task = Some(path.task.clone());
    let view = served
        .reader
        .status_view(&status_query)
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    let attempt = view
        .runs
        .first()
        .and_then(|run| {
            run.attempts_of(&path.task)
                .find(|attempt| attempt.number == path.attempt)
        })
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "task {:?} has no attempt {} in run {}",
                    path.task, path.attempt, record.id
                ),
                format!(
                    "GET /api/pipelines/{}/runs/{} lists its attempts",
                    served.spec().name,
                    record.id
                ),
            )
        })?;
    let file_path = std::path::Path::new(&attempt.dir).join(keel_exec::supervisor::OUTPUT_FILE);
    // Opened without following a link and only if it is a plain file, as `keel logs` does: the
    // directory is one a task can write into.
    let from = query.from;
    let opened = tokio::task::spawn_blocking(move || {
        let file = keel_exec::open_regular_file(&file_path)?;
        let Some(mut file) = file else {
            return Ok((None, 0, from.unwrap_or(0)));
        };
        let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        let start = from.unwrap_or_else(|| size.saturating_sub(max_bytes));
        file.seek(SeekFrom::Start(start))
            .map_err(keel_exec::FileProblem::Io)?;
        Ok::<_, keel_exec::FileProblem>((Some(file), size, start))
    })
    .await
    .map_err(|error| ApiError::internal(anyhow::anyhow!("reading the log failed: {error}")))?
    .map_err(|problem| {
        ApiError::internal(anyhow::anyhow!(
            "cannot show the log of attempt {} of {:?}: {problem}; Keel wrote it as a plain file, so something replaced it",
            path.attempt,
            path.task
        ))
    })?;
    let (file, size, start) = opened;
    let truncated = start > 0;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        ),
        (
            header::HeaderName::from_static("x-keel-log-size"),
            HeaderValue::from(size),
        ),
        (
            header::HeaderName::from_static("x-keel-log-truncated"),
            HeaderValue::from_static(if truncated { "true" } else { "false" }),
        ),
    ];
    if !query.follow {
        let bytes = match file {
            None => Vec::new(),
            Some(file) => tokio::task::spawn_blocking(move || {
                let mut bytes = Vec::new();
                file.take(max_bytes).read_to_end(&mut bytes).map(|_| bytes)
            })
            .await
            .map_err(|error| {
                ApiError::internal(anyhow::anyhow!("reading the log failed: {error}"))
            })?
            .map_err(|error| {
                ApiError::internal(anyhow::anyhow!("reading the log failed: {error}"))
            })?,
        };
        return Ok((headers, bytes).into_response());
    }
    let follower = LogFollower {
        file,
        file_path: std::path::Path::new(&attempt.dir).join(keel_exec::supervisor::OUTPUT_FILE),
        start,
        store: served.reader.clone(),
        run: record.id,
        attempt: attempt.id,
        ended: attempt.finished_at.is_some(),
        done: false,
    };
    let stream = futures_util::stream::unfold(follower, |mut follower| async move {
        let chunk = follower.next().await?;
        Some((Ok::<_, std::io::Error>(chunk), follower))
    });
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// Reads an attempt's log as it grows, until the attempt has ended and all it wrote is sent.
struct LogFollower {
    file: Option<std::fs::File>,
    file_path: std::path::PathBuf,
    /// Where to start in a file opened late (it did not exist when the request came).
    start: u64,
    store: AnyStore,
    run: RunId,
    attempt: keel_model::AttemptId,
    /// The attempt had ended at the last look: what is left in the file is all there is.
    ended: bool,
    done: bool,
}

impl LogFollower {
    /// The next piece of the log, or `None` once it is all sent.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.done {
                return None;
            }
            if self.file.is_none() {
                // The attempt had written nothing yet when the request came.
                let path = self.file_path.clone();
                let start = self.start;
                self.file = tokio::task::spawn_blocking(move || {
                    let mut file = keel_exec::open_regular_file(&path).ok().flatten()?;
                    file.seek(SeekFrom::Start(start)).ok()?;
                    Some(file)
                })
                .await
                .ok()
                .flatten();
            }
            if let Some(file) = self.file.take() {
                let (file, chunk) = tokio::task::spawn_blocking(move || {
                    let mut chunk = Vec::new();
                    let read = (&file).take(CHUNK as u64).read_to_end(&mut chunk);
                    (file, read.map(|_| chunk))
                })
                .await
                .ok()?;
                self.file = Some(file);
                match chunk {
                    Ok(chunk) if !chunk.is_empty() => return Some(chunk),
                    Ok(_) => {}
                    Err(_) => {
                        self.done = true;
                        return None;
                    }
                }
            }
            if self.ended {
                self.done = true;
                return None;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
            // One more read after the attempt is seen to end picks up its last words.
            self.ended = match self.store.attempts(self.run).await {
                Ok(attempts) => attempts
                    .iter()
                    .find(|attempt| attempt.id == self.attempt)
                    .is_none_or(|attempt| attempt.finished_at.is_some()),
                Err(_) => true,
            };
        }
    }
}

pub async fn events(
    State(context): State<Arc<ApiContext>>,
    headers: HeaderMap,
    path: Result<Path<super::reads::PipelinePath>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let Query(query) = query?;
    // A reconnecting EventSource says where it stopped; that wins over `after`.
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "the Last-Event-ID header is not an event id",
                        "send the id of the last event received, a number",
                    )
                })?,
        ),
    };
    let after = last_event_id.or(query.after).unwrap_or(0).max(0);
    let run = match query.run {
        Some(id) => Some(served.run(id).await?.id),
        None => None,
    };
    let zone: chrono_tz::Tz = served.spec().timezone.parse().unwrap_or(chrono_tz::UTC);
    let reader = EventReader {
        store: served.reader.clone(),
        filter: EventFilter::new(served.spec().name.clone(), run),
        after,
        zone,
        pending: VecDeque::new(),
        idle: 0,
        failed: false,
    };
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let frame = reader.next().await?;
        Some((Ok::<_, std::io::Error>(frame), reader))
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// Reads the event log page by page and frames each event of the pipeline as an SSE message.
struct EventReader {
    store: AnyStore,
    filter: EventFilter,
    after: i64,
    zone: chrono_tz::Tz,
    /// Frames of the page read last, not yet sent: at most one page.
    pending: VecDeque<String>,
    /// Polls since the last frame sent.
    idle: u32,
    failed: bool,
}

impl EventReader {
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.idle = 0;
                return Some(frame);
            }
            if self.failed {
                return None;
            }
            let page = match self.store.events_after(self.after, EVENT_PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    // The stream ends with a last message saying why; a client reconnects
                    // with Last-Event-ID and loses nothing.
                    self.failed = true;
                    return Some(format!(
                        "event: error\ndata: {}\n\n",
                        serde_json::json!({"error": error.to_string()})
                    ));
                }
            };
            self.filter.forget_runs_beyond(RUNS_REMEMBERED);
            for event in &page {
                self.after = event.seq;
                match self.filter.admit(&self.store, event).await {
                    Ok(Some(record)) => {
                        let data = event_json(self.zone, &record, event);
                        self.pending.push_back(format!(
                            "id: {}\nevent: {}\ndata: {data}\n\n",
                            event.seq,
                            event.kind.as_str()
                        ));
                    }
                    Ok(None) => {}
                    Err(_) => {}
                }
            }
            if !self.pending.is_empty() || page.len() == EVENT_PAGE as usize {
                continue;
            }
            self.idle += 1;
            if self.idle >= KEEP_ALIVE_EVERY {
                self.idle = 0;
                return Some(": keep-alive\n\n".to_string());
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }
}
