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

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use benches::client::{self, Target};
use benches::procs;
use benches::servers;
use benches::setup::{self, ACCESS_KEY, SECRET_KEY};
use benches::stack::{self, MlflowApi, MlflowAuth, S3Access};
use benches::stats::{self, percentile};
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::client::conn::http1::SendRequest;
use serde_json::{Value, json};

const BUCKET: &str = "bench";
const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "bench-admin-password-1";
const READER: &str = "reader";
const READER_PASSWORD: &str = "reader-password-1";
const DENIED: &str = "denied";
const DENIED_PASSWORD: &str = "denied-password-1";
const SIZE: usize = 1024;
/// Unmeasured requests after (re)opening a kept-alive connection.
const WARM: usize = 3;
/// A kept-alive connection idle this long is re-opened before its next round (uvicorn closes
/// idle connections after 5 s).
const MAX_IDLE: Duration = Duration::from_secs(3);

fn main() {
    setup::bench_main(run);
}

struct Config {
    quick: bool,
    /// Measured requests per row.
    requests: usize,
    /// Requests per row in one round.
    round: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let round = if quick { 20 } else { 50 };
        let requests = std::env::var("BENCH_AUTH_REQUESTS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(if quick { 200 } else { 1000 })
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Connection {
    KeepAlive,
    New,
}

/// One measured row.
struct Row {
    name: &'static str,
    url: String,
    /// Request-target and credentials (None: a presigned URL, which carries its own).
    path: String,
    authorization: Option<String>,
    connection: Connection,
    /// The proxy serving it (None: MLflow itself).
    proxy_pid: Option<u32>,
    millis: Vec<f64>,
    /// CPU seconds over the measured requests: the serving proxy, MLflow's tree, s3s-fs.
    cpu: [f64; 3],
    /// Unmeasured requests sent (warm-ups), and connections re-opened.
    unmeasured: usize,
    reconnects: usize,
    sender: Option<(SendRequest<client::ReqBody>, Instant)>,
}

impl Row {
    fn new(
        name: &'static str,
        url: &str,
        path: &str,
        authorization: Option<&str>,
        connection: Connection,
        proxy: Option<&stack::Proxy>,
    ) -> Row {
        Row {
            name,
            url: url.to_owned(),
            path: path.to_owned(),
            authorization: authorization.map(str::to_owned),
            connection,
            proxy_pid: proxy.map(|p| p.process.pid()),
            millis: Vec::new(),
            cpu: [0.0; 3],
            unmeasured: 0,
            reconnects: 0,
            sender: None,
        }
    }
}

/// GET the artifact on an open connection; anything but 200 with exactly `data` is an error.
async fn get_on(
    sender: &mut SendRequest<client::ReqBody>,
    target: &Target,
    path: &str,
    authorization: Option<&str>,
    data: &Bytes,
) -> Result<(), String> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let (status, body) =
        stack::send_on(sender, target, Method::GET, path, &headers, Bytes::new()).await?;
    if status != StatusCode::OK || body != *data {
        return Err(format!(
            "GET {}{path} answered {status} with {} bytes ({})",
            target.addr,
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(())
}

/// One round of `n` measured GETs on `row`'s target.
async fn measure_round(
    row: &mut Row,
    n: usize,
    data: &Bytes,
    cpu_pids: &dyn Fn(Option<u32>) -> [f64; 3],
) -> Result<(), String> {
    let target = Target::parse(&row.url)?;
    let (path, authorization) = (row.path.clone(), row.authorization.clone());
    let (path, authorization) = (path.as_str(), authorization.as_deref());
    if row.connection == Connection::KeepAlive {
        let stale = row
            .sender
            .as_ref()
            .is_none_or(|(s, used)| s.is_closed() || used.elapsed() >= MAX_IDLE);
        if stale {
            if row.sender.is_some() {
                row.reconnects += 1;
            }
            let mut sender = client::connect(target.addr).await?;
            for _ in 0..WARM {
                get_on(&mut sender, &target, path, authorization, data).await?;
            }
            row.unmeasured += WARM;
            row.sender = Some((sender, Instant::now()));
        }
    }
    let before = cpu_pids(row.proxy_pid);
    for _ in 0..n {
        let started = Instant::now();
        match (&mut row.sender, row.connection) {
            (Some((sender, _)), Connection::KeepAlive) => {
                get_on(sender, &target, path, authorization, data).await?;
            }
            _ => {
                let mut fresh = client::connect(target.addr).await?;
                get_on(&mut fresh, &target, path, authorization, data).await?;
            }
        }
        row.millis.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let after = cpu_pids(row.proxy_pid);
    for (i, cpu) in row.cpu.iter_mut().enumerate() {
        *cpu += after[i] - before[i];
    }
    if let Some((_, used)) = &mut row.sender {
        *used = Instant::now();
    }
    Ok(())
}

/// The status of one GET of `path` on `url` as `authorization` (None: anonymous).
async fn status_of(
    url: &str,
    path: &str,
    authorization: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    stack::send(url, Method::GET, path, &headers, Bytes::new()).await
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    println!(
        "mlflow-artifact-proxy auth bench ({} variant: {} sequential GETs of a 1 KiB artifact per row, rounds of {}); load average {}",
        if config.quick { "quick" } else { "full" },
        config.requests,
        config.round,
        procs::load_average()
    );
    let proxy_bin = procs::proxy_binary(&root)?;
    let tools = std::env::var_os("MLFLOW_STACK_TOOLS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/mlflow-stack/tools")
        },
        PathBuf::from,
    );
    let work = std::env::temp_dir().join(format!("mlflow-proxy-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let _cleanup = Cleanup(work.clone());

    let store = servers::start_s3_store("s3s-fs", &tools, &work, ACCESS_KEY, SECRET_KEY)?;
    // s3s-fs keeps a bucket as a folder under its root.
    std::fs::create_dir_all(work.join("s3s-fs").join(BUCKET)).map_err(|e| e.to_string())?;
    println!("  S3 store: {} at {}", store.kind, store.url);
    let s3 = S3Access {
        url: store.url.clone(),
        bucket: BUCKET.to_owned(),
        access_key: ACCESS_KEY.to_owned(),
        secret_key: SECRET_KEY.to_owned(),
        region: store.region.to_owned(),
    };
    let auth = MlflowAuth {
        admin_username: ADMIN.to_owned(),
        admin_password: ADMIN_PASSWORD.to_owned(),
        default_permission: "READ".to_owned(),
        cache_ttl_secs: 5,
    };
    println!("  starting stock MLflow with its basic-auth app (up to 240 s)");
    let started = Instant::now();
    let mlflow = stack::start_mlflow(&root, &work, &s3, Some(&auth), Duration::from_secs(240))?;
    println!(
        "  {} at {} (healthy after {:.0} s)",
        mlflow.kind,
        mlflow.url,
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    // The world: an experiment and a run made by the admin, one reader (READ grant), one user
    // with DENY, and the artifact, written through MLflow's own artifact route.
    let admin = MlflowApi {
        url: mlflow.url.clone(),
        authorization: stack::basic_auth(ADMIN, ADMIN_PASSWORD),
    };
    let data = client::pattern().slice(..SIZE);
    let artifact = runtime.block_on(async {
        for (user, password) in [(READER, READER_PASSWORD), (DENIED, DENIED_PASSWORD)] {
            admin
                .post(
                    "/api/2.0/mlflow/users/create",
                    &json!({"username": user, "password": password}),
                )
                .await?;
        }
        let exp = admin
            .post(
                "/api/2.0/mlflow/experiments/create",
                &json!({"name": "bench-auth"}),
            )
            .await?["experiment_id"]
            .as_str()
            .ok_or("experiments/create: no experiment_id")?
            .to_owned();
        let run = admin
            .post(
                "/api/2.0/mlflow/runs/create",
                &json!({"experiment_id": exp}),
            )
            .await?["run"]["info"]["run_id"]
            .as_str()
            .ok_or("runs/create: no run_id")?
            .to_owned();
        for (user, permission) in [(READER, "READ"), (DENIED, "DENY")] {
            admin
                .post(
                    "/api/3.0/mlflow/users/permissions/grant",
                    &json!({"username": user, "resource_type": "experiment", "resource_id": exp, "permission": permission}),
                )
                .await?;
        }
        let artifact = format!("{exp}/{run}/artifacts/small.bin");
        admin.put_artifact(&artifact, data.clone()).await?;
        Ok::<_, String>(artifact)
    })?;
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

    let reader = stack::basic_auth(READER, READER_PASSWORD);
    let denied = stack::basic_auth(DENIED, DENIED_PASSWORD);
    // Each target is what its row says.
    runtime.block_on(async {
        for (name, url, checks) in [
            ("auth on, cached", &cached.url, true),
            ("auth on, uncached", &uncached.url, true),
            ("stock MLflow", &mlflow.url, true),
            ("auth off", &off.url, false),
        ] {
            let (status, body) = status_of(url, &path, Some(&reader)).await?;
            if status != StatusCode::OK || body != data {
                return Err(format!("{name}: the reader's GET answered {status} ({} bytes)", body.len()));
            }
            let anonymous = status_of(url, &path, None).await?.0;
            let refused = status_of(url, &path, Some(&denied)).await?.0;
            let expected = if checks {
                (StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN)
            } else {
                (StatusCode::OK, StatusCode::OK)
            };
            if (anonymous, refused) != expected {
                return Err(format!(
                    "{name}: anonymous {anonymous}, DENY user {refused}; expected {} and {}",
                    expected.0, expected.1
                ));
            }
            println!("  check {name}: reader 200 (same bytes), anonymous {anonymous}, DENY user {refused}");
        }
        Ok::<_, String>(())
    })?;

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
    let served = |row: &Row| (row.millis.len() + row.unmeasured) as f64;
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
    if asked[1] != (served(&rows[1]), 0.0) {
        return Err(format!(
            "the uncached proxy asked MLflow {} times and its cache {} times for {} requests",
            asked[1].0,
            asked[1].1,
            served(&rows[1])
        ));
    }
    if asked[0] != (0.0, served(&rows[0])) {
        return Err(format!(
            "the cached proxy asked MLflow {} times and its cache {} times for {} requests",
            asked[0].0,
            asked[0].1,
            served(&rows[0])
        ));
    }

    let base = percentile(&rows[2].millis, 50.0);
    let base99 = percentile(&rows[2].millis, 99.0);
    println!(
        "\n== small-artifact GET (1 KiB), {} requests per row, sequential, as a user with READ; ms ==",
        config.requests
    );
    println!(
        "\n| | median | p90 | p99 | median / auth-off | p99 / auth-off | MLflow checks | CPU ms per request: proxy / MLflow / s3s-fs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json_rows = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let (p50, p90, p99) = (
            percentile(&row.millis, 50.0),
            percentile(&row.millis, 90.0),
            percentile(&row.millis, 99.0),
        );
        let n = row.millis.len() as f64;
        let per = row.cpu.map(|c| c * 1000.0 / n);
        let checks = match i {
            0 => format!("{} of {}", asked[0].0, served(row)),
            1 => format!("{} of {}", asked[1].0, served(row)),
            2 => "none (off)".to_owned(),
            3 | 4 => "its own".to_owned(),
            _ => "none (direct)".to_owned(),
        };
        let proxy_cpu = if row.proxy_pid.is_some() {
            format!("{:.2}", per[0])
        } else {
            "-".to_owned()
        };
        println!(
            "| {} | {p50:.2} | {p90:.2} | {p99:.2} | {:.2} | {:.2} | {checks} | {proxy_cpu} / {:.2} / {:.2} |",
            row.name,
            p50 / base.max(1e-9),
            p99 / base99.max(1e-9),
            per[1],
            per[2]
        );
        json_rows.push(json!({
            "row": row.name,
            "connection": if row.connection == Connection::KeepAlive { "keep-alive" } else { "new per request" },
            "requests": row.millis.len(),
            "median_ms": stats::round(p50, 3), "p90_ms": stats::round(p90, 3), "p99_ms": stats::round(p99, 3),
            "median_over_auth_off": stats::round(p50 / base.max(1e-9), 3),
            "p99_over_auth_off": stats::round(p99 / base99.max(1e-9), 3),
            "cpu_ms_per_request": {"proxy": row.proxy_pid.map(|_| stats::round(per[0], 3)), "mlflow": stats::round(per[1], 3), "s3s_fs": stats::round(per[2], 3)},
            "unmeasured_requests": row.unmeasured,
            "reconnects": row.reconnects,
            "metrics": match i {
                0 => json!({"asked_mlflow": asked[0].0, "from_cache": asked[0].1}),
                1 => json!({"asked_mlflow": asked[1].0, "from_cache": asked[1].1}),
                _ => Value::Null,
            },
        }));
    }
    println!(
        "\nmeasured in {wall:.1} s; other work on the machine: {foreign_cores:.2} cores on average (of {}); load average {load_before} before, {load_after} after",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("MLflow: {}; proxies: {}", mlflow.kind, proxy_bin.display());

    let out_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let out = out_dir.join("bench-auth.json");
    let report: Value = json!({
        "config": {"variant": if config.quick { "quick" } else { "full" }, "requests_per_row": config.requests,
            "round": config.round, "artifact_bytes": SIZE, "store": store.kind, "mlflow": mlflow.kind,
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "machine": {"foreign_cores": stats::round(foreign_cores, 3), "load_average_before": load_before,
            "load_average_after": load_after, "measured_secs": stats::round(wall, 3)},
        "rows": json_rows,
    });
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("JSON: {}", out.display());
    Ok(())
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
