//! The `{date}`-style placeholders allowed in commands (docs/pipeline.md).
//!
//! The grammar is small on purpose: `{name}` is a placeholder, `{{` and `}}` are literal braces,
//! and a `}` that closes nothing is literal too. Whoever expands commands must follow the same
//! rules, so that a command that validates here expands the same way there.

/// Every placeholder a command may use, in the order the docs list them.
pub(crate) const TEMPLATE_NAMES: &[&str] = &["date", "partition", "run_id", "task", "attempt"];

/// A problem with the placeholders of one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateProblem {
    /// `{name}` with an unknown name; `template` includes the braces.
    Unknown { template: String, offset: usize },
    /// A `{` without a closing `}`.
    Unclosed { offset: usize },
}

/// Returns every placeholder problem in `text`, in order, with byte offsets into `text`.
pub(crate) fn check_templates(text: &str) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    let bytes = text.as_bytes();
    let mut position = 0;
    while position < bytes.len() {
        match bytes[position] {
            b'{' if bytes.get(position + 1) == Some(&b'{') => position += 2,
            b'{' => match text[position + 1..].find('}') {
                Some(length) => {
                    let name = &text[position + 1..position + 1 + length];
                    if !TEMPLATE_NAMES.contains(&name) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_known_placeholders_and_escaped_braces() {
        assert!(check_templates("echo {date} {partition} {run_id} {task} {attempt}").is_empty());
        assert!(check_templates("awk '{{print $1}}' {date}.csv").is_empty());
        assert!(check_templates("a } b }} c").is_empty());
    }

    #[test]
    fn reports_unknown_and_unclosed_placeholders_with_offsets() {
        assert_eq!(
            check_templates("echo {day} {date} {Date}"),
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
            check_templates("echo {date"),
            vec![TemplateProblem::Unclosed { offset: 5 }]
        );
        assert_eq!(
            check_templates("${HOME}"),
            vec![TemplateProblem::Unknown {
                template: "{HOME}".into(),
                offset: 1
            }]
        );
    }
}
