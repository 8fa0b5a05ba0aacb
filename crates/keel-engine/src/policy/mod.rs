//! Resilience policies for shared resources (`[resources.*]` in docs/pipeline.md): a rate
//! limit ([`TokenBucket`]), a concurrency cap ([`Bulkhead`]), a circuit [`Breaker`] and a
//! [`RetryBudget`], and [`ResourcePolicy`], which composes whichever of them a resource
//! configures; [`RequestTokens`] is a resource's rate and quota as `keel token` takes them, one
//! request at a time.
//!
//! Every type here is a pure, synchronous state machine. None of them does I/O, starts a thread,
//! reads a clock or draws a random number: each method that depends on time takes `now` (a
//! [`Millis`]) from the caller, so every rule is tested on a manual clock in milliseconds. They
//! decide and never wait. The engine does the waiting, because Keel's waits are durable (a retry
//! is a row with a `not_before`, not a sleeping future), so a tower-style layer that sleeps inside
//! the call would be the wrong shape here; these are the state cores such a layer would wrap.
//!
//! Time never runs backwards inside a policy that keeps a history: a `now` earlier than one it has
//! already seen is read as the latest one seen, so a wall clock that steps back cannot reorder
//! its records.
//!
//! Memory is bounded independently of traffic and of how long Keel runs; each type documents its
//! bound. The engine, their only user, stores what must outlive it: an open breaker (since when,
//! and when it may probe) is taken up again after a restart, and a rate limit replays the last
//! window's attempt starts from the store.

mod breaker;
mod budget;
mod bulkhead;
mod rate;
mod resource;
mod tokens;

use std::time::Duration;

use keel_model::Millis;

pub use breaker::{Admission, Breaker, BreakerState, Verdict};
pub use budget::RetryBudget;
pub use bulkhead::Bulkhead;
pub use rate::TokenBucket;
pub use resource::{Permit, ResourcePolicy, Wait};
pub use tokens::{QuotaAlert, RequestTokens, Take};

/// A duration in whole milliseconds, rounded up so that a limit is never shortened, and
/// saturated at [`Millis::MAX`].
fn millis_rounded_up(duration: Duration) -> Millis {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    Millis::try_from(millis).unwrap_or(Millis::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_up_to_whole_milliseconds_and_saturate() {
        assert_eq!(millis_rounded_up(Duration::ZERO), 0);
        assert_eq!(millis_rounded_up(Duration::from_micros(1)), 1);
        assert_eq!(millis_rounded_up(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_rounded_up(Duration::from_micros(1500)), 2);
        assert_eq!(millis_rounded_up(Duration::MAX), Millis::MAX);
    }
}
