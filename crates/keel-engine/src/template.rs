//! Command templates: the one grammar lives in `keel_model::template`; the engine parses each
//! task's command and sensor once, when it is built, and expands them per attempt.

pub use keel_model::template::{Template, TemplateValues};

/// Expands `{date}`, `{partition}`, `{run_id}`, `{task}`, `{attempt}`, `{pass}` and `{param.NAME}`; `{{` and `}}` are
/// literal braces. Unknown names were rejected by validation and are left as written.
///
/// ```
/// use keel_engine::expand;
/// let values = keel_engine::template::TemplateValues {
///     date: "2026-01-18", partition: "2026-01-18", run_id: "7", task: "scrape", attempt: "2",
///     pass: "", params: &Default::default(),
/// };
/// assert_eq!(expand("out/{task}-{date}.json", &values), "out/scrape-2026-01-18.json");
/// ```
pub fn expand(text: &str, values: &TemplateValues<'_>) -> String {
    Template::parse(text).expand(values)
}
