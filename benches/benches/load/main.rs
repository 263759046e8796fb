//! `cargo bench` (harness = false): load benchmarks for mlflow-artifact-proxy with real clients
//! over loopback HTTP. See the README section "Benchmarks" for what each figure means.
//!
//! Processes:
//! - the proxy: `target/release/mlflow-artifact-proxy`, built by this bench with
//!   `$CARGO build --release -p mlflow-artifact-proxy` (BENCH_PROXY_BIN skips the build), one
//!   process per configuration so its RSS, CPU and /proc/<pid>/io are its own;
//! - the S3 server: the s3s-fs 0.14.1 binary from `$MLFLOW_STACK_TOOLS/bin` (default
//!   `~/.cache/mlflow-stack/tools/bin`), or else the same s3s/s3s-fs 0.14.1 code compiled into
//!   this bench and run by this binary in a process of its own (BENCH_ROLE=s3s-fs);
//! - in this process, on a thread and a one-thread runtime of their own: the null store and a
//!   stand-in for MLflow's other routes;
//! - stock MLflow, when available (MLFLOW_BENCH_STOCK_URL, or a server on 127.0.0.1:5001, or
//!   started here from `.venv/bin/mlflow` / `mlflow` on PATH with SQLite and the same s3s-fs).
//!
//! Sharing two cores fairly: the load client runs on a current-thread tokio runtime, so it can
//! never take more than one core; its request bodies are slices of one 1 MiB buffer and
//! downloads are only counted, so it needs far less than that. The null store and the stand-in
//! share another single-thread runtime. The proxy and s3s-fs keep their default runtimes (one
//! worker per core) and compete on equal terms through the kernel scheduler. Concurrency is
//! fixed by the scenario (1, 8 or 32 transfers; 1 or 4 connections for small requests), never
//! "as many as the machine allows". Before each measured step the bench waits (bounded) until
//! other work on the machine is below 0.5 cores, and reports the foreign CPU it saw anyway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use benches::client::{self, Batch, Latencies, MIB, Transfer};
use benches::procs::{self, Managed, Sampler};
use benches::servers;
use benches::stats::{Spread, percentile, spread};
use s3::Bucket;
use s3::creds::Credentials;
use s3::region::Region;
use serde_json::{Value, json};

const ACCESS_KEY: &str = "benchkey";
const SECRET_KEY: &str = "benchsecret123";
const BUCKET: &str = "bench";

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
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful either.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Err(e) = run() {
        eprintln!("\nbench failed: {e}");
        std::process::exit(1);
    }
}

struct Config {
    quick: bool,
    size: u64,
    rounds: usize,
    /// (transfers at once, MiB each)
    concurrent: Vec<(usize, u64)>,
    small_n: usize,
    stock_small_n: usize,
    stock_rounds: usize,
    quiet_max: Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let size_mib = env_u64("BENCH_SIZE_MIB").unwrap_or(if quick { 64 } else { 1024 });
        let rounds =
            env_u64("BENCH_ROUNDS").map_or(if quick { 3 } else { 5 }, |r| r.max(1) as usize);
        let mib = env_u64("BENCH_CONC_MIB");
        let concurrent = if quick {
            vec![(8, mib.unwrap_or(8)), (32, mib.unwrap_or(4))]
        } else {
            vec![(8, mib.unwrap_or(128)), (32, mib.unwrap_or(64))]
        };
        Config {
            quick,
            size: size_mib * MIB,
            rounds,
            concurrent,
            small_n: if quick { 200 } else { 1000 },
            stock_small_n: if quick { 20 } else { 50 },
            stock_rounds: env_u64("BENCH_STOCK_ROUNDS")
                .map_or(if quick { 2 } else { 3 }, |r| r.max(1) as usize),
            quiet_max: Duration::from_secs(if quick { 0 } else { 5 }),
        }
    }
}

/// One proxy process and its addresses.
struct ProxyProc {
    process: Managed,
    url: String,
    metrics: String,
}

