//! The upload memory: the budget every upload's parts are held in, the part slots and the trickle
//! pool of chunked bodies, the multipart uploads in progress and the aborts to try again.

use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;

use super::App;
use crate::ops::metrics::Metrics;

/// The budget is counted in KiB so that one part's permits fit the semaphore's `u32`.
pub(super) const BUDGET_UNIT: u64 = 1024;

/// S3's smallest part (all but the last). A part being filled can always be sent once it
/// holds this much, so the budget only has to guarantee this much to each part being filled.
pub const MIN_PART: u64 = 5 * 1024 * 1024;
/// What a part being filled may hold before it reaches `MIN_PART`: the part, plus the last
/// piece read, a copy block and one budget step of slack (upload.rs), rounded up to 6 MiB.
pub const PART_SLOT_COST: u64 = 6 * 1024 * 1024;

/// The first bytes of a part being filled from a chunked body are held in one block of this size
/// from the trickle pool, without a part slot: a chunked upload that trickles (a byte now and
/// then) does not sit on a slot that other uploads need until it has sent that much.
pub const SMALL_BLOCK: usize = 16 * 1024;
/// The trickle pool: memory beside the upload budget for those first blocks (256 of them).
pub const TRICKLE_POOL: usize = 4 * 1024 * 1024;

/// A failed abort is tried again after this, doubling up to `ABORT_RETRY_MAX`.
const ABORT_RETRY_FIRST: Duration = Duration::from_secs(1);
const ABORT_RETRY_MAX: Duration = Duration::from_secs(300);

/// How uploads are cut into parts.
#[derive(Clone, Copy, Debug)]
pub struct UploadConfig {
    pub single_put_max: u64,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub budget: u64,
    /// How long a transfer's client may send (or read) nothing before the transfer is ended.
    pub body_idle_timeout: Duration,
    /// Open multipart uploads older than this are swept (aborted); None: no sweep.
    pub stale_upload_age: Option<Duration>,
}

pub(super) struct PendingAbort {
    key: String,
    next: Instant,
    wait: Duration,
}

/// Bytes of the upload budget, held while a part sits in memory.
pub struct BudgetPermit {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Metrics,
}

impl BudgetPermit {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Take `other`'s share into this one.
    pub fn merge(&mut self, mut other: BudgetPermit) {
        self.bytes += std::mem::take(&mut other.bytes);
        let all = other._permit.num_permits();
        if let Some(taken) = other._permit.split(all) {
            self._permit.merge(taken);
        }
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.metrics
            .upload_budget_in_use
            .sub(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

impl App {
    /// Wait until `bytes` of the budget are free. While a handler waits here it does not read
    /// its client's socket, which is the backpressure.
    pub async fn reserve(&self, bytes: usize) -> BudgetPermit {
        // A part larger than the whole budget (huge declared uploads) takes all of it, not more:
        // asking for more than exists would wait forever.
        let bytes = (bytes as u64).min(self.upload.budget);
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget semaphore is never closed");
        self.granted(permit, units)
    }

    /// `bytes` of the budget if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<BudgetPermit> {
        let bytes = (bytes as u64).min(self.upload.budget);
        let units = u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX);
        let permit = self.budget.clone().try_acquire_many_owned(units).ok()?;
        Some(self.granted(permit, units))
    }

    fn granted(&self, permit: OwnedSemaphorePermit, units: u32) -> BudgetPermit {
        let bytes = u64::from(units) * BUDGET_UNIT;
        self.metrics
            .upload_budget_in_use
            .add(i64::try_from(bytes).unwrap_or(i64::MAX));
        BudgetPermit {
            _permit: permit,
            bytes,
            metrics: self.metrics.clone(),
        }
    }

    /// Wait for the right to fill one part from a chunked body (see `part_slots`).
    pub async fn part_slot(&self) -> OwnedSemaphorePermit {
        self.part_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the part slot semaphore is never closed")
    }

    /// One first block from the trickle pool, if one is free now (never waits).
    pub fn try_small_block(&self) -> Option<OwnedSemaphorePermit> {
        self.small_blocks.clone().try_acquire_owned().ok()
    }

    /// Whether this proxy is still writing the upload (the sweep leaves those alone).
    pub fn is_active_upload(&self, upload_id: &str) -> bool {
        self.active_uploads
            .lock()
            .map(|active| active.contains_key(upload_id))
            .unwrap_or(true)
    }

    /// Abort failed (S3 down?): keep it to be tried again until it succeeds.
    pub fn defer_abort(&self, upload_id: &str, key: &str) {
        if let Ok(mut pending) = self.pending_aborts.lock() {
            pending.insert(
                upload_id.to_owned(),
                PendingAbort {
                    key: key.to_owned(),
                    next: Instant::now() + ABORT_RETRY_FIRST,
                    wait: ABORT_RETRY_FIRST,
                },
            );
            self.metrics
                .multipart_aborts_pending
                .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        }
    }

    /// Try again the aborts that are due; those that fail again wait twice as long.
    pub async fn retry_aborts(&self) {
        let due: Vec<(String, String)> = match self.pending_aborts.lock() {
            Ok(pending) => {
                let now = Instant::now();
                pending
                    .iter()
                    .filter(|(_, p)| p.next <= now)
                    .map(|(id, p)| (id.clone(), p.key.clone()))
                    .collect()
            }
            Err(_) => return,
        };
        for (upload_id, key) in due {
            let result = self.store.abort_multipart(&key, &upload_id).await;
            let Ok(mut pending) = self.pending_aborts.lock() else {
                return;
            };
            match result {
                // 404: S3 no longer knows the upload, which is what we wanted.
                Err(e) if !e.is_not_found() => {
                    if let Some(p) = pending.get_mut(&upload_id) {
                        p.wait = (p.wait * 2).min(ABORT_RETRY_MAX);
                        p.next = Instant::now() + p.wait;
                        tracing::warn!(
                            key,
                            "abort of multipart upload {upload_id} failed again ({e}); next try in {} s",
                            p.wait.as_secs()
                        );
                    }
                }
                _ => {
                    pending.remove(&upload_id);
                    tracing::info!(key, "multipart upload {upload_id} aborted on retry");
                }
            }
            self.metrics
                .multipart_aborts_pending
                .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        }
    }

    pub fn track_upload(&self, upload_id: &str, key: &str) {
        if let Ok(mut active) = self.active_uploads.lock() {
            active.insert(upload_id.to_owned(), key.to_owned());
        }
    }

    pub fn untrack_upload(&self, upload_id: &str) {
        if let Ok(mut active) = self.active_uploads.lock() {
            active.remove(upload_id);
        }
    }

    /// Abort every multipart upload still open (shutdown grace period over).
    pub async fn abort_open_uploads(&self) {
        let open: Vec<(String, String)> = match self.active_uploads.lock() {
            Ok(mut active) => active.drain().collect(),
            Err(_) => return,
        };
        for (upload_id, key) in open {
            match self.store.abort_multipart(&key, &upload_id).await {
                Ok(()) => {
                    self.metrics
                        .multipart_uploads
                        .with_label_values(&["aborted"])
                        .inc();
                    tracing::warn!(key, "aborted an upload cut off by shutdown");
                }
                Err(e) => {
                    // The process is about to end: the sweep of the next start (or of another
                    // replica) removes it once it is older than PROXY_STALE_UPLOAD_AGE_HOURS.
                    tracing::error!(key, "could not abort upload {upload_id}: {e}")
                }
            }
        }
    }
}
