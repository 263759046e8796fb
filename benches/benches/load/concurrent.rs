//! Concurrent transfers: N objects uploaded at once, then downloaded at once, each on its own
//! connection, through the proxy and straight to the store, on s3s-fs and on the null store
//! (8 and 32 at once). Rows: aggregate MiB/s, slowest first byte; proxy peak RSS.

use std::collections::HashMap;

use benches::client::{self, Batch, MIB, artifact_url};
use benches::stats::round;
use serde_json::json;

use crate::Bench;
use crate::report::{Report, ratio};
use crate::watch::{Watch, rss_of};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime, chunk) = (&bench.config, &bench.runtime, &bench.chunk);
    println!("\n== concurrent transfers, aggregate ==");
    for (n, mib) in &config.concurrent {
        let each = mib * MIB;
        for store in bench.stores() {
            let name = store.name;
            let proxy_urls: Vec<String> = (0..*n)
                .map(|i| artifact_url(&store.proxy.url, &format!("bench/c{n}-proxy-{i}.bin")))
                .collect();
            let mut put_urls = Vec::new();
            let mut get_urls = Vec::new();
            for i in 0..*n {
                let key = format!("bench/c{n}-direct-{i}.bin");
                put_urls.push(
                    runtime
                        .block_on(store.bucket.presign_put(&key, 3600, None, None))
                        .map_err(|e| e.to_string())?,
                );
                get_urls.push(
                    runtime
                        .block_on(store.bucket.presign_get(&key, 3600, None))
                        .map_err(|e| e.to_string())?,
                );
            }
            let watch = Watch::begin(
                &format!("{n} concurrent × {mib} MiB, {name}"),
                Some(store.proxy.pid()),
                store.process.iter().cloned().collect(),
                None,
                None,
            );
            let mut results: HashMap<(&str, &str), Batch> = HashMap::new();
            bench.quiet();
            results.insert(
                ("upload", "proxy"),
                runtime.block_on(client::upload_batch(
                    proxy_urls.clone(),
                    each,
                    chunk.clone(),
                    true,
                ))?,
            );
            bench.quiet();
            results.insert(
                ("upload", "direct"),
                runtime.block_on(client::upload_batch(put_urls, each, chunk.clone(), true))?,
            );
            bench.quiet();
            results.insert(
                ("download", "proxy"),
                runtime.block_on(client::download_batch(proxy_urls, each))?,
            );
            bench.quiet();
            results.insert(
                ("download", "direct"),
                runtime.block_on(client::download_batch(get_urls, each))?,
            );
            let w = watch.end();
            for dir in ["upload", "download"] {
                let p = &results[&(dir, "proxy")];
                let d = &results[&(dir, "direct")];
                let extra = if dir == "download" {
                    format!(
                        ", slowest first byte {:.0} / {:.0} ms",
                        p.slowest_first_byte() * 1000.0,
                        d.slowest_first_byte() * 1000.0
                    )
                } else {
                    String::new()
                };
                report.row(
                    &format!("{dir} {n} × {mib} MiB at once, {name}{extra}"),
                    format!("{:.1} MiB/s", p.mib_s()),
                    format!("{:.1} MiB/s direct", d.mib_s()),
                    ratio(p.mib_s(), d.mib_s()),
                    rss_of(&w),
                );
                report.summary.insert(
                    format!("{dir}_{n}x_{name}_proxy_over_direct"),
                    json!(round(p.mib_s() / d.mib_s(), 3)),
                );
                report.scenarios.push(json!({"scenario": format!("{dir} {n} concurrent, {name}"), "mib_each": mib,
                    "proxy_aggregate_mib_s": round(p.mib_s(), 1), "direct_aggregate_mib_s": round(d.mib_s(), 1),
                    "proxy_wall_s": round(p.wall_secs, 3), "direct_wall_s": round(d.wall_secs, 3),
                    "proxy_slowest_first_byte_ms": round(p.slowest_first_byte() * 1000.0, 2),
                    "direct_slowest_first_byte_ms": round(d.slowest_first_byte() * 1000.0, 2)}));
            }
            report.summary.insert(
                format!("rss_mib_{n}x_{name}"),
                w["proxy_peak_rss_mib"].clone(),
            );
            report.scenarios.push(w);
        }
    }
    Ok(())
}
