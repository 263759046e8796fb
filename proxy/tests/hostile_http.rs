//! HTTP semantics under hostile or odd clients, and peers that go silent: request framing and
//! targets as uvicorn treats them, conditional and range requests decided by the proxy, the
//! forwarding headers MLflow may believe, timeouts towards S3 and MLflow, download stalls,
//! and error answers that name no internal address. Socket-level where the framing matters.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use pretty_assertions::assert_eq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ARTIFACTS: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// Send `raw` as is on a fresh connection and read the answer (bounded wait).
async fn exchange(addr: SocketAddr, raw: &[u8], head: bool) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "no end within {PATIENCE:?}; got {:?}",
        String::from_utf8_lossy(&answer)
    );
    parse_response(&answer, head)
}

/// A peer that accepts connections and never answers: the one place a fake is right.
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test opens a handful of connections.
        while held.len() < 64 {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            // Read (so that request bodies do not block on a full window) and never answer.
            let mut sink = vec![0u8; 64 * 1024];
            held.push(tokio::spawn(async move {
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            }));
        }
    });
    (addr, task)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

// ---- item 9: a raw '#' in the target ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_hash_in_the_target_is_an_invalid_path() {
    let h = Harness::start().await;
    for key in ["a/x.txt", "a/y.txt"] {
        assert_eq!(h.put(key, b"keep".to_vec()).await.status(), 200);
    }
    for method in ["DELETE", "GET", "PUT"] {
        let target = format!("{ARTIFACTS}/a#zzz");
        let response = raw_request(h.proxy.addr, method, &target, b"x").await;
        assert_eq!(response.status, 400, "{method}: {}", response.text());
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["message"], "Invalid path", "{method}");
    }
    assert_eq!(h.s3.keys(), vec!["a/x.txt", "a/y.txt"], "nothing deleted");

    // Pass-through: MLflow gets the whole target (`%23` decodes to the path uvicorn would see).
    let response = raw_request(h.proxy.addr, "GET", "/api/2.0/mlflow/x#frag?y=1", b"").await;
    assert_eq!(response.status, 201);
    assert_eq!(
        h.mlflow.last().path_and_query,
        "/api/2.0/mlflow/x%23frag?y=1"
    );
}

// ---- item 10: framing and methods as uvicorn has them -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_uvicorn_refuses_are_refused() {
    let h = Harness::start().await;
    let cases: &[(&str, &[u8])] = &[
        (
            "HTTP/1.1 without Host",
            b"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Hosts",
            b"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "gzip, chunked",
            b"POST /api/2.0/mlflow/runs/create HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "an artifact download without Host",
            b"GET /api/2.0/mlflow-artifacts/artifacts/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, raw) in cases {
        let response = exchange(h.proxy.addr, raw, false).await;
        assert_eq!(response.status, 400, "{what}");
        assert_eq!(response.text(), "Invalid HTTP request received.", "{what}");
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    assert_eq!(h.mlflow.count(), 0, "MLflow saw none of them");

    // HTTP/1.0 needs no Host, but MLflow's host check refuses an empty one (issue 20: passed
    // through, it got MLflow's own address as its Host and was allowed); /health is exempt.
    let response = exchange(
        h.proxy.addr,
        b"GET /api/2.0/mlflow/experiments/search HTTP/1.0\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(
        (response.status, response.text().as_str()),
        (
            403,
            "Invalid Host header - possible DNS rebinding attack detected"
        )
    );
    assert_eq!(h.mlflow.count(), 0, "MLflow saw none of them");
    let response = exchange(h.proxy.addr, b"GET /health HTTP/1.0\r\n\r\n", false).await;
    assert_eq!(response.status, 201);

    let response = exchange(
        h.proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        false,
    )
    .await;
    assert_eq!(response.status, 405);
    assert_eq!(response.text(), r#"{"detail":"Method Not Allowed"}"#);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"mlflow_proxy_http_server_requests_total{method="CONNECT",route="passthrough",status="4xx"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_remove_host_origin_or_content_length() {
    let h = Harness::start().await;
    let raw = b"POST /api/2.0/mlflow/runs/create HTTP/1.1\r\nHost: mlflow.example:5000\r\nOrigin: http://evil.example\r\nContent-Length: 3\r\nConnection: close, host, origin, content-length\r\n\r\nabc";
    let response = exchange(h.proxy.addr, raw, false).await;
    assert_eq!(response.status, 201);
    let seen = h.mlflow.last();
    assert_eq!(seen.headers["host"], "mlflow.example:5000");
    assert_eq!(seen.headers["origin"], "http://evil.example");
    assert_eq!(seen.headers["content-length"], "3");
    assert_eq!(seen.body.as_ref(), b"abc");
}

// ---- item 11: forwarding headers ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let forged = |h: &Harness| {
        h.http
            .get(h.url("/api/2.0/mlflow/experiments/search"))
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .send()
    };
    let h = Harness::start().await;
    assert_eq!(forged(&h).await.unwrap().status(), 201);
    let seen = h.mlflow.last();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(seen.headers.get("x-forwarded-host").is_none());

    let h = Harness::start_configured(|c| {
        c.trusted_proxies = "127.0.0.0/8".parse().unwrap();
    })
    .await;
    assert_eq!(forged(&h).await.unwrap().status(), 201);
    let seen = h.mlflow.last();
    assert_eq!(seen.headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "evil.example");
}

