//! The body type every response and outgoing request uses: a boxed stream of `Bytes` frames,
//! so incoming bodies pass through without being collected.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body's failure. A concrete type rather than `BoxError`: hyper-util's client bound
/// `Into<BoxError>` on a boxed `dyn Error` trips a rustc higher-ranked lifetime limitation
/// inside spawned futures.
#[derive(Debug)]
pub struct BodyError(pub BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

pub type ProxyBody = BoxBody<Bytes, BodyError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Box any body whose errors convert into `BoxError` (hyper's `Incoming`, for instance).
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| BodyError(e.into())).boxed()
}

/// A body of `Bytes` we already hold (a part's frames), sent frame by frame without copying.
pub fn from_frames(frames: Vec<Bytes>) -> ProxyBody {
    let stream = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|b| Ok::<_, BodyError>(hyper::body::Frame::data(b))),
    );
    http_body_util::StreamBody::new(stream).boxed()
}

/// The error a body ends with when its peer sent nothing for the idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data for {} s", .0.as_secs())]
pub struct IdleTimeout(pub std::time::Duration);

impl BodyError {
    /// Whether this body ended because its peer went silent (see `idle_timeout`).
    pub fn is_idle_timeout(&self) -> bool {
        self.0.downcast_ref::<IdleTimeout>().is_some()
    }
}

/// End `body` with an `IdleTimeout` error when, while it is being read, no frame arrives for
/// `timeout`. Only time spent waiting on the peer counts: while the reader is busy elsewhere
/// (waiting for budget, say) and does not poll, the clock does not run.
pub fn idle_timeout(body: ProxyBody, timeout: std::time::Duration) -> ProxyBody {
    IdleBody {
        inner: body,
        timeout,
        deadline: None,
        expired: false,
    }
    .boxed()
}

struct IdleBody {
    inner: ProxyBody,
    timeout: std::time::Duration,
    /// Armed when a poll finds no frame ready; cleared when one arrives.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
}

impl http_body::Body for IdleBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        use std::task::Poll;
        if self.expired {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.deadline = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.expired = true;
                        self.deadline = None;
                        Poll::Ready(Some(Err(BodyError(Box::new(IdleTimeout(timeout))))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The sending half of `channel`.
pub type FrameSender = tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>;

/// A body fed frame by frame from elsewhere (the client's body, cut at a part's boundaries);
/// at most `capacity` frames wait in it. An `Err` sent ends the body with that error.
pub fn channel(capacity: usize) -> (FrameSender, ProxyBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        self.rx
            .poll_recv(cx)
            .map(|next| next.map(|item| item.map(hyper::body::Frame::data)))
    }
}
