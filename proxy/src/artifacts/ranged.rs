//! Large downloads as several ranged GETs in flight, delivered to the client strictly in order.
//!
//! One GET stream from an object store is often slower than the store can serve the same bytes
//! in parallel ranges (s3s-fs: ~150 MiB/s for one stream, twice that in ranges; AWS: ~100 MB/s
//! per connection). For an answer above the threshold, the body of the first GET still serves
//! the first chunk (so the first byte leaves as before) while the next chunks are fetched as
//! ranged GETs, each carrying `If-Match` with the first answer's ETag.
//!
//! Memory, named: at most `parallelism` chunks of one download are in flight, the one being sent
//! (the head) included. A chunk read ahead goes into one buffer of at most `chunk` bytes, and only
//! after taking `chunk` bytes of the global download budget (`try_acquire`: when the budget is
//! spent nothing is read ahead, and a head that was not read ahead passes through frame by frame
//! with the client's backpressure, unbuffered, as a small download does; so no download ever
//! waits on another). Per download that is at most parallelism × chunk, and all downloads
//! together at most the budget. New ranged GETs start only when the head advances, i.e. when the
//! client has taken a chunk: a slow client stops them.
//!
//! The answer's status and headers stay the first answer's. Anything that would make the body
//! differ from that object (a changed ETag, Content-Range or 412 on a ranged GET, a range that
//! keeps failing after the retries, a client idle past the timeout) ends the body with an error,
//! so hyper cuts the connection before the declared Content-Length: never a spliced file.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::body::{BodyError, ProxyBody};
use crate::state::App;

const MIB: u64 = 1024 * 1024;
/// The budget is counted in KiB so that a chunk's permits fit the semaphore's `u32`.
const BUDGET_UNIT: u64 = 1024;
/// A read-ahead chunk is handed on in blocks of this size, so the head can start sending a
/// chunk that is still arriving.
const BLOCK: usize = 256 * 1024;
/// Frames queued between the download's task and hyper.
const CLIENT_QUEUE: usize = 4;
/// How long a ranged GET may take to answer, and its body between two frames, before the
/// attempt counts as failed (and is retried).
const STORE_STALL: Duration = Duration::from_secs(30);
/// The client idle timeout used until the shared body idle timeout lands on this branch.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before the n-th retry of a range: 100 ms, 200 ms, 400 ms ... at most 2 s.
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Flags of the parallel download path (flattened into `serve`).
#[derive(Clone, Debug, Args)]
pub struct DownloadArgs {
    /// Size of each ranged GET of a large download.
    #[arg(long, env = "PROXY_DOWNLOAD_CHUNK_MIB", default_value_t = 8)]
    pub download_chunk_mib: u64,
    /// Ranged GETs of one download in flight at once (the chunk being sent included); 1 turns
    /// parallel downloads off. Memory per download: at most parallelism × chunk.
    #[arg(long, env = "PROXY_DOWNLOAD_PARALLELISM", default_value_t = 4)]
    pub download_parallelism: usize,
    /// Memory all downloads together may hold in chunks read ahead; when it is spent, downloads
    /// go on as one stream each until it frees up.
    #[arg(long, env = "PROXY_DOWNLOAD_BUDGET_MIB", default_value_t = 256)]
    pub download_budget_mib: u64,
    /// Answers up to this size are streamed from one GET, as small files are.
    #[arg(long, env = "PROXY_DOWNLOAD_THRESHOLD_MIB", default_value_t = 16)]
    pub download_threshold_mib: u64,
    /// Retries of a failed ranged GET before the client's connection is cut.
    #[arg(long, env = "PROXY_DOWNLOAD_RETRIES", default_value_t = 3)]
    pub download_retries: u32,
}

