//! How an error that ends a command is shown: one style for every command.
//!
//! Each error is an `error: …` line, followed by a `hint: …` line when the user can do something
//! about it. Messages are written the way the rest of Keel writes them, `what is wrong; what to
//! do`, so the hint is what follows the first `; ` outside a quoted value or a `code` span.

use crate::{Exit, Invalid};

/// Renders an error that ends a command, and the exit code it ends with.
pub fn render(error: &anyhow::Error) -> (String, u8) {
    if let Some(invalid) = error.downcast_ref::<Invalid>() {
        let mut text = String::new();
        // Each error of the file is one error line, even one that quotes several lines.
        for error in &invalid.errors {
            text.push_str(&error_lines(&error.replace('\n', " ")));
        }
        text.push_str(&invalid.summary);
        text.push('\n');
        return (text, 2);
    }
    if let Some(exit) = error.downcast_ref::<Exit>() {
        // An empty message ends the command without saying more (it said it already).
        if exit.message.is_empty() {
            return (String::new(), exit.code);
        }
        return (error_lines(&exit.message), exit.code);
    }
    (error_lines(&format!("{error:#}")), 1)
}

/// `error: MESSAGE` and, if the message carries one, `hint: HINT`. Lines after the first (a
/// task's output quoted in full, say) follow as they are.
fn error_lines(message: &str) -> String {
    let mut lines = message.trim_start_matches('\n').lines();
    let (what, hint) = split_hint(lines.next().unwrap_or_default());
    let mut text = format!("error: {what}\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    if let Some(hint) = hint {
        text.push_str(&format!("hint: {hint}\n"));
    }
    text
}

/// Splits `what is wrong; what to do` at the first `; ` that is not inside a quoted value
/// (`"a; b"`, escapes included) or a `code span`.
pub fn split_hint(message: &str) -> (&str, Option<&str>) {
    let mut in_quotes = false;
    let mut in_code = false;
    let mut escaped = false;
    for (position, character) in message.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match character {
            '\\' if in_quotes => escaped = true,
            '"' if !in_code => in_quotes = !in_quotes,
            '`' if !in_quotes => in_code = !in_code,
            ';' if !in_quotes && !in_code && message[position..].starts_with("; ") => {
                let hint = message[position + 2..].trim();
                if hint.is_empty() {
                    break;
                }
                return (&message[..position], Some(hint));
            }
            _ => {}
        }
    }
    (message, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_follows_the_first_semicolon_outside_quotes_and_code() {
        assert_eq!(
            split_hint(r#"unknown task "a; b"; did you mean "ab"?"#),
            (r#"unknown task "a; b""#, Some(r#"did you mean "ab"?"#))
        );
        assert_eq!(
            split_hint(r#"value "say \"x; y\"" is bad; fix it; then retry"#),
            (r#"value "say \"x; y\"" is bad"#, Some("fix it; then retry"))
        );
        assert_eq!(
            split_hint("run `keel a; keel b` first"),
            ("run `keel a; keel b` first", None)
        );
        assert_eq!(split_hint("nothing to do"), ("nothing to do", None));
    }

    #[test]
    fn an_error_line_then_its_hint() {
        let error = Exit::usage("a is wrong; fix a\nquoted output");
        assert_eq!(
            render(&error),
            (
                "error: a is wrong\nquoted output\nhint: fix a\n".to_string(),
                2
            )
        );
        let error = anyhow::Error::new(Invalid {
            errors: vec!["x (k.toml:1:1); do y".into(), "z".into()],
            summary: "2 errors in k.toml".into(),
        });
        assert_eq!(
            render(&error).0,
            "error: x (k.toml:1:1)\nhint: do y\nerror: z\n2 errors in k.toml\n"
        );
        let error = anyhow::anyhow!("cannot read x");
        assert_eq!(render(&error), ("error: cannot read x\n".to_string(), 1));
    }
}
