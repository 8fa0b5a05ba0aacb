//! The feed's fault SPEC: a comma-separated list of `key=value` items, e.g.
//! `latency=20ms,429=0.1,500=0.05,late_props=3,missing=injuries@2026-11-03,no_games=2026-11-05`.
//!
//! | item | meaning |
//! |---|---|
//! | `latency=DUR` or `latency=DUR..DUR` | delay every data response (`20ms`, `1s`; a bare number is ms) |
//! | `429=RATE` | answer that share of data requests with 429 and `Retry-After` (`0.1` or `10%`) |
//! | `500=RATE` | answer that share of data requests with 500 |
//! | `outage=N` | answer the first N data requests after the faults were set with 500 (an outage that ends) |
//! | `storm=N` | answer the N data requests after the outage with 429 and `Retry-After` (a 429 storm that ends) |
//! | `retry_after=SECONDS` | the `Retry-After` sent with a 429 (default 1) |
//! | `late_props=N` | the first N requests for each date's props get 404 "not yet available" |
//! | `late_props=DUR` | props become available only DUR after the faults were set (`2s`) |
//! | `missing=SOURCE@DATE` | that source is permanently missing for that date (404), repeatable |
//! | `no_games=DATE` | serve that date as a day without games, repeatable |
//!
//! `none` or an empty SPEC means no faults.

use std::fmt;
use std::time::Duration;

use crate::date::Date;
use crate::season::Source;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Delay range for data responses (min, max); equal when fixed.
    pub latency: Option<(Duration, Duration)>,
    pub rate_429: f64,
    pub rate_500: f64,
    /// The first this many data requests after the faults were set get 500.
    pub outage: u64,
    /// The this many data requests after the outage get 429.
    pub storm: u64,
    pub retry_after: u64,
    pub late_props: Option<Late>,
    pub missing: Vec<(Source, Date)>,
    pub no_games: Vec<Date>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// The first N requests for each date's props are refused.
    Requests(u64),
    /// Props are refused until this long after the faults were set.
    For(Duration),
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            retry_after: 1,
            ..Faults::default()
        }
    }

    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut faults = Faults::none();
        let spec = spec.trim();
        if spec.is_empty() || spec == "none" {
            return Ok(faults);
        }
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("fault {item:?}: expected key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let err = |what: &str| format!("fault {item:?}: {what}");
            match key {
                "latency" => {
                    let (lo, hi) = match value.split_once("..") {
                        Some((lo, hi)) => (duration(lo, "ms"), duration(hi, "ms")),
                        None => (duration(value, "ms"), duration(value, "ms")),
                    };
                    let (lo, hi) = (
                        lo.ok_or_else(|| err("bad duration, e.g. 20ms or 10ms..50ms"))?,
                        hi.ok_or_else(|| err("bad duration, e.g. 20ms or 10ms..50ms"))?,
                    );
                    if lo > hi {
                        return Err(err("the range must go from low to high"));
                    }
                    faults.latency = Some((lo, hi));
                }
                "429" => {
                    faults.rate_429 = rate(value).ok_or_else(|| err("bad rate, e.g. 0.1 or 10%"))?
                }
                "500" => {
                    faults.rate_500 = rate(value).ok_or_else(|| err("bad rate, e.g. 0.05 or 5%"))?
                }
                "outage" => faults.outage = value.parse().map_err(|_| err("bad count, e.g. 4"))?,
                "storm" => faults.storm = value.parse().map_err(|_| err("bad count, e.g. 6"))?,
                "retry_after" => {
                    faults.retry_after = duration(value, "s")
                        .map(|d| d.as_secs())
                        .ok_or_else(|| err("bad seconds, e.g. 1 or 2s"))?;
                }
                "late_props" => {
                    faults.late_props = Some(if value.bytes().all(|b| b.is_ascii_digit()) {
                        Late::Requests(value.parse().map_err(|_| err("bad count"))?)
                    } else {
                        Late::For(
                            duration(value, "s")
                                .ok_or_else(|| err("bad count or duration, e.g. 3 or 2s"))?,
                        )
                    });
                }
                "missing" => {
                    let (source, date) = value
                        .split_once('@')
                        .ok_or_else(|| err("expected SOURCE@YYYY-MM-DD"))?;
                    let source = Source::parse(source.trim()).ok_or_else(|| {
                        err("unknown source (scoreboard, schedule, boxscores, injuries, props)")
                    })?;
                    let date = date.trim().parse().map_err(|e| err(&format!("{e}")))?;
                    faults.missing.push((source, date));
                }
                "no_games" => {
                    let date = value.parse().map_err(|e| err(&format!("{e}")))?;
                    faults.no_games.push(date);
                }
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (latency, 429, 500, outage, storm, retry_after, late_props, missing, no_games)"
                    ));
                }
            }
        }
        Ok(faults)
    }

    pub fn is_missing(&self, source: Source, date: Date) -> bool {
        self.missing.contains(&(source, date))
    }

    pub fn hides_games(&self, date: Date) -> bool {
        self.no_games.contains(&date)
    }
}

