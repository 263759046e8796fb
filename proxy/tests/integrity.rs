//! Integrity end to end (docs/integrity.md): every upload path records a digest with the object,
//! whole downloads carry it and are checked while they stream, and an object whose bytes no
//! longer match is never delivered as a complete download. Against s3s-fs (a byte flipped in
//! its file on disk) and, with `PROXY_TEST_S3_*` set, Garage (the object replaced behind the
//! proxy's back, its digest metadata kept).

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use common::*;
use mlflow_artifact_proxy::artifacts::state::download_memory::DownloadConfig;
use mlflow_artifact_proxy::integrity::{Algorithm, Digest, IntegrityConfig};
use mlflow_artifact_proxy::store::s3::{Native, Store};

fn crc64nvme(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
    STANDARD.encode(crc.to_be_bytes())
}

fn sha256_b64(data: &[u8]) -> String {
    use sha2::Digest;
    STANDARD.encode(sha2::Sha256::digest(data))
}

/// A proxy with the given algorithm, downloads above 1 MiB read as parallel 1 MiB ranges.
async fn harness(algorithm: Option<Algorithm>) -> Harness {
    harness_with(IntegrityConfig {
        algorithm,
        ..IntegrityConfig::default()
    })
    .await
}

async fn harness_with(integrity: IntegrityConfig) -> Harness {
    Harness::start_configured(|config| {
        config.integrity = integrity;
        config.download = DownloadConfig {
            chunk: MIB as u64,
            threshold: MIB as u64,
            ..DownloadConfig::default()
        };
    })
    .await
}

/// The value of one series in the proxy's metrics (0 when absent).
async fn metric(h: &Harness, series: &str) -> f64 {
    h.metrics()
        .await
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn outcome(h: &Harness, outcome: &str) -> f64 {
    metric(
        h,
        &format!("mlflow_proxy_integrity_downloads_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

/// The object's user metadata, as the store answers HEAD (straight to the store).
async fn stored_metadata(h: &Harness, key: &str) -> std::collections::HashMap<String, String> {
    let (head, status) = h.s3.client().head_object(key).await.unwrap();
    assert_eq!(status, 200, "HEAD {key}");
    head.metadata.unwrap_or_default()
}

/// The proxy's own client of the harness's store (signed HEADs that ask for checksums).
fn store(h: &Harness) -> Store {
    Store::new(
        &h.s3.store_config(""),
        mlflow_artifact_proxy::ops::metrics::Metrics::new(),
        std::time::Duration::from_secs(60),
    )
    .unwrap()
}

/// The `algorithm` digest kept with the object (base64), as the store answers HEAD: the proxy's
/// metadata or, for a FULL_OBJECT multipart upload, the store's own checksum.
async fn kept_digest(h: &Harness, key: &str, algorithm: Algorithm) -> Option<String> {
    let meta = store(h).head_object(key).await.unwrap().unwrap();
    Digest::from_metadata(&meta.metadata, algorithm)
        .filter(|d| d.algorithm() == algorithm)
        .map(|d| d.to_base64())
}

/// Upload through each path the proxy has for a PUT: one streamed PutObject, a streamed
/// multipart upload (declared length above the single-PUT limit), and a chunked body (parts
/// filled in memory; a small one ends as one PutObject).
async fn upload_every_way(h: &Harness) -> Vec<(&'static str, Vec<u8>)> {
    let objects = vec![
        ("d/single.bin", random_bytes(300_000)),
        ("d/streamed.bin", random_bytes(12 * MIB + 12_345)),
        ("d/chunked.bin", random_bytes(11 * MIB + 7)),
        ("d/chunked-small.bin", random_bytes(70_000)),
    ];
    for (path, data) in &objects {
        let response = if path.starts_with("d/chunked") {
            // No Content-Length: a stream of 64 KiB frames.
            let frames: Vec<Result<Bytes, std::io::Error>> = data
                .chunks(65_536)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            h.http
                .put(h.artifact(path))
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    frames,
                )))
                .send()
                .await
                .unwrap()
        } else {
            h.put(path, data.clone()).await
        };
        assert_eq!(response.status(), 200, "PUT {path}");
    }
    objects
}

/// Bytes a client receives of a GET (with `range`), and whether the transfer ended cleanly.
/// Status 0: the connection closed before any answer, which is how a cut answer ends when its
/// first frame already completes the object (hyper sends the head with the first body bytes).
async fn fetch_range(
    h: &Harness,
    path: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>, bool) {
    let mut request = h.http.get(h.artifact(path));
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let Ok(mut response) = request.send().await else {
        return (0, reqwest::header::HeaderMap::new(), Vec::new(), false);
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return (status, headers, body, true),
            Err(_) => return (status, headers, body, false),
        }
    }
}

