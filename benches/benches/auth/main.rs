//! `cargo bench --bench auth` (harness = false): what MLflow's auth costs a small-artifact GET
//! through the proxy, against the proxy without auth and against stock MLflow with its auth app,
//! all in one run on the same S3 store and the same MLflow server.
//!
//! Processes (all on loopback, started here): s3s-fs 0.14.1 (or the same code embedded in this
//! binary, BENCH_ROLE=s3s-fs); stock MLflow 3.17 through `mlflow-image/entrypoint.sh` with
//! `--app-name basic-auth` (the stack's settings: default_permission READ, auth_cache_ttl_seconds
//! 5; SQLite backend and user store), found via MLFLOW_STACK_VENV, MLFLOW_BENCH_MLFLOW_BIN,
//! `.venv` or PATH; three proxy processes in front of that MLflow and that store:
//!
//! - auth on, cached: PROXY_MLFLOW_AUTH=on, PROXY_MLFLOW_AUTH_CACHE_TTL_SECS=600, so that every
//!   measured request reuses MLflow's answer (the default TTL, 5 s, asks MLflow at most once per
//!   user, resource and 5 s: between this row and the next);
//! - auth on, uncached: PROXY_MLFLOW_AUTH_CACHE_TTL_SECS=0, one MLflow check per request. Same
//!   file, same path, same connection handling as the cached row, so the difference between the
//!   two is exactly MLflow's check (a different run per request would cost the same check, the
//!   cache key holds the run, but also N runs and objects to create, and distinct S3 reads);
//! - auth off: PROXY_MLFLOW_AUTH=off (the proxy as without MLflow's auth app).
//!
//! One user with a READ grant on the experiment (not an admin: MLflow skips permission lookups
//! for admins) GETs one 1 KiB artifact of a run (`<exp>/<run>/artifacts/small.bin`), sequentially,
//! each target on one kept-alive connection (re-opened, unmeasured, only if it idled for 3 s),
//! in interleaved rounds whose order rotates, so that load drifting on a shared machine hits
//! every row alike. Stock MLflow is also measured with a new connection per request (connect
//! included): uvicorn sends a response's head and body in two segments with Nagle on, which
//! costs a kept-alive client a delayed ACK (about 40 ms) per response; a client without a pool
//! does not pay it. A last row GETs the object straight from s3s-fs with a presigned URL (the
//! store's own floor; s3s-fs writes head and body in two segments without TCP_NODELAY, so kept-alive
//! readers, the proxy's pooled S3 connections included, can wait a delayed ACK too).
//!
//! Before measuring, the bench checks that each target is what it claims: the user gets the
//! exact bytes everywhere; anonymous gets 401 and a user with DENY gets 403 from the proxies with
//! auth and from MLflow, while the auth-off proxy serves anonymous. After measuring, the proxies'
//! `mlflow_proxy_auth_decisions_total` must show one MLflow check per uncached request and none
//! for the cached ones.
//!
//! Knobs: BENCH_QUICK=1 (200 requests per row instead of 1000), BENCH_AUTH_REQUESTS,
//! BENCH_PROXY_BIN, MLFLOW_STACK_TOOLS, BENCH_KEEP=1. JSON: target/bench-auth.json.
//!
//! Files: `world.rs` (the users, run and artifact, and the check of each target), `rows.rs` (a
//! row and one measured round), `report.rs` (the table and the JSON), and this file, which starts
//! the processes, measures in interleaved rounds and checks the proxies' counters.

mod report;
mod rows;
mod world;

use std::time::{Duration, Instant};

use benches::client::{self, Target};
use benches::procs;
use benches::setup::{self, Scratch};
use benches::stack::{self, MlflowApi, MlflowAuth};
use bytes::Bytes;
use http::{Method, StatusCode};

use report::Measured;
use rows::{Connection, Row, measure_round};
use world::{ADMIN, ADMIN_PASSWORD, READER, READER_PASSWORD};

/// The artifact's size.
const SIZE: usize = 1024;

fn main() {
    setup::bench_main(run);
}

