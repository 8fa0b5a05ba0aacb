//! The hot path of a run, claiming, starting and finishing attempts, in a fixed number of
//! statements per batch whatever its size: one read that fetches what every check needs, the
//! checks in Rust, and one statement that writes every row the batch changes (its attempts, its
//! task runs and its events, through data-modifying `WITH` clauses over `unnest`ed arrays).
//!
//! On a server that is not on the same machine every statement is a round trip, and on a small
//! one its fixed cost is most of the work: a claim had taken seven statements and a finish six,
//! each. The semantics are the per-attempt ones, result for result, and the caller's write
//! transaction (it holds the write lock) makes the read and the write one step.

use std::collections::{HashMap, HashSet};

use super::*;

/// Claims a batch: each claim's result in the order given, as one at a time would give them.
pub(super) async fn claim_attempts(
    connection: &mut PgConnection,
    claims: Vec<ClaimAttempt>,
) -> StoreResult<Vec<StoreResult<AttemptRecord>>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let runs: Vec<i64> = claims.iter().map(|claim| claim.run.0).collect();
    let tasks: Vec<&str> = claims.iter().map(|claim| claim.task.as_str()).collect();
    let rows = sqlx::query(
        "SELECT c.ord, r.pipeline, r.partition, t.task IS NOT NULL, t.state, t.lease_epoch, t.attempts, t.not_before,
                (SELECT a.id FROM attempts a WHERE a.pipeline = r.pipeline AND a.partition = r.partition
                     AND a.task = c.task AND a.finished_at IS NULL)
         FROM unnest($1::BIGINT[], $2::TEXT[]) WITH ORDINALITY AS c(run_id, task, ord)
         LEFT JOIN runs r ON r.id = c.run_id
         LEFT JOIN task_runs t ON t.run_id = c.run_id AND t.task = c.task
         ORDER BY c.ord",
    )
    .bind(&runs)
    .bind(&tasks)
    .fetch_all(&mut *connection)
    .await?;
    if rows.len() != claims.len() {
        return Err(StoreError::Database(format!(
            "a batch of {} claims read {} rows",
            claims.len(),
            rows.len()
        )));
    }
    let mut results: Vec<Option<StoreResult<AttemptRecord>>> = Vec::with_capacity(claims.len());
    let mut accepted = Accepted::default();
    // A task claimed earlier in the batch, by run, and by partition (for another run's claim).
    let mut claimed_here: HashSet<(i64, String)> = HashSet::new();
    let mut live_here: HashMap<(String, String, String), usize> = HashMap::new();
    let mut waits_for: Vec<(usize, usize)> = Vec::new();
    for (index, (claim, row)) in claims.iter().zip(&rows).enumerate() {
        let pipeline: Option<String> = get(row, 1)?;
        let Some(pipeline) = pipeline else {
            results.push(Some(Err(StoreError::NoSuchRun(claim.run))));
            continue;
        };
        let partition: String = get(row, 2)?;
        let known: bool = get::<Option<bool>>(row, 3)?.unwrap_or(false);
        if !known {
            results.push(Some(Err(StoreError::NotClaimable {
                run: claim.run,
                task: claim.task.clone(),
                state: "not part of the run".into(),
            })));
            continue;
        }
        let state: TaskState = get_parsed(row, 4)?;
        let state = if claimed_here.contains(&(claim.run.0, claim.task.clone())) {
            TaskState::Running
        } else {
            state
        };
        if !matches!(state, TaskState::Pending | TaskState::Waiting) {
            results.push(Some(Err(StoreError::NotClaimable {
                run: claim.run,
                task: claim.task.clone(),
                state: state.as_str().into(),
            })));
            continue;
        }
        let live: Option<i64> = get(row, 8)?;
        if let Some(live) = live {
            results.push(Some(Err(StoreError::AlreadyLive {
                run: claim.run,
                task: claim.task.clone(),
                attempt: AttemptId(live),
            })));
            continue;
        }
        let same_task = (pipeline.clone(), partition.clone(), claim.task.clone());
        if let Some(&first) = live_here.get(&same_task) {
            // Another run's claim of the same task and partition came first in this batch: its
            // attempt is the live one, known once it is inserted.
            waits_for.push((index, first));
            results.push(None);
            continue;
        }
        let epoch: i64 = get(row, 5)?;
        let attempts: u32 = get_count(row, 6)?;
        let not_before: Option<Millis> = get(row, 7)?;
        claimed_here.insert((claim.run.0, claim.task.clone()));
        live_here.insert(same_task, index);
        accepted.push(
            index,
            claim,
            pipeline,
            partition,
            epoch + 1,
            attempts + 1,
            not_before,
        );
        results.push(None);
    }
    let inserted = accepted.write(connection).await?;
    for (index, record) in inserted {
        results[index] = Some(Ok(record));
    }
    for (index, first) in waits_for {
        let attempt = match &results[first] {
            Some(Ok(record)) => record.id,
            _ => {
                return Err(StoreError::Database(
                    "a claimed attempt of the batch was not written".into(),
                ));
            }
        };
        results[index] = Some(Err(StoreError::AlreadyLive {
            run: claims[index].run,
            task: claims[index].task.clone(),
            attempt,
        }));
    }
    results
        .into_iter()
        .map(|result| {
            result
                .ok_or_else(|| StoreError::Database("a claim of the batch was not written".into()))
        })
        .collect()
}

