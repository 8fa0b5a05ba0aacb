//! The policy for attempts that end *not ready* (exit 75), apart from `retries`, which is for
//! failures: `not_ready = { every = "2h", max = 12 }` in docs/pipeline.md.

use std::time::Duration;

/// How a task that answers *not ready* is asked again: every `every`, at most `max` times in
/// all (counted on the interval from the task's first start). With this policy the task's
/// `deadline` does not bound its attempts; `every` and `max` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NotReadyPolicy {
    /// The wait between a *not ready* answer and the next attempt, without jitter: a task that
    /// checks every 2 hours is asked every 2 hours.
    pub every: Duration,
    /// How many *not ready* answers the task may give; the last one ends it `not_ready`.
    pub max: u32,
}
