//! Large downloads as several ranged GETs in flight, delivered to the client strictly in order.
//!
//! One GET stream from an object store is often slower than the store can serve the same bytes
//! in parallel ranges (s3s-fs: ~150 MiB/s for one stream, twice that in ranges; AWS: ~100 MB/s
//! per connection). For an answer above the threshold, the body of the first GET still serves
//! the first chunk (so the first byte leaves as before) while the next chunks are fetched as
//! ranged GETs, each carrying `If-Match` with the first answer's ETag.
//!
//! Memory, named: at most `parallelism` chunks of one download are in flight, the one being sent
//! (the head) included. A chunk is read ahead only after taking `chunk` bytes of the global
//! download budget (`try_acquire`: when the budget is spent nothing is read ahead, and a head
//! that was not read ahead passes through frame by frame with the client's backpressure,
//! unbuffered, as a small download does; so no download ever waits on another), and it holds at
//! most its own `chunk` bytes: the frames as S3's connection delivered them, without a copy,
//! except frames under 128 KiB, which are copied into 128 KiB blocks (as uploads do) so that a
//! tiny frame does not pin a whole read buffer. Per download that is at most parallelism × chunk,
//! and all downloads together at most the budget. New ranged GETs start only when the head
//! advances, i.e. when the client has taken a chunk: a slow client stops them.
//!
//! The answer's status and headers stay the first answer's. Anything that would make the body
//! differ from that object (a changed ETag, Content-Range or 412 on a ranged GET, a range that
//! keeps failing after the retries, a client idle past the timeout) ends the body with an error,
//! so hyper cuts the connection before the declared Content-Length: never a spliced file.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::artifacts::state::App;
use crate::artifacts::state::download_memory::{Cut, DownloadConfig, DownloadMetrics, Reserved};
use crate::wire::body::{BodyError, ProxyBody};

/// Frames read ahead shorter than this are copied into blocks of this size; longer ones are kept
/// as they arrived (hyper's read buffer is at most ~408 KiB, so a kept frame pins at most ~3×
/// its length, and only while a store delivers short reads).
const COPY_BELOW: usize = 128 * 1024;
/// How long a ranged GET may take to answer, and its body between two frames, before the
/// attempt counts as failed (and is retried).
const STORE_STALL: Duration = Duration::from_secs(30);
/// Pause before the n-th retry of a range: 100 ms, 200 ms, 400 ms ... at most 2 s.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The bytes of the object the answer carries, from its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    /// First byte offset in the object, and the number of bytes in the answer.
    start: u64,
    len: u64,
    /// The object's size, as every ranged answer must report it.
    total: u64,
    etag: HeaderValue,
    /// Compared too: a store that reads the ETag apart from the bytes (s3s-fs keeps it in a
    /// side file) can pair new bytes with the old ETag for a moment; their mtime goes with them.
    last_modified: Option<HeaderValue>,
}

fn plan(status: StatusCode, headers: &HeaderMap) -> Option<Plan> {
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let etag = headers.get(header::ETAG)?.clone();
    let (start, total) = match status {
        StatusCode::OK => (0, len),
        StatusCode::PARTIAL_CONTENT => {
            let (first, last, total) = content_range(headers.get(header::CONTENT_RANGE)?)?;
            if last + 1 - first != len {
                return None;
            }
            (first, total)
        }
        _ => return None,
    };
    Some(Plan {
        start,
        len,
        total,
        etag,
        last_modified: headers.get(header::LAST_MODIFIED).cloned(),
    })
}

/// `bytes first-last/total` → (first, last, total).
fn content_range(value: &HeaderValue) -> Option<(u64, u64, u64)> {
    let spec = value.to_str().ok()?.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let (first, last, total): (u64, u64, u64) = (
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        total.trim().parse().ok()?,
    );
    (first <= last && last < total).then_some((first, last, total))
}

