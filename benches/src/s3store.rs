//! A real S3 store run by the bench as a process of its own (see `servers::start_s3_store`),
//! the test store, s3s-fs 0.14.1, and rust-s3 handles on the bench bucket (the signer for the
//! "direct" side of every comparison).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use s3::Bucket;
use s3::creds::Credentials;
use s3::region::Region;

use crate::procs::{self, Managed};

/// The key the bench's S3 servers accept and its clients sign with.
pub const ACCESS_KEY: &str = "benchkey";
/// Garage imports keys with secrets of at least 16 characters, so one secret serves every store.
pub const SECRET_KEY: &str = "bench-secret-0123";
/// The bucket the proxies store into (`MLFLOW_ARTIFACTS_DESTINATION=s3://bench/`).
pub const BUCKET: &str = "bench";

pub struct S3Store {
    pub name: &'static str,
    pub process: Managed,
    pub url: String,
    /// The region it signs with.
    pub region: &'static str,
    /// What runs (binary and version), for the report.
    pub kind: String,
    /// The folder it keeps its files in.
    pub files: PathBuf,
}

impl S3Store {
    /// A handle on the bench bucket in this store (it may not exist yet: `create_bucket`).
    pub fn bucket(&self) -> Result<Box<Bucket>, String> {
        bench_bucket(&self.url, self.region)
    }

    /// Create the bench bucket (CreateBucket) and return a handle on it.
    pub async fn create_bucket(&self) -> Result<Box<Bucket>, String> {
        let bucket = self.bucket()?;
        let credentials = bucket.credentials().await.map_err(|e| e.to_string())?;
        let created = Bucket::create_with_path_style(
            BUCKET,
            bucket.region(),
            credentials,
            s3::BucketConfiguration::default(),
        )
        .await
        .map_err(|e| format!("create bucket on {}: {e}", self.name))?;
        if !created.success() {
            return Err(format!(
                "create bucket on {}: {}",
                self.name, created.response_text
            ));
        }
        Ok(bucket)
    }
}

/// A presigned ListObjectsV2 of `prefix` with delimiter `/` (what the proxy's artifact list asks
/// the store), for the direct side of the listing figures.
pub async fn presign_list(bucket: &Bucket, prefix: &str) -> Result<String, String> {
    let query = std::collections::HashMap::from([
        ("list-type".to_owned(), "2".to_owned()),
        ("prefix".to_owned(), prefix.to_owned()),
        ("delimiter".to_owned(), "/".to_owned()),
    ]);
    bucket
        .presign_get("/", 3600, Some(query))
        .await
        .map_err(|e| e.to_string())
}

/// A path-style rust-s3 handle on the bench bucket at `endpoint` (any S3 server, the null store
/// too), signing with the bench key for `region`.
pub fn bench_bucket(endpoint: &str, region: &str) -> Result<Box<Bucket>, String> {
    let region = Region::Custom {
        region: region.to_owned(),
        endpoint: endpoint.to_owned(),
    };
    let credentials = Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
        .map_err(|e| e.to_string())?;
    Ok(Bucket::new(BUCKET, region, credentials)
        .map_err(|e| e.to_string())?
        .with_path_style())
}

/// GET `url` until it answers 2xx (at most 60 s), from a thread of its own (callers may be
/// inside a runtime).
pub fn wait_ready(url: &str) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(crate::client::wait_ok(&url, Duration::from_secs(60)))
    })
    .join()
    .map_err(|_| "readiness probe panicked".to_owned())?
}

/// s3s-fs from the tools folder, or the same code embedded in this executable (BENCH_ROLE=s3s-fs,
/// which the bench's `main` must handle: `setup::handled_role_or_list`) when the binary is missing
/// or `BENCH_S3=embedded`. Its files go to `work/s3s-fs`, its log to `work/s3s-fs.log`.
pub fn start_s3s_fs(
    tools: &Path,
    work: &Path,
    access_key: &str,
    secret_key: &str,
) -> Result<S3Store, String> {
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let root = work.join("s3s-fs");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let bin = tools.join("bin").join("s3s-fs");
    let embedded = std::env::var("BENCH_S3").as_deref() == Ok("embedded");
    let (mut command, kind) = if bin.is_file() && !embedded {
        let mut command = Command::new(&bin);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(&root);
        (command, format!("s3s-fs 0.14.1 binary ({})", bin.display()))
    } else {
        let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        command
            .env("BENCH_ROLE", "s3s-fs")
            .env("BENCH_S3_ROOT", &root)
            .env("BENCH_S3_PORT", port.to_string())
            .env("BENCH_S3_ACCESS_KEY", access_key)
            .env("BENCH_S3_SECRET_KEY", secret_key);
        (
            command,
            "s3s 0.14.1 + s3s-fs 0.14.1 embedded in the bench binary, own process".to_owned(),
        )
    };
    let process = Managed::spawn("s3s-fs", &mut command, Some(&work.join("s3s-fs.log")))?;
    let url = format!("http://127.0.0.1:{port}");
    // It has no health route (an unsigned GET answers 403): wait until it accepts connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("s3s-fs did not listen on {url} within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(S3Store {
        name: "s3s-fs",
        process,
        url,
        region: "us-east-1",
        kind,
        files: root,
    })
}
