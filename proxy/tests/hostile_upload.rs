//! Hostile and stalled upload clients, over raw sockets, against the proxy binary as its own
//! process (so that its RSS, read from /proc, is the proxy's alone) in front of a real S3
//! server (s3s-fs). Bounds are generous: they catch buffering proportional to what a client
//! declares or sends, not allocator noise.

mod common;

use std::time::{Duration, Instant};

use common::process::*;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TIB: u64 = 1024 * 1024 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_huge_upload_is_streamed_not_buffered() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[]).await;
    let before = proxy.rss_mib();

    // 5 TiB declared (S3's largest object), 256 MiB sent, then the client goes away.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(put_head("huge/declared.bin", Some(5 * TIB)).as_bytes())
        .await
        .unwrap();
    let block = random_bytes(MIB);
    let mut peak = before;
    for i in 0..256 {
        tokio::time::timeout(Duration::from_secs(60), stream.write_all(&block))
            .await
            .expect("the proxy stopped reading")
            .unwrap();
        if i % 16 == 0 {
            peak = peak.max(proxy.rss_mib());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    peak = peak.max(proxy.rss_mib());
    drop(stream);
    eprintln!("declared 5 TiB, sent 256 MiB: RSS {before:.1} MiB before, peak {peak:.1} MiB");
    assert!(peak < 160.0, "RSS reached {peak:.1} MiB");

    // Nothing is stored, and the multipart upload is aborted.
    eventually("the upload is aborted", || {
        s3.keys().is_empty()
            && s3
                .multipart_leftovers()
                .iter()
                .all(|f| !f.contains(".upload-"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_s3_cannot_store_is_refused_before_the_body() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[]).await;
    // No body byte is sent: the answer must come from the headers alone.
    let (status, body) = exchange(
        proxy.addr,
        &put_head("huge/too-big.bin", Some(5 * TIB + 1)),
        &[],
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error_code"], "INVALID_PARAMETER_VALUE");
    assert!(
        json["message"].as_str().unwrap().contains("5 TiB"),
        "{body}"
    );
    assert!(s3.keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_chunks_cost_about_their_length() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[]).await;
    let before = proxy.rss_mib();

    // 4 MiB sent as 1-byte chunks (24 MiB on the wire), in writes of 6 KiB of chunks.
    let data = random_bytes(4 * MIB);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(put_head("tiny/chunks.bin", None).as_bytes())
        .await
        .unwrap();
    let mut peak = before;
    for (i, slice) in data.chunks(1024).enumerate() {
        let wire: Vec<u8> = slice.iter().flat_map(|b| chunk(&[*b])).collect();
        stream.write_all(&wire).await.unwrap();
        if i % 256 == 0 {
            peak = peak.max(proxy.rss_mib());
        }
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, body) = read_answer(&mut stream, Duration::from_secs(120)).await;
    peak = peak.max(proxy.rss_mib());
    assert_eq!(status, 200, "{body}");
    eprintln!("4 MiB in 1-byte chunks: RSS {before:.1} MiB before, peak {peak:.1} MiB");
    assert!(
        peak - before < 48.0,
        "RSS grew by {:.1} MiB (from {before:.1})",
        peak - before
    );
    let stored = s3.object("tiny/chunks.bin").expect("stored");
    assert_eq!(sha256(&stored), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_do_not_block_the_others() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[]).await;

    // Eight stalled uploads: chunked ones that send only headers or one byte, declared ones
    // (5 TiB, and above the single-PUT limit) that send nothing or a little.
    let mut stalled = Vec::new();
    for i in 0..8u64 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let (head, body) = match i % 4 {
            0 => (put_head(&format!("stall/{i}"), None), Vec::new()),
            1 => (put_head(&format!("stall/{i}"), None), chunk(b"x")),
            2 => (put_head(&format!("stall/{i}"), Some(5 * TIB)), Vec::new()),
            _ => (
                put_head(&format!("stall/{i}"), Some(64 << 20)),
                vec![7; 1000],
            ),
        };
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        stalled.push(stream);
    }
    // All eight are being served (and stalled) before the ninth starts.
    let in_flight = r#"mlflow_proxy_transfers_in_flight{direction="upload"}"#;
    eventually_async("the eight stalled uploads are in flight", || async {
        metric(&proxy.metrics().await, in_flight) == 8.0
    })
    .await;

    // A 16 MiB chunked upload (multipart: two parts and a bit) still goes through.
    let data = random_bytes(16 * MIB + 3);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(put_head("ok/chunked.bin", None).as_bytes())
        .await
        .unwrap();
    for slice in data.chunks(100_000) {
        tokio::time::timeout(PATIENCE, stream.write_all(&chunk(slice)))
            .await
            .expect("the upload is blocked behind the stalled ones")
            .unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let (status, body) = read_answer(&mut stream, PATIENCE).await;
    assert_eq!(status, 200, "{body}");
    let stored = s3.object("ok/chunked.bin").expect("stored");
    assert_eq!(sha256(&stored), sha256(&data));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_body_is_ended_and_nothing_is_stored() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let idle = Duration::from_secs(2);
    let proxy = ProxyProcess::start(&s3, &mlflow, &[("PROXY_BODY_IDLE_TIMEOUT_SECS", "2")]).await;

    // Each kind of upload: chunked (parts in memory), declared large (parts streamed),
    // declared small (one PutObject). Each sends some bytes, then nothing.
    let cases: [(&str, Option<u64>, Vec<u8>); 3] = [
        ("silent/chunked", None, chunk(&random_bytes(6 * MIB))),
        ("silent/streamed", Some(64 << 20), random_bytes(9 * MIB)),
        ("silent/single", Some(4 << 20), random_bytes(MIB)),
    ];
    // Each answer is read as it comes, and timed from before its request was sent: the proxy
    // cannot have seen the body's last byte before then.
    let mut answers = Vec::new();
    for (path, length, body) in &cases {
        let sent = Instant::now();
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(put_head(path, *length).as_bytes())
            .await
            .unwrap();
        stream.write_all(body).await.unwrap();
        answers.push(tokio::spawn(async move {
            let answer = read_answer(&mut stream, idle + PATIENCE).await;
            (answer, sent.elapsed())
        }));
    }
    for (answer, (path, _, _)) in answers.into_iter().zip(&cases) {
        let ((status, body), took) = answer.await.unwrap();
        assert!(
            took >= idle,
            "{path}: ended after {took:?}, before the idle timeout"
        );
        assert_eq!(status, 408, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error_code"], "BAD_REQUEST", "{path}: {body}");
    }
    eventually("nothing stored, no upload left open", || {
        s3.keys().is_empty()
            && s3
                .multipart_leftovers()
                .iter()
                .all(|f| !f.contains(".upload-"))
    })
    .await;
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mlflow_proxy_body_idle_timeouts_total{direction=\"upload\"}"
        ),
        3.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_that_fails_is_tried_again() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[]).await;

    // A chunked upload with one part stored, then S3 goes down and the client goes away:
    // the abort fails.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(put_head("retry/abort.bin", None).as_bytes())
        .await
        .unwrap();
    stream
        .write_all(&chunk(&random_bytes(9 * MIB)))
        .await
        .unwrap();
    // s3s-fs shows its part files; an external store lists the open upload.
    eventually("a part is stored", || {
        let left = s3.multipart_leftovers();
        if s3.is_external() {
            !left.is_empty()
        } else {
            left.iter().any(|f| f.contains(".part-1"))
        }
    })
    .await;
    s3.stop();
    drop(stream);
    let pending = "mlflow_proxy_multipart_aborts_pending";
    eventually_async("the failed abort is pending", || async {
        metric(&proxy.metrics().await, pending) == 1.0
    })
    .await;
    // (Whether the part files are still there is not asserted: the in-process store's open
    // connections outlive its listener, so a part in flight may or may not have landed.)

    // S3 is back: the abort goes through on a retry (retries back off, doubling from 1 s: the
    // next one comes within about twice the time S3 was away), and no part is left.
    s3.restart().await;
    eventually("no part is left", || s3.multipart_leftovers().is_empty()).await;
    eventually_async("no abort is pending", || async {
        metric(&proxy.metrics().await, pending) == 0.0
    })
    .await;
    assert!(s3.keys().is_empty());
}
