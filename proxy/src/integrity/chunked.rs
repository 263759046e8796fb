//! A body sent to S3 with its checksum as an aws-chunked trailer
//! (`x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`): the store computes the checksum
//! of what it received and refuses the request when the trailer says otherwise, so a transfer
//! corrupted on its way into the store is never stored (on a store that checks: see `Native`).
//!
//! The bytes pass through as they come, hashed in passing (no copy, nothing held but the frame in
//! hand). They are cut into chunks of at most `CHUNK` bytes, because a store holds a whole chunk in
//! memory while it parses it (Garage does); each is framed as `<hex size>\r\n<bytes>\r\n`, and the
//! body ends with `0\r\n<name>:<base64>\r\n\r\n`. The chunk sizes follow from the declared length
//! alone, so the encoded Content-Length is known before the first byte (`encoded_len`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::Tally;
use super::digest::{Algorithm, Hasher};
use crate::wire::body::{BodyError, ProxyBody};

/// The largest chunk: what a store may hold of it at once.
pub const CHUNK: u64 = 64 * 1024;

/// The length on the wire of `len` bytes sent this way.
pub fn encoded_len(len: u64, algorithm: Algorithm) -> u64 {
    let framed = |n: u64| format!("{n:x}").len() as u64 + 2 + n + 2;
    let (full, rest) = (len / CHUNK, len % CHUNK);
    let base64 = match algorithm {
        Algorithm::Crc64Nvme => 12,
        Algorithm::Sha256 => 44,
    };
    full * framed(CHUNK)
        + if rest > 0 { framed(rest) } else { 0 }
        + 3 // 0\r\n
        + algorithm.s3_header().len() as u64 + 1 + base64 + 2
        + 2
}

/// `body` (exactly `len` bytes) framed as aws-chunked with the `algorithm` checksum of its bytes
/// as trailer, and a `Tally` that holds that checksum once the body has been sent. The body ends
/// with an error (so the store discards the request) if `body` is shorter or longer than `len`.
pub fn with_trailer(body: ProxyBody, len: u64, algorithm: Algorithm) -> (ProxyBody, Tally) {
    let hasher = Arc::new(Mutex::new(Hasher::new(algorithm)));
    let chunked = Chunked {
        inner: body,
        algorithm,
        hasher: hasher.clone(),
        left: len,
        in_chunk: 0,
        carry: None,
        ready: VecDeque::new(),
        encoded: encoded_len(len, algorithm),
        done: false,
    };
    (chunked.boxed(), Tally(Some(hasher)))
}

struct Chunked {
    inner: ProxyBody,
    algorithm: Algorithm,
    hasher: Arc<Mutex<Hasher>>,
    /// Bytes of `inner` still to pass.
    left: u64,
    /// Bytes still to pass in the chunk being sent.
    in_chunk: u64,
    /// What an inner frame held beyond the chunk being sent.
    carry: Option<Bytes>,
    /// Frames to send before reading on (at most a piece and two short framings).
    ready: VecDeque<Bytes>,
    encoded: u64,
    done: bool,
}

