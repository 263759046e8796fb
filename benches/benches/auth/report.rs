//! The auth bench's table (median, p90, p99 against the auth-off proxy, MLflow checks, CPU per
//! request) and `target/bench-auth.json`.

use std::path::Path;

use benches::setup;
use benches::stats::{self, percentile};
use serde_json::{Value, json};

use crate::rows::{Connection, Row};
use crate::{Config, SIZE};

/// What the run measured besides the rows.
pub struct Measured<'a> {
    /// (MLflow checks, cache answers) of the cached and the uncached proxy.
    pub asked: [(f64, f64); 2],
    pub wall: f64,
    pub foreign_cores: f64,
    pub load_before: String,
    pub load_after: String,
    pub store: &'a str,
    pub mlflow: &'a str,
    pub proxy_bin: &'a Path,
}

/// Requests a row's target served, measured or not.
pub fn served(row: &Row) -> f64 {
    (row.millis.len() + row.unmeasured) as f64
}

pub fn print_and_write(config: &Config, rows: &[Row], measured: &Measured) -> Result<(), String> {
    let (asked, wall, foreign_cores) = (measured.asked, measured.wall, measured.foreign_cores);
    let (load_before, load_after) = (&measured.load_before, &measured.load_after);
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
    println!(
        "MLflow: {}; proxies: {}",
        measured.mlflow,
        measured.proxy_bin.display()
    );

    let out_dir = setup::target_dir();
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let out = out_dir.join("bench-auth.json");
    let report: Value = json!({
        "config": {"variant": if config.quick { "quick" } else { "full" }, "requests_per_row": config.requests,
            "round": config.round, "artifact_bytes": SIZE, "store": measured.store, "mlflow": measured.mlflow,
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