fn start_proxy(bin: &Path, name: &str, s3_url: &str, upstream: &str) -> Result<ProxyProc, String> {
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let metrics_port = procs::free_port().map_err(|e| e.to_string())?;
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .env("PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("PROXY_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("PROXY_UPSTREAM", upstream)
        .env("MLFLOW_ARTIFACTS_DESTINATION", format!("s3://{BUCKET}/"))
        .env("MLFLOW_S3_ENDPOINT_URL", s3_url)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("RUST_LOG");
    // Output to a pipe (kept in memory): the proxy's access log must not count as disk writes.
    let process = Managed::spawn(name, &mut command, None)?;
    Ok(ProxyProc {
        process,
        url: format!("http://127.0.0.1:{port}"),
        metrics: format!("http://127.0.0.1:{metrics_port}"),
    })
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

/// What was seen of the processes during one scenario.
struct Watch {
    label: String,
    proxy: Option<u32>,
    others: Vec<(String, u32)>,
    tree: Option<(String, u32)>,
    temp_dir: Option<PathBuf>,
    io_before: Option<procs::Io>,
    cpu_before: HashMap<u32, f64>,
    tree_cpu_before: f64,
    busy_before: f64,
    started: Instant,
    sampler: Sampler,
}

fn tree_cpu(root: u32) -> f64 {
    let mut pids = procs::descendants(root);
    pids.push(root);
    pids.iter().map(|p| procs::cpu_secs(*p)).sum()
}

impl Watch {
    fn begin(
        label: &str,
        proxy: Option<u32>,
        others: Vec<(String, u32)>,
        tree: Option<(String, u32)>,
        temp_dir: Option<PathBuf>,
    ) -> Watch {
        if let Some(p) = proxy {
            procs::reset_peak(p);
        }
        let mut cpu_before = HashMap::new();
        for pid in proxy.iter().chain(others.iter().map(|(_, p)| p)) {
            cpu_before.insert(*pid, procs::cpu_secs(*pid));
        }
        cpu_before.insert(std::process::id(), procs::cpu_secs(std::process::id()));
        let tree_cpu_before = tree.as_ref().map_or(0.0, |(_, r)| tree_cpu(*r));
        let sampler = Sampler::start(
            proxy.into_iter().collect(),
            tree.iter().map(|(_, r)| *r).collect(),
            temp_dir.iter().cloned().collect(),
        );
        Watch {
            label: label.to_owned(),
            proxy,
            io_before: proxy.and_then(procs::io),
            others,
            tree,
            temp_dir,
            cpu_before,
            tree_cpu_before,
            busy_before: procs::machine_busy_secs(),
            started: Instant::now(),
            sampler,
        }
    }

    fn end(self) -> Value {
        let wall = self.started.elapsed().as_secs_f64();
        let busy = procs::machine_busy_secs() - self.busy_before;
        let samples = self.sampler.finish();
        let mut cpu = serde_json::Map::new();
        let mut ours = 0.0;
        let names: Vec<(String, u32)> = self
            .proxy
            .map(|p| ("proxy".to_owned(), p))
            .into_iter()
            .chain(self.others.iter().cloned())
            .chain(std::iter::once((
                "bench client".to_owned(),
                std::process::id(),
            )))
            .collect();
        for (name, pid) in &names {
            let used = procs::cpu_secs(*pid) - self.cpu_before.get(pid).copied().unwrap_or(0.0);
            ours += used;
            cpu.insert(format!("{name} cpu_s"), json!(round(used, 2)));
        }
        let mut result = json!({"scenario": self.label, "wall_s": round(wall, 3)});
        if let Some((name, root)) = &self.tree {
            let used = tree_cpu(*root) - self.tree_cpu_before;
            ours += used;
            cpu.insert(format!("{name} cpu_s"), json!(round(used, 2)));
            result["stock_tree_peak_rss_mib"] = json!(round(
                samples.peak_tree_kib.get(root).copied().unwrap_or(0) as f64 / 1024.0,
                1
            ));
        }
        if let Some(dir) = &self.temp_dir {
            result["stock_temp_peak_mib"] = json!(round(
                samples.peak_dir_bytes.get(dir).copied().unwrap_or(0) as f64 / MIB as f64,
                1
            ));
        }
        result["cpu"] = Value::Object(cpu);
        result["foreign_cores"] = json!(round((busy - ours) / wall.max(1e-9), 2));
        if let Some(p) = self.proxy {
            let sampled = samples.peak_rss_kib.get(&p).copied().unwrap_or(0);
            let peak = procs::hwm_kib(p).max(sampled);
            result["proxy_peak_rss_mib"] = json!(round(peak as f64 / 1024.0, 1));
            result["proxy_rss_after_mib"] = json!(round(procs::rss_kib(p) as f64 / 1024.0, 1));
            if let (Some(before), Some(after)) = (self.io_before, procs::io(p)) {
                result["proxy_write_bytes"] = json!(after.write_bytes - before.write_bytes);
                result["proxy_read_bytes"] = json!(after.read_bytes - before.read_bytes);
            }
        }
        result
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// One line of the printed table.
struct Row {
    scenario: String,
    proxy: String,
    reference: String,
    ratio: String,
    rss: String,
}

struct Report {
    rows: Vec<Row>,
    json: serde_json::Map<String, Value>,
    notes: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        scenario: &str,
        proxy: String,
        reference: String,
        ratio: String,
        rss: String,
    ) {
        println!("  {scenario:<58} {proxy:<28} {reference:<34} {ratio:<7} {rss}");
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            proxy,
            reference,
            ratio,
            rss,
        });
    }
    fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }
}