async fn fetch(h: &Harness, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>, bool) {
    fetch_range(h, path, None).await
}

/// curl's exit code for a download of `path` (18: the transfer ended short).
async fn curl(h: &Harness, path: &str) -> i32 {
    let url = h.artifact(path);
    // Off the runtime's thread: the proxy serves on it.
    tokio::task::spawn_blocking(move || {
        let out = tempfile::NamedTempFile::new().unwrap();
        std::process::Command::new("curl")
            .args(["-sS", "--noproxy", "*", "--max-time", "120", "-o"])
            .arg(out.path())
            .arg(url)
            .status()
            .unwrap()
            .code()
            .unwrap_or(-1)
    })
    .await
    .unwrap()
}

/// Replace a stored object's bytes with `corrupt`, its digest metadata left as it was: on
/// s3s-fs by writing its file on disk (rot under the store), elsewhere by a PUT straight to the
/// store with the old metadata (a writer behind the proxy's back). An object whose digest is the
/// store's own checksum (FULL_OBJECT) loses it to the PUT: the writer keeps it as metadata.
async fn corrupt(h: &Harness, key: &str, corrupt: &[u8]) {
    if h.s3.is_external() {
        let mut metadata = stored_metadata(h, key).await;
        if !metadata.keys().any(|k| k.starts_with("mlflow-proxy-"))
            && let Some(crc) = kept_digest(h, key, Algorithm::Crc64Nvme).await
        {
            metadata.insert("mlflow-proxy-crc64nvme".into(), crc);
        }
        let mut headers = http::HeaderMap::new();
        for (name, value) in metadata {
            headers.insert(
                http::HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        h.s3.client()
            .put_object_with_headers(key, corrupt, Some(headers))
            .await
            .unwrap();
    } else {
        std::fs::write(h.s3.object_path(key), corrupt).unwrap();
    }
}

#[tokio::test]
async fn every_upload_path_records_the_digest_and_downloads_carry_it() {
    every_upload_path_records_the_digest(false).await;
}

/// The same with `PROXY_STORE_CHECKSUMS=auto`: the store is sent the checksums it verifies.
#[tokio::test]
async fn with_store_checksums_every_upload_path_records_the_digest() {
    every_upload_path_records_the_digest(true).await;
}

async fn every_upload_path_records_the_digest(store_checksums: bool) {
    let h = harness_with(IntegrityConfig {
        algorithm: Some(Algorithm::Crc64Nvme),
        store_checksums,
    })
    .await;
    let objects = upload_every_way(&h).await;
    // With the store's checksums, multipart uploads are of S3's FULL_OBJECT type where the store
    // verifies that (Garage): the store keeps their digest as its own checksum; elsewhere, metadata.
    let mut native = store(&h).native().await;
    native.full_object &= store_checksums;
    for (path, data) in &objects {
        // Kept with the object, where MLflow's listings never show it.
        assert_eq!(
            kept_digest(&h, path, Algorithm::Crc64Nvme).await,
            Some(crc64nvme(data)),
            "{path}"
        );
        let multipart = data.len() > 8 * MIB;
        assert_eq!(
            stored_metadata(&h, path)
                .await
                .contains_key("mlflow-proxy-crc64nvme"),
            !(multipart && native.full_object),
            "{path}"
        );
        let (status, headers, body, clean) = fetch(&h, path).await;
        assert_eq!((status, clean), (200, true), "{path}");
        assert!(body == *data, "{path}: the bytes changed");
        assert_eq!(
            headers["x-amz-checksum-crc64nvme"],
            crc64nvme(data),
            "{path}"
        );
        assert_eq!(headers["x-amz-checksum-type"], "FULL_OBJECT", "{path}");
        let head = h.http.head(h.artifact(path)).send().await.unwrap();
        assert_eq!(head.headers()["x-amz-checksum-crc64nvme"], crc64nvme(data));
    }
    // A range: served as before, no whole-object checksum on it.
    let range = h
        .http
        .get(h.artifact("d/single.bin"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert!(range.headers().get("x-amz-checksum-crc64nvme").is_none());
    assert_eq!(range.bytes().await.unwrap(), objects[0].1[10..20]);

    assert_eq!(outcome(&h, "ok").await, 4.0);
    assert_eq!(outcome(&h, "mismatch").await, 0.0);
    assert_eq!(
        metric(
            &h,
            "mlflow_proxy_integrity_uploads_total{outcome=\"recorded\"}"
        )
        .await,
        4.0
    );
    // The listing MLflow's client sees: names and sizes, nothing of the digest.
    let listing = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/artifacts?path=d"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains("crc64"), "{listing}");
}

#[tokio::test]
async fn a_corrupted_object_is_never_delivered_whole() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let objects = upload_every_way(&h).await;
    // One byte flipped in the small object (one GET) and in the large streamed one (parallel
    // ranged GETs, checked as a whole).
    for (path, data) in &objects[..2] {
        let mut bad = data.clone();
        bad[data.len() / 2] ^= 0x01;
        corrupt(&h, path, &bad).await;
    }
    for (i, (path, data)) in objects[..2].iter().enumerate() {
        let (status, headers, body, clean) = fetch(&h, path).await;
        assert!(status == 200 || status == 0, "{path}: {status}");
        if status == 200 {
            assert_eq!(headers["content-length"], data.len().to_string());
        }
        assert!(!clean, "{path}: a corrupt object was delivered whole");
        assert!(body.len() < data.len(), "{path}: {} bytes", body.len());
        assert_eq!(outcome(&h, "mismatch").await, (i + 1) as f64);
    }
    // A real client: curl fails the transfer (18: partial file; 52: the connection closed
    // before the head, when the object's first frame was already its last).
    for path in ["d/single.bin", "d/streamed.bin"] {
        let code = curl(&h, path).await;
        assert!(code == 18 || code == 52, "{path}: curl exited {code}");
    }
    assert_eq!(outcome(&h, "mismatch").await, 4.0);
    // A range that covers the whole object (what MLflow's client asks for through presigned/
    // URLs) is the whole object: checked, and cut short too.
    let (path, data) = &objects[0];
    for whole in ["bytes=0-".to_owned(), format!("bytes=0-{}", data.len() - 1)] {
        let (status, _, got, clean) = fetch_range(&h, path, Some(&whole)).await;
        assert!(status == 206 || status == 0, "{whole}: {status}");
        assert!(!clean && got.len() < data.len(), "{whole}: delivered whole");
    }
    assert_eq!(outcome(&h, "mismatch").await, 6.0);
    // Other ranges are served as they are, unchecked.
    let range = h
        .http
        .get(h.artifact("d/single.bin"))
        .header("range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), 206);
    assert_eq!(range.bytes().await.unwrap(), objects[0].1[..100]);
    // The untouched objects download whole.
    for (path, data) in &objects[2..] {
        let (status, _, body, clean) = fetch(&h, path).await;
        assert_eq!((status, clean), (200, true), "{path}");
        assert!(body == *data);
        assert_eq!(curl(&h, path).await, 0);
    }
    assert_eq!(outcome(&h, "mismatch").await, 6.0);
}

#[tokio::test]
async fn objects_without_a_digest_are_served_unchecked() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let data = random_bytes(100_000);
    // Written straight to the store, as before this feature.
    h.s3.client().put_object("old/x.bin", &data).await.unwrap();
    let (status, headers, body, clean) = fetch(&h, "old/x.bin").await;
    assert_eq!((status, clean), (200, true));
    assert!(body == data);
    assert!(headers.get("x-amz-checksum-crc64nvme").is_none());
    assert_eq!(outcome(&h, "no_digest").await, 1.0);
}

#[tokio::test]
async fn sha256_is_recorded_and_sent_as_repr_digest() {
    let h = harness(Some(Algorithm::Sha256)).await;
    let objects = upload_every_way(&h).await;
    for (path, data) in &objects {
        assert_eq!(
            stored_metadata(&h, path).await.get("mlflow-proxy-sha256"),
            Some(&sha256_b64(data)),
            "{path}"
        );
        let (status, headers, body, clean) = fetch(&h, path).await;
        assert_eq!((status, clean), (200, true), "{path}");
        assert!(body == *data);
        assert_eq!(
            headers["repr-digest"],
            format!("sha-256=:{}:", sha256_b64(data))
        );
        assert!(headers.get("x-amz-checksum-crc64nvme").is_none());
    }
    let (path, data) = &objects[1];
    let mut bad = data.clone();
    bad[7] ^= 0x80;
    corrupt(&h, path, &bad).await;
    let (_, _, _, clean) = fetch(&h, path).await;
    assert!(!clean, "a corrupt object was delivered whole");
    assert_eq!(outcome(&h, "mismatch").await, 1.0);
}

#[tokio::test]
async fn off_records_and_checks_nothing() {
    let h = harness(None).await;
    let data = random_bytes(50_000);
    assert_eq!(h.put("d/x.bin", data.clone()).await.status(), 200);
    let metadata = stored_metadata(&h, "d/x.bin").await;
    assert!(
        !metadata.contains_key("mlflow-proxy-crc64nvme"),
        "{metadata:?}"
    );
    assert!(
        !metadata.contains_key("mlflow-proxy-sha256"),
        "{metadata:?}"
    );
    let mut bad = data.clone();
    bad[0] ^= 1;
    corrupt(&h, "d/x.bin", &bad).await;
    let (status, _, body, clean) = fetch(&h, "d/x.bin").await;
    assert_eq!((status, clean), (200, true));
    assert!(body == bad);
}

/// `mlflow-artifact-proxy verify` with `args`, against the harness's store: exit code and the
/// lines it printed.
async fn verify(h: &Harness, args: &[&str]) -> (i32, Vec<String>) {
    let mut command = proxy_command_to(
        env!("CARGO_BIN_EXE_mlflow-artifact-proxy"),
        &h.s3,
        &h.s3.endpoint,
        "http://127.0.0.1:9",
    );
    command.arg("verify").args(args);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (output.status.code().unwrap_or(-1), lines)
}

#[tokio::test]
async fn verify_reports_mismatches_and_objects_without_a_digest_and_backfills_them() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let objects = upload_every_way(&h).await;
    let old = random_bytes(40_000);
    h.s3.client().put_object("old/x.bin", &old).await.unwrap();

    let (code, lines) = verify(&h, &[]).await;
    assert_eq!(code, 0, "{lines:?}");
    assert_eq!(
        lines.last().unwrap(),
        &format!(
            "verify: objects: 5, bytes: {}, ok: 4, mismatch: 0, no digest: 1, backfilled: 0, errors: 0",
            objects.iter().map(|(_, d)| d.len()).sum::<usize>()
        )
    );

    let (path, data) = &objects[1];
    let mut bad = data.clone();
    bad[data.len() - 1] ^= 0x40;
    corrupt(&h, path, &bad).await;
    let (code, lines) = verify(&h, &[]).await;
    assert_eq!(code, 1, "{lines:?}");
    assert!(lines.contains(&format!("mismatch: {path}")), "{lines:?}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("ok: 3, mismatch: 1, no digest: 1"),
        "{lines:?}"
    );
    // --prefix: only what is under it.
    let (code, lines) = verify(&h, &["--prefix", "old"]).await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("verify: objects: 1, bytes: 0, ok: 0, mismatch: 0, no digest: 1"),
        "{lines:?}"
    );

    // --backfill records the digest of the objects without one, and the proxy then checks it.
    let (code, lines) = verify(&h, &["--prefix", "old/", "--backfill"]).await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines.contains(&"backfilled: old/x.bin".to_owned()),
        "{lines:?}"
    );
    assert_eq!(
        stored_metadata(&h, "old/x.bin")
            .await
            .get("mlflow-proxy-crc64nvme"),
        Some(&crc64nvme(&old))
    );
    let (status, headers, body, clean) = fetch(&h, "old/x.bin").await;
    assert_eq!((status, clean), (200, true));
    assert!(body == old);
    assert_eq!(headers["x-amz-checksum-crc64nvme"], crc64nvme(&old));
    let (code, lines) = verify(&h, &["--prefix", "old/"]).await;
    assert_eq!(code, 0, "{lines:?}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains("ok: 1, mismatch: 0, no digest: 0"),
        "{lines:?}"
    );

    // A store that cannot be reached: 2, "could not check", not 1.
    h.s3.stop();
    let (code, _) = verify(&h, &["--s3-timeout-secs", "5"]).await;
    assert_eq!(code, 2);
}

