//! [`ChatCall`]: a chat request of any surface, mapped to the mesh's `llm:chat:v1`
//! payload, and the member readers the surfaces share.

use iicp_client::ChatRequest;
use serde_json::{Map, Value};

use crate::failure::Failure;

/// A chat request of any surface, ready for the mesh.
#[derive(Debug)]
pub(crate) struct ChatCall {
    /// The `llm:chat:v1` payload sent to the mesh.
    pub(crate) request: ChatRequest,
    /// The model asked for (`None`: any model of the mesh).
    pub(crate) model: Option<String>,
    /// Whether the answer is streamed.
    pub(crate) stream: bool,
    /// OpenAI's `stream_options.include_usage: true`.
    pub(crate) include_usage: bool,
}

/// An optional string member; another type is a 400 naming the member.
pub(crate) fn opt_string(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Failure> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Failure::invalid(format!("`{key}` must be a string"))),
    }
}

/// An optional boolean member.
pub(crate) fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, Failure> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Failure::invalid(format!("`{key}` must be a boolean"))),
    }
}

/// An optional positive integer member that fits a `u32`.
pub(crate) fn opt_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, Failure> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| Failure::invalid(format!("`{key}` must be a positive integer"))),
    }
}

/// An optional number from `min` to `max`.
pub(crate) fn opt_f64_in(
    obj: &Map<String, Value>,
    key: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, Failure> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|t| (min..=max).contains(t))
            .map(Some)
            .ok_or_else(|| {
                Failure::invalid(format!("`{key}` must be a number from {min} to {max}"))
            }),
    }
}

/// An optional string or array of strings (stop sequences).
pub(crate) fn opt_strings(
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<String>>, Failure> {
    let wrong = || Failure::invalid(format!("`{key}` must be a string or an array of strings"));
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(wrong),
        Some(_) => Err(wrong()),
    }
}