fn rss_of(watch: &Value) -> String {
    watch["proxy_peak_rss_mib"]
        .as_f64()
        .map_or_else(String::new, |v| format!("{v:.1}"))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// Before a measured step: wait (at most `quiet_max`; not at all in the quick variant) until
/// other work on the machine uses less than half a core.
fn quiet(config: &Config) {
    if !config.quiet_max.is_zero() {
        procs::wait_quiet(0.5, config.quiet_max);
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
        "mlflow-artifact-proxy load bench ({} variant: {} MiB single stream, {} rounds)",
        if config.quick { "quick" } else { "full" },
        config.size / MIB,
        config.rounds
    );

    // 1. The proxy binary.
    let proxy_bin = procs::proxy_binary(&root)?;

    // 2. Scratch space (the S3 server's files, stock MLflow's TMPDIR, logs).
    let work = std::env::temp_dir().join(format!("mlflow-proxy-bench-{}", std::process::id()));
    let _cleanup = Cleanup(work.clone());
    std::fs::create_dir_all(work.join("s3").join(BUCKET)).map_err(|e| e.to_string())?;

    // 3. The S3 server.
    let s3_port = procs::free_port().map_err(|e| e.to_string())?;
    let tools = std::env::var_os("MLFLOW_STACK_TOOLS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/mlflow-stack/tools")
        },
        PathBuf::from,
    );
    let s3s_bin = tools.join("bin").join("s3s-fs");
    let force_embedded = std::env::var("BENCH_S3").as_deref() == Ok("embedded");
    let (mut s3_process, s3_kind) = if s3s_bin.is_file() && !force_embedded {
        let mut command = Command::new(&s3s_bin);
        command
            .args(["--host", "127.0.0.1", "--port", &s3_port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(work.join("s3"));
        (
            Managed::spawn("s3s-fs", &mut command, Some(&work.join("s3s-fs.log")))?,
            format!("s3s-fs 0.14.1 binary ({})", s3s_bin.display()),
        )
    } else {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(exe);
        command
            .env("BENCH_ROLE", "s3s-fs")
            .env("BENCH_S3_ROOT", work.join("s3"))
            .env("BENCH_S3_PORT", s3_port.to_string());
        (
            Managed::spawn(
                "s3s-fs (embedded)",
                &mut command,
                Some(&work.join("s3s-fs.log")),
            )?,
            "s3s 0.14.1 + s3s-fs 0.14.1 embedded in the bench binary, own process".to_owned(),
        )
    };
    let s3_url = format!("http://127.0.0.1:{s3_port}");
    let s3_pid = s3_process.pid();
    println!(
        "S3 server: {s3_kind} at {s3_url}, files in {}",
        work.join("s3").display()
    );

    // 4. Null store and MLflow stand-in: one thread, one single-threaded runtime.
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

    // 5. The load client: one thread (see the header comment).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let mut proxy_s3 = start_proxy(&proxy_bin, "proxy (s3s-fs)", &s3_url, &stand_in_url)?;
    let mut proxy_null = start_proxy(&proxy_bin, "proxy (null store)", &null_url, &stand_in_url)?;
    let ready = runtime.block_on(async {
        client::wait_ok(
            &format!("{s3_url}/{BUCKET}?list-type=2&max-keys=1"),
            Duration::from_secs(30),
        )
        .await
        .or_else(|e| if e.contains("403") { Ok(()) } else { Err(e) })?;
        client::wait_ok(
            &format!("{}/readyz", proxy_s3.metrics),
            Duration::from_secs(30),
        )
        .await?;
        client::wait_ok(
            &format!("{}/readyz", proxy_null.metrics),
            Duration::from_secs(30),
        )
        .await
    });
    if let Err(e) = ready {
        let _ = s3_process.check_alive();
        return Err(format!(
            "{e}\nproxy output:\n{}\n{}",
            proxy_s3.process.last_lines(),
            proxy_null.process.last_lines()
        ));
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = Report {
        rows: Vec::new(),
        json: serde_json::Map::new(),
        notes: Vec::new(),
    };
    report.json.insert(
        "machine".into(),
        json!({
            "cpus": cpus,
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
                .find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
            "mem_total": std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or("").trim(),
        }),
    );
    report.json.insert(
        "config".into(),
        json!({
            "variant": if config.quick { "quick" } else { "full" },
            "single_stream_mib": config.size / MIB, "rounds": config.rounds,
            "concurrent": config.concurrent.iter().map(|(n, m)| json!({"transfers": n, "mib_each": m})).collect::<Vec<_>>(),
            "small_requests": config.small_n, "s3_server": s3_kind, "proxy_bin": proxy_bin.display().to_string(),
            "proxy_settings": "defaults: PROXY_SINGLE_PUT_MAX_MIB=1024, PROXY_PART_SIZE_MIB=8, PROXY_PARTS_IN_FLIGHT=4, PROXY_UPLOAD_BUDGET_MIB=128; overrides from the environment (the proxy inherits it) in proxy_env",
            "proxy_env": std::env::vars().filter(|(k, _)| k.starts_with("PROXY_") && k != "PROXY_LISTEN" && k != "PROXY_METRICS_LISTEN" && k != "PROXY_UPSTREAM").collect::<HashMap<_, _>>(),
        }),
    );
    let overrides: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("PROXY_")
                && !matches!(
                    k.as_str(),
                    "PROXY_LISTEN" | "PROXY_METRICS_LISTEN" | "PROXY_UPSTREAM"
                )
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !overrides.is_empty() {
        report.note(format!(
            "proxy settings from the environment: {}",
            overrides.join(" ")
        ));
    }
    let mut scenarios: Vec<Value> = Vec::new();
    let mut summary = serde_json::Map::new();

    let s3_bucket = bucket_for(&s3_url)?;
    let null_bucket = bucket_for(&null_url)?;
    let stores: Vec<Store<'_>> = vec![
        (
            "s3s-fs",
            &proxy_s3,
            &s3_bucket,
            Some(("s3s-fs".to_owned(), s3_pid)),
        ),
        ("null store", &proxy_null, &null_bucket, None),
    ];

    println!(
        "\n== single stream, {} MiB, {} rounds, A/B interleaved ==",
        config.size / MIB,
        config.rounds
    );
    for (store, proxy, bucket, s3_proc) in &stores {
        let proxy_path = "bench/single-proxy.bin";
        let direct_key = "bench/single-direct.bin";
        let put_url = runtime
            .block_on(bucket.presign_put(direct_key, 3600, None, None))
            .map_err(|e| e.to_string())?;
        let get_url = runtime
            .block_on(bucket.presign_get(direct_key, 3600, None))
            .map_err(|e| e.to_string())?;
        let mut up: HashMap<&str, Vec<Transfer>> = HashMap::new();
        let mut down: HashMap<&str, Vec<Transfer>> = HashMap::new();
        let watch = Watch::begin(
            &format!("single stream {} MiB, {store}", config.size / MIB),
            Some(proxy.process.pid()),
            s3_proc.iter().cloned().collect(),
            None,
            None,
        );
        for r in 0..config.rounds {
            let order: [&str; 2] = if r % 2 == 0 {
                ["proxy", "direct"]
            } else {
                ["direct", "proxy"]
            };
            for side in order {
                quiet(&config);
                let url = if side == "proxy" {
                    artifact_url(&proxy.url, proxy_path)
                } else {
                    put_url.clone()
                };
                let t = runtime.block_on(client::upload(&url, config.size, chunk.clone(), true))?;
                up.entry(side).or_default().push(t);
            }
            for side in order {
                quiet(&config);
                let url = if side == "proxy" {
                    artifact_url(&proxy.url, proxy_path)
                } else {
                    get_url.clone()
                };
                let t = runtime.block_on(client::download(&url, Some(config.size)))?;
                down.entry(side).or_default().push(t);
            }
        }
        let w = watch.end();
        let rss = rss_of(&w);
        for (dir, map) in [("upload", &up), ("download", &down)] {
            let p = spread(&map["proxy"].iter().map(Transfer::mib_s).collect::<Vec<_>>());
            let d = spread(
                &map["direct"]
                    .iter()
                    .map(Transfer::mib_s)
                    .collect::<Vec<_>>(),
            );
            report.row(
                &format!("{dir} {} MiB, 1 stream, {store}", config.size / MIB),
                format!("{} MiB/s", p.show(1)),
                format!("{} MiB/s direct", d.show(1)),
                ratio(p.median, d.median),
                rss.clone(),
            );
            summary.insert(
                format!("{dir}_single_{store}_proxy_over_direct"),
                json!(round(p.median / d.median, 3)),
            );
            scenarios.push(json!({"scenario": format!("{dir} single stream, {store}"), "size_mib": config.size / MIB,
                "proxy_mib_s": p.json(), "direct_mib_s": d.json(), "ratio_of_medians": round(p.median / d.median, 3),
                "proxy_secs": map["proxy"].iter().map(|t| round(t.secs, 3)).collect::<Vec<_>>(),
                "direct_secs": map["direct"].iter().map(|t| round(t.secs, 3)).collect::<Vec<_>>()}));
            if dir == "upload" {
                let wait = spread_ms(&map["proxy"], |t| t.head_secs);
                scenarios.push(json!({"scenario": format!("upload single stream, {store}: request start to response head (ms)"), "proxy_ms": wait.json()}));
            }
        }
        let head = spread_ms(&down["proxy"], |t| t.head_secs);
        let first = spread_ms(&down["proxy"], |t| t.first_byte_secs);
        let dfirst = spread_ms(&down["direct"], |t| t.first_byte_secs);
        report.row(
            &format!(
                "download {} MiB time to first byte, {store}",
                config.size / MIB
            ),
            format!("{} ms", first.show(2)),
            format!("{} ms direct", dfirst.show(2)),
            "-".into(),
            String::new(),
        );
        summary.insert(format!("ttfb_ms_{store}"), json!(round(first.median, 3)));
        scenarios.push(json!({"scenario": format!("download TTFB, {store}"), "size_mib": config.size / MIB,
            "proxy_head_ms": head.json(), "proxy_first_byte_ms": first.json(), "direct_first_byte_ms": dfirst.json()}));
        scenarios.push(w);
    }

    println!("\n== concurrent transfers, aggregate ==");
    for (n, mib) in &config.concurrent {
        let each = mib * MIB;
        for (store, proxy, bucket, s3_proc) in &stores {
            let proxy_urls: Vec<String> = (0..*n)
                .map(|i| artifact_url(&proxy.url, &format!("bench/c{n}-proxy-{i}.bin")))
                .collect();
            let mut put_urls = Vec::new();
            let mut get_urls = Vec::new();
            for i in 0..*n {
                let key = format!("bench/c{n}-direct-{i}.bin");
                put_urls.push(
                    runtime
                        .block_on(bucket.presign_put(&key, 3600, None, None))
                        .map_err(|e| e.to_string())?,
                );
                get_urls.push(
                    runtime
                        .block_on(bucket.presign_get(&key, 3600, None))
                        .map_err(|e| e.to_string())?,
                );
            }
            let watch = Watch::begin(
                &format!("{n} concurrent × {mib} MiB, {store}"),
                Some(proxy.process.pid()),
                s3_proc.iter().cloned().collect(),
                None,
                None,
            );
            let mut results: HashMap<(&str, &str), Batch> = HashMap::new();
            quiet(&config);
            results.insert(
                ("upload", "proxy"),
                runtime.block_on(client::upload_batch(
                    proxy_urls.clone(),
                    each,
                    chunk.clone(),
                    true,
                ))?,
            );
            quiet(&config);
            results.insert(
                ("upload", "direct"),
                runtime.block_on(client::upload_batch(put_urls, each, chunk.clone(), true))?,
            );
            quiet(&config);
            results.insert(
                ("download", "proxy"),
                runtime.block_on(client::download_batch(proxy_urls, each))?,
            );
            quiet(&config);
            results.insert(
                ("download", "direct"),
                runtime.block_on(client::download_batch(get_urls, each))?,
            );
            let w = watch.end();
            for dir in ["upload", "download"] {
                let p = &results[&(dir, "proxy")];
                let d = &results[&(dir, "direct")];
                let extra = if dir == "download" {
                    format!(
                        ", slowest first byte {:.0} / {:.0} ms",
                        p.slowest_first_byte() * 1000.0,
                        d.slowest_first_byte() * 1000.0
                    )
                } else {
                    String::new()
                };
                report.row(
                    &format!("{dir} {n} × {mib} MiB at once, {store}{extra}"),
                    format!("{:.1} MiB/s", p.mib_s()),
                    format!("{:.1} MiB/s direct", d.mib_s()),
                    ratio(p.mib_s(), d.mib_s()),
                    rss_of(&w),
                );
                summary.insert(
                    format!("{dir}_{n}x_{store}_proxy_over_direct"),
                    json!(round(p.mib_s() / d.mib_s(), 3)),
                );
                scenarios.push(json!({"scenario": format!("{dir} {n} concurrent, {store}"), "mib_each": mib,
                    "proxy_aggregate_mib_s": round(p.mib_s(), 1), "direct_aggregate_mib_s": round(d.mib_s(), 1),
                    "proxy_wall_s": round(p.wall_secs, 3), "direct_wall_s": round(d.wall_secs, 3),
                    "proxy_slowest_first_byte_ms": round(p.slowest_first_byte() * 1000.0, 2),
                    "direct_slowest_first_byte_ms": round(d.slowest_first_byte() * 1000.0, 2)}));
            }
            summary.insert(
                format!("rss_mib_{n}x_{store}"),
                w["proxy_peak_rss_mib"].clone(),
            );
            scenarios.push(w);
        }
    }

    // Uploads without Content-Length take the multipart path (parts held in memory, budgeted).
    println!("\n== chunked uploads (no Content-Length: multipart path) ==");
    // (proxy process, bytes it wrote to storage since it started)
    let mut writes: Vec<(String, u64)> = Vec::new();
    for (store, _, _, s3_proc) in &stores {
        // A fresh proxy for these: the memory the multipart path holds must neither hide behind
        // nor be charged to the other scenarios (the allocator keeps freed memory resident).
        let store_url = if *store == "s3s-fs" {
            &s3_url
        } else {
            &null_url
        };
        let fresh = start_proxy(
            &proxy_bin,
            "proxy (multipart scenarios)",
            store_url,
            &stand_in_url,
        )?;
        runtime.block_on(client::wait_ok(
            &format!("{}/readyz", fresh.metrics),
            Duration::from_secs(30),
        ))?;
        let proxy = &fresh;
        let big = config.concurrent.iter().map(|(n, _)| *n).max().unwrap_or(1);
        let each = config
            .concurrent
            .iter()
            .find(|(n, _)| *n == big)
            .map_or(4, |(_, m)| *m)
            * MIB;
        quiet(&config);
        let watch = Watch::begin(
            &format!(
                "chunked upload {} MiB, 1 stream, {store}",
                config.size / MIB
            ),
            Some(proxy.process.pid()),
            s3_proc.iter().cloned().collect(),
            None,
            None,
        );
        let t = runtime.block_on(client::upload(
            &artifact_url(&proxy.url, "bench/chunked.bin"),
            config.size,
            chunk.clone(),
            false,
        ))?;
        let w = watch.end();
        report.row(
            &format!(
                "upload {} MiB chunked (multipart), 1 stream, {store}",
                config.size / MIB
            ),
            format!("{:.1} MiB/s", t.mib_s()),
            String::new(),
            "-".into(),
            rss_of(&w),
        );
        scenarios.push(json!({"scenario": format!("chunked upload single stream, {store}"), "mib_s": round(t.mib_s(), 1), "watch": w}));
        quiet(&config);
        let watch = Watch::begin(
            &format!("{big} chunked uploads, {store}"),
            Some(proxy.process.pid()),
            s3_proc.iter().cloned().collect(),
            None,
            None,
        );
        let urls = (0..big)
            .map(|i| artifact_url(&proxy.url, &format!("bench/chunked-{i}.bin")))
            .collect();
        let b = runtime.block_on(client::upload_batch(urls, each, chunk.clone(), false))?;
        let w = watch.end();
        report.row(
            &format!(
                "{big} × {} MiB chunked uploads (multipart), {store}",
                each / MIB
            ),
            format!("{:.1} MiB/s", b.mib_s()),
            String::new(),
            "-".into(),
            rss_of(&w),
        );
        summary.insert(
            format!("rss_mib_{big}_chunked_uploads_{store}"),
            w["proxy_peak_rss_mib"].clone(),
        );
        scenarios.push(json!({"scenario": format!("{big} chunked uploads, {store}"), "aggregate_mib_s": round(b.mib_s(), 1), "watch": w}));
        writes.push((
            format!("{} {store}", fresh.process.name),
            procs::io(fresh.process.pid()).map_or(0, |io| io.write_bytes),
        ));
    }

    println!(
        "\n== small requests, {} sequential (p50 / p99 ms, req/s) ==",
        config.small_n
    );
    // 20 small files to list, through each proxy.
    for proxy in [&proxy_s3, &proxy_null] {
        for i in 0..20 {
            runtime.block_on(client::upload(
                &artifact_url(&proxy.url, &format!("small/file-{i:02}.txt")),
                4096,
                chunk.clone(),
                true,
            ))?;
        }
    }
    let list_path = "/api/2.0/mlflow-artifacts/artifacts?path=small";
    let pass_path = "/api/2.0/mlflow/experiments/get?experiment_id=0";
    let direct_list = runtime
        .block_on(s3_bucket.presign_get(
            "/",
            3600,
            Some(HashMap::from([
                ("list-type".to_owned(), "2".to_owned()),
                ("prefix".to_owned(), "small/".to_owned()),
                ("delimiter".to_owned(), "/".to_owned()),
            ])),
        ))
        .map_err(|e| e.to_string())?;
    let mut small: Vec<SmallCase> = vec![
        (
            "artifact list ?path=small (20 files), s3s-fs".into(),
            format!("{}{list_path}", proxy_s3.url),
            Some(direct_list),
            "ListObjectsV2 direct".into(),
            Some(proxy_s3.process.pid()),
        ),
        (
            "artifact list ?path=small (20 files), null store".into(),
            format!("{}{list_path}", proxy_null.url),
            None,
            String::new(),
            Some(proxy_null.process.pid()),
        ),
        (
            "pass-through experiments/get → stand-in".into(),
            format!("{}{pass_path}", proxy_s3.url),
            Some(format!("{stand_in_url}{pass_path}")),
            "stand-in direct".into(),
            Some(proxy_s3.process.pid()),
        ),
        (
            "pass-through /health → stand-in".into(),
            format!("{}/health", proxy_s3.url),
            Some(format!("{stand_in_url}/health")),
            "stand-in direct".into(),
            Some(proxy_s3.process.pid()),
        ),
    ];
    run_small(
        &runtime,
        &config,
        &mut report,
        &mut scenarios,
        &mut summary,
        &small,
        config.small_n,
    )?;

    // Stock MLflow.
    println!("\n== stock MLflow ==");
    let stock = find_or_start_stock(&runtime, &work, &s3_url, config.quick, &mut report)?;
    match &stock {
        None => {}
        Some(stock) => {
            let mut proxy_ml = start_proxy(
                &proxy_bin,
                "proxy (s3s-fs, real MLflow upstream)",
                &s3_url,
                &stock.url,
            )?;
            let ready = runtime.block_on(client::wait_ok(
                &format!("{}/readyz", proxy_ml.metrics),
                Duration::from_secs(30),
            ));
            if let Err(e) = ready {
                let _ = proxy_ml.process.check_alive();
                return Err(format!("{e}\n{}", proxy_ml.process.last_lines()));
            }
            small = vec![
                (
                    "pass-through /health → MLflow".into(),
                    format!("{}/health", proxy_ml.url),
                    Some(format!("{}/health", stock.url)),
                    "MLflow direct".into(),
                    Some(proxy_ml.process.pid()),
                ),
                (
                    "pass-through experiments/get → MLflow".into(),
                    format!("{}{pass_path}", proxy_ml.url),
                    Some(format!("{}{pass_path}", stock.url)),
                    "MLflow direct".into(),
                    Some(proxy_ml.process.pid()),
                ),
                (
                    format!(
                        "artifact list ?path=small, proxy vs stock MLflow{}",
                        if stock.same_store {
                            ""
                        } else {
                            " (other store)"
                        }
                    ),
                    format!("{}{list_path}", proxy_ml.url),
                    Some(format!("{}{list_path}", stock.url)),
                    "stock MLflow".into(),
                    Some(proxy_ml.process.pid()),
                ),
            ];
            run_small(
                &runtime,
                &config,
                &mut report,
                &mut scenarios,
                &mut summary,
                &small,
                config.stock_small_n,
            )?;

            let proxy_path = "bench/stock-cmp-proxy.bin";
            let stock_path = "bench/stock-cmp-stock.bin";
            let mut up: HashMap<&str, Vec<Transfer>> = HashMap::new();
            let mut down: HashMap<&str, Vec<Transfer>> = HashMap::new();
            let mut stock_rss: f64 = 0.0;
            let mut stock_temp: f64 = 0.0;
            let mut proxy_rss: f64 = 0.0;
            for r in 0..config.stock_rounds {
                let order: [&str; 2] = if r % 2 == 0 {
                    ["proxy", "stock"]
                } else {
                    ["stock", "proxy"]
                };
                for (dir, phase) in [("upload", 0), ("download", 1)] {
                    for side in order {
                        quiet(&config);
                        let w = if side == "proxy" {
                            Watch::begin(
                                &format!("{dir} via proxy, round {r}"),
                                Some(proxy_ml.process.pid()),
                                vec![("s3s-fs".into(), s3_pid)],
                                None,
                                None,
                            )
                        } else {
                            Watch::begin(
                                &format!("{dir} via stock, round {r}"),
                                None,
                                vec![("s3s-fs".into(), s3_pid)],
                                stock.root.map(|p| ("stock MLflow tree".to_owned(), p)),
                                stock.temp_dir.clone(),
                            )
                        };
                        let url = if side == "proxy" {
                            artifact_url(&proxy_ml.url, proxy_path)
                        } else {
                            artifact_url(&stock.url, stock_path)
                        };
                        let t = if phase == 0 {
                            runtime.block_on(client::upload(
                                &url,
                                config.size,
                                chunk.clone(),
                                true,
                            ))?
                        } else {
                            runtime.block_on(client::download(&url, Some(config.size)))?
                        };
                        let w = w.end();
                        stock_rss =
                            stock_rss.max(w["stock_tree_peak_rss_mib"].as_f64().unwrap_or(0.0));
                        stock_temp =
                            stock_temp.max(w["stock_temp_peak_mib"].as_f64().unwrap_or(0.0));
                        proxy_rss = proxy_rss.max(w["proxy_peak_rss_mib"].as_f64().unwrap_or(0.0));
                        scenarios.push(w);
                        if phase == 0 {
                            up.entry(side).or_default().push(t)
                        } else {
                            down.entry(side).or_default().push(t)
                        }
                    }
                }
            }
            for (dir, map) in [("upload", &up), ("download", &down)] {
                let p = spread(&map["proxy"].iter().map(Transfer::mib_s).collect::<Vec<_>>());
                let s = spread(&map["stock"].iter().map(Transfer::mib_s).collect::<Vec<_>>());
                report.row(
                    &format!("{dir} {} MiB via proxy vs stock MLflow", config.size / MIB),
                    format!("{} MiB/s", p.show(1)),
                    format!("{} MiB/s stock", s.show(1)),
                    ratio(p.median, s.median),
                    format!("{proxy_rss:.1}"),
                );
                summary.insert(
                    format!("{dir}_proxy_over_stock"),
                    json!(round(p.median / s.median, 3)),
                );
                scenarios.push(json!({"scenario": format!("{dir} proxy vs stock MLflow"), "size_mib": config.size / MIB,
                    "proxy_mib_s": p.json(), "stock_mib_s": s.json(), "ratio_of_medians": round(p.median / s.median, 3)}));
            }
            let sf = spread_ms(&down["stock"], |t| t.first_byte_secs);
            let pf = spread_ms(&down["proxy"], |t| t.first_byte_secs);
            report.row(
                &format!(
                    "download {} MiB first byte, proxy vs stock",
                    config.size / MIB
                ),
                format!("{} ms", pf.show(1)),
                format!("{} ms stock", sf.show(1)),
                "-".into(),
                String::new(),
            );
            let temp = if stock.temp_dir.is_some() {
                format!("{stock_temp:.0} MiB")
            } else {
                "not sampled".into()
            };
            let tree = if stock.root.is_some() {
                format!("{stock_rss:.0} MiB")
            } else {
                "not sampled".into()
            };
            report.row(
                "stock MLflow: server tree peak RSS / temp disk peak",
                format!("{proxy_rss:.1} MiB RSS, 0 temp"),
                format!("{tree} RSS, {temp} temp"),
                "-".into(),
                String::new(),
            );
            summary.insert("stock_tree_peak_rss_mib".into(), json!(stock_rss));
            summary.insert("stock_temp_peak_mib".into(), json!(stock_temp));
            report.json.insert("stock".into(), json!({"url": stock.url, "started_by_bench": stock.owned.is_some(),
                "same_s3_server": stock.same_store, "root_pid": stock.root, "temp_dir": stock.temp_dir.as_ref().map(|d| d.display().to_string())}));
            proxy_ml.process.check_alive()?;
            writes.push((
                proxy_ml.process.name.clone(),
                procs::io(proxy_ml.process.pid()).map_or(0, |io| io.write_bytes),
            ));
        }
    }

    // Disk: what the proxies wrote to storage over the whole run.
    // Counted from each proxy's start (start-up included), for every proxy process the run used.
    for proxy in [&proxy_s3, &proxy_null] {
        writes.push((
            proxy.process.name.clone(),
            procs::io(proxy.process.pid()).map_or(0, |io| io.write_bytes),
        ));
    }
    let written: u64 = writes.iter().map(|(_, w)| w).sum();
    summary.insert(
        "proxy_write_bytes_by_process".into(),
        json!(
            writes
                .iter()
                .map(|(n, w)| json!({"process": n, "write_bytes": w}))
                .collect::<Vec<_>>()
        ),
    );
    let files: Vec<String> = [&proxy_s3, &proxy_null]
        .iter()
        .flat_map(|p| procs::open_files(p.process.pid()))
        .collect();
    report.row(
        "proxy storage writes, whole run (/proc/<pid>/io write_bytes)",
        format!("{written} bytes"),
        "stock: a temp copy of every file".into(),
        "-".into(),
        String::new(),
    );
    summary.insert("proxy_write_bytes_total".into(), json!(written));
    summary.insert("proxy_open_files".into(), json!(files));
    for proxy in [&mut proxy_s3, &mut proxy_null] {
        proxy.process.check_alive()?;
    }

    report.json.insert("summary".into(), Value::Object(summary));
    report
        .json
        .insert("scenarios".into(), Value::Array(scenarios));
    report.json.insert("notes".into(), json!(report.notes));

    // The table, once more, as Markdown.
    let mut table = String::new();
    table.push_str(&format!(
        "\nResults ({} variant; {} CPUs, loopback; S3 server: {s3_kind}; medians with (min–max)):\n\n",
        if config.quick { "quick" } else { "full" },
        cpus
    ));
    table.push_str("| scenario | proxy | reference | proxy / ref | proxy peak RSS MiB |\n|---|---|---|---|---|\n");
    for row in &report.rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            row.scenario, row.proxy, row.reference, row.ratio, row.rss
        ));
    }
    println!("{table}");
    for note in &report.notes {
        println!("- {note}");
    }
    report.json.insert("table_markdown".into(), json!(table));
    let out = target_dir.join("bench-results.json");
    std::fs::create_dir_all(&target_dir).map_err(|e| e.to_string())?;
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&Value::Object(report.json)).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nJSON: {}", out.display());
    drop(stock);
    Ok(())
}

