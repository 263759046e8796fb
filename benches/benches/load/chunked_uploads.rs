//! Chunked uploads: uploads without Content-Length take the proxy's multipart path (parts held
//! in memory, within PROXY_UPLOAD_BUDGET_MIB). One large stream, then as many at once as the
//! largest concurrent scenario, on s3s-fs and on the null store. Rows: MiB/s; proxy peak RSS.
//!
//! Each store gets a fresh proxy for these: the memory the multipart path holds must neither
//! hide behind nor be charged to the other scenarios (the allocator keeps freed memory resident).

use benches::client::{self, MIB, artifact_url};
use benches::stats::round;
use serde_json::json;

use crate::Bench;
use crate::report::Report;
use crate::watch::{Watch, rss_of};

pub fn run(bench: &Bench, report: &mut Report) -> Result<(), String> {
    let (config, runtime, chunk) = (&bench.config, &bench.runtime, &bench.chunk);
    println!("\n== chunked uploads (no Content-Length: multipart path) ==");
    for store in bench.stores() {
        let name = store.name;
        let fresh = bench.fresh_proxy(
            "proxy (multipart scenarios)",
            store.url,
            &bench.servers.stand_in_url,
        )?;
        let proxy = &fresh;
        let big = config.concurrent.iter().map(|(n, _)| *n).max().unwrap_or(1);
        let each = config
            .concurrent
            .iter()
            .find(|(n, _)| *n == big)
            .map_or(4, |(_, m)| *m)
            * MIB;
        bench.quiet();
        let watch = Watch::begin(
            &format!("chunked upload {} MiB, 1 stream, {name}", config.size / MIB),
            Some(proxy.pid()),
            store.process.iter().cloned().collect(),
            None,
            None,
        );
        let t = runtime.block_on(client::upload(
            &artifact_url(&proxy.url, "bench/chunked.bin"),
            config.size,
            chunk.clone(),
            false,
        ))?;
        let w = watch.end();
        report.row(
            &format!(
                "upload {} MiB chunked (multipart), 1 stream, {name}",
                config.size / MIB
            ),
            format!("{:.1} MiB/s", t.mib_s()),
            String::new(),
            "-".into(),
            rss_of(&w),
        );
        report.scenarios.push(json!({"scenario": format!("chunked upload single stream, {name}"), "mib_s": round(t.mib_s(), 1), "watch": w}));
        bench.quiet();
        let watch = Watch::begin(
            &format!("{big} chunked uploads, {name}"),
            Some(proxy.pid()),
            store.process.iter().cloned().collect(),
            None,
            None,
        );
        let urls = (0..big)
            .map(|i| artifact_url(&proxy.url, &format!("bench/chunked-{i}.bin")))
            .collect();
        let b = runtime.block_on(client::upload_batch(urls, each, chunk.clone(), false))?;
        let w = watch.end();
        report.row(
            &format!(
                "{big} × {} MiB chunked uploads (multipart), {name}",
                each / MIB
            ),
            format!("{:.1} MiB/s", b.mib_s()),
            String::new(),
            "-".into(),
            rss_of(&w),
        );
        report.summary.insert(
            format!("rss_mib_{big}_chunked_uploads_{name}"),
            w["proxy_peak_rss_mib"].clone(),
        );
        report.scenarios.push(json!({"scenario": format!("{big} chunked uploads, {name}"), "aggregate_mib_s": round(b.mib_s(), 1), "watch": w}));
        report.writes.push((
            format!("{} {name}", fresh.process.name),
            fresh.write_bytes(),
        ));
    }
    Ok(())
}