/// The claims of a batch that pass their checks, as the columns of their rows.
#[derive(Default)]
struct Accepted {
    index: Vec<usize>,
    run: Vec<i64>,
    pipeline: Vec<String>,
    partition: Vec<String>,
    task: Vec<String>,
    number: Vec<i64>,
    owner: Vec<String>,
    epoch: Vec<i64>,
    lease_expires_at: Vec<Millis>,
    not_before: Vec<Option<Millis>>,
    at: Vec<Millis>,
    dir: Vec<String>,
    version: Vec<String>,
    task_version: Vec<Option<String>>,
    detail: Vec<String>,
}

impl Accepted {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        index: usize,
        claim: &ClaimAttempt,
        pipeline: String,
        partition: String,
        epoch: i64,
        number: u32,
        not_before: Option<Millis>,
    ) {
        self.index.push(index);
        self.run.push(claim.run.0);
        self.pipeline.push(pipeline);
        self.partition.push(partition);
        self.task.push(claim.task.clone());
        self.number.push(i64::from(number));
        self.owner.push(claim.owner.clone());
        self.epoch.push(epoch);
        self.lease_expires_at.push(claim.lease_expires_at);
        self.not_before.push(not_before);
        self.at.push(claim.at);
        self.dir.push(claim.dir.clone());
        self.version.push(claim.version.clone());
        self.task_version.push(claim.task_version.clone());
        self.detail.push(format!(
            "attempt {number} epoch {epoch} owner {}",
            claim.owner
        ));
    }

    /// Inserts the attempts, marks their task runs running and logs their claims, in one
    /// statement; returns each claim's index with its attempt.
    async fn write(
        self,
        connection: &mut PgConnection,
    ) -> StoreResult<Vec<(usize, AttemptRecord)>> {
        if self.index.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH c AS (
                 SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[],
                                      $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::TEXT[], $12::TEXT[],
                                      $13::TEXT[], $14::TEXT[])
                     WITH ORDINALITY AS c(run_id, pipeline, partition, task, number, owner, epoch, lease_expires_at,
                                          not_before, claimed_at, dir, version, task_version, detail, ord)),
             inserted AS (
                 INSERT INTO attempts (run_id, pipeline, partition, task, number, lease_owner, lease_epoch,
                                       lease_expires_at, not_before, claimed_at, dir, version, task_version)
                 SELECT run_id, pipeline, partition, task, number, owner, epoch, lease_expires_at, not_before,
                        claimed_at, dir, version, task_version
                 FROM c ORDER BY ord
                 RETURNING {ATTEMPT_COLUMNS}),
             tasks AS (
                 UPDATE task_runs t SET state = $15, attempts = c.number, lease_epoch = c.epoch,
                     first_started_at = coalesce(t.first_started_at, c.claimed_at), updated_at = c.claimed_at,
                     rerun_pending = FALSE
                 FROM c WHERE t.run_id = c.run_id AND t.task = c.task),
             logged AS (
                 INSERT INTO events (at, run_id, task, attempt_id, kind, detail)
                 SELECT c.claimed_at, c.run_id, c.task, i.id, $16, c.detail
                 FROM c JOIN inserted i ON i.run_id = c.run_id AND i.task = c.task
                 ORDER BY c.ord)
             SELECT * FROM inserted"
        )))
        .bind(&self.run)
        .bind(&self.pipeline)
        .bind(&self.partition)
        .bind(&self.task)
        .bind(&self.number)
        .bind(&self.owner)
        .bind(&self.epoch)
        .bind(&self.lease_expires_at)
        .bind(&self.not_before)
        .bind(&self.at)
        .bind(&self.dir)
        .bind(&self.version)
        .bind(&self.task_version)
        .bind(&self.detail)
        .bind(TaskState::Running.as_str())
        .bind(EventKind::AttemptClaimed.as_str())
        .fetch_all(&mut *connection)
        .await?;
        let mut by_task: HashMap<(i64, String), AttemptRecord> = HashMap::new();
        for row in &rows {
            let record = attempt_from_row(row)?;
            by_task.insert((record.run.0, record.task.clone()), record);
        }
        self.index
            .iter()
            .zip(self.run.iter().zip(&self.task))
            .map(|(index, (run, task))| {
                by_task
                    .remove(&(*run, task.clone()))
                    .map(|record| (*index, record))
                    .ok_or_else(|| {
                        StoreError::Database(format!(
                            "the attempt of task {task:?} in run {run} was not inserted"
                        ))
                    })
            })
            .collect()
    }
}