/// For a 200/206 answer above the threshold, replace its body by the ordered parallel one;
/// anything else is returned as it is. Status and headers are never changed.
pub fn parallelize(
    app: &Arc<App>,
    key: &str,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let config = app.downloads.config;
    if config.parallelism < 2 {
        return response;
    }
    let Some(plan) = plan(response.status(), response.headers()) else {
        return response;
    };
    if plan.len <= config.threshold || plan.len <= config.chunk {
        return response;
    }
    app.downloads.metrics.parallel.inc();
    let (parts, first) = response.into_parts();
    let download = Arc::new(Download {
        app: app.clone(),
        key: key.to_owned(),
        plan,
        config,
    });
    // The first chunk is the first GET's own body, ready before the scheduler runs, so the
    // first byte waits for nothing new.
    let slots = Arc::new(Semaphore::new(config.parallelism));
    let Ok(slot) = slots.clone().try_acquire_owned() else {
        return Response::from_parts(parts, first);
    };
    let (from, to) = download.chunk(0);
    let head = Source::Direct {
        frames: Box::pin(RangeReader::new(download.clone(), from, to, Some(first)).frames()),
        _slot: slot,
    };
    let shared = Arc::new(Mutex::new(State {
        queue: VecDeque::new(),
        current: Some(head),
        all_queued: false,
        cut: None,
        waker: None,
        last_poll: Instant::now(),
        waiting_for_store: true,
        body_gone: false,
    }));
    let body = Ordered {
        shared: shared.clone(),
        remaining: download.plan.len,
        metrics: app.downloads.metrics.clone(),
    };
    tokio::spawn(download.schedule(slots, shared));
    Response::from_parts(parts, body.boxed())
}

/// The frames of one chunk, in order.
enum Source {
    /// Read ahead by a task of its own, frame by frame as they arrive.
    Ahead {
        frames: Arc<Mutex<Ahead>>,
        task: JoinHandle<()>,
        _budget: Reserved,
        _slot: OwnedSemaphorePermit,
    },
    /// Not read ahead (the first GET's own body, or no budget): read when it is the head, one
    /// frame per poll, at the client's pace.
    Direct {
        frames: Pin<Box<dyn Stream<Item = Result<Bytes, Cut>> + Send>>,
        _slot: OwnedSemaphorePermit,
    },
}

impl Source {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Cut>>> {
        match self {
            Source::Ahead { frames, .. } => frames
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .poll_next(cx),
            Source::Direct { frames, .. } => frames.as_mut().poll_next(cx),
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Ahead { task, .. } = self {
            task.abort();
        }
    }
}

/// The frames of one chunk read ahead, shared by its reading task and the body: at most the
/// chunk's bytes (the reader stops at the chunk's end), in the order they arrived.
#[derive(Default)]
struct Ahead {
    frames: VecDeque<Bytes>,
    /// Set when the reader is done: every frame is queued, or the chunk failed.
    end: Option<Result<(), Cut>>,
    waker: Option<Waker>,
}

impl Ahead {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Cut>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(cut)) => Poll::Ready(Some(Err(cut))),
            None => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn push(shared: &Mutex<Ahead>, frame: Option<Bytes>, end: Option<Result<(), Cut>>) {
        let mut ahead = shared.lock().unwrap_or_else(PoisonError::into_inner);
        ahead.frames.extend(frame);
        if end.is_some() {
            ahead.end = end;
        }
        if let Some(waker) = ahead.waker.take() {
            waker.wake();
        }
    }
}

/// What the body and the download's scheduling task share.
struct State {
    /// Chunks after the current one, in order (at most parallelism - 1).
    queue: VecDeque<Source>,
    /// The chunk being sent (the head).
    current: Option<Source>,
    /// Every chunk has been queued.
    all_queued: bool,
    /// Set when the download is to end with a cut connection.
    cut: Option<Cut>,
    waker: Option<Waker>,
    /// When hyper last asked for a frame, and whether the body is waiting for the store (then
    /// a long gap is the store's doing, not the client's).
    last_poll: Instant,
    waiting_for_store: bool,
    /// hyper dropped the body (the client went away, or the answer was sent).
    body_gone: bool,
}

/// The body hyper polls: the chunks' frames in order. Ending before the declared length is an
/// error, so the connection is cut rather than looking complete.
struct Ordered {
    shared: Arc<Mutex<State>>,
    remaining: u64,
    metrics: DownloadMetrics,
}

fn cut_error(cut: Cut) -> BodyError {
    BodyError(format!("download cut ({})", cut.label()).into())
}

