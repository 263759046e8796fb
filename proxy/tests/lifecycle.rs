//! What a load balancer and an orchestrator see: readiness that depends on the proxy alone,
//! draining on shutdown (503 on /readyz, no new connections, transfers in flight finish, exit 0
//! on SIGTERM), and pass-through that keeps its MLflow connections alive (no TIME_WAIT per
//! request) for a bounded lifetime.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use pretty_assertions::assert_eq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn readyz(addr: SocketAddr, target: &str) -> (u16, serde_json::Value) {
    let response = raw_request(addr, "GET", target, b"").await;
    (
        response.status,
        serde_json::from_slice(&response.body).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_depends_on_the_proxy_alone_and_deep_names_the_dependencies() {
    let h = Harness::start().await;
    let ops = h.proxy.metrics_addr;
    assert_eq!(
        readyz(ops, "/readyz").await,
        (200, serde_json::json!({"ready": true}))
    );
    assert_eq!(
        readyz(ops, "/readyz?deep=1").await,
        (
            200,
            serde_json::json!({"ready": true, "s3": "ok", "mlflow": "ok"})
        )
    );
    // The store goes away: the proxy stays in the load balancer (it still serves MLflow's
    // pages), the deep check says what is wrong.
    h.s3.stop();
    assert_eq!(
        readyz(ops, "/readyz").await,
        (200, serde_json::json!({"ready": true}))
    );
    let (status, verdict) = readyz(ops, "/readyz?deep=1").await;
    assert_eq!(status, 503);
    assert_eq!(verdict["ready"], false);
    assert_eq!(verdict["mlflow"], "ok");
    assert!(verdict["s3"].as_str().unwrap().starts_with("error: "));
}

/// Send the head of a PUT and `first` bytes of its body; the rest is sent by `finish_put`.
async fn start_put(addr: SocketAddr, path: &str, data: &[u8], first: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&data[..first]).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

/// Send the rest of the body; return the status line and the `Connection` header.
async fn finish_put(mut stream: TcpStream, data: &[u8], first: usize) -> String {
    stream.write_all(&data[first..]).await.unwrap();
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("the answer within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.lines().next().unwrap_or_default().to_owned()
}

async fn until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts 5 s into draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_503_refuses_new_connections_and_finishes_transfers() {
    let mut h = Harness::start().await;
    let data = random_bytes(3 * MIB);
    let upload = start_put(h.proxy.addr, "drain/a.bin", &data, MIB).await;
    // The upload is in flight (its first MiB read) before draining begins.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h
        .metrics()
        .await
        .contains("mlflow_proxy_transfers_in_flight{direction=\"upload\"} 1")
    {
        assert!(Instant::now() < deadline, "the upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    h.proxy.start_draining();
    let ops = h.proxy.metrics_addr;
    assert_eq!(
        readyz(ops, "/readyz").await,
        (503, serde_json::json!({"ready": false, "draining": true}))
    );
    assert_eq!(readyz(ops, "/readyz?deep=1").await.0, 503);
    until_refused(h.proxy.addr).await;

    let status = finish_put(upload, &data, MIB).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let stored = h.s3.object("drain/a.bin").expect("stored");
    assert_eq!(sha256(&stored), sha256(&data));
    let started = Instant::now();
    let Harness { proxy, .. } = h;
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} with nothing in flight",
        started.elapsed()
    );
}

/// The real binary: SIGTERM while an upload is half sent; the upload completes, the process
/// exits 0 without waiting out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_upload_in_flight_finish_and_exits_0() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let mut proxy = ProxyBinary::spawn(
        &s3,
        &mlflow,
        &[("PROXY_SHUTDOWN_GRACE_SECS", "30"), ("NO_COLOR", "1")],
    );
    // "listening on 127.0.0.1:P (metrics on 127.0.0.1:Q), ..."
    let (addr, ops): (SocketAddr, SocketAddr) = loop {
        let line = proxy.next_line();
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest.split(' ').next().unwrap().parse().unwrap();
            let ops = rest
                .split("(metrics on ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .unwrap()
                .parse()
                .unwrap();
            break (addr, ops);
        }
    };
    let data = random_bytes(4 * MIB);
    let upload = start_put(addr, "term/b.bin", &data, MIB).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if readyz(ops, "/readyz").await.0 == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_refused(addr).await;
    assert_eq!(finish_put(upload, &data, MIB).await, "HTTP/1.1 200 OK");

    let status = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 10 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exit waited for the grace period"
    );
    let stored = s3.object("term/b.bin").expect("stored");
    assert_eq!(sha256(&stored), sha256(&data));
}