/// MLflow's own multipart flow (`mpu/create`, a signed part URL per part, `mpu/complete`), as
/// its client drives it: parts sent in parallel, in reverse order. Returns the complete's
/// status, with the ETags as `etags` turns them.
async fn client_multipart(
    h: &Harness,
    name: &str,
    data: &[u8],
    part: usize,
    etags: impl Fn(usize, String) -> String,
) -> u16 {
    use serde_json::json;
    const MPU: &str = "/api/2.0/mlflow-artifacts/mpu";
    let parts = data.len().div_ceil(part);
    let (status, created) = post_json(
        h,
        &h.url(&format!("{MPU}/create/mpu")),
        json!({"path": name, "num_parts": parts}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let urls: Vec<String> = created["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["url"].as_str().unwrap().to_owned())
        .collect();
    let sends = urls.iter().enumerate().rev().map(|(i, url)| {
        let bytes = data[i * part..((i + 1) * part).min(data.len())].to_vec();
        async move { (i, h.http.put(url).body(bytes).send().await.unwrap()) }
    });
    let mut listed = Vec::new();
    for (i, response) in futures_util::future::join_all(sends).await {
        assert_eq!(response.status(), 200);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() <= 130, "{etag}");
        listed.push(json!({"part_number": i + 1, "etag": etags(i, etag), "url": urls[i]}));
    }
    let (status, _) = post_json(
        h,
        &h.url(&format!("{MPU}/complete/mpu")),
        json!({"path": name, "upload_id": created["upload_id"], "parts": listed}),
    )
    .await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_multipart_flow_gets_the_single_put_digest() {
    for algorithm in [Algorithm::Crc64Nvme, Algorithm::Sha256] {
        let h = harness(Some(algorithm)).await;
        let data = random_bytes(11 * MIB + 3);
        assert_eq!(h.put("mpu/single.bin", data.clone()).await.status(), 200);
        let status = client_multipart(&h, "parts.bin", &data, 5 * MIB, |_, e| e).await;
        assert_eq!(status, 200);
        let parts = stored_metadata(&h, "mpu/parts.bin").await;
        // CRCs combine; SHA-256 does not, so the flow records a CRC in either mode.
        assert_eq!(
            parts.get("mlflow-proxy-crc64nvme"),
            Some(&crc64nvme(&data)),
            "{algorithm:?}"
        );
        if algorithm == Algorithm::Crc64Nvme {
            // The single PUT's (a FULL_OBJECT upload on Garage: the store's own checksum).
            assert_eq!(
                kept_digest(&h, "mpu/single.bin", Algorithm::Crc64Nvme).await,
                Some(crc64nvme(&data))
            );
        }
        let (status, headers, body, clean) = fetch(&h, "mpu/parts.bin").await;
        assert_eq!((status, clean), (200, true));
        assert!(body == data);
        assert_eq!(headers["x-amz-checksum-crc64nvme"], crc64nvme(&data));

        // And a corruption of it is caught.
        let mut bad = data.clone();
        bad[6 * MIB] ^= 4;
        corrupt(&h, "mpu/parts.bin", &bad).await;
        let (_, _, _, clean) = fetch(&h, "mpu/parts.bin").await;
        assert!(!clean, "a corrupt object was delivered whole");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_etag_the_proxy_did_not_seal_is_refused() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let data = random_bytes(6 * MIB);
    // A seal altered by the client (its CRC chosen).
    let status = client_multipart(&h, "forged.bin", &data, 5 * MIB, |i, etag| {
        if i == 0 {
            etag.replacen('~', "~A", 1)
        } else {
            etag
        }
    })
    .await;
    assert_eq!(status, 400);
    // S3's bare ETags (a proxy before this feature sealed nothing): stored, without a digest.
    let status = client_multipart(&h, "bare.bin", &data, 5 * MIB, |_, etag| {
        format!("{}\"", etag.split('~').next().unwrap())
    })
    .await;
    assert_eq!(status, 200);
    assert!(
        !stored_metadata(&h, "mpu/bare.bin")
            .await
            .contains_key("mlflow-proxy-crc64nvme")
    );
    let (status, _, body, clean) = fetch(&h, "mpu/bare.bin").await;
    assert_eq!((status, clean), (200, true));
    assert!(body == data);
}

/// A relay to `upstream` that flips one bit of the `at`th byte of the body of every PUT whose
/// body is longer than that: a transfer corrupted on its way into the store (a fault at byte N,
/// which no real part makes on demand). Requests are read one after the other on each
/// connection, by their Content-Length (the proxy sends no other kind to S3). Each request's
/// head (lower-cased) is kept in `heads`.
async fn corrupting_relay(
    upstream: std::net::SocketAddr,
    at: u64,
    heads: Arc<Mutex<Vec<String>>>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    let _ = client_write.shutdown().await;
                });
                let mut reader = BufReader::new(client_read);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let before = head.len();
                        match reader.read_until(b'\n', &mut head).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if &head[before..] == b"\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let len: u64 = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let flip = text.starts_with("put ") && len > at;
                    heads.lock().unwrap().push(text.clone());
                    if server_write.write_all(&head).await.is_err() {
                        return;
                    }
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 64 * 1024];
                    while sent < len {
                        let want = usize::try_from(len - sent)
                            .unwrap_or(usize::MAX)
                            .min(buf.len());
                        let Ok(n) = reader.read(&mut buf[..want]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        if flip && (sent..sent + n as u64).contains(&at) {
                            buf[(at - sent) as usize] ^= 0x01;
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        sent += n as u64;
                    }
                }
            });
        }
    });
    addr
}

