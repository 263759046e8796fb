//! `cargo bench --bench multipart` (harness = false): MLflow's client-driven multipart upload and
//! presigned ranged download through the proxy (issue 13), against one stream through the proxy
//! and against the same parallel transfer straight to S3, in one run, as ratios; then the same
//! on a WAN-like link (a per-connection rate limit) where parallel connections should win.
//!
//! The client does what MLflow's does: mpu/create, PUT of 10 MiB parts by 4 workers
//! (`min(2 x CPUs, 20)` on this 2-core machine), mpu/complete; presigned/ then 100 MiB ranges by
//! 4 workers. Processes: the release proxy (built first, or BENCH_PROXY_BIN), s3s-fs 0.14.1 (the
//! binary in MLFLOW_STACK_TOOLS/bin, else the same code embedded in this bench), a stand-in for
//! MLflow (server-info etc.) on a thread of this process.
//! BENCH_QUICK=1: 256 MiB instead of 1 GiB; BENCH_WAN_MIBS: the link's rate per connection.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::client::{self, GenBody, MIB, Target, artifact_url};
use benches::procs::{self, load_average};
use benches::proxy::start_proxy;
use benches::s3store::start_s3s_fs;
use benches::servers;
use benches::setup::{self, ACCESS_KEY, SECRET_KEY, Scratch, env_u64};
use bytes::Bytes;
use http::header;
use http_body_util::BodyExt;
use s3::Bucket;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PART: u64 = 10 * MIB;
const RANGE: u64 = 100 * MIB;
const WORKERS: usize = 4;

fn main() {
    setup::bench_main(|| setup::client_runtime()?.block_on(run()));
}

/// CPU seconds of the proxy and of s3s-fs over one scenario.
struct Cpu {
    pids: [u32; 2],
    before: [f64; 2],
    started: Instant,
}

impl Cpu {
    fn start(pids: [u32; 2]) -> Cpu {
        Cpu {
            pids,
            before: pids.map(procs::cpu_secs),
            started: Instant::now(),
        }
    }
    fn finish(self) -> (f64, [f64; 2]) {
        let after = self.pids.map(procs::cpu_secs);
        (
            self.started.elapsed().as_secs_f64(),
            [after[0] - self.before[0], after[1] - self.before[1]],
        )
    }
}

struct Row {
    name: &'static str,
    secs: f64,
    cpu: [f64; 2],
    bytes: u64,
}

impl Row {
    fn mib_s(&self) -> f64 {
        self.bytes as f64 / MIB as f64 / self.secs
    }
    fn print(&self) {
        let gib = self.bytes as f64 / (1024.0 * MIB as f64);
        println!(
            "  {:<44} {:>7.2} s {:>7.0} MiB/s   CPU s/GiB: proxy {:>5.2}  s3s-fs {:>5.2}",
            self.name,
            self.secs,
            self.mib_s(),
            self.cpu[0] / gib,
            self.cpu[1] / gib
        );
    }
}

async fn run() -> Result<(), String> {
    let quick = setup::quick();
    let size = env_u64("BENCH_MPU_MIB").unwrap_or(if quick { 256 } else { 1024 }) * MIB;
    let wan_rate = env_u64("BENCH_WAN_MIBS").unwrap_or(16) * MIB;
    let wan_size = if quick { 64 * MIB } else { 128 * MIB };
    println!(
        "multipart bench: {} MiB, {} MiB parts and {} MiB ranges by {WORKERS} workers; load average {}",
        size / MIB,
        PART / MIB,
        RANGE / MIB,
        load_average()
    );
    let proxy_bin = procs::proxy_binary(&setup::workspace_root())?;
    let work = Scratch::create("mlflow-mpu-bench")?;
    let result = scenarios(&proxy_bin, work.path(), size, wan_rate, wan_size).await;
    drop(work);
    println!("load average at the end: {}", load_average());
    result
}