/// How large downloads are read from S3.
#[derive(Clone, Copy, Debug)]
pub struct DownloadConfig {
    pub chunk: u64,
    pub parallelism: usize,
    pub budget: u64,
    pub threshold: u64,
    pub retries: u32,
    /// A client that takes nothing for this long loses its download (and its budget share).
    pub idle_timeout: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            chunk: 8 * MIB,
            parallelism: 4,
            budget: 256 * MIB,
            threshold: 16 * MIB,
            retries: 3,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl DownloadArgs {
    pub fn build(&self) -> Result<DownloadConfig, String> {
        if !(1..=1024).contains(&self.download_chunk_mib) {
            return Err(format!(
                "PROXY_DOWNLOAD_CHUNK_MIB={} must be between 1 and 1024",
                self.download_chunk_mib
            ));
        }
        if !(1..=64).contains(&self.download_parallelism) {
            return Err(format!(
                "PROXY_DOWNLOAD_PARALLELISM={} must be between 1 and 64",
                self.download_parallelism
            ));
        }
        if self.download_parallelism > 1 && self.download_budget_mib < self.download_chunk_mib {
            return Err(format!(
                "PROXY_DOWNLOAD_BUDGET_MIB={} must hold at least one chunk ({} MiB)",
                self.download_budget_mib, self.download_chunk_mib
            ));
        }
        if self.download_retries > 10 {
            return Err(format!(
                "PROXY_DOWNLOAD_RETRIES={} is more than 10",
                self.download_retries
            ));
        }
        Ok(DownloadConfig {
            chunk: self.download_chunk_mib * MIB,
            parallelism: self.download_parallelism,
            budget: self.download_budget_mib * MIB,
            threshold: self.download_threshold_mib * MIB,
            retries: self.download_retries,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        })
    }
}

/// The metrics of this module, in the proxy's one registry.
#[derive(Clone)]
struct DownloadMetrics {
    parallel: IntCounter,
    retries: IntCounter,
    cuts: IntCounterVec,
    budget_in_use: IntGauge,
}

impl DownloadMetrics {
    fn register(registry: &Registry, capacity: u64) -> DownloadMetrics {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("mlflow_proxy");
        let parallel = IntCounter::with_opts(opts(
            "parallel_downloads_total",
            "Downloads read from S3 as several ranged GETs in flight (answers above PROXY_DOWNLOAD_THRESHOLD_MIB).",
        ))
        .expect("static metric definition");
        let retries = IntCounter::with_opts(opts(
            "download_range_retries_total",
            "Ranged GETs of parallel downloads retried after a failure (store error, reset, stall).",
        ))
        .expect("static metric definition");
        let cuts = IntCounterVec::new(
            opts(
                "download_cuts_total",
                "Parallel downloads ended by cutting the client's connection, by reason: changed = the object changed under the download, store = a range still failed after the retries, idle = the client took nothing for the idle timeout.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let budget_in_use = IntGauge::with_opts(opts(
            "download_budget_in_use_bytes",
            "Bytes of the download budget held by chunks read ahead.",
        ))
        .expect("static metric definition");
        let capacity_gauge = IntGauge::with_opts(opts(
            "download_budget_capacity_bytes",
            "The download budget (PROXY_DOWNLOAD_BUDGET_MIB), in bytes.",
        ))
        .expect("static metric definition");
        capacity_gauge.set(i64::try_from(capacity).unwrap_or(i64::MAX));
        for reason in Cut::REASONS {
            cuts.with_label_values(&[reason]);
        }
        for collector in [
            Box::new(parallel.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(retries.clone()),
            Box::new(cuts.clone()),
            Box::new(budget_in_use.clone()),
            Box::new(capacity_gauge),
        ] {
            // A second App on the same registry (tests) keeps the first registration.
            let _ = registry.register(collector);
        }
        DownloadMetrics {
            parallel,
            retries,
            cuts,
            budget_in_use,
        }
    }
}

/// The download budget and settings, shared by all downloads (one per `App`).
pub struct Downloads {
    config: DownloadConfig,
    budget: Arc<Semaphore>,
    metrics: DownloadMetrics,
}

impl Downloads {
    pub fn new(config: DownloadConfig, registry: &Registry) -> Downloads {
        let units = usize::try_from(config.budget / BUDGET_UNIT).unwrap_or(usize::MAX);
        Downloads {
            config,
            budget: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            metrics: DownloadMetrics::register(registry, config.budget),
        }
    }

