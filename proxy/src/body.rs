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