impl Body for Ordered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let shared = self.shared.clone();
        let mut guard = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *guard;
        state.last_poll = Instant::now();
        state.waiting_for_store = false;
        loop {
            if let Some(cut) = state.cut {
                self.remaining = 0;
                return Poll::Ready(Some(Err(cut_error(cut))));
            }
            if state.current.is_none() {
                state.current = state.queue.pop_front();
            }
            let polled = match state.current.as_mut() {
                Some(source) => source.poll_next(cx),
                None if state.all_queued => {
                    // Everything queued was sent, and still bytes short: never look complete.
                    self.remaining = 0;
                    return Poll::Ready(Some(Err(cut_error(Cut::Store))));
                }
                None => {
                    state.waker = Some(cx.waker().clone());
                    state.waiting_for_store = true;
                    return Poll::Pending;
                }
            };
            match polled {
                Poll::Ready(Some(Ok(data))) => {
                    self.remaining = self.remaining.saturating_sub(data.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // The chunk is done: its budget and its slot go back, the next one starts.
                Poll::Ready(None) => state.current = None,
                Poll::Ready(Some(Err(cut))) => {
                    self.metrics.cuts.with_label_values(&[cut.label()]).inc();
                    tracing::warn!("download cut: {}", cut.label());
                    state.cut = Some(cut);
                    state.current = None;
                    state.queue.clear();
                }
                Poll::Pending => {
                    state.waiting_for_store = true;
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

impl Drop for Ordered {
    fn drop(&mut self) {
        // Free the chunks read ahead at once; the freed slots wake the scheduler, which stops.
        let mut state = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        state.body_gone = true;
        state.current = None;
        state.queue.clear();
    }
}

/// One parallel download.
struct Download {
    app: Arc<App>,
    key: String,
    plan: Plan,
    config: DownloadConfig,
}

impl Download {
    /// Byte range `[from, to)` of chunk `i`, as object offsets.
    fn chunk(&self, i: u64) -> (u64, u64) {
        let from = self.plan.start + i * self.config.chunk;
        let to = (from + self.config.chunk).min(self.plan.start + self.plan.len);
        (from, to)
    }

    /// Queue every chunk in order, each as soon as one of the `parallelism` slots is free (a
    /// slot is freed when the body has sent a chunk), and watch the client for idleness.
    async fn schedule(self: Arc<Self>, slots: Arc<Semaphore>, shared: Arc<Mutex<State>>) {
        let chunks = self.plan.len.div_ceil(self.config.chunk);
        let check = (self.config.idle_timeout / 4).max(Duration::from_millis(50));
        for i in 1..chunks {
            let slot = loop {
                match tokio::time::timeout(check, slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => break slot,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        if !self.watch(&shared) {
                            return;
                        }
                    }
                }
            };
            let (from, to) = self.chunk(i);
            let source = match self.app.downloads.try_reserve(to - from) {
                Some(budget) => {
                    let frames = Arc::new(Mutex::new(Ahead::default()));
                    let task = tokio::spawn(self.clone().read_ahead(from, to, frames.clone()));
                    Source::Ahead {
                        frames,
                        task,
                        _budget: budget,
                        _slot: slot,
                    }
                }
                None => Source::Direct {
                    frames: Box::pin(RangeReader::new(self.clone(), from, to, None).frames()),
                    _slot: slot,
                },
            };
            let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
            if state.cut.is_some() || state.body_gone {
                return;
            }
            state.queue.push_back(source);
            state.all_queued = i + 1 == chunks;
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
        // All queued: keep watching until the body is done or dropped.
        while self.watch(&shared) {
            tokio::time::sleep(check).await;
        }
    }

    /// False when there is nothing more to watch: the body is gone or finished, or the client
    /// was idle past the timeout (then the download is cut and its memory and budget freed).
    fn watch(&self, shared: &Arc<Mutex<State>>) -> bool {
        let mut state = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if state.body_gone
            || state.cut.is_some()
            || (state.all_queued && state.current.is_none() && state.queue.is_empty())
        {
            return false;
        }
        if !state.waiting_for_store && state.last_poll.elapsed() >= self.config.idle_timeout {
            state.cut = Some(Cut::Idle);
            state.current = None;
            state.queue.clear();
            self.app
                .downloads
                .metrics
                .cuts
                .with_label_values(&["idle"])
                .inc();
            tracing::warn!(key = %self.key, "download cut: the client took nothing for {}s", self.config.idle_timeout.as_secs());
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
            return false;
        }
        true
    }

    /// Read `[from, to)` and queue its frames as they arrive: no copy, except that frames under
    /// `COPY_BELOW` are gathered into blocks of that size (a partly filled block is copied to
    /// its exact size when closed), so the chunk holds close to its length in memory.
    async fn read_ahead(self: Arc<Self>, from: u64, to: u64, shared: Arc<Mutex<Ahead>>) {
        let mut reader = RangeReader::new(self, from, to, None);
        let mut block = BytesMut::new();
        let end = loop {
            match reader.next().await {
                Ok(Some(frame)) if frame.len() >= COPY_BELOW => {
                    Ahead::push(&shared, seal(&mut block), None);
                    Ahead::push(&shared, Some(frame), None);
                }
                Ok(Some(frame)) => {
                    if block.capacity() - block.len() < frame.len() {
                        Ahead::push(&shared, seal(&mut block), None);
                        block = BytesMut::with_capacity(COPY_BELOW);
                    }
                    block.extend_from_slice(&frame);
                    if block.len() == block.capacity() {
                        Ahead::push(&shared, seal(&mut block), None);
                    }
                }
                Ok(None) => {
                    Ahead::push(&shared, seal(&mut block), None);
                    break Ok(());
                }
                Err(cut) => break Err(cut),
            }
        };
        Ahead::push(&shared, None, Some(end));
    }

    /// One ranged GET of `[from, to)`, checked against the first answer.
    async fn open(&self, from: u64, to: u64) -> Result<ProxyBody, Attempt> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RANGE,
            crate::store::s3::header_value(&format!("bytes={from}-{}", to - 1)),
        );
        headers.insert(header::IF_MATCH, self.plan.etag.clone());
        let response =
            match tokio::time::timeout(STORE_STALL, self.app.store.get_object(&self.key, headers))
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => return Err(Attempt::Failed(e.to_string())),
                Err(_) => return Err(Attempt::Failed("no answer in time".into())),
            };
        match response.status() {
            StatusCode::PARTIAL_CONTENT => {}
            // The object changed (If-Match) or went away under the download.
            StatusCode::PRECONDITION_FAILED | StatusCode::NOT_FOUND => {
                return Err(Attempt::Changed);
            }
            status => return Err(Attempt::Failed(format!("S3 answered {status}"))),
        }
        // Stores that ignore If-Match (s3s-fs does) are caught here: the ETag and the object's
        // size must be the first answer's, and the range exactly the one asked for.
        let headers = response.headers();
        if headers.get(header::ETAG) != Some(&self.plan.etag) {
            return Err(Attempt::Changed);
        }
        if let Some(modified) = &self.plan.last_modified
            && headers.get(header::LAST_MODIFIED) != Some(modified)
        {
            return Err(Attempt::Changed);
        }
        match headers.get(header::CONTENT_RANGE).and_then(content_range) {
            Some((_, _, total)) if total != self.plan.total => return Err(Attempt::Changed),
            Some((first, last, _)) if first == from && last + 1 == to => {}
            _ => return Err(Attempt::Failed("S3 answered another range".into())),
        }
        Ok(crate::wire::body::boxed(response.into_body()))
    }
}

/// The block being filled with small frames, closed: as it is when full, copied to its exact
/// size when not (so that a few bytes do not keep a whole block); `None` when empty.
fn seal(block: &mut BytesMut) -> Option<Bytes> {
    let block = std::mem::take(block);
    if block.is_empty() {
        None
    } else if block.len() == block.capacity() {
        Some(block.freeze())
    } else {
        Some(Bytes::copy_from_slice(&block))
    }
}

/// How one ranged GET went wrong.
enum Attempt {
    /// The object is not the one the download started with: no retry.
    Changed,
    /// Anything else: worth a retry.
    Failed(String),
}

/// The frames of `[from, to)`, with failed reads resumed where they broke off.
struct RangeReader {
    download: Arc<Download>,
    next: u64,
    to: u64,
    body: Option<ProxyBody>,
    retries_left: u32,
    retried: u32,
}

impl RangeReader {
    fn new(download: Arc<Download>, from: u64, to: u64, body: Option<ProxyBody>) -> RangeReader {
        let retries_left = download.config.retries;
        RangeReader {
            download,
            next: from,
            to,
            body,
            retries_left,
            retried: 0,
        }
    }

    /// As a stream that ends after its last frame or its first error.
    fn frames(self) -> impl Stream<Item = Result<Bytes, Cut>> + Send {
        futures_util::stream::unfold(Some(self), |reader| async move {
            let mut reader = reader?;
            match reader.next().await {
                Ok(Some(data)) => Some((Ok(data), Some(reader))),
                Ok(None) => None,
                Err(cut) => Some((Err(cut), None)),
            }
        })
    }

    async fn next(&mut self) -> Result<Option<Bytes>, Cut> {
        loop {
            if self.next >= self.to {
                return Ok(None);
            }
            let failure = match &mut self.body {
                None => match self.download.open(self.next, self.to).await {
                    Ok(body) => {
                        self.body = Some(body);
                        continue;
                    }
                    Err(Attempt::Changed) => return Err(Cut::Changed),
                    Err(Attempt::Failed(why)) => why,
                },
                Some(body) => match tokio::time::timeout(STORE_STALL, body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        let Ok(mut data) = frame.into_data() else {
                            continue;
                        };
                        // The first GET's body runs past its chunk: keep only the chunk.
                        let room = self.to - self.next;
                        if data.len() as u64 > room {
                            data.truncate(room as usize);
                        }
                        if data.is_empty() {
                            continue;
                        }
                        self.next += data.len() as u64;
                        if self.next >= self.to {
                            self.body = None;
                        }
                        return Ok(Some(data));
                    }
                    Ok(Some(Err(e))) => format!("body failed: {e}"),
                    Ok(None) => "body ended early".to_owned(),
                    Err(_) => "body stalled".to_owned(),
                },
            };
            self.body = None;
            if self.retries_left == 0 {
                tracing::warn!(
                    key = %self.download.key,
                    "range at {} still failing: {failure}",
                    self.next
                );
                return Err(Cut::Store);
            }
            self.retries_left -= 1;
            self.download.app.downloads.metrics.retries.inc();
            let pause = RETRY_BASE
                .saturating_mul(1 << self.retried.min(5))
                .min(RETRY_MAX);
            self.retried += 1;
            tracing::debug!(key = %self.download.key, "retrying range at {}: {failure}", self.next);
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn plans_follow_the_first_answer() {
        let whole = headers(&[(header::CONTENT_LENGTH, "1000"), (header::ETAG, "\"e\"")]);
        assert_eq!(
            plan(StatusCode::OK, &whole),
            Some(Plan {
                start: 0,
                len: 1000,
                total: 1000,
                etag: HeaderValue::from_static("\"e\""),
                last_modified: None,
            })
        );
        let part = headers(&[
            (header::CONTENT_LENGTH, "100"),
            (header::CONTENT_RANGE, "bytes 900-999/1000"),
            (header::ETAG, "\"e\""),
        ]);
        assert_eq!(
            plan(StatusCode::PARTIAL_CONTENT, &part).map(|p| (p.start, p.len, p.total)),
            Some((900, 100, 1000))
        );
        // No ETag: nothing to hold the ranges to, so no parallel path.
        let untagged = headers(&[(header::CONTENT_LENGTH, "1000")]);
        assert_eq!(plan(StatusCode::OK, &untagged), None);
        // A Content-Range that disagrees with the length.
        let odd = headers(&[
            (header::CONTENT_LENGTH, "10"),
            (header::CONTENT_RANGE, "bytes 900-999/1000"),
            (header::ETAG, "\"e\""),
        ]);
        assert_eq!(plan(StatusCode::PARTIAL_CONTENT, &odd), None);
    }

    #[test]
    fn small_frames_are_gathered_and_a_partial_block_shrinks_to_its_length() {
        let mut block = BytesMut::new();
        assert_eq!(seal(&mut block), None);
        block = BytesMut::with_capacity(COPY_BELOW);
        block.extend_from_slice(b"abc");
        let partial = seal(&mut block).unwrap();
        assert_eq!(&partial[..], b"abc");
        // A copy of its own: the 128 KiB block it came from is free.
        assert_eq!(block.capacity(), 0);
        block = BytesMut::with_capacity(COPY_BELOW);
        block.resize(block.capacity(), 7);
        let full_ptr = block.as_ptr();
        let full = seal(&mut block).unwrap();
        assert_eq!(
            full.as_ptr(),
            full_ptr,
            "a full block is handed on without a copy"
        );
    }

    #[test]
    fn content_ranges() {
        let parse = |s: &'static str| content_range(&HeaderValue::from_static(s));
        assert_eq!(parse("bytes 0-9/10"), Some((0, 9, 10)));
        assert_eq!(parse("bytes 5-4/10"), None);
        assert_eq!(parse("bytes 0-10/10"), None);
        assert_eq!(parse("bytes */10"), None);
        assert_eq!(parse("items 0-9/10"), None);
    }
}
