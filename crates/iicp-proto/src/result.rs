//! A task's result as JSON: a value, or JSON text kept as it came.
//!
//! A node passes a model server's answer on without parsing it into a tree and writing
//! it out again: a streamed chunk (ADR 0020) and a buffered completion (ADR 0022) stay
//! the text the server sent, checked to be one JSON value. What a node reads from the
//! answer (`model`, the token count, whether `choices` is an array) is parsed out of
//! the text without building a tree ([`ResultJson::summary`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// A result: a JSON value, or JSON text known to be valid. Both serialise as the same
/// JSON; what is read back is always a [`ResultJson::Value`].
#[derive(Debug, Clone)]
pub enum ResultJson {
    /// A value.
    Value(Value),
    /// JSON text, known to be valid.
    Text(Box<RawValue>),
}

/// What a node reads from a result object ([`ResultJson::summary`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// `model`, when it is a string.
    pub model: Option<String>,
    /// `usage.total_tokens`, else `usage.prompt_tokens` + `usage.completion_tokens`.
    pub tokens_used: Option<u64>,
    /// Whether `choices` is an array (an OpenAI completion's shape).
    pub has_choices: bool,
}

/// The members [`ResultJson::summary`] reads, parsed from text without building a tree.
/// Anything of another type fails the parse, and the summary then comes from a value.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<PeekUsage>,
    #[serde(default, borrow)]
    choices: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PeekUsage {
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// The token rule of [`Summary::tokens_used`].
fn tokens(total: Option<u64>, prompt: Option<u64>, completion: Option<u64>) -> Option<u64> {
    total.or_else(|| Some(prompt?.saturating_add(completion.unwrap_or(0))))
}

impl ResultJson {
    /// JSON text as a result.
    ///
    /// # Errors
    /// The text is not one JSON value.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(Self::Text)
    }

    /// JSON bytes as a result (a model server's body, without a copy when it is one
    /// JSON value with nothing around it).
    ///
    /// # Errors
    /// The bytes are not UTF-8 or not one JSON value.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, serde_json::Error> {
        let text = String::from_utf8(bytes).map_err(|_| {
            <serde_json::Error as serde::de::Error>::custom("the JSON text is not UTF-8")
        })?;
        Self::from_text(text)
    }

    /// The value, when the result is one (not text).
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Self::Value(v) => Some(v),
            Self::Text(_) => None,
        }
    }

    /// The result as a value (parsed when it is text).
    pub fn to_value(&self) -> Value {
        match self {
            Self::Value(v) => v.clone(),
            Self::Text(t) => serde_json::from_str(t.get()).unwrap_or(Value::Null),
        }
    }

    /// The result as a value (parsed when it is text).
    pub fn into_value(self) -> Value {
        match self {
            Self::Value(v) => v,
            text => text.to_value(),
        }
    }

    /// Whether the result is JSON `null`.
    pub fn is_null(&self) -> bool {
        match self {
            Self::Value(v) => v.is_null(),
            Self::Text(t) => t.get() == "null",
        }
    }

    /// The result as JSON text.
    pub fn to_json_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Value(v) => serde_json::to_vec(v).unwrap_or_default().into(),
            Self::Text(t) => t.get().as_bytes().into(),
        }
    }

    /// The result as deterministic CBOR (the body of a native RESPONSE).
    pub fn to_cbor(&self) -> Vec<u8> {
        match self {
            Self::Value(v) => crate::cbor::json_to_vec(v),
            // the text was checked when it was made
            Self::Text(t) => crate::cbor::json_text_to_vec(t.get()).unwrap_or_else(|_| vec![0xf6]),
        }
    }

    /// `model`, the token count and the shape of a result object; `None` when the
    /// result is not an object. Text is read without building a tree.
    pub fn summary(&self) -> Option<Summary> {
        match self {
            Self::Value(v) => summary_of(v),
            Self::Text(t) => summary_of_text(t.get()),
        }
    }
}

/// [`ResultJson::summary`] of JSON text known to be valid (a streamed chunk's too),
/// read without building a tree.
pub fn summary_of_text(text: &str) -> Option<Summary> {
    if !text.starts_with('{') {
        return None;
    }
    match serde_json::from_str::<Peek<'_>>(text) {
        Ok(p) => Some(Summary {
            model: p.model.map(Cow::into_owned),
            tokens_used: p
                .usage
                .and_then(|u| tokens(u.total_tokens, u.prompt_tokens, u.completion_tokens)),
            has_choices: p.choices.is_some_and(|c| c.get().starts_with('[')),
        }),
        // a member of another type (a numeric model, a float count, a repeated key):
        // read it as a value does
        Err(_) => summary_of(&serde_json::from_str(text).unwrap_or(Value::Null)),
    }
}

