//! `cargo bench --bench load` (harness = false): load benchmarks for mlflow-artifact-proxy with
//! real clients over loopback HTTP. See docs/benchmarks.md for what each figure means.
//!
//! One file per scenario, run in this order (`cargo bench --bench load -- NAME...` runs only
//! the scenarios whose names contain one of the NAMEs):
//! - `single_stream.rs`: one large upload and download, proxy vs direct, A/B interleaved;
//! - `concurrent.rs`: 8 and 32 transfers at once, aggregate;
//! - `chunked_uploads.rs`: uploads without Content-Length (the proxy's multipart path);
//! - `small_requests.rs`: artifact list and pass-through latency and req/s;
//! - `stock_mlflow.rs`: the same against stock MLflow (full variant, or when one is running).
//!
//! Around them: `config.rs` (the knobs), `watch.rs` (what /proc says of each process during a
//! scenario), `report.rs` (the table and `target/bench-results.json`), and this file, which
//! starts what every scenario shares and prints the whole-run figures.
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
//!   started here from `mlflow` with SQLite and the same s3s-fs: `benches::stock`).
//!
//! Sharing two cores fairly: the load client runs on a current-thread tokio runtime, so it can
//! never take more than one core; its request bodies are slices of one 1 MiB buffer and
//! downloads are only counted, so it needs far less than that. The null store and the stand-in
//! share another single-thread runtime. The proxy and s3s-fs keep their default runtimes (one
//! worker per core) and compete on equal terms through the kernel scheduler. Concurrency is
//! fixed by the scenario (1, 8 or 32 transfers; 1 or 4 connections for small requests), never
//! "as many as the machine allows". Before each measured step the bench waits (bounded) until
//! other work on the machine is below 0.5 cores, and reports the foreign CPU it saw anyway.

mod chunked_uploads;
mod concurrent;
mod config;
mod report;
mod single_stream;
mod small_requests;
mod stock_mlflow;
mod watch;

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

use benches::client::{self, MIB};
use benches::procs;
use benches::proxy::{ProxyProc, start_proxy};
use benches::s3store::{S3Store, bench_bucket, start_s3s_fs};
use benches::servers::{LocalServers, start_null_store_and_stand_in};
use benches::setup::{self, ACCESS_KEY, SECRET_KEY, Scratch};
use bytes::Bytes;
use s3::Bucket;
use serde_json::json;

use config::Config;
use report::Report;

/// The scenarios, in the order they run: (name, what it measures, the function).
const SCENARIOS: [(&str, &str, Scenario); 5] = [
    (
        "single_stream",
        "one large transfer each way, proxy vs direct",
        single_stream::run,
    ),
    (
        "concurrent",
        "8 and 32 transfers at once, aggregate",
        concurrent::run,
    ),
    (
        "chunked_uploads",
        "uploads without Content-Length (multipart path)",
        chunked_uploads::run,
    ),
    (
        "small_requests",
        "artifact list and pass-through latency",
        small_requests::run,
    ),
    (
        "stock_mlflow",
        "the same against stock MLflow",
        stock_mlflow::run,
    ),
];

type Scenario = fn(&Bench, &mut Report) -> Result<(), String>;

fn main() {
    setup::bench_main(run);
}

/// What every scenario shares: the knobs, the client's runtime, the stores and the two proxies
/// that live for the whole run.
pub struct Bench {
    pub config: Config,
    /// The load client: one thread (see the header comment).
    pub runtime: tokio::runtime::Runtime,
    pub proxy_bin: PathBuf,
    pub work: Scratch,
    pub s3: S3Store,
    pub servers: LocalServers,
    /// The 1 MiB buffer every upload body is sliced from.
    pub chunk: Bytes,
    /// The proxy in front of s3s-fs.
    pub proxy_s3: ProxyProc,
    /// The proxy in front of the null store.
    pub proxy_null: ProxyProc,
    pub s3_bucket: Box<Bucket>,
    pub null_bucket: Box<Bucket>,
    /// Whether `small_requests::seed_small_files` has run.
    pub small_files_seeded: Cell<bool>,
}

/// One store a scenario runs against, with the proxy in front of it.
pub struct Store<'a> {
    /// `s3s-fs` or `null store`, as the rows name it.
    pub name: &'a str,
    pub url: &'a str,
    pub proxy: &'a ProxyProc,
    /// The signer for the direct side.
    pub bucket: &'a Bucket,
    /// The store's process, when it has one, for the CPU figures.
    pub process: Option<(String, u32)>,
}

impl Bench {
    /// The two stores every transfer scenario runs on: s3s-fs, then the null store (the proxy's
    /// own ceiling).
    pub fn stores(&self) -> [Store<'_>; 2] {
        [
            Store {
                name: "s3s-fs",
                url: &self.s3.url,
                proxy: &self.proxy_s3,
                bucket: &self.s3_bucket,
                process: Some(("s3s-fs".to_owned(), self.s3.process.pid())),
            },
            Store {
                name: "null store",
                url: &self.servers.null_url,
                proxy: &self.proxy_null,
                bucket: &self.null_bucket,
                process: None,
            },
        ]
    }

    /// Before a measured step: wait (at most `quiet_max`; not at all in the quick variant) until
    /// other work on the machine uses less than half a core.
    pub fn quiet(&self) {
        if !self.config.quiet_max.is_zero() {
            procs::wait_quiet(0.5, self.config.quiet_max);
        }
    }