/// (store label, its proxy, a signer for it, the store's process if it has one)
type Store<'a> = (&'a str, &'a ProxyProc, &'a Bucket, Option<(String, u32)>);

/// (label, URL through the proxy, URL of the reference, reference label, proxy pid)
type SmallCase = (String, String, Option<String>, String, Option<u32>);

fn run_small(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    report: &mut Report,
    scenarios: &mut Vec<Value>,
    summary: &mut serde_json::Map<String, Value>,
    cases: &[SmallCase],
    n: usize,
) -> Result<(), String> {
    let show = |l: &Latencies| {
        let p50 = percentile(&l.millis, 50.0);
        let p99 = percentile(&l.millis, 99.0);
        let rps = l.millis.len() as f64 / l.wall_secs.max(1e-9);
        (p50, p99, rps)
    };
    for (label, proxy_url, direct_url, direct_label, proxy_pid) in cases {
        for keep_alive in [true, false] {
            quiet(config);
            let w = Watch::begin(
                &format!(
                    "{label}, {}",
                    if keep_alive {
                        "keep-alive"
                    } else {
                        "new connection"
                    }
                ),
                *proxy_pid,
                Vec::new(),
                None,
                None,
            );
            let p = runtime.block_on(client::small_requests(proxy_url, n, keep_alive))?;
            let p_rps4 = if keep_alive {
                runtime.block_on(client::small_rps(proxy_url, 4, n / 4))?
            } else {
                0.0
            };
            let watch = w.end();
            let (pp50, pp99, prps) = show(&p);
            let mut entry = json!({"scenario": label, "keep_alive": keep_alive, "n": n,
                "proxy": {"p50_ms": round(pp50, 3), "p99_ms": round(pp99, 3), "rps_sequential": round(prps, 1)}, "watch": watch});
            if keep_alive {
                entry["proxy"]["rps_4_connections"] = json!(round(p_rps4, 1));
            }
            let mut reference = String::new();
            let mut r = String::from("-");
            if let Some(direct) = direct_url {
                quiet(config);
                let d = runtime.block_on(client::small_requests(direct, n, keep_alive))?;
                let (dp50, dp99, drps) = show(&d);
                let d_rps4 = if keep_alive {
                    runtime.block_on(client::small_rps(direct, 4, n / 4))?
                } else {
                    0.0
                };
                reference = format!("{dp50:.2} / {dp99:.2} ms, {drps:.0} req/s {direct_label}");
                r = ratio(pp50, dp50);
                entry["direct"] = json!({"label": direct_label, "p50_ms": round(dp50, 3), "p99_ms": round(dp99, 3), "rps_sequential": round(drps, 1)});
                if keep_alive {
                    entry["direct"]["rps_4_connections"] = json!(round(d_rps4, 1));
                    reference.push_str(&format!(" ({d_rps4:.0} with 4 conns)"));
                }
            }
            let conn = if keep_alive { "keep-alive" } else { "new conn" };
            let mut ours = format!("{pp50:.2} / {pp99:.2} ms, {prps:.0} req/s");
            if keep_alive {
                ours.push_str(&format!(" ({p_rps4:.0} with 4 conns)"));
            }
            report.row(
                &format!("{label}, {conn}"),
                ours,
                reference,
                r,
                String::new(),
            );
            summary.insert(format!("p50_ms {label}, {conn}"), json!(round(pp50, 3)));
            scenarios.push(entry);
        }
    }
    Ok(())
}

