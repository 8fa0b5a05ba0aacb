//! The HTTP-task case of `keel bench`: a layered pipeline of HTTP tasks sent by the real engine
//! to a server on a loopback port inside the benchmark, which answers `200 {}` at once and
//! counts the TCP connections it accepts. What it measures is Keel's own cost per request
//! (dispatch, the durable transitions, the pooled client) and whether the pool reuses its
//! connections: about as many as the resource's concurrency should be opened, not one a task.

use std::io::BufReader;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use hoops::http::{self, Response};

use super::{micros, percentile, run_pipeline_on};

/// The command-task case of the same run that the HTTP case is compared with.
pub struct Baseline {
    pub name: &'static str,
    pub tasks: usize,
    pub tasks_per_second: f64,
}

/// A keep-alive HTTP/1.1 server on a free loopback port answering every request `200 {}`.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    shutdown: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start() -> Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .context("cannot listen on a loopback port for the HTTP benchmark")?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let shutdown = Arc::new(AtomicBool::new(false));
        let accept = {
            let (connections, requests, shutdown) =
                (connections.clone(), requests.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("bench-http-accept".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if shutdown.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        connections.fetch_add(1, Ordering::SeqCst);
                        let requests = requests.clone();
                        let _ = std::thread::Builder::new()
                            .name("bench-http-conn".into())
                            .spawn(move || answer(stream, &requests));
                    }
                })?
        };
        Ok(Server {
            addr,
            connections,
            requests,
            shutdown,
            accept: Some(accept),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Answers the requests of one connection until the client closes it.
fn answer(stream: TcpStream, requests: &AtomicUsize) {
    let _ = stream.set_nodelay(true);
    // A pooled connection the engine forgot would otherwise hold this thread for good.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let ok = Response::json(200, &serde_json::json!({}));
    while let Ok(Some(request)) = http::read_request(&mut reader) {
        requests.fetch_add(1, Ordering::SeqCst);
        let keep_alive = request.keep_alive();
        if http::write_response(&mut writer, &ok, keep_alive).is_err() || !keep_alive {
            return;
        }
    }
}

/// `levels` phases of `width` HTTP tasks calling `addr`, all using one resource that allows
/// `concurrency` at once; each phase runs after the previous one.
fn http_pipeline(
    name: &str,
    addr: SocketAddr,
    levels: usize,
    width: usize,
    concurrency: u32,
) -> String {
    super::layered_pipeline_of(
        name,
        levels,
        width,
        concurrency,
        &format!("[resources.service]\nconcurrency = {concurrency}\n\n"),
        &format!("http = {{ url = \"http://{addr}/task/{{task}}\" }}\nuses = [\"service\"]\n"),
    )
}

/// What the HTTP case measured: the run, and the server's connections.
struct Measured {
    name: String,
    result: super::CaseResult,
    connections: usize,
}

/// Runs `levels` × `width` HTTP tasks against a fresh server, with the state on `postgres` when
/// given; every task must have sent exactly one request.
async fn measure(
    dir: &Path,
    levels: usize,
    width: usize,
    concurrency: u32,
    postgres: Option<&str>,
) -> Result<Measured> {
    let server = Server::start()?;
    let name = match postgres {
        None => format!("http_{levels}x{width}"),
        Some(_) => format!("bench_http_{levels}x{width}_{}", std::process::id()),
    };
    let text = http_pipeline(&name, server.addr, levels, width, concurrency);
    let result = run_pipeline_on(dir, &name, &text, postgres, false).await?;
    let connections = server.connections.load(Ordering::SeqCst);
    let requests = server.requests.load(Ordering::SeqCst);
    drop(server);
    anyhow::ensure!(
        requests == result.tasks,
        "the benchmark server answered {requests} requests for {} HTTP tasks",
        result.tasks
    );
    Ok(Measured {
        name,
        result,
        connections,
    })
}

/// Runs the HTTP case and prints its line, compared with `baseline` when there is one.
pub async fn http_tasks(
    dir: &Path,
    levels: usize,
    width: usize,
    concurrency: u32,
    baseline: Option<&Baseline>,
) -> Result<()> {
    let Measured {
        name,
        result,
        connections,
    } = measure(dir, levels, width, concurrency, None).await?;
    let tasks_per_second = result.tasks as f64 / result.wall.as_secs_f64();
    let compared = baseline
        .map(|baseline| {
            format!(
                " ({:.2}× the {:.0} tasks/s of {} `true` commands in {})",
                tasks_per_second / baseline.tasks_per_second,
                baseline.tasks_per_second,
                baseline.tasks,
                baseline.name
            )
        })
        .unwrap_or_default();
    let pooled = if connections <= concurrency as usize {
        "pooled".to_string()
    } else {
        format!("more than the {concurrency} the resource runs at once: not all reused")
    };
    println!(
        "{name}: {} HTTP tasks in {:.3} s · {tasks_per_second:.0} tasks/s{compared} · ready→started median {} p99 {} · {connections} {} opened ({pooled})",
        result.tasks,
        result.wall.as_secs_f64(),
        micros(percentile(&result.latencies, 0.5)),
        micros(percentile(&result.latencies, 0.99)),
        if connections == 1 {
            "connection"
        } else {
            "connections"
        },
    );
    Ok(())
}

/// The HTTP case on PostgreSQL, for `keel bench --postgres`: HTTP tasks are sent by the
/// scheduler itself, never queued for workers, so this is what a cluster does with them.
pub async fn http_tasks_on(
    dir: &Path,
    url: &str,
    levels: usize,
    width: usize,
    concurrency: u32,
    baseline: f64,
) -> Result<()> {
    let Measured {
        result,
        connections,
        ..
    } = measure(dir, levels, width, concurrency, Some(url)).await?;
    let rate = result.tasks as f64 / result.wall.as_secs_f64();
    println!(
        "PostgreSQL, HTTP tasks (sent by the scheduler, no worker): {} tasks in {:.3} s · {rate:.0} tasks/s ({:.2}× SQLite all-in-one with `true`) · ready→started median {} p99 {} · {connections} connections to the service",
        result.tasks,
        result.wall.as_secs_f64(),
        rate / baseline,
        micros(percentile(&result.latencies, 0.5)),
        micros(percentile(&result.latencies, 0.99)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipeline the HTTP case runs validates, with every task an HTTP task on the one
    /// resource.
    #[test]
    fn the_http_pipeline_validates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        std::fs::write(&path, http_pipeline("http_3x4", addr, 3, 4, 10)).unwrap();
        let spec = keel_config::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(spec.tasks.len(), 12);
        for task in &spec.tasks {
            let http = task.http.as_ref().expect("an HTTP task");
            assert_eq!(http.url, "http://127.0.0.1:9/task/{task}");
            assert_eq!(task.uses, ["service"]);
        }
    }

    /// The real engine sends every task's request on the resource's pool: one request a task,
    /// and no more connections than the resource lets run at once.
    #[tokio::test(flavor = "current_thread")]
    async fn http_tasks_reuse_the_pools_connections() {
        let dir = tempfile::tempdir().unwrap();
        let measured = measure(dir.path(), 3, 12, 4, None).await.unwrap();
        assert_eq!(measured.result.tasks, 36);
        assert!(
            (1..=4).contains(&measured.connections),
            "{} connections for 36 tasks at concurrency 4",
            measured.connections
        );
    }

    /// The same on PostgreSQL, as `keel bench --postgres` runs it: the scheduler sends the
    /// requests itself, each once, on the pool.
    #[tokio::test(flavor = "current_thread")]
    async fn http_tasks_run_with_the_state_on_postgres() {
        let Some(database) =
            keel_store::testing::TestDatabase::create("http_tasks_run_with_the_state_on_postgres")
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let measured = measure(dir.path(), 3, 12, 4, Some(database.url()))
            .await
            .unwrap();
        assert_eq!(measured.result.tasks, 36);
        assert!(
            (1..=4).contains(&measured.connections),
            "{} connections for 36 tasks at concurrency 4",
            measured.connections
        );
    }
}
