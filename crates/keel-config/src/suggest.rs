//! "Did you mean" for time zones; names in general use `keel_model::closest`.

pub(crate) use keel_model::closest;

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
