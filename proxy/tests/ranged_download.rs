//! Large downloads read as parallel ranged GETs (artifacts/ranged.rs), against a real S3 server
//! (s3s-fs, SigV4 checked), over real HTTP: every byte in order, the object's own headers, a cut
//! connection (never a spliced or short-but-complete file) when the object changes or the store
//! goes away, backpressure and the idle timeout.
//!
//! s3s-fs ignores If-Match on GET, so the overwrite test passes only because the proxy compares
//! each ranged answer's ETag and Content-Range with the first answer itself.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mlflow_artifact_proxy::artifacts::state::download_memory::DownloadConfig;
use pretty_assertions::assert_eq;

const KIB: usize = 1024;

fn small_chunks(chunk: usize, parallelism: usize) -> DownloadConfig {
    DownloadConfig {
        chunk: chunk as u64,
        parallelism,
        budget: 64 * MIB as u64,
        threshold: 0,
        retries: 3,
        idle_timeout: Duration::from_secs(60),
        ..DownloadConfig::default()
    }
}

/// One series' value from a scrape (0 when absent).
async fn metric(h: &Harness, series: &str) -> f64 {
    let text = h.metrics().await;
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Read the body until it ends or fails: the bytes, and whether it failed.
async fn read_all(response: reqwest::Response) -> (Vec<u8>, bool) {
    let mut stream = response.bytes_stream();
    let mut received = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => return (received, true),
        }
    }
    (received, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_around_the_chunk_boundaries_is_byte_exact() {
    let chunk = 64 * KIB;
    let h = Harness::start_with_download(small_chunks(chunk, 4)).await;
    let sizes = [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        2 * chunk,
        3 * chunk - 1,
        37 * chunk + 12_345,
    ];
    let mut parallel = 0.0;
    for size in sizes {
        let data = random_bytes(size);
        let path = format!("sizes/{size}.bin");
        assert_eq!(h.put(&path, data.clone()).await.status(), 200, "{size}");
        let response = h.get(&path).await;
        assert_eq!(response.status(), 200, "{size}");
        let headers = header_map(&response);
        assert_eq!(headers["content-length"], size.to_string(), "{size}");
        assert!(headers.contains_key("etag"), "{size}");
        assert!(headers.contains_key("last-modified"), "{size}");
        let (body, failed) = read_all(response).await;
        assert!(!failed, "{size}");
        assert_eq!(sha256(&body), sha256(&data), "{size}");
        if size > chunk {
            parallel += 1.0;
        }
    }
    // Everything above one chunk took the parallel path; the rest one GET.
    assert_eq!(
        metric(&h, "mlflow_proxy_parallel_downloads_total").await,
        parallel
    );
    assert_eq!(
        metric(&h, "mlflow_proxy_download_budget_in_use_bytes").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ranges_are_byte_exact_across_chunks() {
    let chunk = 64 * KIB;
    let h = Harness::start_with_download(small_chunks(chunk, 3)).await;
    let size = 37 * chunk + 12_345;
    let data = random_bytes(size);
    assert_eq!(h.put("ranges/obj.bin", data.clone()).await.status(), 200);
    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=0-".into(), 0, size - 1),
        ("bytes=100-".into(), 100, size - 1),
        (format!("bytes=-{}", chunk + 5), size - chunk - 5, size - 1),
        ("bytes=-1".into(), size - 1, size - 1),
        (
            format!("bytes={}-{}", chunk - 10, 3 * chunk + 10),
            chunk - 10,
            3 * chunk + 10,
        ),
        (
            format!("bytes={}-{}", 5 * chunk, 7 * chunk - 1),
            5 * chunk,
            7 * chunk - 1,
        ),
        (format!("bytes=7-{}", 10 * size), 7, size - 1),
        (format!("bytes=0-{}", chunk), 0, chunk),
    ];
    for (range, first, last) in cases {
        let response = h
            .http
            .get(h.artifact("ranges/obj.bin"))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206, "{range}");
        let headers = header_map(&response);
        assert_eq!(
            headers["content-range"],
            format!("bytes {first}-{last}/{size}"),
            "{range}"
        );
        assert_eq!(
            headers["content-length"],
            (last + 1 - first).to_string(),
            "{range}"
        );
        let (body, failed) = read_all(response).await;
        assert!(!failed, "{range}");
        assert_eq!(sha256(&body), sha256(&data[first..=last]), "{range}");
    }
    assert!(metric(&h, "mlflow_proxy_parallel_downloads_total").await >= 6.0);
}

/// Start a download of `path` and read `first` bytes of it; the rest is left unread.
async fn start_reading(
    h: &Harness,
    path: &str,
    first: usize,
) -> (
    Vec<u8>,
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    usize,
) {
    let response = h.get(path).await;
    assert_eq!(response.status(), 200);
    let declared: usize = header_map(&response)["content-length"].parse().unwrap();
    let mut stream = Box::pin(response.bytes_stream());
    let mut received = Vec::new();
    while received.len() < first {
        received.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    (received, stream, declared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_overwritten_mid_download_cuts_the_connection() {
    let h = Harness::start_with_download(small_chunks(MIB, 2)).await;
    let size = 40 * MIB;
    let old = random_bytes(size);
    let new = random_bytes(size);
    assert_eq!(h.put("change/obj.bin", old.clone()).await.status(), 200);
    let (mut received, mut stream, declared) = start_reading(&h, "change/obj.bin", MIB).await;
    assert_eq!(declared, size);
    // Overwritten by a complete new version of the same size while the download waits.
    assert_eq!(h.put("change/obj.bin", new.clone()).await.status(), 200);
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body ended without an error");
    assert!(received.len() < size, "all {size} bytes arrived");
    // What did arrive is the old version only: no byte of the new one spliced in.
    assert!(
        received == old[..received.len()],
        "the {} bytes received are not a prefix of the old version",
        received.len()
    );
    assert_eq!(
        metric(&h, r#"mlflow_proxy_download_cuts_total{reason="changed"}"#).await,
        1.0
    );
    // The new version downloads whole.
    let (body, failed) = read_all(h.get("change/obj.bin").await).await;
    assert!(!failed);
    assert_eq!(sha256(&body), sha256(&new));
    eventually_metric(&h, "mlflow_proxy_download_budget_in_use_bytes", 0.0).await;
}

/// Wait (bounded) until a series has a value.
async fn eventually_metric(h: &Harness, series: &str, value: f64) {
    eventually_async(&format!("{series} becomes {value}"), || async {
        metric(h, series).await == value
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stopping_mid_download_cuts_it_and_the_next_download_works() {
    let h = Harness::start_with_download(small_chunks(MIB, 2)).await;
    let size = 40 * MIB;
    let data = random_bytes(size);
    assert_eq!(h.put("stop/obj.bin", data.clone()).await.status(), 200);
    let (mut received, mut stream, _) = start_reading(&h, "stop/obj.bin", MIB).await;
    h.s3.stop();
    let mut failed = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body ended without an error");
    assert!(received.len() < size);
    assert!(received == data[..received.len()]);
    assert_eq!(
        metric(&h, r#"mlflow_proxy_download_cuts_total{reason="store"}"#).await,
        1.0
    );
    // Each failing range was retried (3 times) before the cut.
    assert!(metric(&h, "mlflow_proxy_download_range_retries_total").await >= 3.0);
    h.s3.restart().await;
    let (body, failed) = read_all(h.get("stop/obj.bin").await).await;
    assert!(!failed);
    assert_eq!(sha256(&body), sha256(&data));
    eventually_metric(&h, "mlflow_proxy_download_budget_in_use_bytes", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stops_the_ranged_gets_then_times_out() {
    let chunk = MIB;
    let parallelism = 4;
    let mut config = small_chunks(chunk, parallelism);
    let idle = Duration::from_secs(3);
    config.idle_timeout = idle;
    let h = Harness::start_with_download(config).await;
    // What a stalled client can still absorb: the kernel's largest receive and send buffers
    // on loopback, the client's own read buffer (slack), and what the proxy reads ahead.
    let absorbable = tcp_buffer_max("tcp_rmem") + tcp_buffer_max("tcp_wmem") + 2 * MIB;
    let bound = MIB + absorbable + parallelism * chunk;
    let size = (2 * bound).max(48 * MIB) / MIB * MIB;
    let data = random_bytes(size);
    assert_eq!(h.put("slow/obj.bin", data).await.status(), 200);
    let get_objects = r#"mlflow_proxy_s3_requests_total{operation="get_object",outcome="ok"}"#;
    // The proxy's last progress on the download comes after the request is sent.
    let sent = std::time::Instant::now();
    let (received, stream, _) = start_reading(&h, "slow/obj.bin", MIB).await;
    // The client reads nothing more. While the socket buffers fill, the read-ahead never
    // holds more than parallelism × chunk.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let held = metric(&h, "mlflow_proxy_download_budget_in_use_bytes").await;
        assert!(
            held <= (parallelism * chunk) as f64,
            "{held} bytes read ahead for one download: more than parallelism × chunk"
        );
    }
    // Past the idle timeout the download is ended and its budget share is free.
    eventually_metric(
        &h,
        r#"mlflow_proxy_download_cuts_total{reason="idle"}"#,
        1.0,
    )
    .await;
    assert!(
        sent.elapsed() >= idle,
        "cut after {:?}, before the idle timeout",
        sent.elapsed()
    );
    eventually_metric(&h, "mlflow_proxy_download_budget_in_use_bytes", 0.0).await;
    // The ranged GETs stopped with the client: no more than it and the sockets could take.
    let gets = metric(&h, get_objects).await;
    assert!(
        gets * chunk as f64 <= bound as f64,
        "{gets} ranged GETs of {chunk} bytes for a client that stopped after {} bytes \
         (at most {bound} could be absorbed)",
        received.len()
    );
    // The client, reading again, gets what was queued and then a cut connection.
    let (rest, failed) = drain(stream).await;
    assert!(failed, "the body ended without an error");
    assert!(received.len() + rest < size);
}

/// The largest buffer the kernel gives one TCP socket (`net.ipv4.tcp_rmem`/`tcp_wmem`).
fn tcp_buffer_max(name: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap();
    text.split_whitespace().last().unwrap().parse().unwrap()
}

async fn drain(
    mut stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>,
    >,
) -> (usize, bool) {
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => n += bytes.len(),
            Err(_) => return (n, true),
        }
    }
    (n, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_beyond_the_budget_still_complete_one_stream_each() {
    // Budget for one chunk only: the other downloads read nothing ahead, and all complete.
    let chunk = 256 * KIB;
    let mut config = small_chunks(chunk, 4);
    config.budget = chunk as u64;
    let h = Harness::start_with_download(config).await;
    let data = random_bytes(8 * MIB + 3);
    assert_eq!(h.put("budget/obj.bin", data.clone()).await.status(), 200);
    let mut downloads = Vec::new();
    for _ in 0..6 {
        let request = h.http.get(h.artifact("budget/obj.bin")).send();
        downloads.push(tokio::spawn(async move {
            read_all(request.await.unwrap()).await
        }));
    }
    for download in downloads {
        let (body, failed) = download.await.unwrap();
        assert!(!failed);
        assert_eq!(sha256(&body), sha256(&data));
    }
    assert_eq!(
        metric(&h, "mlflow_proxy_download_budget_capacity_bytes").await,
        chunk as f64
    );
    assert_eq!(
        metric(&h, "mlflow_proxy_download_budget_in_use_bytes").await,
        0.0
    );
}
