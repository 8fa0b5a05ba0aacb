use std::collections::VecDeque;

use keel_model::{BreakerSpec, Millis, Outcome};

use super::millis_rounded_up;

/// Where a [`Breaker`] is, as callers see it at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts run and their results are counted.
    Closed,
    /// Attempts wait until `until`; then one probe may run.
    Open { until: Millis },
    /// The cooldown has passed: one probe attempt decides. `probing` is true while it runs.
    HalfOpen { probing: bool },
}

/// The breaker's answer to "may an attempt start now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: start it.
    Allow,
    /// Start it as the one half-open probe. The caller must report its result with
    /// `was_probe = true`, or the breaker stays half-open with the probe in flight.
    Probe,
    /// Open: nothing may start before this instant.
    WaitUntil(Millis),
    /// Half-open and the probe is still running: wait until an attempt ends.
    WaitForProbe,
}

/// What a finished attempt says about the dependency, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The dependency answered: `succeeded`, `no_data`, `not_ready`.
    Success,
    /// The dependency failed or did not answer: `failed`, `timed_out`, `stalled`, `lost`.
    Failure,
    /// Says nothing about the dependency: `failed_permanent` (a bad input, not a sick API),
    /// `cancelled`, and the outcomes that were never attempts.
    Neutral,
}

impl Verdict {
    /// The verdict for an attempt that ended with `outcome`.
    pub fn of(outcome: Outcome) -> Verdict {
        match outcome {
            // A result that failed a check came from a dependency that answered.
            Outcome::Succeeded | Outcome::NoData | Outcome::NotReady | Outcome::FailedCheck => {
                Verdict::Success
            }
            Outcome::Failed | Outcome::TimedOut | Outcome::Stalled | Outcome::Lost => {
                Verdict::Failure
            }
            Outcome::FailedPermanent
            | Outcome::Cancelled
            | Outcome::Skipped
            | Outcome::UpstreamFailed => Verdict::Neutral,
        }
    }
}

