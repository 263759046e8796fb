//! Stock MLflow as the benches start it: `mlflow server --serve-artifacts` with SQLite, storing in
//! the bench bucket of the given S3 server, with a `TMPDIR` of its own (so its temp copies can be
//! measured) and its log in the scratch folder.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::client;
use crate::procs::{self, Managed};
use crate::setup::{ACCESS_KEY, BUCKET, SECRET_KEY, workspace_root};

/// The `mlflow` executable: `MLFLOW_BENCH_MLFLOW_BIN`, else `$MLFLOW_STACK_VENV/bin/mlflow`, else
/// the workspace's `.venv/bin/mlflow`, else the first on `PATH`.
pub fn mlflow_executable() -> Option<PathBuf> {
    std::env::var_os("MLFLOW_BENCH_MLFLOW_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("MLFLOW_STACK_VENV").map(|v| PathBuf::from(v).join("bin/mlflow")))
        .chain(std::iter::once(workspace_root().join(".venv/bin/mlflow")))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("mlflow")),
        )
        .find(|p| p.is_file())
}

/// A stock MLflow server started by the bench; stopped (with its workers) when dropped.
pub struct StockMlflow {
    pub url: String,
    pub process: Managed,
    /// Its `TMPDIR`.
    pub temp_dir: PathBuf,
    /// Its output.
    pub log: PathBuf,
}

impl StockMlflow {
    /// The root of its process tree (the `mlflow server` launcher).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// Start `bin server` (default 4 uvicorn workers) on a free loopback port with its database,
/// `TMPDIR` and log under `work`, and wait up to 180 s for `/health`.
pub async fn start_stock_mlflow(
    bin: &Path,
    work: &Path,
    s3_url: &str,
) -> Result<StockMlflow, String> {
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let temp_dir = work.join("stock-tmp");
    let log = work.join("mlflow.log");
    std::fs::create_dir_all(&temp_dir).map_err(|e| e.to_string())?;
    let mut command = Command::new(bin);
    command
        .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", work.join("mlflow.db").display()))
        .args([
            "--serve-artifacts",
            "--artifacts-destination",
            &format!("s3://{BUCKET}/"),
        ])
        .env("MLFLOW_S3_ENDPOINT_URL", s3_url)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("TMPDIR", &temp_dir)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true");
    println!(
        "starting stock MLflow: {} server (SQLite, same S3 server), up to 180 s",
        bin.display()
    );
    let mut process = Managed::spawn("stock MLflow", &mut command, Some(&log))?;
    let url = format!("http://127.0.0.1:{port}");
    if let Err(e) = client::wait_ok(&format!("{url}/health"), Duration::from_secs(180)).await {
        let _ = process.check_alive();
        return Err(format!("it did not start ({e}); log {}", log.display()));
    }
    Ok(StockMlflow {
        url,
        process,
        temp_dir,
        log,
    })
}