    /// `bytes` of the budget if they are free now; never waits.
    fn try_reserve(&self, bytes: u64) -> Option<Reserved> {
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).ok()?;
        let permit = self.budget.clone().try_acquire_many_owned(units).ok()?;
        let bytes = i64::from(units) * BUDGET_UNIT as i64;
        self.metrics.budget_in_use.add(bytes);
        Some(Reserved {
            _permit: permit,
            bytes,
            gauge: self.metrics.budget_in_use.clone(),
        })
    }
}

/// Budget held by one chunk read ahead.
struct Reserved {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: IntGauge,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Why a download was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// The object changed (or went away) under the download.
    Changed,
    /// A range still failed after the retries.
    Store,
    /// The client took nothing for the idle timeout.
    Idle,
    /// The client went away (not counted: hyper already counts it).
    Gone,
}

impl Cut {
    const REASONS: [&str; 3] = ["changed", "store", "idle"];

    fn label(self) -> Option<&'static str> {
        match self {
            Cut::Changed => Some("changed"),
            Cut::Store => Some("store"),
            Cut::Idle => Some("idle"),
            Cut::Gone => None,
        }
    }
}

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
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let remaining = plan.len;
    let download = Download {
        app: app.clone(),
        key: key.to_owned(),
        plan,
        config,
    };
    tokio::spawn(download.run(first, tx));
    Response::from_parts(parts, Ordered { rx, remaining }.boxed())
}

/// The body hyper polls: frames in order from the download's task. Ending before the declared
/// length is an error, so the connection is cut rather than looking complete.
struct Ordered {
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    remaining: u64,
}

