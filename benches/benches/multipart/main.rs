//! `cargo bench --bench multipart` (harness = false): MLflow's client-driven multipart upload and
//! presigned ranged download through the proxy (issue 13), against one stream through the proxy
//! and against the same parallel transfer straight to S3, in one run, as ratios; then the same
//! on a WAN-like link (a per-connection rate limit) where parallel connections should win.
//!
//! The client does what MLflow's does: mpu/create, PUT of 10 MiB parts by 4 workers
//! (`min(2 x CPUs, 20)` on this 2-core machine), mpu/complete; presigned/ then 100 MiB ranges by
//! 4 workers. Processes: the release proxy (built first, or BENCH_PROXY_BIN), s3s-fs 0.14.1 (the
//! binary in MLFLOW_STACK_TOOLS/bin, else the same code embedded in this bench), a stand-in for
//! MLflow (server-info etc.) on a thread of this process.
//! BENCH_QUICK=1: 256 MiB instead of 1 GiB; BENCH_WAN_MIBS: the link's rate per connection.
//!
//! Files: `loopback.rs` and `wan.rs` (the two scenarios), `transfers.rs` (the client's side of
//! each transfer, as MLflow's client does it), `relay.rs` (the rate-limited link), and this file,
//! which starts the processes and holds what both scenarios time and print.

mod loopback;
mod relay;
mod transfers;
mod wan;

use std::path::Path;
use std::time::{Duration, Instant};

use benches::client::{self, MIB};
use benches::procs::{self, load_average};
use benches::proxy::start_proxy;
use benches::s3store::start_s3s_fs;
use benches::servers;
use benches::setup::{self, ACCESS_KEY, SECRET_KEY, Scratch, env_u64};
use bytes::Bytes;
use s3::Bucket;

pub const PART: u64 = 10 * MIB;
pub const RANGE: u64 = 100 * MIB;
pub const WORKERS: usize = 4;

fn main() {
    setup::bench_main(|| setup::client_runtime()?.block_on(run()));
}

/// CPU seconds of the proxy and of s3s-fs over one scenario.
pub struct Cpu {
    pids: [u32; 2],
    before: [f64; 2],
    started: Instant,
}

impl Cpu {
    fn start(pids: [u32; 2]) -> Cpu {
        Cpu {
            pids,
            before: pids.map(procs::cpu_secs),
            started: Instant::now(),
        }
    }
    fn finish(self) -> (f64, [f64; 2]) {
        let after = self.pids.map(procs::cpu_secs);
        (
            self.started.elapsed().as_secs_f64(),
            [after[0] - self.before[0], after[1] - self.before[1]],
        )
    }
}

pub struct Row {
    name: &'static str,
    secs: f64,
    cpu: [f64; 2],
    bytes: u64,
}

impl Row {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs
    }
    pub fn print(&self) {
        let gib = self.bytes as f64 / (1024.0 * MIB as f64);
        println!(
            "  {:<44} {:>7.2} s {:>7.0} MiB/s   CPU s/GiB: proxy {:>5.2}  s3s-fs {:>5.2}",
            self.name,
            self.secs,
            self.mib_s(),
            self.cpu[0] / gib,
            self.cpu[1] / gib
        );
    }
}

async fn run() -> Result<(), String> {
    let quick = setup::quick();
    let size = env_u64("BENCH_MPU_MIB").unwrap_or(if quick { 256 } else { 1024 }) * MIB;
    let wan_rate = env_u64("BENCH_WAN_MIBS").unwrap_or(16) * MIB;
    let wan_size = if quick { 64 * MIB } else { 128 * MIB };
    println!(
        "multipart bench: {} MiB, {} MiB parts and {} MiB ranges by {WORKERS} workers; load average {}",
        size / MIB,
        PART / MIB,
        RANGE / MIB,
        load_average()
    );
    let proxy_bin = procs::proxy_binary(&setup::workspace_root())?;
    let work = Scratch::create("mlflow-mpu-bench")?;
    let result = scenarios(&proxy_bin, work.path(), size, wan_rate, wan_size).await;
    drop(work);
    println!("load average at the end: {}", load_average());
    result
}

/// What both scenarios share: the proxy in front of s3s-fs, the processes whose CPU is counted,
/// the bucket (direct side) and the upload body's buffer.
pub struct Bench {
    pub proxy_url: String,
    pub pids: [u32; 2],
    pub bucket: Box<Bucket>,
    pub chunk: Bytes,
    pub rounds: usize,
}

async fn scenarios(
    proxy_bin: &Path,
    work: &Path,
    size: u64,
    wan_rate: u64,
    wan_size: u64,
) -> Result<(), String> {
    let mut s3 = start_s3s_fs(&setup::tools_dir(), work, ACCESS_KEY, SECRET_KEY)?;
    let bucket = s3.create_bucket().await?;
    let chunk = client::pattern();

    // MLflow's other routes (server-info) answered by the bench's stand-in.
    let upstream_url = servers::start_null_store_and_stand_in(chunk.clone())?.stand_in_url;

    let mut proxy = start_proxy(
        proxy_bin,
        "proxy",
        &s3.url,
        s3.region,
        &upstream_url,
        &[(
            "PROXY_SIGNING_KEY",
            "bench-signing-key-0123456789abcdef0123".to_owned(),
        )],
    )?;
    proxy.wait_ready(Duration::from_secs(30)).await?;
    let proxy_url = proxy.url.clone();
    let pids = [proxy.pid(), s3.process.pid()];
    let rounds = env_u64("BENCH_ROUNDS").unwrap_or(3).max(1) as usize;
    let bench = Bench {
        proxy_url,
        pids,
        bucket,
        chunk,
        rounds,
    };
    loopback::run(&bench, size).await?;
    wan::run(&bench, wan_rate, wan_size).await?;

    proxy.process.stop();
    s3.process.stop();
    Ok(())
}

/// Per scenario, the round with the median time (its CPU figures with it).
pub fn medians(mut rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let n = rounds.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut runs: Vec<Row> = rounds.iter_mut().filter_map(|r| r.pop()).collect();
        runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        out.push(runs.swap_remove(runs.len() / 2));
    }
    out.reverse();
    out
}

pub fn row(name: &'static str, cpu: Cpu, bytes: u64) -> Row {
    let (secs, cpu) = cpu.finish();
    Row {
        name,
        secs,
        cpu,
        bytes,
    }
}