    /// A proxy of its own in front of `store_url`, ready.
    pub fn fresh_proxy(
        &self,
        label: &str,
        store_url: &str,
        upstream: &str,
    ) -> Result<ProxyProc, String> {
        let mut proxy = start_proxy(
            &self.proxy_bin,
            label,
            store_url,
            "us-east-1",
            upstream,
            &[],
        )?;
        self.runtime
            .block_on(proxy.wait_ready(Duration::from_secs(30)))?;
        Ok(proxy)
    }
}

/// The scenarios the command line asks for: all, or those whose names contain one of the
/// arguments (`cargo bench --bench load -- concurrent small`; `--bench` and other flags are
/// cargo's).
fn selected() -> Vec<(&'static str, Scenario)> {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    SCENARIOS
        .iter()
        .filter(|(name, _, _)| {
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .map(|(name, _, run)| (*name, *run))
        .collect()
}

fn run() -> Result<(), String> {
    let scenarios = selected();
    if scenarios.is_empty() {
        println!("load bench: no scenario matches the arguments; the scenarios are:");
        for (name, what, _) in &SCENARIOS {
            println!("  {name:<16} {what}");
        }
        return Ok(());
    }
    let config = Config::from_env();
    println!(
        "mlflow-artifact-proxy load bench ({} variant: {} MiB single stream, {} rounds)",
        config.variant(),
        config.size / MIB,
        config.rounds
    );
    if scenarios.len() < SCENARIOS.len() {
        let names: Vec<&str> = scenarios.iter().map(|(name, _)| *name).collect();
        println!("scenarios: {}", names.join(", "));
    }

    // The proxy binary; scratch space (the S3 server's files, stock MLflow's TMPDIR, logs).
    let proxy_bin = procs::proxy_binary(&setup::workspace_root())?;
    let work = Scratch::create("mlflow-proxy-bench")?;
    let runtime = setup::client_runtime()?;

    // The S3 server, with the bench bucket.
    let s3 = start_s3s_fs(&setup::tools_dir(), work.path(), ACCESS_KEY, SECRET_KEY)?;
    let s3_bucket = runtime.block_on(s3.create_bucket())?;
    println!(
        "S3 server: {} at {}, files in {}",
        s3.kind,
        s3.url,
        s3.files.display()
    );

    // Null store and MLflow stand-in: one thread, one single-threaded runtime.
    let chunk = client::pattern();
    let servers = start_null_store_and_stand_in(chunk.clone())?;
    let null_bucket = bench_bucket(&servers.null_url, "us-east-1")?;

    let proxy_s3 = start_proxy(
        &proxy_bin,
        "proxy (s3s-fs)",
        &s3.url,
        s3.region,
        &servers.stand_in_url,
        &[],
    )?;
    let proxy_null = start_proxy(
        &proxy_bin,
        "proxy (null store)",
        &servers.null_url,
        "us-east-1",
        &servers.stand_in_url,
        &[],
    )?;
    let mut bench = Bench {
        config,
        runtime,
        proxy_bin,
        work,
        s3,
        servers,
        chunk,
        proxy_s3,
        proxy_null,
        s3_bucket,
        null_bucket,
        small_files_seeded: Cell::new(false),
    };
    for proxy in [&mut bench.proxy_s3, &mut bench.proxy_null] {
        let ready = bench
            .runtime
            .block_on(proxy.wait_ready(Duration::from_secs(30)));
        if let Err(e) = ready {
            let _ = bench.s3.process.check_alive();
            return Err(e);
        }
    }

    let mut report = Report::new(&bench);
    for (_, scenario) in &scenarios {
        scenario(&bench, &mut report)?;
    }
    whole_run(&mut bench, &mut report)?;
    report.finish(&bench)
}

/// Disk: what the proxies wrote to storage over the whole run, counted from each proxy's start
/// (start-up included), for every proxy process the run used.
fn whole_run(bench: &mut Bench, report: &mut Report) -> Result<(), String> {
    for proxy in [&bench.proxy_s3, &bench.proxy_null] {
        report
            .writes
            .push((proxy.process.name.clone(), proxy.write_bytes()));
    }
    let written: u64 = report.writes.iter().map(|(_, w)| w).sum();
    let by_process = report
        .writes
        .iter()
        .map(|(n, w)| json!({"process": n, "write_bytes": w}))
        .collect::<Vec<_>>();
    report
        .summary
        .insert("proxy_write_bytes_by_process".into(), json!(by_process));
    let files: Vec<String> = [&bench.proxy_s3, &bench.proxy_null]
        .iter()
        .flat_map(|p| procs::open_files(p.pid()))
        .collect();
    report.row(
        "proxy storage writes, whole run (/proc/<pid>/io write_bytes)",
        format!("{written} bytes"),
        "stock: a temp copy of every file".into(),
        "-".into(),
        String::new(),
    );
    report
        .summary
        .insert("proxy_write_bytes_total".into(), json!(written));
    report
        .summary
        .insert("proxy_open_files".into(), json!(files));
    for proxy in [&mut bench.proxy_s3, &mut bench.proxy_null] {
        proxy.process.check_alive()?;
    }
    Ok(())
}
