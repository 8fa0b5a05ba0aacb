//! Dispatch: which ready task starts next, under the concurrency cap, and how its attempt is
//! claimed (one transaction per batch) and launched with the task contract's environment.

use super::*;
use keel_model::{InheritEnv, StatusMatch};
use std::collections::BTreeMap;

impl Core {
    /// Takes up to `room` tasks off the ready queue that may start an attempt now. Tasks that
    /// must first poll their sensor start the poll instead; tasks a resource holds back are
    /// parked until it lets them go.
    pub(crate) fn pick_ready(&mut self, book: &mut Book, room: usize) -> Vec<(usize, TaskIndex)> {
        let mut picked: Vec<(usize, TaskIndex)> = Vec::new();
        while picked.len() < room {
            let Some((run_index, task)) = book.ready.pop_front() else {
                break;
            };
            book.ready_stamped = book.ready_stamped.saturating_sub(1);
            let active = &book.runs[run_index];
            if active.cancelling
                || active.finished
                || !matches!(
                    active.slots[task].state,
                    TaskState::Pending | TaskState::Waiting
                )
                || picked.contains(&(run_index, task))
            {
                continue;
            }
            // Queued earlier, but an upstream task was reset for a rerun since, or a retry is not
            // due yet: it is queued again when its inputs complete or its timer fires.
            let slot = &active.slots[task];
            let not_due =
                slot.state == TaskState::Waiting && slot.not_before.is_some_and(|at| at > book.now);
            if active.remaining[task] > 0 || not_due {
                // Not ready after all: the wait is measured again from when it is.
                book.runs[run_index].slots[task].ready_since = None;
                continue;
            }
            if let Some(reason) = self.flag_skip(book, run_index, task) {
                book.flag_skips.push((run_index, task, reason));
                continue;
            }
            if !self.partition_may_start(book, run_index) {
                book.held_for_partitions.push((run_index, task));
                continue;
            }
            if !self.earlier_inputs_allow(book, run_index, task) {
                continue;
            }
            let active = &book.runs[run_index];
            // The calendar's command decides first, then the sensor waits for the data.
            if self.commands[self.base_task(task)].calendar.is_some()
                && !active.calendar_passed[task]
                && active.slots[task].attempts == 0
            {
                self.start_calendar(book, run_index, task);
                continue;
            }
            if self.spec.tasks[self.base_task(task)].wait_for.is_some()
                && !active.sensor_ready[task]
                && active.slots[task].attempts == 0
            {
                self.start_sensor(book, run_index, task);
                continue;
            }
            // An expanded task starts no attempt of its own: it runs its items.
            if !self.is_item(task) && self.spec.tasks[task].expand.is_some() {
                self.open_expansion(book, run_index, task);
                continue;
            }
            if !self.is_item(task)
                && self.spec.tasks[task].repeat.is_some()
                && self.hold_until_window(book, run_index, task)
            {
                continue;
            }
            if !self.task_uses[self.base_task(task)].is_empty()
                && !self.admit(book, run_index, task)
            {
                continue;
            }
            picked.push((run_index, task));
        }
        picked
    }

    /// Notes when the tasks queued since the last look became ready, for the ready-wait their
    /// start reports. Only the entries added since are looked at, so a step costs what it queued.
    pub(crate) fn stamp_ready(&self, book: &mut Book) {
        let now = book.now;
        for index in book.ready_stamped..book.ready.len() {
            let (run_index, task) = book.ready[index];
            let active = &mut book.runs[run_index];
            let slot = &mut active.slots[task];
            let due = slot.not_before.is_none_or(|at| at <= now);
            if active.remaining[task] == 0
                && due
                && matches!(slot.state, TaskState::Pending | TaskState::Waiting)
            {
                slot.ready_since.get_or_insert(now);
            }
        }
        book.ready_stamped = book.ready.len();
    }

    /// Tells the observer how many tasks wait in the ready queue, when that changed.
    pub(crate) fn report_queue_depth(&mut self, book: &mut Book) {
        let ready = book.ready.len();
        if book.queue_depth_reported != Some(ready) {
            book.queue_depth_reported = Some(ready);
            (self.observer)(Progress::QueueDepth { ready });
        }
    }

