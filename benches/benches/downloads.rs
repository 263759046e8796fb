//! `cargo bench --bench downloads` (harness = false): large downloads through the proxy's
//! parallel ranged reads (PROXY_DOWNLOAD_*), against the references a user would otherwise use:
//! one presigned GET straight to the store, boto3 `download_file` (8 MiB × 10 ranged GETs, the
//! venv's boto3 in a process of its own), stock MLflow through its own port (full variant), and
//! the proxy itself with parallelism 1 (the single-GET path it had before). Also 8 concurrent
//! downloads, slow readers (memory under backpressure) and the null-store ceiling.
//!
//! Same rules as `load.rs`: the load client runs on one current-thread runtime; every figure is
//! measured, none asserted; CPU seconds of each process come from /proc, and the machine's load
//! average is recorded with each scenario. `BENCH_QUICK=1` shrinks everything to seconds.
//! `BENCH_DOWNLOAD_SWEEP=1` adds the chunk × parallelism sweep the defaults were chosen from.
//! `BENCH_DOWNLOAD_ONLY=single,concurrent,slow,null` runs only the scenarios named.
//! `BENCH_BIGFILE=1` adds the opt-in big-file scenario (the real MLflow client, 10 GiB by default,
//! `BENCH_BIGFILE_MIB`; see `downloads/bigfile.rs`); `BENCH_DOWNLOAD_ONLY=bigfile` runs it alone.
//! `BENCH_NULL_BASELINE_BIN=<proxy binary>` adds that binary (e.g. a build of an older commit)
//! to the null-store ceiling, in the same run, so a regression of the proxy itself shows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use benches::client::{self, MIB, Target, Transfer};
use benches::procs::{self, Managed, Sampler};
use benches::proxy::ProxyProc;
use benches::servers;
use benches::setup::{ACCESS_KEY, BUCKET, SECRET_KEY};
use benches::stats::spread;
use http_body_util::BodyExt;
use s3::Bucket;
use s3::creds::Credentials;
use s3::region::Region;
use serde_json::{Value, json};

