//! Settings of the client-driven transfers (MLflow's multipart upload and presigned download
//! through the proxy): whether they are offered, how long their URLs live, the signing key, the
//! public address, and the sweep of abandoned uploads.

use std::time::Duration;

use clap::Args;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::artifacts::state::public_url::{PublicUrl, PublicUrlArgs};
use crate::signing::{Signer, SigningArgs};

/// S3 limits a part to 5 GiB.
const S3_MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

#[derive(Clone, Debug, Args)]
pub struct TransferArgs {
    /// Offer MLflow's multipart upload (server-info says so; part URLs point at this proxy).
    /// false: mpu/* answer 501 and clients send one PUT, as before.
    #[arg(long, env = "PROXY_MULTIPART_UPLOADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub multipart_uploads: bool,
    /// Offer MLflow's presigned (parallel, ranged) download through this proxy. false:
    /// presigned/ answers 501 and clients send one GET per file.
    #[arg(long, env = "PROXY_MULTIPART_DOWNLOADS", default_value_t = true, action = clap::ArgAction::Set)]
    pub multipart_downloads: bool,
    /// How long a part-upload URL may be used (boto's default for S3 presigned URLs).
    #[arg(long, env = "PROXY_MPU_URL_TTL_SECS", default_value_t = 3600)]
    pub mpu_url_ttl_secs: u64,
    /// How long a download URL may be used; MLflow's own variable and default.
    #[arg(
        long,
        env = "MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS",
        default_value_t = 300
    )]
    pub presigned_download_url_ttl_seconds: u64,
    /// Largest part accepted (its Content-Length), in MiB; S3 allows 5120.
    #[arg(long, env = "PROXY_MPU_MAX_PART_MIB", default_value_t = 5120)]
    pub mpu_max_part_mib: u64,
    #[command(flatten)]
    pub signing: SigningArgs,
    #[command(flatten)]
    pub public_url: PublicUrlArgs,
}

#[derive(Clone, Debug)]
pub struct TransferConfig {
    pub uploads: bool,
    pub downloads: bool,
    pub part_url_ttl: Duration,
    pub object_url_ttl: Duration,
    pub max_part: u64,
    pub signer: Signer,
    pub public_url: PublicUrl,
}

impl TransferArgs {
    pub fn build(
        &self,
        trusted: &crate::upstream::forwarding::TrustedProxies,
    ) -> Result<TransferConfig, String> {
        let max_part = self.mpu_max_part_mib.saturating_mul(1024 * 1024);
        if max_part == 0 || max_part > S3_MAX_PART {
            return Err(format!(
                "PROXY_MPU_MAX_PART_MIB={} must be between 1 and 5120 (S3's part limit)",
                self.mpu_max_part_mib
            ));
        }
        for (name, value) in [
            ("PROXY_MPU_URL_TTL_SECS", self.mpu_url_ttl_secs),
            (
                "MLFLOW_PRESIGNED_DOWNLOAD_URL_TTL_SECONDS",
                self.presigned_download_url_ttl_seconds,
            ),
        ] {
            // MLflow's own bound for presigned URLs (cloud providers cap them at 7 days).
            if !(1..=604_800).contains(&value) {
                return Err(format!("{name}={value} must be between 1 and 604800"));
            }
        }
        let signer = self.signing.build()?;
        if signer.generated && (self.multipart_uploads || self.multipart_downloads) {
            tracing::warn!(
                "PROXY_SIGNING_KEY is not set: upload and download URLs are signed with a key \
                 made up for this process. That is fine for ONE proxy instance only: another \
                 replica, or this one after a restart, refuses them (403). Give every replica \
                 the same PROXY_SIGNING_KEY (or PROXY_SIGNING_KEY_FILE)."
            );
        }
        Ok(TransferConfig {
            uploads: self.multipart_uploads,
            downloads: self.multipart_downloads,
            part_url_ttl: Duration::from_secs(self.mpu_url_ttl_secs),
            object_url_ttl: Duration::from_secs(self.presigned_download_url_ttl_seconds),
            max_part,
            signer,
            public_url: self.public_url.build(trusted.clone())?,
        })
    }
}

impl TransferConfig {
    /// Both transfers on, a fixed key, URLs from the request's Host (tests, benches).
    pub fn with_key(key: &[u8]) -> TransferConfig {
        TransferConfig {
            uploads: true,
            downloads: true,
            part_url_ttl: Duration::from_secs(3600),
            object_url_ttl: Duration::from_secs(300),
            max_part: S3_MAX_PART,
            signer: Signer::with_key(key),
            public_url: PublicUrl::default(),
        }
    }
}

/// The transfers' settings and counters, as the handlers share them.
pub struct Transfers {
    pub config: TransferConfig,
    /// Client-driven multipart uploads, by event (created, completed, aborted, swept).
    pub uploads_total: IntCounterVec,
    /// Signed URLs refused, by reason (malformed, signature, expired, grant).
    pub refused_total: IntCounterVec,
}

impl Transfers {
    /// Counters registered in `registry` (the proxy's one registry).
    pub fn new(config: TransferConfig, registry: Option<&Registry>) -> Transfers {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("mlflow_proxy");
        let uploads_total = IntCounterVec::new(
            opts(
                "client_multipart_uploads_total",
                "Multipart uploads driven by clients through mpu/* and signed part URLs, by event (created, completed, aborted, swept).",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let refused_total = IntCounterVec::new(
            opts(
                "signed_url_refusals_total",
                "Requests on signed part/object URLs refused with 403, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        for event in ["created", "completed", "aborted", "swept"] {
            uploads_total.with_label_values(&[event]);
        }
        for reason in ["malformed", "signature", "expired", "grant"] {
            refused_total.with_label_values(&[reason]);
        }
        if let Some(registry) = registry {
            for collector in [uploads_total.clone(), refused_total.clone()] {
                registry
                    .register(Box::new(collector))
                    .expect("metric names are unique");
            }
        }
        Transfers {
            config,
            uploads_total,
            refused_total,
        }
    }

    /// Off, unregistered: what an `App` has until `App::with_transfers`.
    pub fn disabled() -> Transfers {
        let mut config = TransferConfig::with_key(&[0; 32]);
        config.uploads = false;
        config.downloads = false;
        Transfers::new(config, None)
    }
}

impl Transfers {
    /// What server-info tells clients: (multipart uploads, multipart downloads).
    pub fn capabilities(&self) -> (bool, bool) {
        (self.config.uploads, self.config.downloads)
    }
}
