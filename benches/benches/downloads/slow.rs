//! Slow readers: clients that read a large download at a few MiB/s, then hang up. The proxy's
//! read-ahead must stop when they do not read: its download budget, S3 GETs and memory stay
//! bounded.

use std::time::{Duration, Instant};

use benches::client::{self, MIB, Target, artifact_url};
use benches::procs::{self, Sampler, load_average};
use benches::stack::{self, metric_value};
use benches::stats::round;
use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::json;

use crate::{BIG, Bench, Report};

/// The value of a series in a proxy's `/metrics` (0 when it cannot be read or is absent).
async fn scrape(metrics_url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    match stack::send(metrics_url, Method::GET, "/metrics", &[], Bytes::new()).await {
        Ok((status, page)) if status.is_success() => {
            metric_value(&String::from_utf8_lossy(&page), name, labels)
        }
        _ => 0.0,
    }
}

/// Read `url` at about `rate` bytes/s for `secs`, then drop the connection. Bytes read.
async fn slow_read(url: String, rate: u64, secs: f64) -> Result<u64, String> {
    let target = Target::parse(&url)?;
    let mut sender = client::connect(target.addr).await?;
    let response = sender
        .send_request(target.request(http::Method::GET, client::empty())?)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = response.into_body();
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes += data.len() as u64;
                }
            }
            _ => break,
        }
        let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(bytes)
}

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime, proxy) = (&bench.config, &bench.runtime, &bench.proxy);
    println!(
        "\n== {} slow readers at {} MiB/s for {} s of a {} MiB object (load average {}) ==",
        config.slow_readers,
        config.slow_rate / MIB,
        config.slow_secs,
        config.size / MIB,
        load_average()
    );
    let pid = proxy.process.pid();
    procs::reset_peak(pid);
    let rss_before = procs::rss_kib(pid);
    let sampler = Sampler::start(vec![pid], Vec::new(), Vec::new());
    let get_objects = (
        "mlflow_proxy_s3_requests_total",
        [("operation", "get_object"), ("outcome", "ok")],
    );
    let gets_before = runtime.block_on(scrape(&proxy.metrics, get_objects.0, &get_objects.1));
    let (bytes, budget_peak) = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..config.slow_readers {
            tasks.push(tokio::spawn(slow_read(
                artifact_url(&proxy.url, BIG),
                config.slow_rate,
                config.slow_secs,
            )));
        }
        let mut budget_peak: f64 = 0.0;
        while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
            let v = scrape(
                &proxy.metrics,
                "mlflow_proxy_download_budget_in_use_bytes",
                &[],
            )
            .await;
            budget_peak = budget_peak.max(v);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut bytes = 0;
        for t in tasks {
            bytes += t.await.map_err(|e| e.to_string())??;
        }
        Ok::<_, String>((bytes, budget_peak))
    })?;
    let gets =
        runtime.block_on(scrape(&proxy.metrics, get_objects.0, &get_objects.1)) - gets_before;
    let samples = sampler.finish();
    let peak = procs::hwm_kib(pid).max(samples.peak_rss_kib.get(&pid).copied().unwrap_or(0));
    report.row(format!(
        "slow readers: {:.1} MiB read, {gets} GETs, budget peak {:.1} MiB, proxy RSS {:.1} → peak {:.1} MiB",
        bytes as f64 / MIB as f64,
        budget_peak / MIB as f64,
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0
    ));
    report.insert("slow_readers", json!({"readers": config.slow_readers, "rate_mib_s": config.slow_rate / MIB,
        "secs": config.slow_secs, "bytes_read": bytes, "get_objects": gets, "budget_peak_bytes": budget_peak,
        "proxy_rss_before_mib": round(rss_before as f64 / 1024.0, 1), "proxy_peak_rss_mib": round(peak as f64 / 1024.0, 1)}));
    Ok(())
}
