//! `backfill = { auto, max_per_day, lookback, from, tries }` of `[pipeline]`: which partitions
//! the schedule should have made, and how `keel serve` repairs the ones that are missing or
//! failed.

use keel_model::BackfillSpec;
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{Checker, EXPECT_STRING, entries};
use crate::error::ConfigError;

const BACKFILL_FIELDS: &[&str] = &["auto", "max_per_day", "lookback", "from", "tries"];
/// The most repair runs one partition may be given.
const MAX_TRIES: u32 = 10;
/// The furthest back gaps are looked for: ten years of daily partitions.
const MAX_LOOKBACK_DAYS: u32 = 3_660;

impl Checker<'_> {
    /// `backfill = { … }` of `[pipeline]`. Every field has a default; whether the pipeline has
    /// the schedule and date partitions it needs is checked with the rest of `[pipeline]`.
    pub(super) fn backfill(
        &mut self,
        _key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<BackfillSpec> {
        const PATH: &str = "pipeline.backfill";
        let table = self.table(value, "backfill", "pipeline")?;
        let mut spec = BackfillSpec::default();
        let mut valid = true;
        for (field_key, field_value) in entries(table) {
            let field = field_key.get_ref().as_ref();
            match field {
                "auto" => match field_value.get_ref() {
                    DeValue::Boolean(flag) => spec.auto = *flag,
                    _ => {
                        valid = false;
                        self.wrong_type(field_value, field, PATH, "true or false");
                    }
                },
                "max_per_day" => match self.positive_integer(field_value, field, PATH) {
                    Some(count) => spec.max_per_day = count,
                    None => valid = false,
                },
                "tries" => match self.positive_integer(field_value, field, PATH) {
                    Some(count) if count <= MAX_TRIES => spec.tries = count,
                    Some(count) => {
                        valid = false;
                        self.errors.push(ConfigError::OutOfRange {
                            field: field.to_string(),
                            table: PATH.to_string(),
                            value: count.to_string(),
                            bound: format!("at most {MAX_TRIES}"),
                            location: self.location(&field_value.span()),
                        });
                    }
                    None => valid = false,
                },
                "lookback" => match self.lookback_days(field_value) {
                    Some(days) => spec.lookback_days = days,
                    None => valid = false,
                },
                "from" => match self.first_date(field_value) {
                    Some(date) => spec.from = Some(date),
                    None => valid = false,
                },
                _ => {
                    valid = false;
                    self.unknown_field(field_key, PATH, BACKFILL_FIELDS, &[]);
                }
            }
        }
        valid.then_some(spec)
    }

    /// `lookback = "30d"`: a whole number of days, at least one.
    fn lookback_days(&mut self, value: &Spanned<DeValue<'_>>) -> Option<u32> {
        let text = self.string(value, "lookback", "pipeline.backfill", EXPECT_STRING)?;
        let days = text
            .strip_suffix('d')
            .and_then(|days| days.parse::<u32>().ok())
            .filter(|days| (1..=MAX_LOOKBACK_DAYS).contains(days));
        if days.is_none() {
            self.errors.push(ConfigError::InvalidSchedule {
                field: "lookback".to_string(),
                table: "pipeline.backfill".to_string(),
                value: text,
                reason: format!(
                    "write a whole number of days such as \"30d\", from 1d to {MAX_LOOKBACK_DAYS}d"
                ),
                location: self.location(&value.span()),
            });
        }
        days
    }

    /// `from = "2026-01-01"`: the pipeline's first partition.
    fn first_date(&mut self, value: &Spanned<DeValue<'_>>) -> Option<String> {
        let text = self.string(value, "from", "pipeline.backfill", EXPECT_STRING)?;
        if chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d").is_ok() && text.len() == 10 {
            return Some(text);
        }
        self.errors.push(ConfigError::InvalidSchedule {
            field: "from".to_string(),
            table: "pipeline.backfill".to_string(),
            value: text,
            reason:
                "write the pipeline's first partition date as YYYY-MM-DD, such as \"2026-01-01\""
                    .to_string(),
            location: self.location(&value.span()),
        });
        None
    }
}
