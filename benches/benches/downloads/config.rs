//! The download bench's knobs, read from the environment (docs/benchmarks.md lists them).

use benches::client::MIB;
use benches::setup::{env_flag, env_u64, quick};

pub struct Config {
    pub quick: bool,
    pub size: u64,
    pub rounds: usize,
    pub concurrent: usize,
    pub concurrent_size: u64,
    pub slow_readers: usize,
    pub slow_rate: u64,
    pub slow_secs: f64,
    pub sweep: bool,
    pub stock: bool,
    /// The null-store object: large even in the quick variant (it costs no disk, and at
    /// ~1–2 GiB/s a 128 MiB object is over too soon to time).
    pub null_size: u64,
    /// Scenarios to run (`BENCH_DOWNLOAD_ONLY`); empty = all.
    pub only: Vec<String>,
    /// The big file's size, when the opt-in scenario is asked for (`BENCH_BIGFILE=1`).
    pub bigfile: Option<u64>,
}

impl Config {
    pub fn from_env() -> Config {
        let quick = quick();
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
            sweep: env_flag("BENCH_DOWNLOAD_SWEEP"),
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
            bigfile: env_flag("BENCH_BIGFILE")
                .then(|| env_u64("BENCH_BIGFILE_MIB").unwrap_or(10 * 1024) * MIB),
        }
    }

    /// Whether `scenario` runs: the sweep when `BENCH_DOWNLOAD_SWEEP` asks for it, the big file
    /// when `BENCH_BIGFILE` does, the others unless `BENCH_DOWNLOAD_ONLY` leaves them out.
    pub fn runs(&self, scenario: &str) -> bool {
        match scenario {
            "sweep" => self.sweep,
            "bigfile" if self.bigfile.is_none() => false,
            _ => self.only.is_empty() || self.only.iter().any(|s| s == scenario),
        }
    }
}