/// A second proxy on the harness's store, reached through `corrupting_relay` (byte 100,000 of
/// every PUT body flipped; request heads kept in `heads`), with `crc64nvme` and the store's
/// checksums as `store_checksums` says.
async fn corrupting_proxy(
    h: &Harness,
    store_checksums: bool,
    heads: Arc<Mutex<Vec<String>>>,
) -> mlflow_artifact_proxy::Proxy {
    let relay = corrupting_relay(h.s3.addr, 100_000, heads).await;
    let mut config = serve_config(&h.s3, &format!("http://{}", h.mlflow.addr));
    config.store.endpoint = url::Url::parse(&format!("http://{relay}")).unwrap();
    config.integrity = IntegrityConfig {
        algorithm: Some(Algorithm::Crc64Nvme),
        store_checksums,
    };
    mlflow_artifact_proxy::Proxy::start(config).await.unwrap()
}

/// With the store's own checksums (`PROXY_STORE_CHECKSUMS=auto`): a transfer corrupted between
/// the proxy and the store is
/// refused by a store that verifies them (Garage: PutObject and parts; s3s-fs: PutObject only),
/// the upload fails (502, retryable) and Garage keeps nothing; where the store does not verify
/// (s3s-fs's parts), the upload stores the corrupt bytes with the digest of the client's bytes,
/// and their download is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_corrupted_on_its_way_into_the_store_is_refused() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let corrupting = corrupting_proxy(&h, true, Default::default()).await;
    // Garage verifies the parts' checksums too; s3s-fs does not.
    let parts_verified = h.s3.store != "s3s-fs";
    let objects = [
        ("t/single.bin", random_bytes(300_000), false, true),
        (
            "t/streamed.bin",
            random_bytes(12 * MIB + 1),
            false,
            parts_verified,
        ),
        (
            "t/chunked.bin",
            random_bytes(11 * MIB),
            true,
            parts_verified,
        ),
    ];
    for (path, data, chunked, refused) in &objects {
        let url = format!(
            "http://{}/api/2.0/mlflow-artifacts/artifacts/{path}",
            corrupting.addr
        );
        let request = h.http.put(url);
        let request = if *chunked {
            let frames: Vec<Result<Bytes, std::io::Error>> = data
                .chunks(65_536)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                frames,
            )))
        } else {
            request.body(data.clone())
        };
        let response = request.send().await.unwrap();
        if *refused {
            assert_eq!(response.status(), 502, "{path}: the store took it");
            let stored = h.s3.object(path);
            if h.s3.store == "s3s-fs" {
                // s3s-fs writes the body before it compares (and keeps it): no digest with it.
                assert!(
                    !stored_metadata(&h, path)
                        .await
                        .contains_key("mlflow-proxy-crc64nvme")
                );
            } else {
                assert!(stored.is_none(), "{path}: stored although refused");
            }
        } else {
            assert_eq!(response.status(), 200, "{path}");
            // Stored as the store received it, recorded with the client's digest: cut.
            let (status, _, body, clean) = fetch(&h, path).await;
            assert!(status == 200 || status == 0, "{path}: {status}");
            assert!(!clean && body.len() < data.len(), "{path}: delivered whole");
        }
    }
    assert!(h.s3.multipart_leftovers().is_empty());
    // The same uploads without the fault are stored whole (the checksums sent are right).
    for (path, data, _, _) in &objects[..2] {
        assert_eq!(h.put(path, data.clone()).await.status(), 200, "{path}");
        let (status, _, body, clean) = fetch(&h, path).await;
        assert_eq!((status, clean), (200, true), "{path}");
        assert!(body == *data, "{path}");
    }
}

