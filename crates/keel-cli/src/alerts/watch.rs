//! What the alerts' ticker reads from the store besides acceptances: the anomalies of the tasks
//! that just succeeded (judged against their earlier partitions, with keel-health's baseline),
//! and the burn rates of the pipeline's SLOs. Reading happens on the ticker's task, off the
//! engine's loop; what it finds goes to the [`AlertBook`](super::book::AlertBook), which
//! decides what to tell.

use keel_model::{Millis, PipelineSpec, RunId, SloSpec};
use keel_store::{StatusQuery, Store};

/// Partitions of a task's history read to judge its newest one: 8 weeks of a weekly baseline,
/// and the one judged.
const HISTORY: u32 = 57;

/// A task whose attempt just succeeded in `run`, to judge once the ticker comes round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Succeeded {
    pub task: String,
    pub run: RunId,
    pub partition: String,
    /// Ticks it was put off because the store did not show the success yet.
    pub waited: u32,
}

/// How many ticks a success the store does not show yet is judged again before it is dropped.
/// The engine tells of an attempt's end as it decides it, a moment before its step commits, so
/// a tick can come in between; the next one finds it committed.
const MAX_WAITS: u32 = 30;

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
/// partitions, and the successes to judge on a later tick: those the store does not show as
/// settled yet (see [`MAX_WAITS`]). A history that cannot be read now yields nothing: the next
/// success reads again.
pub async fn anomalies(
    store: &impl Store,
    pipeline: &str,
    succeeded: Vec<Succeeded>,
    now: Millis,
) -> (Vec<Found>, Vec<Succeeded>) {
    let mut found = Vec::new();
    let mut later = Vec::new();
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
        let row = view
            .runs
            .iter()
            .filter(|run| run.record.id == one.run)
            .flat_map(|run| run.tasks.iter())
            .find(|row| row.task == one.task);
        if row.is_none_or(|row| row.outcome.is_none()) {
            if one.waited < MAX_WAITS {
                later.push(Succeeded {
                    waited: one.waited + 1,
                    ..one
                });
            }
            continue;
        }
        let attempts = row.map_or(1, |row| row.attempts);
        found.extend(
            crate::anomalies::in_history(&view.runs, &one.task, now)
                .into_iter()
                .filter(|anomaly| anomaly.run == one.run)
                .filter(|anomaly| {
                    worth_alerting(&anomaly.metric, anomaly.judgement.baseline.points, attempts)
                })
                .map(|anomaly| Found {
                    detail: anomaly.judgement.describe(&anomaly.metric),
                    task: anomaly.task,
                    metric: anomaly.metric,
                    run: anomaly.run,
                    partition: anomaly.partition,
                }),
        );
    }
    (found, later)
}

/// The fewest partitions of baseline an anomaly needs before it alerts: under three weeks of
/// history, a baseline has not yet seen a task's ordinary ups and downs, and `keel history` and
/// `keel status` show what it finds without waking anyone.
pub const MIN_POINTS_TO_ALERT: usize = 21;

/// Whether an anomaly is worth an alert: its baseline holds [`MIN_POINTS_TO_ALERT`]
/// partitions, and it is not the time worked of a task that needed more than one attempt (that
/// time went to attempts Keel retried and healed, which the run already shows).
pub fn worth_alerting(metric: &str, baseline_points: usize, attempts: u32) -> bool {
    baseline_points >= MIN_POINTS_TO_ALERT && !(metric == "duration_s" && attempts > 1)
}

/// Everything the ticker judges for one pipeline.
pub struct Watch {
    pub slos: SloWatch,
    pub report: ReportWatch,
    pub quotas: QuotaWatch,
}

impl Watch {
    pub fn of(spec: &PipelineSpec, now: Millis) -> Watch {
        Watch {
            slos: SloWatch::of(spec),
            report: ReportWatch::of(spec, now),
            quotas: QuotaWatch::of(spec),
        }
    }
}

/// How often the quotas' stored use is read (Keel time).
const QUOTA_EVERY: Millis = 5_000;

/// The pipeline's quotas (`quota` on a resource), judged from the use `keel token` stores.
pub struct QuotaWatch {
    /// The pipeline as served, when any resource has a quota.
    spec: Option<PipelineSpec>,
    last: Option<Millis>,
}

impl QuotaWatch {
    pub fn of(spec: &PipelineSpec) -> QuotaWatch {
        let quotas = spec
            .resources
            .iter()
            .any(|resource| resource.quota.is_some());
        QuotaWatch {
            spec: quotas.then(|| spec.clone()),
            last: None,
        }
    }

    /// Every few seconds, where each quota stands; nothing otherwise, nor without quotas.
    pub async fn due(
        &mut self,
        store: &keel_store::AnyStore,
        now: Millis,
    ) -> Vec<crate::tokens::QuotaStanding> {
        let Some(spec) = &self.spec else {
            return Vec::new();
        };
        if self.last.is_some_and(|last| now - last < QUOTA_EVERY) {
            return Vec::new();
        }
        self.last = Some(now);
        // A store that cannot be read now is read again on the next look.
        let Ok(uses) = store.quota_uses(&spec.name).await else {
            return Vec::new();
        };
        crate::tokens::quota_standings(spec, &uses, now)
    }
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
        store: &impl Store,
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

/// The daily report (`[alerts] report = "07:30"`): sent once a day at that local time, for the
/// day before. A serve started after the day's time sends the next day's, so a restart never
/// sends one twice.
pub struct ReportWatch {
    at: Option<keel_model::TimeOfDay>,
    spec: std::sync::Arc<PipelineSpec>,
    zone: chrono_tz::Tz,
    /// The local date of the last report sent (or skipped at start).
    last: Option<chrono::NaiveDate>,
}

impl ReportWatch {
    pub fn of(spec: &PipelineSpec, now: Millis) -> ReportWatch {
        let mut watch = ReportWatch {
            at: spec.alerts.as_ref().and_then(|alerts| alerts.report),
            spec: std::sync::Arc::new(spec.clone()),
            zone: crate::health::zone(spec),
            last: None,
        };
        if let Some((today, passed)) = watch.today(now)
            && passed
        {
            watch.last = Some(today);
        }
        watch
    }