struct Stock {
    url: String,
    root: Option<u32>,
    temp_dir: Option<PathBuf>,
    same_store: bool,
    owned: Option<Managed>,
}

fn find_or_start_stock(
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    s3_url: &str,
    quick: bool,
    report: &mut Report,
) -> Result<Option<Stock>, String> {
    let external = std::env::var("MLFLOW_BENCH_STOCK_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            runtime
                .block_on(client::wait_ok(
                    "http://127.0.0.1:5001/health",
                    Duration::from_millis(300),
                ))
                .ok()
                .map(|()| "http://127.0.0.1:5001".to_owned())
        });
    if let Some(url) = external {
        let url = url.trim_end_matches('/').to_owned();
        let port = client::Target::parse(&url)?.addr.port();
        let root = procs::server_root_for_port(port);
        let temp_dir = root.and_then(|r| {
            let mut pids = procs::descendants(r);
            pids.insert(0, r);
            pids.iter()
                .find_map(|p| procs::env_of(*p, "TMPDIR"))
                .map(PathBuf::from)
        });
        report.note(format!(
            "stock MLflow: the running server at {url} (its own S3 store; root pid {root:?}, TMPDIR {temp_dir:?}); RSS and temp disk {}",
            if root.is_some() { "sampled from /proc" } else { "not sampled (process not found)" }
        ));
        return Ok(Some(Stock {
            url,
            root,
            temp_dir,
            same_store: false,
            owned: None,
        }));
    }
    match std::env::var("BENCH_STOCK").as_deref() {
        Ok("0") => {
            report.note("stock MLflow: skipped (BENCH_STOCK=0)".into());
            return Ok(None);
        }
        Ok("1") => {}
        _ if quick => {
            report.note("stock MLflow: skipped in the quick variant (starting it takes a minute; BENCH_STOCK=1 starts it anyway, MLFLOW_BENCH_STOCK_URL uses a running one)".into());
            return Ok(None);
        }
        _ => {}
    }
    let root_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let candidates: Vec<PathBuf> = std::env::var_os("MLFLOW_BENCH_MLFLOW_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(root_dir.join(".venv/bin/mlflow")))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("mlflow")),
        )
        .collect();
    let Some(bin) = candidates.into_iter().find(|p| p.is_file()) else {
        report.note("stock MLflow: skipped (no MLFLOW_BENCH_STOCK_URL, nothing on 127.0.0.1:5001, no mlflow executable found)".into());
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
    println!(
        "starting stock MLflow: {} server (SQLite, same S3 server), up to 180 s",
        bin.display()
    );
    let mut owned = Managed::spawn("stock MLflow", &mut command, Some(&work.join("mlflow.log")))?;
    let url = format!("http://127.0.0.1:{port}");
    if let Err(e) = runtime.block_on(client::wait_ok(
        &format!("{url}/health"),
        Duration::from_secs(180),
    )) {
        let _ = owned.check_alive();
        report.note(format!(
            "stock MLflow: skipped, it did not start ({e}); log {}",
            work.join("mlflow.log").display()
        ));
        return Ok(None);
    }
    let root = Some(owned.pid());
    report.note(format!(
        "stock MLflow: started by the bench ({} server --serve-artifacts, default 4 uvicorn workers, SQLite backend, same s3s-fs), TMPDIR sampled",
        bin.display()
    ));
    Ok(Some(Stock {
        url,
        root,
        temp_dir: Some(temp),
        same_store: true,
        owned: Some(owned),
    }))
}

/// Removes the scratch directory at the end (also on error).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The spread of one per-transfer time, in milliseconds.
fn spread_ms(transfers: &[Transfer], secs: impl Fn(&Transfer) -> f64) -> Spread {
    spread(
        &transfers
            .iter()
            .map(|t| secs(t) * 1000.0)
            .collect::<Vec<_>>(),
    )
}
