use keel_model::{Millis, RetryBudgetSpec};

use super::millis_rounded_up;

/// How many slices a budget's window is cut into; this fixes its memory.
const SLOTS: u64 = 100;

/// A retry budget: over the sliding `window`, retries on a resource may number at most
/// `min + ratio × attempts`, where `attempts` counts first attempts (those that were not
/// retries). With `ratio = 0.2` and `min = 3`, a window that saw 100 first attempts allows 23
/// retries. This is what stops one bad input, or one sick dependency, from turning into a retry
/// storm: retries can only grow with fresh work.
///
/// States: counts of first attempts and retries per slice of the window. A slice ages out as a
/// whole once it is a full window old; nothing else changes state.
///
/// Use: ask [`can_retry`](Self::can_retry) when deciding whether a failed attempt gets another
/// one, and [`record_attempt`](Self::record_attempt) the retry as soon as it is decided (not when
/// it finally starts after its backoff), so that a herd of failures at the same instant cannot
/// all pass the check before any of them is counted.
///
/// Trade-offs:
/// - Memory is fixed, whatever the traffic: the window is cut into at most 100 slices of
///   `ceil(window / 100)` ms each (16 bytes a slice). The price is resolution: an attempt ages out
///   between one slice before and one slice after exactly `window` has passed (a 1% error for a
///   window that is a whole number of slices; exact for windows of 100 ms or less, whose slices
///   are one millisecond). An exact log would cost memory proportional to the attempt rate.
/// - Retries are not counted as attempts that earn more retries, so retries cannot feed
///   themselves: the bound is on retries per fresh attempt, not on retries among all attempts.
/// - `min` lets a quiet resource retry at all; without it, a resource that saw fewer than
///   `1 / ratio` first attempts in the window could not retry once.
/// - The allowance `ratio × attempts` is rounded down (with a tolerance of 1e-9 for floating
///   point), so `0.57 × 100` allows 57, never 56 or 58.
///
/// ```
/// use std::time::Duration;
/// use keel_engine::policy::RetryBudget;
/// use keel_model::RetryBudgetSpec;
///
/// let spec = RetryBudgetSpec { ratio: 0.5, window: Duration::from_secs(60), min: 0 };
/// let mut budget = RetryBudget::new(spec);
/// budget.record_attempt(false, 0);
/// budget.record_attempt(false, 0);
/// assert!(budget.can_retry(0));
/// budget.record_attempt(true, 0);
/// assert!(!budget.can_retry(0));
/// budget.record_attempt(false, 30_000);
/// budget.record_attempt(false, 30_000);
/// assert!(budget.can_retry(30_000)); // 4 attempts allow 2 retries
/// assert_eq!(budget.counts(60_000), (2, 0)); // what happened at 0 has aged out
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min: u32,
    /// The width of a slice in ms; at least 1.
    slot_width: Millis,
    /// Slice `index` lives at `index mod slots.len()`; at most [`SLOTS`] of them.
    slots: Vec<Slot>,
    /// The latest `now` seen; time is never read as earlier than this.
    latest: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    /// Which slice of time (`now / slot_width`) these counts belong to.
    index: i64,
    attempts: u32,
    retries: u32,
}

const EMPTY: Slot = Slot {
    index: i64::MIN,
    attempts: 0,
    retries: 0,
};

impl RetryBudget {
    pub fn new(spec: RetryBudgetSpec) -> Self {
        let window = millis_rounded_up(spec.window).max(1).unsigned_abs();
        let slot_width = window.div_ceil(SLOTS);
        let slot_count = window.div_ceil(slot_width);
        // A ratio that is negative or not a number allows only `min`; a huge one is capped so
        // that `ratio × attempts` stays finite.
        let ratio = if spec.ratio > 0.0 {
            spec.ratio.min(1e9)
        } else {
            0.0
        };
        RetryBudget {
            ratio,
            min: spec.min,
            // Both fit: the width is at most `Millis::MAX`, the count at most `SLOTS`.
            slot_width: slot_width as Millis,
            slots: vec![EMPTY; slot_count as usize],
            latest: Millis::MIN,
        }
    }

