//! Integrity end to end: a digest of every artifact, computed while its bytes stream in, kept
//! with the object, sent with every whole download and checked while the download streams out.
//!
//! - `digest`: the algorithms (CRC64NVME, SHA-256), the streaming hasher, and where a digest is
//!   kept: user metadata `x-amz-meta-mlflow-proxy-<algorithm>`, which S3 listings never show.
//! - `check`: the download's verifying body; a mismatch ends the answer before its last byte.
//! - `parts`: the digests of the client's own multipart flow, sealed into its part ETags.
//! - `chunked`: bodies sent to the store with their S3 checksum as an aws-chunked trailer, so a
//!   store that verifies checksums (`s3::Native`) refuses a transfer corrupted on its way in.
//!
//! `mlflow-artifact-proxy verify` (the `verify` module) re-reads stored objects against them.
//!
//! The digest is written after the upload by a self-copy of the object with the new metadata,
//! conditional on the ETag the upload produced (`Store::replace_metadata`, called by the upload
//! handlers): both s3s-fs and Garage do that without copying the bytes, and an object replaced in
//! between is left alone.

mod check;
pub mod chunked;
mod digest;
pub mod parts;

use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use http_body_util::BodyExt;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::wire::body::ProxyBody;

pub use check::verified;
pub use chunked::with_trailer;
pub use digest::{Algorithm, Digest, Hasher};

/// What `PROXY_INTEGRITY` turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Setting {
    /// CRC-64/NVME (S3's default checksum): about 0.04 CPU-s per GiB.
    Crc64nvme,
    /// SHA-256, also sent as RFC 9530's `Repr-Digest`: about 0.5 CPU-s per GiB.
    Sha256,
    /// No digest computed, recorded or checked.
    Off,
}

/// Flags of the integrity checks (flattened into `serve`).
#[derive(Clone, Debug, Args)]
pub struct IntegrityArgs {
    /// The digest every upload records and every whole download is checked against
    /// (docs/integrity.md). `off` records and checks nothing.
    #[arg(long, env = "PROXY_INTEGRITY", value_enum, default_value_t = Setting::Crc64nvme)]
    pub integrity: Setting,
    /// `auto`: uploads also carry S3 checksums for the store to verify, where its answers say it
    /// does (a transfer corrupted on its way in is then refused, never stored), at the cost of the
    /// store's CPU (Garage: 30-50 % of upload speed on one machine, docs/integrity.md). `off`:
    /// none; the proxy's own digest still catches such a transfer, at its first download or
    /// `verify`.
    #[arg(long, env = "PROXY_STORE_CHECKSUMS", value_enum, default_value_t = StoreChecksums::Off)]
    pub store_checksums: StoreChecksums,
}

/// Whether the store is sent checksums to verify (`IntegrityArgs::store_checksums`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreChecksums {
    Auto,
    Off,
}

impl IntegrityArgs {
    pub fn build(&self) -> IntegrityConfig {
        IntegrityConfig {
            algorithm: match self.integrity {
                Setting::Crc64nvme => Some(Algorithm::Crc64Nvme),
                Setting::Sha256 => Some(Algorithm::Sha256),
                Setting::Off => None,
            },
            store_checksums: self.store_checksums == StoreChecksums::Auto,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntegrityConfig {
    /// The algorithm of new digests; None: integrity off.
    pub algorithm: Option<Algorithm>,
    /// Send the store the checksums it verifies (`store::s3::Native`); false: none.
    pub store_checksums: bool,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            algorithm: Some(Algorithm::Crc64Nvme),
            store_checksums: false,
        }
    }
}

/// The settings and the counters, held by `App`.
pub struct Integrity {
    pub config: IntegrityConfig,
    /// Whole downloads by outcome of their check (ok, mismatch, no_digest).
    pub downloads: IntCounterVec,
    /// Uploads by what became of their digest (recorded, unrecorded).
    pub uploads: IntCounterVec,
}

impl Integrity {
    /// Counters registered in `registry` (the proxy's one registry).
    pub fn new(config: IntegrityConfig, registry: Option<&Registry>) -> Integrity {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("mlflow_proxy");
        let downloads = IntCounterVec::new(
            opts(
                "integrity_downloads_total",
                "Whole-object downloads by the outcome of their digest check: ok, mismatch (the answer was cut before its last byte), no_digest (served unchecked).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let uploads = IntCounterVec::new(
            opts(
                "integrity_uploads_total",
                "Uploads by what became of their digest: recorded, or unrecorded (the object is stored without one; see the log).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        for outcome in ["ok", "mismatch", "no_digest"] {
            downloads.with_label_values(&[outcome]);
        }
        for outcome in ["recorded", "unrecorded"] {
            uploads.with_label_values(&[outcome]);
        }
        if let Some(registry) = registry {
            for collector in [downloads.clone(), uploads.clone()] {
                registry
                    .register(Box::new(collector))
                    .expect("metric names are unique");
            }
        }
        Integrity {
            config,
            downloads,
            uploads,
        }
    }

    /// A hasher for a new upload, unless integrity is off.
    pub fn hasher(&self) -> Option<Hasher> {
        self.config.algorithm.map(Hasher::new)
    }

    /// The digest to check a download against: the one the object's metadata (`x-amz-meta-*`
    /// headers of its HEAD or GET) holds, the configured algorithm's first. None when integrity
    /// is off or the object has none (stored before this feature, or by another writer).
    pub fn expected(&self, metadata: &http::HeaderMap) -> Option<Digest> {
        let preferred = self.config.algorithm?;
        Digest::from_metadata(metadata, preferred)
    }
}

/// A hasher fed by the frames of a body on their way to the store (`tally`).
pub struct Tally(Option<Arc<Mutex<Hasher>>>);

impl Tally {
    /// The hasher, once the body has been sent.
    pub fn take(self) -> Option<Hasher> {
        let shared = self.0?;
        shared.lock().ok().map(|hasher| hasher.clone())
    }
}

/// `body`, hashed frame by frame as it is read (by hyper, sending it to the store). Nothing is
/// held: each frame is hashed and handed on.
pub fn tally(body: ProxyBody, hasher: Option<Hasher>) -> (ProxyBody, Tally) {
    let Some(hasher) = hasher else {
        return (body, Tally(None));
    };
    let shared = Arc::new(Mutex::new(hasher));
    let feed = shared.clone();
    let body = body
        .map_frame(move |frame| {
            if let (Some(data), Ok(mut hasher)) = (frame.data_ref(), feed.lock()) {
                hasher.update(data);
            }
            frame
        })
        .boxed();
    (body, Tally(Some(shared)))
}
