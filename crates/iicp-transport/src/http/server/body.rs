//! Request and response body types of the HTTP server.
//!
//! [`RequestBody`] is either the body hyper received on a connection or bytes supplied in
//! process (for tests and in-process calls through [`Router::handle`](super::Router::handle)).
//! [`ResponseBody`] is either complete bytes (the common case: JSON answers, sized with
//! `Content-Length`) or a boxed stream for the few responses that must stream.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The boxed error a streaming [`ResponseBody`] may fail with.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of a request handed to a handler.
///
/// Read it with [`read_body`](super::read_body) or [`read_json`](super::read_json), which
/// enforce a size limit. `Default` is the empty body.
pub struct RequestBody(RequestInner);

enum RequestInner {
    Incoming(Incoming),
    Full(Option<Bytes>),
}

impl RequestBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self(RequestInner::Full(None))
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RequestInner::Incoming(_) => f.write_str("RequestBody(Incoming)"),
            RequestInner::Full(b) => write!(
                f,
                "RequestBody({} bytes)",
                b.as_ref().map_or(0, |b| b.len())
            ),
        }
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self(RequestInner::Incoming(body))
    }
}

impl From<Bytes> for RequestBody {
    fn from(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self(RequestInner::Full(Some(bytes)))
        }
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<String> for RequestBody {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<&'static str> for RequestBody {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            RequestInner::Incoming(body) => Pin::new(body).poll_frame(cx),
            RequestInner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            RequestInner::Incoming(body) => body.is_end_stream(),
            RequestInner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            RequestInner::Incoming(body) => body.size_hint(),
            RequestInner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// The body of a response: complete bytes, or a boxed stream.
pub struct ResponseBody(ResponseInner);

enum ResponseInner {
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl ResponseBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self(ResponseInner::Full(None))
    }

    /// A streaming body (sent chunked). Use only when the answer cannot be built in
    /// memory first; everything else should be complete bytes.
    pub fn streaming<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self(ResponseInner::Stream(
            body.map_err(Into::into).boxed_unsync(),
        ))
    }

    /// A streaming body fed by `rx`: each received chunk is sent as it arrives (one
    /// chunked-encoding frame; with `TCP_NODELAY` one segment), the body ends when every
    /// sender is dropped. For event streams (`text/event-stream`, NDJSON).
    pub fn channel(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self::streaming(ChannelBody(rx))
    }

    /// The complete bytes, if this is not a streaming body (empty body → empty bytes).
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            ResponseInner::Full(Some(b)) => Some(b),
            ResponseInner::Full(None) => Some(&[]),
            ResponseInner::Stream(_) => None,
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ResponseInner::Full(b) => write!(
                f,
                "ResponseBody({} bytes)",
                b.as_ref().map_or(0, |b| b.len())
            ),
            ResponseInner::Stream(_) => f.write_str("ResponseBody(stream)"),
        }
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            Self(ResponseInner::Full(Some(bytes)))
        }
    }
}

impl From<Vec<u8>> for ResponseBody {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::from(bytes).into()
    }
}

impl From<String> for ResponseBody {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<&'static str> for ResponseBody {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            ResponseInner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseInner::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            ResponseInner::Full(bytes) => bytes.is_none(),
            ResponseInner::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            ResponseInner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseInner::Stream(body) => body.size_hint(),
        }
    }
}

/// The body of [`ResponseBody::channel`].
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
