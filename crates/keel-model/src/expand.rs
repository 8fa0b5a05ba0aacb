//! Dynamic fan-out (`expand`): a task that runs once per item of a list an upstream task wrote
//! to its result (`"items": [...]` in `KEEL_RESULT`).
//!
//! This module holds the plain rules, with no I/O: reading the item list out of a result,
//! giving each item a stable key, naming an item's own task run (`box_scores[0021]`), the
//! `{item}` / `{item.FIELD}` placeholders and `KEEL_ITEM`, and the quorum that decides when the
//! expanded task as a whole is complete.

use std::collections::HashMap;
use std::time::Duration;

/// How long no item may progress before a quorum below 100% is enough, when `stall` is not set.
pub const DEFAULT_EXPAND_STALL: Duration = Duration::from_secs(10 * 60);
/// The most items one expansion may have.
pub const MAX_ITEMS: usize = 100_000;
/// The longest key an item may have, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// What an `{item.FIELD}` placeholder starts with.
pub const ITEM_FIELD_PREFIX: &str = "item.";

/// `expand = { from = "list_games", min = "95%", stall = "10m" }` of a task.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExpandSpec {
    /// The upstream task whose last successful result lists the items. Always a hard
    /// dependency of the expanded task (an earlier phase, or its own `after`).
    pub from: String,
    /// In `(0, 1]`: the share of items that must succeed once no item has progressed for
    /// `stall`. `1.0` (the default) waits for every item.
    pub min_share: f64,
    pub stall: Duration,
}

/// One item of an expansion: its key (unique within the expansion, safe in a task-run name and
/// a file name) and its value as the upstream task wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    pub key: String,
    pub value: serde_json::Value,
}

/// Why a result's item list cannot be expanded. Each message says where and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemsError {
    #[error(
        "the result's \"items\" is {found}, not a list; write \"items\": [\"a\", \"b\"] or a list of objects"
    )]
    NotAList { found: &'static str },
    #[error("item {position} of \"items\" is {found}; an item is a string, a number or an object")]
    BadItem {
        position: usize,
        found: &'static str,
    },
    #[error(
        "item {position} of \"items\" has the key {key:?}, which {reason}; keys are 1 to {MAX_KEY_LEN} letters, digits, '.', '_' or '-'"
    )]
    BadKey {
        position: usize,
        key: String,
        reason: &'static str,
    },
    #[error(
        "items {first} and {second} of \"items\" have the same key {key:?}; give each object a distinct \"key\" field"
    )]
    DuplicateKey {
        first: usize,
        second: usize,
        key: String,
    },
    #[error("the result lists {count} items; an expansion has at most {MAX_ITEMS}")]
    TooMany { count: usize },
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Reads the items out of an upstream task's result (the JSON object of its `KEEL_RESULT`).
///
/// `Ok(None)` when the result has no `"items"` field at all; `Ok(Some(vec![]))` for an empty
/// list. A string item is its own key; a number's key is its decimal text; an object's key is
/// its `"key"` field (a string or a number), or else a stable hash of its canonical JSON, so the
/// same object always gets the same key.
pub fn parse_items(result: &serde_json::Value) -> Result<Option<Vec<Item>>, ItemsError> {
    let Some(listed) = result.get("items") else {
        return Ok(None);
    };
    let serde_json::Value::Array(values) = listed else {
        return Err(ItemsError::NotAList {
            found: kind_of(listed),
        });
    };
    if values.len() > MAX_ITEMS {
        return Err(ItemsError::TooMany {
            count: values.len(),
        });
    }
    let mut items = Vec::with_capacity(values.len());
    let mut seen: HashMap<String, usize> = HashMap::with_capacity(values.len());
    for (position, value) in values.iter().enumerate() {
        let key = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Object(fields) => match fields.get("key") {
                Some(serde_json::Value::String(text)) => text.clone(),
                Some(serde_json::Value::Number(number)) => number.to_string(),
                Some(other) => {
                    return Err(ItemsError::BadKey {
                        position,
                        key: other.to_string(),
                        reason: "is not a string or a number",
                    });
                }
                None => stable_key(value),
            },
            other => {
                return Err(ItemsError::BadItem {
                    position,
                    found: kind_of(other),
                });
            }
        };
        if let Some(reason) = key_problem(&key) {
            return Err(ItemsError::BadKey {
                position,
                key,
                reason,
            });
        }
        if let Some(first) = seen.insert(key.clone(), position) {
            return Err(ItemsError::DuplicateKey {
                first,
                second: position,
                key,
            });
        }
        items.push(Item {
            key,
            value: value.clone(),
        });
    }
    Ok(Some(items))
}

/// Why `key` cannot name an item, if it cannot.
fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("is too long")
    } else if !key
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        Some("has a character other than a letter, a digit, '.', '_' or '-'")
    } else if key.starts_with('.') {
        Some("starts with '.'")
    } else {
        None
    }
}

