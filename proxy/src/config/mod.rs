//! Configuration: flags, each backed by the environment variable that MLflow and the AWS tools
//! already use, parsed and checked once at start-up; `reference` renders docs/configuration.md.

pub mod reference;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::artifacts::state::upload_memory::UploadConfig;
pub use crate::store::StoreConfig;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "mlflow-artifact-proxy",
    version,
    about = "Streams MLflow's artifact routes straight between clients and S3; passes everything else to MLflow.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `serve` options, accepted without the subcommand name.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve on --listen (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Wait for the S3 endpoint, create the destination bucket if it is missing (private), exit.
    EnsureBucket(EnsureBucketArgs),
    /// Exit 0 when the given URL answers 200 (for container healthchecks without curl).
    Healthcheck(HealthcheckArgs),
    /// Abort multipart uploads older than --older-than-hours under the destination, once (for a
    /// cron job; the serving proxy also sweeps by itself). Safe to run anywhere, any time.
    SweepUploads(SweepUploadsArgs),
    /// Find the artifacts of runs, logged models and traces MLflow no longer has (asking it as
    /// an admin) and, with --delete, delete those older than --older-than. A dry run by default.
    Gc(Box<GcArgs>),
    /// Re-read the objects under the destination (or --prefix) and compare each with the digest
    /// kept with it; --backfill records one for those without. Exit 0 clean, 1 a mismatch, 2
    /// errors (docs/integrity.md).
    Verify(Box<VerifyArgs>),
    /// Print the reference of every setting (docs/configuration.md) as Markdown.
    #[command(hide = true)]
    ConfigReference,
}

/// `verify` (see the `verify` module and docs/integrity.md).
#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only the objects under this path of the destination (`12/`, `12/abc/artifacts/model`).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Record a digest (PROXY_INTEGRITY's algorithm) for each object that has none. Without it,
    /// verify only reads.
    #[arg(long)]
    pub backfill: bool,
    /// Objects read at the same time.
    #[arg(long, env = "PROXY_VERIFY_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds between progress lines (0: none; a summary line ends every run).
    #[arg(long, env = "PROXY_VERIFY_PROGRESS_SECS", default_value_t = 30)]
    pub progress_secs: u64,
    /// How long S3 may take to answer one call, or to send the next piece of an object.
    #[arg(long, env = "PROXY_S3_TIMEOUT_SECS", default_value_t = 60)]
    pub s3_timeout_secs: u64,
    #[command(flatten)]
    pub integrity: crate::integrity::IntegrityArgs,
}

#[derive(Clone, Debug, Args)]
pub struct SweepUploadsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Age above which an open upload counts as abandoned.
    #[arg(long, env = "PROXY_MPU_STALE_HOURS", default_value_t = 24)]
    pub older_than_hours: u64,
}