#[path = "downloads/bigfile.rs"]
mod bigfile;

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("s3s-fs") {
        let root = std::env::var("BENCH_S3_ROOT").unwrap_or_default();
        let port = std::env::var("BENCH_S3_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if let Err(e) = servers::run_embedded_s3s_fs(&root, port, ACCESS_KEY, SECRET_KEY) {
            eprintln!("embedded s3s-fs: {e}");
            std::process::exit(1);
        }
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(e) = run() {
        eprintln!("\ndownload bench failed: {e}");
        std::process::exit(1);
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

struct Config {
    quick: bool,
    size: u64,
    rounds: usize,
    concurrent: usize,
    concurrent_size: u64,
    slow_readers: usize,
    slow_rate: u64,
    slow_secs: f64,
    sweep: bool,
    stock: bool,
    /// The null-store object: large even in the quick variant (it costs no disk, and at
    /// ~1–2 GiB/s a 128 MiB object is over too soon to time).
    null_size: u64,
    /// Scenarios to run (`BENCH_DOWNLOAD_ONLY`); empty = all.
    only: Vec<String>,
    /// The big file's size, when the opt-in scenario is asked for (`BENCH_BIGFILE=1`).
    bigfile: Option<u64>,
}

impl Config {
    fn from_env() -> Config {
        let quick = flag("BENCH_QUICK");
        Config {
            quick,
            size: env_u64("BENCH_DOWNLOAD_MIB").unwrap_or(if quick { 128 } else { 1024 }) * MIB,
            rounds: env_u64("BENCH_DOWNLOAD_ROUNDS")
                .map_or(if quick { 2 } else { 3 }, |r| r.max(1) as usize),
            concurrent: 8,
            concurrent_size: env_u64("BENCH_CONC_MIB").unwrap_or(if quick { 16 } else { 128 })
                * MIB,
            slow_readers: 8,
            slow_rate: 4 * MIB,
            slow_secs: if quick { 2.0 } else { 8.0 },
            sweep: flag("BENCH_DOWNLOAD_SWEEP"),
            stock: match std::env::var("BENCH_STOCK").as_deref() {
                Ok("0") => false,
                Ok("1") => true,
                _ => !quick,
            },
            null_size: env_u64("BENCH_NULL_MIB").unwrap_or(1024) * MIB,
            only: std::env::var("BENCH_DOWNLOAD_ONLY")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            bigfile: bigfile::requested(),
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        if scenario == "bigfile" && self.bigfile.is_none() {
            return false;
        }
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// The proxy on free loopback ports (`benches::proxy`), signing for the bench stores' region.
fn start_proxy(
    bin: &Path,
    label: &str,
    s3_url: &str,
    upstream: &str,
    env: &[(&str, String)],
) -> Result<ProxyProc, String> {
    benches::proxy::start_proxy(bin, label, s3_url, "us-east-1", upstream, env)
}

fn bucket_for(endpoint: &str) -> Result<Box<Bucket>, String> {
    let region = Region::Custom {
        region: "us-east-1".to_owned(),
        endpoint: endpoint.to_owned(),
    };
    let credentials = Credentials::new(Some(ACCESS_KEY), Some(SECRET_KEY), None, None, None)
        .map_err(|e| e.to_string())?;
    Ok(Bucket::new(BUCKET, region, credentials)
        .map_err(|e| e.to_string())?
        .with_path_style())
}

fn artifact_url(proxy: &str, path: &str) -> String {
    format!("{proxy}/api/2.0/mlflow-artifacts/artifacts/{path}")
}

/// A Python with boto3 (the project's venv), for the boto3 reference.
fn find_python(root: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("MLFLOW_BENCH_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(venv) = std::env::var_os("MLFLOW_STACK_VENV") {
        candidates.push(PathBuf::from(venv).join("bin/python"));
    }
    candidates.push(root.join(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    candidates.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import boto3"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
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

/// One timed boto3 `download_file` of each key at once (threads), from a fresh interpreter.
fn boto3_download(
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

/// CPU seconds of a set of processes (trees summed), for per-transfer accounting.
struct Cpu {
    pids: Vec<(String, u32, bool)>,
    before: Vec<f64>,
}

fn cpu_of(pid: u32, tree: bool) -> f64 {
    if !tree {
        return procs::cpu_secs(pid);
    }
    let mut pids = procs::descendants(pid);
    pids.push(pid);
    pids.iter().map(|p| procs::cpu_secs(*p)).sum()
}

impl Cpu {
    fn start(pids: Vec<(String, u32, bool)>) -> Cpu {
        let before = pids.iter().map(|(_, p, t)| cpu_of(*p, *t)).collect();
        Cpu { pids, before }
    }
    fn end(&self) -> Vec<(String, f64)> {
        self.pids
            .iter()
            .zip(&self.before)
            .map(|((n, p, t), b)| (n.clone(), cpu_of(*p, *t) - b))
            .collect()
    }
}

/// What one side of a comparison did, over its rounds.
#[derive(Default)]
struct Side {
    mib_s: Vec<f64>,
    ttfb_ms: Vec<f64>,
    cpu: HashMap<String, f64>,
    bytes: u64,
}

impl Side {
    fn add_cpu(&mut self, cpu: Vec<(String, f64)>) {
        for (n, c) in cpu {
            *self.cpu.entry(n).or_default() += c;
        }
    }
    fn cpu_per_gib(&self) -> Value {
        let gib = self.bytes as f64 / (1024.0 * MIB as f64);
        Value::Object(
            self.cpu
                .iter()
                .map(|(n, c)| (n.clone(), json!(round(c / gib.max(1e-9), 2))))
                .collect(),
        )
    }
    fn cpu_text(&self) -> String {
        let gib = self.bytes as f64 / (1024.0 * MIB as f64);
        let mut parts: Vec<String> = self
            .cpu
            .iter()
            .map(|(n, c)| format!("{n} {:.2}", c / gib.max(1e-9)))
            .collect();
        parts.sort();
        parts.join(", ")
    }
}

/// GET a metric's value from a proxy's /metrics.
async fn scrape(metrics_url: &str, series: &str) -> Option<f64> {
    let target = Target::parse(&format!("{metrics_url}/metrics")).ok()?;
    let mut sender = client::connect(target.addr).await.ok()?;
    let response = sender
        .send_request(target.request(http::Method::GET, client::empty()).ok()?)
        .await
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Read `url` at about `rate` bytes/s for `secs`, then drop the connection. Bytes read.
async fn slow_read(url: String, rate: u64, secs: f64) -> Result<u64, String> {
    let target = Target::parse(&url)?;
    let mut sender = client::connect(target.addr).await?;
    let response = sender
        .send_request(target.request(http::Method::GET, client::empty())?)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes += data.len() as u64;
                }
            }
            _ => break,
        }
        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(bytes)
}

struct Stock {
    url: String,
    _process: Managed,
    pid: u32,
}

/// Stock MLflow on the same s3s-fs (SQLite backend), as `load.rs` starts it.
fn start_stock(
    runtime: &tokio::runtime::Runtime,
    root: &Path,
    work: &Path,
    s3_url: &str,
) -> Result<Option<Stock>, String> {
    let candidates: Vec<PathBuf> = std::env::var_os("MLFLOW_BENCH_MLFLOW_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::env::var_os("MLFLOW_STACK_VENV").map(|v| PathBuf::from(v).join("bin/mlflow")))
        .chain(std::iter::once(root.join(".venv/bin/mlflow")))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("mlflow")),
        )
        .collect();
    let Some(bin) = candidates.into_iter().find(|p| p.is_file()) else {
        println!("  stock MLflow: no mlflow executable found, skipped");
        return Ok(None);
    };
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let temp = work.join("stock-tmp");
    std::fs::create_dir_all(&temp).map_err(|e| e.to_string())?;
    let mut command = Command::new(&bin);
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
        .env("TMPDIR", &temp)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true");
    println!("starting stock MLflow ({}), up to 180 s", bin.display());
    let mut process = Managed::spawn("stock MLflow", &mut command, Some(&work.join("mlflow.log")))?;
    let url = format!("http://127.0.0.1:{port}");
    if let Err(e) = runtime.block_on(client::wait_ok(
        &format!("{url}/health"),
        Duration::from_secs(180),
    )) {
        let _ = process.check_alive();
        println!("  stock MLflow did not start ({e}), skipped");
        return Ok(None);
    }
    let pid = process.pid();
    Ok(Some(Stock {
        url,
        _process: process,
        pid,
    }))
}

struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_none() {
            for dir in &self.0 {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn run() -> Result<(), String> {
    let config = Config::from_env();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    println!(
        "mlflow-artifact-proxy download bench ({} variant: {} MiB, {} rounds; load average {})",
        if config.quick { "quick" } else { "full" },
        config.size / MIB,
        config.rounds,
        load_average()
    );
    let proxy_bin = procs::proxy_binary(&root)?;
    let work = std::env::temp_dir().join(format!("mlflow-proxy-dlbench-{}", std::process::id()));
    // boto3 writes its files to RAM (tmpfs), so that no disk is in its figures either.
    let shm = Path::new("/dev/shm");
    let boto_dest = if shm.is_dir() {
        shm.join(format!("mlflow-proxy-dlbench-{}", std::process::id()))
    } else {
        work.join("boto3")
    };
    let _cleanup = Cleanup(vec![work.clone(), boto_dest.clone()]);
    std::fs::create_dir_all(work.join("s3").join(BUCKET)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&boto_dest).map_err(|e| e.to_string())?;
    if let (true, Some(size)) = (config.runs("bigfile"), config.bigfile) {
        // Refuse before anything is started or written.
        bigfile::check_disk(&work, size)?;
    }

    // The S3 server: the s3s-fs binary, or the same code embedded in this binary.
    let s3_port = procs::free_port().map_err(|e| e.to_string())?;
    let tools = std::env::var_os("MLFLOW_STACK_TOOLS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/mlflow-stack/tools")
        },
        PathBuf::from,
    );
    let s3s_bin = tools.join("bin").join("s3s-fs");
    let mut command = if s3s_bin.is_file() && std::env::var("BENCH_S3").as_deref() != Ok("embedded")
    {
        let mut c = Command::new(&s3s_bin);
        c.args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(work.join("s3"));
        c
    } else {
        let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
        c.env("BENCH_ROLE", "s3s-fs")
            .env("BENCH_S3_ROOT", work.join("s3"))
            .env("BENCH_S3_PORT", s3_port.to_string());
        c
    };
    let s3_process = Managed::spawn("s3s-fs", &mut command, Some(&work.join("s3s-fs.log")))?;
    let s3_pid = s3_process.pid();
    let s3_url = format!("http://127.0.0.1:{s3_port}");

    // Null store and MLflow stand-in on a thread of their own.
    let chunk = client::pattern();
    let null_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let stand_in_listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let null_url = format!(
        "http://{}",
        null_listener.local_addr().map_err(|e| e.to_string())?
    );
    let stand_in_url = format!(
        "http://{}",
        stand_in_listener.local_addr().map_err(|e| e.to_string())?
    );
    null_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    stand_in_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    {
        let chunk = chunk.clone();
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let (Ok(null), Ok(stand_in)) = (
                    tokio::net::TcpListener::from_std(null_listener),
                    tokio::net::TcpListener::from_std(stand_in_listener),
                ) else {
                    return;
                };
                tokio::join!(
                    servers::serve(null, servers::null_store(chunk)),
                    servers::serve(stand_in, servers::upstream_stand_in()),
                );
            });
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let single = [("PROXY_DOWNLOAD_PARALLELISM", "1".to_owned())];
    let proxy = start_proxy(
        &proxy_bin,
        "proxy (parallel, defaults)",
        &s3_url,
        &stand_in_url,
        &[],
    )?;
    let proxy_single = start_proxy(
        &proxy_bin,
        "proxy (parallelism 1)",
        &s3_url,
        &stand_in_url,
        &single,
    )?;
    let null = start_proxy(
        &proxy_bin,
        "proxy (parallel), null store",
        &null_url,
        &stand_in_url,
        &[],
    )?;
    let null_single = start_proxy(
        &proxy_bin,
        "proxy (parallelism 1), null store",
        &null_url,
        &stand_in_url,
        &single,
    )?;
    let null_baseline = match std::env::var_os("BENCH_NULL_BASELINE_BIN") {
        Some(bin) => Some(start_proxy(
            Path::new(&bin),
            "baseline proxy (parallel), null store",
            &null_url,
            &stand_in_url,
            &[],
        )?),
        None => None,
    };
    runtime.block_on(async {
        client::wait_ok(
            &format!("{s3_url}/{BUCKET}?list-type=2&max-keys=1"),
            Duration::from_secs(30),
        )
        .await
        .or_else(|e| if e.contains("403") { Ok(()) } else { Err(e) })?;
        for p in [&proxy, &proxy_single, &null, &null_single]
            .into_iter()
            .chain(null_baseline.as_ref())
        {
            client::wait_ok(&format!("{}/readyz", p.metrics), Duration::from_secs(30))
                .await
                .map_err(|e| format!("{}: {e}\n{}", p.label, p.process.last_lines()))?;
        }
        Ok::<(), String>(())
    })?;
    let python = find_python(&root);
    let s3_bucket = bucket_for(&s3_url)?;
    let mut rows: Vec<String> = Vec::new();
    let mut results = serde_json::Map::new();
    let mut row = |text: String| {
        println!("  {text}");
        rows.push(text);
    };

    let stock = if (config.stock && config.runs("single")) || config.runs("bigfile") {
        start_stock(&runtime, &root, &work, &s3_url)?
    } else {
        println!("  stock MLflow: skipped (quick variant; BENCH_STOCK=1 starts it)");
        None
    };

    // 0. Opt-in: a big file through the real MLflow client, proxy against stock MLflow. First,
    // before the other objects take disk.
    if let (true, Some(size)) = (config.runs("bigfile"), config.bigfile) {
        println!(
            "\n== big file, {} MiB, real MLflow client (load average {}) ==",
            size / MIB,
            load_average()
        );
        bigfile::check_disk(&work, size)?;
        let python = bigfile::find_mlflow_python(&root)
            .ok_or("big-file scenario: no Python with mlflow (set MLFLOW_STACK_VENV)")?;
        let stock = stock
            .as_ref()
            .ok_or("big-file scenario: stock MLflow did not start")?;
        let front = start_proxy(
            &proxy_bin,
            "proxy (in front of stock MLflow)",
            &s3_url,
            &stock.url,
            &[],
        )?;
        runtime.block_on(client::wait_ok(
            &format!("{}/readyz", front.metrics),
            Duration::from_secs(30),
        ))?;
        let (lines, value) = bigfile::run(
            &python,
            &work,
            size,
            &chunk,
            &front,
            stock,
            &work.join("stock-tmp"),
        )?;
        for line in lines {
            row(line);
        }
        results.insert("bigfile".into(), value);
    }

    // The objects: uploaded once through the proxy (a single streamed PUT each).
    let big = "dl/big.bin";
    if config.runs("single") || config.runs("slow") || config.sweep {
        runtime.block_on(client::upload(
            &artifact_url(&proxy.url, big),
            config.size,
            chunk.clone(),
            true,
        ))?;
    }
    let null_key = "dl/null.bin";
    if config.runs("null") {
        runtime.block_on(client::upload(
            &artifact_url(&null.url, null_key),
            config.null_size,
            chunk.clone(),
            true,
        ))?;
    }
    let conc_keys: Vec<String> = (0..config.concurrent)
        .map(|i| format!("dl/c{i}.bin"))
        .collect();
    for key in conc_keys
        .iter()
        .filter(|_| config.runs("concurrent") || config.sweep)
    {
        runtime.block_on(client::upload(
            &artifact_url(&proxy.url, key),
            config.concurrent_size,
            chunk.clone(),
            true,
        ))?;
    }

    // 1. One large download, every side interleaved round by round.
    if config.runs("single") {
        println!(
            "\n== one {} MiB download (load average {}) ==",
            config.size / MIB,
            load_average()
        );
        let presigned = runtime
            .block_on(s3_bucket.presign_get(big, 3600, None))
            .map_err(|e| e.to_string())?;
        let mut sides: Vec<(&str, Side)> = vec![
            ("proxy", Side::default()),
            ("proxy, parallelism 1", Side::default()),
            ("direct presigned GET", Side::default()),
        ];
        if python.is_some() {
            sides.push(("boto3 download_file", Side::default()));
        }
        if stock.is_some() {
            sides.push(("stock MLflow", Side::default()));
        }
        for r in 0..config.rounds {
            let n = sides.len();
            for k in 0..n {
                let i = (k + r) % n;
                let name = sides[i].0;
                let mut pids = vec![("s3s-fs".to_owned(), s3_pid, false)];
                let url = match name {
                    "proxy" => {
                        pids.push(("proxy".into(), proxy.process.pid(), false));
                        Some(artifact_url(&proxy.url, big))
                    }
                    "proxy, parallelism 1" => {
                        pids.push(("proxy".into(), proxy_single.process.pid(), false));
                        Some(artifact_url(&proxy_single.url, big))
                    }
                    "direct presigned GET" => Some(presigned.clone()),
                    "stock MLflow" => {
                        let s = stock.as_ref().ok_or("no stock")?;
                        pids.push(("stock MLflow tree".into(), s.pid, true));
                        Some(artifact_url(&s.url, big))
                    }
                    _ => None,
                };
                if url.is_some() {
                    pids.push(("client".into(), std::process::id(), false));
                }
                let cpu = Cpu::start(pids);
                let side = &mut sides[i].1;
                match url {
                    Some(url) => {
                        let t: Transfer =
                            runtime.block_on(client::download(&url, Some(config.size)))?;
                        side.mib_s.push(t.mib_s());
                        side.ttfb_ms.push(t.first_byte_secs * 1000.0);
                    }
                    None => {
                        let python = python.as_ref().ok_or("no python")?;
                        let (secs, py_cpu, bytes) =
                            boto3_download(python, &s3_url, &[big.to_owned()], &boto_dest)?;
                        side.mib_s.push(bytes as f64 / MIB as f64 / secs.max(1e-9));
                        side.cpu
                            .entry("client (boto3)".into())
                            .and_modify(|c| *c += py_cpu)
                            .or_insert(py_cpu);
                    }
                }
                side.add_cpu(cpu.end());
                side.bytes += config.size;
            }
        }
        let base = spread(&sides[0].1.mib_s).median;
        let mut single_json = serde_json::Map::new();
        for (name, side) in &sides {
            let s = spread(&side.mib_s);
            let ttfb = spread(&side.ttfb_ms);
            row(format!(
                "{:<28} {:>16} MiB/s  proxy/this {:>5.2}  TTFB {:>8} ms  CPU-s/GiB: {}",
                name,
                s.show(1),
                base / s.median.max(1e-9),
                if side.ttfb_ms.is_empty() {
                    "-".to_owned()
                } else {
                    ttfb.show(2)
                },
                side.cpu_text()
            ));
            single_json.insert(
            (*name).to_owned(),
            json!({"mib_s": s.json(), "ttfb_ms": ttfb.json(), "cpu_s_per_gib": side.cpu_per_gib(),
                   "proxy_over_this": round(base / s.median.max(1e-9), 3)}),
        );
        }
        results.insert("single".into(), Value::Object(single_json));
    }

    // 2. Concurrent downloads: aggregate, and the proxy's peak RSS against its bound.
    if config.runs("concurrent") {
        println!(
            "\n== {} concurrent × {} MiB (load average {}) ==",
            config.concurrent,
            config.concurrent_size / MIB,
            load_average()
        );
        let mut conc_json = serde_json::Map::new();
        for r in 0..config.rounds.min(2) {
            let order = if r % 2 == 0 {
                ["proxy", "boto3", "direct"]
            } else {
                ["direct", "boto3", "proxy"]
            };
            for side in order {
                if side == "boto3" && python.is_none() {
                    continue;
                }
                procs::reset_peak(proxy.process.pid());
                let sampler = Sampler::start(vec![proxy.process.pid()], Vec::new(), Vec::new());
                let mut pids = vec![("s3s-fs".to_owned(), s3_pid, false)];
                if side == "proxy" {
                    pids.push(("proxy".into(), proxy.process.pid(), false));
                }
                if side != "boto3" {
                    pids.push(("client".into(), std::process::id(), false));
                }
                let cpu = Cpu::start(pids);
                let (mib_s, extra_cpu) = match side {
                    "proxy" => {
                        let urls = conc_keys
                            .iter()
                            .map(|k| artifact_url(&proxy.url, k))
                            .collect();
                        let b = runtime
                            .block_on(client::download_batch(urls, config.concurrent_size))?;
                        (b.mib_s(), None)
                    }
                    "direct" => {
                        let mut urls = Vec::new();
                        for k in &conc_keys {
                            urls.push(
                                runtime
                                    .block_on(s3_bucket.presign_get(k, 3600, None))
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                        let b = runtime
                            .block_on(client::download_batch(urls, config.concurrent_size))?;
                        (b.mib_s(), None)
                    }
                    _ => {
                        let python = python.as_ref().ok_or("no python")?;
                        let (secs, py_cpu, bytes) =
                            boto3_download(python, &s3_url, &conc_keys, &boto_dest)?;
                        (bytes as f64 / MIB as f64 / secs.max(1e-9), Some(py_cpu))
                    }
                };
                let samples = sampler.finish();
                let peak = procs::hwm_kib(proxy.process.pid()).max(
                    samples
                        .peak_rss_kib
                        .get(&proxy.process.pid())
                        .copied()
                        .unwrap_or(0),
                );
                let mut used = cpu.end();
                if let Some(c) = extra_cpu {
                    used.push(("client (boto3)".into(), c));
                }
                let gib = (config.concurrent as u64 * config.concurrent_size) as f64
                    / (1024.0 * MIB as f64);
                let cpu_text: Vec<String> = used
                    .iter()
                    .map(|(n, c)| format!("{n} {:.2}", c / gib))
                    .collect();
                let rss = if side == "proxy" {
                    format!(", proxy peak RSS {:.1} MiB", peak as f64 / 1024.0)
                } else {
                    String::new()
                };
                row(format!(
                    "{:<28} {:>8.1} MiB/s aggregate{rss}  CPU-s/GiB: {}",
                    format!("{side}, round {r}"),
                    mib_s,
                    cpu_text.join(", ")
                ));
                conc_json.insert(format!("{side} round {r}"), json!({"aggregate_mib_s": round(mib_s, 1),
                "proxy_peak_rss_mib": if side == "proxy" { json!(round(peak as f64 / 1024.0, 1)) } else { Value::Null },
                "cpu_s_per_gib": used.iter().map(|(n, c)| (n.clone(), json!(round(c / gib, 2)))).collect::<serde_json::Map<_, _>>()}));
            }
        }
        results.insert("concurrent".into(), Value::Object(conc_json));
    }

    // 3. Slow readers: read-ahead stops when clients do not read; memory stays bounded.
    if config.runs("slow") {
        println!(
            "\n== {} slow readers at {} MiB/s for {} s of a {} MiB object (load average {}) ==",
            config.slow_readers,
            config.slow_rate / MIB,
            config.slow_secs,
            config.size / MIB,
            load_average()
        );
        {
            let pid = proxy.process.pid();
            procs::reset_peak(pid);
            let rss_before = procs::rss_kib(pid);
            let sampler = Sampler::start(vec![pid], Vec::new(), Vec::new());
            let get_objects =
                r#"mlflow_proxy_s3_requests_total{operation="get_object",outcome="ok"}"#;
            let gets_before = runtime
                .block_on(scrape(&proxy.metrics, get_objects))
                .unwrap_or(0.0);
            let (bytes, budget_peak) = runtime.block_on(async {
                let mut tasks = Vec::new();
                for _ in 0..config.slow_readers {
                    tasks.push(tokio::spawn(slow_read(
                        artifact_url(&proxy.url, big),
                        config.slow_rate,
                        config.slow_secs,
                    )));
                }
                let mut budget_peak: f64 = 0.0;
                while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
                    if let Some(v) =
                        scrape(&proxy.metrics, "mlflow_proxy_download_budget_in_use_bytes").await
                    {
                        budget_peak = budget_peak.max(v);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut bytes = 0;
                for t in tasks {
                    bytes += t.await.map_err(|e| e.to_string())??;
                }
                Ok::<_, String>((bytes, budget_peak))
            })?;
            let gets = runtime
                .block_on(scrape(&proxy.metrics, get_objects))
                .unwrap_or(0.0)
                - gets_before;
            let samples = sampler.finish();
            let peak =
                procs::hwm_kib(pid).max(samples.peak_rss_kib.get(&pid).copied().unwrap_or(0));
            row(format!(
                "slow readers: {:.1} MiB read, {gets} GETs, budget peak {:.1} MiB, proxy RSS {:.1} → peak {:.1} MiB",
                bytes as f64 / MIB as f64,
                budget_peak / MIB as f64,
                rss_before as f64 / 1024.0,
                peak as f64 / 1024.0
            ));
            results.insert("slow_readers".into(), json!({"readers": config.slow_readers, "rate_mib_s": config.slow_rate / MIB,
            "secs": config.slow_secs, "bytes_read": bytes, "get_objects": gets, "budget_peak_bytes": budget_peak,
            "proxy_rss_before_mib": round(rss_before as f64 / 1024.0, 1), "proxy_peak_rss_mib": round(peak as f64 / 1024.0, 1)}));
        }
    }

    // 4. The proxy's own ceiling (null store), parallel against parallelism 1 (and against a
    // baseline binary when one is given), interleaved round by round.
    if config.runs("null") {
        println!(
            "\n== null store ceiling, {} MiB (load average {}) ==",
            config.null_size / MIB,
            load_average()
        );
        let mut null_json = serde_json::Map::new();
        let mut null_sides: Vec<(&str, &ProxyProc, Side)> = vec![
            ("parallel (defaults)", &null, Side::default()),
            ("parallelism 1", &null_single, Side::default()),
        ];
        if let Some(p) = &null_baseline {
            null_sides.push(("parallel, baseline binary", p, Side::default()));
        }
        for r in 0..config.rounds.max(3) {
            let n = null_sides.len();
            for k in 0..n {
                let (_, p, side) = &mut null_sides[(k + r) % n];
                let cpu = Cpu::start(vec![("proxy".into(), p.process.pid(), false)]);
                let t = runtime.block_on(client::download(
                    &artifact_url(&p.url, null_key),
                    Some(config.null_size),
                ))?;
                side.mib_s.push(t.mib_s());
                side.ttfb_ms.push(t.first_byte_secs * 1000.0);
                side.add_cpu(cpu.end());
                side.bytes += config.null_size;
            }
        }
        for (name, _, side) in &null_sides {
            let s = spread(&side.mib_s);
            row(format!(
                "null store, {:<22} {:>16} MiB/s  TTFB {} ms  CPU-s/GiB: {}",
                name,
                s.show(1),
                spread(&side.ttfb_ms).show(2),
                side.cpu_text()
            ));
            null_json.insert(
                (*name).to_owned(),
                json!({"mib_s": s.json(), "ttfb_ms": spread(&side.ttfb_ms).json(),
                   "cpu_s_per_gib": side.cpu_per_gib()}),
            );
        }
        results.insert("null_store".into(), Value::Object(null_json));
    }

    // 5. Optional: the sweep the defaults were chosen from.
    if config.sweep {
        println!(
            "\n== chunk × parallelism sweep, {} MiB (load average {}) ==",
            config.size / MIB,
            load_average()
        );
        let mut sweep_json = Vec::new();
        for chunk_mib in [4u64, 8, 16] {
            for parallelism in [2usize, 4, 6, 8] {
                let env = [
                    ("PROXY_DOWNLOAD_CHUNK_MIB", chunk_mib.to_string()),
                    ("PROXY_DOWNLOAD_PARALLELISM", parallelism.to_string()),
                ];
                let p = start_proxy(&proxy_bin, "proxy (sweep)", &s3_url, &stand_in_url, &env)?;
                runtime.block_on(client::wait_ok(
                    &format!("{}/readyz", p.metrics),
                    Duration::from_secs(30),
                ))?;
                let mut side = Side::default();
                for _ in 0..config.rounds {
                    let cpu = Cpu::start(vec![
                        ("proxy".into(), p.process.pid(), false),
                        ("s3s-fs".into(), s3_pid, false),
                    ]);
                    let t = runtime.block_on(client::download(
                        &artifact_url(&p.url, big),
                        Some(config.size),
                    ))?;
                    side.mib_s.push(t.mib_s());
                    side.add_cpu(cpu.end());
                    side.bytes += config.size;
                }
                procs::reset_peak(p.process.pid());
                let urls = conc_keys.iter().map(|k| artifact_url(&p.url, k)).collect();
                let b = runtime.block_on(client::download_batch(urls, config.concurrent_size))?;
                let peak = procs::hwm_kib(p.process.pid());
                let s = spread(&side.mib_s);
                row(format!(
                    "chunk {chunk_mib:>2} MiB × {parallelism}: {:>16} MiB/s, {}× concurrent {:.1} MiB/s (peak RSS {:.1} MiB)  CPU-s/GiB: {}",
                    s.show(1),
                    config.concurrent,
                    b.mib_s(),
                    peak as f64 / 1024.0,
                    side.cpu_text()
                ));
                sweep_json.push(json!({"chunk_mib": chunk_mib, "parallelism": parallelism, "mib_s": s.json(),
                    "concurrent_mib_s": round(b.mib_s(), 1), "peak_rss_mib": round(peak as f64 / 1024.0, 1),
                    "cpu_s_per_gib": side.cpu_per_gib()}));
            }
        }
        results.insert("sweep".into(), json!(sweep_json));
    }

    results.insert("load_average_end".into(), json!(load_average()));
    results.insert("rows".into(), json!(rows));
    let out = target_dir.join("bench-downloads.json");
    std::fs::create_dir_all(&target_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(results)).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "\nJSON: {} (load average at the end {})",
        out.display(),
        load_average()
    );
    drop(s3_process);
    Ok(())
}
