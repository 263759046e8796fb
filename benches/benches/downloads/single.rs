//! One large download, every side interleaved round by round: the proxy (defaults and
//! parallelism 1), one presigned GET straight to the store, boto3 `download_file` and stock
//! MLflow (when they are there).

use benches::client::{self, MIB, Transfer, artifact_url};
use benches::procs::load_average;
use benches::stats::{round, spread};
use serde_json::{Value, json};

use crate::measure::{Cpu, Side};
use crate::{BIG, Bench, Report, boto3};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime) = (&bench.config, &bench.runtime);
    let (proxy, proxy_single) = (&bench.proxy, &bench.proxy_single);
    println!(
        "\n== one {} MiB download (load average {}) ==",
        config.size / MIB,
        load_average()
    );
    let presigned = runtime
        .block_on(bench.s3_bucket.presign_get(BIG, 3600, None))
        .map_err(|e| e.to_string())?;
    let mut sides: Vec<(&str, Side)> = vec![
        ("proxy", Side::default()),
        ("proxy, parallelism 1", Side::default()),
        ("direct presigned GET", Side::default()),
    ];
    if bench.python.is_some() {
        sides.push(("boto3 download_file", Side::default()));
    }
    if bench.stock.is_some() {
        sides.push(("stock MLflow", Side::default()));
    }
    for r in 0..config.rounds {
        let n = sides.len();
        for k in 0..n {
            let i = (k + r) % n;
            let name = sides[i].0;
            let mut pids = vec![("s3s-fs".to_owned(), bench.s3_pid(), false)];
            let url = match name {
                "proxy" => {
                    pids.push(("proxy".into(), proxy.process.pid(), false));
                    Some(artifact_url(&proxy.url, BIG))
                }
                "proxy, parallelism 1" => {
                    pids.push(("proxy".into(), proxy_single.process.pid(), false));
                    Some(artifact_url(&proxy_single.url, BIG))
                }
                "direct presigned GET" => Some(presigned.clone()),
                "stock MLflow" => {
                    let s = bench.stock.as_ref().ok_or("no stock")?;
                    pids.push(("stock MLflow tree".into(), s.pid(), true));
                    Some(artifact_url(&s.url, BIG))
                }
                _ => None,
            };
            if url.is_some() {
                pids.push(("client".into(), std::process::id(), false));
            }
            let cpu = Cpu::start(pids);
            let side = &mut sides[i].1;
            match url {
                Some(url) => {
                    let t: Transfer =
                        runtime.block_on(client::download(&url, Some(config.size)))?;
                    side.mib_s.push(t.mib_s());
                    side.ttfb_ms.push(t.first_byte_secs * 1000.0);
                }
                None => {
                    let python = bench.python.as_ref().ok_or("no python")?;
                    let (secs, py_cpu, bytes) = boto3::download(
                        python,
                        &bench.s3.url,
                        &[BIG.to_owned()],
                        bench.boto_dest.path(),
                    )?;
                    side.mib_s.push(bytes as f64 / MIB as f64 / secs.max(1e-9));
                    side.cpu
                        .entry("client (boto3)".into())
                        .and_modify(|c| *c += py_cpu)
                        .or_insert(py_cpu);
                }
            }
            side.add_cpu(cpu.end());
            side.bytes += config.size;
        }
    }
    let base = spread(&sides[0].1.mib_s).median;
    let mut single_json = serde_json::Map::new();
    for (name, side) in &sides {
        let s = spread(&side.mib_s);
        let ttfb = spread(&side.ttfb_ms);
        report.row(format!(
            "{:<28} {:>16} MiB/s  proxy/this {:>5.2}  TTFB {:>8} ms  CPU-s/GiB: {}",
            name,
            s.show(1),
            base / s.median.max(1e-9),
            if side.ttfb_ms.is_empty() {
                "-".to_owned()
            } else {
                ttfb.show(2)
            },
            side.cpu_text()
        ));
        single_json.insert(
            (*name).to_owned(),
            json!({"mib_s": s.json(), "ttfb_ms": ttfb.json(), "cpu_s_per_gib": side.cpu_per_gib(),
                   "proxy_over_this": round(base / s.median.max(1e-9), 3)}),
        );
    }
    report.insert("single", Value::Object(single_json));
    Ok(())
}
