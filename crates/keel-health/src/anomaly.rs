//! Anomaly detection on a robust baseline, with no configuration.
//!
//! The baseline of a value is the same metric of the same task (and pass) over the last
//! partitions before it: its median, and its spread as the median absolute deviation (MAD),
//! which a few bad days do not drag the way a mean and a standard deviation are dragged. When
//! the series shows a weekly pattern (its values differ by weekday far more than within a
//! weekday), the baseline is the same weekday's values only, so Monday's usual low is not an
//! anomaly. A value is flagged when its distance from the median is more than `threshold`
//! robust standard deviations (1.4826 × MAD).
//!
//! Callers leave `no_data` partitions out of the series: a day without games is not a day
//! with zero accuracy.

use chrono::{Datelike, NaiveDate, Weekday};

/// How a baseline is built and judged; the defaults need no tuning for daily pipelines.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tuning {
    /// Partitions of history the baseline looks back over (days, for daily partitions).
    pub window: usize,
    /// Fewer usable points than this and nothing is judged.
    pub min_points: usize,
    /// How many robust standard deviations from the median is anomalous.
    pub threshold: f64,
    /// Which side is anomalous.
    pub direction: Direction,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            window: 28,
            min_points: 7,
            threshold: 5.0,
            direction: Direction::Both,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Both,
    /// Only values below the baseline (accuracy, rows).
    Low,
    /// Only values above it (duration, error counts).
    High,
}

/// The baseline a value was judged against.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub median: f64,
    /// The robust standard deviation: 1.4826 × MAD, floored (see [`scale_floor`]).
    pub scale: f64,
    /// The usual range: the 10th to the 90th percentile of the baseline's values.
    pub low: f64,
    pub high: f64,
    /// How many values it was built from.
    pub points: usize,
    /// The first and last partition of the window looked at.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Built from the same weekday only, because the series has a weekly pattern.
    pub weekday: Option<Weekday>,
}

/// What a value is, against its baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub value: f64,
    pub baseline: Baseline,
    /// Signed distance from the median in robust standard deviations.
    pub score: f64,
    pub anomalous: bool,
}

impl Judgement {
    /// `accuracy 0.19, usual 0.39–0.50 over 28 days` (and `on Sundays` for a weekday baseline).
    pub fn describe(&self, metric: &str) -> String {
        let days = (self.baseline.to - self.baseline.from).num_days() + 1;
        let weekday = self
            .baseline
            .weekday
            .map(|day| format!(" on {}s", weekday_name(day)))
            .unwrap_or_default();
        format!(
            "{metric} {}, usual {}–{}{weekday} over {days} days",
            number(self.value),
            number(self.baseline.low),
            number(self.baseline.high)
        )
    }
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "Monday",
        Weekday::Tue => "Tuesday",
        Weekday::Wed => "Wednesday",
        Weekday::Thu => "Thursday",
        Weekday::Fri => "Friday",
        Weekday::Sat => "Saturday",
        Weekday::Sun => "Sunday",
    }
}

/// A number as people write it: 0.19, 1234, 12.5.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Judges `value`, the metric of partition `date`, against `history`: earlier partitions'
/// values (any order; later ones and `date` itself are ignored). `None` when there is too
/// little history to say.
pub fn judge(
    date: NaiveDate,
    value: f64,
    history: &[(NaiveDate, f64)],
    tuning: &Tuning,
) -> Option<Judgement> {
    if !value.is_finite() {
        return None;
    }
    let earliest = date - chrono::Duration::days(tuning.window as i64);
    let mut window: Vec<(NaiveDate, f64)> = history
        .iter()
        .copied()
        .filter(|(day, value)| *day < date && *day >= earliest && value.is_finite())
        .collect();
    if window.len() < tuning.min_points {
        return None;
    }
    window.sort_by_key(|(day, _)| *day);
    let (from, to) = (window[0].0, window[window.len() - 1].0);
    let all: Vec<f64> = window.iter().map(|(_, value)| *value).collect();
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    // With a weekly pattern, the centre is the same weekday's median over a longer look-back
    // (four weeks hold only four Sundays), and the spread is pooled over every weekday, each
    // value relative to its own weekday's median: four points give a centre, not a spread.
    let longer_start = date - chrono::Duration::days(tuning.window as i64 * 2);
    let longer: Vec<(NaiveDate, f64)> = history
        .iter()
        .copied()
        .filter(|(day, value)| *day < date && *day >= longer_start && value.is_finite())
        .collect();
    let weekday_values: Vec<f64> = if weekly_pattern(&window) {
        let mut same_day: Vec<f64> = longer
            .iter()
            .filter(|(day, _)| day.weekday() == date.weekday())
            .map(|(_, value)| *value)
            .collect();
        same_day.sort_by(f64::total_cmp);
        same_day
    } else {
        Vec::new()
    };
    let (median, scale, usual, weekday) = if weekday_values.len() >= 4 {
        let median = percentile(&weekday_values, 0.5);
        let relative = relative_spread(&longer);
        let scale = (relative * median.abs()).max(scale_floor(median));
        (median, scale, weekday_values, Some(date.weekday()))
    } else {
        let median = percentile(&sorted, 0.5);
        (median, robust_scale(&sorted, median), sorted, None)
    };
    // A count moves in whole units: its spread is never under one, or a count that was 0 every
    // day would be an anomaly at its first 1.
    let scale = if value.fract() == 0.0 && all.iter().all(|earlier| earlier.fract() == 0.0) {
        scale.max(COUNT_SCALE_FLOOR)
    } else {
        scale
    };
    let score = (value - median) / scale;
    let anomalous = match tuning.direction {
        Direction::Both => score.abs() > tuning.threshold,
        Direction::Low => score < -tuning.threshold,
        Direction::High => score > tuning.threshold,
    };
    Some(Judgement {
        value,
        baseline: Baseline {
            median,
            scale,
            low: percentile(&usual, 0.1),
            high: percentile(&usual, 0.9),
            points: usual.len(),
            from,
            to,
            weekday,
        },
        score,
        anomalous,
    })
}