/// Records the starts of a batch in one statement: each is `Ok` if it changed, `StaleLease`
/// when the attempt already ended or its lease was taken over. An unknown pid keeps a known one.
pub(super) async fn mark_attempts_started(
    connection: &mut PgConnection,
    started: Vec<(AttemptId, i64, Option<u32>)>,
    at: Millis,
) -> StoreResult<Vec<StoreResult<()>>> {
    if started.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = started.iter().map(|(attempt, _, _)| attempt.0).collect();
    let epochs: Vec<i64> = started.iter().map(|(_, epoch, _)| *epoch).collect();
    let pids: Vec<Option<i64>> = started
        .iter()
        .map(|(_, _, pid)| pid.map(i64::from))
        .collect();
    let rows = sqlx::query(
        "UPDATE attempts SET pid = coalesce(s.pid, attempts.pid), started_at = $4
         FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[]) AS s(id, epoch, pid)
         WHERE attempts.id = s.id AND attempts.lease_epoch = s.epoch AND attempts.finished_at IS NULL
         RETURNING attempts.id, s.epoch",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(&pids)
    .bind(at)
    .fetch_all(&mut *connection)
    .await?;
    let mut changed = HashSet::new();
    for row in &rows {
        changed.insert((get::<i64>(row, 0)?, get::<i64>(row, 1)?));
    }
    Ok(started
        .into_iter()
        .map(|(attempt, epoch, _)| {
            if changed.contains(&(attempt.0, epoch)) {
                Ok(())
            } else {
                Err(StoreError::StaleLease { attempt, epoch })
            }
        })
        .collect())
}

/// Finishes a batch: one read for every check, one statement for every write. An attempt the
/// state does not hold fails the whole batch, as it would one at a time.
pub(super) async fn finish_attempts(
    connection: &mut PgConnection,
    finishes: Vec<FinishAttempt>,
) -> StoreResult<Vec<StoreResult<()>>> {
    if finishes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = finishes.iter().map(|finish| finish.attempt.0).collect();
    let rows = sqlx::query(
        "SELECT f.ord, a.id, a.run_id, a.task, a.number, a.lease_epoch, a.finished_at IS NOT NULL, t.lease_epoch
         FROM unnest($1::BIGINT[]) WITH ORDINALITY AS f(id, ord)
         LEFT JOIN attempts a ON a.id = f.id
         LEFT JOIN task_runs t ON t.run_id = a.run_id AND t.task = a.task
         ORDER BY f.ord",
    )
    .bind(&ids)
    .fetch_all(&mut *connection)
    .await?;
    if rows.len() != finishes.len() {
        return Err(StoreError::Database(format!(
            "a batch of {} finishes read {} rows",
            finishes.len(),
            rows.len()
        )));
    }
    let mut results = Vec::with_capacity(finishes.len());
    let mut ended_here: HashSet<i64> = HashSet::new();
    let mut writes = Finished::default();
    for (finish, row) in finishes.into_iter().zip(&rows) {
        let found: Option<i64> = get(row, 1)?;
        if found.is_none() {
            return Err(StoreError::Database(format!(
                "no attempt {} in the state store",
                finish.attempt
            )));
        }
        let run: i64 = get(row, 2)?;
        let task: String = get(row, 3)?;
        let number: u32 = get_count(row, 4)?;
        let epoch: i64 = get(row, 5)?;
        let finished: bool = get(row, 6)?;
        let Some(current_epoch) = get::<Option<i64>>(row, 7)? else {
            return Err(StoreError::Database(format!(
                "no task run {task:?} in run {run} for attempt {}",
                finish.attempt
            )));
        };
        if finished
            || ended_here.contains(&finish.attempt.0)
            || epoch != finish.epoch
            || current_epoch != finish.epoch
        {
            results.push(Err(StoreError::StaleLease {
                attempt: finish.attempt,
                epoch: finish.epoch,
            }));
            continue;
        }
        ended_here.insert(finish.attempt.0);
        writes.push(finish, run, task, number);
        results.push(Ok(()));
    }
    writes.write(connection).await?;
    Ok(results)
}

