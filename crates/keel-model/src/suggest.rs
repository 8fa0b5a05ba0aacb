//! "Did you mean" suggestions for misspelt names.

/// The candidate closest to `wanted`, if one is close enough to be a plausible typo.
///
/// A candidate that differs only in case always wins. Otherwise the edit distance (with
/// transpositions) must be at most a third of the name's length, or 1 for short names, and
/// smaller than the name's length, so that a short name is not "corrected" into an unrelated
/// one (`bb` may mean `b`, but `a` does not mean `b`). Ties go to the earliest candidate. This
/// is Keel's one "did you mean", for pipeline files and command lines alike.
///
/// ```text
/// closest("player_summry", ["player_summary", "games"]) == Some("player_summary")
/// ```
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let wanted_lower = wanted.to_lowercase();
    let length = wanted.chars().count();
    let allowed = (length / 3).max(1).min(length.saturating_sub(1));
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_lowercase();
        let distance = if candidate_lower == wanted_lower {
            0
        } else {
            damerau_levenshtein(&wanted_lower, &candidate_lower).max(1)
        };
        if (distance == 0 || distance <= allowed)
            && best.is_none_or(|(best_distance, _)| distance < best_distance)
        {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate.to_string())
}

/// The optimal-string-alignment edit distance: insertions, deletions, substitutions and
/// transpositions of two adjacent characters each cost 1.
fn damerau_levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: two back (for transpositions), the previous one, and the current one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (previous[j - 1] + cost)
                .min(previous[j] + 1)
                .min(current[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(before[j - 2] + 1);
            }
            current[j] = best;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_plausible_typos_only() {
        let names = ["player_summary", "games"];
        assert_eq!(
            closest("player_summry", names).as_deref(),
            Some("player_summary")
        );
        assert_eq!(closest("Games", names).as_deref(), Some("games"));
        assert_eq!(closest("standings", names), None);
        assert_eq!(
            closest("a", ["b"]),
            None,
            "a whole name replaced is no typo"
        );
        assert_eq!(closest("bb", ["b", "c"]).as_deref(), Some("b"));
        assert_eq!(closest("ab", ["cd"]), None);
        assert_eq!(
            closest("timout", ["timeout", "retries"]).as_deref(),
            Some("timeout")
        );
        assert_eq!(closest("retires", ["retries"]).as_deref(), Some("retries"));
    }

    #[test]
    fn the_distance_counts_a_transposition_once() {
        assert_eq!(damerau_levenshtein("ab", "ba"), 1);
        assert_eq!(damerau_levenshtein("kitten", "sitting"), 3);
        assert_eq!(damerau_levenshtein("", "abc"), 3);
        assert_eq!(damerau_levenshtein("same", "same"), 0);
    }
}