/// `gc` (see the `gc` module and docs/gc.md).
#[derive(Clone, Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// MLflow, asked whether each run, logged model and trace still exists: the proxy's URL (or
    /// MLflow's own).
    #[arg(long, env = "MLFLOW_TRACKING_URI")]
    pub tracking_uri: Option<String>,
    /// An MLflow admin's user name, when MLflow runs its basic-auth app (with --password).
    #[arg(long, env = "MLFLOW_TRACKING_USERNAME")]
    pub username: Option<String>,
    /// The admin's password.
    #[arg(long, env = "MLFLOW_TRACKING_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A bearer token instead of a user name and password.
    #[arg(long, env = "MLFLOW_TRACKING_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Delete the orphaned folders last written more than --older-than ago, each re-checked with
    /// MLflow just before. Without it, gc only reports (a dry run).
    #[arg(long, conflicts_with = "dry_run")]
    pub delete: bool,
    /// Only report what --delete would delete (the default).
    #[arg(long)]
    pub dry_run: bool,
    /// Orphaned folders written to more recently than this are kept: 7d, 12h, 30m, 1d12h, ...;
    /// 0 keeps none back.
    #[arg(long, env = "PROXY_GC_OLDER_THAN", default_value = "7d")]
    pub older_than: String,
    /// Folders checked (MLflow asked, S3 listed or deleted) at the same time.
    #[arg(long, env = "PROXY_GC_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Only this folder of the destination, an experiment's location (`12`, or a custom one such
    /// as `team-a/exp`); repeatable. Default: every experiment folder `<id>/` at its root.
    #[arg(long = "under", value_name = "PATH")]
    pub under: Vec<String>,
    /// Checkpoint file: a run that stops half way starts again after the last folder it finished.
    #[arg(long, env = "PROXY_GC_RESUME_FILE", value_parser = optional_path)]
    pub resume_file: Option<PathBuf>,
    /// Write the run's figures there as Prometheus text (node_exporter's textfile collector).
    #[arg(long, env = "PROXY_GC_METRICS_FILE", value_parser = optional_path)]
    pub metrics_file: Option<PathBuf>,
    /// Seconds between progress lines on long runs (0: none).
    #[arg(long, env = "PROXY_GC_PROGRESS_SECS", default_value_t = 30)]
    pub progress_secs: u64,
    /// How long S3 may take to answer one call.
    #[arg(long, env = "PROXY_S3_TIMEOUT_SECS", default_value_t = 60)]
    pub s3_timeout_secs: u64,
    /// How long MLflow may take to answer one call.
    #[arg(long, env = "PROXY_GC_MLFLOW_TIMEOUT_SECS", default_value_t = 60)]
    pub mlflow_timeout_secs: u64,
    /// Test hook: before each re-check, print a line and wait for one on stdin.
    #[arg(long, hide = true)]
    pub pause_before_delete: bool,
}

