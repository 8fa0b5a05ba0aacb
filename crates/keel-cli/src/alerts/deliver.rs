//! Delivering alerts: the book's messages go through a channel to one task that posts them to
//! the webhook and pipes them to the command, each bounded by the alerts' `timeout`. The engine's
//! loop only takes the book's lock for the time of a decision and never waits for a delivery.
//! A delivery that fails is logged (never with the webhook's URL) and counted.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use keel_engine::Progress;
use keel_model::{AlertsSpec, EventKind, Millis, WebhookUrl};
use keel_store::{AnyStore, Store};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::book::{AlertBook, AlertMessage, AlertPolicy, Status};
use crate::http_post::{self, AuthorityProblem, split_authority};
use crate::metrics::Metrics;
use crate::serve_log::Logger;

/// How often time-driven alerts (a degraded run's grace, a breaker open too long) are checked.
const TICK: Duration = Duration::from_secs(1);

/// Where a webhook posts. Deliberately not `Debug`: the path of a Slack URL is its secret.
struct Webhook {
    host: String,
    port: u16,
    /// The path and query, which may hold a token.
    target: String,
}

impl Webhook {
    /// Reads `http://host[:port][/path]`. Errors never quote the URL.
    fn parse(url: &str) -> Result<Webhook> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!(
                "the alerts webhook URL must start with http:// (https needs a relay or a command sink)"
            );
        };
        let (authority, target) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_string()),
            Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = split_authority(authority).map_err(|problem| match problem {
            AuthorityProblem::Credentials => {
                anyhow::anyhow!("the alerts webhook URL must not carry a user or password")
            }
            AuthorityProblem::NoHost => anyhow::anyhow!("the alerts webhook URL has no host"),
            // Never the port as written: whatever follows the host may be part of the secret.
            AuthorityProblem::BadPort(_)
            | AuthorityProblem::UnclosedIpv6
            | AuthorityProblem::JunkAfterIpv6 => {
                anyhow::anyhow!("the alerts webhook URL has a port that is not a number")
            }
        })?;
        if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
            bail!("the alerts webhook URL has spaces or control characters in its path");
        }
        Ok(Webhook { host, port, target })
    }

    /// One HTTP/1.1 POST of `body`, off the runtime; a 2xx answer is success.
    async fn post(&self, body: &[u8], timeout: Duration) -> Result<(), String> {
        let (host, port, target) = (self.host.clone(), self.port, self.target.clone());
        let body = body.to_vec();
        let posted = tokio::task::spawn_blocking(move || {
            http_post::post_json(&host, port, &target, &body, timeout)
        })
        .await
        .map_err(|_| "the delivery thread failed".to_string())?;
        match posted? {
            200..=299 => Ok(()),
            code => Err(format!("it answered HTTP {code}")),
        }
    }
}

/// The sinks, as resolved when `keel serve` starts.
struct Sinks {
    webhook: Option<Webhook>,
    command: Option<Vec<String>>,
    /// Where the command runs: the pipeline's directory.
    command_dir: PathBuf,
    timeout: Duration,
}

/// The alerts of one serving pipeline: feed it events with [`Alerts::observe`].
#[derive(Clone)]
pub struct Alerts {
    book: Arc<Mutex<AlertBook>>,
    outbox: mpsc::UnboundedSender<AlertMessage>,
    /// Tasks that just succeeded, for the ticker to judge for anomalies.
    succeeded: Arc<Mutex<Vec<super::watch::Succeeded>>>,
}

/// The delivery task and the ticker, to wind down when serving stops.
pub struct Delivery {
    deliverer: JoinHandle<()>,
    ticker: JoinHandle<()>,
    timeout: Duration,
}

