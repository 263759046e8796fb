//! Hostile request bodies, round two (issue 20), against the proxy binary as its own process:
//! huge `mpu/*` JSON bodies (memory by RSS from /proc), bodies that declare a length and go
//! silent on every route, and chunked uploads that trickle while others wait.

mod common;

use std::time::Duration;

use common::process::*;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const MPU: &str = "/api/2.0/mlflow-artifacts/mpu";

fn post_head(target: &str, length: usize) -> String {
    format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// `{"path": "x.bin", "upload_id": "u", "parts": [0, 0, …]}` of about `size` bytes.
fn zeros_body(size: usize) -> Vec<u8> {
    let mut body = br#"{"path": "x.bin", "upload_id": "u", "parts": [0"#.to_vec();
    while body.len() < size - 2 {
        body.extend_from_slice(b",0");
    }
    body.extend_from_slice(b"]}");
    body
}

/// Issue 20: one 16 MiB `mpu/complete` body of `[0,0,…]` took the proxy from 11 to 603 MiB
/// (a serde_json::Value per zero), eight at once 2.4-3.1 GiB. Now the bytes held count in the
/// upload budget (64 MiB here) and the parse stores nothing for them: the bound is the budget,
/// the process's own ~20 MiB and what eight connections hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_mpu_json_bodies_stay_within_the_upload_budget() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[]).await;
    let before = proxy.rss_mib();
    let body = std::sync::Arc::new(zeros_body(16 * MIB - 64));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (addr, body) = (proxy.addr, body.clone());
        clients.spawn(async move {
            let head = post_head(&format!("{MPU}/complete/0/x{i}"), body.len());
            exchange(addr, &head, &body).await
        });
    }
    let mut peak = before;
    while !clients.is_empty() {
        peak = peak.max(proxy.rss_mib());
        if let Ok(Some(done)) =
            tokio::time::timeout(Duration::from_millis(20), clients.join_next()).await
        {
            let (status, answer) = done.unwrap();
            assert!((400..500).contains(&status), "{status} {answer}");
        }
    }
    peak = peak.max(proxy.rss_mib());
    eprintln!("8 × 16 MiB mpu/complete bodies: RSS {before:.1} MiB before, peak {peak:.1} MiB");
    assert!(peak < 160.0, "RSS reached {peak:.1} MiB");

    // create and abort carry a path and a number or an id: a large one is refused before it is
    // read (413), whatever it holds.
    for action in ["create", "abort"] {
        let head = post_head(&format!("{MPU}/{action}/0/x"), 1024 * 1024);
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let (status, _) = read_answer(&mut stream, Duration::from_secs(60)).await;
        assert_eq!(status, 413, "{action}");
    }
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(&metrics, "mlflow_proxy_upload_budget_in_use_bytes"),
        0.0
    );
}

/// Send `head` and `sent` bytes of a body that declares more, then nothing; the proxy must end
/// it after the idle timeout (1 s here) with 408. The wait is for that answer (bounded only so
/// that a proxy without the timeout fails instead of hanging).
async fn silent_body(proxy: &ProxyProcess, head: &str, sent: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(sent).await.unwrap();
    read_answer(&mut stream, Duration::from_secs(60)).await
}

/// Issue 20: a part PUT, an mpu JSON body or a pass-through body that declared a length and
/// went silent stayed open (still at 420 s; 200 part PUTs held 200 S3 connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_bodies_are_ended_on_every_route() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(&s3, &mlflow, &[("PROXY_BODY_IDLE_TIMEOUT_SECS", "1")]).await;
    let created = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}{MPU}/create/1/r/artifacts", proxy.addr))
        .header("content-type", "application/json")
        .body(r#"{"path": "x.bin", "num_parts": 1}"#)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    let url = created["credentials"][0]["url"].as_str().unwrap();
    let part = &url[url.find("/api/").unwrap()..];

    let part_put = format!(
        "PUT {part} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        MIB
    );
    let (status, answer) = silent_body(&proxy, &part_put, &[1; 1000]).await;
    assert_eq!(status, 408, "part PUT: {answer}");
    let (status, answer) = silent_body(
        &proxy,
        &post_head(&format!("{MPU}/complete/1/r/artifacts"), 100),
        b"{\"path\": ",
    )
    .await;
    assert_eq!(status, 408, "mpu JSON: {answer}");
    let (status, answer) = silent_body(
        &proxy,
        &post_head("/api/2.0/mlflow/runs/create", 100),
        b"{\"experiment_id\": ",
    )
    .await;
    assert_eq!(status, 408, "pass-through: {answer}");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "mlflow_proxy_body_idle_timeouts_total{direction=\"upload\"}"
        ),
        3.0
    );
    // The part was not stored: the upload has no part.
    assert!(
        s3.keys().iter().all(|k| !k.ends_with("x.bin")),
        "{:?}",
        s3.keys()
    );
}

/// Issue 20: chunked uploads that trickle (a byte now and then) each took a part slot at their
/// first byte; as many as there are slots (here 2: a 12 MiB budget) made every other chunked
/// upload wait until they ended. Now a part takes a slot only past its first 16 KiB: the other
/// upload is stored while the tricklers are still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_chunked_uploads_leave_the_part_slots_to_others() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let proxy = ProxyProcess::start(
        &s3,
        &mlflow,
        &[
            ("PROXY_UPLOAD_BUDGET_MIB", "12"),
            ("PROXY_PART_SIZE_MIB", "6"),
            ("PROXY_BODY_IDLE_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    let mut tricklers = Vec::new();
    for i in 0..10 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(put_head(&format!("trickle/{i}.bin"), None).as_bytes())
            .await
            .unwrap();
        stream.write_all(&chunk(b"t")).await.unwrap();
        tricklers.push(stream);
    }
    // Both slots would be taken by now: the tricklers' first bytes reached the proxy.
    eventually_async("the ten tricklers are in flight", || async {
        metric(
            &proxy.metrics().await,
            "mlflow_proxy_transfers_in_flight{direction=\"upload\"}",
        ) >= 10.0
    })
    .await;
    let data = random_bytes(7 * MIB);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Bounded only so that a proxy that makes it wait fails (main waited for the tricklers'
    // idle timeout) instead of hanging.
    let sent = tokio::time::timeout(Duration::from_secs(60), async {
        stream
            .write_all(put_head("trickle/normal.bin", None).as_bytes())
            .await?;
        for piece in data.chunks(64 * 1024) {
            stream.write_all(&chunk(piece)).await?;
        }
        stream.write_all(b"0\r\n\r\n").await
    })
    .await;
    assert!(
        matches!(sent, Ok(Ok(()))),
        "the upload was not read: {sent:?}"
    );
    let (status, answer) = read_answer(&mut stream, Duration::from_secs(60)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        s3.object("trickle/normal.bin").map(|d| sha256(&d)),
        Some(sha256(&data))
    );
    // The tricklers are still open, and finish normally.
    for (i, mut stream) in tricklers.into_iter().enumerate() {
        stream.write_all(b"0\r\n\r\n").await.unwrap();
        let (status, _) = read_answer(&mut stream, Duration::from_secs(60)).await;
        assert_eq!(status, 200, "trickler {i}");
        assert_eq!(s3.object(&format!("trickle/{i}.bin")), Some(b"t".to_vec()));
    }
}
