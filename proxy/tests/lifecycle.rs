//! What a load balancer and an orchestrator see: readiness that depends on the proxy alone,
//! draining on shutdown (503 on /readyz, no new connections, transfers in flight finish, exit 0
//! on SIGTERM), and pass-through that keeps its MLflow connections alive (no TIME_WAIT per
//! request) for a bounded lifetime.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
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
            serde_json::json!({"ready": true, "s3": "ok", "mlflow": "ok", "mlflow_modes": "ok"})
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
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.lines().next().unwrap_or_default().to_owned()
}

async fn until_refused(addr: SocketAddr) {
    eventually_async(
        &format!("{addr} refuses connections while draining"),
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await;
}

/// Wait until the proxy whose operations port is `ops` has `n` uploads in flight.
async fn uploads_in_flight(ops: SocketAddr, n: usize) {
    let series = r#"mlflow_proxy_transfers_in_flight{direction="upload"}"#;
    eventually_async(&format!("{n} upload(s) in flight"), || async {
        let scrape = raw_request(ops, "GET", "/metrics", b"").await;
        common::series(&scrape.text(), series) == n as f64
    })
    .await;
}

/// A grace period no test waits out: shutdown must not wait for it with nothing in flight.
const LONG_GRACE: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_503_refuses_new_connections_and_finishes_transfers() {
    let mut h = Harness::start_configured(|c| c.shutdown_grace = LONG_GRACE).await;
    let data = random_bytes(3 * MIB);
    let upload = start_put(h.proxy.addr, "drain/a.bin", &data, MIB).await;
    // The upload is in flight (its first MiB read) before draining begins.
    uploads_in_flight(h.proxy.metrics_addr, 1).await;

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
    // Nothing is in flight any more: shutdown ends long before the grace period would.
    let Harness { proxy, .. } = h;
    tokio::time::timeout(PATIENCE, proxy.shutdown())
        .await
        .expect("shutdown waited for the grace period with nothing in flight");
}

/// The real binary: SIGTERM while an upload is half sent; the upload completes, the process
/// exits 0 without waiting out the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_upload_in_flight_finish_and_exits_0() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let grace = LONG_GRACE.as_secs().to_string();
    let mut proxy = ProxyBinary::spawn(
        &s3,
        &mlflow,
        &[("PROXY_SHUTDOWN_GRACE_SECS", &grace), ("NO_COLOR", "1")],
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
    uploads_in_flight(ops, 1).await;

    let kill = Command::new("kill")
        .args(["-TERM", &proxy.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    eventually_async("/readyz answers 503 after SIGTERM", || async {
        readyz(ops, "/readyz").await.0 == 503
    })
    .await;
    until_refused(addr).await;
    assert_eq!(finish_put(upload, &data, MIB).await, "HTTP/1.1 200 OK");

    // The upload done, the process exits long before the grace period would end.
    let status = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = proxy.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {PATIENCE:?} after the upload in flight finished: the exit waits for the grace period"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(status.code(), Some(0));
    let stored = s3.object("term/b.bin").expect("stored");
    assert_eq!(sha256(&stored), sha256(&data));
}

/// What an upstream saw of one connection: the requests it carried, and whether the proxy has
/// closed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Seen {
    requests: usize,
    closed: bool,
}

/// An HTTP/1.1 server that answers every request `ok`, names the connection that carried it
/// (`x-connection`, numbered from 0 in the order of acceptance) and records each connection.
async fn counting_upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let number = {
                let mut seen = record.lock().unwrap();
                seen.push(Seen::default());
                seen.len() - 1
            };
            let record = record.clone();
            tokio::spawn(async move {
                let counter = record.clone();
                let service = service_fn(move |_request| {
                    counter.lock().unwrap()[number].requests += 1;
                    async move {
                        let mut response =
                            http::Response::new(Full::new(bytes::Bytes::from_static(b"ok")));
                        response.headers_mut().insert("x-connection", number.into());
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                record.lock().unwrap()[number].closed = true;
            });
        }
    });
    (addr, seen)
}

/// A proxy in front of `upstream` whose pooled connections live `lifetime` (mean) and stay
/// idle up to `idle`.
async fn pooled_proxy(
    s3: &S3Server,
    upstream: SocketAddr,
    lifetime: Duration,
    idle: Duration,
) -> mlflow_artifact_proxy::Proxy {
    let mut config = serve_config(s3, &format!("http://{upstream}"));
    config.upstream_pool.lifetime = lifetime;
    config.upstream_pool.idle_timeout = idle;
    mlflow_artifact_proxy::Proxy::start(config).await.unwrap()
}

/// Far longer than any test: with it no pooled connection is retired or dropped while a test
/// runs, whatever the machine's load, so connections are counted, not timed.
const FOREVER: Duration = Duration::from_secs(3600);

/// One pass-through request; the number of the upstream connection that carried it.
async fn pass(http: &reqwest::Client, url: &str) -> usize {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let connection = response.headers()["x-connection"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    connection
}

/// `clients` clients at once, `each` requests each, one after another.
async fn concurrent_passes(http: &reqwest::Client, url: &str, clients: usize, each: usize) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let http = http.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                for _ in 0..each {
                    pass(&http, &url).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

// A connection is opened only when no idle one is in the pool. hyper-util hands a connection
// back to the pool from a task of its own once the response is read, so on a loaded machine a
// client's next request can come before its previous connection is back: one more connection
// is opened, and it stays in the pool. The bounds below allow that once per client (two
// connections per client), and fail by far without the pool (one connection per request).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_reuses_a_bounded_set_of_connections() {
    let s3 = S3Server::start().await;
    let (upstream, seen) = counting_upstream().await;
    let proxy = pooled_proxy(&s3, upstream, FOREVER, FOREVER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/2.0/mlflow/experiments/get", proxy.addr);

    // 200 requests one after the other: one connection carries them (two at most, see above).
    for _ in 0..200 {
        pass(&http, &url).await;
    }
    let opened = seen.lock().unwrap().len();
    assert!(
        opened <= 2,
        "200 requests one after the other opened {opened} connections"
    );

    // 8 clients at once, 50 requests each: one connection per client in flight.
    concurrent_passes(&http, &url, 8, 50).await;
    let seen = seen.lock().unwrap().clone();
    eprintln!(
        "connections opened: {opened} for 200 sequential requests, {} for 8 × 50",
        seen.len() - opened
    );
    assert!(
        seen.len() - opened <= 16,
        "400 requests from 8 clients opened {} connections",
        seen.len() - opened
    );
    assert_eq!(seen.iter().map(|c| c.requests).sum::<usize>(), 600);
    assert!(seen.iter().all(|c| !c.closed), "none retired: {seen:?}");
    proxy.shutdown().await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_questions_reuse_pooled_connections() {
    // Auth probes, MLflow's release and modes, a workspace's existence: asked on the same
    // kept-alive pool as pass-through, not on a fresh connection per question.
    use mlflow_artifact_proxy::upstream::ask::{Asker, Target};
    use mlflow_artifact_proxy::upstream::pool::PoolConfig;
    let (upstream, seen) = counting_upstream().await;
    let pool = PoolConfig {
        lifetime: FOREVER,
        idle_timeout: FOREVER,
    };
    let target = Target::new(format!("http://{upstream}").parse().unwrap(), "", pool).unwrap();
    let asker = Asker::new(target, Duration::from_secs(60));
    for _ in 0..100 {
        let answer = asker
            .ask(http::Method::GET, "/version", http::HeaderMap::new(), None)
            .await
            .unwrap();
        assert_eq!(
            (answer.status.as_u16(), &answer.body[..]),
            (200, &b"ok"[..])
        );
    }
    // A connection carries many of them. Not always one: hyper-util hands a connection back to
    // the pool from a task of its own, and on a loaded machine the next question may come first
    // (see the note above the pass-through tests; here other tests run beside this one). The
    // bound allows that one question in ten, and fails by far without reuse (one per question).
    let opened = seen.lock().unwrap().len();
    assert!(
        opened <= 10,
        "100 questions one after the other opened {opened} connections"
    );
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .map(|c| c.requests)
            .sum::<usize>(),
        100
    );
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
    let (upstream, seen) = counting_upstream().await;
    let proxy = pooled_proxy(&s3, upstream, FOREVER, FOREVER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/2.0/mlflow/experiments/get", proxy.addr);
    // Left by earlier users of the port number, if any.
    let (towards_before, at_before) = time_wait(upstream.port());

    // 8 clients at once, 100 requests each.
    concurrent_passes(&http, &url, 8, 100).await;
    // A socket enters TIME_WAIT when its connection closes, so every closed connection may
    // leave one (on either side); 800 requests on fresh connections left about 800.
    let opened = seen.lock().unwrap().len();
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
    let (upstream, seen) = counting_upstream().await;
    // Each connection lives 1 to 3 s (mean 2 s); idle ones are never dropped, so that only the
    // lifetime can end a connection here.
    let mean = Duration::from_secs(2);
    let proxy = pooled_proxy(&s3, upstream, mean, FOREVER).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/api/2.0/mlflow/experiments/get", proxy.addr);

    // The first request opens connection 0, before its answer comes.
    assert_eq!(pass(&http, &url).await, 0);
    let opened_by = Instant::now();
    // Once it is older than the longest lifetime (mean × 3/2), the next request still goes over
    // it (it waited in the pool, and is answered like any other), and it is not put back: the
    // request after that opens a new connection, and the old one is closed. (That a connection
    // is not retired younger than mean / 2 is the unit test of `lifetime`.)
    tokio::time::sleep_until((opened_by + mean * 3 / 2).into()).await;
    assert_eq!(pass(&http, &url).await, 0);
    assert_eq!(pass(&http, &url).await, 1);
    eventually("the retired connection 0 is closed", || {
        seen.lock().unwrap()[0].closed
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            Seen {
                requests: 2,
                closed: true
            },
            Seen {
                requests: 1,
                closed: false
            }
        ]
    );
    proxy.shutdown().await;
}