/// [`ResultJson::summary`] of a value.
fn summary_of(v: &Value) -> Option<Summary> {
    let obj = v.as_object()?;
    let usage = obj.get("usage");
    let count = |k: &str| usage.and_then(|u| u.get(k)).and_then(Value::as_u64);
    Some(Summary {
        model: obj.get("model").and_then(Value::as_str).map(str::to_owned),
        tokens_used: tokens(
            count("total_tokens"),
            count("prompt_tokens"),
            count("completion_tokens"),
        ),
        has_choices: obj.get("choices").is_some_and(Value::is_array),
    })
}

impl From<Value> for ResultJson {
    fn from(v: Value) -> Self {
        Self::Value(v)
    }
}

impl PartialEq for ResultJson {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Value(a), Self::Value(b)) => a == b,
            (Self::Text(a), Self::Text(b)) if a.get() == b.get() => true,
            _ => self.to_value() == other.to_value(),
        }
    }
}

impl Serialize for ResultJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(serializer),
            Self::Text(t) => t.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ResultJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::Value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn both(text: &str) -> (ResultJson, ResultJson) {
        (
            ResultJson::from_text(text.to_owned()).expect("json"),
            ResultJson::from(serde_json::from_str::<Value>(text).expect("json")),
        )
    }

    #[test]
    fn text_and_value_give_the_same_summary() {
        let cases = [
            // total given
            (
                r#"{"model":"m","choices":[],"usage":{"total_tokens":7,"prompt_tokens":1}}"#,
                Some(Summary {
                    model: Some("m".into()),
                    tokens_used: Some(7),
                    has_choices: true,
                }),
            ),
            // the parts summed; an escaped model name
            (
                r#"{"model":"a\"b","choices":{},"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
                Some(Summary {
                    model: Some("a\"b".into()),
                    tokens_used: Some(7),
                    has_choices: false,
                }),
            ),
            // other types: read as a value reads them (the text's parse fails)
            (
                r#"{"model":5,"choices":[1],"usage":{"total_tokens":2.5,"prompt_tokens":"x"}}"#,
                Some(Summary {
                    model: None,
                    tokens_used: None,
                    has_choices: true,
                }),
            ),
            // a repeated key: the last counts, as in a value
            (
                r#"{"model":"a","model":"b"}"#,
                Some(Summary {
                    model: Some("b".into()),
                    ..Summary::default()
                }),
            ),
            (r#"{"usage":null}"#, Some(Summary::default())),
            // not objects: an array would fill a struct by position
            (r#"["m",null,[]]"#, None),
            ("null", None),
            (r#""text""#, None),
        ];
        for (text, want) in cases {
            let (raw, value) = both(text);
            assert_eq!(raw.summary(), want, "text {text}");
            assert_eq!(value.summary(), want, "value {text}");
        }
    }

    #[test]
    fn bytes_become_text_and_bad_bytes_are_refused() {
        let r = ResultJson::from_bytes(b" {\"a\":1}\n".to_vec()).expect("json");
        assert_eq!(r.to_json_bytes().as_ref(), b"{\"a\":1}");
        assert_eq!(r, ResultJson::from(json!({"a": 1})));
        assert!(ResultJson::from_bytes(b"{\"a\":".to_vec()).is_err());
        assert!(ResultJson::from_bytes(vec![b'"', 0xff, b'"']).is_err());
        assert!(ResultJson::from_bytes(b"{} {}".to_vec()).is_err());
        assert!(ResultJson::from_text("null".into())
            .expect("json")
            .is_null());
        assert!(!ResultJson::from_text("{}".into()).expect("json").is_null());
    }

    #[test]
    fn a_result_as_text_is_the_same_json_as_its_value() {
        let text = r#"{"id":"c1","choices":[{"index":0,"delta":{"content":"Hi"}}],"model":"m"}"#;
        let (raw, value) = both(text);
        assert_eq!(raw, value);
        assert_eq!(raw.to_cbor(), value.to_cbor());
        assert_eq!(
            raw.to_json_bytes().as_ref(),
            text.as_bytes(),
            "text passes as it is"
        );
        assert_eq!(raw.to_value(), value.clone().into_value());
        assert!(ResultJson::from_text("{".into()).is_err());
    }
}