/// The finishes of a batch that pass their checks, as the columns of what they write.
#[derive(Default)]
struct Finished {
    id: Vec<i64>,
    run: Vec<i64>,
    task: Vec<String>,
    at: Vec<Millis>,
    outcome: Vec<&'static str>,
    exit_code: Vec<Option<i32>>,
    rows: Vec<Option<i64>>,
    metrics: Vec<Option<String>>,
    message: Vec<Option<String>>,
    charged: Vec<bool>,
    state: Vec<&'static str>,
    task_outcome: Vec<Option<&'static str>>,
    not_before: Vec<Option<Millis>>,
    charge: Vec<i64>,
    detail: Vec<String>,
    kind: Vec<&'static str>,
    next_detail: Vec<String>,
}

impl Finished {
    fn push(&mut self, finish: FinishAttempt, run: i64, task: String, number: u32) {
        let effect = finish.task_effect();
        let charged = finish.charged();
        let detail = finish.finished_detail(number);
        let next_detail = finish.next_detail();
        self.id.push(finish.attempt.0);
        self.run.push(run);
        self.task.push(task);
        self.at.push(finish.at);
        self.outcome.push(finish.outcome.as_str());
        self.exit_code.push(finish.exit_code);
        self.rows.push(finish.rows);
        self.metrics.push(finish.metrics);
        self.message.push(finish.message);
        self.charged.push(charged);
        self.state.push(effect.state.as_str());
        self.task_outcome.push(effect.outcome.map(Outcome::as_str));
        self.not_before.push(effect.not_before);
        self.charge.push(effect.charge);
        self.detail.push(detail);
        self.kind.push(effect.kind.as_str());
        self.next_detail.push(next_detail);
    }

    /// Ends the attempts, moves their task runs on and logs both events of each, in one
    /// statement.
    async fn write(self, connection: &mut PgConnection) -> StoreResult<()> {
        if self.id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH f AS (
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::INTEGER[],
                                      $7::BIGINT[], $8::TEXT[], $9::TEXT[], $10::BOOLEAN[], $11::TEXT[], $12::TEXT[],
                                      $13::BIGINT[], $14::BIGINT[], $15::TEXT[], $16::TEXT[], $17::TEXT[])
                     WITH ORDINALITY AS f(id, run_id, task, at, outcome, exit_code, rows, metrics, message, charged,
                                          state, task_outcome, not_before, charge, detail, kind, next_detail, ord)),
             ended AS (
                 UPDATE attempts a SET finished_at = f.at, outcome = f.outcome, exit_code = f.exit_code, rows = f.rows,
                     metrics = f.metrics, message = f.message, charged = f.charged
                 FROM f WHERE a.id = f.id),
             moved AS (
                 UPDATE task_runs t SET state = f.state, outcome = f.task_outcome, not_before = f.not_before,
                     charged = t.charged + f.charge, message = f.message, updated_at = f.at
                 FROM f WHERE t.run_id = f.run_id AND t.task = f.task)
             INSERT INTO events (at, run_id, task, attempt_id, kind, detail)
             SELECT f.at, f.run_id, f.task, f.id, e.kind, e.detail
             FROM f CROSS JOIN LATERAL (VALUES (1, $18, f.detail), (2, f.kind, f.next_detail)) AS e(n, kind, detail)
             ORDER BY f.ord, e.n",
        )
        .bind(&self.id)
        .bind(&self.run)
        .bind(&self.task)
        .bind(&self.at)
        .bind(&self.outcome)
        .bind(&self.exit_code)
        .bind(&self.rows)
        .bind(&self.metrics)
        .bind(&self.message)
        .bind(&self.charged)
        .bind(&self.state)
        .bind(&self.task_outcome)
        .bind(&self.not_before)
        .bind(&self.charge)
        .bind(&self.detail)
        .bind(&self.kind)
        .bind(&self.next_detail)
        .bind(EventKind::AttemptFinished.as_str())
        .execute(&mut *connection)
        .await?;
        Ok(())
    }
}

