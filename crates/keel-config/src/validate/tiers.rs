//! Tiered gates: `gate = { tiers = [{ after = "0s", min = "100%" }, { after = "1h", min = "80%",
//! required = [...] }] }`, a requirement that relaxes with time since the run was created. Each
//! tier sets `after` and `required`, `min` or both; `after` grows from tier to tier; a gate with
//! tiers sets nothing else.

use std::time::Duration;

use keel_model::{GateSpec, GateTier};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::resilience::ShareRange;
use super::{Checker, NameListContext, NameRef, entries};
use crate::error::{ConfigError, NameKind};

const TIER_FIELDS: &[&str] = &["after", "required", "min"];
const EXPECT_TIERS: &str = "a list of tables such as [{ after = \"0s\", min = \"100%\" }, { after = \"1h\", min = \"80%\" }]";
const TIER_EXAMPLE: &str =
    "for example tiers = [{ after = \"0s\", min = \"100%\" }, { after = \"1h\", min = \"80%\" }]";

#[derive(Debug)]
pub(super) struct RawTier {
    after: Duration,
    pub(super) required: Vec<NameRef>,
    min: Option<f64>,
}

/// The gate of a phase with tiers; its own `required` and `min` are those of its last tier,
/// which is what the gate holds to once it has opened.
pub(super) fn build(tiers: Vec<RawTier>) -> GateSpec {
    let tiers: Vec<GateTier> = tiers
        .into_iter()
        .map(|tier| GateTier {
            after: tier.after,
            required: tier.required.into_iter().map(|name| name.name).collect(),
            min_share: tier.min.unwrap_or(0.0),
        })
        .collect();
    let last = tiers
        .last()
        .cloned()
        .expect("validation keeps only gates with tiers here");
    GateSpec {
        required: last.required,
        min_share: last.min_share,
        grace: Duration::ZERO,
        tiers,
    }
}

impl Checker<'_> {
    /// `tiers = [...]` of the gate of `phase`; `gate_path` is the gate's table.
    pub(super) fn tiers(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        gate_path: &str,
        phase: &str,
    ) -> Vec<RawTier> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "tiers", gate_path, EXPECT_TIERS);
            return Vec::new();
        };
        if items.is_empty() {
            self.errors.push(ConfigError::InvalidTiers {
                phase: phase.to_string(),
                problem: "are empty".to_string(),
                hint: TIER_EXAMPLE,
                location: self.location(&key.span()),
            });
            return Vec::new();
        }
        let mut tiers: Vec<RawTier> = Vec::new();
        let mut previous: Option<Duration> = None;
        for (position, item) in items.iter().enumerate() {
            let path = format!("{gate_path}.tiers[{position}]");
            let Some(table) = self.table(item, &format!("tiers[{position}]"), gate_path) else {
                continue;
            };
            let Some(tier) = self.tier(item, table, &path, phase) else {
                continue;
            };
            if let Some(previous) = previous
                && tier.after <= previous
            {
                self.errors.push(ConfigError::InvalidTiers {
                    phase: phase.to_string(),
                    problem: format!(
                        "are out of order: tier {} starts {} into the run, no later than the tier before it",
                        position + 1,
                        keel_model::format_duration(tier.after)
                    ),
                    hint: "list the tiers in order, each with a later after than the one before",
                    location: self.location(&item.span()),
                });
            }
            previous = Some(tier.after);
            tiers.push(tier);
        }
        // The tiers that parsed, even beside errors, so their required tasks are checked too.
        tiers
    }

    fn tier(
        &mut self,
        item: &Spanned<DeValue<'_>>,
        table: &DeTable<'_>,
        path: &str,
        phase: &str,
    ) -> Option<RawTier> {
        let mut after = None;
        let mut required = Vec::new();
        let mut min = None;
        let mut valid = true;
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "after" => {
                    after = self.duration(value, field, path, true);
                    valid &= after.is_some();
                }
                "required" => {
                    let context = NameListContext {
                        field,
                        table: path,
                        list: "gate's required list",
                        owner_kind: NameKind::Phase,
                        owner: phase,
                    };
                    required = self.name_list(value, &context);
                }
                "min" => {
                    min = self.share(value, field, path, ShareRange::ZeroToOne);
                    valid &= min.is_some();
                }
                _ => {
                    valid = false;
                    self.unknown_field(key, path, TIER_FIELDS, &[]);
                }
            }
        }
        if !table.contains_key("after") {
            self.errors.push(ConfigError::MissingField {
                field: "after".to_string(),
                table: path.to_string(),
                location: self.location(&item.span()),
            });
            return None;
        }
        if required.is_empty() && !table.contains_key("min") && valid {
            self.errors.push(ConfigError::InvalidTiers {
                phase: phase.to_string(),
                problem: format!(
                    "have a tier without required tasks or a min share ({path})"
                ),
                hint: "set min, required or both in every tier; min = \"0%\" lets downstream go on whatever happened",
                location: self.location(&item.span()),
            });
            return None;
        }
        Some(RawTier {
            after: after?,
            required,
            min,
        })
        .filter(|_| valid)
    }

    /// A gate with tiers sets its conditions in them: `required`, `min` and `grace` beside
    /// `tiers` would be ambiguous.
    pub(super) fn tiers_alone(
        &mut self,
        key: &Spanned<DeString<'_>>,
        gate: &DeTable<'_>,
        phase: &str,
    ) {
        for field in ["required", "min", "grace"] {
            if gate.contains_key(field) {
                self.errors.push(ConfigError::InvalidTiers {
                    phase: phase.to_string(),
                    problem: format!("are set beside {field}"),
                    hint: "a gate with tiers sets required and min in each tier and has no grace; move them into the tiers",
                    location: self.location(&key.span()),
                });
            }
        }
    }
}
