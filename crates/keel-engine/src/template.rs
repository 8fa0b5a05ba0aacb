/// The values a command template may use (docs/pipeline.md).
pub struct TemplateValues<'a> {
    pub date: &'a str,
    pub partition: &'a str,
    pub run_id: &'a str,
    pub task: &'a str,
    pub attempt: &'a str,
}

/// Expands `{date}`, `{partition}`, `{run_id}`, `{task}` and `{attempt}`; `{{` and `}}` are
/// literal braces. Unknown names were rejected by validation and are left as written.
///
/// ```
/// use keel_engine::expand;
/// let values = keel_engine::template::TemplateValues {
///     date: "2026-01-18", partition: "2026-01-18", run_id: "7", task: "scrape", attempt: "2",
/// };
/// assert_eq!(expand("out/{task}-{date}.json", &values), "out/scrape-2026-01-18.json");
/// ```
pub fn expand(text: &str, values: &TemplateValues<'_>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        out.push_str(&rest[..open]);
        let tail = &rest[open..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{')
            && let Some(close) = tail.find('}')
        {
            let value = match &tail[1..close] {
                "date" => Some(values.date),
                "partition" => Some(values.partition),
                "run_id" => Some(values.run_id),
                "task" => Some(values.task),
                "attempt" => Some(values.attempt),
                _ => None,
            };
            if let Some(value) = value {
                out.push_str(value);
                rest = &tail[close + 1..];
                continue;
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}
