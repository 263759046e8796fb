//! What every handler shares: the store, the upstream, the upload budget, the metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::artifacts::ranged::{DownloadConfig, Downloads};
use crate::auth::Auth;
use crate::config::UploadConfig;
use crate::metrics::Metrics;
use crate::s3::Store;
use crate::security::Security;
use crate::transfers::{TransferConfig, Transfers};
use crate::upstream::Upstream;

/// The budget is counted in KiB so that one part's permits fit the semaphore's `u32`.
const BUDGET_UNIT: u64 = 1024;

pub struct App {
    pub store: Store,
    pub upstream: Upstream,
    pub upload: UploadConfig,
    pub security: Security,
    pub metrics: Metrics,
    /// MLflow's authentication and permissions on the artifact routes.
    pub auth: Arc<Auth>,
    /// The download budget and settings of large (parallel) downloads.
    pub downloads: Downloads,
    /// Client-driven multipart uploads and presigned downloads (see `App::with_transfers`).
    pub transfers: Transfers,
    budget: Arc<Semaphore>,
    /// Multipart uploads in progress (upload id → key), aborted if shutdown cuts them off.
    active_uploads: Mutex<HashMap<String, String>>,
}

/// Bytes of the upload budget, held while a part sits in memory.
pub struct BudgetPermit {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Metrics,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.metrics
            .upload_budget_in_use
            .sub(i64::try_from(self.bytes).unwrap_or(i64::MAX));
    }
}

impl App {
    pub fn new(
        store: Store,
        upstream: Upstream,
        upload: UploadConfig,
        security: Security,
        metrics: Metrics,
        auth: Arc<Auth>,
        download: DownloadConfig,
    ) -> Self {
        let units = usize::try_from(upload.budget / BUDGET_UNIT).unwrap_or(usize::MAX);
        metrics
            .upload_budget_capacity
            .set(i64::try_from(upload.budget).unwrap_or(i64::MAX));
        App {
            store,
            upstream,
            upload,
            security,
            downloads: Downloads::new(download, &metrics.registry),
            metrics,
            auth,
            transfers: Transfers::disabled(),
            budget: Arc::new(Semaphore::new(units)),
            active_uploads: Mutex::new(HashMap::new()),
        }
    }

    /// Offer the client-driven transfers, their counters in the proxy's registry.
    #[must_use]
    pub fn with_transfers(mut self, config: TransferConfig) -> Self {
        self.transfers = Transfers::new(config, Some(&self.metrics.registry));
        self
    }

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
                Err(e) => tracing::error!(key, "could not abort upload {upload_id}: {e}"),
            }
        }
    }
}
