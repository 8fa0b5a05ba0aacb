//! The pipeline's resources (`[resources.NAME]`): for each, its rate limit with the starts in
//! the current window, its concurrency cap with the attempts using it now, its circuit breaker
//! with its recent transitions, its retry budget and the tasks that use it.

use std::collections::HashSet;
use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use keel_model::{EventKind, Millis, PipelineSpec, ResourceSpec};
use keel_store::{AttemptRecord, EventRecord, ResourceStateRecord, Store};
use serde::Deserialize;

use super::view::{self, Chrome, path_segment};
use super::{PageError, html};
use crate::api::{ApiContext, ApiError, ServedPipeline};

/// Breaker transitions shown per resource.
const TRANSITIONS: usize = 20;
/// Breaker events read for all resources together. The engine writes one event per unfinished
/// run for each transition, so this is many more than [`TRANSITIONS`].
const BREAKER_EVENTS: u32 = 2_000;

#[derive(Deserialize)]
pub struct PipelinePath {
    pipeline: String,
}

#[derive(Template)]
#[template(path = "resources.html")]
pub struct ResourcesPage {
    pub chrome: Chrome,
    pub resources: Vec<Resource>,
}

pub struct Resource {
    pub name: String,
    /// `None`: no rate limit. (config, starts in the current window)
    pub rate: Option<(String, String)>,
    /// "2 of 3 in use", or how many run now when there is no cap.
    pub concurrency: String,
    pub capped: bool,
    /// `None`: no breaker. (config, state class, state word, sentence)
    pub breaker: Option<Breaker>,
    pub retry_budget: Option<String>,
    /// Its health probe (`ready`), as configured: serve logs how it answers.
    pub ready: Option<String>,
    /// (task, URL of its history)
    pub tasks: Vec<(String, String)>,
    pub transitions: Vec<Transition>,
}

pub struct Breaker {
    pub config: String,
    pub class: &'static str,
    pub state: &'static str,
    pub sentence: String,
    pub updated: String,
}

pub struct Transition {
    pub at: String,
    pub class: &'static str,
    pub detail: String,
}

pub async fn page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<PipelinePath>, PathRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    let page = render(&context, served, crate::state::now_millis()).await?;
    Ok(html(&page))
}

pub async fn render(
    context: &ApiContext,
    served: &ServedPipeline,
    now: Millis,
) -> Result<ResourcesPage, ApiError> {
    let spec = served.spec();
    let reader = &served.reader;
    let longest_window = spec
        .resources
        .iter()
        .filter_map(|resource| resource.rate.map(|rate| rate.per.as_millis() as Millis))
        .max()
        .unwrap_or(0);
    let starts = if longest_window > 0 {
        reader
            .attempt_starts_since(&spec.name, now - longest_window)
            .await
            .map_err(view::store_error)?
    } else {
        Vec::new()
    };
    let live = reader
        .live_attempts(&spec.name)
        .await
        .map_err(view::store_error)?;
    let states = reader
        .resource_states(&spec.name)
        .await
        .map_err(view::store_error)?;
    let events = if spec
        .resources
        .iter()
        .any(|resource| resource.breaker.is_some())
    {
        reader
            .recent_events(&spec.name, vec![EventKind::Breaker], BREAKER_EVENTS)
            .await
            .map_err(view::store_error)?
    } else {
        Vec::new()
    };
    let resources = spec
        .resources
        .iter()
        .map(|resource| section(&spec, resource, &starts, &live, &states, &events, now))
        .collect();
    let mut chrome = Chrome::new(
        context,
        &spec,
        format!("resources · {} · Keel", spec.name),
        "resources",
    );
    chrome.live = true;
    Ok(ResourcesPage { chrome, resources })
}