/// A key for an object without a `"key"` field: 16 hex digits of FNV-1a over its canonical JSON
/// (object fields sorted by name at every depth, whatever order they were written in).
fn stable_key(value: &serde_json::Value) -> String {
    let mut canonical = String::new();
    write_canonical(value, &mut canonical);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in canonical.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Array(values) => {
            out.push('[');
            for (position, each) in values.iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                write_canonical(each, out);
            }
            out.push(']');
        }
        serde_json::Value::Object(fields) => {
            let mut names: Vec<&String> = fields.keys().collect();
            names.sort();
            out.push('{');
            for (position, name) in names.into_iter().enumerate() {
                if position > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(name.clone()).to_string());
                out.push(':');
                write_canonical(&fields[name], out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The name of an item's own task run: `box_scores[0021]`.
pub fn item_task_name(parent: &str, key: &str) -> String {
    format!("{parent}[{key}]")
}

/// Splits an item's task-run name (`box_scores[0021]`) into the parent task and the key;
/// `None` for a plain task name.
pub fn split_item_name(name: &str) -> Option<(&str, &str)> {
    let inner = name.strip_suffix(']')?;
    let (parent, key) = inner.split_once('[')?;
    (!parent.is_empty() && key_problem(key).is_none()).then_some((parent, key))
}

impl Item {
    /// What `KEEL_ITEM` and `{item}` hold: a string item as the plain string, anything else as
    /// compact JSON.
    pub fn text(&self) -> String {
        match &self.value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    }

    /// What `{item.FIELD}` holds: the object's field, a string as itself and anything else as
    /// compact JSON; empty when the item has no such field.
    pub fn field(&self, name: &str) -> String {
        match self.value.get(name) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        }
    }
}

/// Whether a placeholder's name (without braces) is `item` or `item.FIELD` with a field name of
/// letters, digits and `_`.
pub fn is_item_placeholder(name: &str) -> bool {
    if name == "item" {
        return true;
    }
    name.strip_prefix(ITEM_FIELD_PREFIX).is_some_and(|field| {
        !field.is_empty()
            && field
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
    })
}

/// Where an expansion's items stand, counted over their task runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ItemCounts {
    pub total: usize,
    pub succeeded: usize,
    /// Ended for good without succeeding (failed, timed out, upstream failed, …).
    pub failed: usize,
}

impl ItemCounts {
    /// Items that have not ended yet.
    pub fn open(&self) -> usize {
        self.total.saturating_sub(self.succeeded + self.failed)
    }

    /// The compact form status and history show: `438/450 · 12 failed`.
    pub fn summary(&self) -> String {
        let mut out = format!("{}/{}", self.succeeded, self.total);
        if self.failed > 0 {
            out.push_str(&format!(" · {} failed", self.failed));
        }
        if self.open() > 0 && self.succeeded + self.failed > 0 {
            out.push_str(&format!(" · {} open", self.open()));
        }
        out
    }
}

/// What the quorum says about an expanded task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpandVerdict {
    /// Every item succeeded, or there were none.
    Complete,
    /// At least `min` succeeded and no item progressed for `stall`: complete, the rest
    /// missing (the run is degraded, downstream sees which items are missing).
    Quorum,
    /// Every item ended and fewer than `min` succeeded: the task failed.
    Failed,
    /// Not decided yet; judge again at this time (when the stall would be reached), if any.
    Wait { until: Option<crate::Millis> },
}

/// The quorum rule of an expanded task: complete at 100%, or at `min_share` or more once no item
/// has progressed (started or ended an attempt) since `last_progress` for `stall`. Pure: `now`
/// is the engine's injected clock.
pub fn judge(
    spec: &ExpandSpec,
    counts: ItemCounts,
    last_progress: crate::Millis,
    now: crate::Millis,
) -> ExpandVerdict {
    if counts.succeeded == counts.total {
        return ExpandVerdict::Complete;
    }
    let enough = quorum_met(spec.min_share, counts);
    if counts.open() == 0 {
        return if enough {
            ExpandVerdict::Quorum
        } else {
            ExpandVerdict::Failed
        };
    }
    if !enough {
        return ExpandVerdict::Wait { until: None };
    }
    let stall = i64::try_from(spec.stall.as_millis()).unwrap_or(i64::MAX);
    let due = last_progress.saturating_add(stall);
    if now >= due {
        ExpandVerdict::Quorum
    } else {
        ExpandVerdict::Wait { until: Some(due) }
    }
}

/// Whether `succeeded` of `total` reaches `min_share`, counted in whole items (rounded up, so
/// 95% of 450 needs 428).
pub fn quorum_met(min_share: f64, counts: ItemCounts) -> bool {
    counts.succeeded >= required_items(min_share, counts.total)
}

