//! A real S3 store run by the bench as a process of its own (see `servers::start_s3_store`),
//! and the test store, s3s-fs 0.14.1.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::procs::{self, Managed};

pub struct S3Store {
    pub name: &'static str,
    pub process: Managed,
    pub url: String,
    /// The region it signs with.
    pub region: &'static str,
    /// What runs (binary and version), for the report.
    pub kind: String,
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
/// which the bench's `main` must handle) when the binary is missing.
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
    let (mut command, kind) = if bin.is_file() {
        let mut command = Command::new(&bin);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(&root);
        (command, format!("s3s-fs 0.14.1 ({})", bin.display()))
    } else {
        let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        command
            .env("BENCH_ROLE", "s3s-fs")
            .env("BENCH_S3_ROOT", &root)
            .env("BENCH_S3_PORT", port.to_string());
        (
            command,
            "s3s-fs 0.14.1 embedded in the bench binary".to_owned(),
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
    })
}
