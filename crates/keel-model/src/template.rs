//! The `{date}`-style placeholders allowed in commands (docs/pipeline.md): one grammar, which
//! keel-config checks with [`check_templates`] and the engine parses once into a [`Template`]
//! and expands per attempt.
//!
//! The grammar is small on purpose: `{name}` is a placeholder, `{{` and `}}` are literal braces,
//! and a `}` that closes nothing is literal too. `{date}` and `{partition}` also take date
//! arithmetic in days and a chrono strftime format: `{date-1d}`, `{date+7d}`, `{date:%Y%m%d}`,
//! `{partition-1d:%Y%m%d}`; these need date partitions.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{Days, NaiveDate};

use crate::spec::PartitionKind;

/// Every placeholder a command may use, in the order the docs list them.
/// `{param.NAME}` is one more, for each parameter a pass declares.
pub const TEMPLATE_NAMES: &[&str] = &["date", "partition", "run_id", "task", "attempt", "pass"];

/// What a `{param.NAME}` placeholder starts with.
pub const PARAM_PREFIX: &str = "param.";

/// A problem with the placeholders of one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateProblem {
    /// `{name}` with an unknown name; `template` includes the braces.
    Unknown { template: String, offset: usize },
    /// A `{` without a closing `}`.
    Unclosed { offset: usize },
    /// `{param.NAME}` where no pass declares `NAME`.
    UnknownParam { name: String, offset: usize },
    /// `{date…}` or `{partition…}` with date arithmetic or a format that is wrong, or that the
    /// pipeline's partitions cannot take; `template` includes the braces.
    BadDate {
        template: String,
        problem: DateTemplateProblem,
        offset: usize,
    },
}

/// What is wrong with a date placeholder such as `{date-1d:%Y%m%d}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DateTemplateProblem {
    /// The part after `+` or `-` is not a number of days followed by `d`.
    #[error("the offset must be a number of days, as in -1d or +7d")]
    Offset,
    /// More days than any date arithmetic needs; the bound keeps every result a valid date.
    #[error("an offset is at most {MAX_OFFSET_DAYS} days")]
    OffsetTooLarge,
    /// `{date:}`.
    #[error("the format after \":\" is empty")]
    EmptyFormat,
    /// Not a chrono strftime format, or one that asks for a time of day or a time zone.
    #[error(
        "{format:?} is not a strftime format of a date (chrono's: %Y, %m, %d, %j, %a, %b and others; a date has no time of day or zone)"
    )]
    Format { format: String },
    /// The pipeline's partition is `none`, which is no date.
    #[error("the pipeline has partition = \"none\", whose partition is no date")]
    NoDatePartitions,
}

/// The largest day offset `{date-Nd}` and `{date+Nd}` take: a hundred years.
pub const MAX_OFFSET_DAYS: u64 = 36_600;

/// The date arithmetic and format of a `{date…}` or `{partition…}` placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DateForm {
    /// Days added to the partition's date, negative for earlier dates.
    days: i64,
    /// A strftime format, `None` for `YYYY-MM-DD`.
    format: Option<String>,
}

/// Reads `name` (a placeholder without its braces) as date arithmetic: `None` when it is not
/// `date` or `partition` followed by `+`, `-` or `:`.
fn date_form(name: &str) -> Option<Result<DateForm, DateTemplateProblem>> {
    let rest = name
        .strip_prefix("date")
        .or_else(|| name.strip_prefix("partition"))?;
    if !rest.starts_with(['+', '-', ':']) {
        return None;
    }
    let (offset, format) = match rest.split_once(':') {
        Some((offset, format)) => (offset, Some(format)),
        None => (rest, None),
    };
    Some(parse_date_form(offset, format))
}