/// Registers the versions a pipeline file names, in a few statements for the whole file when
/// every version is either known already or new to a task named once (the usual case: a run
/// of an unchanged file, or a first run). A version named again after it was retired, or a task
/// named twice, goes one at a time (`one_at_a_time`), where the rules are spelled out.
pub(super) async fn register_task_versions(
    connection: &mut PgConnection,
    pipeline: &str,
    versions: Vec<NewTaskVersion>,
    at: Millis,
) -> StoreResult<Option<Vec<NewTaskVersion>>> {
    let tasks: Vec<&str> = versions.iter().map(|new| new.task.as_str()).collect();
    let rows = sqlx::query(
        "SELECT task, version, status FROM task_versions WHERE pipeline = $1 AND task = ANY($2)",
    )
    .bind(pipeline)
    .bind(&tasks)
    .fetch_all(&mut *connection)
    .await?;
    let mut status: HashMap<(String, String), String> = HashMap::new();
    let mut promoted: HashMap<String, String> = HashMap::new();
    for row in &rows {
        let task: String = get(row, 0)?;
        let version: String = get(row, 1)?;
        let state: String = get(row, 2)?;
        if state == "promoted" {
            promoted.insert(task.clone(), version.clone());
        }
        status.insert((task, version), state);
    }
    let mut named = HashSet::new();
    let mut fresh = Vec::new();
    for new in &versions {
        if !named.insert(new.task.as_str()) {
            return Ok(Some(versions));
        }
        match status
            .get(&(new.task.clone(), new.version.clone()))
            .map(String::as_str)
        {
            Some("retired") => return Ok(Some(versions)),
            Some(_) => {}
            None => fresh.push(new),
        }
    }
    if fresh.is_empty() {
        return Ok(None);
    }
    let mut task = Vec::new();
    let mut version = Vec::new();
    let mut spec = Vec::new();
    let mut state = Vec::new();
    let mut reason = Vec::new();
    for new in fresh {
        let (decided, why) =
            new_version_status(promoted.get(&new.task).map(String::as_str), new.canary);
        task.push(new.task.as_str());
        version.push(new.version.as_str());
        spec.push(new.spec.as_str());
        state.push(decided);
        reason.push(why);
    }
    // A canary a newer version replaces never finished its rollout; a version promoted now
    // retires the one promoted before it.
    sqlx::query(
        "WITH n AS (SELECT * FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[])
                        AS n(task, version, spec, status, reason)),
              replaced AS (
                  UPDATE task_versions v SET status = 'retired', updated_at = $7,
                      reason = CASE WHEN v.status = 'canary'
                                    THEN 'replaced by version ' || n.version || ' before it was promoted'
                                    ELSE 'replaced by version ' || n.version END
                  FROM n WHERE v.pipeline = $1 AND v.task = n.task
                      AND (v.status = 'canary' OR (v.status = 'promoted' AND n.status = 'promoted')))
         INSERT INTO task_versions (pipeline, task, version, spec, status, clean, failed, reason, created_at, updated_at)
         SELECT $1, task, version, spec, status, 0, 0, reason, $7, $7 FROM n",
    )
    .bind(pipeline)
    .bind(&task)
    .bind(&version)
    .bind(&spec)
    .bind(&state)
    .bind(&reason)
    .bind(at)
    .execute(&mut *connection)
    .await?;
    Ok(None)
}