// ---- item 5: silent S3 and MLflow ------------------------------------------------------

/// A 504 in MLflow's shape, answered no sooner than `limit` after the request was sent
/// (`started`), and not long after (seconds of slack for a loaded machine).
fn assert_deadline_exceeded(status: u16, body: &[u8], started: Instant, limit: Duration) {
    let took = started.elapsed();
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(body));
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["error_code"], "DEADLINE_EXCEEDED", "{body}");
    assert!(
        took >= limit,
        "504 after {took:?}, before the {limit:?} limit"
    );
    assert!(took < limit + PATIENCE / 2, "504 only after {took:?}");
}

/// A proxy whose store is `silent`, with a 1 s S3 timeout.
async fn on_silent_store(
    s3: &S3Server,
    mlflow: &FakeMlflow,
    silent: SocketAddr,
) -> mlflow_artifact_proxy::Proxy {
    let mut config = serve_config(s3, &format!("http://{}", mlflow.addr));
    config.store.endpoint = url::Url::parse(&format!("http://{silent}")).unwrap();
    config.timeouts.s3 = Duration::from_secs(1);
    mlflow_artifact_proxy::Proxy::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_store_gives_504() {
    let (silent, _task) = silent_listener().await;
    let mlflow = FakeMlflow::start().await;
    let s3 = S3Server::start().await;
    // on_silent_store's S3 timeout.
    let limit = Duration::from_secs(1);
    let proxy = on_silent_store(&s3, &mlflow, silent).await;
    for (method, target, body) in [
        ("GET", format!("{ARTIFACTS}/x.bin"), &b""[..]),
        ("HEAD", format!("{ARTIFACTS}/x.bin"), &b""[..]),
        ("PUT", format!("{ARTIFACTS}/x.bin"), &[7u8; 1024][..]),
        ("GET", format!("{ARTIFACTS}?path=a"), &b""[..]),
    ] {
        let started = Instant::now();
        let response = raw_request(proxy.addr, method, &target, body).await;
        if method == "HEAD" {
            assert_eq!(response.status, 504);
            continue;
        }
        assert_deadline_exceeded(response.status, &response.body, started, limit);
    }
    proxy.shutdown().await;
}

/// Issue 20: rust-s3 retries a timed-out control call after 1 s, so a silent store cost a list,
/// delete, HEAD or presign twice its timeout plus a second. Counted by connections, not by the
/// clock: the store is asked once per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_store_is_asked_once_per_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    let mlflow = FakeMlflow::start().await;
    let s3 = S3Server::start().await;
    let proxy = on_silent_store(&s3, &mlflow, silent).await;
    for (method, target) in [
        ("GET", format!("{ARTIFACTS}?path=a")),
        ("DELETE", format!("{ARTIFACTS}/a/b")),
        ("HEAD", format!("{ARTIFACTS}/x.bin")),
        (
            "GET",
            "/api/2.0/mlflow-artifacts/presigned/a/x.bin".to_owned(),
        ),
    ] {
        let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
        let response = raw_request(proxy.addr, method, &target, b"").await;
        assert_eq!(response.status, 504, "{method} {target}");
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst) - before,
            1,
            "{method} {target}: the store was asked again"
        );
    }
    proxy.shutdown().await;
}