fn parse_date_form(offset: &str, format: Option<&str>) -> Result<DateForm, DateTemplateProblem> {
    let days = match offset.strip_prefix(['+', '-']) {
        None if offset.is_empty() => 0,
        None => return Err(DateTemplateProblem::Offset),
        Some(amount) => {
            let digits = amount
                .strip_suffix('d')
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(DateTemplateProblem::Offset)?;
            let days: u64 = digits
                .parse()
                .ok()
                .filter(|days| *days <= MAX_OFFSET_DAYS)
                .ok_or(DateTemplateProblem::OffsetTooLarge)?;
            // At most MAX_OFFSET_DAYS, so it fits.
            let days = i64::try_from(days).map_err(|_| DateTemplateProblem::OffsetTooLarge)?;
            if offset.starts_with('-') { -days } else { days }
        }
    };
    let format = match format {
        None => None,
        Some("") => return Err(DateTemplateProblem::EmptyFormat),
        Some(format) => {
            // chrono reports a format it cannot read, or a field a date does not have, as a
            // formatting error: trying it once on a date is the whole check.
            let sample = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap_or_default();
            let mut probe = String::new();
            if write!(probe, "{}", sample.format(format)).is_err() {
                return Err(DateTemplateProblem::Format {
                    format: format.to_string(),
                });
            }
            Some(format.to_string())
        }
    };
    Ok(DateForm { days, format })
}

/// The partition's date moved by `form.days` and written in its format; `None` when
/// `partition` is no `YYYY-MM-DD` date.
fn format_date(partition: &str, form: &DateForm) -> Option<String> {
    let date = NaiveDate::parse_from_str(partition, "%Y-%m-%d").ok()?;
    let moved = if form.days < 0 {
        date.checked_sub_days(Days::new(form.days.unsigned_abs()))?
    } else {
        date.checked_add_days(Days::new(form.days.unsigned_abs()))?
    };
    let mut out = String::new();
    match &form.format {
        None => write!(out, "{}", moved.format("%Y-%m-%d")).ok()?,
        Some(format) => write!(out, "{}", moved.format(format)).ok()?,
    }
    Some(out)
}

/// Returns every placeholder problem in `text`, in order, with byte offsets into `text`;
/// `params` are the parameter names the pipeline's passes declare, `partition` the pipeline's
/// kind of partition (date arithmetic needs dates).
pub fn check_templates(
    text: &str,
    params: &[&str],
    partition: PartitionKind,
) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    let bytes = text.as_bytes();
    let mut position = 0;
    while position < bytes.len() {
        match bytes[position] {
            b'{' if bytes.get(position + 1) == Some(&b'{') => position += 2,
            b'{' => match text[position + 1..].find('}') {
                Some(length) => {
                    let name = &text[position + 1..position + 1 + length];
                    if let Some(param) = name.strip_prefix(PARAM_PREFIX) {
                        if !params.contains(&param) {
                            problems.push(TemplateProblem::UnknownParam {
                                name: param.to_string(),
                                offset: position,
                            });
                        }
                    } else if let Some(form) = date_form(name) {
                        let problem = match form {
                            Err(problem) => Some(problem),
                            Ok(_) if partition == PartitionKind::None => {
                                Some(DateTemplateProblem::NoDatePartitions)
                            }
                            Ok(_) => None,
                        };
                        if let Some(problem) = problem {
                            problems.push(TemplateProblem::BadDate {
                                template: format!("{{{name}}}"),
                                problem,
                                offset: position,
                            });
                        }
                    } else if !TEMPLATE_NAMES.contains(&name) {
                        problems.push(TemplateProblem::Unknown {
                            template: format!("{{{name}}}"),
                            offset: position,
                        });
                    }
                    position += length + 2;
                }
                None => {
                    problems.push(TemplateProblem::Unclosed { offset: position });
                    break;
                }
            },
            _ => position += 1,
        }
    }
    problems
}

/// The values a command template may use.
pub struct TemplateValues<'a> {
    pub date: &'a str,
    pub partition: &'a str,
    pub run_id: &'a str,
    pub task: &'a str,
    pub attempt: &'a str,
    /// The run's pass, empty for a run of no pass.
    pub pass: &'a str,
    /// The run's pass's parameters; one it does not set expands to nothing.
    pub params: &'a BTreeMap<String, String>,
}

/// A placeholder a template may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Date,
    Partition,
    RunId,
    Task,
    Attempt,
    Pass,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Value(Placeholder),
    /// `{param.NAME}`, by name.
    Param(String),
    /// `{item}` (`None`) or `{item.FIELD}` of an expanded task's item (`crate::expand`);
    /// `written` stands for itself when there is no item.
    Item {
        field: Option<String>,
        written: String,
    },
    /// `{date-1d:%Y%m%d}` and the like; `written` is the placeholder as written, braces
    /// included, which stands for itself when the partition is no date.
    Date {
        form: DateForm,
        written: String,
    },
}

