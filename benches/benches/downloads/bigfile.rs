//! The opt-in big-file scenario of `cargo bench --bench downloads` (`BENCH_BIGFILE=1`; not in
//! CI, disk permitting): one file of `BENCH_BIGFILE_MIB` (10 GiB by default) logged with
//! `mlflow.log_artifact` and downloaded back with `mlflow.artifacts.download_artifacts`, by the
//! real MLflow client (the venv's, default settings, a process of its own per step), through the
//! proxy (in front of the stock MLflow server the bench starts) and through stock MLflow's own
//! port. Twice: with the client's defaults (both servers offer multipart in `server-info`, so
//! the client uploads parts and downloads ranges in parallel: through the proxy's signed URLs, or
//! straight to the store with stock's presigned S3 URLs), and with the client's multipart off
//! (`MLFLOW_ENABLE_PROXY_MULTIPART_{UPLOAD,DOWNLOAD}=false`: one streamed PUT and one GET through
//! the server, stock's classic path with its temp file). Measured: each step's time, the proxy's peak RSS (it should stay flat), the peak size of
//! stock MLflow's temp directory, and the SHA-256 of what came back against the file's.
//!
//! Disk: the file, its stored copy (s3s-fs keeps objects as files), the downloaded copy and
//! stock's temp copy exist at once, so 4 × the size (+ 1 GiB) must be free where the bench works;
//! otherwise the scenario refuses before writing anything. Each side deletes its stored copy
//! (the client's `delete_artifacts`) and its downloaded copy when it is done.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use benches::client::MIB;
use benches::procs::{self, Sampler, load_average};
use benches::proxy::ProxyProc;
use benches::stats::round;
use benches::stock::StockMlflow;
use serde_json::{Value, json};

use crate::{Bench, Report, boto3};

const CLIENT: &str = r#"
import hashlib, json, os, sys, time
import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(8 << 20)
            if not block:
                return h.hexdigest()
            h.update(block)

mode = sys.argv[1]
if mode == "hash":
    print(json.dumps({"sha256": sha256(sys.argv[2])}))
    sys.exit(0)
mlflow.set_tracking_uri(sys.argv[2])
if mode == "log":
    path, experiment = sys.argv[3], sys.argv[4]
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        started = time.perf_counter()
        mlflow.log_artifact(path, artifact_path="big")
        secs = time.perf_counter() - started
    print(json.dumps({"run_id": run.info.run_id, "secs": secs}))
elif mode == "download":
    run_id, name, dest = sys.argv[3], sys.argv[4], sys.argv[5]
    started = time.perf_counter()
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="big/" + name, dst_path=dest)
    secs = time.perf_counter() - started
    size = os.path.getsize(local)
    digest = sha256(local)
    os.remove(local)
    # The stored copy goes too (through the same server), so the next side has the disk.
    repo = get_artifact_repository(mlflow.get_run(run_id).info.artifact_uri)
    repo.delete_artifacts("big")
    print(json.dumps({"secs": secs, "bytes": size, "sha256": digest}))
"#;