impl Alerts {
    /// Resolves the sinks (the webhook URL from its environment variable) and starts delivering.
    /// `store` is read (each tick, only while a run is degraded) for `keel accept`s, which
    /// other processes record there.
    pub fn start(
        spec: &AlertsSpec,
        watch: super::watch::Watch,
        pipeline: &str,
        pipeline_dir: PathBuf,
        metrics: Metrics,
        store: AnyStore,
        logger: Logger,
    ) -> Result<(Alerts, Delivery)> {
        let webhook = match &spec.webhook {
            None => None,
            Some(WebhookUrl::Literal(url)) => Some(Webhook::parse(url)?),
            Some(WebhookUrl::Env(name)) => match std::env::var(name) {
                Ok(url) if !url.trim().is_empty() => Some(Webhook::parse(url.trim())?),
                _ => bail!(
                    "[alerts] webhook takes its URL from the environment variable {name:?}, which is not set; export it before `keel serve`, or remove the webhook"
                ),
            },
        };
        let sinks = Sinks {
            webhook,
            command: spec.command.clone(),
            command_dir: pipeline_dir,
            timeout: spec.timeout,
        };
        let policy = AlertPolicy {
            max_per_hour: spec.max_per_hour,
            degraded_grace: spec.degraded_grace.as_millis() as Millis,
            breaker_open_for: spec.breaker_open_for.as_millis() as Millis,
        };
        let book = Arc::new(Mutex::new(AlertBook::new(pipeline, policy)));
        let (outbox, inbox) = mpsc::unbounded_channel();
        let alerts = Alerts {
            book,
            outbox,
            succeeded: Arc::default(),
        };
        let pipeline = pipeline.to_string();
        let deliverer = tokio::spawn(deliver_all(inbox, sinks, metrics, logger));
        let ticking = alerts.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            let super::watch::Watch {
                mut slos,
                mut report,
                mut quotas,
            } = watch;
            loop {
                interval.tick().await;
                if let Some((date, text)) = report.due(&store, now_millis()).await {
                    let message = ticking.lock().daily_report(&date, text, now_millis());
                    ticking.send(vec![message]);
                }
                // SLO burn rates, read from the store about once a minute.
                for (slo, burning) in slos.due(&store, &pipeline, now_millis()).await {
                    let messages = ticking.lock().slo_burn(&slo, burning, now_millis());
                    ticking.send(messages);
                }
                for quota in quotas.due(&store, now_millis()).await {
                    let messages = ticking.lock().quota(&quota, now_millis());
                    ticking.send(messages);
                }
                let messages = ticking.lock().tick(now_millis());
                ticking.send(messages);
                let succeeded = std::mem::take(
                    &mut *ticking
                        .succeeded
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                );
                if !succeeded.is_empty() {
                    let (found, later) =
                        super::watch::anomalies(&store, &pipeline, succeeded, now_millis()).await;
                    ticking
                        .succeeded
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .extend(later);
                    for anomaly in found {
                        let messages = ticking.lock().anomaly(
                            &anomaly.task,
                            &anomaly.metric,
                            anomaly.run,
                            &anomaly.partition,
                            anomaly.detail,
                            now_millis(),
                        );
                        ticking.send(messages);
                    }
                }
                let degraded = ticking.lock().degraded_runs();
                for (run, since) in degraded {
                    // A store that cannot be read now is read again on the next tick.
                    let Ok(events) = store.events(run).await else {
                        continue;
                    };
                    let accepted = events
                        .iter()
                        .any(|event| event.kind == EventKind::Accepted && event.at >= since);
                    if accepted {
                        let messages = ticking.lock().run_accepted(run, now_millis());
                        ticking.send(messages);
                    }
                }
            }
        });
        let delivery = Delivery {
            deliverer,
            ticker,
            timeout: spec.timeout,
        };
        Ok((alerts, delivery))
    }

    /// Takes in one engine event; what it calls for is delivered in the background.
    pub fn observe(&self, event: &Progress) {
        if let Progress::AttemptFinished {
            run,
            partition,
            task,
            outcome: keel_model::Outcome::Succeeded,
            retry_at: None,
            ..
        } = event
        {
            self.succeeded
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(super::watch::Succeeded {
                    task: task.clone(),
                    run: *run,
                    partition: partition.clone(),
                    waited: 0,
                });
        }
        let messages = self.lock().observe(event, now_millis());
        self.send(messages);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AlertBook> {
        // The book holds no invariant a panic elsewhere could break halfway.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn send(&self, messages: Vec<AlertMessage>) {
        for message in messages {
            // The receiver is gone only once serving stopped; nothing is left to tell.
            let _ = self.outbox.send(message);
        }
    }
}

impl Delivery {
    /// Stops ticking and lets the messages already decided go out, for at most two timeouts.
    /// Every `Alerts` handle must be dropped first, or the deliverer waits for more.
    pub async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        let bound = self.timeout * 2 + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, self.deliverer).await;
    }
}

/// Keel's clock (accelerated with `--clock-speed`, as the engine's is).
fn now_millis() -> Millis {
    crate::state::now_millis()
}

async fn deliver_all(
    mut inbox: mpsc::UnboundedReceiver<AlertMessage>,
    sinks: Sinks,
    metrics: Metrics,
    logger: Logger,
) {
    while let Some(message) = inbox.recv().await {
        let body = payload(&message).to_string();
        let mut delivered = false;
        if let Some(webhook) = &sinks.webhook {
            let result =
                tokio::time::timeout(sinks.timeout, webhook.post(body.as_bytes(), sinks.timeout))
                    .await;
            match result {
                Ok(Ok(())) => delivered = true,
                Ok(Err(reason)) => failed(&metrics, &logger, "webhook", &message, &reason),
                Err(_) => failed(
                    &metrics,
                    &logger,
                    "webhook",
                    &message,
                    "it did not answer in time",
                ),
            }
        }
        if let Some(command) = &sinks.command {
            match run_command(command, &sinks.command_dir, &body, sinks.timeout).await {
                Ok(()) => delivered = true,
                Err(reason) => failed(&metrics, &logger, "command", &message, &reason),
            }
        }
        if delivered {
            let kind = match message.status {
                Status::Firing => message.signature.kind.as_str(),
                Status::Resolved => "resolved",
            };
            metrics.alert_sent(kind);
        }
    }
}

