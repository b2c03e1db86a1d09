//! [`Renderer`]: one surface's streamed answer format (OpenAI and Anthropic server-sent
//! events, Ollama NDJSON), rendered event by event as the node's deltas arrive.

use bytes::BytesMut;

use crate::anthropic;
use crate::events::{ChatEvent, Head};
use crate::failure::Failure;
use crate::ollama::{self, Endpoint};
use crate::openai;

/// How a streamed answer is written.
#[derive(Debug)]
pub(crate) enum Renderer {
    /// `chat.completion.chunk` events, `data: [DONE]` last.
    OpenAi {
        /// `stream_options.include_usage`.
        include_usage: bool,
    },
    /// `message_start` … `message_stop`.
    Anthropic(anthropic::StreamState),
    /// NDJSON objects, `done: true` last.
    Ollama(Endpoint),
}

impl Renderer {
    /// The response's `Content-Type`.
    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            Renderer::OpenAi { .. } | Renderer::Anthropic(_) => "text/event-stream",
            Renderer::Ollama(_) => "application/x-ndjson",
        }
    }

    /// Renders one event into `out`.
    pub(crate) fn event(&mut self, out: &mut BytesMut, head: &Head, event: &ChatEvent) {
        match self {
            Renderer::OpenAi { include_usage } => {
                openai::render_event(out, head, event, *include_usage);
            }
            Renderer::Anthropic(state) => anthropic::render_event(out, state, head, event),
            Renderer::Ollama(endpoint) => ollama::render_event(out, head, *endpoint, event),
        }
    }

    /// Renders a failure after the stream began, in the surface's in-stream error form
    /// (the stream ends after it, never with a success).
    pub(crate) fn error(&mut self, out: &mut BytesMut, failure: &Failure) {
        match self {
            Renderer::OpenAi { .. } => openai::render_error(out, failure),
            Renderer::Anthropic(_) => anthropic::render_error(out, failure),
            Renderer::Ollama(_) => ollama::render_error(out, failure),
        }
    }
}
