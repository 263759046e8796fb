//! The proxy's own ceiling (the null store: no disk, no S3 server's CPU), parallel against
//! parallelism 1 (and against a baseline binary when one is given), interleaved round by round.

use benches::client::{self, MIB, artifact_url};
use benches::procs::{hwm_kib, load_average, reset_peak, rss_kib};
use benches::proxy::ProxyProc;
use benches::stats::spread;
use serde_json::{Value, json};

use crate::measure::{Cpu, Side};
use crate::{Bench, NULL_KEY, Report};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let config = &bench.config;
    println!(
        "\n== null store ceiling, {} MiB (load average {}) ==",
        config.null_size / MIB,
        load_average()
    );
    let mut null_json = serde_json::Map::new();
    let mut null_sides: Vec<(&str, &ProxyProc, Side)> = vec![
        ("parallel (defaults)", &bench.null, Side::default()),
        ("parallelism 1", &bench.null_single, Side::default()),
        (
            "parallel, glibc keeps",
            &bench.null_glibc_kept,
            Side::default(),
        ),
    ];
    if let Some(p) = &bench.null_baseline {
        null_sides.push(("parallel, baseline binary", p, Side::default()));
    }
    for (_, p, _) in &null_sides {
        reset_peak(p.process.pid());
    }
    for r in 0..config.rounds.max(3) {
        let n = null_sides.len();
        for k in 0..n {
            let (_, p, side) = &mut null_sides[(k + r) % n];
            let cpu = Cpu::start(vec![("proxy".into(), p.process.pid(), false)]);
            let t = bench.runtime.block_on(client::download(
                &artifact_url(&p.url, NULL_KEY),
                Some(config.null_size),
            ))?;
            side.mib_s.push(t.mib_s());
            side.ttfb_ms.push(t.first_byte_secs * 1000.0);
            side.add_cpu(cpu.end());
            side.bytes += config.null_size;
        }
    }
    // What each proxy keeps once the downloads are over (the allocator's choice shows here), read
    // after a pause so that nothing is still in flight, and its peak during the rounds.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for (name, p, side) in &null_sides {
        let s = spread(&side.mib_s);
        let pid = p.process.pid();
        let (idle_mib, peak_mib) = (rss_kib(pid) / 1024, hwm_kib(pid) / 1024);
        report.row(format!(
            "null store, {:<22} {:>16} MiB/s  TTFB {} ms  CPU-s/GiB: {}  RSS idle {} MiB, peak {} MiB",
            name,
            s.show(1),
            spread(&side.ttfb_ms).show(2),
            side.cpu_text(),
            idle_mib,
            peak_mib
        ));
        null_json.insert(
            (*name).to_owned(),
            json!({"mib_s": s.json(), "ttfb_ms": spread(&side.ttfb_ms).json(),
                   "cpu_s_per_gib": side.cpu_per_gib(), "rss_idle_mib": idle_mib,
                   "rss_peak_mib": peak_mib}),
        );
    }
    report.insert("null_store", Value::Object(null_json));
    Ok(())
}