fn failed(metrics: &Metrics, logger: &Logger, sink: &str, message: &AlertMessage, reason: &str) {
    metrics.alert_failed(sink);
    logger.warn(&crate::display::printable(&format!(
        "alerts: the {sink} sink could not deliver {} {}: {reason}",
        message.signature.kind,
        match message.status {
            Status::Firing => "alert",
            Status::Resolved => "resolution",
        }
    )));
}

/// Runs the command with the alert on its stdin; killed if it outlasts `timeout`.
async fn run_command(
    command: &[String],
    dir: &std::path::Path,
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        // Its own process group, so a timeout kills what it started too (a `sleep` under `sh`).
        .process_group(0)
        .spawn()
        .map_err(|error| format!("cannot start {:?}: {}", command[0], error.kind()))?;
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input is its own business; its exit decides.
            let _ = stdin.write_all(body.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        drop(stdin);
        child.wait().await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{:?} exited with {status}", command[0])),
        Ok(Err(error)) => Err(format!(
            "{:?} could not be waited for: {}",
            command[0],
            error.kind()
        )),
        Err(_) => {
            if let Some(group) = child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32))
            {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            Err(format!(
                "{:?} did not finish within {}; it was killed",
                command[0],
                keel_model::format_duration(timeout)
            ))
        }
    }
}

/// The JSON an alert is delivered as: Slack's `text`, and the same facts as fields.
pub fn payload(message: &AlertMessage) -> serde_json::Value {
    let at = chrono::DateTime::from_timestamp_millis(message.at)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    serde_json::json!({
        "text": message.text(),
        "keel": {
            "status": match message.status {
                Status::Firing => "firing",
                Status::Resolved => "resolved",
            },
            "pipeline": message.signature.pipeline,
            "kind": message.signature.kind.as_str(),
            "subject": message.signature.subject,
            "partition": message.partition,
            "run": message.run.map(|run| run.to_string()),
            "detail": message.detail,
            "at": at,
            "suppressed": message.suppressed,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_parse_and_errors_never_quote_them() {
        let hook = Webhook::parse("http://127.0.0.1:9093/keel?token=abc").unwrap();
        assert_eq!((hook.host.as_str(), hook.port), ("127.0.0.1", 9093));
        assert_eq!(hook.target, "/keel?token=abc");
        let bare = Webhook::parse("http://relay.internal").unwrap();
        assert_eq!((bare.port, bare.target.as_str()), (80, "/"));
        for bad in [
            "https://hooks.example/T0/SECRET",
            "http://user:SECRET@host/x",
            "http://host:SECRET/x",
            "http:///SECRET",
        ] {
            let error = Webhook::parse(bad).err().expect(bad).to_string();
            assert!(!error.contains("SECRET"), "{error}");
        }
    }
}

#[cfg(test)]
mod delivery_tests {
    use super::*;
    use crate::alerts::book::{AlertKind, Signature};

    fn message() -> AlertMessage {
        AlertMessage {
            signature: Signature {
                pipeline: "hoops".into(),
                kind: AlertKind::FailedPermanent,
                subject: "load".into(),
            },
            status: Status::Firing,
            at: 0,
            partition: Some("2026-12-01".into()),
            run: None,
            detail: "load ended failed_permanent".into(),
            suppressed: 0,
        }
    }

    /// A webhook nobody listens on and a command that hangs: both deliveries fail within the
    /// timeout (the command is killed), are counted, and the deliverer goes on to the next one.
    #[tokio::test(flavor = "current_thread")]
    async fn failed_deliveries_are_bounded_and_counted() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let dir = tempfile::tempdir().unwrap();
        let sinks = Sinks {
            webhook: Some(Webhook::parse(&format!("http://127.0.0.1:{port}/SECRET")).unwrap()),
            command: Some(vec![
                "sh".into(),
                "-c".into(),
                "sleep 30 & echo $! > pid; wait".into(),
            ]),
            command_dir: dir.path().to_path_buf(),
            timeout: Duration::from_millis(300),
        };
        let metrics = Metrics::new("hoops");
        let (outbox, inbox) = mpsc::unbounded_channel();
        outbox.send(message()).unwrap();
        outbox.send(message()).unwrap();
        drop(outbox);
        let started = std::time::Instant::now();
        deliver_all(
            inbox,
            sinks,
            metrics.clone(),
            Logger::new(crate::serve_log::LogFormat::Text),
        )
        .await;
        // Two messages, each bounded by the timeout on the command (the refused connection
        // fails at once): far below the 30 s the command would hang.
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = metrics.render();
        assert!(
            text.contains(
                "keel_alert_delivery_failures_total{pipeline=\"hoops\",sink=\"webhook\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "keel_alert_delivery_failures_total{pipeline=\"hoops\",sink=\"command\"} 2"
            ),
            "{text}"
        );
        assert!(!text.contains("keel_alerts_sent_total{"), "{text}");
        // The hung command was killed with what it started, not left behind.
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z"))
        };
        for _ in 0..100 {
            if !alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(), "the hung command's child {pid} is still running");
    }
}