#[derive(Clone, Debug, Args)]
pub struct StoreArgs {
    /// Where MLflow keeps artifacts: s3://bucket[/prefix] (the same value MLflow gets).
    #[arg(long, env = "MLFLOW_ARTIFACTS_DESTINATION")]
    pub artifacts_destination: Option<String>,
    /// The S3 endpoint (MinIO, Garage, SeaweedFS, AWS, ...), http:// or https://, path-style
    /// addressing.
    #[arg(long, env = "MLFLOW_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// Access key for the S3 endpoint.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,
    /// Secret key for the S3 endpoint.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,
    /// Region used in request signatures.
    #[arg(long, env = "AWS_DEFAULT_REGION", default_value = "us-east-1")]
    pub region: String,
    /// PEM file of the certificate authorities an https:// endpoint may be signed by (a store
    /// behind a private CA), besides Mozilla's roots; boto3's variable, so MLflow reads the same.
    /// Unset: Mozilla's roots and the system's store (SSL_CERT_FILE, SSL_CERT_DIR, else the
    /// distribution's).
    #[arg(long, env = "AWS_CA_BUNDLE", value_parser = optional_path)]
    pub ca_bundle: Option<std::path::PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct ServeArgs {
    /// Address for clients (MLflow's public port).
    #[arg(long, env = "PROXY_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,
    /// The MLflow server that answers everything but the artifact routes.
    #[arg(long, env = "PROXY_UPSTREAM", default_value = "http://127.0.0.1:5001")]
    pub upstream: String,
    /// MLflow's `--static-prefix` (MLflow reads the same variable), e.g. `/mlflow`: the proxy
    /// answers its routes under it only, and asks MLflow under it. Empty: no prefix.
    #[arg(long, env = "MLFLOW_STATIC_PREFIX", default_value = "")]
    pub static_prefix: String,
    /// Operations listener: /metrics, /healthz, /readyz. Loopback by default, so that a proxy run
    /// by hand exposes nothing but its client port; the image, compose and the chart set
    /// 0.0.0.0:9464, where Prometheus and the kubelet reach it across the container network. A
    /// second proxy on one machine needs its own port.
    #[arg(long, env = "PROXY_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub security: crate::artifacts::security::SecurityArgs,
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    #[command(flatten)]
    pub mlflow: crate::upstream::capabilities::CapabilitiesArgs,
    #[command(flatten)]
    pub timeouts: crate::wire::timeouts::TimeoutArgs,
    #[command(flatten)]
    pub forwarding: crate::upstream::forwarding::ForwardingArgs,
    #[command(flatten)]
    pub download: crate::artifacts::state::download_memory::DownloadArgs,
    #[command(flatten)]
    pub transfers: crate::artifacts::state::transfers::TransferArgs,
    #[command(flatten)]
    pub upstream_pool: crate::upstream::pool::PoolArgs,
    #[command(flatten)]
    pub integrity: crate::integrity::IntegrityArgs,
    /// Uploads with a Content-Length up to this size go to S3 as one streamed PutObject (no
    /// memory held, no completion step); larger and chunked uploads use multipart upload.
    #[arg(long, env = "PROXY_SINGLE_PUT_MAX_MIB", default_value_t = 1024)]
    pub single_put_max_mib: u64,
    /// Size of each multipart part (5..=1024). Grows for a declared length that would need
    /// more than 10,000 parts.
    #[arg(long, env = "PROXY_PART_SIZE_MIB", default_value_t = 8)]
    pub part_size_mib: u64,
    /// Parts of one upload sent to S3 at the same time.
    #[arg(long, env = "PROXY_PARTS_IN_FLIGHT", default_value_t = 4)]
    pub parts_in_flight: usize,
    /// Memory all uploads together may hold in parts; when it is spent, the proxy stops reading
    /// clients' sockets until parts are stored.
    #[arg(long, env = "PROXY_UPLOAD_BUDGET_MIB", default_value_t = 64)]
    pub upload_budget_mib: u64,
    /// A request body (any route: uploads, part PUTs, `mpu/*` JSON, pass-through) whose client
    /// sends nothing for this long ends with 408, and an answer nobody reads for this long is cut;
    /// an upload so ended is aborted and nothing is stored.
    #[arg(long, env = "PROXY_BODY_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub body_idle_timeout_secs: u64,
    /// Multipart uploads under the destination prefix older than this are aborted by a periodic
    /// sweep (parts left behind by a crash or an S3 outage at abort time); 0 turns it off.
    #[arg(long, env = "PROXY_STALE_UPLOAD_AGE_HOURS", default_value_t = 24)]
    pub stale_upload_age_hours: u64,
    /// On SIGTERM/SIGINT the proxy stops accepting and lets transfers in flight finish for this
    /// long, then cuts the rest (an upload cut off is aborted: nothing is stored).
    #[arg(long, env = "PROXY_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Access-log and diagnostics format; the level comes from RUST_LOG.
    #[arg(long, env = "PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, Args)]
pub struct EnsureBucketArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// How long to wait for the S3 endpoint to answer.
    #[arg(long, env = "PROXY_S3_WAIT_SECS", default_value_t = 60)]
    pub wait_secs: u64,
}

#[derive(Clone, Debug, Args)]
pub struct HealthcheckArgs {
    /// The URL to ask (the operations listener's /healthz).
    #[arg(long, default_value = "http://127.0.0.1:9464/healthz")]
    pub url: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub upstream: http::Uri,
    /// MLflow's `--static-prefix` ("" for none): every MLflow route starts with it.
    pub static_prefix: String,
    pub store: StoreConfig,
    pub upload: UploadConfig,
    pub download: crate::artifacts::state::download_memory::DownloadConfig,
    pub security: crate::artifacts::security::Security,
    pub auth: crate::auth::AuthConfig,
    /// How the proxy learns MLflow's version and modes.
    pub mlflow: crate::upstream::capabilities::CapabilitiesConfig,
    pub transfers: crate::artifacts::state::transfers::TransferConfig,
    pub integrity: crate::integrity::IntegrityConfig,
    pub shutdown_grace: Duration,
    pub timeouts: crate::wire::timeouts::Timeouts,
    pub trusted_proxies: crate::upstream::forwarding::TrustedProxies,
    /// How long connections to MLflow are kept.
    pub upstream_pool: crate::upstream::pool::PoolConfig,
}

impl StoreArgs {
    pub fn build(&self) -> Result<StoreConfig, String> {
        let destination = self.artifacts_destination.as_deref().ok_or(
            "--artifacts-destination (MLFLOW_ARTIFACTS_DESTINATION) is required, e.g. s3://default/",
        )?;
        let (bucket, prefix) = parse_destination(destination)?;
        let endpoint = self.s3_endpoint_url.as_deref().ok_or(
            "--s3-endpoint-url (MLFLOW_S3_ENDPOINT_URL) is required, e.g. http://minio:9000",
        )?;
        let endpoint = url::Url::parse(endpoint)
            .map_err(|e| format!("MLFLOW_S3_ENDPOINT_URL={endpoint:?} is not a URL: {e}"))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none() {
            return Err(format!(
                "MLFLOW_S3_ENDPOINT_URL={endpoint} must be an http:// or https:// URL"
            ));
        }
        let access_key = self
            .aws_access_key_id
            .clone()
            .ok_or("AWS_ACCESS_KEY_ID (--aws-access-key-id) is required")?;
        let secret_key = self
            .aws_secret_access_key
            .clone()
            .ok_or("AWS_SECRET_ACCESS_KEY (--aws-secret-access-key) is required")?;
        Ok(StoreConfig {
            endpoint,
            bucket,
            prefix,
            access_key,
            secret_key,
            region: self.region.clone(),
            // An empty value (compose passes one when nothing is set) means none.
            ca_bundle: self.ca_bundle.clone().filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

/// `s3://bucket[/prefix]` → (bucket, prefix without its leading `/`).
pub fn parse_destination(destination: &str) -> Result<(String, String), String> {
    let rest = destination.strip_prefix("s3://").ok_or_else(|| {
        format!("MLFLOW_ARTIFACTS_DESTINATION={destination:?} must be an s3://bucket[/prefix] URI")
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!(
            "MLFLOW_ARTIFACTS_DESTINATION={destination:?} names no bucket"
        ));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

impl ServeArgs {
    pub fn build(&self) -> Result<ServeConfig, String> {
        let upstream: http::Uri = self
            .upstream
            .parse()
            .map_err(|e| format!("PROXY_UPSTREAM={:?} is not a URL: {e}", self.upstream))?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(format!(
                "PROXY_UPSTREAM={upstream} must be an http://host:port URL"
            ));
        }
        if !(5..=1024).contains(&self.part_size_mib) {
            return Err(format!(
                "PROXY_PART_SIZE_MIB={} must be between 5 and 1024 (S3's part size limits)",
                self.part_size_mib
            ));
        }
        if self.single_put_max_mib > 5 * 1024 {
            return Err(format!(
                "PROXY_SINGLE_PUT_MAX_MIB={} is above S3's 5 GiB single-PUT limit",
                self.single_put_max_mib
            ));
        }
        if self.parts_in_flight == 0 {
            return Err("PROXY_PARTS_IN_FLIGHT must be at least 1".to_owned());
        }
        if self.body_idle_timeout_secs == 0 {
            return Err("PROXY_BODY_IDLE_TIMEOUT_SECS must be at least 1".to_owned());
        }
        // 6 MiB: S3's 5 MiB minimum part and the slack of a part being filled (state.rs).
        if self.upload_budget_mib < self.part_size_mib.max(6) {
            return Err(format!(
                "PROXY_UPLOAD_BUDGET_MIB={} must hold at least one part ({} MiB) and 6 MiB",
                self.upload_budget_mib, self.part_size_mib
            ));
        }
        let trusted_proxies = self.forwarding.build()?;
        Ok(ServeConfig {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            upstream,
            static_prefix: static_prefix(&self.static_prefix)?,
            store: self.store.build()?,
            security: self.security.build()?,
            auth: self.auth.build()?,
            mlflow: self.mlflow.build()?,
            transfers: self.transfers.build(&trusted_proxies)?,
            integrity: self.integrity.build(),
            upload: UploadConfig {
                single_put_max: self.single_put_max_mib * MIB,
                part_size: usize::try_from(self.part_size_mib * MIB).map_err(|e| e.to_string())?,
                parts_in_flight: self.parts_in_flight,
                budget: self.upload_budget_mib * MIB,
                body_idle_timeout: Duration::from_secs(self.body_idle_timeout_secs),
                stale_upload_age: (self.stale_upload_age_hours > 0)
                    .then(|| Duration::from_secs(self.stale_upload_age_hours * 3600)),
            },
            download: crate::artifacts::state::download_memory::DownloadConfig {
                // One idle limit for every transfer (PROXY_BODY_IDLE_TIMEOUT_SECS).
                idle_timeout: Duration::from_secs(self.body_idle_timeout_secs.max(1)),
                ..self.download.build()?
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            timeouts: self.timeouts.build()?,
            trusted_proxies,
            upstream_pool: self.upstream_pool.build()?,
        })
    }
}

/// MLflow's own rules for `--static-prefix` (`_validate_static_prefix`), so that a value MLflow
/// refuses is refused here too.
fn static_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Ok(String::new());
    }
    if !value.starts_with('/') {
        return Err(format!(
            "MLFLOW_STATIC_PREFIX={value:?} must begin with a '/'"
        ));
    }
    if value.ends_with('/') {
        return Err(format!(
            "MLFLOW_STATIC_PREFIX={value:?} should not end with a '/'"
        ));
    }
    if value.contains(['{', '}']) {
        return Err(format!(
            "MLFLOW_STATIC_PREFIX={value:?} must not contain '{{' or '}}'"
        ));
    }
    Ok(value.to_owned())
}

/// A path setting where empty means unset: compose passes `${AWS_CA_BUNDLE:-}` as an empty
/// variable, and clap's own path parser refuses an empty value (the proxy would not start).
fn optional_path(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_prefixes_as_mlflow_takes_them() {
        assert_eq!(static_prefix(""), Ok(String::new()));
        assert_eq!(static_prefix("/mlflow"), Ok("/mlflow".into()));
        assert_eq!(static_prefix("/a/b"), Ok("/a/b".into()));
        assert!(static_prefix("mlflow").is_err());
        assert!(static_prefix("/mlflow/").is_err());
        assert!(static_prefix("/").is_err());
        assert!(static_prefix("/{x}").is_err());
    }

    #[test]
    fn empty_path_settings_count_as_unset() {
        // What compose's `AWS_CA_BUNDLE: ${AWS_CA_BUNDLE:-}` hands the proxy.
        let cli = Cli::try_parse_from([
            "mlflow-artifact-proxy",
            "sweep-uploads",
            "--artifacts-destination=s3://b/",
            "--s3-endpoint-url=http://store:9000",
            "--aws-access-key-id=k",
            "--aws-secret-access-key=s",
            "--ca-bundle=",
        ])
        .expect("an empty CA bundle parses");
        let Some(Command::SweepUploads(sweep)) = cli.command else {
            panic!("sweep-uploads expected");
        };
        assert_eq!(sweep.store.build().unwrap().ca_bundle, None);
    }

    #[test]
    fn destinations() {
        assert_eq!(
            parse_destination("s3://default/"),
            Ok(("default".into(), String::new()))
        );
        assert_eq!(
            parse_destination("s3://default"),
            Ok(("default".into(), String::new()))
        );
        assert_eq!(
            parse_destination("s3://b/pre/fix"),
            Ok(("b".into(), "pre/fix".into()))
        );
        assert!(parse_destination("file:///x").is_err());
        assert!(parse_destination("s3:///x").is_err());
    }

    /// Without PROXY_METRICS_LISTEN the operations listener is on loopback only (issue 20).
    #[test]
    fn metrics_listen_defaults_to_loopback() {
        let command = ServeArgs::augment_args(clap::Command::new("serve"));
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "metrics_listen")
            .unwrap();
        assert_eq!(arg.get_default_values(), ["127.0.0.1:9464"]);
    }

    #[test]
    fn cli_help_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
