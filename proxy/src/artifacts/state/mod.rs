//! What every handler shares: the store, the upstream, the metrics, and the settings and memory
//! of each kind of transfer (downloads, uploads, signed transfers).

pub mod download_memory;
pub mod public_url;
pub mod transfers;
pub mod upload_memory;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::artifacts::locations::Locations;
use crate::artifacts::security::Security;
use crate::auth::Auth;
use crate::integrity::{Integrity, IntegrityConfig};
use crate::ops::metrics::Metrics;
use crate::store::s3::{Native, Store};
use crate::upstream::Upstream;
use crate::upstream::capabilities::Tracker;
use download_memory::{DownloadConfig, Downloads};
use transfers::{TransferConfig, Transfers};
use upload_memory::{
    BUDGET_UNIT, PART_SLOT_COST, PendingAbort, SMALL_BLOCK, TRICKLE_POOL, UploadConfig,
};

/// What the proxy asks MLflow: its auth decisions, and which version runs in which modes.
pub struct FromMlflow {
    pub auth: Arc<Auth>,
    pub capabilities: Arc<Tracker>,
}

pub struct App {
    pub store: Store,
    pub upstream: Upstream,
    pub upload: UploadConfig,
    pub security: Security,
    pub metrics: Metrics,
    /// MLflow's authentication and permissions on the artifact routes.
    pub auth: Arc<Auth>,
    /// Which MLflow runs behind the proxy, and in which modes.
    pub capabilities: Arc<Tracker>,
    /// The download budget and settings of large (parallel) downloads.
    pub downloads: Downloads,
    /// Client-driven multipart uploads and presigned downloads (see `App::with_transfers`).
    pub transfers: Transfers,
    /// Artifact digests: recorded on upload, checked on download (see `App::with_integrity`).
    pub integrity: Integrity,
    /// Where MLflow keeps what the UI's downloads name, as it tells each caller.
    pub locations: Locations,
    /// MLflow's `--static-prefix` ("" for none; see `App::with_static_prefix`).
    pub static_prefix: String,
    budget: Arc<Semaphore>,
    /// Parts being filled from a chunked body, at most budget / `PART_SLOT_COST`: each can reach
    /// S3's minimum part size within the budget, so waiting for budget never deadlocks.
    part_slots: Arc<Semaphore>,
    /// First blocks of parts without a slot (`SMALL_BLOCK`, `TRICKLE_POOL`).
    small_blocks: Arc<Semaphore>,
    /// Multipart uploads in progress (upload id → key), aborted if shutdown cuts them off.
    active_uploads: Mutex<HashMap<String, String>>,
    /// Aborts that failed (upload id → retry state), tried again by the sweeper.
    pending_aborts: Mutex<HashMap<String, PendingAbort>>,
}

impl App {
    pub fn new(
        store: Store,
        upstream: Upstream,
        upload: UploadConfig,
        security: Security,
        metrics: Metrics,
        from_mlflow: FromMlflow,
        download: DownloadConfig,
    ) -> Self {
        let FromMlflow { auth, capabilities } = from_mlflow;
        let units = usize::try_from(upload.budget / BUDGET_UNIT).unwrap_or(usize::MAX);
        metrics
            .upload_budget_capacity
            .set(i64::try_from(upload.budget).unwrap_or(i64::MAX));
        let (lookup_ttl, lookup_capacity) = auth.cache_policy();
        let registry = metrics.registry.clone();
        App {
            store,
            upstream,
            upload,
            security,
            downloads: Downloads::new(download, &metrics.registry),
            metrics,
            auth,
            capabilities,
            transfers: Transfers::disabled(),
            integrity: Integrity::new(IntegrityConfig::default(), Some(&registry)),
            locations: Locations::new(lookup_ttl, lookup_capacity),
            static_prefix: String::new(),
            budget: Arc::new(Semaphore::new(units)),
            part_slots: Arc::new(Semaphore::new(
                usize::try_from((upload.budget / PART_SLOT_COST).max(1)).unwrap_or(usize::MAX),
            )),
            small_blocks: Arc::new(Semaphore::new(TRICKLE_POOL / SMALL_BLOCK)),
            active_uploads: Mutex::new(HashMap::new()),
            pending_aborts: Mutex::new(HashMap::new()),
        }
    }

    /// Offer the client-driven transfers, their counters in the proxy's registry.
    #[must_use]
    pub fn with_transfers(mut self, config: TransferConfig) -> Self {
        self.transfers = Transfers::new(config, Some(&self.metrics.registry));
        self
    }

    /// Record and check artifact digests as `config` says.
    #[must_use]
    pub fn with_integrity(mut self, config: IntegrityConfig) -> Self {
        self.integrity.config = config;
        self
    }

    /// The S3 checksums uploads send for the store to verify: what the store verifies, or none
    /// with `PROXY_STORE_CHECKSUMS=off`.
    pub async fn store_checksums(&self) -> Native {
        if self.integrity.config.store_checksums {
            self.store.native().await
        } else {
            Native::default()
        }
    }

    /// Serve MLflow's routes under its `--static-prefix`.
    #[must_use]
    pub fn with_static_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.static_prefix);
        self
    }
}
