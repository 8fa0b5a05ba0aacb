//! The cluster of a PostgreSQL state: the workers (their heartbeats, slots, load and leases)
//! and the work queue, as `/api/cluster` has them. An SQLite state has no cluster: the page
//! says how to make one.

use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use keel_model::Millis;
use serde::Deserialize;

use super::view::{self, Chrome};
use super::{PageError, html};
use crate::api::{ApiContext, ApiError};

#[derive(Deserialize)]
pub struct PipelinePath {
    pipeline: String,
}

#[derive(Template)]
#[template(path = "cluster.html")]
pub struct ClusterPage {
    pub chrome: Chrome,
    /// `None`: the state is not in PostgreSQL.
    pub queue: Option<(i64, i64, i64, i64)>,
    pub workers: Vec<Worker>,
}

pub struct Worker {
    pub id: String,
    pub host: String,
    pub pid: i64,
    /// "3 of 4"
    pub load: String,
    /// "1.2 s ago", or "stopped at …".
    pub heartbeat: String,
    /// The colour: `succeeded` (beating), `retrying` (its heartbeat is late), `none` (stopped).
    pub class: &'static str,
    /// (attempt, "expires in 3.1 s")
    pub leases: Vec<(String, String)>,
}

/// A heartbeat older than this is shown as late.
const LATE_MS: Millis = 10_000;

pub async fn page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<PipelinePath>, PathRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    let spec = served.spec();
    let chrome = Chrome::new(
        &context,
        &spec,
        format!("cluster · {} · Keel", spec.name),
        "cluster",
    );
    let Some(queue) = &context.cluster else {
        return Ok(html(&ClusterPage {
            chrome,
            queue: None,
            workers: Vec::new(),
        }));
    };
    render(chrome, queue, |at| view::local_time(&spec, at)).await
}

/// The page of the cluster whose queue is `queue`, times of day shown by `time`; a worker or a
/// standby scheduler serves it without a pipeline (`chrome` then is [`Chrome::bare`]).
pub async fn render(
    chrome: Chrome,
    queue: &keel_store::WorkQueue,
    time: impl Fn(Millis) -> String,
) -> Result<Response, PageError> {
    let cluster = queue.cluster().await.map_err(view::store_error)?;
    let now = crate::cluster::wall_millis();
    let seconds = |millis: Millis| format!("{:.1} s", millis as f64 / 1000.0);
    let workers = cluster
        .workers
        .iter()
        .map(|worker| {
            let age = (now - worker.heartbeat_at).max(0);
            let (heartbeat, class) = match worker.stopped_at {
                Some(at) => (format!("stopped at {}", time(at)), "none"),
                None if age > LATE_MS => (format!("{} ago (late)", seconds(age)), "retrying"),
                None => (format!("{} ago", seconds(age)), "succeeded"),
            };
            Worker {
                id: worker.id.clone(),
                host: worker.host.clone(),
                pid: worker.pid,
                load: format!("{} of {}", worker.running, worker.slots),
                heartbeat,
                class,
                leases: worker
                    .leases
                    .iter()
                    .map(|(key, until)| {
                        (key.clone(), format!("expires in {}", seconds(until - now)))
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(html(&ClusterPage {
        chrome,
        queue: Some((
            cluster.queued,
            cluster.claimed,
            cluster.done,
            cluster.reaped,
        )),
        workers,
    }))
}
