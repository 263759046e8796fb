//! Small requests: latency (p50 / p99) and req/s of sequential small GETs, on one kept-alive
//! connection (also over 4 connections at once) and on a new connection each: the artifact list
//! of 20 small files (vs ListObjectsV2 straight to s3s-fs) and pass-through to the MLflow
//! stand-in (vs the stand-in directly). `run_cases` also serves `stock_mlflow.rs`.

use benches::client::{self, Latencies, artifact_url};
use benches::s3store::presign_list;
use benches::stats::{percentile, round};
use serde_json::json;

use crate::Bench;
use crate::report::{Report, ratio};
use crate::watch::Watch;

/// The artifact list the small-request cases ask for (20 files, `seed_small_files`).
pub const LIST_PATH: &str = "/api/2.0/mlflow-artifacts/artifacts?path=small";
/// A pass-through call MLflow answers with a little JSON.
pub const PASS_PATH: &str = "/api/2.0/mlflow/experiments/get?experiment_id=0";

/// One case: what is asked through the proxy and what it is compared with.
pub struct SmallCase {
    pub label: String,
    /// The URL through the proxy.
    pub proxy_url: String,
    /// The URL of the reference, if there is one.
    pub direct_url: Option<String>,
    /// How the reference is named in the table.
    pub direct_label: String,
    /// The proxy's pid, for the watch.
    pub proxy_pid: Option<u32>,
}

/// Upload the 20 small files to list, through each proxy (once per run).
pub fn seed_small_files(bench: &Bench) -> Result<(), String> {
    if bench.small_files_seeded.replace(true) {
        return Ok(());
    }
    for proxy in [&bench.proxy_s3, &bench.proxy_null] {
        for i in 0..20 {
            bench.runtime.block_on(client::upload(
                &artifact_url(&proxy.url, &format!("small/file-{i:02}.txt")),
                4096,
                bench.chunk.clone(),
                true,
            ))?;
        }
    }
    Ok(())
}

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    println!(
        "\n== small requests, {} sequential (p50 / p99 ms, req/s) ==",
        bench.config.small_n
    );
    seed_small_files(bench)?;
    let direct_list = bench
        .runtime
        .block_on(presign_list(&bench.s3_bucket, "small/"))?;
    let (proxy_s3, proxy_null) = (&bench.proxy_s3, &bench.proxy_null);
    let stand_in_url = &bench.servers.stand_in_url;
    let cases = [
        SmallCase {
            label: "artifact list ?path=small (20 files), s3s-fs".into(),
            proxy_url: format!("{}{LIST_PATH}", proxy_s3.url),
            direct_url: Some(direct_list),
            direct_label: "ListObjectsV2 direct".into(),
            proxy_pid: Some(proxy_s3.pid()),
        },
        SmallCase {
            label: "artifact list ?path=small (20 files), null store".into(),
            proxy_url: format!("{}{LIST_PATH}", proxy_null.url),
            direct_url: None,
            direct_label: String::new(),
            proxy_pid: Some(proxy_null.pid()),
        },
        SmallCase {
            label: "pass-through experiments/get → stand-in".into(),
            proxy_url: format!("{}{PASS_PATH}", proxy_s3.url),
            direct_url: Some(format!("{stand_in_url}{PASS_PATH}")),
            direct_label: "stand-in direct".into(),
            proxy_pid: Some(proxy_s3.pid()),
        },
        SmallCase {
            label: "pass-through /health → stand-in".into(),
            proxy_url: format!("{}/health", proxy_s3.url),
            direct_url: Some(format!("{stand_in_url}/health")),
            direct_label: "stand-in direct".into(),
            proxy_pid: Some(proxy_s3.pid()),
        },
    ];
    run_cases(bench, report, &cases, bench.config.small_n)
}

/// Each case `n` times in a row, with keep-alive and with a new connection each, proxy then
/// reference; one row each.
pub fn run_cases(
    bench: &Bench,
    report: &mut Report,
    cases: &[SmallCase],
    n: usize,
) -> Result<(), String> {
    let runtime = &bench.runtime;
    let show = |l: &Latencies| {
        let p50 = percentile(&l.millis, 50.0);
        let p99 = percentile(&l.millis, 99.0);
        let rps = l.millis.len() as f64 / l.wall_secs.max(1e-9);
        (p50, p99, rps)
    };
    for case in cases {
        let label = &case.label;
        for keep_alive in [true, false] {
            bench.quiet();
            let w = Watch::begin(
                &format!(
                    "{label}, {}",
                    if keep_alive {
                        "keep-alive"
                    } else {
                        "new connection"
                    }
                ),
                case.proxy_pid,
                Vec::new(),
                None,
                None,
            );
            let p = runtime.block_on(client::small_requests(&case.proxy_url, n, keep_alive))?;
            let p_rps4 = if keep_alive {
                runtime.block_on(client::small_rps(&case.proxy_url, 4, n / 4))?
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
            if let Some(direct) = &case.direct_url {
                let direct_label = &case.direct_label;
                bench.quiet();
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
            report
                .summary
                .insert(format!("p50_ms {label}, {conn}"), json!(round(pp50, 3)));
            report.scenarios.push(entry);
        }
    }
    Ok(())
}