/// `PROXY_STORE_CHECKSUMS=off` (the default): the store is sent no checksum (no trailer, no
/// FULL_OBJECT), so a transfer corrupted on its way in is stored (200) on every store; the proxy
/// still records the client's digest, and the download of the corrupt bytes is cut before its
/// last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_store_checksums_off_the_store_is_sent_none_and_downloads_are_still_checked() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let heads = Arc::new(Mutex::new(Vec::new()));
    let proxy = corrupting_proxy(&h, false, heads.clone()).await;
    for (path, data) in [
        ("off/single.bin", random_bytes(300_000)),
        ("off/streamed.bin", random_bytes(12 * MIB + 1)),
    ] {
        let url = format!(
            "http://{}/api/2.0/mlflow-artifacts/artifacts/{path}",
            proxy.addr
        );
        let response = h.http.put(url).body(data.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            kept_digest(&h, path, Algorithm::Crc64Nvme).await,
            Some(crc64nvme(&data)),
            "{path}: the client's digest is recorded"
        );
        let (status, _, body, clean) = fetch(&h, path).await;
        assert!(status == 200 || status == 0, "{path}: {status}");
        assert!(!clean && body.len() < data.len(), "{path}: delivered whole");
    }
    let heads = heads.lock().unwrap();
    assert!(heads.iter().any(|h| h.starts_with("put ")), "{heads:?}");
    // What asks a store to verify (`x-amz-checksum-mode` on reads only asks it to say).
    let asks = [
        "x-amz-trailer",
        "x-amz-checksum-crc",
        "x-amz-checksum-sha",
        "x-amz-checksum-algorithm",
        "x-amz-checksum-type",
        "x-amz-sdk-checksum",
        "streaming-unsigned-payload-trailer",
    ];
    for head in heads.iter() {
        assert!(
            !asks.iter().any(|a| head.contains(a)),
            "a checksum was sent to the store: {head}"
        );
    }
}

