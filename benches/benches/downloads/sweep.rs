//! Opt-in (`BENCH_DOWNLOAD_SWEEP=1`): the chunk × parallelism sweep the download defaults were
//! chosen from, each setting in a proxy of its own: one large download over the rounds, then
//! the concurrent batch with the proxy's peak RSS.

use benches::client::{self, MIB, artifact_url};
use benches::procs::{self, load_average};
use benches::stats::{round, spread};
use serde_json::json;

use crate::measure::{Cpu, Side};
use crate::{BIG, Bench, Report, concurrent_keys};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime) = (&bench.config, &bench.runtime);
    let conc_keys = concurrent_keys(config);
    println!(
        "\n== chunk × parallelism sweep, {} MiB (load average {}) ==",
        config.size / MIB,
        load_average()
    );
    let mut sweep_json = Vec::new();
    for chunk_mib in [4u64, 8, 16] {
        for parallelism in [2usize, 4, 6, 8] {
            let env = [
                ("PROXY_DOWNLOAD_CHUNK_MIB", chunk_mib.to_string()),
                ("PROXY_DOWNLOAD_PARALLELISM", parallelism.to_string()),
            ];
            let mut p = benches::proxy::start_proxy(
                &bench.proxy_bin,
                "proxy (sweep)",
                &bench.s3.url,
                "us-east-1",
                &bench.servers.stand_in_url,
                &env,
            )?;
            bench.wait_ready(&mut p)?;
            let mut side = Side::default();
            for _ in 0..config.rounds {
                let cpu = Cpu::start(vec![
                    ("proxy".into(), p.process.pid(), false),
                    ("s3s-fs".into(), bench.s3_pid(), false),
                ]);
                let t = runtime.block_on(client::download(
                    &artifact_url(&p.url, BIG),
                    Some(config.size),
                ))?;
                side.mib_s.push(t.mib_s());
                side.add_cpu(cpu.end());
                side.bytes += config.size;
            }
            procs::reset_peak(p.process.pid());
            let urls = conc_keys.iter().map(|k| artifact_url(&p.url, k)).collect();
            let b = runtime.block_on(client::download_batch(urls, config.concurrent_size))?;
            let peak = procs::hwm_kib(p.process.pid());
            let s = spread(&side.mib_s);
            report.row(format!(
                "chunk {chunk_mib:>2} MiB × {parallelism}: {:>16} MiB/s, {}× concurrent {:.1} MiB/s (peak RSS {:.1} MiB)  CPU-s/GiB: {}",
                s.show(1),
                config.concurrent,
                b.mib_s(),
                peak as f64 / 1024.0,
                side.cpu_text()
            ));
            sweep_json.push(json!({"chunk_mib": chunk_mib, "parallelism": parallelism, "mib_s": s.json(),
                "concurrent_mib_s": round(b.mib_s(), 1), "peak_rss_mib": round(peak as f64 / 1024.0, 1),
                "cpu_s_per_gib": side.cpu_per_gib()}));
        }
    }
    report.insert("sweep", json!(sweep_json));
    Ok(())
}
