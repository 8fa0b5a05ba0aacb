//! "Did you mean" suggestions for misspelt names.

/// The candidate closest to `wanted`, if one is close enough to be a plausible typo.
///
/// A candidate that differs only in case always wins. Otherwise the edit distance (with
/// transpositions) must be at most a third of the name's length, so that short names are not
/// "corrected" into unrelated ones. Ties go to the earliest candidate.
///
/// It is the one "did you mean" of Keel: the pipeline file's errors and the commands that take
/// a name (`keel history TASK`, say) use it alike.
///
/// ```
/// let names = ["player_summary", "games"];
/// assert_eq!(keel_config::closest("player_summry", names).as_deref(), Some("player_summary"));
/// assert_eq!(keel_config::closest("standings", names), None);
/// ```
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let wanted_lower = wanted.to_lowercase();
    let allowed = wanted.chars().count() / 3;
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_lowercase();
        let distance = if candidate_lower == wanted_lower {
            0
        } else {
            strsim::damerau_levenshtein(&wanted_lower, &candidate_lower).max(1)
        };
        if (distance == 0 || distance <= allowed)
            && best.is_none_or(|(best_distance, _)| distance < best_distance)
        {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate.to_string())
}

/// The IANA time zone closest to `wanted`: a misspelling, a different case, or a bare city name
/// such as `Paris` for `Europe/Paris`.
pub(crate) fn closest_timezone(wanted: &str) -> Option<String> {
    let names: Vec<&'static str> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|zone| zone.name())
        .collect();
    if let Some(name) = closest(wanted, names.iter().copied()) {
        return Some(name);
    }
    let city_of = |name: &'static str| name.rsplit('/').next().unwrap_or(name);
    let wanted_city = wanted.trim().replace(' ', "_");
    let city = closest(&wanted_city, names.iter().map(|name| city_of(name)))?;
    names
        .iter()
        .find(|name| city_of(name) == city)
        .map(|name| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["player_summary", "games", "ml_features"];
        assert_eq!(
            closest("player_summry", names).as_deref(),
            Some("player_summary")
        );
        assert_eq!(closest("Games", names).as_deref(), Some("games"));
        assert_eq!(closest("standings", names), None);
        assert_eq!(closest("a", ["b"]), None);
        assert_eq!(
            closest("timout", ["timeout", "retries"]).as_deref(),
            Some("timeout")
        );
    }

    #[test]
    fn suggests_time_zones() {
        assert_eq!(
            closest_timezone("America/New_Yrok").as_deref(),
            Some("America/New_York")
        );
        assert_eq!(closest_timezone("utc").as_deref(), Some("UTC"));
        assert_eq!(closest_timezone("Paris").as_deref(), Some("Europe/Paris"));
        assert_eq!(
            closest_timezone("New York").as_deref(),
            Some("America/New_York")
        );
        assert_eq!(closest_timezone("Mars/Olympus_Mons"), None);
    }
}