impl Body for Ordered {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.remaining = self.remaining.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.remaining = 0;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let missing = self.remaining;
                self.remaining = 0;
                Poll::Ready(Some(Err(cut_error(format!(
                    "download ended {missing} bytes short"
                )))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn cut_error(message: String) -> BodyError {
    BodyError(message.into())
}

/// One parallel download, run by its own task.
struct Download {
    app: Arc<App>,
    key: String,
    plan: Plan,
    config: DownloadConfig,
}

/// A chunk being read ahead by a task of its own, into its channel.
struct Ahead {
    rx: mpsc::Receiver<Result<Bytes, Cut>>,
    task: JoinHandle<()>,
    _budget: Reserved,
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Download {
    /// Byte range `[from, to)` of chunk `i`, as object offsets.
    fn chunk(&self, i: u64) -> (u64, u64) {
        let from = self.plan.start + i * self.config.chunk;
        let to = (from + self.config.chunk).min(self.plan.start + self.plan.len);
        (from, to)
    }

    async fn run(self, first: ProxyBody, tx: mpsc::Sender<Result<Bytes, BodyError>>) {
        let this = Arc::new(self);
        let outcome = this.clone().deliver(first, &tx).await;
        if let Err(cut) = outcome {
            if let Some(reason) = cut.label() {
                this.app
                    .downloads
                    .metrics
                    .cuts
                    .with_label_values(&[reason])
                    .inc();
                tracing::warn!(key = %this.key, reason, "download cut");
            }
            // The body ends in an error (hyper cuts the connection), after what is queued.
            let _ = tx.try_send(Err(cut_error(format!("download cut: {cut:?}"))));
        }
    }

    async fn deliver(
        self: Arc<Self>,
        first: ProxyBody,
        tx: &mpsc::Sender<Result<Bytes, BodyError>>,
    ) -> Result<(), Cut> {
        let chunks = self.plan.len.div_ceil(self.config.chunk);
        let mut ahead: VecDeque<(u64, Ahead)> = VecDeque::new();
        // The next chunk that no ranged GET has been started for.
        let mut next = 1;
        let mut first = Some(first);
        for head in 0..chunks {
            // Chunks head..head + parallelism in flight: start the missing ones, in order,
            // while the budget lasts.
            let horizon = (head + self.config.parallelism as u64).min(chunks);
            next = next.max(head + 1);
            while next < horizon {
                let (from, to) = self.chunk(next);
                let Some(budget) = self.app.downloads.try_reserve(to - from) else {
                    break;
                };
                let (chunk_tx, rx) = mpsc::channel((to - from) as usize / BLOCK + 2);
                let task = tokio::spawn(self.clone().read_ahead(from, to, chunk_tx));
                ahead.push_back((
                    next,
                    Ahead {
                        rx,
                        task,
                        _budget: budget,
                    },
                ));
                next += 1;
            }
            let (from, to) = self.chunk(head);
            match ahead.front() {
                Some((i, _)) if *i == head => {
                    let (_, mut chunk) = ahead.pop_front().expect("front exists");
                    let mut got = 0;
                    while let Some(block) = chunk.rx.recv().await {
                        let block = block?;
                        got += block.len() as u64;
                        self.send(tx, block).await?;
                    }
                    if got != to - from {
                        // The task ended without its bytes or an error: it was aborted.
                        return Err(Cut::Store);
                    }
                }
                _ => {
                    // Not read ahead: stream it straight through with the client's pace.
                    let body = if head == 0 { first.take() } else { None };
                    let mut reader = RangeReader::new(&self, from, to, body);
                    while let Some(frame) = reader.next().await? {
                        self.send(tx, frame).await?;
                    }
                }
            }
            if head == 0 {
                // The first GET served its chunk; the rest of it is not needed.
                drop(first.take());
            }
        }
        Ok(())
    }

    /// Hand one frame to hyper, waiting at most the idle timeout for the client to take it.
    async fn send(
        &self,
        tx: &mpsc::Sender<Result<Bytes, BodyError>>,
        data: Bytes,
    ) -> Result<(), Cut> {
        let permit = match tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(())) => return Err(Cut::Gone),
            Err(mpsc::error::TrySendError::Full(())) => {
                match tokio::time::timeout(self.config.idle_timeout, tx.reserve()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(Cut::Gone),
                    Err(_) => return Err(Cut::Idle),
                }
            }
        };
        permit.send(Ok(data));
        Ok(())
    }

    /// Read `[from, to)` into one buffer and pass it on in blocks as it fills.
    async fn read_ahead(self: Arc<Self>, from: u64, to: u64, tx: mpsc::Sender<Result<Bytes, Cut>>) {
        // One allocation per chunk: frames are copied in, so the memory held is the chunk's
        // size however the store cuts its frames.
        let mut buffer = BytesMut::with_capacity((to - from) as usize);
        let mut reader = RangeReader::new(&self, from, to, None);
        loop {
            match reader.next().await {
                Ok(Some(frame)) => {
                    buffer.extend_from_slice(&frame);
                    if buffer.len() >= BLOCK && tx.send(Ok(buffer.split().freeze())).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {
                    if !buffer.is_empty() {
                        let _ = tx.send(Ok(buffer.split().freeze())).await;
                    }
                    return;
                }
                Err(cut) => {
                    let _ = tx.send(Err(cut)).await;
                    return;
                }
            }
        }
    }

    /// One ranged GET of `[from, to)`, checked against the first answer.
    async fn open(&self, from: u64, to: u64) -> Result<ProxyBody, Attempt> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::RANGE,
            crate::s3::header_value(&format!("bytes={from}-{}", to - 1)),
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
        Ok(crate::body::boxed(response.into_body()))
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
struct RangeReader<'a> {
    download: &'a Download,
    next: u64,
    to: u64,
    body: Option<ProxyBody>,
    retries_left: u32,
    retried: u32,
}

impl<'a> RangeReader<'a> {
    fn new(download: &'a Download, from: u64, to: u64, body: Option<ProxyBody>) -> RangeReader<'a> {
        RangeReader {
            download,
            next: from,
            to,
            body,
            retries_left: download.config.retries,
            retried: 0,
        }
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
    fn content_ranges() {
        let parse = |s: &'static str| content_range(&HeaderValue::from_static(s));
        assert_eq!(parse("bytes 0-9/10"), Some((0, 9, 10)));
        assert_eq!(parse("bytes 5-4/10"), None);
        assert_eq!(parse("bytes 0-10/10"), None);
        assert_eq!(parse("bytes */10"), None);
        assert_eq!(parse("items 0-9/10"), None);
    }
}