/// An HTTP/1.1 server that counts the connections it accepts and answers every request `ok`.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_reuses_a_bounded_set_of_connections() {
    let s3 = S3Server::start().await;
    let (upstream, accepted) = counting_upstream().await;
    let config = serve_config(&s3, &format!("http://{upstream}"));
    let proxy = mlflow_artifact_proxy::Proxy::start(config).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/2.0/mlflow/experiments/get", proxy.addr);

    // 200 requests one after the other: one connection carries them all.
    for _ in 0..200 {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // 8 clients at once, 50 requests each: at most one connection per client in flight.
    let before = accepted.load(Ordering::SeqCst);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let response = http.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let opened = accepted.load(Ordering::SeqCst) - before;
    assert!(
        opened <= 8,
        "400 requests from 8 clients opened {opened} connections"
    );
    proxy.shutdown().await;
}

/// Sockets in TIME_WAIT on 127.0.0.1, read from /proc/net/tcp: (those whose remote port is
/// `port`: the proxy's side of its connections to the upstream there; those whose local port is
/// `port`: the upstream's side).
fn time_wait(port: u16) -> (usize, usize) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    let (mut towards, mut at) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl, local_address, rem_address, st; 06 is TIME_WAIT.
        if fields.len() < 4 || fields[3] != "06" {
            continue;
        }
        if port_of(fields[2]) == Some(port) {
            towards += 1;
        }
        if port_of(fields[1]) == Some(port) {
            at += 1;
        }
    }
    (towards, at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_leaves_no_time_wait_per_request() {
    let s3 = S3Server::start().await;
    let (upstream, accepted) = counting_upstream().await;
    let config = serve_config(&s3, &format!("http://{upstream}"));
    let proxy = mlflow_artifact_proxy::Proxy::start(config).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/2.0/mlflow/experiments/get", proxy.addr);
    // Left by earlier users of the port number, if any.
    let (towards_before, at_before) = time_wait(upstream.port());

    // 8 clients at once, 100 requests each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                for _ in 0..100 {
                    let response = http.get(&url).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    assert_eq!(response.text().await.unwrap(), "ok");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // A socket enters TIME_WAIT when its connection closes, so every closed connection may
    // leave one (on either side); 800 requests on fresh connections left about 800.
    let opened = accepted.load(Ordering::SeqCst);
    assert!(opened <= 16, "800 requests opened {opened} connections");
    let (towards, at) = time_wait(upstream.port());
    assert!(
        towards + at <= opened + towards_before + at_before,
        "800 requests over {opened} connections left {towards} sockets in TIME_WAIT on the proxy's \
         side and {at} on the upstream's"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_connections_are_retired_after_their_lifetime() {
    // Behind a Service with several MLflow pods (or uvicorn workers, which each accept on their
    // own) a kept-alive connection stays where it was first placed; retiring it makes the next
    // connection land wherever the balancer (or the free worker) puts it.
    let s3 = S3Server::start().await;
    let (upstream, accepted) = counting_upstream().await;
    let config = serve_config(&s3, &format!("http://{upstream}"));
    let proxy = mlflow_artifact_proxy::Proxy::start(config).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/2.0/mlflow/experiments/get", proxy.addr);

    // One request after another (never idle long enough for the 2 s idle timeout): a single
    // connection carries them until its lifetime (2.5 to 7.5 s) is over. Bounded at 30 s.
    let started = Instant::now();
    let mut requests = 0;
    while accepted.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(30) {
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the first connection was never retired"
    );
    // It carried many requests first (it was kept alive, not replaced per request), and the
    // request that found it retired was answered like any other (asserted in the loop).
    assert!(requests > 20, "retired after {requests} requests");
    proxy.shutdown().await;
}
