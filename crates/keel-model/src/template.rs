//! The `{date}`-style placeholders allowed in commands (docs/pipeline.md): one grammar, which
//! keel-config checks with [`check_templates`] and the engine parses once into a [`Template`]
//! and expands per attempt.
//!
//! The grammar is small on purpose: `{name}` is a placeholder, `{{` and `}}` are literal braces,
//! and a `}` that closes nothing is literal too.

use std::collections::BTreeMap;

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
}

/// Returns every placeholder problem in `text`, in order, with byte offsets into `text`;
/// `params` are the parameter names the pipeline's passes declare.
pub fn check_templates(text: &str, params: &[&str]) -> Vec<TemplateProblem> {
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
    /// name (which validation rejects) is kept as written.
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
                let segment = match (placeholder, tail[1..close].strip_prefix(PARAM_PREFIX)) {
                    (Some(placeholder), _) => Some(Segment::Value(placeholder)),
                    (None, Some(param)) => Some(Segment::Param(param.to_string())),
                    (None, None) => None,
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
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_placeholders_and_escaped_braces() {
        assert!(
            check_templates(
                "echo {date} {partition} {run_id} {task} {attempt} {pass}",
                &[]
            )
            .is_empty()
        );
        assert!(check_templates("awk '{{print $1}}' {date}.csv", &[]).is_empty());
        assert!(check_templates("a } b }} c", &[]).is_empty());
    }

    #[test]
    fn reports_unknown_and_unclosed_placeholders_with_offsets() {
        assert_eq!(
            check_templates("echo {day} {date} {Date}", &[]),
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
            check_templates("echo {date", &[]),
            vec![TemplateProblem::Unclosed { offset: 5 }]
        );
        assert_eq!(
            check_templates("${HOME}", &[]),
            vec![TemplateProblem::Unknown {
                template: "{HOME}".into(),
                offset: 1
            }]
        );
    }

    #[test]
    fn a_param_must_be_declared_by_a_pass() {
        assert!(check_templates("{param.mode}", &["mode"]).is_empty());
        assert_eq!(
            check_templates("x {param.mdoe}", &["mode"]),
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
}