async fn scenarios(
    proxy_bin: &Path,
    work: &Path,
    size: u64,
    wan_rate: u64,
    wan_size: u64,
) -> Result<(), String> {
    let mut s3 = start_s3s_fs(&setup::tools_dir(), work, ACCESS_KEY, SECRET_KEY)?;
    let bucket = s3.create_bucket().await?;
    let chunk = client::pattern();

    // MLflow's other routes (server-info) answered by the bench's stand-in.
    let upstream_url = servers::start_null_store_and_stand_in(chunk.clone())?.stand_in_url;

    let mut proxy = start_proxy(
        proxy_bin,
        "proxy",
        &s3.url,
        s3.region,
        &upstream_url,
        &[(
            "PROXY_SIGNING_KEY",
            "bench-signing-key-0123456789abcdef0123".to_owned(),
        )],
    )?;
    proxy.wait_ready(Duration::from_secs(30)).await?;
    let proxy_url = proxy.url.clone();
    let pids = [proxy.pid(), s3.process.pid()];

    let rounds = env_u64("BENCH_ROUNDS").unwrap_or(3).max(1) as usize;
    println!(
        "\n1. on loopback ({} MiB), median of {rounds} rounds",
        size / MIB
    );
    let mut all: Vec<Vec<Row>> = Vec::new();
    for _ in 0..rounds {
        let mut rows = Vec::new();
        let cpu = Cpu::start(pids);
        client::upload(
            &artifact_url(&proxy_url, "single.bin"),
            size,
            chunk.clone(),
            true,
        )
        .await?;
        rows.push(row("upload: one PUT through the proxy", cpu, size));
        let cpu = Cpu::start(pids);
        mpu_via_proxy(&proxy_url, "0/r/artifacts", "multi.bin", size, &chunk).await?;
        rows.push(row("upload: MLflow multipart through the proxy", cpu, size));
        // Disk: s3s-fs keeps objects as files; only single.bin is needed below.
        let _ = bucket.delete_object("0/r/artifacts/multi.bin").await;
        let cpu = Cpu::start(pids);
        mpu_direct(&bucket, "direct.bin", size, &chunk).await?;
        rows.push(row("upload: the same multipart straight to S3", cpu, size));
        let _ = bucket.delete_object("direct.bin").await;
        let cpu = Cpu::start(pids);
        client::download(&artifact_url(&proxy_url, "single.bin"), Some(size)).await?;
        rows.push(row("download: one GET through the proxy", cpu, size));
        let cpu = Cpu::start(pids);
        presigned_via_proxy(&proxy_url, "single.bin", size).await?;
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
            &chunk,
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
    proxy.process.stop();
    s3.process.stop();
    Ok(())
}

/// Per scenario, the round with the median time (its CPU figures with it).
fn medians(mut rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let n = rounds.first().map_or(0, Vec::len);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut runs: Vec<Row> = rounds.iter_mut().filter_map(|r| r.pop()).collect();
        runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
        out.push(runs.swap_remove(runs.len() / 2));
    }
    out.reverse();
    out
}

fn row(name: &'static str, cpu: Cpu, bytes: u64) -> Row {
    let (secs, cpu) = cpu.finish();
    Row {
        name,
        secs,
        cpu,
        bytes,
    }
}

/// A small JSON request (create, complete, presigned).
async fn json_call(method: http::Method, url: &str, body: Option<Value>) -> Result<Value, String> {
    let target = Target::parse(url)?;
    let mut sender = client::connect(target.addr).await?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = target.request(
        method,
        http_body_util::Full::new(Bytes::from(payload))
            .map_err(|never| match never {})
            .boxed(),
    )?;
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        "application/json".parse().map_err(|_| "header")?,
    );
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{url}: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
}

/// PUT `len` generated bytes; returns the ETag.
async fn put_part(url: String, len: u64, chunk: Bytes) -> Result<String, String> {
    let target = Target::parse(&url)?;
    let mut sender = client::connect(target.addr).await?;
    let mut request = target.request(http::Method::PUT, GenBody::new(len, chunk, true).boxed())?;
    request
        .headers_mut()
        .insert(header::CONTENT_LENGTH, len.into());
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let etag = response
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let _ = response.into_body().collect().await;
    if !status.is_success() {
        return Err(format!("part PUT answered {status}"));
    }
    Ok(etag)
}

/// Parts 1..=n of `size` bytes by WORKERS workers (MLflow's thread pool): [(number, etag)].
async fn put_parts(urls: Vec<String>, size: u64, chunk: &Bytes) -> Result<Vec<Value>, String> {
    let queue = Arc::new(std::sync::Mutex::new(
        urls.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (queue, chunk) = (queue.clone(), chunk.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().map_err(|e| e.to_string())?.pop();
                let Some((i, url)) = next else { break };
                let start = i as u64 * PART;
                let len = PART.min(size - start);
                let etag = put_part(url, len, chunk.clone()).await?;
                done.push(json!({"part_number": i + 1, "etag": etag}));
            }
            Ok::<_, String>(done)
        }));
    }
    let mut parts = Vec::new();
    for worker in workers {
        parts.extend(worker.await.map_err(|e| e.to_string())??);
    }
    parts.sort_by_key(|p| p["part_number"].as_u64());
    Ok(parts)
}

