//! The boto3 reference: `download_file` (8 MiB × 10 ranged GETs, the defaults MLflow's server
//! uses) of each key at once, by the venv's boto3 in a process of its own; and where the bench
//! finds a Python with a given module (boto3 here, mlflow for the big file).

use std::path::{Path, PathBuf};
use std::process::Command;

use benches::setup::{ACCESS_KEY, BUCKET, SECRET_KEY, workspace_root};
use serde_json::Value;

/// A Python that imports `module`: `MLFLOW_BENCH_PYTHON`, `$MLFLOW_STACK_VENV/bin/python`, the
/// workspace's `.venv/bin/python`, then (when `or_path`) `python3` from `PATH`.
pub fn find_python_with(module: &str, or_path: bool) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("MLFLOW_BENCH_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(venv) = std::env::var_os("MLFLOW_STACK_VENV") {
        candidates.push(PathBuf::from(venv).join("bin/python"));
    }
    candidates.push(workspace_root().join(".venv/bin/python"));
    if or_path {
        candidates.push(PathBuf::from("python3"));
    }
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", &format!("import {module}")])
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A Python with boto3 (the project's venv), for the boto3 reference.
pub fn find_python() -> Option<PathBuf> {
    find_python_with("boto3", true)
}

const BOTO3_SCRIPT: &str = r#"
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import boto3
from boto3.s3.transfer import TransferConfig
endpoint, bucket, keys, dest = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=os.environ["BENCH_AK"],
                  aws_secret_access_key=os.environ["BENCH_SK"], region_name="us-east-1")
config = TransferConfig()  # the defaults MLflow's server uses: 8 MiB parts, 10 threads
s3.head_bucket(Bucket=bucket)  # connection set up outside the timing
paths = [os.path.join(dest, "boto3-%d.bin" % i) for i in range(len(keys))]
cpu, started = time.process_time(), time.perf_counter()
with ThreadPoolExecutor(len(keys)) as pool:
    list(pool.map(lambda kp: s3.download_file(bucket, kp[0], kp[1], Config=config), zip(keys, paths)))
secs, cpu = time.perf_counter() - started, time.process_time() - cpu
size = sum(os.path.getsize(p) for p in paths)
for p in paths:
    os.remove(p)
print(json.dumps({"secs": secs, "cpu": cpu, "bytes": size}))
"#;

/// One timed boto3 `download_file` of each key at once (threads), from a fresh interpreter:
/// seconds, the interpreter's CPU seconds, bytes.
pub fn download(
    python: &Path,
    s3_url: &str,
    keys: &[String],
    dest: &Path,
) -> Result<(f64, f64, u64), String> {
    let output = Command::new(python)
        .args([
            "-c",
            BOTO3_SCRIPT,
            s3_url,
            BUCKET,
            &keys.join(","),
            &dest.to_string_lossy(),
        ])
        .env("BENCH_AK", ACCESS_KEY)
        .env("BENCH_SK", SECRET_KEY)
        .output()
        .map_err(|e| format!("boto3: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "boto3 failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let v: Value = serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .map_err(|e| format!("boto3 output: {e}"))?;
    Ok((
        v["secs"].as_f64().unwrap_or(0.0),
        v["cpu"].as_f64().unwrap_or(0.0),
        v["bytes"].as_u64().unwrap_or(0),
    ))
}
