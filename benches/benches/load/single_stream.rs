//! Single stream: one large object uploaded and downloaded through the proxy and straight to the
//! store (presigned), A/B interleaved with the order swapped every round, on s3s-fs and on the
//! null store. Rows: upload and download MiB/s, time to first byte; proxy peak RSS.

use std::collections::HashMap;

use benches::client::{self, MIB, Transfer, artifact_url};
use benches::stats::{round, spread};
use serde_json::json;

use crate::Bench;
use crate::report::{Report, ratio, spread_ms};
use crate::watch::{Watch, rss_of};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime) = (&bench.config, &bench.runtime);
    println!(
        "\n== single stream, {} MiB, {} rounds, A/B interleaved ==",
        config.size / MIB,
        config.rounds
    );
    for store in bench.stores() {
        let name = store.name;
        let proxy_path = "bench/single-proxy.bin";
        let direct_key = "bench/single-direct.bin";
        let put_url = runtime
            .block_on(store.bucket.presign_put(direct_key, 3600, None, None))
            .map_err(|e| e.to_string())?;
        let get_url = runtime
            .block_on(store.bucket.presign_get(direct_key, 3600, None))
            .map_err(|e| e.to_string())?;
        let mut up: HashMap<&str, Vec<Transfer>> = HashMap::new();
        let mut down: HashMap<&str, Vec<Transfer>> = HashMap::new();
        let watch = Watch::begin(
            &format!("single stream {} MiB, {name}", config.size / MIB),
            Some(store.proxy.pid()),
            store.process.iter().cloned().collect(),
            None,
            None,
        );
        for r in 0..config.rounds {
            let order: [&str; 2] = if r % 2 == 0 {
                ["proxy", "direct"]
            } else {
                ["direct", "proxy"]
            };
            for side in order {
                bench.quiet();
                let url = if side == "proxy" {
                    artifact_url(&store.proxy.url, proxy_path)
                } else {
                    put_url.clone()
                };
                let t = runtime.block_on(client::upload(
                    &url,
                    config.size,
                    bench.chunk.clone(),
                    true,
                ))?;
                up.entry(side).or_default().push(t);
            }
            for side in order {
                bench.quiet();
                let url = if side == "proxy" {
                    artifact_url(&store.proxy.url, proxy_path)
                } else {
                    get_url.clone()
                };
                let t = runtime.block_on(client::download(&url, Some(config.size)))?;
                down.entry(side).or_default().push(t);
            }
        }
        let w = watch.end();
        let rss = rss_of(&w);
        for (dir, map) in [("upload", &up), ("download", &down)] {
            let p = spread(&map["proxy"].iter().map(Transfer::mib_s).collect::<Vec<_>>());
            let d = spread(
                &map["direct"]
                    .iter()
                    .map(Transfer::mib_s)
                    .collect::<Vec<_>>(),
            );
            report.row(
                &format!("{dir} {} MiB, 1 stream, {name}", config.size / MIB),
                format!("{} MiB/s", p.show(1)),
                format!("{} MiB/s direct", d.show(1)),
                ratio(p.median, d.median),
                rss.clone(),
            );
            report.summary.insert(
                format!("{dir}_single_{name}_proxy_over_direct"),
                json!(round(p.median / d.median, 3)),
            );
            report.scenarios.push(json!({"scenario": format!("{dir} single stream, {name}"), "size_mib": config.size / MIB,
                "proxy_mib_s": p.json(), "direct_mib_s": d.json(), "ratio_of_medians": round(p.median / d.median, 3),
                "proxy_secs": map["proxy"].iter().map(|t| round(t.secs, 3)).collect::<Vec<_>>(),
                "direct_secs": map["direct"].iter().map(|t| round(t.secs, 3)).collect::<Vec<_>>()}));
            if dir == "upload" {
                let wait = spread_ms(&map["proxy"], |t| t.head_secs);
                report.scenarios.push(json!({"scenario": format!("upload single stream, {name}: request start to response head (ms)"), "proxy_ms": wait.json()}));
            }
        }
        let head = spread_ms(&down["proxy"], |t| t.head_secs);
        let first = spread_ms(&down["proxy"], |t| t.first_byte_secs);
        let dfirst = spread_ms(&down["direct"], |t| t.first_byte_secs);
        report.row(
            &format!(
                "download {} MiB time to first byte, {name}",
                config.size / MIB
            ),
            format!("{} ms", first.show(2)),
            format!("{} ms direct", dfirst.show(2)),
            "-".into(),
            String::new(),
        );
        report
            .summary
            .insert(format!("ttfb_ms_{name}"), json!(round(first.median, 3)));
        report.scenarios.push(json!({"scenario": format!("download TTFB, {name}"), "size_mib": config.size / MIB,
            "proxy_head_ms": head.json(), "proxy_first_byte_ms": first.json(), "direct_first_byte_ms": dfirst.json()}));
        report.scenarios.push(w);
    }
    Ok(())
}