fn section(
    spec: &PipelineSpec,
    resource: &ResourceSpec,
    starts: &[(String, Millis)],
    live: &[AttemptRecord],
    states: &[ResourceStateRecord],
    events: &[EventRecord],
    now: Millis,
) -> Resource {
    let users: Vec<&str> = spec
        .tasks
        .iter()
        .filter(|task| task.uses.contains(&resource.name))
        .map(|task| task.name.as_str())
        .collect();
    let base = view::pipeline_url(&spec.name);
    let rate = resource.rate.map(|rate| {
        let window = rate.per.as_millis() as Millis;
        let started = starts
            .iter()
            .filter(|(task, at)| *at >= now - window && users.contains(&task.as_str()))
            .count();
        (
            format!(
                "at most {} per {}",
                crate::display::count(u64::from(rate.tokens), "start", "starts"),
                keel_model::format_duration(rate.per)
            ),
            format!(
                "{started} of {} in the last {}",
                rate.tokens,
                keel_model::format_duration(rate.per)
            ),
        )
    });
    let running = live
        .iter()
        .filter(|attempt| users.contains(&attempt.task.as_str()))
        .count();
    let concurrency = match resource.concurrency {
        Some(cap) => format!("{running} of {cap} in use"),
        None => format!(
            "{} now, no cap",
            crate::display::count(running as u64, "attempt runs", "attempts run")
        ),
    };
    let breaker = resource.breaker.as_ref().map(|config| {
        let mut text = format!(
            "opens after {} in a row",
            crate::display::count(u64::from(config.failures), "failure", "failures")
        );
        if let Some(ratio) = config.ratio {
            text.push_str(&format!(
                ", or when {}% of the last {} attempts failed",
                view::number(ratio * 100.0),
                config.window
            ));
        }
        text.push_str(&format!(
            "; probes after {}; gives up after {} open",
            keel_model::format_duration(config.cooldown),
            keel_model::format_duration(config.max_open)
        ));
        match states.iter().find(|state| state.name == resource.name) {
            Some(state) => {
                let (word, sentence) = state.state_at(now);
                Breaker {
                    config: text,
                    class: view::breaker_class(word),
                    state: view::breaker_word(word),
                    sentence,
                    updated: view::local_time(spec, state.updated_at),
                }
            }
            None => Breaker {
                config: text,
                class: "succeeded",
                state: "closed",
                sentence: "closed: it has never opened".to_string(),
                updated: String::new(),
            },
        }
    });
    let retry_budget = resource.retry_budget.as_ref().map(|budget| {
        format!(
            "retries at most {}% of the attempts over {}, plus {} always allowed",
            view::number(budget.ratio * 100.0),
            keel_model::format_duration(budget.window),
            budget.min
        )
    });
    let ready = resource.ready.as_ref().map(|probe| {
        format!(
            "GET {} before tasks start; an answer holds for {}, a probe may take {}",
            probe.url.split(['?', '#']).next().unwrap_or_default(),
            keel_model::format_duration(probe.every),
            keel_model::format_duration(probe.timeout)
        )
    });
    Resource {
        name: resource.name.clone(),
        ready,
        rate,
        concurrency,
        capped: resource.concurrency.is_some(),
        breaker,
        retry_budget,
        tasks: users
            .iter()
            .map(|task| {
                (
                    task.to_string(),
                    format!("{base}/tasks/{}", path_segment(task)),
                )
            })
            .collect(),
        transitions: transitions(spec, &resource.name, events),
    }
}

/// The newest breaker transitions of `resource`, newest first. The engine records each one in
/// every unfinished run (`resource NAME: DETAIL`), so copies of one are shown once.
fn transitions(spec: &PipelineSpec, resource: &str, events: &[EventRecord]) -> Vec<Transition> {
    let prefix = format!("resource {resource}: ");
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|event| event.kind == EventKind::Breaker)
        .filter_map(|event| Some((event.at, event.detail.strip_prefix(&prefix)?)))
        .filter(|&(at, detail)| seen.insert((at, detail)))
        .take(TRANSITIONS)
        .map(|(at, detail)| {
            let word = if detail.starts_with("closed") {
                "closed"
            } else if detail.starts_with("half open") {
                "half_open"
            } else {
                "open"
            };
            Transition {
                at: view::local_time(spec, at),
                class: view::breaker_class(word),
                detail: crate::display::printable(detail),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(seq: i64, at: Millis, run: i64, detail: &str) -> EventRecord {
        EventRecord {
            seq,
            at,
            run: keel_model::RunId(run),
            task: None,
            attempt: None,
            kind: EventKind::Breaker,
            detail: detail.to_string(),
        }
    }

    #[test]
    fn transitions_are_the_resources_own_each_shown_once_newest_first() {
        let spec = keel_config::parse(
            "[pipeline]\nname = \"p\"\ntimezone = \"UTC\"\n[resources.api]\nbreaker = {}\n[resources.api2]\nbreaker = {}\n[phases.main]\n[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\nuses = [\"api\", \"api2\"]\n",
            "keel.toml",
        )
        .unwrap();
        // Newest first, as the store returns them; one transition recorded in two runs.
        let events = [
            breaker(
                9,
                3_000,
                2,
                "resource api: closed: the dependency answers again",
            ),
            breaker(
                8,
                3_000,
                1,
                "resource api: closed: the dependency answers again",
            ),
            breaker(7, 2_500, 1, "resource api2: open: tasks using it wait"),
            breaker(
                6,
                2_000,
                1,
                "resource api: half open: the next attempt is a probe",
            ),
            breaker(5, 1_000, 2, "resource api: open: tasks using it wait"),
            breaker(4, 1_000, 1, "resource api: open: tasks using it wait"),
        ];
        let shown = transitions(&spec, "api", &events);
        let details: Vec<(&str, &str)> = shown
            .iter()
            .map(|transition| (transition.class, transition.detail.as_str()))
            .collect();
        assert_eq!(
            details,
            [
                ("succeeded", "closed: the dependency answers again"),
                ("retrying", "half open: the next attempt is a probe"),
                ("failed", "open: tasks using it wait"),
            ]
        );
        assert_eq!(shown[0].at, "1970-01-01 00:00:03");
        assert_eq!(transitions(&spec, "api2", &events).len(), 1);
        assert!(transitions(&spec, "ap", &events).is_empty());
    }
}