pub struct Config {
    pub quick: bool,
    /// Measured requests per row.
    pub requests: usize,
    /// Requests per row in one round.
    pub round: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = setup::quick();
        let round = if quick { 20 } else { 50 };
        let requests = setup::env_u64("BENCH_AUTH_REQUESTS")
            .map_or(if quick { 200 } else { 1000 }, |n| n as usize)
            .max(1)
            .div_ceil(round)
            * round;
        Config {
            quick,
            requests,
            round,
        }
    }
}

/// MLflow checks a proxy made: (answers from MLflow, answers from its cache), any outcome.
async fn decisions(metrics_url: &str) -> Result<(f64, f64), String> {
    let (status, page) =
        stack::send(metrics_url, Method::GET, "/metrics", &[], Bytes::new()).await?;
    if status != StatusCode::OK {
        return Err(format!("{metrics_url}/metrics answered {status}"));
    }
    let page = String::from_utf8_lossy(&page);
    let name = "mlflow_proxy_auth_decisions_total";
    Ok((
        stack::metric_value(&page, name, &[("source", "mlflow")]),
        stack::metric_value(&page, name, &[("source", "cache")]),
    ))
}

fn run() -> Result<(), String> {
    let config = Config::from_env();
    let root = setup::workspace_root();
    println!(
        "mlflow-artifact-proxy auth bench ({} variant: {} sequential GETs of a 1 KiB artifact per row, rounds of {}); load average {}",
        if config.quick { "quick" } else { "full" },
        config.requests,
        config.round,
        procs::load_average()
    );
    let proxy_bin = procs::proxy_binary(&root)?;
    let work = Scratch::create("mlflow-proxy-bench-auth")?;
    let work = work.path();

    let (store, s3) = stack::start_s3s_fs_bucket(work)?;
    println!("  S3 store: {} at {}", store.kind, store.url);
    let auth = MlflowAuth {
        admin_username: ADMIN.to_owned(),
        admin_password: ADMIN_PASSWORD.to_owned(),
        default_permission: "READ".to_owned(),
        cache_ttl_secs: 5,
    };
    println!("  starting stock MLflow with its basic-auth app (up to 240 s)");
    let started = Instant::now();
    let mlflow = stack::start_mlflow(&root, work, &s3, Some(&auth), Duration::from_secs(240))?;
    println!(
        "  {} at {} (healthy after {:.0} s)",
        mlflow.kind,
        mlflow.url,
        started.elapsed().as_secs_f64()
    );
    let runtime = setup::client_runtime()?;

    let admin = MlflowApi {
        url: mlflow.url.clone(),
        authorization: stack::basic_auth(ADMIN, ADMIN_PASSWORD),
    };
    let data = client::pattern().slice(..SIZE);
    let artifact = runtime.block_on(world::create(&admin, &data))?;
    let path = format!("/api/2.0/mlflow-artifacts/artifacts/{artifact}");
    println!("  artifact: {path} ({SIZE} bytes), GET as {READER:?} (READ on the experiment)");

    let on = |ttl: &str| {
        vec![
            ("PROXY_MLFLOW_AUTH", "on".to_owned()),
            ("PROXY_MLFLOW_AUTH_CACHE_TTL_SECS", ttl.to_owned()),
        ]
    };
    let cached = stack::start_proxy(
        &proxy_bin,
        "proxy (auth on, cached)",
        &mlflow.url,
        &s3,
        &on("600"),
    )?;
    let uncached = stack::start_proxy(
        &proxy_bin,
        "proxy (auth on, uncached)",
        &mlflow.url,
        &s3,
        &on("0"),
    )?;
    let off = stack::start_proxy(
        &proxy_bin,
        "proxy (auth off)",
        &mlflow.url,
        &s3,
        &[("PROXY_MLFLOW_AUTH", "off".to_owned())],
    )?;
    println!("  proxy: {}", proxy_bin.display());

    // Each target is what its row says.
    runtime.block_on(world::check(
        &[
            ("auth on, cached", &cached.url, true),
            ("auth on, uncached", &uncached.url, true),
            ("stock MLflow", &mlflow.url, true),
            ("auth off", &off.url, false),
        ],
        &path,
        &data,
    ))?;

    let reader = stack::basic_auth(READER, READER_PASSWORD);
    let direct = runtime.block_on(stack::presign_get(&s3, &artifact))?;
    let direct = Target::parse(&direct)?;
    let store_url = store.url.clone();
    let ka = Connection::KeepAlive;
    let r = Some(reader.as_str());
    let mut rows = [
        Row::new("auth on, cached", &cached.url, &path, r, ka, Some(&cached)),
        Row::new(
            "auth on, uncached",
            &uncached.url,
            &path,
            r,
            ka,
            Some(&uncached),
        ),
        Row::new("auth off", &off.url, &path, r, ka, Some(&off)),
        Row::new("stock MLflow (auth app)", &mlflow.url, &path, r, ka, None),
        Row::new(
            "stock MLflow (auth app), new connection per request",
            &mlflow.url,
            &path,
            r,
            Connection::New,
            None,
        ),
        Row::new(
            "direct to s3s-fs (presigned GET, no auth)",
            &store_url,
            &direct.path_and_query,
            None,
            ka,
            None,
        ),
    ];

    // CPU of the serving proxy, MLflow's process tree (its uvicorn workers) and s3s-fs.
    let mlflow_root = mlflow.process.pid();
    let mut mlflow_pids = procs::descendants(mlflow_root);
    mlflow_pids.push(mlflow_root);
    let store_pid = store.process.pid();
    let cpu_of = |proxy: Option<u32>| -> [f64; 3] {
        [
            proxy.map_or(0.0, procs::cpu_secs),
            mlflow_pids.iter().map(|p| procs::cpu_secs(*p)).sum(),
            procs::cpu_secs(store_pid),
        ]
    };
    let ours = {
        let mut pids = vec![
            std::process::id(),
            store_pid,
            cached.process.pid(),
            uncached.process.pid(),
            off.process.pid(),
        ];
        pids.extend(&mlflow_pids);
        pids
    };
    let ours_cpu = || ours.iter().map(|p| procs::cpu_secs(*p)).sum::<f64>();

    let (busy, waited) =
        procs::wait_quiet(0.5, Duration::from_secs(if config.quick { 5 } else { 30 }));
    let load_before = procs::load_average();
    println!(
        "  measuring: other work {busy:.2} cores after waiting {waited:.0} s for a quiet machine; load average {load_before}"
    );
    let before_cached = runtime.block_on(decisions(&cached.metrics_url))?;
    let before_uncached = runtime.block_on(decisions(&uncached.metrics_url))?;
    let (machine0, ours0, wall) = (procs::machine_busy_secs(), ours_cpu(), Instant::now());
    let rounds = config.requests / config.round;
    runtime.block_on(async {
        for round in 0..rounds {
            let n = rows.len();
            for i in 0..n {
                let row = &mut rows[(i + round) % n];
                measure_round(row, config.round, &data, &cpu_of).await?;
            }
        }
        Ok::<_, String>(())
    })?;
    let wall = wall.elapsed().as_secs_f64();
    let foreign_cores =
        ((procs::machine_busy_secs() - machine0) - (ours_cpu() - ours0)).max(0.0) / wall;
    let load_after = procs::load_average();
    let after_cached = runtime.block_on(decisions(&cached.metrics_url))?;
    let after_uncached = runtime.block_on(decisions(&uncached.metrics_url))?;

    // What the proxies' own counters say about the cache: the uncached proxy asked MLflow for
    // every request it served, the cached one for none.
    let asked = [
        (
            after_cached.0 - before_cached.0,
            after_cached.1 - before_cached.1,
        ),
        (
            after_uncached.0 - before_uncached.0,
            after_uncached.1 - before_uncached.1,
        ),
    ];
    if asked[1] != (report::served(&rows[1]), 0.0) {
        return Err(format!(
            "the uncached proxy asked MLflow {} times and its cache {} times for {} requests",
            asked[1].0,
            asked[1].1,
            report::served(&rows[1])
        ));
    }
    if asked[0] != (0.0, report::served(&rows[0])) {
        return Err(format!(
            "the cached proxy asked MLflow {} times and its cache {} times for {} requests",
            asked[0].0,
            asked[0].1,
            report::served(&rows[0])
        ));
    }

    report::print_and_write(
        &config,
        &rows,
        &Measured {
            asked,
            wall,
            foreign_cores,
            load_before,
            load_after,
            store: &store.kind,
            mlflow: &mlflow.kind,
            proxy_bin: &proxy_bin,
        },
    )
}
