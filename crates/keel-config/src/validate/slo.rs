//! `[slo.NAME]`: the pipeline's service level objectives.
//!
//! ```toml
//! [slo.fresh_by_ten]
//! kind = "freshness"   # the partition for D succeeded by 10:00 local on D + days_after
//! by = "10:00"
//! objective = "99%"
//!
//! [slo.overnight]
//! kind = "latency"     # a run ended within max of its creation
//! max = "6h"
//! objective = "95%"
//!
//! [slo.hands_off]
//! kind = "success"     # a partition succeeded without a human
//! objective = "99.9%"
//! ```

use keel_model::{DEFAULT_SLO_PERIOD, PartitionKind, SloKind, SloSpec};
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::resilience::ShareRange;
use super::{Checker, entries};
use crate::error::ConfigError;

const SLO_FIELDS: &[&str] = &["kind", "objective", "period", "by", "days_after", "max"];
const SLO_KINDS: &[&str] = &["freshness", "latency", "success"];

/// An SLO as written; `days_after` of a freshness SLO defaults from the schedule.
#[derive(Debug)]
pub(super) struct RawSlo {
    spec: SloSpec,
    days_after: Option<u32>,
}

impl RawSlo {
    /// The SLO, a freshness SLO's `days_after` defaulting to `default_days_after`.
    pub(super) fn build(self, default_days_after: u32) -> SloSpec {
        let mut spec = self.spec;
        if let SloKind::Freshness { days_after, .. } = &mut spec.kind {
            *days_after = self.days_after.unwrap_or(default_days_after);
        }
        spec
    }
}

impl Checker<'_> {
    /// `[slo.NAME]`; `None` when it is broken (the errors say why).
    pub(super) fn slo(
        &mut self,
        name: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<RawSlo> {
        let slo = name.get_ref().to_string();
        self.check_name(crate::error::NameKind::Slo, &slo, &name.span());
        let path = super::join_path("slo", &slo);
        let table = self.table(value, &slo, "slo")?;
        let errors_before = self.errors.len();
        let mut kind = None;
        let mut objective = None;
        let mut period = DEFAULT_SLO_PERIOD;
        let mut by = None;
        let mut days_after = None;
        let mut max = None;
        for (key, entry) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "kind" => kind = self.choice(entry, field, &path, SLO_KINDS),
                "objective" => {
                    objective = self.share(entry, field, &path, ShareRange::AboveZeroToOne);
                    if objective == Some(1.0) {
                        self.errors.push(ConfigError::InvalidSlo {
                            slo: slo.clone(),
                            field: field.to_string(),
                            reason: "100% leaves no error budget, so any bad partition would overspend it; write the share you can live with, such as \"99.9%\"".to_string(),
                            location: self.location(&entry.span()),
                        });
                    }
                }
                "period" => {
                    if let Some(duration) = self.duration(entry, field, &path, false) {
                        period = duration;
                    }
                }
                "by" => by = self.time_of_day(entry, field, &path),
                "days_after" => days_after = self.integer_at_least(entry, field, &path, 0),
                "max" => max = self.duration(entry, field, &path, false),
                _ => self.unknown_field(key, &path, SLO_FIELDS, &[]),
            }
        }
        let need = |field: &str, present: bool, checker: &mut Self| {
            if !present {
                checker.errors.push(ConfigError::MissingField {
                    field: field.to_string(),
                    table: path.clone(),
                    location: checker.location(&name.span()),
                });
            }
        };
        need("kind", table.contains_key("kind"), self);
        need("objective", table.contains_key("objective"), self);
        // Fields that belong to another kind are refused rather than ignored.
        let foreign: &[(&str, &str)] = match kind {
            Some("freshness") => {
                need("by", table.contains_key("by"), self);
                &[("max", "latency")]
            }
            Some("latency") => {
                need("max", table.contains_key("max"), self);
                &[("by", "freshness"), ("days_after", "freshness")]
            }
            Some(_) => &[
                ("by", "freshness"),
                ("days_after", "freshness"),
                ("max", "latency"),
            ],
            None => &[],
        };
        for (field, owner) in foreign {
            if let Some((key, _)) = table.get_key_value(*field) {
                self.errors.push(ConfigError::InvalidSlo {
                    slo: slo.clone(),
                    field: field.to_string(),
                    reason: format!(
                        "{field} belongs to a {owner} SLO, and this one is kind = {:?}; remove it",
                        kind.unwrap_or_default()
                    ),
                    location: self.location(&key.span()),
                });
            }
        }
        if kind == Some("freshness") && self.partition == PartitionKind::None {
            self.errors.push(ConfigError::InvalidSlo {
                slo: slo.clone(),
                field: "kind".to_string(),
                reason: "a freshness SLO needs date partitions (partition = \"date\") to know when a partition is due".to_string(),
                location: self.location(&name.span()),
            });
        }
        if self.errors.len() != errors_before {
            return None;
        }
        let kind = match kind? {
            "freshness" => SloKind::Freshness {
                by: by?,
                days_after: 0,
            },
            "latency" => SloKind::Latency { max: max? },
            _ => SloKind::Success,
        };
        Some(RawSlo {
            spec: SloSpec {
                name: slo,
                kind,
                objective: objective?,
                period,
            },
            days_after,
        })
    }
}
