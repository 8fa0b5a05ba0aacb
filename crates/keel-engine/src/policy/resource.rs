use keel_model::{Millis, ResourceSpec};

use super::{Admission, Breaker, BreakerState, Bulkhead, RetryBudget, TokenBucket, Verdict};

/// Why an attempt on a resource cannot start yet, and what to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The rate limit: nothing can start before this instant.
    Until(Millis),
    /// The bulkhead is full: check again when an attempt on this resource ends.
    ForRelease,
    /// The breaker is open (`Some(instant)`: a probe may run then) or its half-open probe is
    /// in flight (`None`: check again when it ends). Waiters on a breaker are queued in order, so
    /// the probe goes to each in turn.
    Breaker(Option<Millis>),
}

/// Proof that an attempt holds a resource, returned by [`ResourcePolicy::acquire`] and handed
/// back to [`ResourcePolicy::release`] when the attempt ends.
///
/// It is neither `Clone` nor `Copy`, so one acquisition is released once.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be released when its attempt ends"]
pub struct Permit {
    /// Whether this attempt is the breaker's half-open probe.
    pub probe: bool,
}

/// Every limit one resource configures, composed: the rate limit, the bulkhead, the circuit
/// breaker and the retry budget (each optional; see their own docs for states and trade-offs).
///
/// The engine keeps one per resource and drives it through an attempt's life:
/// 1. [`check`](Self::check) before starting: `Ok(was_probe)` or the [`Wait`] to sleep on. It
///    takes nothing, so an attempt that uses several resources can check them all and acquire
///    only when every one says yes.
/// 2. [`acquire`](Self::acquire) right after a successful check, with the same `now`: it takes a
///    token, a bulkhead slot and, when half-open, the probe.
/// 3. [`release`](Self::release) when the attempt ends, with its [`Verdict`]: the slot comes back
///    and the breaker learns the result. Wake the [`Wait::ForRelease`] and
///    [`Wait::Breaker`] waiters then.
/// 4. [`can_retry`](Self::can_retry) and [`record_attempt`](Self::record_attempt) for the retry
///    budget, when deciding on and starting attempts.
///
/// A breaker that is not closed answers first, with [`Wait::Breaker`]: while the dependency is
/// down nothing else matters, and waiters on a breaker take turns at the probe. Otherwise, when
/// several limits block at once, a time limit wins: `Wait::Until` the latest instant any of
/// them gives. A release cannot lift a time limit, while the time passing may find that the
/// release the other limit needed has already happened. Memory is the sum of the parts' bounds.
///
/// ```
/// use std::time::Duration;
/// use keel_engine::policy::{ResourcePolicy, Verdict, Wait};
/// use keel_model::{Rate, ResourceSpec};
///
/// let spec = ResourceSpec {
///     name: "stats_feed".into(),
///     rate: Some(Rate { tokens: 20, per: Duration::from_secs(1) }),
///     concurrency: Some(1),
///     breaker: None,
///     retry_budget: None,
///     ready: None,
///     tokens: keel_model::TokenUse::Attempt,
///     quota: None,
/// };
/// let mut feed = ResourcePolicy::new(&spec, 0);
/// assert_eq!(feed.check(0), Ok(false));
/// let permit = feed.acquire(0);
/// assert_eq!(feed.check(5), Err(Wait::ForRelease));
/// feed.release(permit, Verdict::Success, 10);
/// assert_eq!(feed.check(10), Ok(false));
/// ```
#[derive(Debug, Clone)]
pub struct ResourcePolicy {
    name: String,
    rate: Option<TokenBucket>,
    bulkhead: Option<Bulkhead>,
    breaker: Option<Breaker>,
    retry_budget: Option<RetryBudget>,
}

