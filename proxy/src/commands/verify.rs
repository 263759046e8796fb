//! `mlflow-artifact-proxy verify [--prefix P] [--backfill]`: re-read every object under the
//! destination (or under P in it), hash its bytes as they stream, and compare with the digest
//! kept with it. Reports each mismatch by key, and counts ok / mismatch / no digest / errors;
//! `--backfill` records a digest for the objects without one. A listing page (1,000 keys) at a
//! time, `--concurrency` objects at once, each read frame by frame: bounded memory.
//!
//! Exit code (for cron): 0 every object checked matched (or had no digest), 1 at least one
//! mismatch, 2 no mismatch but some objects could not be checked (store errors).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;

use crate::config::VerifyArgs;
use crate::integrity::{Algorithm, Digest, Hasher};
use crate::store::s3::{Entry, Store, user_metadata};

/// A listing page: the objects checked before the next page is asked for.
const PAGE: usize = 1000;

/// Where report lines go (stdout for the command, a buffer in tests).
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// What one run found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub objects: u64,
    pub bytes: u64,
    pub ok: u64,
    pub mismatch: u64,
    pub no_digest: u64,
    pub backfilled: u64,
    pub errors: u64,
}

impl Summary {
    /// The process's exit code: 1 for a mismatch, 2 for errors only, 0 clean.
    pub fn exit_code(&self) -> u8 {
        if self.mismatch > 0 {
            1
        } else if self.errors > 0 {
            2
        } else {
            0
        }
    }

    fn line(&self) -> String {
        format!(
            "objects: {}, bytes: {}, ok: {}, mismatch: {}, no digest: {}, backfilled: {}, errors: {}",
            self.objects,
            self.bytes,
            self.ok,
            self.mismatch,
            self.no_digest,
            self.backfilled,
            self.errors
        )
    }
}

/// What became of one object.
enum Outcome {
    Ok(u64),
    Mismatch(u64),
    NoDigest,
    Backfilled(u64),
    /// Deleted since it was listed.
    Gone,
    Error(String),
}

/// Run `verify`; every finding goes to `out`, the figures are returned.
pub async fn run(args: &VerifyArgs, out: Sink) -> Result<Summary, String> {
    if args.concurrency == 0 {
        return Err("--concurrency (PROXY_VERIFY_CONCURRENCY) must be at least 1".into());
    }
    if args.s3_timeout_secs == 0 {
        return Err("--s3-timeout-secs must be at least 1".into());
    }
    let algorithm = args.integrity.build().algorithm;
    if args.backfill && algorithm.is_none() {
        return Err("--backfill needs an algorithm: PROXY_INTEGRITY is off".into());
    }
    let timeout = Duration::from_secs(args.s3_timeout_secs);
    let config = args.store.build()?;
    let store = Store::new(&config, crate::ops::metrics::Metrics::new(), timeout)?;
    let prefix = store.key(&args.prefix);
    let job = Job {
        store,
        preferred: algorithm.unwrap_or(Algorithm::Crc64Nvme),
        backfill: args.backfill.then_some(algorithm).flatten(),
        timeout,
    };
    let progress_every = (args.progress_secs > 0).then(|| Duration::from_secs(args.progress_secs));
    let mut last_progress = Instant::now();
    let mut summary = Summary::default();
    let mut after: Option<String> = None;
    loop {
        let page = job
            .store
            .list_page(&prefix, None, after.as_deref(), PAGE)
            .await
            .map_err(|e| format!("listing {prefix:?}: {e}"))?;
        after = page.next_start_after();
        let more = page.truncated && after.is_some();
        let objects = page.objects.into_iter().filter(|e| !e.key.ends_with('/'));
        let mut checks = futures_util::stream::iter(objects)
            .map(|entry| {
                let job = &job;
                async move {
                    let outcome = job.check(&entry).await;
                    (entry, outcome)
                }
            })
            .buffer_unordered(args.concurrency);
        while let Some((entry, outcome)) = checks.next().await {
            summary.objects += 1;
            match outcome {
                Outcome::Ok(bytes) => {
                    summary.ok += 1;
                    summary.bytes += bytes;
                }
                Outcome::Mismatch(bytes) => {
                    summary.mismatch += 1;
                    summary.bytes += bytes;
                    out(&format!("mismatch: {}", entry.key));
                }
                Outcome::NoDigest => summary.no_digest += 1,
                Outcome::Backfilled(bytes) => {
                    summary.backfilled += 1;
                    summary.bytes += bytes;
                    out(&format!("backfilled: {}", entry.key));
                }
                Outcome::Gone => summary.objects -= 1,
                Outcome::Error(e) => {
                    summary.errors += 1;
                    out(&format!("error: {}: {e}", entry.key));
                }
            }
            if progress_every.is_some_and(|every| last_progress.elapsed() >= every) {
                last_progress = Instant::now();
                out(&format!("progress: {}", summary.line()));
            }
        }
        if !more {
            break;
        }
    }
    out(&format!("verify: {}", summary.line()));
    Ok(summary)
}

