//! What the alerts' ticker reads from the store besides acceptances: the anomalies of the tasks
//! that just succeeded (judged against their earlier partitions, with keel-health's baseline),
//! and the burn rates of the pipeline's SLOs. Reading happens on the ticker's task, off the
//! engine's loop; what it finds goes to the [`AlertBook`](super::book::AlertBook), which
//! decides what to tell.

use keel_model::{Millis, PipelineSpec, RunId, SloSpec};
use keel_store::{SqliteStore, StatusQuery, Store};

/// Partitions of a task's history read to judge its newest one: 8 weeks of a weekly baseline,
/// and the one judged.
const HISTORY: u32 = 57;

/// A task whose attempt just succeeded in `run`, to judge once the ticker comes round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Succeeded {
    pub task: String,
    pub run: RunId,
    pub partition: String,
}

/// One anomaly of a task that succeeded, as the book tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub task: String,
    pub metric: String,
    pub run: RunId,
    pub partition: String,
    /// `accuracy 0.19, usual 0.39–0.50 over 28 days`.
    pub detail: String,
}

/// The anomalies of the partitions in `succeeded`, each judged against the task's earlier
/// partitions. A history that cannot be read now yields nothing: the next success reads again.
pub async fn anomalies(
    store: &SqliteStore,
    pipeline: &str,
    succeeded: Vec<Succeeded>,
    now: Millis,
) -> Vec<Found> {
    let mut found = Vec::new();
    for one in succeeded {
        let query = StatusQuery {
            task: Some(one.task.clone()),
            partitions: Some((String::new(), one.partition.clone())),
            limit: Some(HISTORY),
            ..StatusQuery::new(pipeline)
        };
        let Ok(view) = store.status_view(&query).await else {
            continue;
        };
        found.extend(
            crate::anomalies::in_history(&view.runs, &one.task, now)
                .into_iter()
                .filter(|anomaly| anomaly.run == one.run)
                .map(|anomaly| Found {
                    detail: anomaly.judgement.describe(&anomaly.metric),
                    task: anomaly.task,
                    metric: anomaly.metric,
                    run: anomaly.run,
                    partition: anomaly.partition,
                }),
        );
    }
    found
}

/// How often the SLOs' burn rates are judged: well inside the fast rule's 5-minute window.
const SLO_EVERY: Millis = 60_000;

/// The SLOs the ticker judges, and when it last did.
pub struct SloWatch {
    slos: Vec<SloSpec>,
    zone: chrono_tz::Tz,
    scheduled: bool,
    last: Option<Millis>,
}

impl SloWatch {
    pub fn of(spec: &PipelineSpec) -> SloWatch {
        SloWatch {
            slos: spec.slos.clone(),
            zone: crate::health::zone(spec),
            scheduled: spec.schedule.is_some(),
            last: None,
        }
    }

    /// When a minute has passed since the last judgement, each SLO with what burns its budget
    /// (`None` when nothing does); nothing otherwise, nor without SLOs.
    pub async fn due(
        &mut self,
        store: &SqliteStore,
        pipeline: &str,
        now: Millis,
    ) -> Vec<(String, Option<String>)> {
        if self.slos.is_empty() || self.last.is_some_and(|last| now - last < SLO_EVERY) {
            return Vec::new();
        }
        self.last = Some(now);
        let longest = self
            .slos
            .iter()
            .map(|slo| slo.period.as_millis() as Millis)
            .max()
            .unwrap_or(0);
        // A store that cannot be read now is read again on the next judgement.
        let Ok(facts) =
            crate::health::facts::gather(store, pipeline, now - longest - 24 * 3_600_000).await
        else {
            return Vec::new();
        };
        burning(&self.slos, &facts, self.zone, self.scheduled, now)
    }
}

/// Each SLO with what burns its budget at `now`, `None` when nothing does.
pub fn burning(
    slos: &[SloSpec],
    facts: &crate::health::facts::Facts,
    zone: chrono_tz::Tz,
    scheduled: bool,
    now: Millis,
) -> Vec<(String, Option<String>)> {
    crate::health::slo::statuses(slos, facts, zone, scheduled, now)
        .into_iter()
        .map(|status| (status.spec.name.clone(), status.burning()))
        .collect()
}
