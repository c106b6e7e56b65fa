//! Encodes a [`Notice`] for a sink. Pure: no IO, no clock, so every shape is unit-tested.

use crate::{Format, Notice, NotifyKind};
use serde_json::{json, Value};

/// Slack refuses a section text over 3 000 characters and a context block over 10 elements;
/// staying under both keeps a long reason or many numbers from turning into `invalid_blocks`.
const SECTION_MAX_CHARS: usize = 2_900;
const CONTEXT_MAX_ELEMENTS: usize = 10;
const REASON_MAX_CHARS: usize = 1_000;

/// The request body a sink of `format` receives for `n`.
pub fn render(format: Format, n: &Notice) -> Value {
    match format {
        Format::Json => serde_json::to_value(n).unwrap_or(Value::Null),
        Format::Slack => slack(n),
    }
}

/// How alarming a kind is. Anything that needs a look but is not a rollback gets the middle
/// level. (A canary that could not start is an abort, so it alarms as one.)
fn emoji(kind: NotifyKind) -> &'static str {
    use NotifyKind::*;
    match kind {
        Aborted | RolledBack => ":rotating_light:",
        Started | Step | Resumed | Promoted => ":rocket:",
        Held | Paused | PreviousReleased | CrashLoop => ":warning:",
    }
}

/// Slack's mrkdwn gives `&`, `<` and `>` meaning (links, mentions); a service name or reason must
/// not be able to ping `<!channel>`. Newlines are folded so the summary stays one line.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The one-line summary: `:rocket: *checkout* promoted v2 (rollout 7): reason`.
fn summary(n: &Notice) -> String {
    let mut line = format!(
        "{} *{}* {}",
        emoji(n.kind),
        escape(&n.service),
        n.kind.as_str()
    );
    if let Some(v) = &n.version {
        line.push_str(&format!(" `{}`", escape(v)));
    }
    if let Some(r) = n.rollout {
        line.push_str(&format!(" (rollout {r})"));
    }
    if !n.reason.is_empty() {
        line.push_str(": ");
        line.push_str(&escape(&truncate(&n.reason, REASON_MAX_CHARS)));
    }
    truncate(&line, SECTION_MAX_CHARS)
}

/// `numbers` as `*name*: value` snippets; nothing for `null` or an empty object.
fn number_elements(numbers: &Value) -> Vec<String> {
    let show = |v: &Value| match v {
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    };
    let all: Vec<String> = match numbers {
        Value::Null => Vec::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("*{}*: {}", escape(k), show(v)))
            .collect(),
        other => vec![show(other)],
    };
    if all.len() <= CONTEXT_MAX_ELEMENTS {
        return all;
    }
    let rest = all.len() - (CONTEXT_MAX_ELEMENTS - 1);
    let mut shown: Vec<String> = all.into_iter().take(CONTEXT_MAX_ELEMENTS - 1).collect();
    shown.push(format!("…and {rest} more"));
    shown
}

/// A Slack incoming-webhook message: `text` is the notification/fallback line, `blocks` what the
/// channel shows (a mrkdwn section, then the numbers as a context block).
fn slack(n: &Notice) -> Value {
    let text = summary(n);
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": text},
    })];
    let numbers = number_elements(&n.numbers);
    if !numbers.is_empty() {
        let elements: Vec<Value> = numbers
            .into_iter()
            .map(|t| json!({"type": "mrkdwn", "text": truncate(&t, SECTION_MAX_CHARS)}))
            .collect();
        blocks.push(json!({"type": "context", "elements": elements}));
    }
    json!({"text": text, "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: &str) -> Notice {
        Notice {
            kind: kind.parse().unwrap(),
            service: "checkout".into(),
            rollout: Some(7),
            version: Some("v2".into()),
            at_ms: 1_700_000_000_000,
            reason: "error ratio 3.1% > 2% for 3 windows".into(),
            numbers: json!({"weight": 25, "error_ratio": 0.031}),
            audit: Some(crate::AuditAnchor {
                seq: 42,
                mac: "ab".repeat(32),
            }),
        }
    }

    #[test]
    fn json_is_the_notice() {
        let n = notice("step");
        let v = render(Format::Json, &n);
        // The audit anchor travels with it: a copy of the chain's head kept off the host.
        assert_eq!(v["audit"], json!({"seq": 42, "mac": "ab".repeat(32)}));
        assert_eq!(serde_json::from_value::<Notice>(v).unwrap(), n);
    }

    #[test]
    fn slack_has_a_one_line_text_and_blocks() {
        let v = render(Format::Slack, &notice("rolled_back"));
        let text = v["text"].as_str().unwrap();
        assert_eq!(
            text,
            ":rotating_light: *checkout* rolled_back `v2` (rollout 7): error ratio 3.1% &gt; 2% for 3 windows"
        );
        assert_eq!(v["blocks"][0]["type"], "section");
        assert_eq!(
            v["blocks"][0]["text"],
            json!({"type": "mrkdwn", "text": text})
        );
        assert_eq!(v["blocks"][1]["type"], "context");
        let elements = v["blocks"][1]["elements"].as_array().unwrap();
        assert_eq!(elements.len(), 2);
        assert!(elements.iter().all(|e| e["type"] == "mrkdwn"));
        assert!(elements.iter().any(|e| e["text"] == "*weight*: 25"), "{v}");

        assert!(render(Format::Slack, &notice("promoted"))["text"]
            .as_str()
            .unwrap()
            .starts_with(":rocket:"));
        assert!(render(Format::Slack, &notice("held"))["text"]
            .as_str()
            .unwrap()
            .starts_with(":warning:"));
    }

    #[test]
    fn slack_escapes_and_bounds_what_it_is_given() {
        let mut n = notice("paused");
        n.service = "<!channel> & co".into();
        n.reason = format!("line one\nline two {}", "x".repeat(5_000));
        n.version = None;
        n.rollout = None;
        n.numbers = Value::Object((0..25).map(|i| (format!("n{i:02}"), json!(i))).collect());
        let v = render(Format::Slack, &n);
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with(":warning: *&lt;!channel&gt; &amp; co* paused: line one line two"));
        assert!(!text.contains('\n'));
        assert!(text.chars().count() <= SECTION_MAX_CHARS + 1);
        let elements = v["blocks"][1]["elements"].as_array().unwrap();
        assert_eq!(elements.len(), CONTEXT_MAX_ELEMENTS);
        assert_eq!(elements[9]["text"], "…and 16 more");

        n.numbers = Value::Null;
        let v = render(Format::Slack, &n);
        assert_eq!(v["blocks"].as_array().unwrap().len(), 1);
        n.numbers = json!({});
        assert_eq!(
            render(Format::Slack, &n)["blocks"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