struct Job {
    store: Store,
    /// The algorithm looked for first.
    preferred: Algorithm,
    /// With `--backfill`: the algorithm of new digests.
    backfill: Option<Algorithm>,
    timeout: Duration,
}

impl Job {
    async fn check(&self, entry: &Entry) -> Outcome {
        match self.read(entry).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Error(e),
        }
    }

    async fn read(&self, entry: &Entry) -> Result<Outcome, String> {
        let response = self
            .store
            .get_object(&entry.key, HeaderMap::new())
            .await
            .map_err(|e| e.to_string())?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(Outcome::Gone),
            status => return Err(format!("S3 answered {status}")),
        }
        let (parts, mut body) = response.into_parts();
        let metadata = user_metadata(&parts.headers);
        let expected = Digest::from_metadata(&metadata, self.preferred);
        let algorithm = match (expected, self.backfill) {
            (Some(expected), _) => expected.algorithm(),
            (None, Some(algorithm)) => algorithm,
            // Nothing to compare with and nothing to record: the bytes need not be read.
            (None, None) => return Ok(Outcome::NoDigest),
        };
        let declared: Option<u64> = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let mut hasher = Hasher::new(algorithm);
        let mut read: u64 = 0;
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| "S3 sent nothing within the time limit".to_owned())?;
            match frame {
                None => break,
                Some(Err(e)) => return Err(format!("reading the object: {e}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        read += data.len() as u64;
                        hasher.update(&data);
                    }
                }
            }
        }
        if declared.is_some_and(|len| len != read) {
            return Err(format!("read {read} bytes of {declared:?}"));
        }
        let computed = hasher.finish();
        let Some(expected) = expected else {
            return self
                .record(entry, &parts.headers, metadata, computed, read)
                .await;
        };
        Ok(if computed == expected {
            Outcome::Ok(read)
        } else {
            tracing::error!(
                key = entry.key,
                expected = %expected,
                computed = %computed,
                "integrity: the stored object does not match its digest"
            );
            Outcome::Mismatch(read)
        })
    }

    /// `--backfill`: keep `digest` with the object, its other metadata as it was, if it is still
    /// the version read.
    async fn record(
        &self,
        entry: &Entry,
        headers: &HeaderMap,
        mut metadata: HeaderMap,
        digest: Digest,
        read: u64,
    ) -> Result<Outcome, String> {
        let etag = headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .ok_or("the store gave no ETag")?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        let (name, value) = digest.metadata();
        metadata.insert(name, value);
        match self
            .store
            .replace_metadata(&entry.key, etag, content_type, metadata)
            .await
        {
            Ok(true) => Ok(Outcome::Backfilled(read)),
            // Replaced in between: its writer records its digest (or a later run does).
            Ok(false) => Ok(Outcome::NoDigest),
            Err(e) => Err(format!("recording the digest: {e}")),
        }
    }
}