    /// `max_active_partitions`: a run may start tasks only while fewer than that many runs
    /// before it (in the order they were handed to the engine, partition order for a range) are
    /// unfinished; the ones after it wait for them, so partitions start in order.
    fn partition_may_start(&self, book: &Book, run_index: usize) -> bool {
        let Some(limit) = self.spec.max_active_partitions else {
            return true;
        };
        let unfinished_before = book.runs[..run_index]
            .iter()
            .filter(|earlier| !earlier.finished)
            .count();
        unfinished_before < limit as usize
    }

    /// The `{param.NAME}` values of a run: its pass's params, none for a run of no pass (or of
    /// a pass the pipeline file no longer has).
    pub(crate) fn params_of(&self, record: &RunRecord) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        record
            .pass
            .as_deref()
            .and_then(|pass| self.spec.pass(pass))
            .map_or(&NONE, |pass| &pass.params)
    }

    pub(crate) fn attempt_dir(&self, run: RunId, task: TaskIndex, number: u32) -> PathBuf {
        // One directory per attempt, flat under the run: every inode created costs, and an
        // attempt already creates its directory and its record file.
        self.run_dir(run)
            .join(format!("{}.{number}", self.name(task)))
    }

    /// The directory of a poll before a task's first attempt (`kind`: `sensor`, `when`),
    /// named by the step's time.
    pub(crate) fn poll_dir(&self, run: RunId, task: TaskIndex, kind: &str, now: Millis) -> PathBuf {
        self.run_dir(run)
            .join(format!("{}.{kind}.{now}", self.name(task)))
    }

    /// Where a run's attempts and polls keep their files. Runs are numbered per store, from 1,
    /// so the store's identity keeps two stores' runs apart.
    fn run_dir(&self, run: RunId) -> PathBuf {
        self.config
            .attempts_dir
            .join(&*self.store_id)
            .join(run.0.to_string())
    }

    /// Hands a poll's launch to the driver; it counts against the concurrency cap while it
    /// runs.
    pub(crate) fn push_poll(
        &self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        launch: Launch,
    ) {
        book.sensing += 1;
        book.effects.push(Effect::PollSensor {
            run_index,
            task,
            launch: Box::new(launch),
        });
    }

    /// The launch of a task's attempt (`sensor` false) or of a poll of its sensor: the command
    /// with its templates expanded, the working directory and the environment of docs/tasks.md,
    /// with the task's timeout and stall limit.
    pub(crate) fn task_launch(
        &mut self,
        record: &RunRecord,
        task: TaskIndex,
        sensor: Option<usize>,
        attempt: u32,
        span: SpanId,
        dir: PathBuf,
    ) -> Launch {
        self.task_launch_of(record, task, sensor, attempt, span, dir, None)
    }

    /// [`Core::task_launch`] of a version of the task: the file's, or `previous`, a stored
    /// version a rollout keeps running (its command, working directory and environment).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn task_launch_of(
        &mut self,
        record: &RunRecord,
        task: TaskIndex,
        sensor: Option<usize>,
        attempt: u32,
        span: SpanId,
        dir: PathBuf,
        previous: Option<std::sync::Arc<super::rollout::PreviousVersion>>,
    ) -> Launch {
        let own_commands = &self.commands[self.base_task(task)];
        let commands = previous
            .as_ref()
            .map_or(own_commands, |previous| &previous.commands);
        let task_spec = previous
            .as_ref()
            .map_or(&self.spec.tasks[self.base_task(task)], |previous| {
                &previous.spec
            });
        // An item's attempts are named by the item (`box_scores[0021]`): its `{task}`,
        // `KEEL_TASK` and idempotency key are its own.
        let task_name = self.name(task).to_string();
        let item = self.item_of(task).cloned();
        let run_id = record.id.0.to_string();
        let attempt_text = attempt.to_string();
        let values = TemplateValues {
            date: &record.partition,
            partition: &record.partition,
            run_id: &run_id,
            task: &task_name,
            attempt: &attempt_text,
            pass: record.pass.as_deref().unwrap_or_default(),
            params: self.params_of(record),
        };
        let templates = match sensor {
            Some(stage) => commands
                .sensors
                .get(stage)
                .map(Vec::as_slice)
                .unwrap_or_default(),
            None => &commands.task,
        };
        let command: Vec<String> = templates
            .iter()
            .map(|part| part.expand_item(&values, item.as_ref()))
            .collect();
        let mut keel_variables = vec![
            ("KEEL_PIPELINE".to_string(), self.spec.name.clone()),
            ("KEEL_RUN_ID".to_string(), run_id.clone()),
            ("KEEL_TASK".to_string(), task_name.clone()),
            ("KEEL_PARTITION".to_string(), record.partition.clone()),
            ("KEEL_ATTEMPT".to_string(), attempt_text.clone()),
            // Empty for a run of no pass, never inherited: a task started by a Keel that
            // itself runs in a pass's task must not take that pass for its own.
            (
                "KEEL_PASS".to_string(),
                record.pass.clone().unwrap_or_default(),
            ),
            // A pass processes the partition again, maybe with other params: its own key, so
            // that a task deduplicating on the key does not skip the pass's work.
            (
                "KEEL_IDEMPOTENCY_KEY".to_string(),
                match &record.pass {
                    None => format!("{}:{}:{}", self.spec.name, task_name, record.partition),
                    Some(pass) => format!(
                        "{}:{}:{}:{pass}",
                        self.spec.name, task_name, record.partition
                    ),
                },
            ),
            (
                "KEEL_RESULT".to_string(),
                dir.join(keel_exec::supervisor::RESULT_FILE)
                    .display()
                    .to_string(),
            ),
            (
                "KEEL_HEARTBEAT".to_string(),
                dir.join(keel_exec::supervisor::HEARTBEAT_FILE)
                    .display()
                    .to_string(),
            ),
            (
                "TRACEPARENT".to_string(),
                TraceId::from_stored(&record.trace_id).traceparent(span),
            ),
        ];
        if let Some(item) = &item {
            keel_variables.push(("KEEL_ITEM".to_string(), item.text()));
        }
        let (mut env, clear_env) =
            self.task_env(task, &values, keel_variables, &task_spec.context, commands);
        // A relative `cwd` is relative to the pipeline file's directory (`join` keeps an
        // absolute one as it is).
        let base = self.config.launch_context.pipeline_dir.as_ref();
        let cwd = match (&commands.cwd, base) {
            (Some(cwd), Some(base)) => Some(base.join(cwd.expand_item(&values, item.as_ref()))),
            (Some(cwd), None) => Some(PathBuf::from(cwd.expand_item(&values, item.as_ref()))),
            (None, base) => base.cloned(),
        };
        // What a shell would say: programs that read $PWD must not see Keel's directory.
        if let Some(dir) = cwd.as_ref().filter(|dir| dir.is_absolute()) {
            env.push(("PWD".to_string(), dir.display().to_string()));
        }
        let http = match (&task_spec.http, sensor) {
            (Some(spec), None) => Some(self.http_call(task, spec, &values, &env, clear_env)),
            (_, Some(stage)) => task_spec
                .sensor(stage)
                .and_then(|sensor| sensor.http.as_ref())
                .map(|spec| {
                    let mut call = self.http_call(task, spec, &values, &env, clear_env);
                    call.on_status.extend(sensor_statuses(&call.on_status));
                    call
                }),
            _ => None,
        };
        Launch {
            dir,
            command,
            env,
            clear_env,
            cwd,
            timeout: task_spec.timeout,
            heartbeat: task_spec.heartbeat,
            kill_grace: self.config.kill_grace,
            log_cap: self.config.log_cap,
            http,
        }
    }

    /// A resource's health probe (`ready`) as a GET, with its timeout; its credential from
    /// Keel's own environment.
    pub(crate) fn probe_call(&self, resource: usize) -> (keel_exec::HttpCall, std::time::Duration) {
        let resource_spec = &self.spec.resources[resource];
        let probe = resource_spec
            .ready
            .as_ref()
            .expect("a probe is asked for only for a resource that has one");
        let spec = keel_model::HttpSpec {
            url: probe.url.clone(),
            method: "GET".to_string(),
            headers: Default::default(),
            query: Default::default(),
            body: keel_model::HttpBody::None,
            auth: probe.auth.clone(),
            on_status: Vec::new(),
            connect_timeout: probe.timeout,
        };
        let keel_env = &self.config.launch_context.keel_env;
        let mut call = self.request(&spec, &|text| text.to_string(), keel_env, false, || {
            format!("resource {:?}", resource_spec.name)
        });
        call.pool = resource_spec.name.clone();
        call.pool_size = resource_spec.concurrency.map(|cap| cap as usize);
        (call, probe.timeout)
    }

    /// The request of an HTTP task's attempt: its templates expanded, the query added to the
    /// URL, `Idempotency-Key` and `traceparent` set, and its credential read from the
    /// environment the task would have had as a process (`env`, and Keel's own unless
    /// `clear_env`). A variable that is not set fails the attempt with a message naming it.
    fn http_call(
        &self,
        task: TaskIndex,
        spec: &keel_model::HttpSpec,
        values: &TemplateValues<'_>,
        env: &[(String, String)],
        clear_env: bool,
    ) -> keel_exec::HttpCall {
        let item = self.item_of(task);
        let expand = |text: &str| Template::parse(text).expand_item(values, item);
        let task_spec = &self.spec.tasks[self.base_task(task)];
        let mut call = self.request(spec, &expand, env, clear_env, || {
            format!("task {:?}", task_spec.name)
        });
        for (variable, header) in [
            ("KEEL_IDEMPOTENCY_KEY", "Idempotency-Key"),
            ("TRACEPARENT", "traceparent"),
        ] {
            if let Some((_, value)) = env.iter().rev().find(|(key, _)| key == variable) {
                call.headers.push((header.to_string(), value.clone()));
            }
        }
        if let Some(resource) = task_spec.uses.first().and_then(|name| {
            self.spec
                .resources
                .iter()
                .find(|resource| &resource.name == name)
        }) {
            call.pool = resource.name.clone();
            call.pool_size = resource.concurrency.map(|cap| cap as usize);
        }
        call
    }

    /// A request from `spec`, its strings through `expand`, its credential read from `env` and
    /// (unless `clear_env`) Keel's own environment; `owner` names whose request it is in the
    /// message of a variable that is not set.
    fn request(
        &self,
        spec: &keel_model::HttpSpec,
        expand: &dyn Fn(&str) -> String,
        env: &[(String, String)],
        clear_env: bool,
        owner: impl Fn() -> String,
    ) -> keel_exec::HttpCall {
        let lookup = |name: &str| -> Option<String> {
            env.iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .or_else(|| {
                    (!clear_env)
                        .then(|| {
                            self.config
                                .launch_context
                                .keel_env
                                .iter()
                                .rev()
                                .find(|(key, _)| key == name)
                                .map(|(_, value)| value.clone())
                        })
                        .flatten()
                })
                .filter(|value| !value.is_empty())
        };
        let missing = |name: &str, field: &str| {
            keel_exec::Credential::Missing(format!(
                "environment variable {name} named by auth.{field} of {} is not set (or empty); set it in keel's environment or the task's env_file",
                owner()
            ))
        };
        let mut url = expand(&spec.url);
        for (name, value) in &spec.query {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&query_encode(name));
            url.push('=');
            url.push_str(&query_encode(&expand(value)));
        }
        let headers: Vec<(String, String)> = spec
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), expand(value)))
            .collect();
        let body = match &spec.body {
            keel_model::HttpBody::None => None,
            keel_model::HttpBody::Json(document) => Some((
                serde_json::to_vec(&expand_json(document, expand)).unwrap_or_default(),
                "application/json".to_string(),
            )),
            keel_model::HttpBody::Text { text, content_type } => {
                Some((expand(text).into_bytes(), content_type.clone()))
            }
        };
        let credential = spec.auth.as_ref().map(|auth| match auth {
            keel_model::HttpAuth::BearerEnv(name) => match lookup(name) {
                Some(token) => keel_exec::Credential::Bearer(keel_exec::Secret(token)),
                None => missing(name, "bearer_env"),
            },
            keel_model::HttpAuth::Basic { user, password_env } => match lookup(password_env) {
                Some(password) => keel_exec::Credential::Basic {
                    user: user.clone(),
                    password: keel_exec::Secret(password),
                },
                None => missing(password_env, "basic_password_env"),
            },
            keel_model::HttpAuth::TokenCommand { command, ttl } => {
                keel_exec::Credential::TokenCommand {
                    command: command.clone(),
                    ttl: *ttl,
                    env: env.to_vec(),
                }
            }
        });
        keel_exec::HttpCall {
            pool: String::new(),
            pool_size: None,
            method: spec.method.clone(),
            url,
            headers,
            body,
            credential,
            on_status: spec.on_status.clone(),
            connect_timeout: spec.connect_timeout,
        }
    }

    /// A task's environment, in order, later entries winning: what it inherits from Keel, its
    /// env file, its `env`, `PYTHONUNBUFFERED=1` unless those set it (so a printing Python task
    /// shows signs of life), then Keel's own variables, which nothing overrides. Returns it with
    /// whether the task starts from it alone rather than from Keel's environment.
    fn task_env(
        &self,
        task: TaskIndex,
        values: &TemplateValues<'_>,
        keel_variables: Vec<(String, String)>,
        context: &keel_model::TaskContext,
        commands: &Commands,
    ) -> (Vec<(String, String)>, bool) {
        let surroundings = &self.config.launch_context;
        let mut env: Vec<(String, String)> = Vec::new();
        // A secret goes only to the tasks that declare it: when any task declares one, every
        // task starts from Keel's environment without those names (the driver adds a task's
        // own secrets when it launches it).
        let secret = |name: &String| {
            self.spec
                .tasks
                .iter()
                .any(|task| task.secrets.contains(name))
        };
        let any_secrets = self.spec.tasks.iter().any(|task| !task.secrets.is_empty());
        let clear_env = match &context.inherit_env {
            InheritEnv::All if any_secrets => {
                let inherited = surroundings.keel_env.iter();
                env.extend(inherited.filter(|(name, _)| !secret(name)).cloned());
                true
            }
            InheritEnv::All => false,
            InheritEnv::Nothing => true,
            InheritEnv::Only(names) => {
                let inherited = surroundings.keel_env.iter();
                env.extend(
                    inherited
                        .filter(|(name, _)| names.contains(name) && !secret(name))
                        .cloned(),
                );
                true
            }
        };
        let own = env.len();
        if let Some(file) = &context.env_file {
            env.extend(
                surroundings
                    .env_files
                    .get(file)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        let variables = commands.env.iter();
        let item = self.item_of(task);
        env.extend(variables.map(|(name, value)| (name.clone(), value.expand_item(values, item))));
        if !env[own..]
            .iter()
            .any(|(name, _)| name == "PYTHONUNBUFFERED")
        {
            env.push(("PYTHONUNBUFFERED".to_string(), "1".to_string()));
        }
        env.extend(keel_variables);
        env.extend(self.config.extra_env.iter().cloned());
        let secrets = &self.spec.tasks[self.base_task(task)].secrets;
        if !secrets.is_empty() {
            // Names only: the driver resolves them as it launches the attempt.
            env.push((
                keel_exec::supervisor::REDACT_VARIABLE.to_string(),
                secrets.join(","),
            ));
        }
        (env, clear_env)
    }

    /// Marks a claimed attempt running and describes its launch: the command with its
    /// templates expanded and the task contract's environment.
    pub(crate) fn prepare_attempt(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        attempt: &AttemptRecord,
    ) -> Launch {
        let now = book.now;
        let record = book.runs[run_index].record.clone();
        let dir = PathBuf::from(&attempt.dir);
        // A new attempt runs with whatever landed upstream: no rerun is owed any more (the claim
        // cleared the stored mark too).
        book.runs[run_index].needs_rerun[task] = false;
        let slot = &mut book.runs[run_index].slots[task];
        slot.state = TaskState::Running;
        slot.attempts = attempt.number;
        slot.first_started_at.get_or_insert(now);
        let ready_wait = slot.ready_since.take().map(|since| (now - since).max(0));
        let trace = book.runs[run_index].trace;
        let span = trace.attempt_span(self.name(task), attempt.number);
        // The version the claim recorded: under a canary rollout, the new one on the canary's
        // partitions and the promoted one elsewhere.
        let choice = self.version_choice(&record, task);
        let previous = match &choice {
            VersionChoice::Previous(previous) => Some(previous.clone()),
            VersionChoice::Current { canary } => {
                if *canary {
                    self.announce_canary(book, run_index, task);
                }
                None
            }
        };
        let mut launch =
            self.task_launch_of(&record, task, None, attempt.number, span, dir, previous);
        if self.is_item(task) {
            self.item_progressed(&mut book.runs[run_index], task, now);
        }
        // KEEL_MISSING: soft inputs and the items of expanded inputs of this partition, then
        // soft inputs on earlier partitions.
        let inputs_of = self.base_task(task);
        let missing_here = self.missing_inputs(&book.runs[run_index], inputs_of);
        let soft_earlier = self.spec.tasks[inputs_of]
            .edges
            .earlier
            .iter()
            .any(|input| input.soft);
        if missing_here.is_some() || soft_earlier {
            let mut missing: Vec<String> = missing_here
                .filter(|names| !names.is_empty())
                .into_iter()
                .collect();
            missing.extend(self.missing_earlier_inputs(book, run_index, inputs_of));
            launch
                .env
                .push(("KEEL_MISSING".to_string(), missing.join(",")));
        }
        let mut live = Live::new(run_index, task, attempt.number, attempt.lease_epoch, now);
        live.task_version = attempt.task_version.clone();
        book.live.insert(attempt.id, live);
        let task_name = self.name(task).to_string();
        (self.observer)(Progress::AttemptStarted {
            run: record.id,
            partition: record.partition.clone(),
            task: task_name,
            attempt: attempt.number,
            trace,
            span,
            at: now,
            ready_wait,
        });
        launch
    }

    pub(crate) fn fire_timers(&mut self, book: &mut Book) -> Vec<(usize, usize)> {
        let now = book.now;
        let mut gates_due = Vec::new();
        while let Some(Reverse((at, run_index, wake))) = book.timers.peek().copied() {
            if at > now {
                break;
            }
            book.timers.pop();
            match wake {
                Wake::Task(task)
                    if !self.is_item(task)
                        && book.runs[run_index].expansions.contains_key(&task)
                        && book.runs[run_index].slots[task].state == TaskState::Running =>
                {
                    // An expanded task's stall is due: its quorum is judged again.
                    book.followups
                        .push_back(Followup::JudgeExpansion { run_index, task });
                }
                Wake::Task(task) => {
                    if matches!(
                        book.runs[run_index].slots[task].state,
                        TaskState::Waiting | TaskState::Pending
                    ) {
                        book.ready.push_back((run_index, task));
                    }
                }
                Wake::Gate(gate) => gates_due.push((run_index, gate)),
                Wake::Probe(resource) => {
                    let probe = &mut book.probes[resource];
                    if probe.wake_at.is_some_and(|wake| wake <= now) {
                        probe.wake_at = None;
                    }
                    book.ready.extend(probe.waiters.drain(..));
                }
                Wake::Resource(resource) => {
                    if book.breaker_wake[resource].is_some_and(|wake| wake <= now) {
                        book.breaker_wake[resource] = None;
                    }
                    book.ready.extend(book.breaker_waiters[resource].drain(..));
                }
            }
        }
        gates_due
    }
}

/// A JSON document with every string expanded as a template.
fn expand_json(value: &serde_json::Value, expand: &dyn Fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(expand(text)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|item| expand_json(item, expand)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| (key.clone(), expand_json(item, expand)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A query name or value, percent-encoded (`application/x-www-form-urlencoded` leaves more
/// alone, but this is always safe).
fn query_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// What an HTTP sensor's statuses mean besides the task mapping: 204 (nothing yet), 404 (not
/// there yet) and 425 (too early) are *not ready*, unless the sensor's own `on_status` names
/// that code or a class holding it.
fn sensor_statuses(own: &[(StatusMatch, Outcome)]) -> Vec<(StatusMatch, Outcome)> {
    [204, 404, 425]
        .into_iter()
        .filter(|code| !own.iter().any(|(pattern, _)| pattern.matches(*code)))
        .map(|code| (StatusMatch::Code(code), Outcome::NotReady))
        .collect()
}
