//! `cargo bench --bench downloads` (harness = false): large downloads through the proxy's
//! parallel ranged reads (PROXY_DOWNLOAD_*), against the references a user would otherwise use:
//! one presigned GET straight to the store, boto3 `download_file` (8 MiB × 10 ranged GETs, the
//! venv's boto3 in a process of its own), stock MLflow through its own port (full variant), and
//! the proxy itself with parallelism 1 (the single-GET path it had before).
//!
//! One file per scenario, run in this order:
//! - `bigfile.rs` (opt-in, `BENCH_BIGFILE=1`): a big file through the real MLflow client;
//! - `single.rs`: one large download, every side interleaved round by round;
//! - `concurrent.rs`: 8 downloads at once, aggregate, and the proxy's peak RSS;
//! - `slow.rs`: slow readers (memory under backpressure);
//! - `null.rs`: the null-store ceiling;
//! - `sweep.rs` (opt-in, `BENCH_DOWNLOAD_SWEEP=1`): the chunk × parallelism sweep the defaults
//!   were chosen from.
//!
//! Around them: `config.rs` (the knobs), `measure.rs` (CPU per process and what one side did over
//! its rounds), `boto3.rs` (the boto3 reference), and this file, which starts what the scenarios
//! share and writes `target/bench-downloads.json`.
//!
//! Same rules as the load bench: the load client runs on one current-thread runtime; every
//! figure is measured, none asserted; CPU seconds of each process come from /proc, and the
//! machine's load average is recorded with each scenario. `BENCH_QUICK=1` shrinks everything to
//! seconds. `BENCH_DOWNLOAD_ONLY=single,concurrent,slow,null` runs only the scenarios named.
//! `BENCH_BIGFILE_MIB` sets the big file's size (10 GiB by default); `BENCH_DOWNLOAD_ONLY=bigfile`
//! runs it alone. `BENCH_NULL_BASELINE_BIN=<proxy binary>` adds that binary (e.g. a build of an
//! older commit) to the null-store ceiling, in the same run, so a regression of the proxy itself
//! shows.

mod bigfile;
mod boto3;
mod concurrent;
mod config;
mod measure;
mod null;
mod single;
mod slow;
mod sweep;

use std::path::{Path, PathBuf};
use std::time::Duration;

use benches::client::{self, MIB, artifact_url};
use benches::procs::{self, load_average};
use benches::proxy::ProxyProc;
use benches::s3store::{S3Store, start_s3s_fs};
use benches::servers::{LocalServers, start_null_store_and_stand_in};
use benches::setup::{self, ACCESS_KEY, SECRET_KEY, Scratch};
use benches::stock::{StockMlflow, mlflow_executable, start_stock_mlflow};
use bytes::Bytes;
use s3::Bucket;
use serde_json::{Value, json};

use config::Config;

/// The scenarios, in the order they run: (name for `BENCH_DOWNLOAD_ONLY`, the function). The big
/// file goes first, before the other objects take disk.
const SCENARIOS: [(&str, Scenario); 6] = [
    ("bigfile", bigfile::run),
    ("single", single::run),
    ("concurrent", concurrent::run),
    ("slow", slow::run),
    ("null", null::run),
    ("sweep", sweep::run),
];

type Scenario = fn(&Bench, &mut Report) -> Result<(), String>;

/// The large object (single, slow readers, sweep), uploaded once through the proxy.
pub const BIG: &str = "dl/big.bin";
/// The null store's object.
pub const NULL_KEY: &str = "dl/null.bin";

/// The objects downloaded at once (concurrent, sweep).
pub fn concurrent_keys(config: &Config) -> Vec<String> {
    (0..config.concurrent)
        .map(|i| format!("dl/c{i}.bin"))
        .collect()
}

fn main() {
    setup::bench_main(run);
}

