//! The dashboard: HTML pages that `keel serve` renders from the same store reads as its API.
//!
//! Every page is rendered on the server from an askama template compiled into the binary, so
//! there is no build step and no JavaScript toolchain. One small script of Keel's own
//! (`assets/keel.js`) refreshes the parts of a page marked `data-live` while runs progress,
//! follows a running attempt's log and sends the action buttons' requests to the API with its
//! bearer token. Pages only read; every change goes through the API's authenticated endpoints.
//!
//! Every page has a stable URL under `/ui/PIPELINE`, which the grid's links use and a person can
//! bookmark.

mod chart;
pub(crate) mod cluster;
mod grid;
mod health;
mod resources;
mod run;
mod task;
pub(crate) mod view;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::api::{ApiContext, ApiError};

pub use grid::{GridQuery, render as render_grid};
pub use view::Chrome;

/// The dashboard's routes, merged into the API's router.
pub fn router() -> Router<Arc<ApiContext>> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .merge(assets())
        .route("/ui/{pipeline}", get(grid::page))
        .route("/ui/{pipeline}/tasks/{task}", get(task::page))
        .route("/ui/{pipeline}/resources", get(resources::page))
        .route("/ui/{pipeline}/health", get(health::page))
        .route("/ui/{pipeline}/cluster", get(cluster::page))
        .route("/ui/{pipeline}/runs/{run}", get(run::run_page))
        .route(
            "/ui/{pipeline}/runs/{run}/tasks/{task}/attempts/{attempt}",
            get(run::attempt_page),
        )
}

/// The dashboard's stylesheet and script, for a router of any state.
pub fn assets<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui/static/keel.css", get(stylesheet))
        .route("/ui/static/keel.js", get(script))
}

/// `/`: the grid of the first pipeline served.
async fn index(State(context): State<Arc<ApiContext>>) -> Response {
    match context.pipelines.first() {
        Some(first) => {
            Redirect::to(&format!("/ui/{}", view::path_segment(&first.spec().name))).into_response()
        }
        None => PageError(ApiError::new(
            StatusCode::NOT_FOUND,
            "no pipeline is served here",
            "start keel serve with a pipeline file",
        ))
        .into_response(),
    }
}

const STYLESHEET: &str = include_str!("../../assets/keel.css");
const SCRIPT: &str = include_str!("../../assets/keel.js");

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// A rendered page, or a 500 that says the template failed.
pub fn html(page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(error) => PageError(ApiError::internal(anyhow::anyhow!(
            "rendering the page failed: {error}"
        )))
        .into_response(),
    }
}

/// An error answered as an HTML page with the API error's status, message and hint.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> PageError {
        PageError(error)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    chrome: Chrome,
    status: u16,
    error: &'a str,
    hint: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, error, hint) = self.0.parts();
        let page = ErrorPage {
            chrome: Chrome::bare(format!("{} · Keel", status.as_u16())),
            status: status.as_u16(),
            error,
            hint,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("{}: {error}", status.as_u16()));
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }
}
