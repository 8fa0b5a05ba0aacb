//! The small value languages of the resilience fields: rates such as `"20/s"` and percentages
//! such as `"60%"`.
//!
//! These functions only read text; where a value was written and how to word the error is the
//! validator's business.

use std::time::Duration;

use keel_model::{DurationError, Rate, parse_duration};

/// Why a rate string could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RateProblem {
    /// No `/`, or nothing on one side of it.
    Shape,
    /// The count is not a whole number.
    Count,
    /// The count is zero.
    ZeroCount,
    /// The count does not fit in a `u32`.
    CountTooLarge,
    /// The period is not a duration.
    Period(DurationError),
    /// The period is zero.
    ZeroPeriod,
}

/// Reads `<count>/<period>`: `"20/s"`, `"100/m"`, `"3/h"` or `"5/10s"`. A period written as a
/// bare unit means one of it, so `"20/s"` is twenty per second.
///
/// ```text
/// parse_rate("5/10s") == Ok(Rate { tokens: 5, per: 10s })
/// ```
pub(crate) fn parse_rate(text: &str) -> Result<Rate, RateProblem> {
    let (count, period) = text.split_once('/').ok_or(RateProblem::Shape)?;
    let (count, period) = (count.trim(), period.trim());
    if count.is_empty() || period.is_empty() {
        return Err(RateProblem::Shape);
    }
    if !count.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(RateProblem::Count);
    }
    // Only digits are left, so parsing can fail only by overflowing.
    let tokens: u32 = count.parse().map_err(|_| RateProblem::CountTooLarge)?;
    if tokens == 0 {
        return Err(RateProblem::ZeroCount);
    }
    let period = if period.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        format!("1{period}")
    } else {
        period.to_string()
    };
    let per = parse_duration(&period).map_err(RateProblem::Period)?;
    if per == Duration::ZERO {
        return Err(RateProblem::ZeroPeriod);
    }
    Ok(Rate { tokens, per })
}

/// Reads a percentage such as `"60%"` or `"12.5%"` as a share (`0.6`, `0.125`), without checking
/// its range. `None` when the text is not a plain decimal number followed by `%`.
///
/// The decimal is read as `<number>e-2`, so `"60%"` becomes exactly the `f64` nearest to 0.6, the
/// same value as writing `0.6` in the file.
pub(crate) fn parse_percentage(text: &str) -> Option<f64> {
    let number = text.trim().strip_suffix('%')?.trim_end();
    let digits = number.strip_prefix('-').unwrap_or(number);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !is_digits(whole) || !is_digits(fraction) {
        return None;
    }
    format!("{number}e-2").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(tokens: u32, per: Duration) -> Result<Rate, RateProblem> {
        Ok(Rate { tokens, per })
    }

    #[test]
    fn reads_rates_per_unit_and_per_duration() {
        assert_eq!(parse_rate("20/s"), rate(20, Duration::from_secs(1)));
        assert_eq!(parse_rate("100/m"), rate(100, Duration::from_secs(60)));
        assert_eq!(parse_rate("3/h"), rate(3, Duration::from_secs(3600)));
        assert_eq!(parse_rate("5/10s"), rate(5, Duration::from_secs(10)));
        assert_eq!(parse_rate(" 2 / 1m30s "), rate(2, Duration::from_secs(90)));
        assert_eq!(parse_rate("1/250ms"), rate(1, Duration::from_millis(250)));
    }

    #[test]
    fn says_what_is_wrong_with_a_rate() {
        assert_eq!(parse_rate("20 per second"), Err(RateProblem::Shape));
        assert_eq!(parse_rate("20/"), Err(RateProblem::Shape));
        assert_eq!(parse_rate("/s"), Err(RateProblem::Shape));
        assert_eq!(parse_rate("x/s"), Err(RateProblem::Count));
        assert_eq!(parse_rate("-1/s"), Err(RateProblem::Count));
        assert_eq!(parse_rate("0/s"), Err(RateProblem::ZeroCount));
        assert_eq!(parse_rate("9999999999/s"), Err(RateProblem::CountTooLarge));
        assert!(matches!(
            parse_rate("20/x"),
            Err(RateProblem::Period(DurationError::UnknownUnit { .. }))
        ));
        assert!(matches!(
            parse_rate("20/5 minutes"),
            Err(RateProblem::Period(_))
        ));
        assert_eq!(parse_rate("20/0s"), Err(RateProblem::ZeroPeriod));
    }

    #[test]
    fn reads_percentages_exactly() {
        assert_eq!(parse_percentage("60%"), Some(0.6));
        assert_eq!(parse_percentage("12.5%"), Some(0.125));
        assert_eq!(parse_percentage("33.3%"), Some(0.333));
        assert_eq!(parse_percentage("100%"), Some(1.0));
        assert_eq!(parse_percentage(" 0 % "), Some(0.0));
        assert_eq!(parse_percentage("150%"), Some(1.5));
        assert_eq!(parse_percentage("-5%"), Some(-0.05));
        for malformed in [
            "60", "sixty%", "%", "1e2%", ".5%", "5.%", "+5%", "inf%", "6 0%",
        ] {
            assert_eq!(parse_percentage(malformed), None, "{malformed}");
        }
    }
}
