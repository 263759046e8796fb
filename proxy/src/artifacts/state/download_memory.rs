//! The settings and the memory budget of large (parallel) downloads: what `config` parses and
//! `state` holds, apart from the handler that uses them (`artifacts::download::ranged`).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const MIB: u64 = 1024 * 1024;
/// The budget is counted in KiB so that a chunk's permits fit the semaphore's `u32`.
const BUDGET_UNIT: u64 = 1024;
/// The client idle timeout used until the shared body idle timeout lands on this branch.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a download waits for its turn before it is refused (503).
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Flags of the parallel download path (flattened into `serve`).
#[derive(Clone, Debug, Args)]
pub struct DownloadArgs {
    /// Size of each ranged GET of a large download.
    #[arg(long, env = "PROXY_DOWNLOAD_CHUNK_MIB", default_value_t = 8)]
    pub download_chunk_mib: u64,
    /// Ranged GETs of one download in flight at once (the chunk being sent included); 1 turns
    /// parallel downloads off. Memory per download: at most parallelism × chunk.
    #[arg(long, env = "PROXY_DOWNLOAD_PARALLELISM", default_value_t = 8)]
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
    /// Downloads (GET of an object) in progress at once. Each holds an S3 connection and up to
    /// ~1 MiB of buffers outside the download budget while its client reads slowly or not at all,
    /// so this bounds that memory (about 1 MiB × this). Beyond it a download waits up to 10 s for
    /// its turn, then gets 503 (clients retry).
    #[arg(long, env = "PROXY_MAX_DOWNLOADS", default_value_t = 128)]
    pub max_downloads: usize,
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
    /// Downloads in progress at once (see `DownloadArgs::max_downloads`).
    pub max_downloads: usize,
    /// How long a download waits for its turn when `max_downloads` are in progress.
    pub queue_wait: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            chunk: 8 * MIB,
            parallelism: 8,
            budget: 256 * MIB,
            threshold: 16 * MIB,
            retries: 3,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_downloads: 128,
            queue_wait: DEFAULT_QUEUE_WAIT,
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
        if self.max_downloads == 0 {
            return Err("PROXY_MAX_DOWNLOADS must be at least 1".to_owned());
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
            max_downloads: self.max_downloads,
            queue_wait: DEFAULT_QUEUE_WAIT,
        })
    }
}

/// The metrics of this module, in the proxy's one registry.
#[derive(Clone)]
pub(crate) struct DownloadMetrics {
    pub(crate) parallel: IntCounter,
    pub(crate) retries: IntCounter,
    pub(crate) cuts: IntCounterVec,
    pub(crate) budget_in_use: IntGauge,
    pub(crate) in_progress: IntGauge,
    pub(crate) refused: IntCounter,
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
        let in_progress = IntGauge::with_opts(opts(
            "downloads_in_progress",
            "Object downloads holding a turn (at most PROXY_MAX_DOWNLOADS): each holds an S3 connection until its client has read the answer.",
        ))
        .expect("static metric definition");
        let refused = IntCounter::with_opts(opts(
            "downloads_refused_total",
            "Downloads refused (503) after waiting for a turn while PROXY_MAX_DOWNLOADS were in progress.",
        ))
        .expect("static metric definition");
        for reason in Cut::REASONS {
            cuts.with_label_values(&[reason]);
        }
        for collector in [
            Box::new(parallel.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(retries.clone()),
            Box::new(cuts.clone()),
            Box::new(budget_in_use.clone()),
            Box::new(capacity_gauge),
            Box::new(in_progress.clone()),
            Box::new(refused.clone()),
        ] {
            // A second App on the same registry (tests) keeps the first registration.
            let _ = registry.register(collector);
        }
        DownloadMetrics {
            parallel,
            retries,
            cuts,
            budget_in_use,
            in_progress,
            refused,
        }
    }
}

/// The download budget and settings, shared by all downloads (one per `App`).
pub struct Downloads {
    pub(crate) config: DownloadConfig,
    budget: Arc<Semaphore>,
    /// Turns of downloads in progress (`max_downloads`).
    turns: Arc<Semaphore>,
    pub(crate) metrics: DownloadMetrics,
}

impl Downloads {
    pub fn new(config: DownloadConfig, registry: &Registry) -> Downloads {
        let units = usize::try_from(config.budget / BUDGET_UNIT).unwrap_or(usize::MAX);
        Downloads {
            config,
            budget: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            turns: Arc::new(Semaphore::new(
                config.max_downloads.clamp(1, Semaphore::MAX_PERMITS),
            )),
            metrics: DownloadMetrics::register(registry, config.budget),
        }
    }

    /// `bytes` of the budget if they are free now; never waits.
    pub(crate) fn try_reserve(&self, bytes: u64) -> Option<Reserved> {
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

impl Downloads {
    /// A turn for one download, held until its answer's body is dropped; None when none came
    /// free within `queue_wait` (the caller answers 503).
    pub(crate) async fn turn(&self) -> Option<Turn> {
        let permit =
            tokio::time::timeout(self.config.queue_wait, self.turns.clone().acquire_owned())
                .await
                .ok()?
                .ok()?;
        self.metrics.in_progress.inc();
        Some(Turn {
            _permit: permit,
            gauge: self.metrics.in_progress.clone(),
        })
    }
}

/// One download's turn (see `Downloads::turn`).
pub(crate) struct Turn {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Budget held by one chunk read ahead.
pub(crate) struct Reserved {
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
pub(crate) enum Cut {
    /// The object changed (or went away) under the download.
    Changed,
    /// A range still failed after the retries.
    Store,
    /// The client took nothing for the idle timeout.
    Idle,
}

impl Cut {
    pub(crate) const REASONS: [&str; 3] = ["changed", "store", "idle"];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Cut::Changed => "changed",
            Cut::Store => "store",
            Cut::Idle => "idle",
        }
    }
}
