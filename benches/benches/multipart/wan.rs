//! Scenario 2, a WAN-like link (a per-connection rate limit, by a relay in this process) where
//! parallel connections should win: one stream against MLflow's multipart and presigned ranges.

use benches::client::{self, MIB, artifact_url};
use tokio::net::TcpListener;

use crate::relay::relay_loop;
use crate::transfers::{mpu_via_proxy, presigned_via_proxy_chunked};
use crate::{Bench, Cpu, medians, row};

pub async fn run(bench: &Bench, wan_rate: u64, wan_size: u64) -> Result<(), String> {
    let (proxy_url, bucket, chunk) = (&bench.proxy_url, &bench.bucket, &bench.chunk);
    let (pids, rounds) = (bench.pids, bench.rounds);
    println!(
        "\n2. WAN-like link: {} MiB/s per connection each way (a relay in this process), {} MiB, median of {rounds}",
        wan_rate / MIB,
        wan_size / MIB
    );
    let relay = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let relay_url = format!("http://{}", relay.local_addr().map_err(|e| e.to_string())?);
    let proxy_addr = proxy_url.trim_start_matches("http://").to_owned();
    tokio::spawn(relay_loop(relay, proxy_addr, wan_rate));
    let mut all = Vec::new();
    for _ in 0..rounds {
        let mut wan = Vec::new();
        let cpu = Cpu::start(pids);
        client::upload(
            &artifact_url(&relay_url, "wan-single.bin"),
            wan_size,
            chunk.clone(),
            true,
        )
        .await?;
        wan.push(row("upload: one PUT", cpu, wan_size));
        let cpu = Cpu::start(pids);
        mpu_via_proxy(
            &relay_url,
            "0/r/artifacts",
            "wan-multi.bin",
            wan_size,
            chunk,
        )
        .await?;
        wan.push(row(
            "upload: MLflow multipart (4 connections)",
            cpu,
            wan_size,
        ));
        let _ = bucket.delete_object("0/r/artifacts/wan-multi.bin").await;
        let cpu = Cpu::start(pids);
        client::download(&artifact_url(&relay_url, "wan-single.bin"), Some(wan_size)).await?;
        wan.push(row("download: one GET", cpu, wan_size));
        let cpu = Cpu::start(pids);
        presigned_via_proxy_chunked(&relay_url, "wan-single.bin", wan_size, 16 * MIB).await?;
        wan.push(row(
            "download: 16 MiB presigned ranges (4 conns)",
            cpu,
            wan_size,
        ));
        all.push(wan);
    }
    let wan = medians(all);
    for r in &wan {
        r.print();
    }
    println!(
        "  ratios (throughput): multipart/one-PUT {:.2}, ranges/one-GET {:.2}",
        wan[0].secs / wan[1].secs,
        wan[2].secs / wan[3].secs
    );
    Ok(())
}
