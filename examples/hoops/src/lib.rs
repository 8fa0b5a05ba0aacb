//! `hoops`: the processors of Keel's reference pipeline (examples/hoops/README.md).
//!
//! - [`season`]: a synthetic basketball season, deterministic from a seed.
//! - [`feed`]: that season served as JSON over HTTP on loopback, with switchable [`faults`].
//! - [`tasks`]: `hoops <task> <date>`, the pipeline's processors on one SQLite [`warehouse`],
//!   ending with the task contract's exit codes (docs/tasks.md) and `KEEL_RESULT` file ([`outcome`]).
//! - [`chaos`]: knobs a task plays on itself (`HOOPS_CHAOS`: crash, hang, corrupt result, regressed
//!   metric), for `keel chaos`.
//! - [`service`]: `hoops serve`, the same processors behind HTTP for Keel's HTTP tasks.
//!
//! It must not talk to anything but loopback, and it never needs Keel to run: every task is a
//! plain command, and `hoops serve` is a plain HTTP service.

pub mod chaos;
pub mod cli;
pub mod date;
pub mod faults;
pub mod feed;
pub mod http;
pub mod outcome;
pub mod rng;
pub mod season;
pub mod selftest;
pub mod service;
pub mod tasks;
pub mod warehouse;

/// `1 row`, `12 rows`: a number of rows as messages say it.
pub fn rows(count: impl Into<i128>) -> String {
    let count = count.into();
    format!("{count} {}", if count == 1 { "row" } else { "rows" })
}
