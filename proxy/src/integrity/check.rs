//! The download check: every data frame of a whole-object answer is hashed as it passes; the
//! frame that completes the object is handed on only if the digest matches. On a mismatch the
//! body ends with an error instead, so hyper cuts the connection one frame short of the declared
//! length, and every HTTP client sees a failed download, never a complete-looking corrupt file.
//! Nothing is held beyond the frame in hand.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounterVec;

use super::{Digest, Hasher};
use crate::wire::body::{BodyError, ProxyBody};

/// The error the cut answer ends with (logged by hyper, never shown to the client).
#[derive(Debug, thiserror::Error)]
#[error("the object's bytes do not match its digest ({expected}, computed {computed})")]
pub struct Mismatch {
    pub expected: Digest,
    pub computed: Digest,
}

/// `body`, the whole object of `len` bytes stored at `key`, checked against `expected`; the
/// outcome counted in `counter` (`ok` or `mismatch`), a mismatch logged with the key.
pub fn verified(
    body: ProxyBody,
    key: &str,
    len: u64,
    expected: Digest,
    counter: IntCounterVec,
) -> ProxyBody {
    Verified {
        inner: body,
        hasher: Some(Hasher::new(expected.algorithm())),
        expected,
        remaining: len,
        key: key.to_owned(),
        counter,
    }
    .boxed()
}

struct Verified {
    inner: ProxyBody,
    /// None once the digest has been decided.
    hasher: Option<Hasher>,
    expected: Digest,
    remaining: u64,
    key: String,
    counter: IntCounterVec,
}

impl Verified {
    /// Hash `data`; when it completes the object, decide.
    fn check(&mut self, data: &Bytes) -> Result<(), BodyError> {
        let Some(hasher) = &mut self.hasher else {
            return Ok(());
        };
        hasher.update(data);
        self.remaining = self.remaining.saturating_sub(data.len() as u64);
        if self.remaining > 0 {
            return Ok(());
        }
        let computed = self.hasher.take().map(Hasher::finish);
        match computed {
            Some(computed) if computed != self.expected => {
                self.counter.with_label_values(&["mismatch"]).inc();
                tracing::error!(
                    key = self.key,
                    expected = %self.expected,
                    computed = %computed,
                    "integrity: the stored object does not match its digest; the download was cut before its last byte"
                );
                Err(BodyError(Box::new(Mismatch {
                    expected: self.expected,
                    computed,
                })))
            }
            _ => {
                self.counter.with_label_values(&["ok"]).inc();
                Ok(())
            }
        }
    }
}

impl Body for Verified {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(e) = self.check(data)
                {
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::Algorithm;
    use crate::wire::body::from_frames;

    fn digest_of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    fn counter() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("c", "c"), &["outcome"]).unwrap()
    }

    /// What a client receives: the bytes, and whether the body ended with an error.
    async fn read(body: ProxyBody) -> (Vec<u8>, bool) {
        let mut body = body;
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => got.extend_from_slice(frame.data_ref().unwrap()),
                Err(_) => return (got, true),
            }
        }
        (got, false)
    }

    #[tokio::test]
    async fn a_matching_object_passes_whole_and_a_corrupt_one_is_cut_short() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let frames = |data: &[u8]| {
            data.chunks(65_536)
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>()
        };
        for algorithm in [Algorithm::Crc64Nvme, Algorithm::Sha256] {
            let expected = digest_of(algorithm, &data);
            let counter = counter();
            let body = verified(
                from_frames(frames(&data)),
                "k",
                data.len() as u64,
                expected,
                counter.clone(),
            );
            assert_eq!(read(body).await, (data.clone(), false));
            assert_eq!(counter.with_label_values(&["ok"]).get(), 1);

            let mut corrupt = data.clone();
            corrupt[123] ^= 1;
            let body = verified(
                from_frames(frames(&corrupt)),
                "k",
                data.len() as u64,
                expected,
                counter.clone(),
            );
            let (got, failed) = read(body).await;
            assert!(failed, "{algorithm:?}: the corrupt body ended cleanly");
            // Everything but the last frame, which completed the object.
            assert_eq!(got.len(), 4 * 65_536);
            assert_eq!(counter.with_label_values(&["mismatch"]).get(), 1);
        }
    }
}
