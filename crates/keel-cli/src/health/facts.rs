//! What the health commands judge, read from the store once: the pipeline's own runs (not its
//! passes') of a window, with what their event logs say a human did and which checks failed.
//! Everything after the read is pure, over these facts and a `now`, so it is tested on a
//! manual clock.

use keel_model::{EventKind, Millis, Outcome, RunState};
use keel_store::{RunView, StatusQuery, Store};

/// One run and what its event log adds.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub view: RunView,
    /// What a human did to this run: `keel retry`, `keel accept`, a cancel.
    pub human: Vec<Human>,
    /// `check_failed` events: (task, or `phase NAME`; severity; what failed).
    pub check_failures: Vec<(String, String, String)>,
    /// `heal_requested` events: (the task that asked, the upstream tasks it had run again).
    pub heals: Vec<(String, Vec<String>)>,
}

/// A human's hand on a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Human {
    pub at: Millis,
    /// `keel retry load_boxscores`, `keel accept`, `cancel`.
    pub what: String,
}

/// The runs a window holds, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub runs: Vec<RunFacts>,
}

/// The reason Keel records for the tasks `keel retry` names.
const MANUAL_RETRY: &str = ": manual retry";

/// Reads the pipeline's own runs created after `since`, with their event logs.
pub async fn gather(store: &impl Store, pipeline: &str, since: Millis) -> anyhow::Result<Facts> {
    let query = StatusQuery {
        every_run: true,
        ..StatusQuery::new(pipeline)
    };
    let view = store.status_view(&query).await?;
    let mut runs = Vec::new();
    for run in view.runs {
        if run.record.pass.is_some() || run.record.created_at < since {
            continue;
        }
        let events = store.events(run.record.id).await?;
        runs.push(facts_of(run, &events));
    }
    runs.sort_by_key(|run| (run.view.record.created_at, run.view.record.id));
    Ok(Facts { runs })
}

/// A run's facts from its view and its event log.
pub fn facts_of(view: RunView, events: &[keel_store::EventRecord]) -> RunFacts {
    let mut human = Vec::new();
    let mut check_failures = Vec::new();
    let mut heals = Vec::new();
    for event in events {
        match event.kind {
            EventKind::Accepted => human.push(Human {
                at: event.at,
                what: "keel accept".to_string(),
            }),
            EventKind::CancelRequested => human.push(Human {
                at: event.at,
                what: "cancel".to_string(),
            }),
            EventKind::TaskChanged if event.detail.ends_with(MANUAL_RETRY) => {
                human.push(Human {
                    at: event.at,
                    what: format!("keel retry {}", event.task.as_deref().unwrap_or("?")),
                });
            }
            EventKind::CheckFailed => {
                let detail: serde_json::Value =
                    serde_json::from_str(&event.detail).unwrap_or_default();
                let subject = match (&event.task, detail["phase"].as_str()) {
                    (Some(task), _) => task.clone(),
                    (None, Some(phase)) => format!("phase {phase}"),
                    (None, None) => "?".to_string(),
                };
                check_failures.push((
                    subject,
                    detail["severity"].as_str().unwrap_or("block").to_string(),
                    detail["describe"].as_str().unwrap_or_default().to_string(),
                ));
            }
            EventKind::HealRequested => {
                let detail: serde_json::Value =
                    serde_json::from_str(&event.detail).unwrap_or_default();
                let healed = detail["heal"]
                    .as_array()
                    .map(|names| {
                        names
                            .iter()
                            .filter_map(|name| name.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                heals.push((event.task.clone().unwrap_or_default(), healed));
            }
            _ => {}
        }
    }
    RunFacts {
        view,
        human,
        check_failures,
        heals,
    }
}

/// A task that failed and then succeeded in the same run without a human: how Keel healed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Healed {
    pub task: String,
    /// The outcomes of the attempts that did not succeed, in order.
    pub failures: Vec<Outcome>,
    /// From the end of the first failed attempt to the end of the one that succeeded.
    pub recovery: Millis,
    /// The upstream tasks it had run again on the way (`heal`), in order, without repeats.
    pub upstream: Vec<String>,
}

impl RunFacts {
    pub fn partition(&self) -> &str {
        &self.view.record.partition
    }

    pub fn state(&self) -> RunState {
        self.view.record.state
    }

    /// The run finished `succeeded` and no human touched it.
    pub fn hands_off_success(&self) -> bool {
        self.state() == RunState::Succeeded && self.human.is_empty()
    }

    /// The tasks that failed at least once and then completed in this run.
    pub fn healed(&self) -> Vec<Healed> {
        let mut healed = Vec::new();
        for row in &self.view.tasks {
            if !row.outcome.is_some_and(Outcome::is_complete) {
                continue;
            }
            let attempts: Vec<_> = self
                .view
                .attempts_of(&row.task)
                .filter(|attempt| attempt.finished_at.is_some())
                .collect();
            let failures: Vec<Outcome> = attempts
                .iter()
                .filter_map(|attempt| attempt.outcome)
                .filter(|outcome| !outcome.is_complete() && *outcome != Outcome::NotReady)
                .collect();
            if failures.is_empty() {
                continue;
            }
            let first_failed = attempts
                .iter()
                .find(|attempt| {
                    attempt.outcome.is_some_and(|outcome| {
                        !outcome.is_complete() && outcome != Outcome::NotReady
                    })
                })
                .and_then(|attempt| attempt.finished_at);
            let succeeded = attempts
                .iter()
                .rev()
                .find(|attempt| attempt.outcome.is_some_and(Outcome::is_complete))
                .and_then(|attempt| attempt.finished_at);
            if let (Some(from), Some(to)) = (first_failed, succeeded) {
                let mut upstream: Vec<String> = Vec::new();
                for (_, names) in self.heals.iter().filter(|(task, _)| *task == row.task) {
                    for name in names {
                        if !upstream.contains(name) {
                            upstream.push(name.clone());
                        }
                    }
                }
                healed.push(Healed {
                    task: row.task.clone(),
                    failures,
                    recovery: (to - from).max(0),
                    upstream,
                });
            }
        }
        healed
    }

    /// Tasks that did not complete, with how they ended (or `None` while unfinished).
    pub fn not_complete(&self) -> Vec<(String, Option<Outcome>)> {
        self.view
            .tasks
            .iter()
            .filter(|row| !row.outcome.is_some_and(Outcome::is_complete))
            .map(|row| (row.task.clone(), row.outcome))
            .collect()
    }
}

impl Facts {
    /// The runs created at or before `at`: the facts as they stood then, for a trend.
    pub fn as_of(&self, at: Millis) -> Facts {
        Facts {
            runs: self
                .runs
                .iter()
                .filter(|run| run.view.record.created_at <= at)
                .cloned()
                .collect(),
        }
    }

    /// The newest run of each partition, oldest partition first.
    pub fn newest_per_partition(&self) -> Vec<&RunFacts> {
        let mut newest: std::collections::BTreeMap<&str, &RunFacts> = Default::default();
        for run in &self.runs {
            newest.insert(run.partition(), run);
        }
        newest.into_values().collect()
    }

    /// Every run of `partition`, oldest first.
    pub fn runs_of<'a>(&'a self, partition: &'a str) -> impl Iterator<Item = &'a RunFacts> {
        self.runs
            .iter()
            .filter(move |run| run.partition() == partition)
    }
}