/// A command argument parsed once into text and placeholders, then expanded per attempt.
///
/// ```
/// use keel_model::template::{Template, TemplateValues};
/// let template = Template::parse("out/{task}-{date}-{param.mode}.json");
/// let params = [("mode".to_string(), "same_day".to_string())].into();
/// let values = TemplateValues {
///     date: "2026-01-18", partition: "2026-01-18", run_id: "7", task: "scrape", attempt: "2",
///     pass: "same_day", params: &params,
/// };
/// assert_eq!(template.expand(&values), "out/scrape-2026-01-18-same_day.json");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

impl Template {
    /// Parses `text` by the grammar [`check_templates`] checks. A placeholder with an unknown
    /// name or a wrong date form (which validation rejects) is kept as written, and so is date
    /// arithmetic on a partition that is no date.
    pub fn parse(text: &str) -> Template {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            literal.push_str(&rest[..open]);
            let tail = &rest[open..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('{')
                && let Some(close) = tail.find('}')
            {
                let placeholder = match &tail[1..close] {
                    "date" => Some(Placeholder::Date),
                    "partition" => Some(Placeholder::Partition),
                    "run_id" => Some(Placeholder::RunId),
                    "task" => Some(Placeholder::Task),
                    "attempt" => Some(Placeholder::Attempt),
                    "pass" => Some(Placeholder::Pass),
                    _ => None,
                };
                let name = &tail[1..close];
                let segment = match (placeholder, name.strip_prefix(PARAM_PREFIX)) {
                    (Some(placeholder), _) => Some(Segment::Value(placeholder)),
                    (None, Some(param)) => Some(Segment::Param(param.to_string())),
                    (None, None) if crate::expand::is_item_placeholder(name) => {
                        Some(Segment::Item {
                            field: name
                                .strip_prefix(crate::expand::ITEM_FIELD_PREFIX)
                                .map(str::to_string),
                            written: tail[..=close].to_string(),
                        })
                    }
                    (None, None) => match date_form(name) {
                        Some(Ok(form)) => Some(Segment::Date {
                            form,
                            written: tail[..=close].to_string(),
                        }),
                        _ => None,
                    },
                };
                if let Some(segment) = segment {
                    if !literal.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut literal)));
                    }
                    segments.push(segment);
                    rest = &tail[close + 1..];
                    continue;
                }
            }
            literal.push_str(&tail[..1]);
            rest = &tail[1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Text(literal));
        }
        Template { segments }
    }

    /// The text with every placeholder replaced by its value.
    pub fn expand(&self, values: &TemplateValues<'_>) -> String {
        self.expand_item(values, None)
    }

    /// Whether the template holds `{item}` or `{item.FIELD}`.
    pub fn uses_item(&self) -> bool {
        self.segments
            .iter()
            .any(|segment| matches!(segment, Segment::Item { .. }))
    }

    /// [`Template::expand`] for one item of an expanded task: `{item}` is the item's text and
    /// `{item.FIELD}` its field ([`crate::Item::text`], [`crate::Item::field`]). Without an item
    /// they stand for themselves.
    pub fn expand_item(
        &self,
        values: &TemplateValues<'_>,
        item: Option<&crate::expand::Item>,
    ) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Value(Placeholder::Date) => out.push_str(values.date),
                Segment::Value(Placeholder::Partition) => out.push_str(values.partition),
                Segment::Value(Placeholder::RunId) => out.push_str(values.run_id),
                Segment::Value(Placeholder::Task) => out.push_str(values.task),
                Segment::Value(Placeholder::Attempt) => out.push_str(values.attempt),
                Segment::Value(Placeholder::Pass) => out.push_str(values.pass),
                Segment::Param(name) => {
                    out.push_str(values.params.get(name).map_or("", String::as_str))
                }
                Segment::Item { field, written } => match (item, field) {
                    (None, _) => out.push_str(written),
                    (Some(item), None) => out.push_str(&item.text()),
                    (Some(item), Some(field)) => out.push_str(&item.field(field)),
                },
                Segment::Date { form, written } => match format_date(values.date, form) {
                    Some(date) => out.push_str(&date),
                    None => out.push_str(written),
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_placeholders_expand_per_item() {
        let params = BTreeMap::new();
        let values = TemplateValues {
            date: "2026-01-18",
            partition: "2026-01-18",
            run_id: "7",
            task: "box_scores[0021]",
            attempt: "1",
            pass: "",
            params: &params,
        };
        let template = Template::parse("box {item} {item.team} {{item}}");
        assert!(template.uses_item());
        let item = crate::expand::Item {
            key: "0021".into(),
            value: serde_json::json!({"key": "0021", "team": "LAL"}),
        };
        assert_eq!(
            template.expand_item(&values, Some(&item)),
            r#"box {"key":"0021","team":"LAL"} LAL {item}"#
        );
        assert_eq!(template.expand(&values), "box {item} {item.team} {item}");
        assert!(!Template::parse("{items}").uses_item());
    }

    #[test]
    fn accepts_known_placeholders_and_escaped_braces() {
        assert!(
            check_templates(
                "echo {date} {partition} {run_id} {task} {attempt} {pass}",
                &[],
                PartitionKind::Date
            )
            .is_empty()
        );
        assert!(
            check_templates("awk '{{print $1}}' {date}.csv", &[], PartitionKind::Date).is_empty()
        );
        assert!(check_templates("a } b }} c", &[], PartitionKind::Date).is_empty());
    }

    #[test]
    fn reports_unknown_and_unclosed_placeholders_with_offsets() {
        assert_eq!(
            check_templates("echo {day} {date} {Date}", &[], PartitionKind::Date),
            vec![
                TemplateProblem::Unknown {
                    template: "{day}".into(),
                    offset: 5
                },
                TemplateProblem::Unknown {
                    template: "{Date}".into(),
                    offset: 18
                },
            ]
        );
        assert_eq!(
            check_templates("echo {date", &[], PartitionKind::Date),
            vec![TemplateProblem::Unclosed { offset: 5 }]
        );
        assert_eq!(
            check_templates("${HOME}", &[], PartitionKind::Date),
            vec![TemplateProblem::Unknown {
                template: "{HOME}".into(),
                offset: 1
            }]
        );
    }

    #[test]
    fn a_param_must_be_declared_by_a_pass() {
        assert!(check_templates("{param.mode}", &["mode"], PartitionKind::Date).is_empty());
        assert_eq!(
            check_templates("x {param.mdoe}", &["mode"], PartitionKind::Date),
            vec![TemplateProblem::UnknownParam {
                name: "mdoe".into(),
                offset: 2
            }]
        );
    }

    #[test]
    fn parsing_once_expands_like_the_grammar_says() {
        let values = TemplateValues {
            date: "2026-01-18",
            partition: "p",
            run_id: "7",
            task: "scrape",
            attempt: "2",
            pass: "overnight",
            params: &[("mode".to_string(), "late".to_string())].into(),
        };
        let expand = |text: &str| Template::parse(text).expand(&values);
        assert_eq!(
            expand("{pass}:{param.mode}:{param.other}"),
            "overnight:late:"
        );
        assert_eq!(expand("{task}/{date}#{attempt}"), "scrape/2026-01-18#2");
        assert_eq!(expand("{{date}} and }} and }"), "{date} and } and }");
        assert_eq!(expand("{unknown} {run_id}"), "{unknown} 7");
        assert_eq!(expand("open {date"), "open {date");
        assert_eq!(expand(""), "");
    }

    fn expand_on(partition: &str, text: &str) -> String {
        let values = TemplateValues {
            date: partition,
            partition,
            run_id: "7",
            task: "t",
            attempt: "1",
            pass: "",
            params: &BTreeMap::new(),
        };
        Template::parse(text).expand(&values)
    }

    #[test]
    fn date_arithmetic_crosses_month_and_year_boundaries() {
        assert_eq!(expand_on("2026-03-01", "{date-1d}"), "2026-02-28");
        assert_eq!(expand_on("2026-01-01", "{date-1d}"), "2025-12-31");
        assert_eq!(expand_on("2025-12-28", "{date+7d}"), "2026-01-04");
        assert_eq!(expand_on("2026-01-31", "{partition+1d}"), "2026-02-01");
        assert_eq!(expand_on("2026-01-18", "{date+0d}"), "2026-01-18");
        assert_eq!(expand_on("2026-01-18", "{date-365d}"), "2025-01-18");
    }

    #[test]
    fn date_arithmetic_knows_leap_days() {
        assert_eq!(expand_on("2024-03-01", "{date-1d}"), "2024-02-29");
        assert_eq!(expand_on("2024-02-28", "{date+1d}"), "2024-02-29");
        assert_eq!(expand_on("2023-03-01", "{date-1d}"), "2023-02-28");
        assert_eq!(expand_on("2024-02-29", "{date+366d}"), "2025-03-01");
        // 2100 is no leap year, 2000 was.
        assert_eq!(expand_on("2100-03-01", "{date-1d}"), "2100-02-28");
        assert_eq!(expand_on("2000-03-01", "{date-1d}"), "2000-02-29");
    }

    #[test]
    fn formats_the_date_and_combines_with_arithmetic() {
        assert_eq!(expand_on("2026-01-18", "{date:%Y%m%d}"), "20260118");
        assert_eq!(
            expand_on("2026-01-01", "s3://b/{date-1d:%Y/%m/%d}/x"),
            "s3://b/2025/12/31/x"
        );
        assert_eq!(
            expand_on("2024-03-01", "{partition-1d:%j %a %b}"),
            "060 Thu Feb"
        );
        assert_eq!(expand_on("2026-01-18", "{date:%Y:%m}"), "2026:01");
        assert_eq!(
            expand_on("2026-01-18", "{{date-1d}} {date}"),
            "{date-1d} 2026-01-18"
        );
    }

    #[test]
    fn date_arithmetic_on_a_partition_that_is_no_date_stays_as_written() {
        assert_eq!(expand_on("none", "{date-1d} {date}"), "{date-1d} none");
        assert_eq!(expand_on("2026-01-18", "{date-1w}"), "{date-1w}");
    }

    #[test]
    fn reports_wrong_date_forms() {
        let problem = |text: &str, partition| match check_templates(text, &[], partition).as_slice()
        {
            [TemplateProblem::BadDate { problem, .. }] => Some(problem.clone()),
            [] => None,
            other => panic!("unexpected problems {other:?}"),
        };
        let date = PartitionKind::Date;
        assert_eq!(problem("{date-1d} {date+7d:%Y} {partition:%d}", date), None);
        assert_eq!(
            problem("{date-1w}", date),
            Some(DateTemplateProblem::Offset)
        );
        assert_eq!(problem("{date-d}", date), Some(DateTemplateProblem::Offset));
        assert_eq!(problem("{date+}", date), Some(DateTemplateProblem::Offset));
        assert_eq!(
            problem("{date--1d}", date),
            Some(DateTemplateProblem::Offset)
        );
        assert_eq!(
            problem("{date-99999999999999999999d}", date),
            Some(DateTemplateProblem::OffsetTooLarge)
        );
        assert_eq!(
            problem("{date+36601d}", date),
            Some(DateTemplateProblem::OffsetTooLarge)
        );
        assert_eq!(
            problem("{date:}", date),
            Some(DateTemplateProblem::EmptyFormat)
        );
        for format in ["%Q", "%H:%M", "%s", "%Z", "%"] {
            assert_eq!(
                problem(&format!("{{date:{format}}}"), date),
                Some(DateTemplateProblem::Format {
                    format: format.to_string()
                }),
                "{format}"
            );
        }
        assert_eq!(
            problem("{date-1d}", PartitionKind::None),
            Some(DateTemplateProblem::NoDatePartitions)
        );
        assert_eq!(problem("{date} {partition}", PartitionKind::None), None);
        assert_eq!(
            check_templates("ab {date-1w}", &[], date),
            vec![TemplateProblem::BadDate {
                template: "{date-1w}".into(),
                problem: DateTemplateProblem::Offset,
                offset: 3
            }]
        );
        // Not date arithmetic at all: an unknown name.
        assert!(matches!(
            check_templates("{dates}", &[], date).as_slice(),
            [TemplateProblem::Unknown { .. }]
        ));
    }
}
