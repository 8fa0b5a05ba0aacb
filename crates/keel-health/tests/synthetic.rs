//! Anomaly detection on synthetic series with planted anomalies: precision and recall are
//! measured over thousands of days and printed, and must stay above 0.9.
//!
//! The series are what a daily pipeline's metrics look like: a level with noise, a weekly
//! pattern (weekends far lower), a slow trend, and heavy-tailed noise (one day in twenty twice as
//! noisy). Anomalies are drops or spikes of 6 to 12 standard
//! deviations on 3% of days; they stay in the history, as real bad days do.

use chrono::{Datelike, NaiveDate};
use keel_health::anomaly::{Tuning, judge};

struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Flat,
    Weekly,
    Trend,
    HeavyTails,
}

#[test]
fn planted_anomalies_are_found_with_high_precision_and_recall() {
    let mut random = Seeded(2026);
    let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let tuning = Tuning::default();
    let (mut found, mut false_alarms, mut missed, mut judged) = (0u32, 0u32, 0u32, 0u32);
    let mut per_shape = Vec::new();
    for shape in [Shape::Flat, Shape::Weekly, Shape::Trend, Shape::HeavyTails] {
        let (mut shape_found, mut shape_false, mut shape_missed) = (0u32, 0u32, 0u32);
        for _ in 0..60 {
            let level = 10.0 + random.uniform() * 1000.0;
            let sigma = level * (0.02 + random.uniform() * 0.08);
            let weekend = 0.3 + random.uniform() * 0.3;
            let mut history: Vec<(NaiveDate, f64)> = Vec::new();
            for offset in 0..150i64 {
                let date = start + chrono::Duration::days(offset);
                let weekend_day = date.weekday().number_from_monday() >= 6;
                let expected = match shape {
                    Shape::Weekly if weekend_day => level * weekend,
                    Shape::Trend => level * (1.0 + 0.002 * offset as f64),
                    _ => level,
                };
                let scale = match shape {
                    Shape::Weekly if weekend_day => sigma * weekend,
                    _ => sigma,
                };
                let mut noise = random.normal();
                if matches!(shape, Shape::HeavyTails) && random.uniform() < 0.05 {
                    // A noisier day: twice the usual spread.
                    noise *= 2.0;
                }
                let planted = offset >= 40 && random.uniform() < 0.03;
                if planted {
                    let size = 6.0 + random.uniform() * 6.0;
                    noise = if random.uniform() < 0.5 { -size } else { size };
                }
                let value = expected + noise * scale;
                if offset >= 30 {
                    if let Some(judgement) = judge(date, value, &history, &tuning) {
                        judged += 1;
                        match (planted, judgement.anomalous) {
                            (true, true) => shape_found += 1,
                            (true, false) => shape_missed += 1,
                            (false, true) => shape_false += 1,
                            (false, false) => {}
                        }
                    } else if planted {
                        shape_missed += 1;
                    }
                }
                history.push((date, value));
            }
        }
        per_shape.push((shape, shape_found, shape_false, shape_missed));
        found += shape_found;
        false_alarms += shape_false;
        missed += shape_missed;
    }
    for (shape, shape_found, shape_false, shape_missed) in &per_shape {
        println!(
            "{shape:?}: {shape_found} found, {shape_false} false alarms, {shape_missed} missed"
        );
    }
    let precision = f64::from(found) / f64::from(found + false_alarms);
    let recall = f64::from(found) / f64::from(found + missed);
    println!(
        "anomaly detection on 240 synthetic series ({judged} days judged): {} planted, precision {precision:.3}, recall {recall:.3}",
        found + missed
    );
    assert!(
        precision >= 0.9 && recall >= 0.9,
        "precision {precision:.3}, recall {recall:.3}: {per_shape:?}"
    );
}
