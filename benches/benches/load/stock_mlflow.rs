//! Stock MLflow: the proxy against stock MLflow's own artifact serving, both on the same s3s-fs
//! (unless a running server with its own store is used). Small requests (pass-through and the
//! artifact list) and one large upload and download, A/B interleaved; rows: latency, MiB/s,
//! time to first byte, and stock's server tree peak RSS and temp disk peak.
//!
//! Which MLflow: `MLFLOW_BENCH_STOCK_URL`, else a server on 127.0.0.1:5001, else (full variant,
//! or BENCH_STOCK=1) one started by the bench (`benches::stock`); BENCH_STOCK=0 skips it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use benches::client::{self, MIB, Transfer, artifact_url};
use benches::procs;
use benches::stats::{round, spread};
use benches::stock::{StockMlflow, mlflow_executable, start_stock_mlflow};
use serde_json::json;

use crate::Bench;
use crate::report::{Report, ratio, spread_ms};
use crate::small_requests::{LIST_PATH, PASS_PATH, SmallCase, run_cases, seed_small_files};
use crate::watch::Watch;

/// The stock MLflow the scenario compares with.
struct Stock {
    url: String,
    /// Root of its process tree, when found: its RSS and CPU are sampled.
    root: Option<u32>,
    /// Its TMPDIR, when known: its size is sampled.
    temp_dir: Option<PathBuf>,
    /// Whether it stores in the bench's s3s-fs.
    same_store: bool,
    /// Set when the bench started it (stopped when dropped).
    owned: Option<StockMlflow>,
}

/// A running server (MLFLOW_BENCH_STOCK_URL or 127.0.0.1:5001), else one started here when the
/// variant and BENCH_STOCK allow it; None (with a note) when there is none.
fn find_or_start_stock(bench: &Bench, report: &mut Report) -> Result<Option<Stock>, String> {
    let runtime = &bench.runtime;
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
        _ if bench.config.quick => {
            report.note("stock MLflow: skipped in the quick variant (starting it takes a minute; BENCH_STOCK=1 starts it anyway, MLFLOW_BENCH_STOCK_URL uses a running one)".into());
            return Ok(None);
        }
        _ => {}
    }
    let Some(bin) = mlflow_executable() else {
        report.note("stock MLflow: skipped (no MLFLOW_BENCH_STOCK_URL, nothing on 127.0.0.1:5001, no mlflow executable found)".into());
        return Ok(None);
    };
    let started = runtime.block_on(start_stock_mlflow(&bin, bench.work.path(), &bench.s3.url));
    let owned = match started {
        Ok(owned) => owned,
        Err(e) => {
            report.note(format!("stock MLflow: skipped, {e}"));
            return Ok(None);
        }
    };
    report.note(format!(
        "stock MLflow: started by the bench ({} server --serve-artifacts, default 4 uvicorn workers, SQLite backend, same s3s-fs), TMPDIR sampled",
        bin.display()
    ));
    Ok(Some(Stock {
        url: owned.url.clone(),
        root: Some(owned.pid()),
        temp_dir: Some(owned.temp_dir.clone()),
        same_store: true,
        owned: Some(owned),
    }))
}

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime, chunk) = (&bench.config, &bench.runtime, &bench.chunk);
    println!("\n== stock MLflow ==");
    let Some(stock) = find_or_start_stock(bench, report)? else {
        return Ok(());
    };
    // The artifact list below compares the same 20 files.
    seed_small_files(bench)?;
    let mut proxy_ml = bench.fresh_proxy(
        "proxy (s3s-fs, real MLflow upstream)",
        &bench.s3.url,
        &stock.url,
    )?;
    let cases = [
        SmallCase {
            label: "pass-through /health → MLflow".into(),
            proxy_url: format!("{}/health", proxy_ml.url),
            direct_url: Some(format!("{}/health", stock.url)),
            direct_label: "MLflow direct".into(),
            proxy_pid: Some(proxy_ml.pid()),
        },
        SmallCase {
            label: "pass-through experiments/get → MLflow".into(),
            proxy_url: format!("{}{PASS_PATH}", proxy_ml.url),
            direct_url: Some(format!("{}{PASS_PATH}", stock.url)),
            direct_label: "MLflow direct".into(),
            proxy_pid: Some(proxy_ml.pid()),
        },
        SmallCase {
            label: format!(
                "artifact list ?path=small, proxy vs stock MLflow{}",
                if stock.same_store {
                    ""
                } else {
                    " (other store)"
                }
            ),
            proxy_url: format!("{}{LIST_PATH}", proxy_ml.url),
            direct_url: Some(format!("{}{LIST_PATH}", stock.url)),
            direct_label: "stock MLflow".into(),
            proxy_pid: Some(proxy_ml.pid()),
        },
    ];
    run_cases(bench, report, &cases, config.stock_small_n)?;

    let s3_pid = bench.s3.process.pid();
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
                bench.quiet();
                let w = if side == "proxy" {
                    Watch::begin(
                        &format!("{dir} via proxy, round {r}"),
                        Some(proxy_ml.pid()),
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
                    runtime.block_on(client::upload(&url, config.size, chunk.clone(), true))?
                } else {
                    runtime.block_on(client::download(&url, Some(config.size)))?
                };
                let w = w.end();
                stock_rss = stock_rss.max(w["stock_tree_peak_rss_mib"].as_f64().unwrap_or(0.0));
                stock_temp = stock_temp.max(w["stock_temp_peak_mib"].as_f64().unwrap_or(0.0));
                proxy_rss = proxy_rss.max(w["proxy_peak_rss_mib"].as_f64().unwrap_or(0.0));
                report.scenarios.push(w);
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
        report.summary.insert(
            format!("{dir}_proxy_over_stock"),
            json!(round(p.median / s.median, 3)),
        );
        report.scenarios.push(json!({"scenario": format!("{dir} proxy vs stock MLflow"), "size_mib": config.size / MIB,
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
    report
        .summary
        .insert("stock_tree_peak_rss_mib".into(), json!(stock_rss));
    report
        .summary
        .insert("stock_temp_peak_mib".into(), json!(stock_temp));
    report.json_insert(
        "stock",
        json!({"url": stock.url, "started_by_bench": stock.owned.is_some(),
            "same_s3_server": stock.same_store, "root_pid": stock.root,
            "temp_dir": stock.temp_dir.as_ref().map(|d| d.display().to_string())}),
    );
    proxy_ml.process.check_alive()?;
    report
        .writes
        .push((proxy_ml.process.name.clone(), proxy_ml.write_bytes()));
    Ok(())
}
