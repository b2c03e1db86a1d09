//! The surface-neutral answer of a chat ([`ChatOutcome`]), the stream of events a
//! surface renders ([`ChatEvent`]) and [`Relay`], which turns the client's streamed chat
//! ([`iicp_client::ChatEvent`]) into those events as they arrive.
//!
//! A streamed answer is relayed, never synthesised: each text delta and tool-call
//! fragment the node sends becomes one event, rendered and written at once. A node that
//! does not stream answers as one delta (the client's fallback); its tool calls, which
//! arrive only with the assembled completion, are rendered whole before the finish.

use std::collections::BTreeSet;

use iicp_client::{ChatEvent as ClientEvent, ChatResult};
use serde_json::Value;

/// One tool call of the assistant's answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ToolCall {
    /// The call id (`call_…`).
    pub(crate) id: String,
    /// The function name.
    pub(crate) name: String,
    /// The arguments as a JSON text (OpenAI's shape).
    pub(crate) arguments: String,
}

/// Token counts (0 when the node reported none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tokens {
    /// Prompt tokens.
    pub(crate) prompt: u64,
    /// Completion tokens.
    pub(crate) completion: u64,
}

impl Tokens {
    /// Prompt + completion.
    pub(crate) fn total(self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// Why generation stopped, in OpenAI's words (each surface translates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    /// A natural stop or a stop sequence.
    Stop,
    /// The token cap.
    Length,
    /// The model called tools.
    ToolCalls,
    /// Content filtered.
    ContentFilter,
}

impl Finish {
    fn parse(reason: Option<&str>, has_tools: bool) -> Self {
        match reason {
            Some("length" | "max_tokens") => Finish::Length,
            Some("tool_calls" | "function_call" | "tool_use") => Finish::ToolCalls,
            Some("content_filter") => Finish::ContentFilter,
            _ if has_tools => Finish::ToolCalls,
            _ => Finish::Stop,
        }
    }

    /// OpenAI's `finish_reason`.
    pub(crate) fn openai(&self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
        }
    }
}

/// The answer of one chat, whatever the surface.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ChatOutcome {
    /// The completion id (the task id when the node sent none).
    pub(crate) id: String,
    /// The model that answered (what the node reported, else what was asked).
    pub(crate) model: String,
    /// Unix seconds.
    pub(crate) created: u64,
    /// The assistant's text (may be empty with tool calls).
    pub(crate) text: String,
    /// The assistant's tool calls.
    pub(crate) tool_calls: Vec<ToolCall>,
    /// Why generation stopped.
    pub(crate) finish: Finish,
    /// Token counts.
    pub(crate) usage: Tokens,
    /// The node that answered.
    pub(crate) node_id: String,
    /// The W3C trace id of the request (32 hex).
    pub(crate) trace_id: String,
}

/// A fragment of one tool call: the first of an `index` carries the id and the name,
/// the arguments (JSON text) are concatenated across fragments.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ToolDelta {
    /// Position among the tool calls (from 0).
    pub(crate) index: usize,
    /// The call id, on the first fragment.
    pub(crate) id: Option<String>,
    /// The function name, on the first fragment.
    pub(crate) name: Option<String>,
    /// A piece of the arguments (may be empty).
    pub(crate) arguments: String,
    /// Whether this fragment is the whole call (from a completion, not a stream).
    pub(crate) whole: bool,
}

/// What is fixed about a streamed answer once the node accepted it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Head {
    /// The completion id (the task id).
    pub(crate) id: String,
    /// The model asked for (`iicp`: any).
    pub(crate) model: String,
    /// Unix seconds.
    pub(crate) created: u64,
}

/// One event of a streamed answer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ChatEvent {
    /// The answer begins (role `assistant`).
    Start,
    /// A piece of the assistant's text.
    Text(String),
    /// A piece of a tool call.
    Tool(ToolDelta),
    /// The answer is complete.
    Finish {
        /// Why generation stopped.
        reason: Finish,
        /// Token counts.
        usage: Tokens,
        /// The assembled tool calls (Ollama sends them whole).
        tool_calls: Vec<ToolCall>,
    },
}

/// Turns the client's streamed chat events into [`ChatEvent`]s, in order.
#[derive(Debug)]
pub(crate) struct Relay {
    /// The model asked for.
    requested: Option<String>,
    /// Tool-call indexes already sent as fragments.
    tools_seen: BTreeSet<u32>,
    /// Whether `Done` came.
    done: bool,
}

impl Relay {
    /// A relay for a chat that asked for `requested` (`None`: any model).
    pub(crate) fn new(requested: Option<String>) -> Self {
        Self {
            requested,
            tools_seen: BTreeSet::new(),
            done: false,
        }
    }

    /// Whether the answer is complete.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The events of one client event (`now`: the Unix time).
    pub(crate) fn push(&mut self, event: ClientEvent, now: u64) -> Vec<ChatEvent> {
        match event {
            ClientEvent::Delta(text) if text.is_empty() => Vec::new(),
            ClientEvent::Delta(text) => vec![ChatEvent::Text(text)],
            ClientEvent::ToolCallDelta(d) if d.choice == 0 => {
                self.tools_seen.insert(d.index);
                vec![ChatEvent::Tool(ToolDelta {
                    index: usize::try_from(d.index).unwrap_or(usize::MAX),
                    id: d.id,
                    name: d.name,
                    arguments: d.arguments.unwrap_or_default(),
                    whole: false,
                })]
            }
            ClientEvent::Done(result) => {
                self.done = true;
                let outcome = ChatOutcome::from_result(&result, self.requested.as_deref(), now);
                let mut out = Vec::new();
                // a buffered answer's tool calls come only with the completion
                for (index, call) in outcome.tool_calls.iter().enumerate() {
                    let seen = u32::try_from(index).is_ok_and(|i| self.tools_seen.contains(&i));
                    if !seen {
                        out.push(ChatEvent::Tool(ToolDelta {
                            index,
                            id: Some(call.id.clone()),
                            name: Some(call.name.clone()),
                            arguments: call.arguments.clone(),
                            whole: true,
                        }));
                    }
                }
                out.push(ChatEvent::Finish {
                    reason: outcome.finish,
                    usage: outcome.usage,
                    tool_calls: outcome.tool_calls,
                });
                out
            }
            // other choices' fragments, usage (the completion's is authoritative), …
            _ => Vec::new(),
        }
    }
}