    /// The local date at `now`, and whether the report's time of day has passed on it.
    fn today(&self, now: Millis) -> Option<(chrono::NaiveDate, bool)> {
        let at = self.at?;
        let local = chrono::DateTime::from_timestamp_millis(now)?.with_timezone(&self.zone);
        let time = local.time();
        let due = chrono::NaiveTime::from_hms_opt(u32::from(at.hour), u32::from(at.minute), 0)?;
        Some((local.date_naive(), time >= due))
    }

    /// Yesterday's report as text when it is due at `now`; `None` otherwise.
    pub async fn due(&mut self, store: &impl Store, now: Millis) -> Option<(String, String)> {
        let (today, passed) = self.today(now)?;
        if !passed || self.last == Some(today) {
            return None;
        }
        self.last = Some(today);
        let yesterday = today.pred_opt()?;
        let since = now - 40 * 24 * 3_600_000;
        let facts = crate::health::facts::gather(store, &self.spec.name, since)
            .await
            .ok()?;
        let report = crate::health::report::build(&self.spec, &facts, self.zone, yesterday, now);
        Some((yesterday.to_string(), report.to_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_store::SqliteStore;

    const MINUTE: Millis = 60_000;
    /// 2026-11-02 00:00 UTC.
    const MIDNIGHT: Millis = 1_793_577_600_000;

    fn spec(report: Option<&str>) -> PipelineSpec {
        let text = format!(
            "[pipeline]\nname = \"hoops\"\n\n[alerts]\ncommand = [\"true\"]\n{}\n[phases.p]\n[tasks.t]\nphase = \"p\"\ncommand = [\"true\"]\n",
            report
                .map(|at| format!("report = \"{at}\"\n"))
                .unwrap_or_default()
        );
        keel_config::parse(&text, "keel.toml").unwrap()
    }

    /// The report goes out once a day, at its local time, for the day before; a serve started
    /// after the time waits for the next day.
    #[tokio::test(flavor = "current_thread")]
    async fn the_daily_report_is_sent_once_a_day_at_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let spec = spec(Some("07:30"));
        let mut watch = ReportWatch::of(&spec, MIDNIGHT + 6 * 60 * MINUTE);
        assert!(
            watch
                .due(&store, MIDNIGHT + 7 * 60 * MINUTE)
                .await
                .is_none()
        );
        let (date, text) = watch
            .due(&store, MIDNIGHT + (7 * 60 + 30) * MINUTE)
            .await
            .unwrap();
        assert_eq!(date, "2026-11-01");
        assert!(
            text.starts_with("keel report: hoops on 2026-11-01\n"),
            "{text}"
        );
        assert!(
            watch
                .due(&store, MIDNIGHT + 9 * 60 * MINUTE)
                .await
                .is_none()
        );
        let next_day = MIDNIGHT + (24 * 60 + 7 * 60 + 31) * MINUTE;
        assert_eq!(watch.due(&store, next_day).await.unwrap().0, "2026-11-02");

        // Started at 08:00, after the day's time: nothing until the next day's.
        let mut late = ReportWatch::of(&spec, MIDNIGHT + 8 * 60 * MINUTE);
        assert!(late.due(&store, MIDNIGHT + 9 * 60 * MINUTE).await.is_none());
        assert!(late.due(&store, next_day).await.is_some());
        // Without `report`, never.
        let mut none = ReportWatch::of(&self::spec(None), MIDNIGHT);
        assert!(none.due(&store, next_day).await.is_none());
    }

    /// A success the store does not show yet (the engine told of it a moment before its step
    /// committed) is judged again on the next tick, up to `MAX_WAITS` ticks, never lost at once.
    #[tokio::test(flavor = "current_thread")]
    async fn a_success_the_store_does_not_show_yet_is_judged_on_a_later_tick() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let one = Succeeded {
            task: "t".to_string(),
            run: RunId(7),
            partition: "2026-11-01".to_string(),
            waited: 0,
        };
        let (found, later) = anomalies(&store, "hoops", vec![one.clone()], MIDNIGHT).await;
        assert!(found.is_empty());
        assert_eq!(
            later,
            vec![Succeeded {
                waited: 1,
                ..one.clone()
            }]
        );
        let (_, given_up) = anomalies(
            &store,
            "hoops",
            vec![Succeeded {
                waited: MAX_WAITS,
                ..one
            }],
            MIDNIGHT,
        )
        .await;
        assert!(given_up.is_empty());
    }

    #[test]
    fn an_anomaly_alerts_from_three_weeks_of_baseline_and_not_for_time_spent_healing() {
        assert!(worth_alerting("accuracy", 28, 1));
        assert!(
            worth_alerting("accuracy", 28, 3),
            "a retried task's metrics still count"
        );
        assert!(!worth_alerting("accuracy", 20, 1));
        assert!(worth_alerting("duration_s", 21, 1));
        assert!(!worth_alerting("duration_s", 28, 2));
    }
}
