//! Concurrent downloads (8 at once): aggregate MiB/s through the proxy, straight to the store
//! (presigned GETs) and by boto3, and the proxy's peak RSS against its bound.

use benches::client::{self, MIB, artifact_url};
use benches::procs::{self, Sampler, load_average};
use benches::stats::round;
use serde_json::{Value, json};

use crate::measure::Cpu;
use crate::{Bench, Report, boto3, concurrent_keys};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime, proxy) = (&bench.config, &bench.runtime, &bench.proxy);
    let conc_keys = concurrent_keys(config);
    println!(
        "\n== {} concurrent × {} MiB (load average {}) ==",
        config.concurrent,
        config.concurrent_size / MIB,
        load_average()
    );
    let mut conc_json = serde_json::Map::new();
    for r in 0..config.rounds.min(2) {
        let order = if r % 2 == 0 {
            ["proxy", "boto3", "direct"]
        } else {
            ["direct", "boto3", "proxy"]
        };
        for side in order {
            if side == "boto3" && bench.python.is_none() {
                continue;
            }
            procs::reset_peak(proxy.process.pid());
            let sampler = Sampler::start(vec![proxy.process.pid()], Vec::new(), Vec::new());
            let mut pids = vec![("s3s-fs".to_owned(), bench.s3_pid(), false)];
            if side == "proxy" {
                pids.push(("proxy".into(), proxy.process.pid(), false));
            }
            if side != "boto3" {
                pids.push(("client".into(), std::process::id(), false));
            }
            let cpu = Cpu::start(pids);
            let (mib_s, extra_cpu) = match side {
                "proxy" => {
                    let urls = conc_keys
                        .iter()
                        .map(|k| artifact_url(&proxy.url, k))
                        .collect();
                    let b =
                        runtime.block_on(client::download_batch(urls, config.concurrent_size))?;
                    (b.mib_s(), None)
                }
                "direct" => {
                    let mut urls = Vec::new();
                    for k in &conc_keys {
                        urls.push(
                            runtime
                                .block_on(bench.s3_bucket.presign_get(k, 3600, None))
                                .map_err(|e| e.to_string())?,
                        );
                    }
                    let b =
                        runtime.block_on(client::download_batch(urls, config.concurrent_size))?;
                    (b.mib_s(), None)
                }
                _ => {
                    let python = bench.python.as_ref().ok_or("no python")?;
                    let (secs, py_cpu, bytes) =
                        boto3::download(python, &bench.s3.url, &conc_keys, bench.boto_dest.path())?;
                    (bytes as f64 / MIB as f64 / secs.max(1e-9), Some(py_cpu))
                }
            };
            let samples = sampler.finish();
            let peak = procs::hwm_kib(proxy.process.pid()).max(
                samples
                    .peak_rss_kib
                    .get(&proxy.process.pid())
                    .copied()
                    .unwrap_or(0),
            );
            let mut used = cpu.end();
            if let Some(c) = extra_cpu {
                used.push(("client (boto3)".into(), c));
            }
            let gib =
                (config.concurrent as u64 * config.concurrent_size) as f64 / (1024.0 * MIB as f64);
            let cpu_text: Vec<String> = used
                .iter()
                .map(|(n, c)| format!("{n} {:.2}", c / gib))
                .collect();
            let rss = if side == "proxy" {
                format!(", proxy peak RSS {:.1} MiB", peak as f64 / 1024.0)
            } else {
                String::new()
            };
            report.row(format!(
                "{:<28} {:>8.1} MiB/s aggregate{rss}  CPU-s/GiB: {}",
                format!("{side}, round {r}"),
                mib_s,
                cpu_text.join(", ")
            ));
            conc_json.insert(format!("{side} round {r}"), json!({"aggregate_mib_s": round(mib_s, 1),
                "proxy_peak_rss_mib": if side == "proxy" { json!(round(peak as f64 / 1024.0, 1)) } else { Value::Null },
                "cpu_s_per_gib": used.iter().map(|(n, c)| (n.clone(), json!(round(c / gib, 2)))).collect::<serde_json::Map<_, _>>()}));
        }
    }
    report.insert("concurrent", Value::Object(conc_json));
    Ok(())
}