async fn mpu_via_proxy(
    base: &str,
    dir: &str,
    name: &str,
    size: u64,
    chunk: &Bytes,
) -> Result<(), String> {
    let num_parts = size.div_ceil(PART);
    let mpu = format!("{base}/api/2.0/mlflow-artifacts/mpu");
    let created = json_call(
        http::Method::POST,
        &format!("{mpu}/create/{dir}"),
        Some(json!({"path": name, "num_parts": num_parts})),
    )
    .await?;
    let urls = created["credentials"]
        .as_array()
        .ok_or("no credentials")?
        .iter()
        .map(|c| c["url"].as_str().unwrap_or_default().to_owned())
        .collect();
    let parts = put_parts(urls, size, chunk).await?;
    json_call(
        http::Method::POST,
        &format!("{mpu}/complete/{dir}"),
        Some(json!({"path": name, "upload_id": created["upload_id"], "parts": parts})),
    )
    .await?;
    Ok(())
}

async fn mpu_direct(bucket: &Bucket, key: &str, size: u64, chunk: &Bytes) -> Result<(), String> {
    let upload = bucket
        .initiate_multipart_upload(key, "application/octet-stream")
        .await
        .map_err(|e| e.to_string())?;
    let mut urls = Vec::new();
    for n in 1..=size.div_ceil(PART) {
        let queries = std::collections::HashMap::from([
            ("partNumber".to_owned(), n.to_string()),
            ("uploadId".to_owned(), upload.upload_id.clone()),
        ]);
        urls.push(
            bucket
                .presign_put(key, 3600, None, Some(queries))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let parts = put_parts(urls, size, chunk).await?;
    let parts = parts
        .iter()
        .map(|p| s3::serde_types::Part {
            part_number: p["part_number"].as_u64().unwrap_or(0) as u32,
            etag: p["etag"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    bucket
        .complete_multipart_upload(key, &upload.upload_id, parts)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn presigned_via_proxy(base: &str, path: &str, size: u64) -> Result<(), String> {
    presigned_via_proxy_chunked(base, path, size, RANGE).await
}

async fn presigned_via_proxy_chunked(
    base: &str,
    path: &str,
    size: u64,
    range: u64,
) -> Result<(), String> {
    let answer = json_call(
        http::Method::GET,
        &format!("{base}/api/2.0/mlflow-artifacts/presigned/{path}"),
        None,
    )
    .await?;
    if answer["file_size"].as_u64() != Some(size) {
        return Err(format!("presigned answered {answer}"));
    }
    ranges(
        answer["url"].as_str().unwrap_or_default().to_owned(),
        size,
        range,
    )
    .await
}

/// GET [i·range, (i+1)·range) by WORKERS workers, counting bytes.
async fn ranges(url: String, size: u64, range: u64) -> Result<(), String> {
    let starts = Arc::new(std::sync::Mutex::new(
        (0..size.div_ceil(range))
            .map(|i| i * range)
            .collect::<Vec<_>>(),
    ));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (starts, url) = (starts.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let next = starts.lock().map_err(|e| e.to_string())?.pop();
                let Some(start) = next else { break };
                let end = (start + range).min(size) - 1;
                let target = Target::parse(&url)?;
                let mut sender = client::connect(target.addr).await?;
                let mut request = target.request(http::Method::GET, client::empty())?;
                request.headers_mut().insert(
                    header::RANGE,
                    format!("bytes={start}-{end}")
                        .parse()
                        .map_err(|_| "range")?,
                );
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status() != http::StatusCode::PARTIAL_CONTENT {
                    return Err(format!("range GET answered {}", response.status()));
                }
                let mut body = response.into_body();
                let mut got = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
                        got += data.len() as u64;
                    }
                }
                if got != end - start + 1 {
                    return Err(format!("range {start}-{end}: {got} bytes"));
                }
            }
            Ok::<_, String>(())
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// A TCP relay with a per-connection rate limit in each direction (a WAN link as one TCP flow
/// sees it); its Host is what the proxy builds part URLs from, so parts come through it too.
async fn relay_loop(listener: TcpListener, upstream: String, rate: u64) {
    while let Ok((inbound, _)) = listener.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::join!(limited_copy(ri, wo, rate), limited_copy(ro, wi, rate));
        });
    }
}

async fn limited_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    let _ = to.shutdown().await;
}
