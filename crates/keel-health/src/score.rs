//! The health score: one number from 0 to 10, made of named dimensions, each with its weight
//! and its evidence, so a reader can see why the score is what it is.

/// One dimension of health: how well it is met (0 to 1), how much it counts, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Dimension {
    pub name: &'static str,
    pub weight: f64,
    /// 1 is perfect, 0 is as bad as it gets; `None` when there is nothing to judge it on, and
    /// then it does not count.
    pub value: Option<f64>,
    /// What the value was computed from: "29 of 30 partitions without a human".
    pub evidence: String,
}

/// The score and what it is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// 0 to 10, one decimal; `None` when no dimension could be judged.
    pub score: Option<f64>,
    pub dimensions: Vec<Dimension>,
}

/// The weighted mean of the dimensions that could be judged, on a scale of 10.
pub fn score(dimensions: Vec<Dimension>) -> Score {
    let (sum, weights) = dimensions
        .iter()
        .filter_map(|dimension| Some((dimension.value?.clamp(0.0, 1.0), dimension.weight)))
        .fold((0.0, 0.0), |(sum, weights), (value, weight)| {
            (sum + value * weight, weights + weight)
        });
    let score = (weights > 0.0).then(|| (sum / weights * 100.0).round() / 10.0);
    Score { score, dimensions }
}

/// A ratio as a dimension value: `good` of `total`, `None` with nothing to count.
pub fn ratio(good: usize, total: usize) -> Option<f64> {
    (total > 0).then(|| good as f64 / total as f64)
}

/// A time against its target as a dimension value: 1 at or under `target`, falling linearly to
/// 0 at `worst`.
pub fn within(actual: f64, target: f64, worst: f64) -> f64 {
    if actual <= target {
        1.0
    } else if actual >= worst {
        0.0
    } else {
        1.0 - (actual - target) / (worst - target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dimension(name: &'static str, weight: f64, value: Option<f64>) -> Dimension {
        Dimension {
            name,
            weight,
            value,
            evidence: String::new(),
        }
    }

    #[test]
    fn the_score_is_the_weighted_mean_of_what_could_be_judged() {
        let result = score(vec![
            dimension("success without a human", 3.0, Some(0.9)),
            dimension("freshness", 2.0, Some(1.0)),
            dimension("recovery time", 1.0, None),
        ]);
        // (0.9 × 3 + 1.0 × 2) / 5 = 0.94
        assert_eq!(result.score, Some(9.4));
        assert_eq!(
            result.dimensions.len(),
            3,
            "unjudged dimensions are still shown"
        );
        assert_eq!(score(vec![dimension("x", 1.0, None)]).score, None);
    }

    #[test]
    fn ratios_and_targets_map_onto_zero_to_one() {
        assert_eq!(ratio(29, 30), Some(29.0 / 30.0));
        assert_eq!(ratio(0, 0), None);
        assert_eq!(within(4.0, 5.0, 60.0), 1.0);
        assert_eq!(within(60.0, 5.0, 60.0), 0.0);
        assert!((within(32.5, 5.0, 60.0) - 0.5).abs() < 1e-9);
    }
}
