//! OTLP trace export for `keel serve` (cargo feature `otlp`): each run is a trace, its root
//! span the run itself, and each attempt a span under it whose id is the parent id of the
//! attempt's `TRACEPARENT`.
//!
//! Spans are sent with OTLP/HTTP in its JSON encoding (`POST {endpoint}/v1/traces`) by one
//! thread of their own, in batches, over a small HTTP/1.1 client on `std::net` (plain
//! `http://` only: a collector on the same host or network, which forwards over TLS if it must).
//! The engine only puts a span on a bounded queue and never waits: when the queue is full, or
//! the collector is down or refuses a batch, spans are dropped and counted, and serve says so in
//! its log, once when it starts dropping and once when export works again. Nothing here can
//! stop or crash serve.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http_post::{self, AuthorityProblem, split_authority};

use keel_engine::Progress;
use keel_model::{Millis, SpanId, TraceId};
use serde_json::{Value, json};

use crate::serve_log::Logger;

/// Spans waiting to be sent; beyond this the newest are dropped.
const QUEUE: usize = 4096;
/// Spans sent in one request at most.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How long one request may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go: `http://HOST[:PORT][/BASE]`, posted to `/BASE/v1/traces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// Reads an endpoint as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it; `origin` names where it
    /// came from, for the error.
    pub fn parse(text: &str, origin: &str) -> Result<Endpoint, String> {
        let Some(rest) = text.trim().strip_prefix("http://") else {
            let hint = if text.starts_with("https://") {
                "keel exports over plain http only; point it at a collector on this host or network (http://127.0.0.1:4318), which can forward over TLS"
            } else {
                "write it as http://HOST:PORT, e.g. http://127.0.0.1:4318"
            };
            return Err(format!("{origin} {text:?} is not an http:// URL; {hint}"));
        };
        let (authority, base) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let bad = |why: &str| {
            format!(
                "{origin} {text:?}: {why}; write it as http://HOST:PORT, e.g. http://127.0.0.1:4318"
            )
        };
        let (host, port) = split_authority(authority).map_err(|problem| match problem {
            AuthorityProblem::Credentials => bad("credentials in the URL are not supported"),
            AuthorityProblem::NoHost => bad("it names no host"),
            AuthorityProblem::BadPort(port) => {
                bad(&format!("the port {port:?} is not a number up to 65535"))
            }
            AuthorityProblem::UnclosedIpv6 => bad("an IPv6 address must end with `]`"),
            AuthorityProblem::JunkAfterIpv6 => bad("junk after the IPv6 address"),
        })?;
        if base.contains(['?', '#', ' ']) {
            return Err(bad(
                "a query, fragment or space in the path is not supported",
            ));
        }
        Ok(Endpoint {
            host,
            port,
            path: format!("{base}/v1/traces"),
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

/// One finished span.
#[derive(Debug, Clone)]
struct Span {
    trace: TraceId,
    span: SpanId,
    parent: Option<SpanId>,
    name: String,
    start: Millis,
    end: Millis,
    error: Option<String>,
    attributes: Vec<(&'static str, Value)>,
}

/// The engine's side of the exporter: hands finished spans to the sending thread.
pub struct Exporter {
    queue: SyncSender<Span>,
    dropped: Arc<AtomicU64>,
    pipeline: Arc<str>,
}

/// Serve's side: waits, when serve stops, for the last spans to be sent.
pub struct Sender {
    thread: JoinHandle<()>,
    dropped: Arc<AtomicU64>,
}

/// Starts the sending thread.
pub fn start(endpoint: Endpoint, pipeline: &str, logger: Logger) -> (Exporter, Sender) {
    let (queue, spans) = std::sync::mpsc::sync_channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let service = pipeline.to_string();
    let thread = std::thread::Builder::new()
        .name("keel-otlp".into())
        .spawn(move || send_loop(endpoint, service, spans, counter, logger))
        .expect("a thread can be started");
    let exporter = Exporter {
        queue,
        dropped: dropped.clone(),
        pipeline: pipeline.into(),
    };
    (exporter, Sender { thread, dropped })
}

impl Exporter {
    /// Queues the span an event ends, if it ends one: an attempt's when it finishes, the run's
    /// root span when the run does. Never blocks.
    pub fn observe(&self, event: &Progress) {
        let span = match event {
            Progress::AttemptFinished {
                run,
                partition,
                task,
                attempt,
                outcome,
                message,
                trace,
                span,
                started_at,
                finished_at,
                ..
            } => Span {
                trace: *trace,
                span: *span,
                parent: Some(trace.root_span()),
                name: task.clone(),
                start: *started_at,
                end: *finished_at,
                error: (!outcome.is_complete())
                    .then(|| message.clone().unwrap_or_else(|| outcome.to_string())),
                attributes: vec![
                    ("keel.pipeline", self.pipeline.as_ref().into()),
                    ("keel.run", run.0.into()),
                    ("keel.partition", partition.as_str().into()),
                    ("keel.task", task.as_str().into()),
                    ("keel.attempt", (*attempt).into()),
                    ("keel.outcome", outcome.to_string().into()),
                ],
            },
            Progress::RunFinished {
                run,
                partition,
                state,
                trace,
                started_at,
                finished_at,
            } => Span {
                trace: *trace,
                span: trace.root_span(),
                parent: None,
                name: format!("run {}", self.pipeline),
                start: *started_at,
                end: *finished_at,
                error: (*state == keel_model::RunState::Failed).then(|| state.to_string()),
                attributes: vec![
                    ("keel.pipeline", self.pipeline.as_ref().into()),
                    ("keel.run", run.0.into()),
                    ("keel.partition", partition.as_str().into()),
                    ("keel.outcome", state.to_string().into()),
                ],
            },
            _ => return,
        };
        match self.queue.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Sender {
    /// Once the [`Exporter`] is dropped (with the engine that held it), sends what is queued,
    /// within one request's timeout, and returns how many spans were dropped in all.
    pub fn finish(self) -> u64 {
        let _ = self.thread.join();
        self.dropped.load(Ordering::Relaxed)
    }
}

fn send_loop(
    endpoint: Endpoint,
    service: String,
    spans: Receiver<Span>,
    dropped: Arc<AtomicU64>,
    logger: Logger,
) {
    let mut failing = false;
    let mut dropped_when_failing = 0;
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        match spans.recv() {
            Ok(span) => batch.push(span),
            Err(_) => break,
        }
        let deadline = Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match spans.recv_timeout(left) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let body = encode(&service, &batch).to_string();
        match post(&endpoint, &body) {
            Ok(()) if failing => {
                failing = false;
                let lost = dropped.load(Ordering::Relaxed) - dropped_when_failing;
                logger.info(&format!(
                    "trace export to {endpoint} works again; {lost} spans were dropped meanwhile"
                ));
            }
            Ok(()) => {}
            Err(why) => {
                let before = dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !failing {
                    failing = true;
                    dropped_when_failing = before;
                    logger.warn(&format!(
                        "trace export to {endpoint} failed: {why}; spans are dropped until the collector answers (serve carries on)"
                    ));
                }
            }
        }
    }
}

/// The OTLP/HTTP JSON body for `spans`: ids in hex, times in Unix nanoseconds as strings.
fn encode(service: &str, spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let mut object = json!({
                "traceId": span.trace.to_string(),
                "spanId": span.span.to_string(),
                "name": span.name,
                "kind": 1,
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": span.attributes.iter().map(|(key, value)| attribute(key, value)).collect::<Vec<_>>(),
                "status": match &span.error {
                    None => json!({ "code": 1 }),
                    Some(message) => json!({ "code": 2, "message": message }),
                },
            });
            if let Some(parent) = span.parent {
                object["parentSpanId"] = parent.to_string().into();
            }
            object
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {
                "attributes": [attribute("service.name", &Value::from(format!("keel {service}")))],
            },
            "scopeSpans": [{
                "scope": { "name": "keel", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

fn nanos(at: Millis) -> String {
    (i128::from(at) * 1_000_000).to_string()
}

/// An OTLP `KeyValue`: 64-bit integers are strings in OTLP's JSON encoding.
fn attribute(key: &str, value: &Value) -> Value {
    let value = match value {
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            json!({ "intValue": number.to_string() })
        }
        Value::String(text) => json!({ "stringValue": text }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

/// One HTTP/1.1 POST, bounded by [`TIMEOUT`] for connecting and for each read and write;
/// success is a 2xx answer.
fn post(endpoint: &Endpoint, body: &str) -> Result<(), String> {
    let posted = http_post::post_json(
        &endpoint.host,
        endpoint.port,
        &endpoint.path,
        body.as_bytes(),
        TIMEOUT,
    );
    match posted {
        Ok(200..=299) => Ok(()),
        Ok(code) => Err(format!("the collector answered HTTP {code}")),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_read_the_way_otel_gives_them() {
        let endpoint = Endpoint::parse("http://127.0.0.1:4318", "--otlp-endpoint").unwrap();
        assert_eq!(endpoint.to_string(), "http://127.0.0.1:4318/v1/traces");
        let endpoint = Endpoint::parse("http://collector/otlp/", "x").unwrap();
        assert_eq!(endpoint.to_string(), "http://collector:80/otlp/v1/traces");
        let endpoint = Endpoint::parse("http://[::1]:4318", "x").unwrap();
        assert_eq!(endpoint.to_string(), "http://[::1]:4318/v1/traces");
    }

    #[test]
    fn bad_endpoints_say_what_is_wrong_and_what_to_write() {
        let cases = [
            ("https://collector:4318", "plain http only"),
            ("collector:4318", "is not an http:// URL"),
            ("http://:4318", "names no host"),
            ("http://collector:99999", "not a number up to 65535"),
            ("http://user:secret@collector:4318", "credentials"),
        ];
        for (text, expected) in cases {
            let error = Endpoint::parse(text, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT"), "{error}");
        }
    }

    /// The engine never waits on the exporter: past the queue's capacity spans are dropped and
    /// counted, and `observe` returns at once.
    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (queue, spans) = std::sync::mpsc::sync_channel(1);
        let exporter = Exporter {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            pipeline: "hoops".into(),
        };
        let trace = TraceId(7);
        for attempt in 1..=3 {
            exporter.observe(&Progress::AttemptFinished {
                run: keel_model::RunId(1),
                partition: "2026-01-01".into(),
                task: "load".into(),
                attempt,
                outcome: keel_model::Outcome::Succeeded,
                message: None,
                retry_at: None,
                trace,
                span: trace.attempt_span("load", attempt),
                started_at: 0,
                finished_at: 1,
            });
        }
        assert_eq!(exporter.dropped.load(Ordering::Relaxed), 2);
        let kept = spans.try_recv().unwrap();
        assert_eq!(kept.span, trace.attempt_span("load", 1));
        assert_eq!(kept.parent, Some(trace.root_span()));
    }

    #[test]
    fn spans_are_encoded_as_otlp_json() {
        let trace = TraceId(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        let span = Span {
            trace,
            span: trace.attempt_span("load", 2),
            parent: Some(trace.root_span()),
            name: "load".into(),
            start: 1_700_000_000_123,
            end: 1_700_000_001_000,
            error: Some("exit 3".into()),
            attributes: vec![("keel.attempt", 2.into()), ("keel.task", "load".into())],
        };
        let body = encode("hoops", &[span]);
        let sent = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(sent["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sent["parentSpanId"], trace.root_span().to_string());
        assert_eq!(sent["startTimeUnixNano"], "1700000000123000000");
        assert_eq!(sent["status"], json!({ "code": 2, "message": "exit 3" }));
        assert_eq!(
            sent["attributes"][0],
            json!({ "key": "keel.attempt", "value": { "intValue": "2" } })
        );
    }
}