/// 1.4826 × MAD, the standard deviation a normal distribution with that MAD would have,
/// floored by [`scale_floor`].
fn robust_scale(sorted: &[f64], median: f64) -> f64 {
    let mut deviations: Vec<f64> = sorted.iter().map(|value| (value - median).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    (1.4826 * percentile(&deviations, 0.5)).max(scale_floor(median))
}

/// The smallest spread of a count (a value and a baseline of whole numbers): one unit.
pub const COUNT_SCALE_FLOOR: f64 = 1.0;

/// The smallest spread a baseline is given: a metric that was exactly the same every day
/// (MAD 0) would otherwise flag its first change of any size. 2% of the median's size, or a
/// tiny absolute amount around zero.
pub fn scale_floor(median: f64) -> f64 {
    (median.abs() * 0.02).max(1e-9)
}

/// The robust spread of values relative to their weekday's usual value, for series whose
/// noise grows with their level: 1.4826 × the MAD of `value / median of the other values of
/// its weekday - 1`. Leaving the value out of its own weekday's median matters: with four to
/// eight values a weekday, a median that includes the value sits close to it, and the spread
/// would come out far too small.
fn relative_spread(values: &[(NaiveDate, f64)]) -> f64 {
    let mut by_day: [Vec<f64>; 7] = Default::default();
    for (day, value) in values {
        by_day[day.weekday().num_days_from_monday() as usize].push(*value);
    }
    let mut ratios: Vec<f64> = Vec::new();
    for group in &by_day {
        for (index, value) in group.iter().enumerate() {
            let mut others: Vec<f64> = group
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != index)
                .map(|(_, value)| *value)
                .collect();
            if others.len() < 2 {
                continue;
            }
            others.sort_by(f64::total_cmp);
            let median = percentile(&others, 0.5);
            if median.abs() > 1e-12 {
                ratios.push(value / median - 1.0);
            }
        }
    }
    ratios.sort_by(f64::total_cmp);
    let centre = percentile(&ratios, 0.5);
    let mut deviations: Vec<f64> = ratios.iter().map(|ratio| (ratio - centre).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    1.4826 * percentile(&deviations, 0.5)
}

fn weekday_medians(window: &[(NaiveDate, f64)]) -> Vec<Option<f64>> {
    let mut by_day: [Vec<f64>; 7] = Default::default();
    for (day, value) in window {
        by_day[day.weekday().num_days_from_monday() as usize].push(*value);
    }
    by_day
        .iter()
        .map(|values| {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            (!sorted.is_empty()).then(|| percentile(&sorted, 0.5))
        })
        .collect()
}

/// Whether values differ by weekday far more than within a weekday: the mean absolute
/// deviation left after taking out each weekday's median is under half the one around the
/// overall median, with at least two values on most weekdays. (Mean, not median, deviations:
/// one low weekday in seven moves the mean but not the median.)
fn weekly_pattern(window: &[(NaiveDate, f64)]) -> bool {
    let mut by_day: [Vec<f64>; 7] = Default::default();
    for (day, value) in window {
        by_day[day.weekday().num_days_from_monday() as usize].push(*value);
    }
    if by_day.iter().filter(|values| values.len() >= 2).count() < 5 {
        return false;
    }
    let medians = weekday_medians(window);
    let mut all: Vec<f64> = window.iter().map(|(_, value)| *value).collect();
    all.sort_by(f64::total_cmp);
    let median = percentile(&all, 0.5);
    let overall = all.iter().map(|value| (value - median).abs()).sum::<f64>() / all.len() as f64;
    let within = window
        .iter()
        .filter_map(|(day, value)| {
            medians[day.weekday().num_days_from_monday() as usize]
                .map(|median| (value - median).abs())
        })
        .sum::<f64>()
        / window.len() as f64;
    overall > scale_floor(median) && within < overall * 0.5
}

/// The `share` percentile of sorted values, interpolated between neighbours.
fn percentile(sorted: &[f64], share: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        length => {
            let position = share * (length - 1) as f64;
            let below = position.floor() as usize;
            let above = position.ceil() as usize;
            let weight = position - below as f64;
            sorted[below] * (1.0 - weight) + sorted[above] * weight
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(offset: i64) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Duration::days(offset)
    }

    #[test]
    fn the_accuracy_collapse_is_flagged_with_its_baseline() {
        // 28 days of accuracy between 0.39 and 0.50, then 9 of 48 right (0.1875).
        let usual = [
            0.42, 0.45, 0.39, 0.47, 0.50, 0.44, 0.41, 0.46, 0.43, 0.48, 0.40, 0.45, 0.44, 0.49,
        ];
        let history: Vec<(NaiveDate, f64)> = (0..28)
            .map(|offset| (day(offset), usual[offset as usize % usual.len()]))
            .collect();
        let judgement = judge(day(28), 9.0 / 48.0, &history, &Tuning::default()).unwrap();
        assert!(judgement.anomalous, "{judgement:?}");
        assert!(judgement.score < -4.0);
        assert_eq!(
            judgement.describe("accuracy"),
            "accuracy 0.19, usual 0.40–0.49 over 28 days"
        );
        let normal = judge(day(28), 0.43, &history, &Tuning::default()).unwrap();
        assert!(!normal.anomalous, "{normal:?}");
    }

    #[test]
    fn too_little_history_says_nothing_and_later_days_are_ignored() {
        let history: Vec<(NaiveDate, f64)> = (0..5).map(|offset| (day(offset), 1.0)).collect();
        assert_eq!(judge(day(5), 100.0, &history, &Tuning::default()), None);
        let mut history: Vec<(NaiveDate, f64)> =
            (0..10).map(|offset| (day(offset), 10.0)).collect();
        history.push((day(11), 1e9));
        let judgement = judge(day(10), 10.0, &history, &Tuning::default()).unwrap();
        assert_eq!(judgement.baseline.points, 10);
        assert!(!judgement.anomalous);
    }

    #[test]
    fn a_weekly_pattern_gets_a_same_weekday_baseline() {
        // Sundays have a tenth of the rows of other days.
        let rows = |date: NaiveDate| {
            if date.weekday() == Weekday::Sun {
                100.0
            } else {
                1000.0
            }
        };
        let history: Vec<(NaiveDate, f64)> = (0..56)
            .map(|offset| (day(offset), rows(day(offset)) + (offset % 3) as f64))
            .collect();
        let sunday = (56..63)
            .map(day)
            .find(|date| date.weekday() == Weekday::Sun)
            .unwrap();
        let judgement = judge(sunday, 101.0, &history, &Tuning::default()).unwrap();
        assert_eq!(judgement.baseline.weekday, Some(Weekday::Sun));
        assert!(!judgement.anomalous, "{judgement:?}");
        // A weekday with Sunday's rows is anomalous.
        let monday = sunday + chrono::Duration::days(1);
        let judgement = judge(monday, 101.0, &history, &Tuning::default()).unwrap();
        assert!(judgement.anomalous, "{judgement:?}");
        assert!(judgement.describe("rows").contains("on Mondays"));
    }

    #[test]
    fn direction_limits_which_side_is_anomalous() {
        let history: Vec<(NaiveDate, f64)> = (0..20)
            .map(|offset| (day(offset), 60.0 + (offset % 5) as f64))
            .collect();
        let low_only = Tuning {
            direction: Direction::Low,
            ..Tuning::default()
        };
        assert!(
            !judge(day(20), 600.0, &history, &low_only)
                .unwrap()
                .anomalous
        );
        assert!(judge(day(20), 6.0, &history, &low_only).unwrap().anomalous);
        let high_only = Tuning {
            direction: Direction::High,
            ..Tuning::default()
        };
        assert!(
            judge(day(20), 600.0, &history, &high_only)
                .unwrap()
                .anomalous
        );
    }

    #[test]
    fn a_constant_series_tolerates_small_changes() {
        let history: Vec<(NaiveDate, f64)> = (0..20).map(|offset| (day(offset), 450.0)).collect();
        assert!(
            !judge(day(20), 455.0, &history, &Tuning::default())
                .unwrap()
                .anomalous
        );
        assert!(
            judge(day(20), 300.0, &history, &Tuning::default())
                .unwrap()
                .anomalous
        );
    }

    #[test]
    fn a_count_that_was_always_zero_is_not_an_anomaly_at_its_first_few() {
        // Ungraded picks: 0 every day, then 1 or 3 (the spread of a count is at least one),
        // but 8 is far out; a fraction keeps the tiny floor of a measurement.
        let history: Vec<(NaiveDate, f64)> = (0..20).map(|offset| (day(offset), 0.0)).collect();
        for (value, anomalous) in [(1.0, false), (3.0, false), (8.0, true), (0.5, true)] {
            let judgement = judge(day(20), value, &history, &Tuning::default()).unwrap();
            assert_eq!(judgement.anomalous, anomalous, "{value}: {judgement:?}");
        }
    }
}