/// Issue 20: a malformed precondition was passed to the store, which refused it (400, 400, 412)
/// where stock MLflow ignores it (200). The proxy ignores it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_preconditions_are_ignored_as_stock_does() {
    let h = Harness::start().await;
    h.s3.client().put_object("c/x.txt", b"hello").await.unwrap();
    for (name, value) in [
        ("if-none-match", "garbage\""),
        ("if-modified-since", "not a date"),
        ("if-match", "garbage"),
        ("if-unmodified-since", "yesterday"),
    ] {
        let response = get_with(&h, "c/x.txt", &[(name, value)]).await;
        assert_eq!(response.status(), 200, "{name}: {value}");
        assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_mlflow_gives_504() {
    let (silent, _task) = silent_listener().await;
    let s3 = S3Server::start().await;
    let mut config = serve_config(&s3, &format!("http://{silent}"));
    let limit = Duration::from_secs(1);
    config.timeouts.upstream = limit;
    let proxy = mlflow_artifact_proxy::Proxy::start(config).await.unwrap();
    let started = Instant::now();
    let response = raw_request(proxy.addr, "POST", "/api/2.0/mlflow/runs/search", b"{}").await;
    assert_deadline_exceeded(response.status, &response.body, started, limit);
    assert!(!response.text().contains(&silent.to_string()));
    proxy.shutdown().await;
}

// ---- item 12: error answers name no internal address -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_no_internal_address() {
    let h = Harness::start_with(upload_config(), "secret-prefix/inner").await;
    assert_eq!(h.put("a.txt", b"abc".to_vec()).await.status(), 200);
    h.s3.stop();
    let port = h.s3.addr.port().to_string();
    for response in [
        raw_request(h.proxy.addr, "GET", &format!("{ARTIFACTS}/a.txt"), b"").await,
        raw_request(h.proxy.addr, "HEAD", &format!("{ARTIFACTS}/a.txt"), b"").await,
        raw_request(h.proxy.addr, "PUT", &format!("{ARTIFACTS}/b.txt"), b"abc").await,
        raw_request(h.proxy.addr, "DELETE", &format!("{ARTIFACTS}/a.txt"), b"").await,
        raw_request(h.proxy.addr, "GET", &format!("{ARTIFACTS}?path=x"), b"").await,
    ] {
        assert!(response.status >= 500, "{}", response.status);
        let text = response.text();
        for secret in [
            "secret-prefix",
            "127.0.0.1",
            port.as_str(),
            h.s3.bucket.as_str(),
            "http://",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

// ---- items 7 and 8: conditional and range requests ------------------------------------

async fn get_with(h: &Harness, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = h.http.get(h.artifact(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_are_evaluated_by_the_proxy() {
    let h = Harness::start().await;
    let v1 = random_bytes(1000);
    assert_eq!(h.put("f.bin", v1.clone()).await.status(), 200);
    let etag1 = h.get("f.bin").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();

    // A resumed download against the same version: the slice.
    let response = get_with(
        &h,
        "f.bin",
        &[("range", "bytes=100-"), ("if-range", &etag1)],
    )
    .await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 100-999/1000");
    assert_eq!(response.bytes().await.unwrap().as_ref(), &v1[100..]);

    // The object changes; the same resume must get the whole new object, not a slice of it.
    let v2 = random_bytes(1200);
    assert_eq!(h.put("f.bin", v2.clone()).await.status(), 200);
    let response = get_with(
        &h,
        "f.bin",
        &[("range", "bytes=100-"), ("if-range", &etag1)],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-range").is_none());
    assert_eq!(sha256(&response.bytes().await.unwrap()), sha256(&v2));

    // A stale If-Match: 412, with or without a range.
    for range in ["bytes=0-9", "bytes=5-"] {
        let response = get_with(&h, "f.bin", &[("if-match", &etag1), ("range", range)]).await;
        assert_eq!(response.status(), 412, "{range}");
    }
    let etag2 = h.get("f.bin").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(etag1, etag2);
    let response = get_with(&h, "f.bin", &[("if-match", &etag2), ("range", "bytes=0-9")]).await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &v2[..10]);

    // If-None-Match comes before Range; HEAD honours it too.
    let response = get_with(
        &h,
        "f.bin",
        &[("if-none-match", &etag2), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(response.status(), 304);
    let response = h
        .http
        .head(h.artifact("f.bin"))
        .header("if-none-match", &etag2)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["etag"], etag2.as_str());
    let response = h
        .http
        .head(h.artifact("f.bin"))
        .header("if-match", &etag1)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ranges() {
    let h = Harness::start().await;
    let data = random_bytes(1000);
    assert_eq!(h.put("r.bin", data.clone()).await.status(), 200);
    // Malformed or other units: ignored, the whole object.
    for range in [
        "bytes=abc",
        "bytes=1-0",
        "items=0-1",
        "bytes=--5",
        "bytes=0-1,3-4",
    ] {
        let response = get_with(&h, "r.bin", &[("range", range)]).await;
        assert_eq!(response.status(), 200, "{range}");
        assert_eq!(
            sha256(&response.bytes().await.unwrap()),
            sha256(&data),
            "{range}"
        );
    }
    // A suffix longer than the object: all of it.
    let response = get_with(&h, "r.bin", &[("range", "bytes=-5000")]).await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 0-999/1000");
    assert_eq!(sha256(&response.bytes().await.unwrap()), sha256(&data));
    // An end past the object is cut to it.
    let response = get_with(&h, "r.bin", &[("range", "bytes=990-5000")]).await;
    assert_eq!(response.status(), 206);
    assert_eq!(response.headers()["content-range"], "bytes 990-999/1000");
    assert_eq!(response.bytes().await.unwrap().as_ref(), &data[990..]);
    // Past the end: 416 with the size.
    let response = get_with(&h, "r.bin", &[("range", "bytes=1000-")]).await;
    assert_eq!(response.status(), 416);
    assert_eq!(response.headers()["content-range"], "bytes */1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_store_refuses_are_the_clients_fault() {
    let h = Harness::start().await;
    // S3 keys hold at most 1024 bytes; S3 says KeyTooLongError, the test store a 500 on HEAD.
    let long = format!("{}/x.txt", "d/".repeat(600));
    for method in ["GET", "HEAD"] {
        let response = raw_request(h.proxy.addr, method, &format!("{ARTIFACTS}/{long}"), b"").await;
        assert_eq!(response.status, 400, "{method}: {}", response.text());
    }
}

// ---- item 13: HEAD of a directory, shutdown cuts ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_a_directory_answers_like_get() {
    let h = Harness::start().await;
    assert_eq!(h.put("dir/f.txt", b"abc".to_vec()).await.status(), 200);
    let get = raw_request(h.proxy.addr, "GET", &format!("{ARTIFACTS}/dir"), b"").await;
    assert_eq!(get.status, 400, "{}", get.text());
    let head = raw_request(h.proxy.addr, "HEAD", &format!("{ARTIFACTS}/dir"), b"").await;
    assert_eq!(head.status, 400);
}

/// Open a download and read only its first bytes.
async fn stalled_download(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {ARTIFACTS}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = stream.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_are_counted_as_shutdown() {
    let h = Harness::start_configured(|c| c.shutdown_grace = Duration::from_secs(1)).await;
    assert_eq!(h.put("big.bin", random_bytes(32 * MIB)).await.status(), 200);
    let _stream = stalled_download(h.proxy.addr, "big.bin").await;
    let metrics = h.proxy.app.metrics.clone();
    let Harness { proxy, s3, .. } = h;
    proxy.shutdown().await;
    drop(s3);
    assert_eq!(metrics.shutdown_cuts.get(), 1);
    assert_eq!(metrics.client_disconnects.get(), 0);
}

// ---- item 4 (download side): a client that stops reading -------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_idle_timeout() {
    let h = Harness::start_configured(|c| {
        c.upload.body_idle_timeout = Duration::from_secs(1);
    })
    .await;
    assert_eq!(h.put("big.bin", random_bytes(32 * MIB)).await.status(), 200);
    // A download read in full leaves an idle keep-alive connection: not a stall.
    assert_eq!(h.put("small.bin", vec![1u8; 1000]).await.status(), 200);
    let small = h.get("small.bin").await;
    assert_eq!(small.bytes().await.unwrap().len(), 1000);
    // The proxy's last progress on the download comes after the request is sent.
    let sent = Instant::now();
    let mut stream = stalled_download(h.proxy.addr, "big.bin").await;
    let cuts = r#"mlflow_proxy_body_idle_timeouts_total{direction="download"}"#;
    eventually_async("the stalled download is cut", || async {
        metric(&h.metrics().await, cuts) == 1.0
    })
    .await;
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "cut after {:?}, before the idle timeout",
        sent.elapsed()
    );
    // The proxy closed its end: what is buffered drains, then EOF, well short of 32 MiB.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection is still open");
    assert!(rest.len() < 32 * MIB);
    let in_flight = r#"mlflow_proxy_transfers_in_flight{direction="download"}"#;
    eventually_async("the cut download is no longer in flight", || async {
        metric(&h.metrics().await, in_flight) == 0.0
    })
    .await;
    let metrics = h.metrics().await;
    assert_eq!(metric(&metrics, cuts), 1.0);
    assert_eq!(
        metric(&metrics, "mlflow_proxy_client_disconnects_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_port_has_a_header_timeout() {
    let h = Harness::start().await;
    // The header timeout starts once the connection is accepted, after this.
    let sent = Instant::now();
    let mut stream = TcpStream::connect(h.proxy.metrics_addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut rest = Vec::new();
    // The main port's 30 s, and seconds of slack for a loaded machine.
    let limit = Duration::from_secs(30);
    let read = tokio::time::timeout(limit + PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the operations port kept a silent client");
    assert!(
        sent.elapsed() >= limit,
        "closed after {:?}, before the header timeout",
        sent.elapsed()
    );
}