/// A circuit breaker: stops sending attempts to a dependency that keeps failing, and lets exactly
/// one probe find out when it has recovered.
///
/// States:
/// - **Closed.** Every attempt is allowed and every result counted. It opens after `failures`
///   consecutive failures, or, when `ratio` is set, once at least `window` results are known and
///   the failure share of the last `window` reaches `ratio` (checked after every counted result,
///   as long as the window holds at least one failure). A success resets the consecutive count.
/// - **Open { until }.** Nothing is admitted before `until = opened + cooldown`; callers wait and
///   use up no attempts.
/// - **Half-open.** Once the cooldown has passed, the next [`admit`](Self::admit) returns the one
///   [`Admission::Probe`]; until its result is recorded, everyone else gets
///   [`Admission::WaitForProbe`]. A successful probe closes the breaker with fresh counters; a
///   failed one opens it again with a fresh cooldown; a neutral one (cancelled, say) hands the
///   probe to the next caller.
///
/// Results of ordinary attempts that finish while the breaker is open or half-open started before
/// it opened: they neither reopen nor close it, and they are dropped rather than counted later,
/// because they describe the dependency before the trip.
///
/// Trade-offs:
/// - One probe, not a trickle: recovery is confirmed by a single success, which keeps the load
///   on a sick dependency at one attempt per cooldown, at the price of a slower ramp back up.
/// - A neutral verdict never moves the breaker, so cancellations and permanent failures (bad
///   input) cannot open it; a dependency that only ever times out still does.
/// - The ratio rule needs a full window, so a handful of early failures cannot trip it; the
///   consecutive rule covers a dependency that is down outright.
/// - Memory: the last `window` results, one byte each, kept only when `ratio` is set, plus a few
///   counters.
///
/// Degenerate settings do not panic: `failures = 0` disables the consecutive rule and
/// `window = 0` the ratio rule.
///
/// ```
/// use std::time::Duration;
/// use keel_engine::policy::{Admission, Breaker, BreakerState, Verdict};
/// use keel_model::BreakerSpec;
///
/// let spec = BreakerSpec { failures: 2, ratio: None, window: 0, cooldown: Duration::from_secs(30), max_open: Duration::from_secs(1800) };
/// let mut breaker = Breaker::new(spec);
/// breaker.record(Verdict::Failure, false, 0);
/// assert_eq!(breaker.record(Verdict::Failure, false, 10), Some(BreakerState::Open { until: 30_010 }));
/// assert_eq!(breaker.admit(20_000), Admission::WaitUntil(30_010));
/// assert_eq!(breaker.admit(30_010), Admission::Probe);
/// assert_eq!(breaker.admit(30_020), Admission::WaitForProbe);
/// assert_eq!(breaker.record(Verdict::Success, true, 31_000), Some(BreakerState::Closed));
/// ```
#[derive(Debug, Clone)]
pub struct Breaker {
    failures_to_open: u32,
    ratio: Option<f64>,
    window: u32,
    cooldown: Millis,
    /// How long the breaker may stay open, failed probes included, before waiting tasks give up.
    max_open: Millis,
    /// When the breaker last opened from closed; cleared when it closes.
    open_since: Option<Millis>,
    /// As stored: an `Open` whose cooldown has passed is half-open for callers.
    mode: BreakerState,
    consecutive_failures: u32,
    /// The last results while closed, oldest first, `true` for a failure; at most `window` of
    /// them, and only when the ratio rule is on.
    recent: VecDeque<bool>,
    recent_failures: u32,
}

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Self {
        Breaker {
            failures_to_open: spec.failures,
            ratio: spec.ratio,
            window: spec.window,
            cooldown: millis_rounded_up(spec.cooldown),
            max_open: millis_rounded_up(spec.max_open),
            open_since: None,
            mode: BreakerState::Closed,
            consecutive_failures: 0,
            recent: VecDeque::new(),
            recent_failures: 0,
        }
    }

    /// The state at `now`. An `Open` whose cooldown has passed reads as
    /// `HalfOpen { probing: false }`.
    pub fn state(&self, now: Millis) -> BreakerState {
        match self.mode {
            BreakerState::Open { until } if until <= now => {
                BreakerState::HalfOpen { probing: false }
            }
            mode => mode,
        }
    }

    /// What [`admit`](Self::admit) would answer now, without handing out the probe.
    pub fn would_admit(&self, now: Millis) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Allow,
            BreakerState::Open { until } => Admission::WaitUntil(until),
            BreakerState::HalfOpen { probing: false } => Admission::Probe,
            BreakerState::HalfOpen { probing: true } => Admission::WaitForProbe,
        }
    }

    /// Asks to start an attempt now. [`Admission::Probe`] moves the breaker to
    /// `HalfOpen { probing: true }`: that attempt is the probe.
    pub fn admit(&mut self, now: Millis) -> Admission {
        let admission = self.would_admit(now);
        if admission == Admission::Probe {
            self.mode = BreakerState::HalfOpen { probing: true };
        }
        admission
    }

    /// Records how an attempt ended; `was_probe` is whether [`admit`](Self::admit) gave it
    /// [`Admission::Probe`]. Returns the new state when this changed it.
    ///
    /// A probe result reported when no probe is in flight (reported twice, say) is treated as an
    /// ordinary result.
    pub fn record(
        &mut self,
        verdict: Verdict,
        was_probe: bool,
        now: Millis,
    ) -> Option<BreakerState> {
        let before = self.state(now);
        if was_probe && self.mode == (BreakerState::HalfOpen { probing: true }) {
            match verdict {
                Verdict::Success => self.close(),
                Verdict::Failure => self.open(now),
                Verdict::Neutral => self.mode = BreakerState::HalfOpen { probing: false },
            }
        } else if self.mode == BreakerState::Closed {
            self.count(verdict, now);
        }
        let after = self.state(now);
        (after != before).then_some(after)
    }

    fn count(&mut self, verdict: Verdict, now: Millis) {
        let failed = match verdict {
            Verdict::Success => false,
            Verdict::Failure => true,
            Verdict::Neutral => return,
        };
        if failed {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
        self.remember(failed);
        let too_many_in_a_row =
            self.failures_to_open > 0 && self.consecutive_failures >= self.failures_to_open;
        if too_many_in_a_row || self.failure_share_reached() {
            self.open(now);
        }
    }

    fn remember(&mut self, failed: bool) {
        if self.ratio.is_none() || self.window == 0 {
            return;
        }
        if self.recent.len() >= self.window as usize && self.recent.pop_front() == Some(true) {
            self.recent_failures -= 1;
        }
        self.recent.push_back(failed);
        if failed {
            self.recent_failures += 1;
        }
    }

    fn failure_share_reached(&self) -> bool {
        let Some(ratio) = self.ratio else {
            return false;
        };
        let window_full = self.window > 0 && self.recent.len() >= self.window as usize;
        window_full
            && self.recent_failures > 0
            && f64::from(self.recent_failures) / f64::from(self.window) >= ratio
    }

    fn open(&mut self, now: Millis) {
        self.mode = BreakerState::Open {
            until: now.saturating_add(self.cooldown),
        };
        self.open_since.get_or_insert(now);
        self.forget();
    }

    fn close(&mut self) {
        self.mode = BreakerState::Closed;
        self.open_since = None;
        self.forget();
    }

    /// Since when the breaker has been open (or half-open) without closing in between.
    pub fn open_since(&self) -> Option<Millis> {
        self.open_since
    }

    /// Whether the breaker has been open for `max_open` or longer at `now`: the dependency is
    /// down for good as far as waiting tasks are concerned.
    pub fn open_too_long(&self, now: Millis) -> bool {
        self.open_since
            .is_some_and(|since| now.saturating_sub(since) >= self.max_open)
    }

    /// Takes up the state a previous Keel recorded: open since `open_since`, letting a probe
    /// through from `open_until` (a probe that was in flight when that Keel died is gone, so a
    /// half-open breaker lets the next attempt probe).
    pub fn restore(&mut self, open_since: Millis, open_until: Millis) {
        self.mode = BreakerState::Open { until: open_until };
        self.open_since = Some(open_since);
        self.forget();
    }

    /// Clears the counters; `recent` keeps its allocation, which is bounded by `window`.
    fn forget(&mut self) {
        self.consecutive_failures = 0;
        self.recent.clear();
        self.recent_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    const COOLDOWN: Millis = 30_000;

    fn spec(failures: u32, ratio: Option<f64>, window: u32) -> BreakerSpec {
        BreakerSpec {
            failures,
            ratio,
            window,
            cooldown: Duration::from_millis(COOLDOWN as u64),
            max_open: Duration::from_secs(1800),
        }
    }

    fn consecutive(failures: u32) -> Breaker {
        Breaker::new(spec(failures, None, 0))
    }

    /// Opens `breaker` at `now` with consecutive failures.
    fn trip(breaker: &mut Breaker, now: Millis) {
        while breaker.state(now) == BreakerState::Closed {
            breaker.record(Verdict::Failure, false, now);
        }
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let mut breaker = consecutive(3);
        assert_eq!(breaker.record(Verdict::Failure, false, 1), None);
        assert_eq!(breaker.record(Verdict::Failure, false, 2), None);
        assert_eq!(breaker.admit(2), Admission::Allow);
        assert_eq!(
            breaker.record(Verdict::Failure, false, 3),
            Some(BreakerState::Open {
                until: 3 + COOLDOWN
            })
        );
        assert_eq!(
            breaker.state(4),
            BreakerState::Open {
                until: 3 + COOLDOWN
            }
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let mut breaker = consecutive(3);
        breaker.record(Verdict::Failure, false, 1);
        breaker.record(Verdict::Failure, false, 2);
        breaker.record(Verdict::Success, false, 3);
        breaker.record(Verdict::Failure, false, 4);
        assert_eq!(breaker.record(Verdict::Failure, false, 5), None);
        assert_eq!(breaker.state(5), BreakerState::Closed);
        assert!(breaker.record(Verdict::Failure, false, 6).is_some());
    }

    #[test]
    fn neutral_results_neither_count_nor_reset() {
        let mut breaker = consecutive(2);
        breaker.record(Verdict::Failure, false, 1);
        for now in 2..20 {
            assert_eq!(breaker.record(Verdict::Neutral, false, now), None);
        }
        assert!(breaker.record(Verdict::Failure, false, 20).is_some());
    }

    #[test]
    fn the_ratio_rule_opens_once_the_window_is_full_and_the_share_is_reached() {
        // Consecutive failures alone would need 100; the share of the last 10 decides.
        let mut breaker = Breaker::new(spec(100, Some(0.5), 10));
        for now in 0..4 {
            breaker.record(Verdict::Failure, false, now);
            breaker.record(Verdict::Success, false, now);
        }
        // 8 results, 4 failures: the window is not full yet.
        assert_eq!(breaker.state(8), BreakerState::Closed);
        breaker.record(Verdict::Success, false, 8);
        assert_eq!(breaker.state(8), BreakerState::Closed);
        // The tenth result makes 5 failures out of 10.
        assert_eq!(
            breaker.record(Verdict::Failure, false, 9),
            Some(BreakerState::Open {
                until: 9 + COOLDOWN
            })
        );
    }

    #[test]
    fn the_ratio_rule_looks_only_at_the_last_window() {
        let mut breaker = Breaker::new(spec(100, Some(0.5), 4));
        // One failure among the first results, then successes push it out of the window.
        for verdict in [Verdict::Failure, Verdict::Success, Verdict::Success] {
            breaker.record(verdict, false, 0);
        }
        for _ in 0..10 {
            assert_eq!(breaker.record(Verdict::Success, false, 0), None);
        }
        // The last 4 are all successes; one failure is 25%.
        assert_eq!(breaker.record(Verdict::Failure, false, 1), None);
        assert!(breaker.record(Verdict::Failure, false, 2).is_some());
    }

    #[test]
    fn open_waits_until_the_cooldown_then_admits_exactly_one_probe() {
        let mut breaker = consecutive(1);
        trip(&mut breaker, 1_000);
        let until = 1_000 + COOLDOWN;
        assert_eq!(breaker.admit(1_000), Admission::WaitUntil(until));
        assert_eq!(breaker.admit(until - 1), Admission::WaitUntil(until));
        assert_eq!(
            breaker.state(until),
            BreakerState::HalfOpen { probing: false }
        );
        assert_eq!(breaker.admit(until), Admission::Probe);
        assert_eq!(
            breaker.state(until),
            BreakerState::HalfOpen { probing: true }
        );
        assert_eq!(breaker.admit(until), Admission::WaitForProbe);
        assert_eq!(breaker.admit(until + 60_000), Admission::WaitForProbe);
    }

    #[test]
    fn a_successful_probe_closes_with_fresh_counters() {
        let mut breaker = consecutive(2);
        trip(&mut breaker, 0);
        assert_eq!(breaker.admit(COOLDOWN), Admission::Probe);
        assert_eq!(
            breaker.record(Verdict::Success, true, COOLDOWN + 5),
            Some(BreakerState::Closed)
        );
        assert_eq!(breaker.admit(COOLDOWN + 5), Admission::Allow);
        // Fresh: one failure does not reopen a breaker that needs two.
        assert_eq!(breaker.record(Verdict::Failure, false, COOLDOWN + 6), None);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_fresh_cooldown() {
        let mut breaker = consecutive(1);
        trip(&mut breaker, 0);
        assert_eq!(breaker.admit(COOLDOWN + 100), Admission::Probe);
        let failed_at = COOLDOWN + 2_000;
        let reopened = BreakerState::Open {
            until: failed_at + COOLDOWN,
        };
        assert_eq!(
            breaker.record(Verdict::Failure, true, failed_at),
            Some(reopened)
        );
        assert_eq!(
            breaker.admit(failed_at + 1),
            Admission::WaitUntil(failed_at + COOLDOWN)
        );
        assert_eq!(breaker.admit(failed_at + COOLDOWN), Admission::Probe);
    }

    #[test]
    fn a_neutral_probe_hands_the_probe_to_the_next_caller() {
        let mut breaker = consecutive(1);
        trip(&mut breaker, 0);
        assert_eq!(breaker.admit(COOLDOWN), Admission::Probe);
        assert_eq!(
            breaker.record(Verdict::Neutral, true, COOLDOWN + 1),
            Some(BreakerState::HalfOpen { probing: false })
        );
        assert_eq!(breaker.admit(COOLDOWN + 2), Admission::Probe);
    }

    #[test]
    fn late_results_of_attempts_started_before_the_trip_are_ignored() {
        let mut breaker = consecutive(2);
        trip(&mut breaker, 0);
        let open = breaker.state(1);
        // Successes while open do not close it, failures do not extend the cooldown.
        assert_eq!(breaker.record(Verdict::Success, false, 1), None);
        assert_eq!(breaker.record(Verdict::Failure, false, 2), None);
        assert_eq!(breaker.state(3), open);
        // Nor while half-open with the probe in flight.
        assert_eq!(breaker.admit(COOLDOWN), Admission::Probe);
        assert_eq!(breaker.record(Verdict::Success, false, COOLDOWN + 1), None);
        assert_eq!(breaker.record(Verdict::Failure, false, COOLDOWN + 2), None);
        assert_eq!(
            breaker.state(COOLDOWN + 3),
            BreakerState::HalfOpen { probing: true }
        );
        // And they were not saved up: after the probe closes it, one failure is not two.
        breaker.record(Verdict::Success, true, COOLDOWN + 4);
        assert_eq!(breaker.record(Verdict::Failure, false, COOLDOWN + 5), None);
    }

    #[test]
    fn a_probe_reported_twice_counts_the_second_time_as_an_ordinary_result() {
        let mut breaker = consecutive(3);
        trip(&mut breaker, 0);
        assert_eq!(breaker.admit(COOLDOWN), Admission::Probe);
        breaker.record(Verdict::Success, true, COOLDOWN + 1);
        assert_eq!(breaker.record(Verdict::Success, true, COOLDOWN + 2), None);
        assert_eq!(breaker.state(COOLDOWN + 2), BreakerState::Closed);
    }

    #[test]
    fn outcomes_map_to_verdicts() {
        for outcome in Outcome::ALL {
            let expected = match outcome {
                Outcome::Succeeded | Outcome::NoData | Outcome::NotReady | Outcome::FailedCheck => {
                    Verdict::Success
                }
                Outcome::Failed | Outcome::TimedOut | Outcome::Stalled | Outcome::Lost => {
                    Verdict::Failure
                }
                _ => Verdict::Neutral,
            };
            assert_eq!(Verdict::of(*outcome), expected, "{outcome}");
        }
    }

    #[test]
    fn degenerate_settings_do_not_trip_or_panic() {
        let mut breaker = Breaker::new(spec(0, Some(0.5), 0));
        for now in 0..1_000 {
            assert_eq!(breaker.record(Verdict::Failure, false, now), None);
        }
        let mut breaker = Breaker::new(spec(0, Some(0.0), 3));
        for now in 0..10 {
            assert_eq!(breaker.record(Verdict::Success, false, now), None);
        }
        assert!(breaker.record(Verdict::Failure, false, 10).is_some());
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let mut breaker = Breaker::new(spec(0, Some(0.9), 50));
        for now in 0..100_000 {
            let verdict = if now % 3 == 0 {
                Verdict::Failure
            } else {
                Verdict::Success
            };
            breaker.record(verdict, false, now);
            assert!(breaker.recent.len() <= 50);
        }
        assert_eq!(breaker.state(100_000), BreakerState::Closed);
        // Without a ratio nothing is remembered at all.
        let mut breaker = consecutive(1_000_000);
        for now in 0..10_000 {
            breaker.record(Verdict::Failure, false, now);
        }
        assert_eq!(breaker.recent.capacity(), 0);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Wait(Millis),
        Admit,
        Finish(Verdict),
    }

    fn step() -> impl Strategy<Value = Step> {
        let verdict = prop_oneof![
            Just(Verdict::Success),
            Just(Verdict::Failure),
            Just(Verdict::Neutral)
        ];
        prop_oneof![
            (0i64..20_000).prop_map(Step::Wait),
            Just(Step::Admit),
            verdict.prop_map(Step::Finish),
        ]
    }

    proptest! {
        /// Under any sequence of admissions and results: at most one probe is ever in flight,
        /// admissions agree with the state, an opening always sets a fresh cooldown, and the
        /// remembered results never exceed the window.
        #[test]
        fn state_machine_invariants(
            failures in 0u32..5,
            ratio in proptest::option::of(0.1f64..1.0),
            window in 0u32..8,
            steps in proptest::collection::vec(step(), 0..300),
        ) {
            let cooldown = 5_000;
            let mut breaker = Breaker::new(BreakerSpec {
                failures,
                ratio,
                window,
                cooldown: Duration::from_millis(cooldown as u64),
                max_open: Duration::from_secs(1800),
            });
            let mut now = 0;
            // Attempts in flight, each marked whether it is the probe.
            let mut running: Vec<bool> = Vec::new();
            for step in steps {
                match step {
                    Step::Wait(by) => now += by,
                    Step::Admit => {
                        let state = breaker.state(now);
                        let peeked = breaker.would_admit(now);
                        let admission = breaker.admit(now);
                        prop_assert_eq!(peeked, admission);
                        match (state, admission) {
                            (BreakerState::Closed, Admission::Allow) => running.push(false),
                            (BreakerState::Open { until }, Admission::WaitUntil(wait)) => {
                                prop_assert_eq!(until, wait);
                                prop_assert!(until > now);
                            }
                            (BreakerState::HalfOpen { probing: false }, Admission::Probe) => {
                                prop_assert!(!running.contains(&true));
                                running.push(true);
                            }
                            (BreakerState::HalfOpen { probing: true }, Admission::WaitForProbe) => {
                                prop_assert!(running.contains(&true));
                            }
                            other => prop_assert!(false, "inconsistent {:?}", other),
                        }
                    }
                    Step::Finish(verdict) => {
                        if running.is_empty() {
                            continue;
                        }
                        let was_probe = running.remove(0);
                        let before = breaker.state(now);
                        let change = breaker.record(verdict, was_probe, now);
                        let after = breaker.state(now);
                        prop_assert_eq!(change.is_some(), before != after);
                        if let Some(BreakerState::Open { until }) = change {
                            prop_assert_eq!(until, now + cooldown);
                        }
                        if !was_probe && before != BreakerState::Closed {
                            prop_assert_eq!(change, None);
                        }
                    }
                }
                prop_assert!(running.iter().filter(|probe| **probe).count() <= 1);
                prop_assert!(breaker.recent.len() <= window as usize);
            }
        }
    }
}