impl ChatOutcome {
    /// The outcome of a client chat; `requested` is the model the application asked
    /// for (shown when the node names none), `now` the Unix time.
    pub(crate) fn from_result(result: &ChatResult, requested: Option<&str>, now: u64) -> Self {
        let completion = &result.completion;
        let message = result.message();
        let text = message.and_then(|m| m.text()).unwrap_or_default();
        let tool_calls = message
            .and_then(|m| m.extra.get("tool_calls"))
            .and_then(Value::as_array)
            .map(|calls| calls.iter().enumerate().filter_map(tool_call).collect())
            .unwrap_or_default();
        let reason = completion
            .choices
            .first()
            .and_then(|c| c.finish_reason.as_deref());
        let finish = Finish::parse(reason, !Vec::is_empty(&tool_calls));
        let usage = completion
            .usage
            .as_ref()
            .map_or(Tokens::default(), |u| Tokens {
                prompt: u.prompt_tokens.unwrap_or(0),
                completion: u.completion_tokens.unwrap_or(0),
            });
        let model = result
            .model
            .clone()
            .or_else(|| requested.map(str::to_owned))
            .unwrap_or_else(|| "iicp".to_owned());
        Self {
            id: result.task_id.as_str().to_owned(),
            model,
            created: completion.created.unwrap_or(now),
            text,
            tool_calls,
            finish,
            usage,
            node_id: result.node_id.clone(),
            trace_id: result.traceparent.trace_id_hex(),
        }
    }

    /// The head of a stream of this answer.
    #[cfg(test)]
    pub(crate) fn head(&self) -> Head {
        Head {
            id: self.id.clone(),
            model: self.model.clone(),
            created: self.created,
        }
    }

    /// The events of a stream of this answer: `Start`, the text (one `Text` when there
    /// is any), each tool call whole, `Finish` (renderer tests).
    #[cfg(test)]
    pub(crate) fn events(&self) -> Vec<ChatEvent> {
        let mut out = Vec::with_capacity(3 + self.tool_calls.len());
        out.push(ChatEvent::Start);
        if !self.text.is_empty() {
            out.push(ChatEvent::Text(self.text.clone()));
        }
        for (index, call) in self.tool_calls.iter().enumerate() {
            out.push(ChatEvent::Tool(ToolDelta {
                index,
                id: Some(call.id.clone()),
                name: Some(call.name.clone()),
                arguments: call.arguments.clone(),
                whole: true,
            }));
        }
        out.push(ChatEvent::Finish {
            reason: self.finish.clone(),
            usage: self.usage,
            tool_calls: self.tool_calls.clone(),
        });
        out
    }
}

/// An OpenAI `tool_calls[i]` entry (`{id, type, function: {name, arguments}}`); the
/// arguments may be a JSON text or, from some backends, an object.
fn tool_call((i, v): (usize, &Value)) -> Option<ToolCall> {
    let function = v.get("function")?;
    let name = function.get("name")?.as_str()?.to_owned();
    let arguments = match function.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "{}".to_owned(),
        Some(other) => other.to_string(),
    };
    let id = v
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("call_{i}"), str::to_owned);
    Some(ToolCall {
        id,
        name,
        arguments,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An outcome for renderer tests.
    pub(crate) fn outcome(text: &str, tools: Vec<ToolCall>) -> ChatOutcome {
        ChatOutcome {
            id: "task-1".into(),
            model: "echo".into(),
            created: 1_700_000_000,
            text: text.into(),
            finish: if tools.is_empty() {
                Finish::Stop
            } else {
                Finish::ToolCalls
            },
            tool_calls: tools,
            usage: Tokens {
                prompt: 3,
                completion: 2,
            },
            node_id: "node-1".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        }
    }

    #[test]
    fn events_of_text_and_tools() {
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        };
        let ev = outcome("hi", vec![call.clone()]).events();
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[0], ChatEvent::Start);
        assert_eq!(ev[1], ChatEvent::Text("hi".into()));
        assert!(
            matches!(&ev[2], ChatEvent::Tool(d) if d.whole && d.index == 0 && d.name.as_deref() == Some(call.name.as_str()))
        );
        assert!(matches!(
            ev[3],
            ChatEvent::Finish {
                reason: Finish::ToolCalls,
                ..
            }
        ));
        // no empty text delta
        assert_eq!(outcome("", vec![]).events().len(), 2);
    }

    #[test]
    fn tool_call_arguments_any_shape() {
        let v = serde_json::json!({"function": {"name": "f", "arguments": {"a": 1}}});
        let c = tool_call((2, &v)).expect("call");
        assert_eq!(c.id, "call_2");
        assert_eq!(c.arguments, r#"{"a":1}"#);
        assert!(tool_call((0, &serde_json::json!({"id": "x"}))).is_none());
    }

    #[test]
    fn finish_reasons() {
        assert_eq!(Finish::parse(Some("max_tokens"), false), Finish::Length);
        assert_eq!(Finish::parse(None, true), Finish::ToolCalls);
        assert_eq!(Finish::parse(Some("stop"), false).openai(), "stop");
    }
}