/// What each store verifies, as the proxy's probe finds it (by the answers, not the name), and
/// a FULL_OBJECT completion with a wrong whole-object CRC: refused where the store checks it
/// (nothing stored), taken where it does not (then the proxy keeps its own digest in metadata).
#[tokio::test]
async fn the_store_verifies_what_the_probe_says() {
    let h = harness(Some(Algorithm::Crc64Nvme)).await;
    let store = store(&h);
    let native = store.native().await;
    let expected = match h.s3.store.as_str() {
        "s3s-fs" => Some(Native {
            put: true,
            parts: false,
            full_object: false,
        }),
        "garage" => Some(Native {
            put: true,
            parts: true,
            full_object: true,
        }),
        _ => None,
    };
    if let Some(expected) = expected {
        assert_eq!(native, expected, "{}", h.s3.store);
    }
    // The probe leaves nothing behind.
    assert!(h.s3.keys().is_empty(), "{:?}", h.s3.keys());
    assert!(h.s3.multipart_leftovers().is_empty());

    let data = random_bytes(6 * MIB + 5);
    let key = "w/whole.bin";
    let id = store
        .create_multipart(key, "application/octet-stream", native.full_object)
        .await
        .unwrap();
    let mut etags = Vec::new();
    for (i, part) in data.chunks(5 * MIB).enumerate() {
        let trailer = native.parts.then_some(Algorithm::Crc64Nvme);
        let frames = vec![Bytes::copy_from_slice(part)];
        let number = i as u32 + 1;
        let etag = store
            .upload_part(key, &id, number, frames, part.len(), trailer)
            .await
            .unwrap();
        etags.push((number, etag));
    }
    let wrong = Digest::Crc64Nvme(crc_fast::checksum(
        crc_fast::CrcAlgorithm::Crc64Nvme,
        &data[1..],
    ));
    let completed = store
        .complete_multipart(key, &id, etags, native.full_object.then_some(wrong))
        .await;
    if native.full_object {
        let error = completed.unwrap_err().to_string();
        assert!(error.contains("400"), "{error}");
        assert!(h.s3.object(key).is_none());
        store.abort_multipart(key, &id).await.unwrap();
    } else {
        completed.unwrap();
        assert!(h.s3.object(key).unwrap() == data);
    }
}