    /// Counts an attempt that started (or, for a retry, was decided) at `now`.
    pub fn record_attempt(&mut self, is_retry: bool, now: Millis) {
        let index = self.advance(now);
        let position = self.position(index);
        let slot = &mut self.slots[position];
        if slot.index != index {
            // Time only moves forward here, so a different index is an older slice.
            *slot = Slot { index, ..EMPTY };
        }
        if is_retry {
            slot.retries = slot.retries.saturating_add(1);
        } else {
            slot.attempts = slot.attempts.saturating_add(1);
        }
    }

    /// Whether one more retry fits in the budget now. Ages out old slices.
    pub fn can_retry(&mut self, now: Millis) -> bool {
        let (attempts, retries) = self.counts(now);
        f64::from(retries) < self.allowance(attempts)
    }

    /// `(first attempts, retries)` inside the window now. Ages out old slices.
    pub fn counts(&mut self, now: Millis) -> (u32, u32) {
        let current = self.advance(now);
        let oldest = current.saturating_sub(self.slots.len() as i64 - 1);
        let mut attempts = 0u32;
        let mut retries = 0u32;
        for slot in &mut self.slots {
            if slot.index < oldest {
                *slot = EMPTY;
            } else {
                attempts = attempts.saturating_add(slot.attempts);
                retries = retries.saturating_add(slot.retries);
            }
        }
        (attempts, retries)
    }

    /// How many retries `attempts` first attempts allow: `min + ⌊ratio × attempts⌋`.
    fn allowance(&self, attempts: u32) -> f64 {
        f64::from(self.min) + (self.ratio * f64::from(attempts) + 1e-9).floor()
    }

    /// Moves the budget's notion of now forward and returns the current slice.
    fn advance(&mut self, now: Millis) -> i64 {
        self.latest = self.latest.max(now);
        self.latest.div_euclid(self.slot_width)
    }

    fn position(&self, index: i64) -> usize {
        index.rem_euclid(self.slots.len() as i64) as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn budget(ratio: f64, window_ms: u64, min: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetSpec {
            ratio,
            window: Duration::from_millis(window_ms),
            min,
        })
    }

    /// Records retries while the budget allows them, up to `limit`, and returns how many.
    fn retry_while_allowed(budget: &mut RetryBudget, now: Millis, limit: u32) -> u32 {
        let mut granted = 0;
        while granted < limit && budget.can_retry(now) {
            budget.record_attempt(true, now);
            granted += 1;
        }
        granted
    }

    #[test]
    fn a_hundred_first_attempts_allow_min_plus_twenty_percent() {
        let mut budget = budget(0.2, 60_000, 3);
        for index in 0..100 {
            budget.record_attempt(false, index * 100);
        }
        assert_eq!(retry_while_allowed(&mut budget, 10_000, 1_000), 23);
        assert_eq!(budget.counts(10_000), (100, 23));
        assert!(!budget.can_retry(10_000));
        // One more first attempt earns a fifth of a retry: still nothing.
        budget.record_attempt(false, 10_001);
        assert!(!budget.can_retry(10_001));
        for _ in 0..4 {
            budget.record_attempt(false, 10_002);
        }
        // 105 attempts: 3 + 21.
        assert_eq!(retry_while_allowed(&mut budget, 10_003, 1_000), 1);
    }

    #[test]
    fn min_retries_are_allowed_without_any_attempt() {
        let mut budget = budget(0.2, 60_000, 3);
        assert_eq!(retry_while_allowed(&mut budget, 0, 1_000), 3);
        let mut none = self::budget(0.2, 60_000, 0);
        assert!(!none.can_retry(0));
    }

    #[test]
    fn old_entries_age_out_of_the_window() {
        // A 60 s window is cut into slices of 600 ms; entries at slice boundaries age out
        // exactly one window later.
        let mut budget = budget(0.2, 60_000, 3);
        for _ in 0..100 {
            budget.record_attempt(false, 0);
        }
        assert_eq!(retry_while_allowed(&mut budget, 30_000, 1_000), 23);
        assert_eq!(budget.counts(59_999), (100, 23));
        // The attempts leave at 60 s; the retries still count, so the budget is overdrawn.
        assert_eq!(budget.counts(60_000), (0, 23));
        assert!(!budget.can_retry(60_000));
        assert_eq!(budget.counts(89_999), (0, 23));
        // The retries leave at 90 s, and only `min` is left.
        assert_eq!(budget.counts(90_000), (0, 0));
        assert_eq!(retry_while_allowed(&mut budget, 90_000, 1_000), 3);
    }