fn failure(message: String) -> BodyError {
    BodyError(message.into())
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(bytes) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.in_chunk == 0 && this.left == 0 {
                if this.carry.as_ref().is_some_and(|c| !c.is_empty()) {
                    return Poll::Ready(Some(Err(failure(
                        "the body is longer than declared".into(),
                    ))));
                }
                let digest = match this.hasher.lock() {
                    Ok(hasher) => hasher.clone().finish(),
                    Err(_) => return Poll::Ready(Some(Err(failure("hasher poisoned".into())))),
                };
                let name = this.algorithm.s3_header();
                this.ready.push_back(Bytes::from(format!(
                    "0\r\n{name}:{}\r\n\r\n",
                    digest.to_base64()
                )));
                this.done = true;
                continue;
            }
            if this.in_chunk == 0 {
                let size = CHUNK.min(this.left);
                this.in_chunk = size;
                this.ready.push_back(Bytes::from(format!("{size:x}\r\n")));
                continue;
            }
            let mut data = match this.carry.take() {
                Some(data) => data,
                None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => data,
                        Err(_) => continue,
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    None => {
                        return Poll::Ready(Some(Err(failure(format!(
                            "the body ended {} bytes short",
                            this.left
                        )))));
                    }
                },
            };
            let take = usize::try_from(this.in_chunk)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let piece = data.split_to(take);
            if !data.is_empty() {
                this.carry = Some(data);
            }
            if let Ok(mut hasher) = this.hasher.lock() {
                hasher.update(&piece);
            }
            this.in_chunk -= take as u64;
            this.left -= take as u64;
            if !piece.is_empty() {
                this.ready.push_back(piece);
            }
            if this.in_chunk == 0 {
                this.ready.push_back(Bytes::from_static(b"\r\n"));
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::body::from_frames;

    async fn encode(frames: Vec<Bytes>, len: u64, algorithm: Algorithm) -> Result<Bytes, String> {
        let (body, _) = with_trailer(from_frames(frames), len, algorithm);
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string())
    }

    /// The framing S3 and the stores read (measured on s3s-fs and Garage: 1 B takes 50 bytes on
    /// the wire, no bytes 44), the sizes from the declared length alone.
    #[tokio::test]
    async fn frames_chunks_and_the_trailer() {
        let one = encode(vec![Bytes::from_static(b"x")], 1, Algorithm::Crc64Nvme)
            .await
            .unwrap();
        let crc = {
            let mut h = Hasher::new(Algorithm::Crc64Nvme);
            h.update(b"x");
            h.finish().to_base64()
        };
        assert_eq!(
            one,
            format!("1\r\nx\r\n0\r\nx-amz-checksum-crc64nvme:{crc}\r\n\r\n")
        );
        assert_eq!(one.len(), 50);
        assert_eq!(encoded_len(1, Algorithm::Crc64Nvme), 50);
        let none = encode(Vec::new(), 0, Algorithm::Crc64Nvme).await.unwrap();
        assert_eq!(none, "0\r\nx-amz-checksum-crc64nvme:AAAAAAAAAAA=\r\n\r\n");
        assert_eq!(encoded_len(0, Algorithm::Crc64Nvme), 44);

        // Frames of any sizes, across chunk boundaries: the same chunks, the bytes in order.
        let data: Vec<u8> = (0..(2 * CHUNK as usize + 1000))
            .map(|i| (i * 7) as u8)
            .collect();
        for algorithm in [Algorithm::Crc64Nvme, Algorithm::Sha256] {
            for step in [1000, CHUNK as usize, 3 * CHUNK as usize, 65_537] {
                let frames = data.chunks(step).map(Bytes::copy_from_slice).collect();
                let wire = encode(frames, data.len() as u64, algorithm).await.unwrap();
                assert_eq!(wire.len() as u64, encoded_len(data.len() as u64, algorithm));
                let mut expected = Vec::new();
                for chunk in data.chunks(CHUNK as usize) {
                    expected.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    expected.extend_from_slice(chunk);
                    expected.extend_from_slice(b"\r\n");
                }
                let mut hasher = Hasher::new(algorithm);
                hasher.update(&data);
                expected.extend_from_slice(
                    format!(
                        "0\r\n{}:{}\r\n\r\n",
                        algorithm.s3_header(),
                        hasher.finish().to_base64()
                    )
                    .as_bytes(),
                );
                assert!(wire == expected, "{algorithm:?}, frames of {step}");
            }
        }
    }

    #[tokio::test]
    async fn a_body_of_another_length_fails() {
        let short = encode(vec![Bytes::from_static(b"abc")], 4, Algorithm::Crc64Nvme).await;
        assert!(short.unwrap_err().contains("1 bytes short"));
        let long = encode(vec![Bytes::from_static(b"abcde")], 4, Algorithm::Crc64Nvme).await;
        assert!(long.unwrap_err().contains("longer than declared"));
    }

    #[tokio::test]
    async fn the_tally_holds_the_checksum_sent() {
        let (body, tally) = with_trailer(
            from_frames(vec![Bytes::from_static(b"123456789")]),
            9,
            Algorithm::Crc64Nvme,
        );
        body.collect().await.unwrap();
        assert_eq!(
            tally.take().unwrap().finish(),
            super::super::Digest::Crc64Nvme(0xae8b_1486_0a79_9888)
        );
    }
}
