//! An incremental parser for server-sent events (the `text/event-stream` format the
//! OpenAI and Anthropic APIs use when `stream: true`).
//!
//! Bytes go in as they arrive ([`SseParser::push`]); complete events come out. Lines are
//! bounded ([`MAX_EVENT_BYTES`]) so a server that never ends a line cannot grow memory.

/// Largest event (all its `data:` lines together) accepted.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when present.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An event or line exceeded [`MAX_EVENT_BYTES`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("server-sent event exceeds {MAX_EVENT_BYTES} bytes")]
pub struct SseTooLarge;

/// The incremental parser.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// A new parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseTooLarge> {
        let mut out = Vec::new();
        self.push_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Feeds bytes; appends the events they completed to `out`.
    pub fn push_into(
        &mut self,
        mut bytes: &[u8],
        out: &mut impl Extend<SseEvent>,
    ) -> Result<(), SseTooLarge> {
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            let (head, rest) = bytes.split_at(at);
            bytes = &rest[1..];
            if self.line.len() + head.len() + self.data.len() > MAX_EVENT_BYTES {
                return Err(SseTooLarge);
            }
            // a whole line in this read is parsed where it lies; only a line split
            // across reads is gathered first
            let gathered;
            let mut line = if self.line.is_empty() {
                head
            } else {
                self.line.extend_from_slice(head);
                gathered = std::mem::take(&mut self.line);
                &gathered[..]
            };
            if let [start @ .., b'\r'] = line {
                line = start;
            }
            let line = match std::str::from_utf8(line) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(line),
            };
            if let Some(ev) = self.line_done(&line) {
                out.extend(Some(ev));
            }
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(SseTooLarge);
        }
        Ok(())
    }

    /// Flushes an event left without its terminating blank line at end of stream.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.line.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            let _ = self.line_done(&line);
        }
        self.dispatch()
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        if !self.has_data {
            self.event = None;
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_style_stream_in_pieces() {
        let wire = b"data: {\"a\":1}\n\n: keep-alive\n\ndata: {\"a\":2}\r\n\r\ndata: [DONE]\n\n";
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for chunk in wire.chunks(5) {
            events.extend(p.push(chunk).expect("ok"));
        }
        let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["{\"a\":1}", "{\"a\":2}", "[DONE]"]);
    }

    #[test]
    fn anthropic_style_events_and_multiline() {
        let mut p = SseParser::new();
        let ev = p
            .push(b"event: message_start\ndata: {}\n\nevent: ping\ndata: a\ndata: b\n\n")
            .expect("ok");
        assert_eq!(ev[0].event.as_deref(), Some("message_start"));
        assert_eq!(
            ev[1],
            SseEvent {
                event: Some("ping".into()),
                data: "a\nb".into()
            }
        );
        assert!(p.push(b"data: tail").expect("ok").is_empty());
        assert_eq!(p.finish().map(|e| e.data), Some("tail".into()));
    }

    #[test]
    fn bounded() {
        let mut p = SseParser::new();
        assert_eq!(p.push(&vec![b'x'; MAX_EVENT_BYTES + 1]), Err(SseTooLarge));
    }
}
