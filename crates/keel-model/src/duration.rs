use std::time::Duration;

/// Why a duration string such as `"10m"` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("missing unit in {0:?}; write for example \"30s\", \"5m\", \"1h30m\" or \"250ms\"")]
    MissingUnit(String),
    #[error("unknown unit {unit:?} in {value:?}; units are ms, s, m, h and d")]
    UnknownUnit { value: String, unit: String },
    #[error("{0:?} is not a duration; write for example \"30s\", \"5m\", \"1h30m\" or \"250ms\"")]
    Malformed(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses a human duration: one or more `<number><unit>` pairs, units `ms`, `s`, `m`, `h`, `d`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(keel_model::parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(keel_model::parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert!(keel_model::parse_duration("10").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total_ms: u64 = 0;
    let bytes = trimmed.as_bytes();
    let mut position = 0;
    while position < bytes.len() {
        let number_start = position;
        while position < bytes.len() && bytes[position].is_ascii_digit() {
            position += 1;
        }
        if number_start == position {
            return Err(DurationError::Malformed(text.to_string()));
        }
        let number: u64 = trimmed[number_start..position]
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_string()))?;
        let unit_start = position;
        while position < bytes.len() && bytes[position].is_ascii_alphabetic() {
            position += 1;
        }
        let unit = &trimmed[unit_start..position];
        let unit_ms: u64 = match unit {
            "" if position < bytes.len() => return Err(DurationError::Malformed(text.to_string())),
            "" => return Err(DurationError::MissingUnit(text.to_string())),
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    value: text.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration compactly for tables: `850ms`, `12.3s`, `4m05s`, `2h10m`.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compound_and_rejects_garbage() {
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("10").unwrap_err(),
            DurationError::MissingUnit("10".into())
        );
        assert!(matches!(
            parse_duration("5 minutes"),
            Err(DurationError::UnknownUnit { .. }) | Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("m"),
            Err(DurationError::Malformed(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
    }
}