/// `20ms`, `1.5s`, `2m`, or a bare number in `default_unit`.
fn duration(s: &str, default_unit: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let unit = if unit.is_empty() { default_unit } else { unit };
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn rate(s: &str) -> Option<f64> {
    let r = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().ok()? / 100.0,
        None => s.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&r).then_some(r)
}

fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl fmt::Display for Faults {
    /// The canonical SPEC; parsing it gives back the same faults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some((lo, hi)) = self.latency {
            if lo == hi {
                items.push(format!("latency={}", fmt_duration(lo)));
            } else {
                items.push(format!(
                    "latency={}..{}",
                    fmt_duration(lo),
                    fmt_duration(hi)
                ));
            }
        }
        if self.rate_429 > 0.0 {
            items.push(format!("429={}", self.rate_429));
        }
        if self.rate_500 > 0.0 {
            items.push(format!("500={}", self.rate_500));
        }
        if self.outage > 0 {
            items.push(format!("outage={}", self.outage));
        }
        if self.storm > 0 {
            items.push(format!("storm={}", self.storm));
        }
        if self.retry_after != 1 {
            items.push(format!("retry_after={}", self.retry_after));
        }
        match self.late_props {
            Some(Late::Requests(n)) => items.push(format!("late_props={n}")),
            Some(Late::For(d)) => items.push(format!("late_props={}", fmt_duration(d))),
            None => {}
        }
        for (source, date) in &self.missing {
            items.push(format!("missing={}@{date}", source.as_str()));
        }
        for date in &self.no_games {
            items.push(format!("no_games={date}"));
        }
        if items.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", items.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let f = Faults::parse(
            "latency=20ms,429=0.1,500=5%,late_props=3,missing=injuries@2026-11-03,no_games=2026-11-05",
        )
        .unwrap();
        assert_eq!(
            f.latency,
            Some((Duration::from_millis(20), Duration::from_millis(20)))
        );
        assert_eq!(f.rate_429, 0.1);
        assert_eq!(f.rate_500, 0.05);
        assert_eq!(f.late_props, Some(Late::Requests(3)));
        assert!(f.is_missing(Source::Injuries, "2026-11-03".parse().unwrap()));
        assert!(f.hides_games("2026-11-05".parse().unwrap()));
        assert_eq!(Faults::parse(&f.to_string()).unwrap(), f);
    }

    #[test]
    fn round_trips_and_defaults() {
        assert_eq!(Faults::parse("").unwrap(), Faults::none());
        assert_eq!(Faults::parse("none").unwrap().to_string(), "none");
        let f = Faults::parse(
            "latency=5ms..40ms,outage=3,storm=5,late_props=2s,retry_after=0,missing=schedule@2026-11-01",
        )
        .unwrap();
        assert_eq!(f.late_props, Some(Late::For(Duration::from_secs(2))));
        assert_eq!((f.outage, f.storm), (3, 5));
        assert_eq!(
            f.missing,
            vec![(Source::Scoreboard, "2026-11-01".parse().unwrap())]
        );
        assert_eq!(Faults::parse(&f.to_string()).unwrap(), f);
    }

    #[test]
    fn refuses_bad_specs() {
        for bad in [
            "latency",
            "latency=fast",
            "429=2",
            "500=-0.1",
            "missing=weather@2026-11-03",
            "missing=injuries",
            "no_games=2026-13-01",
            "explode=1",
            "latency=50ms..10ms",
            "outage=-1",
            "storm=many",
        ] {
            assert!(Faults::parse(bad).is_err(), "{bad}");
        }
    }
}
