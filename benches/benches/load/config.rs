//! The load bench's knobs, from the environment (docs/benchmarks.md lists them).

use std::time::Duration;

use benches::client::MIB;
use benches::setup::{env_u64, quick};

pub struct Config {
    pub quick: bool,
    /// Bytes of the single-stream object (BENCH_SIZE_MIB).
    pub size: u64,
    /// A/B rounds of the single stream (BENCH_ROUNDS).
    pub rounds: usize,
    /// (transfers at once, MiB each) (BENCH_CONC_MIB sets the MiB of both).
    pub concurrent: Vec<(usize, u64)>,
    /// Sequential small requests per case.
    pub small_n: usize,
    /// Sequential small requests per case against stock MLflow.
    pub stock_small_n: usize,
    /// A/B rounds against stock MLflow (BENCH_STOCK_ROUNDS).
    pub stock_rounds: usize,
    /// How long to wait for a quiet machine before a measured step.
    pub quiet_max: Duration,
}

impl Config {
    pub fn from_env() -> Config {
        let quick = quick();
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

    /// `quick` or `full`, as the header and the JSON say.
    pub fn variant(&self) -> &'static str {
        if self.quick { "quick" } else { "full" }
    }
}