/// The client settings each side is run with: the defaults, then multipart off.
const MODES: [(&str, &[(&str, &str)]); 2] = [
    ("client defaults", &[]),
    (
        "client multipart off",
        &[
            ("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "false"),
            ("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false"),
        ],
    ),
];

fn python_step(python: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<Value, String> {
    let output = Command::new(python)
        .arg("-c")
        .arg(CLIENT)
        .args(args)
        .envs(env.iter().copied())
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .output()
        .map_err(|e| format!("big-file client: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        return Err(format!(
            "big-file client ({}) failed:\n{}",
            args[0],
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let line = output
        .stdout
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    serde_json::from_slice(line).map_err(|e| format!("big-file client output: {e}"))
}

/// Free bytes on the filesystem holding `dir` (`df -Pk`).
fn free_bytes(dir: &Path) -> Result<u64, String> {
    let output = Command::new("df")
        .args(["-Pk"])
        .arg(dir)
        .output()
        .map_err(|e| format!("df: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("df {}: no answer", dir.display()))
}

/// Refuse, before writing anything, unless 4 × `size` + 1 GiB is free under `work`.
pub fn check_disk(work: &Path, size: u64) -> Result<(), String> {
    let needed = 4 * size + 1024 * MIB;
    let free = free_bytes(work)?;
    if free < needed {
        return Err(format!(
            "big-file scenario refused: it needs {:.1} GiB free under {} (the file, its stored \
             copy, the downloaded copy and stock MLflow's temp copy, 4 × {:.1} GiB, + 1 GiB), \
             and {:.1} GiB are free. Set BENCH_BIGFILE_MIB lower, or TMPDIR to a larger disk.",
            needed as f64 / (1024.0 * MIB as f64),
            work.display(),
            size as f64 / (1024.0 * MIB as f64),
            free as f64 / (1024.0 * MIB as f64),
        ));
    }
    Ok(())
}

/// Write `size` bytes in which every MiB differs (the bench's pattern with the MiB's index in
/// its first 8 bytes), so that a chunk delivered twice or out of order changes the hash.
fn write_file(path: &Path, size: u64, pattern: &[u8]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(MIB as usize, file);
    let mut block = pattern.to_vec();
    let mut written = 0u64;
    let mut index = 0u64;
    while written < size {
        block[..8].copy_from_slice(&index.to_le_bytes());
        let n = (size - written).min(block.len() as u64) as usize;
        out.write_all(&block[..n])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written += n as u64;
        index += 1;
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * MIB as f64)
}

/// The scenario: a proxy of its own in front of the stock MLflow the bench started, then each
/// side in each client mode.
pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let Some(size) = bench.config.bigfile else {
        return Ok(());
    };
    println!(
        "\n== big file, {} MiB, real MLflow client (load average {}) ==",
        size / MIB,
        load_average()
    );
    let work = bench.work.path();
    check_disk(work, size)?;
    // The Python of the venv with MLflow (as for boto3, `MLFLOW_BENCH_PYTHON` first).
    let python = boto3::find_python_with("mlflow", false)
        .ok_or("big-file scenario: no Python with mlflow (set MLFLOW_STACK_VENV)")?;
    let stock = bench
        .stock
        .as_ref()
        .ok_or("big-file scenario: stock MLflow did not start")?;
    let mut front = benches::proxy::start_proxy(
        &bench.proxy_bin,
        "proxy (in front of stock MLflow)",
        &bench.s3.url,
        "us-east-1",
        &stock.url,
        &[],
    )?;
    bench.wait_ready(&mut front)?;
    let (lines, value) = measure(&python, work, size, &bench.chunk, &front, stock)?;
    for line in lines {
        report.row(line);
    }
    report.insert("bigfile", value);
    Ok(())
}

/// Each side in each client mode; rows for the table, and the JSON.
fn measure(
    python: &Path,
    work: &Path,
    size: u64,
    pattern: &[u8],
    proxy: &ProxyProc,
    stock: &StockMlflow,
) -> Result<(Vec<String>, Value), String> {
    let stock_tmp = stock.temp_dir.as_path();
    check_disk(work, size)?;
    let dir = work.join("bigfile");
    std::fs::create_dir_all(dir.join("down")).map_err(|e| e.to_string())?;
    let file = dir.join("big.bin");
    let name = "big.bin";
    let started = Instant::now();
    write_file(&file, size, pattern)?;
    let file_text = file.to_string_lossy().into_owned();
    let expected = python_step(python, &[], &["hash", &file_text])?["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!(
        "  big file: {:.1} GiB written and hashed in {:.1} s",
        gib(size),
        started.elapsed().as_secs_f64()
    );
    let mut rows = Vec::new();
    let mut json_sides = serde_json::Map::new();
    let proxy_pid = proxy.process.pid();
    let down = dir.join("down").to_string_lossy().into_owned();
    let sides = [("proxy", &proxy.url), ("stock MLflow", &stock.url)];
    for ((mode, env), (side, url)) in MODES.iter().flat_map(|m| sides.iter().map(move |s| (m, s))) {
        let rss_start = procs::rss_kib(proxy_pid);
        let mut steps = serde_json::Map::new();
        let mut run_id = String::new();
        let mut line = format!("big file {:.1} GiB via {side} ({mode}):", gib(size));
        for step in ["log", "download"] {
            procs::reset_peak(proxy_pid);
            let sampler = Sampler::start(
                vec![proxy_pid],
                vec![stock.pid()],
                vec![stock_tmp.to_path_buf()],
            );
            let answer = if step == "log" {
                python_step(python, env, &["log", url, &file_text, "bigfile-bench"])?
            } else {
                python_step(python, env, &["download", url, &run_id, name, &down])?
            };
            let samples = sampler.finish();
            if step == "log" {
                run_id = answer["run_id"].as_str().unwrap_or_default().to_owned();
            }
            let secs = answer["secs"].as_f64().unwrap_or(0.0);
            let proxy_peak = procs::hwm_kib(proxy_pid)
                .max(samples.peak_rss_kib.get(&proxy_pid).copied().unwrap_or(0));
            let tmp_peak = samples.peak_dir_bytes.get(stock_tmp).copied().unwrap_or(0);
            let stock_tree = samples
                .peak_tree_kib
                .get(&stock.pid())
                .copied()
                .unwrap_or(0);
            let mut entry = json!({
                "secs": round(secs, 2),
                "mib_s": round(size as f64 / MIB as f64 / secs.max(1e-9), 1),
                "proxy_peak_rss_mib": round(proxy_peak as f64 / 1024.0, 1),
                "stock_tmp_peak_mib": round(tmp_peak as f64 / MIB as f64, 1),
                "stock_tree_peak_rss_mib": round(stock_tree as f64 / 1024.0, 1),
            });
            line.push_str(&format!(
                " {step} {secs:.1} s ({:.0} MiB/s, stock temp peak {:.0} MiB",
                size as f64 / MIB as f64 / secs.max(1e-9),
                tmp_peak as f64 / MIB as f64
            ));
            if *side == "proxy" {
                line.push_str(&format!(
                    ", proxy peak RSS {:.1} MiB",
                    proxy_peak as f64 / 1024.0
                ));
            }
            line.push(')');
            if step == "download" {
                let got = answer["sha256"].as_str().unwrap_or_default();
                let equal = got == expected && answer["bytes"].as_u64() == Some(size);
                entry["sha256_equal"] = json!(equal);
                line.push_str(if equal {
                    "; hash equal"
                } else {
                    "; HASH DIFFERS"
                });
                if !equal {
                    return Err(format!(
                        "big file via {side}: downloaded {} bytes with SHA-256 {got}, expected {size} bytes with {expected}",
                        answer["bytes"]
                    ));
                }
            }
            steps.insert(step.to_owned(), entry);
        }
        steps.insert(
            "proxy_rss_start_mib".into(),
            json!(round(rss_start as f64 / 1024.0, 1)),
        );
        json_sides.insert(format!("{side}, {mode}"), Value::Object(steps));
        rows.push(line);
    }
    let _ = std::fs::remove_dir_all(&dir);
    json_sides.insert("size_bytes".into(), json!(size));
    json_sides.insert("sha256".into(), json!(expected));
    Ok((rows, Value::Object(json_sides)))
}