    #[test]
    fn the_window_is_exact_to_within_one_slice() {
        let mut budget = budget(1.0, 60_000, 0);
        // 599 ms is in the same 600 ms slice as 0, so it ages out with it, 59.4 s later.
        budget.record_attempt(false, 599);
        assert_eq!(budget.counts(59_999), (1, 0));
        assert_eq!(budget.counts(60_000), (0, 0));
    }

    #[test]
    fn short_windows_are_exact_to_the_millisecond() {
        let mut budget = budget(1.0, 50, 0);
        budget.record_attempt(false, 7);
        assert_eq!(budget.counts(56), (1, 0));
        assert_eq!(budget.counts(57), (0, 0));
    }

    #[test]
    fn a_clock_that_steps_back_cannot_reopen_an_aged_out_slice() {
        let mut budget = budget(0.0, 1_000, 1);
        budget.record_attempt(true, 10_000);
        assert!(!budget.can_retry(10_000));
        // Read as 10 000: the retry still counts.
        assert!(!budget.can_retry(9_000));
        budget.record_attempt(true, 5_000);
        assert_eq!(budget.counts(5_000), (0, 2));
    }

    #[test]
    fn the_allowance_rounds_down_without_floating_point_surprises() {
        let mut budget = budget(0.57, 60_000, 0);
        for _ in 0..100 {
            budget.record_attempt(false, 0);
        }
        assert_eq!(retry_while_allowed(&mut budget, 0, 1_000), 57);
    }

    #[test]
    fn odd_settings_do_not_panic() {
        let mut zero_window = budget(0.5, 0, 1);
        zero_window.record_attempt(false, 0);
        assert_eq!(zero_window.counts(0), (1, 0));
        assert_eq!(zero_window.counts(1), (0, 0));
        let mut nonsense_ratio = budget(f64::NAN, 1_000, 2);
        for _ in 0..10 {
            nonsense_ratio.record_attempt(false, 0);
        }
        assert_eq!(retry_while_allowed(&mut nonsense_ratio, 0, 1_000), 2);
        let mut huge_ratio = budget(f64::INFINITY, 1_000, 0);
        huge_ratio.record_attempt(false, 0);
        assert!(huge_ratio.can_retry(0));
        let mut huge_window = RetryBudget::new(RetryBudgetSpec {
            ratio: 0.2,
            window: Duration::MAX,
            min: 0,
        });
        huge_window.record_attempt(false, Millis::MAX);
        assert_eq!(huge_window.slots.len(), 100);
    }

    proptest! {
        /// Over a long run of attempts and retries at random times, memory never grows past the
        /// fixed slices, the counts are exactly those of the slice rule (checked against the
        /// whole history), and they lie between the exact counts of a window one slice shorter
        /// and one slice longer.
        #[test]
        fn memory_stays_bounded_and_counts_follow_the_window(
            window_ms in 1u64..5_000,
            events in proptest::collection::vec((0i64..200, any::<bool>()), 1..2_000),
        ) {
            let mut budget = budget(0.2, window_ms, 3);
            let slots = budget.slots.len();
            prop_assert!(slots <= SLOTS as usize);
            let width = budget.slot_width;
            let window = window_ms as Millis;
            let mut now = 0;
            let mut history: Vec<(Millis, bool)> = Vec::new();
            for (gap, is_retry) in events {
                now += gap;
                budget.record_attempt(is_retry, now);
                history.push((now, is_retry));
                let counted = budget.counts(now);
                prop_assert_eq!(budget.slots.len(), slots);

                let count = |keep: &dyn Fn(Millis) -> bool| {
                    let kept = history.iter().filter(|(at, _)| keep(*at));
                    kept.fold((0u32, 0u32), |(attempts, retries), (_, retry)| {
                        if *retry { (attempts, retries + 1) } else { (attempts + 1, retries) }
                    })
                };
                let by_rule = count(&|at| now / width - at / width < slots as i64);
                prop_assert_eq!(counted, by_rule);
                let shorter = count(&|at| now - at < window - width);
                let longer = count(&|at| now - at < window + width);
                prop_assert!(shorter.0 <= counted.0 && counted.0 <= longer.0);
                prop_assert!(shorter.1 <= counted.1 && counted.1 <= longer.1);
            }
        }
    }
}