/// What every scenario shares: the knobs, the client's runtime, the stores, the proxies and the
/// references that live for the whole run.
/// glibc's malloc told to keep freed memory instead of unmapping it (each ranged read of the parallel
/// path allocates hyper's ~400 KiB read buffer afresh; by default glibc maps and unmaps each one).
pub const GLIBC_KEEPS_FREED: [(&str, &str); 2] = [
    ("MALLOC_MMAP_THRESHOLD_", "4194304"),
    ("MALLOC_TRIM_THRESHOLD_", "67108864"),
];

pub struct Bench {
    pub config: Config,
    /// The load client: one thread.
    pub runtime: tokio::runtime::Runtime,
    pub proxy_bin: PathBuf,
    pub s3: S3Store,
    pub s3_bucket: Box<Bucket>,
    pub servers: LocalServers,
    /// The 1 MiB buffer every upload body is sliced from.
    pub chunk: Bytes,
    /// In front of s3s-fs: the defaults, and parallelism 1.
    pub proxy: ProxyProc,
    pub proxy_single: ProxyProc,
    /// In front of the null store: the defaults, parallelism 1, and the baseline binary if given.
    pub null: ProxyProc,
    pub null_single: ProxyProc,
    /// The defaults with glibc told to keep freed memory (`GLIBC_KEEPS_FREED`): the allocator choice.
    pub null_glibc_kept: ProxyProc,
    pub null_baseline: Option<ProxyProc>,
    /// A Python with boto3, for the boto3 reference.
    pub python: Option<PathBuf>,
    pub stock: Option<StockMlflow>,
    // Last, so that they are removed after every process above has stopped (fields drop in
    // this order).
    pub work: Scratch,
    /// Where boto3 writes its files: RAM (tmpfs) when there is one, so no disk is in its figures.
    pub boto_dest: Scratch,
}

impl Bench {
    pub fn s3_pid(&self) -> u32 {
        self.s3.process.pid()
    }

    /// Wait (at most 30 s) until a proxy started during a scenario is ready.
    pub fn wait_ready(&self, proxy: &mut ProxyProc) -> Result<(), String> {
        self.runtime
            .block_on(proxy.wait_ready(Duration::from_secs(30)))
    }
}

/// The table rows as they are printed, and the JSON.
#[derive(Default)]
pub struct Report {
    rows: Vec<String>,
    results: serde_json::Map<String, Value>,
}

impl Report {
    pub fn row(&mut self, text: String) {
        println!("  {text}");
        self.rows.push(text);
    }

    pub fn insert(&mut self, key: &str, value: Value) {
        self.results.insert(key.to_owned(), value);
    }
}

