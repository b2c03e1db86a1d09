//! Cleaning model-server error text before it reaches a client: only the message,
//! truncated, with file paths, stack traces and markup removed.

use serde_json::Value;

use crate::MAX_ERROR_TEXT;

/// Truncates to `max` characters (on a character boundary), adding `…` when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// The human message inside a backend error body, cleaned.
///
/// Reads OpenAI (`{"error":{"message"}}`), Anthropic (`{"type":"error","error":{"type",
/// "message"}}`), Ollama / llama.cpp (`{"error":"…"}`) and FastAPI (`{"detail":…}`)
/// shapes; anything else is treated as text.
pub(crate) fn error_text(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => json_message(&v).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    scrub(&text)
}

fn json_message(v: &Value) -> Option<String> {
    let err = v.get("error").or_else(|| v.get("detail"));
    match err {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => {
            let msg = o.get("message").and_then(Value::as_str).unwrap_or_default();
            match o.get("type").and_then(Value::as_str) {
                Some(t) if !msg.is_empty() => Some(format!("{t}: {msg}")),
                Some(t) => Some(t.to_owned()),
                None => Some(msg.to_owned()),
            }
        }
        Some(Value::Array(items)) => items
            .first()
            .and_then(|i| i.get("msg").or(Some(i)))
            .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned)),
        _ => v.get("message").and_then(Value::as_str).map(str::to_owned),
    }
}

/// Removes markup, stack-trace lines and file paths; collapses whitespace; truncates.
pub(crate) fn scrub(text: &str) -> String {
    let mut kept = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty()
            || t.starts_with("Traceback")
            || t.starts_with("File \"")
            || t.starts_with("at ")
            || t.starts_with("#")
        {
            continue;
        }
        kept.push(t);
        if kept.len() >= 4 {
            break;
        }
    }
    let mut joined = kept.join(" ");
    // markup
    while let (Some(a), Some(b)) = (joined.find('<'), joined.find('>')) {
        if b <= a {
            break;
        }
        joined.replace_range(a..=b, " ");
    }
    let words: Vec<String> = joined
        .split_whitespace()
        .map(|w| redact_secret(&redact_path(w)))
        .collect();
    truncate(&words.join(" "), MAX_ERROR_TEXT)
}

/// Replaces a word that looks like a credential with `<redacted>`: API-key prefixes
/// (`sk-`, `sk_`, `sk-ant-`, `hf_`, `ghp_`, `xox`), `key=…`/`token=…` assignments, and
/// long runs of letters and digits mixed (24+ characters: keys, tokens, hashes).
fn redact_secret(word: &str) -> String {
    let w = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_');
    let lower = w.to_ascii_lowercase();
    let prefixed = [
        "sk-", "sk_", "hf_", "ghp_", "gho_", "xoxb-", "xoxp-", "akia",
    ]
    .iter()
    .any(|p| lower.starts_with(p) && w.len() > p.len() + 8);
    let assignment = ["key=", "token=", "secret=", "password=", "api_key="]
        .iter()
        .any(|p| lower.contains(p));
    let alnum = w.chars().filter(char::is_ascii_alphanumeric).count();
    let mixed = alnum >= 24
        && w.chars().any(|c| c.is_ascii_digit())
        && w.chars().any(|c| c.is_ascii_alphabetic())
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if prefixed || assignment || mixed {
        "<redacted>".to_owned()
    } else {
        word.to_owned()
    }
}

/// Replaces a word that looks like a file-system path with `<path>`.
fn redact_path(word: &str) -> String {
    let w = word.trim_matches(|c: char| {
        c == '\'' || c == '"' || c == '(' || c == ')' || c == ',' || c == ':'
    });
    let unix = w.starts_with('/') && w.len() > 1 && w[1..].contains('/');
    let windows = w.len() > 2
        && w.as_bytes()[1] == b':'
        && (w.as_bytes()[2] == b'\\' || w.as_bytes()[2] == b'/');
    let home = w.starts_with("~/");
    if unix || windows || home {
        "<path>".to_owned()
    } else {
        word.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            error_text(
                br#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#
            ),
            "invalid_request_error: model not found"
        );
        assert_eq!(
            error_text(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "overloaded_error: Overloaded"
        );
        assert_eq!(
            error_text(br#"{"error":"model 'x' not found, try pulling it first"}"#),
            "model 'x' not found, try pulling it first"
        );
        assert_eq!(
            error_text(br#"{"detail":[{"msg":"field required"}]}"#),
            "field required"
        );
    }

    #[test]
    fn scrubbing() {
        let t = "Traceback (most recent call last):\n  File \"/usr/lib/python3/x.py\", line 3\nValueError: bad value in /home/op/models/m.gguf";
        let s = error_text(t.as_bytes());
        assert!(!s.contains("/home"), "{s}");
        assert!(!s.contains("x.py"), "{s}");
        assert!(s.contains("ValueError"), "{s}");
        assert_eq!(
            error_text(b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
            "502 Bad Gateway"
        );
        assert_eq!(
            error_text(&vec![b'a'; 2000]).chars().count(),
            MAX_ERROR_TEXT + 1
        );
        assert!(error_text(br#"C:\Users\op\secret.txt missing"#).starts_with("<path>"));
    }
}
