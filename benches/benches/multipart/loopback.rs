//! Scenario 1, on loopback: MLflow's multipart upload and presigned ranged download through the
//! proxy, against one stream through the proxy and the same parallel transfer straight to S3.

use benches::client::{self, MIB, artifact_url};

use crate::transfers::{mpu_direct, mpu_via_proxy, presigned_via_proxy, ranges};
use crate::{Bench, Cpu, RANGE, Row, medians, row};

pub async fn run(bench: &Bench, size: u64) -> Result<(), String> {
    let (proxy_url, bucket, chunk) = (&bench.proxy_url, &bench.bucket, &bench.chunk);
    let (pids, rounds) = (bench.pids, bench.rounds);
    println!(
        "\n1. on loopback ({} MiB), median of {rounds} rounds",
        size / MIB
    );
    let mut all: Vec<Vec<Row>> = Vec::new();
    for _ in 0..rounds {
        let mut rows = Vec::new();
        let cpu = Cpu::start(pids);
        client::upload(
            &artifact_url(proxy_url, "single.bin"),
            size,
            chunk.clone(),
            true,
        )
        .await?;
        rows.push(row("upload: one PUT through the proxy", cpu, size));
        let cpu = Cpu::start(pids);
        mpu_via_proxy(proxy_url, "0/r/artifacts", "multi.bin", size, chunk).await?;
        rows.push(row("upload: MLflow multipart through the proxy", cpu, size));
        // Disk: s3s-fs keeps objects as files; only single.bin is needed below.
        let _ = bucket.delete_object("0/r/artifacts/multi.bin").await;
        let cpu = Cpu::start(pids);
        mpu_direct(bucket, "direct.bin", size, chunk).await?;
        rows.push(row("upload: the same multipart straight to S3", cpu, size));
        let _ = bucket.delete_object("direct.bin").await;
        let cpu = Cpu::start(pids);
        client::download(&artifact_url(proxy_url, "single.bin"), Some(size)).await?;
        rows.push(row("download: one GET through the proxy", cpu, size));
        let cpu = Cpu::start(pids);
        presigned_via_proxy(proxy_url, "single.bin", size).await?;
        rows.push(row(
            "download: presigned ranges through the proxy",
            cpu,
            size,
        ));
        let cpu = Cpu::start(pids);
        let url = bucket
            .presign_get("single.bin", 600, None)
            .await
            .map_err(|e| e.to_string())?;
        ranges(url, size, size.min(RANGE)).await?;
        rows.push(row("download: the same ranges straight from S3", cpu, size));
        all.push(rows);
    }
    let rows = medians(all);
    for r in &rows {
        r.print();
    }
    let ratio = |a: usize, b: usize| rows[b].secs / rows[a].secs;
    println!(
        "  ratios (throughput, higher = first is faster): multipart/one-PUT {:.2}, \
         multipart proxy/direct {:.2}, ranges/one-GET {:.2}, ranges proxy/direct {:.2}",
        ratio(1, 0),
        ratio(1, 2),
        ratio(4, 3),
        ratio(4, 5)
    );

    Ok(())
}