impl ResourcePolicy {
    pub fn new(spec: &ResourceSpec, now: Millis) -> Self {
        ResourcePolicy {
            name: spec.name.clone(),
            // A resource whose tasks take request tokens (`tokens = "request"`) leaves its rate
            // to the token server, so an attempt is not charged on top of its requests.
            rate: spec
                .rate
                .filter(|_| spec.tokens.is_attempt())
                .map(|rate| TokenBucket::new(rate, now)),
            bulkhead: spec.concurrency.map(Bulkhead::new),
            breaker: spec.breaker.clone().map(Breaker::new),
            retry_budget: spec.retry_budget.clone().map(RetryBudget::new),
        }
    }

    /// Replays attempt starts that happened before this policy existed (a previous Keel's,
    /// read from the store), oldest first, so a restart does not grant a fresh burst on top of
    /// what was just used. Starts the rate would not have allowed are ignored.
    pub fn replay_starts(&mut self, starts: &[Millis]) {
        if let Some(bucket) = self.rate.as_mut() {
            for start in starts {
                let _ = bucket.try_take(*start);
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks every configured limit without taking anything. `Ok(was_probe)` if an attempt
    /// may start now, where `was_probe` says it would be the breaker's half-open probe.
    pub fn check(&mut self, now: Millis) -> Result<bool, Wait> {
        let mut until: Option<Millis> = None;
        let mut for_release = false;
        let mut probe = false;
        if let Some(breaker) = &self.breaker {
            match breaker.would_admit(now) {
                Admission::Allow => {}
                Admission::Probe => probe = true,
                Admission::WaitUntil(open_until) => return Err(Wait::Breaker(Some(open_until))),
                Admission::WaitForProbe => return Err(Wait::Breaker(None)),
            }
        }
        if let Some(bulkhead) = &self.bulkhead {
            for_release |= !bulkhead.has_room();
        }
        if let Some(Err(next_token)) = self.rate.as_ref().map(|rate| rate.peek(now)) {
            until = Some(until.map_or(next_token, |open_until| open_until.max(next_token)));
        }
        match (until, for_release) {
            (Some(instant), _) => Err(Wait::Until(instant)),
            (None, true) => Err(Wait::ForRelease),
            (None, false) => Ok(probe),
        }
    }

    /// Takes a token, a bulkhead slot and, if the breaker is half-open, the probe.
    ///
    /// Only call it right after [`check`](Self::check) returned `Ok` for the same `now`, with no
    /// other call in between; debug builds assert this. Called otherwise, it takes whatever is
    /// free and still returns a permit.
    pub fn acquire(&mut self, now: Millis) -> Permit {
        debug_assert!(
            self.check(now).is_ok(),
            "acquire on resource {:?} without a successful check",
            self.name
        );
        if let Some(rate) = &mut self.rate {
            let _ = rate.try_take(now);
        }
        if let Some(bulkhead) = &mut self.bulkhead {
            bulkhead.enter();
        }
        let probe = self
            .breaker
            .as_mut()
            .is_some_and(|breaker| breaker.admit(now) == Admission::Probe);
        Permit { probe }
    }

    /// A permit for an attempt that was already running when this policy was made (adopted
    /// after a restart): it takes its bulkhead place unconditionally and is not a probe.
    pub fn adopt(&mut self) -> Permit {
        if let Some(bulkhead) = &mut self.bulkhead {
            bulkhead.occupy();
        }
        Permit { probe: false }
    }

    /// Gives back what [`acquire`](Self::acquire) took and tells the breaker how the attempt
    /// ended. Returns the breaker's new state when this changed it.
    pub fn release(
        &mut self,
        permit: Permit,
        verdict: Verdict,
        now: Millis,
    ) -> Option<BreakerState> {
        if let Some(bulkhead) = &mut self.bulkhead {
            bulkhead.leave();
        }
        self.breaker
            .as_mut()
            .and_then(|breaker| breaker.record(verdict, permit.probe, now))
    }

    /// Whether the breaker has stayed open for its `max_open` or longer.
    pub fn breaker_open_too_long(&self, now: Millis) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|breaker| breaker.open_too_long(now))
    }

    /// Since when the breaker has been open, if it is not closed.
    pub fn breaker_open_since(&self) -> Option<Millis> {
        self.breaker.as_ref().and_then(Breaker::open_since)
    }

    /// Takes up a breaker state a previous Keel recorded; see [`Breaker::restore`].
    pub fn restore_breaker(&mut self, open_since: Millis, open_until: Millis) {
        if let Some(breaker) = &mut self.breaker {
            breaker.restore(open_since, open_until);
        }
    }

    /// The breaker's state at `now`, if the resource has a breaker.
    pub fn breaker_state(&self, now: Millis) -> Option<BreakerState> {
        self.breaker.as_ref().map(|breaker| breaker.state(now))
    }

    /// Attempts holding a bulkhead slot, if the resource has a bulkhead.
    pub fn in_use(&self) -> Option<u32> {
        self.bulkhead.as_ref().map(Bulkhead::in_use)
    }

    /// Whether the retry budget allows one more retry now; always true without a budget.
    pub fn can_retry(&mut self, now: Millis) -> bool {
        self.retry_budget
            .as_mut()
            .is_none_or(|budget| budget.can_retry(now))
    }

    /// Counts an attempt (a retry when `is_retry`) in the retry budget, if there is one.
    pub fn record_attempt(&mut self, is_retry: bool, now: Millis) {
        if let Some(budget) = &mut self.retry_budget {
            budget.record_attempt(is_retry, now);
        }
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;
    use keel_model::Rate;
    use std::time::Duration;

    #[test]
    fn replayed_starts_use_up_the_burst() {
        let spec = ResourceSpec {
            name: "api".into(),
            rate: Some(Rate {
                tokens: 2,
                per: Duration::from_secs(1),
            }),
            concurrency: None,
            breaker: None,
            retry_budget: None,
            ready: None,
            tokens: keel_model::TokenUse::Attempt,
            quota: None,
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        policy.replay_starts(&[900, 950]);
        assert_eq!(
            policy.check(1_000),
            Err(Wait::Until(1_900)),
            "two starts just before the restart count"
        );
        assert!(policy.check(1_900).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_model::{BreakerSpec, Rate, RetryBudgetSpec};
    use proptest::prelude::*;

    use super::*;

    const COOLDOWN: Millis = 30_000;

    fn bare() -> ResourceSpec {
        ResourceSpec {
            name: "stats_feed".into(),
            rate: None,
            concurrency: None,
            breaker: None,
            retry_budget: None,
            ready: None,
            tokens: keel_model::TokenUse::Attempt,
            quota: None,
        }
    }

    fn breaker(failures: u32) -> Option<BreakerSpec> {
        Some(BreakerSpec {
            failures,
            ratio: None,
            window: 0,
            cooldown: Duration::from_millis(COOLDOWN as u64),
            max_open: Duration::from_secs(1800),
        })
    }

    fn rate(tokens: u32, per_ms: u64) -> Option<Rate> {
        Some(Rate {
            tokens,
            per: Duration::from_millis(per_ms),
        })
    }

    /// Opens the breaker of `policy` at `now` with failing attempts.
    fn trip(policy: &mut ResourcePolicy, now: Millis) {
        while policy.breaker_state(now) == Some(BreakerState::Closed) {
            assert_eq!(policy.check(now), Ok(false));
            let permit = policy.acquire(now);
            policy.release(permit, Verdict::Failure, now);
        }
    }

    #[test]
    fn a_resource_without_limits_always_admits() {
        let mut policy = ResourcePolicy::new(&bare(), 0);
        assert_eq!(policy.name(), "stats_feed");
        for now in 0..1_000 {
            assert_eq!(policy.check(now), Ok(false));
            let _held = policy.acquire(now);
        }
        assert_eq!(policy.breaker_state(0), None);
        assert_eq!(policy.in_use(), None);
        assert!(policy.can_retry(0));
        policy.record_attempt(true, 0);
        assert!(policy.can_retry(0));
    }

    #[test]
    fn attempts_are_not_charged_the_rate_of_a_resource_taken_per_request() {
        let spec = ResourceSpec {
            rate: rate(1, 1_000),
            tokens: keel_model::TokenUse::Request,
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        for now in [0, 1, 2] {
            assert_eq!(policy.check(now), Ok(false));
            let permit = policy.acquire(now);
            policy.release(permit, Verdict::Success, now);
        }
    }

    #[test]
    fn check_reports_the_rate_limit_as_a_time() {
        let spec = ResourceSpec {
            rate: rate(2, 1_000),
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        for now in [0, 100] {
            assert_eq!(policy.check(now), Ok(false));
            let permit = policy.acquire(now);
            policy.release(permit, Verdict::Success, now);
        }
        assert_eq!(policy.check(200), Err(Wait::Until(1_000)));
        // Checking took nothing: the answer is the same, and the token is there on time.
        assert_eq!(policy.check(200), Err(Wait::Until(1_000)));
        assert_eq!(policy.check(1_000), Ok(false));
    }

    #[test]
    fn check_reports_a_full_bulkhead_as_waiting_for_a_release() {
        let spec = ResourceSpec {
            concurrency: Some(2),
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        let first = policy.acquire(0);
        let second = policy.acquire(0);
        assert_eq!(policy.in_use(), Some(2));
        assert_eq!(policy.check(1), Err(Wait::ForRelease));
        assert_eq!(policy.release(first, Verdict::Success, 2), None);
        assert_eq!(policy.in_use(), Some(1));
        assert_eq!(policy.check(2), Ok(false));
        policy.release(second, Verdict::Failure, 3);
        assert_eq!(policy.in_use(), Some(0));
    }

    #[test]
    fn check_reports_an_open_breaker_and_a_probe_in_flight_as_breaker_waits() {
        let spec = ResourceSpec {
            breaker: breaker(2),
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        trip(&mut policy, 1_000);
        assert_eq!(
            policy.check(1_001),
            Err(Wait::Breaker(Some(1_000 + COOLDOWN)))
        );
        let half_open = 1_000 + COOLDOWN;
        assert_eq!(policy.check(half_open), Ok(true));
        // Checking did not take the probe.
        assert_eq!(policy.check(half_open), Ok(true));
        let probe = policy.acquire(half_open);
        assert_eq!(probe, Permit { probe: true });
        assert_eq!(policy.check(half_open + 1), Err(Wait::Breaker(None)));
        assert_eq!(
            policy.release(probe, Verdict::Success, half_open + 2),
            Some(BreakerState::Closed)
        );
        assert_eq!(policy.check(half_open + 2), Ok(false));
    }

    #[test]
    fn a_time_limit_wins_over_a_release_and_the_latest_time_wins() {
        let spec = ResourceSpec {
            rate: rate(1, 60_000),
            concurrency: Some(1),
            breaker: breaker(1),
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        let held = policy.acquire(0);
        // Full bulkhead and no token until 60 000: the time.
        assert_eq!(policy.check(1), Err(Wait::Until(60_000)));
        // The attempt fails: the breaker opens until 40 000, before the token returns.
        assert_eq!(
            policy.release(held, Verdict::Failure, 10_000),
            Some(BreakerState::Open { until: 40_000 })
        );
        // An open breaker answers first; once it lets a probe through, the rate still rules.
        assert_eq!(policy.check(10_000), Err(Wait::Breaker(Some(40_000))));
        assert_eq!(policy.check(40_000), Err(Wait::Until(60_000)));
        assert_eq!(policy.check(60_000), Ok(true));
    }

    #[test]
    fn a_probe_is_released_as_a_probe() {
        let spec = ResourceSpec {
            concurrency: Some(3),
            breaker: breaker(1),
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        // An attempt that started before the trip is still running.
        let old = policy.acquire(0);
        trip(&mut policy, 10);
        assert_eq!(policy.in_use(), Some(1));
        let probe = policy.acquire(10 + COOLDOWN);
        assert!(probe.probe);
        assert_eq!(policy.in_use(), Some(2));
        // The old attempt's success is not the probe's and does not close the breaker.
        assert_eq!(policy.release(old, Verdict::Success, 11 + COOLDOWN), None);
        assert_eq!(
            policy.breaker_state(11 + COOLDOWN),
            Some(BreakerState::HalfOpen { probing: true })
        );
        // The probe's failure reopens it with a fresh cooldown.
        let failed_at = 20 + COOLDOWN;
        assert_eq!(
            policy.release(probe, Verdict::Failure, failed_at),
            Some(BreakerState::Open {
                until: failed_at + COOLDOWN
            })
        );
        assert_eq!(policy.in_use(), Some(0));
    }

    #[test]
    fn the_retry_budget_is_consulted_only_when_configured() {
        let spec = ResourceSpec {
            retry_budget: Some(RetryBudgetSpec {
                ratio: 0.2,
                window: Duration::from_secs(60),
                min: 3,
            }),
            ..bare()
        };
        let mut policy = ResourcePolicy::new(&spec, 0);
        for _ in 0..10 {
            policy.record_attempt(false, 0);
        }
        let mut granted = 0;
        while policy.can_retry(0) {
            policy.record_attempt(true, 0);
            granted += 1;
        }
        assert_eq!(granted, 5);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(Millis),
        Start,
        Finish(Verdict),
    }

    fn step() -> impl Strategy<Value = Step> {
        let verdict = prop_oneof![
            Just(Verdict::Success),
            Just(Verdict::Failure),
            Just(Verdict::Neutral)
        ];
        prop_oneof![
            (0i64..3_000).prop_map(Step::Wait),
            Just(Step::Start),
            verdict.prop_map(Step::Finish),
        ]
    }

    proptest! {
        /// Any schedule that starts attempts only when check() allows it keeps the bulkhead
        /// count equal to the permits held and within the limit, never holds two probes, and
        /// releases each probe as a probe.
        #[test]
        fn composition_keeps_its_books_straight(
            limit in 1u32..5,
            steps in proptest::collection::vec(step(), 0..300),
        ) {
            let spec = ResourceSpec {
                rate: rate(3, 1_000),
                concurrency: Some(limit),
                breaker: breaker(2),
                ..bare()
            };
            let mut policy = ResourcePolicy::new(&spec, 0);
            let mut now = 0;
            let mut held: Vec<Permit> = Vec::new();
            for step in steps {
                match step {
                    Step::Wait(by) => now += by,
                    Step::Start => match policy.check(now) {
                        Ok(was_probe) => {
                            let permit = policy.acquire(now);
                            prop_assert_eq!(permit.probe, was_probe);
                            held.push(permit);
                        }
                        Err(Wait::Until(instant)) => prop_assert!(instant > now),
                        Err(Wait::ForRelease) => prop_assert!(!held.is_empty()),
                        Err(Wait::Breaker(Some(instant))) => prop_assert!(instant > now),
                        Err(Wait::Breaker(None)) => {
                            prop_assert!(held.iter().any(|permit| permit.probe))
                        }
                    },
                    Step::Finish(verdict) => {
                        if !held.is_empty() {
                            let permit = held.remove(0);
                            policy.release(permit, verdict, now);
                        }
                    }
                }
                prop_assert_eq!(policy.in_use(), Some(held.len() as u32));
                prop_assert!(held.len() as u32 <= limit);
                prop_assert!(held.iter().filter(|permit| permit.probe).count() <= 1);
            }
        }
    }
}
