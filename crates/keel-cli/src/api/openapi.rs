//! The OpenAPI 3 document of the API, served at `/api/openapi.json`. It describes every
//! endpoint, parameter, body and response, errors included, closely enough for a fuzzer to
//! check the server against it.

use keel_model::{EventKind, Outcome, RunState, TaskState};
use serde_json::{Value, json};

fn names<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|item| name(*item)).collect()
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn path_parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": schema })
}

fn query_parameter(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

/// The errors every endpoint under a pipeline may answer.
fn read_errors(mut responses: Value) -> Value {
    responses["400"] = error_response("A bad path or query parameter");
    responses["404"] = error_response("No such pipeline, run, task or attempt");
    responses["405"] = error_response("The method is not allowed on this path");
    responses["500"] = error_response("A failure of the serving Keel itself, never of the request");
    responses
}

/// The errors of a mutating endpoint: those of a read, and the token's and the body's.
fn action_errors(responses: Value) -> Value {
    let mut responses = read_errors(responses);
    responses["401"] = error_response("Missing or wrong bearer token");
    responses["409"] = error_response("The run is not in a state that allows this");
    responses["413"] = error_response("The body is larger than 64 KiB");
    responses
}

pub fn document() -> Value {
    let pipeline = path_parameter(
        "pipeline",
        "The pipeline's name",
        json!({ "type": "string" }),
    );
    let run = path_parameter(
        "run",
        "The run's id",
        json!({ "type": "integer", "format": "int64" }),
    );
    let task = path_parameter(
        "task",
        "A task of the pipeline",
        json!({ "type": "string" }),
    );
    let attempt = path_parameter(
        "attempt",
        "The attempt's number within the task's run, from 1",
        json!({ "type": "integer", "minimum": 0, "maximum": 4294967295u64 }),
    );
    // A schedule as `/api/pipelines` shows it: the pipeline's own, or a pass's.
    let schedule_schema = json!({
        "oneOf": [
            { "type": "null" },
            {
                "type": "object",
                "required": ["cron", "partition_offset_days", "catchup"],
                "properties": {
                    "cron": { "type": "string" },
                    "partition_offset_days": { "type": "integer" },
                    "catchup": { "type": "string", "enum": ["all", "latest", "none"] }
                }
            }
        ]
    });
    // What `state::check_partition` may accept; it also checks the date exists.
    let partition_schema = json!({
        "type": ["string", "null"],
        "pattern": "^([0-9]{4}-[0-9]{2}-[0-9]{2}|today|yesterday|[+-][0-9]{1,7}d|none)$"
    });
    let mut query_partition = partition_schema.clone();
    query_partition["type"] = "string".into();
    let date = "A partition: YYYY-MM-DD, today, yesterday, or days from today such as -2d, in the pipeline's time zone; none for an unpartitioned pipeline";
    let nullable_string = json!({ "type": ["string", "null"] });
    let nullable_integer = json!({ "type": ["integer", "null"] });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Keel serve API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP API of `keel serve`: runs, tasks, logs, the event stream and actions. Every error is a JSON body with `error` and `hint`. POST endpoints need `Authorization: Bearer TOKEN`."
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" }
            },
            "schemas": {
                "Cluster": {
                    "type": "object",
                    "required": ["workers", "queue"],
                    "properties": {
                        "workers": { "type": "array", "items": {
                            "type": "object",
                            "required": ["id", "host", "pid", "slots", "running", "started_at", "heartbeat_at", "heartbeat_age_ms", "leases"],
                            "properties": {
                                "id": { "type": "string", "description": "host:pid:nonce" },
                                "host": { "type": "string" },
                                "pid": { "type": "integer", "format": "int64" },
                                "slots": { "type": "integer", "description": "Attempts it runs at once, at most" },
                                "running": { "type": "integer", "description": "Attempts it held at its last heartbeat" },
                                "started_at": { "type": "integer", "format": "int64", "description": "Milliseconds since the Unix epoch" },
                                "heartbeat_at": { "type": "integer", "format": "int64" },
                                "heartbeat_age_ms": { "type": "integer", "format": "int64" },
                                "stopped_at": { "type": ["integer", "null"], "format": "int64", "description": "Set when it stopped cleanly" },
                                "leases": { "type": "array", "items": {
                                    "type": "object",
                                    "required": ["attempt", "lease_until", "expires_in_ms"],
                                    "properties": {
                                        "attempt": { "type": "string", "description": "store id/run/task.attempt" },
                                        "lease_until": { "type": "integer", "format": "int64" },
                                        "expires_in_ms": { "type": "integer", "format": "int64" }
                                    }
                                } }
                            }
                        } },
                        "queue": {
                            "type": "object",
                            "required": ["queued", "claimed", "done", "reaped"],
                            "properties": {
                                "queued": { "type": "integer" },
                                "claimed": { "type": "integer" },
                                "done": { "type": "integer" },
                                "reaped": { "type": "integer", "description": "Leases that lapsed; their attempts ended lost and were retried" }
                            }
                        }
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "hint"],
                    "properties": {
                        "error": { "type": "string", "description": "What is wrong" },
                        "hint": { "type": "string", "description": "What to do about it" }
                    }
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": { "status": { "type": "string", "enum": ["ok"] } }
                },
                "Ready": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": { "type": "string", "enum": ["ready", "not_ready"] },
                        "checks": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "pipeline", "ok", "detail"],
                                "properties": {
                                    "name": { "type": "string", "enum": ["store", "scheduler", "pipeline"] },
                                    "pipeline": { "type": "string" },
                                    "ok": { "type": "boolean" },
                                    "detail": { "type": "string" }
                                }
                            }
                        }
                    }
                },
                "Pipelines": {
                    "type": "object",
                    "required": ["pipelines"],
                    "properties": {
                        "pipelines": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "version", "timezone", "schedule", "tasks"],
                                "properties": {
                                    "name": { "type": "string" },
                                    "version": { "type": "string" },
                                    "timezone": { "type": "string" },
                                    "tasks": { "type": "integer", "minimum": 0 },
                                    "schedule": schedule_schema.clone(),
                                    "passes": {
                                        "type": "array",
                                        "description": "The pipeline's passes ([passes.NAME]): the tasks each runs, and when",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "schedule", "tasks"],
                                            "properties": {
                                                "name": { "type": "string" },
                                                "schedule": schedule_schema,
                                                "tasks": { "type": "array", "items": { "type": "string" } }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                },
                "Task": {
                    "type": "object",
                    "required": ["name", "phase", "state", "outcome", "attempts", "time_ms"],
                    "properties": {
                        "name": { "type": "string" },
                        "phase": { "type": "string" },
                        "state": { "type": "string", "enum": names(TaskState::ALL, TaskState::as_str) },
                        "outcome": { "type": ["string", "null"], "enum": names(Outcome::ALL, Outcome::as_str).into_iter().map(Value::from).chain([Value::Null]).collect::<Vec<_>>() },
                        "attempts": { "type": "integer", "minimum": 0 },
                        "checks": { "type": "integer", "minimum": 0 },
                        "probes": { "type": "integer", "minimum": 0 },
                        "sensor_polls": { "type": "integer", "minimum": 0 },
                        "time_ms": { "type": "integer", "minimum": 0 },
                        "rows": nullable_integer,
                        "metrics": { "description": "The `metrics` object of the newest finished attempt's result file, or null" },
                        "message": nullable_string,
                        "task_version": { "type": "string", "description": "The version of the task its latest attempt ran (`keel rollout`); absent before any attempt" }
                    }
                },
                "Run": {
                    "type": "object",
                    "required": ["id", "partition", "state", "version", "tasks", "created_at", "finished_at", "cancel_requested"],
                    "properties": {
                        "id": { "type": "integer" },
                        "partition": { "type": "string" },
                        "pass": { "type": ["string", "null"], "description": "The pass ([passes.NAME]) the run belongs to; null for the pipeline's own runs" },
                        "state": { "type": "string", "enum": names(RunState::ALL, RunState::as_str) },
                        "version": { "type": "string" },
                        "message": nullable_string,
                        "accepted": { "type": "string", "description": "Who accepted the degraded run, and why" },
                        "created_at": { "type": "integer", "description": "Milliseconds since the Unix epoch" },
                        "finished_at": nullable_integer,
                        "cancel_requested": { "type": "boolean" },
                        "tasks": { "type": "array", "items": { "$ref": "#/components/schemas/Task" } }
                    }
                },
                "Runs": {
                    "type": "object",
                    "required": ["runs", "omitted"],
                    "properties": {
                        "runs": { "type": "array", "items": { "$ref": "#/components/schemas/Run" } },
                        "omitted": { "type": "integer", "minimum": 0, "description": "Runs left out by the limit" }
                    }
                },
                "Attempt": {
                    "type": "object",
                    "required": ["id", "task", "number", "kind", "claimed_at", "started_at", "finished_at", "duration_ms", "outcome"],
                    "properties": {
                        "id": { "type": "integer" },
                        "task": { "type": "string" },
                        "number": { "type": "integer", "minimum": 1 },
                        "kind": { "type": "string", "enum": ["attempt", "check", "probe"] },
                        "claimed_at": { "type": "integer" },
                        "started_at": nullable_integer,
                        "finished_at": nullable_integer,
                        "duration_ms": { "type": "integer", "minimum": 0 },
                        "outcome": { "type": ["string", "null"] },
                        "exit_code": nullable_integer,
                        "rows": nullable_integer,
                        "metrics": {},
                        "message": nullable_string
                    }
                },
                "RunDetail": {
                    "allOf": [
                        { "$ref": "#/components/schemas/Run" },
                        {
                            "type": "object",
                            "required": ["attempts", "gates", "degraded_because"],
                            "properties": {
                                "attempts": { "type": "array", "items": { "$ref": "#/components/schemas/Attempt" } },
                                "gates": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["phase", "status", "waived"],
                                        "properties": {
                                            "phase": { "type": "string" },
                                            "status": { "type": "string" },
                                            "waived": { "type": "array", "items": { "type": "string" } }
                                        }
                                    }
                                },
                                "degraded_because": {
                                    "type": "array",
                                    "items": { "type": "string" },
                                    "description": "Gates opened without some of their tasks, and tasks that ended without completing"
                                }
                            }
                        }
                    ]
                },
                "History": {
                    "type": "object",
                    "required": ["task", "runs", "omitted"],
                    "properties": {
                        "task": { "type": "string" },
                        "omitted": { "type": "integer", "minimum": 0 },
                        "anomalies": {
                            "type": "array",
                            "description": "Values far outside their robust baseline of the earlier partitions shown (docs/health.md)",
                            "items": { "type": "object", "required": ["run", "partition", "metric", "value", "describe"] }
                        },
                        "runs": {
                            "type": "array",
                            "items": {
                                "allOf": [
                                    { "$ref": "#/components/schemas/Task" },
                                    {
                                        "type": "object",
                                        "required": ["run", "partition", "run_state"],
                                        "properties": {
                                            "run": { "type": "integer" },
                                            "partition": { "type": "string" },
                                            "pass": { "type": ["string", "null"] },
                                            "run_state": { "type": "string", "enum": names(RunState::ALL, RunState::as_str) }
                                        }
                                    }
                                ]
                            }
                        }
                    }
                },
                "HealthScore": {
                    "type": "object",
                    "required": ["pipeline", "score", "dimensions"],
                    "properties": {
                        "pipeline": { "type": "string" },
                        "score": { "type": ["number", "null"], "minimum": 0, "maximum": 10, "description": "Null while no dimension can be judged" },
                        "dimensions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "weight", "value", "evidence"],
                                "properties": {
                                    "name": { "type": "string" },
                                    "weight": { "type": "number", "minimum": 0 },
                                    "value": { "type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "Null when there is nothing to judge it on; it then does not count" },
                                    "evidence": { "type": "string" }
                                }
                            }
                        }
                    }
                },
                "HealthScores": {
                    "type": "object",
                    "required": ["pipelines"],
                    "properties": {
                        "pipelines": { "type": "array", "items": { "$ref": "#/components/schemas/HealthScore" } }
                    }
                },
                "TriggerRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "One partition, or a range with from and to; neither means today's partition, as `keel run` does",
                    "properties": {
                        "partition": partition_schema.clone(),
                        "from": partition_schema.clone(),
                        "to": partition_schema.clone(),
                        "only": { "type": "array", "items": { "type": "string" }, "description": "Run only these tasks (and what they need)" },
                        "rerun": { "type": "boolean", "description": "Run a partition again even if it already finished" },
                        "pass": { "type": ["string", "null"], "description": "Run this pass of the pipeline ([passes.NAME]) instead of the pipeline's own run; not with only" }
                    }
                },
                "Triggered": {
                    "type": "object",
                    "required": ["runs"],
                    "properties": {
                        "runs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["run", "partition", "state", "queued"],
                                "properties": {
                                    "run": { "type": "integer" },
                                    "partition": { "type": "string" },
                                    "state": { "type": "string", "enum": names(RunState::ALL, RunState::as_str) },
                                    "queued": { "type": "string", "enum": ["created", "resumed", "already_finished"] }
                                }
                            }
                        }
                    }
                },
                "RetryRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "tasks": { "type": "array", "items": { "type": "string" }, "description": "Tasks to run again, with everything downstream; none means the tasks that failed" }
                    }
                },
                "Retried": {
                    "type": "object",
                    "required": ["run", "partition", "tasks"],
                    "properties": {
                        "run": { "type": "integer" },
                        "partition": { "type": "string" },
                        "tasks": { "type": "array", "items": { "type": "string" } }
                    }
                },
                "Cancelled": {
                    "type": "object",
                    "required": ["run", "partition", "state", "cancel_requested"],
                    "properties": {
                        "run": { "type": "integer" },
                        "partition": { "type": "string" },
                        "state": { "type": "string", "enum": names(RunState::ALL, RunState::as_str) },
                        "cancel_requested": { "type": "boolean" }
                    }
                },
                "AcceptRequest": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["by"],
                    "properties": {
                        "by": { "type": "string", "minLength": 1, "maxLength": 200, "description": "Who accepts the run" },
                        "reason": { "type": ["string", "null"], "maxLength": 2000, "description": "Why it is acceptable as it is" }
                    }
                },
                "Accepted": {
                    "type": "object",
                    "required": ["run", "partition", "state", "accepted"],
                    "properties": {
                        "run": { "type": "integer" },
                        "partition": { "type": "string" },
                        "state": { "type": "string", "enum": ["degraded"] },
                        "accepted": { "type": "string" }
                    }
                }
            }
        },
        "paths": {
            "/health": {
                "get": {
                    "summary": "Liveness: the process answers",
                    "operationId": "health",
                    "responses": read_errors(json!({ "200": json_response("Alive", "Health") }))
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: the store answers, the scheduler loop turns, the pipeline is valid",
                    "operationId": "ready",
                    "responses": read_errors(json!({
                        "200": json_response("Ready", "Ready"),
                        "503": json_response("Not ready; the failing checks say why", "Ready")
                    }))
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Metrics in the OpenMetrics text format",
                    "operationId": "metrics",
                    "responses": read_errors(json!({
                        "200": {
                            "description": "The metrics",
                            "content": { "application/openmetrics-text": { "schema": { "type": "string" } } }
                        }
                    }))
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": read_errors(json!({
                        "200": { "description": "The OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } }
                    }))
                }
            },
            "/api/pipelines": {
                "get": {
                    "summary": "The pipelines served",
                    "operationId": "listPipelines",
                    "responses": read_errors(json!({ "200": json_response("The pipelines", "Pipelines") }))
                }
            },
            "/api/pipelines/{pipeline}/runs": {
                "get": {
                    "summary": "Runs, newest partition first (the newest run of each partition unless all=true)",
                    "operationId": "listRuns",
                    "parameters": [
                        pipeline.clone(),
                        query_parameter("partition", date, query_partition.clone()),
                        query_parameter("from", "First partition of an inclusive range (with to)", query_partition.clone()),
                        query_parameter("to", "Last partition of an inclusive range (with from)", query_partition.clone()),
                        query_parameter("state", "Only runs in this state", json!({ "type": "string", "enum": names(RunState::ALL, RunState::as_str) })),
                        query_parameter("limit", "At most this many runs (default 20)", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                        query_parameter("all", "Every run of each partition, not only the newest", json!({ "type": "boolean" }))
                    ],
                    "responses": read_errors(json!({ "200": json_response("The runs", "Runs") }))
                },
                "post": {
                    "summary": "Queue a run of a partition or of each partition of a range, as `keel run --detach` does",
                    "operationId": "triggerRun",
                    "security": [{ "bearer": [] }],
                    "parameters": [pipeline.clone()],
                    "requestBody": {
                        "required": false,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/TriggerRequest" } } }
                    },
                    "responses": action_errors(json!({ "202": json_response("Queued (or found already finished)", "Triggered") }))
                }
            },
            "/api/pipelines/{pipeline}/runs/{run}": {
                "get": {
                    "summary": "A run in detail: tasks, attempts, outcomes, timings, metrics, gates and why it is degraded",
                    "operationId": "getRun",
                    "parameters": [pipeline.clone(), run.clone()],
                    "responses": read_errors(json!({ "200": json_response("The run", "RunDetail") }))
                }
            },
            "/api/pipelines/{pipeline}/runs/{run}/retry": {
                "post": {
                    "summary": "Run tasks of a finished run again, with everything downstream, as `keel retry` does",
                    "operationId": "retryRun",
                    "security": [{ "bearer": [] }],
                    "parameters": [pipeline.clone(), run.clone()],
                    "requestBody": {
                        "required": false,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RetryRequest" } } }
                    },
                    "responses": action_errors(json!({ "202": json_response("The tasks will run again", "Retried") }))
                }
            },
            "/api/pipelines/{pipeline}/runs/{run}/cancel": {
                "post": {
                    "summary": "Ask for an unfinished run to be cancelled, as `keel cancel` does",
                    "operationId": "cancelRun",
                    "security": [{ "bearer": [] }],
                    "parameters": [pipeline.clone(), run.clone()],
                    "responses": action_errors(json!({ "202": json_response("The cancel is asked for", "Cancelled") }))
                }
            },
            "/api/pipelines/{pipeline}/runs/{run}/accept": {
                "post": {
                    "summary": "Record that a degraded run is acceptable as it is, as `keel accept` does",
                    "operationId": "acceptRun",
                    "security": [{ "bearer": [] }],
                    "parameters": [pipeline.clone(), run.clone()],
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AcceptRequest" } } }
                    },
                    "responses": action_errors(json!({ "200": json_response("Accepted", "Accepted") }))
                }
            },
            "/api/pipelines/{pipeline}/runs/{run}/tasks/{task}/attempts/{attempt}/log": {
                "get": {
                    "summary": "An attempt's captured output: its last max_bytes bytes (or max_bytes from byte from), or followed as it grows until the attempt ends",
                    "operationId": "getAttemptLog",
                    "parameters": [
                        pipeline.clone(), run.clone(), task.clone(), attempt,
                        query_parameter("max_bytes", "At most this many bytes, the end of the log (default 1 MiB)", json!({ "type": "integer", "minimum": 1, "maximum": 16777216 })),
                        query_parameter("follow", "Stream the log as it grows until the attempt ends", json!({ "type": "boolean" })),
                        query_parameter("from", "Start at this byte of the log instead of max_bytes before its end (then at most max_bytes from there); past the end there is nothing yet, and with follow the log is followed from there", json!({ "type": "integer", "minimum": 0, "maximum": 1_099_511_627_776_u64 }))
                    ],
                    "responses": read_errors(json!({
                        "200": {
                            "description": "The log, as the task wrote it",
                            "headers": {
                                "x-keel-log-size": { "description": "The log's size in bytes", "schema": { "type": "integer" } },
                                "x-keel-log-truncated": { "description": "Whether the start of the log was left out", "schema": { "type": "boolean" } }
                            },
                            "content": { "text/plain": { "schema": { "type": "string" } } }
                        }
                    }))
                }
            },
            "/api/pipelines/{pipeline}/tasks/{task}/history": {
                "get": {
                    "summary": "A task across partitions, as `keel history` shows it",
                    "operationId": "taskHistory",
                    "parameters": [
                        pipeline.clone(), task,
                        query_parameter("from", "First partition of an inclusive range (with to)", query_partition.clone()),
                        query_parameter("to", "Last partition of an inclusive range (with from)", query_partition.clone()),
                        query_parameter("limit", "At most this many runs (default 20 without a range)", json!({ "type": "integer", "minimum": 1, "maximum": 1000 })),
                        query_parameter("all", "Every run of each partition, not only the newest", json!({ "type": "boolean" }))
                    ],
                    "responses": read_errors(json!({ "200": json_response("The task's history", "History") }))
                }
            },
            "/api/pipelines/{pipeline}/health-score": {
                "get": {
                    "summary": "The pipeline's health score from 0 to 10 with its dimensions, weights and evidence, as `keel health` shows it",
                    "operationId": "healthScore",
                    "parameters": [pipeline.clone()],
                    "responses": read_errors(json!({ "200": json_response("The health score", "HealthScore") }))
                }
            },
            "/api/cluster": {
                "get": {
                    "summary": "The workers of a PostgreSQL state (newest heartbeat first), their leases and load, and the work queue's counts; 404 for an SQLite state",
                    "operationId": "cluster",
                    "responses": read_errors(json!({ "200": json_response("The cluster", "Cluster") }))
                }
            },
            "/api/health-score": {
                "get": {
                    "summary": "The health score of every served pipeline",
                    "operationId": "healthScores",
                    "responses": read_errors(json!({ "200": json_response("Each pipeline's health score", "HealthScores") }))
                }
            },
            "/api/pipelines/{pipeline}/events": {
                "get": {
                    "summary": "The event log as server-sent events: each has the event's sequence number as id, its kind as event, and JSON data; it never ends by itself",
                    "operationId": "streamEvents",
                    "parameters": [
                        pipeline,
                        query_parameter("after", "Only events after this sequence number", json!({ "type": "integer", "format": "int64" })),
                        query_parameter("run", "Only events of this run", json!({ "type": "integer", "format": "int64" })),
                        { "name": "Last-Event-ID", "in": "header", "required": false, "description": "Resume after this event (wins over after)", "schema": { "type": "integer", "format": "int64" } }
                    ],
                    "responses": read_errors(json!({
                        "200": {
                            "description": "The stream; data is JSON with seq, at, time, run, partition, task, attempt_id, kind (one of the event kinds) and detail",
                            "content": { "text/event-stream": { "schema": { "type": "string" } } }
                        }
                    }))
                }
            }
        },
        "x-event-kinds": names(EventKind::ALL, EventKind::as_str)
    })
}