fn run() -> Result<(), String> {
    let config = Config::from_env();
    println!(
        "mlflow-artifact-proxy download bench ({} variant: {} MiB, {} rounds; load average {})",
        if config.quick { "quick" } else { "full" },
        config.size / MIB,
        config.rounds,
        load_average()
    );
    let proxy_bin = procs::proxy_binary(&setup::workspace_root())?;
    let work = Scratch::create("mlflow-proxy-dlbench")?;
    // boto3 writes its files to RAM (tmpfs), so that no disk is in its figures either.
    let shm = Path::new("/dev/shm");
    let boto_dest = if shm.is_dir() {
        Scratch::create_in(shm, "mlflow-proxy-dlbench")?
    } else {
        Scratch::create_in(work.path(), "boto3")?
    };
    if let (true, Some(size)) = (config.runs("bigfile"), config.bigfile) {
        // Refuse before anything is started or written.
        bigfile::check_disk(work.path(), size)?;
    }
    let runtime = setup::client_runtime()?;

    // The S3 server (the s3s-fs binary, or the same code embedded in this binary), with the
    // bench bucket; the null store and MLflow stand-in on a thread of their own.
    let s3 = start_s3s_fs(&setup::tools_dir(), work.path(), ACCESS_KEY, SECRET_KEY)?;
    let s3_bucket = runtime.block_on(s3.create_bucket())?;
    let chunk = client::pattern();
    let servers = start_null_store_and_stand_in(chunk.clone())?;

    let single = [("PROXY_DOWNLOAD_PARALLELISM", "1".to_owned())];
    let start = |label: &str, store: &str, env: &[(&str, String)]| {
        benches::proxy::start_proxy(
            &proxy_bin,
            label,
            store,
            "us-east-1",
            &servers.stand_in_url,
            env,
        )
    };
    let proxy = start("proxy (parallel, defaults)", &s3.url, &[])?;
    let proxy_single = start("proxy (parallelism 1)", &s3.url, &single)?;
    let null = start("proxy (parallel), null store", &servers.null_url, &[])?;
    let null_single = start(
        "proxy (parallelism 1), null store",
        &servers.null_url,
        &single,
    )?;
    let glibc_kept = GLIBC_KEEPS_FREED.map(|(k, v)| (k, v.to_owned()));
    let null_glibc_kept = start(
        "proxy (parallel, glibc keeps freed memory), null store",
        &servers.null_url,
        &glibc_kept,
    )?;
    let null_baseline = match std::env::var_os("BENCH_NULL_BASELINE_BIN") {
        Some(bin) => Some(benches::proxy::start_proxy(
            Path::new(&bin),
            "baseline proxy (parallel), null store",
            &servers.null_url,
            "us-east-1",
            &servers.stand_in_url,
            &[],
        )?),
        None => None,
    };
    let stock = if (config.stock && config.runs("single")) || config.runs("bigfile") {
        start_stock(&runtime, work.path(), &s3.url)
    } else {
        println!("  stock MLflow: skipped (quick variant; BENCH_STOCK=1 starts it)");
        None
    };
    let mut bench = Bench {
        python: boto3::find_python(),
        config,
        runtime,
        proxy_bin,
        work,
        boto_dest,
        s3,
        s3_bucket,
        servers,
        chunk,
        proxy,
        proxy_single,
        null,
        null_single,
        null_glibc_kept,
        null_baseline,
        stock,
    };
    let Bench {
        runtime,
        proxy,
        proxy_single,
        null,
        null_single,
        null_glibc_kept,
        null_baseline,
        ..
    } = &mut bench;
    for p in [proxy, proxy_single, null, null_single, null_glibc_kept]
        .into_iter()
        .chain(null_baseline.as_mut())
    {
        runtime.block_on(p.wait_ready(Duration::from_secs(30)))?;
    }

    let mut report = Report::default();
    for (name, scenario) in SCENARIOS {
        if name == "single" {
            upload_objects(&bench)?;
        }
        if bench.config.runs(name) {
            scenario(&bench, &mut report)?;
        }
    }

    let Report { rows, mut results } = report;
    results.insert("load_average_end".into(), json!(load_average()));
    results.insert("rows".into(), json!(rows));
    let target_dir = setup::target_dir();
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
    Ok(())
}

/// Stock MLflow on the same s3s-fs (SQLite backend), or None (said why) when there is none or it
/// does not start.
fn start_stock(
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    s3_url: &str,
) -> Option<StockMlflow> {
    let Some(bin) = mlflow_executable() else {
        println!("  stock MLflow: no mlflow executable found, skipped");
        return None;
    };
    match runtime.block_on(start_stock_mlflow(&bin, work, s3_url)) {
        Ok(stock) => Some(stock),
        Err(e) => {
            println!("  stock MLflow did not start ({e}), skipped");
            None
        }
    }
}

/// The objects the scenarios download, each uploaded once through the proxy (a single streamed
/// PUT each), only when a scenario that reads it runs.
fn upload_objects(bench: &Bench) -> Result<(), String> {
    let config = &bench.config;
    let upload = |base: &str, key: &str, size: u64| {
        bench.runtime.block_on(client::upload(
            &artifact_url(base, key),
            size,
            bench.chunk.clone(),
            true,
        ))
    };
    if config.runs("single") || config.runs("slow") || config.sweep {
        upload(&bench.proxy.url, BIG, config.size)?;
    }
    if config.runs("null") {
        upload(&bench.null.url, NULL_KEY, config.null_size)?;
    }
    if config.runs("concurrent") || config.sweep {
        for key in concurrent_keys(config) {
            upload(&bench.proxy.url, &key, config.concurrent_size)?;
        }
    }
    Ok(())
}