/// How many of `total` items must succeed under `min_share`.
pub fn required_items(min_share: f64, total: usize) -> usize {
    let needed = (min_share.clamp(0.0, 1.0) * total as f64 - 1e-9).ceil();
    (needed.max(0.0) as usize).min(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(min_share: f64) -> ExpandSpec {
        ExpandSpec {
            from: "list_games".into(),
            min_share,
            stall: Duration::from_secs(600),
        }
    }

    #[test]
    fn strings_numbers_and_objects_get_keys() {
        let result = json!({"items": ["0021", 7, {"key": "LAL", "city": "LA"}, {"id": 3}]});
        let items = parse_items(&result).unwrap().unwrap();
        let keys: Vec<&str> = items.iter().map(|item| item.key.as_str()).collect();
        assert_eq!(&keys[..3], &["0021", "7", "LAL"]);
        assert_eq!(keys[3].len(), 16);
        // The same object always gets the same key, whatever order its fields were written in.
        let again = parse_items(&json!({"items": [{"id": 3}]}))
            .unwrap()
            .unwrap();
        assert_eq!(again[0].key, keys[3]);
        let one: serde_json::Value =
            serde_json::from_str(r#"{"items": [{"a": 1, "b": 2}]}"#).unwrap();
        let two: serde_json::Value =
            serde_json::from_str(r#"{"items": [{"b": 2, "a": 1}]}"#).unwrap();
        assert_eq!(
            parse_items(&one).unwrap().unwrap()[0].key,
            parse_items(&two).unwrap().unwrap()[0].key
        );
        assert_eq!(items[0].text(), "0021");
        assert_eq!(items[2].text(), r#"{"city":"LA","key":"LAL"}"#);
        assert_eq!(items[2].field("city"), "LA");
        assert_eq!(items[3].field("id"), "3");
        assert_eq!(items[3].field("nope"), "");
    }

    #[test]
    fn no_items_and_an_empty_list_differ() {
        assert_eq!(parse_items(&json!({"rows": 3})).unwrap(), None);
        assert_eq!(parse_items(&json!({"items": []})).unwrap(), Some(vec![]));
    }

    #[test]
    fn bad_lists_say_what_and_where() {
        let error = parse_items(&json!({"items": "a,b"})).unwrap_err();
        assert!(
            error.to_string().contains("is a string, not a list"),
            "{error}"
        );
        let error = parse_items(&json!({"items": ["a", null]})).unwrap_err();
        assert!(error.to_string().starts_with("item 1 of"), "{error}");
        let error = parse_items(&json!({"items": ["a/b"]})).unwrap_err();
        assert!(error.to_string().contains("\"a/b\""), "{error}");
        let error = parse_items(&json!({"items": ["a", {"key": "a"}]})).unwrap_err();
        assert_eq!(
            error,
            ItemsError::DuplicateKey {
                first: 0,
                second: 1,
                key: "a".into()
            }
        );
        let error = parse_items(&json!({"items": [{"key": true}]})).unwrap_err();
        assert!(
            error.to_string().contains("not a string or a number"),
            "{error}"
        );
    }

    #[test]
    fn item_names_round_trip() {
        let name = item_task_name("box_scores", "0021");
        assert_eq!(name, "box_scores[0021]");
        assert_eq!(split_item_name(&name), Some(("box_scores", "0021")));
        assert_eq!(split_item_name("box_scores"), None);
        assert_eq!(split_item_name("[0021]"), None);
        assert_eq!(split_item_name("a[b/c]"), None);
    }

    #[test]
    fn placeholders() {
        assert!(is_item_placeholder("item"));
        assert!(is_item_placeholder("item.game_id"));
        assert!(!is_item_placeholder("item."));
        assert!(!is_item_placeholder("items"));
        assert!(!is_item_placeholder("item.a-b"));
    }

    #[test]
    fn summary_is_compact() {
        let counts = ItemCounts {
            total: 450,
            succeeded: 438,
            failed: 12,
        };
        assert_eq!(counts.summary(), "438/450 · 12 failed");
        let counts = ItemCounts {
            total: 450,
            succeeded: 400,
            failed: 0,
        };
        assert_eq!(counts.summary(), "400/450 · 50 open");
        assert_eq!(ItemCounts::default().summary(), "0/0");
    }

    #[test]
    fn quorum_waits_for_the_stall_then_completes() {
        let spec = spec(0.95);
        assert_eq!(required_items(0.95, 450), 428);
        assert_eq!(required_items(1.0, 3), 3);
        assert_eq!(required_items(0.5, 3), 2);
        let counts = |succeeded, failed| ItemCounts {
            total: 20,
            succeeded,
            failed,
        };
        assert_eq!(judge(&spec, counts(20, 0), 0, 0), ExpandVerdict::Complete);
        // 19 of 20 is 95%, but one item still runs: wait until nothing moved for 10 minutes.
        assert_eq!(
            judge(&spec, counts(19, 0), 1_000, 2_000),
            ExpandVerdict::Wait {
                until: Some(601_000)
            }
        );
        assert_eq!(
            judge(&spec, counts(19, 0), 1_000, 601_000),
            ExpandVerdict::Quorum
        );
        // Below the quorum no stall helps.
        assert_eq!(
            judge(&spec, counts(18, 0), 0, 10_000_000),
            ExpandVerdict::Wait { until: None }
        );
        // Everything ended: quorum or failure at once.
        assert_eq!(judge(&spec, counts(19, 1), 0, 0), ExpandVerdict::Quorum);
        assert_eq!(judge(&spec, counts(18, 2), 0, 0), ExpandVerdict::Failed);
        // No items: complete.
        let none = ItemCounts::default();
        assert_eq!(judge(&spec, none, 0, 0), ExpandVerdict::Complete);
    }
}
