//! MLflow's auth on the artifact routes, where no real MLflow can show it: an unreachable MLflow
//! (fail closed), and how often MLflow is asked (detection cached, decisions cached briefly). The
//! decisions themselves are checked against the real basic-auth app in scripts/e2e/test_auth.py;
//! the MLflow here is a small stand-in that answers as the auth app does and counts questions.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{S3Server, raw_request, serve_config};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::auth::{AuthConfig, Mode};
use tokio::net::TcpListener;

/// `alice:pw`
const ALICE: &str = "Basic YWxpY2U6cHc=";

/// Longer than any test: a cache entry or a re-detection period that never runs out while a test
/// runs, however loaded the machine.
const FOREVER: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Policy {
    auth_app: AtomicBool,
    alice_allowed: AtomicBool,
    detections: AtomicUsize,
    probes: AtomicUsize,
}

/// Answers like MLflow's auth app: `users/current` without credentials is 401 with the app and
/// 404 without; a listing probe is 401 without alice's credentials, 403 or 200 for alice.
async fn start_auth_mlflow(policy: Arc<Policy>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let policy = policy.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let policy = policy.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&policy, &request)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn answer(policy: &Policy, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    let path = request.uri().path();
    if path == "/api/2.0/mlflow/users/current" && !request.headers().contains_key("authorization") {
        policy.detections.fetch_add(1, Ordering::SeqCst);
        return if policy.auth_app.load(Ordering::SeqCst) {
            reply(401, "You are not authenticated.")
        } else {
            reply(404, "not found")
        };
    }
    if path == "/api/2.0/mlflow-artifacts/artifacts" {
        policy.probes.fetch_add(1, Ordering::SeqCst);
        let alice = request
            .headers()
            .get("authorization")
            .is_some_and(|v| v == ALICE);
        return match (alice, policy.alice_allowed.load(Ordering::SeqCst)) {
            (false, _) => {
                let mut r = reply(401, "You are not authenticated. Please see the docs.");
                r.headers_mut().insert(
                    "www-authenticate",
                    http::HeaderValue::from_static("Basic realm=\"mlflow\""),
                );
                r
            }
            (true, false) => reply(403, "Permission denied"),
            (true, true) => reply(200, "{}"),
        };
    }
    reply(500, "unexpected")
}

async fn proxy(s3: &S3Server, upstream: SocketAddr, mode: Mode, ttl: Duration) -> Proxy {
    let mut config = serve_config(s3, &format!("http://{upstream}"));
    config.auth = AuthConfig {
        mode,
        cache_ttl: ttl,
        // No re-detection while a test runs: how often MLflow is asked is counted, not timed.
        recheck: FOREVER,
        ..AuthConfig::off()
    };
    config.shutdown_grace = Duration::from_secs(1);

    Proxy::start(config).await.unwrap()
}

/// GET with optional credentials: (status, www-authenticate, body).
async fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, Option<String>, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut request = client.get(format!(
        "http://{addr}/api/2.0/mlflow-artifacts/artifacts/{path}"
    ));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, www, response.text().await.unwrap())
}

async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", proxy.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_unreachable_fails_closed_with_503() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let s3 = S3Server::start().await;
    for mode in [Mode::Auto, Mode::On] {
        let proxy = proxy(&s3, closed, mode, Duration::from_secs(5)).await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = |p: &str| {
            format!(
                "http://{}/api/2.0/mlflow-artifacts/artifacts/{p}",
                proxy.addr
            )
        };
        let get = client
            .get(url("1/a.txt"))
            .header("authorization", ALICE)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 503, "{mode:?}");
        let body: serde_json::Value = serde_json::from_str(&get.text().await.unwrap()).unwrap();
        assert_eq!(body["error_code"], "TEMPORARILY_UNAVAILABLE", "{body}");
        // Never an internal address in the answer.
        assert!(!body.to_string().contains(&closed.to_string()), "{body}");
        let put = client
            .put(url("1/b.txt"))
            .header("authorization", ALICE)
            .body("must not be stored")
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 503, "{mode:?}");
        assert_eq!(s3.object("1/b.txt"), None, "nothing stored");
        assert_eq!(
            metric(
                &proxy,
                "mlflow_proxy_auth_decisions_total{outcome=\"error\",source=\"mlflow\"}"
            )
            .await,
            2.0
        );
        proxy.shutdown().await;
    }
    // Off: as before MLflow's auth was applied, artifacts are served without MLflow.
    let proxy = proxy(&s3, closed, Mode::Off, Duration::from_secs(5)).await;
    let put = raw_request(
        proxy.addr,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/1/c.txt",
        b"ok",
    )
    .await;
    assert_eq!(put.status, 200);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_auth_app_mlflow_is_asked_once_not_per_request() {
    let policy = Arc::new(Policy::default());
    let mlflow = start_auth_mlflow(policy.clone()).await;
    let s3 = S3Server::start().await;
    let proxy = proxy(&s3, mlflow, Mode::Auto, Duration::from_secs(5)).await;
    let put = raw_request(
        proxy.addr,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
        b"hello",
    )
    .await;
    assert_eq!(put.status, 200);
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "1/a.txt", None).await.0, 200);
    }
    assert_eq!(
        policy.probes.load(Ordering::SeqCst),
        0,
        "no probes without the auth app"
    );
    assert!(
        policy.detections.load(Ordering::SeqCst) <= 2,
        "detection is cached: {} for 21 requests",
        policy.detections.load(Ordering::SeqCst)
    );
    proxy.shutdown().await;
}

/// MLflow with its auth app, alice allowed, `1/a.txt` stored, and a proxy that keeps MLflow's
/// answers for `ttl` (the store is returned to outlive the proxy).
async fn alice_allowed(ttl: Duration) -> (Arc<Policy>, S3Server, Proxy) {
    let policy = Arc::new(Policy::default());
    policy.auth_app.store(true, Ordering::SeqCst);
    policy.alice_allowed.store(true, Ordering::SeqCst);
    let mlflow = start_auth_mlflow(policy.clone()).await;
    let s3 = S3Server::start().await;
    s3.client().put_object("1/a.txt", b"hello").await.unwrap();
    let proxy = proxy(&s3, mlflow, Mode::Auto, ttl).await;
    (policy, s3, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_cached_and_mlflow_is_asked_once_per_burst() {
    // A TTL no burst outlasts, however slow the machine: MLflow's questions are counted.
    let (policy, _s3, proxy) = alice_allowed(FOREVER).await;

    // No credentials: MLflow's 401, relayed; never cached (each one asks).
    for _ in 0..3 {
        let (status, www, _) = get(proxy.addr, "1/a.txt", None).await;
        assert_eq!(
            (status, www.as_deref()),
            (401, Some("Basic realm=\"mlflow\""))
        );
    }
    assert_eq!(
        policy.probes.load(Ordering::SeqCst),
        0,
        "FastAPI's rule: no header, no question"
    );
    let (status, _, _) = get(proxy.addr, "1/a.txt", Some("Basic Ym9iOng=")).await;
    assert_eq!(status, 401);
    assert_eq!(policy.probes.load(Ordering::SeqCst), 1);

    // Allowed: one question for a burst on one resource.
    let before = policy.probes.load(Ordering::SeqCst);
    for _ in 0..10 {
        let (status, _, body) = get(proxy.addr, "1/a.txt", Some(ALICE)).await;
        assert_eq!((status, body.as_str()), (200, "hello"));
    }
    assert_eq!(policy.probes.load(Ordering::SeqCst) - before, 1);
    assert_eq!(
        metric(
            &proxy,
            "mlflow_proxy_auth_decisions_total{outcome=\"allowed\",source=\"cache\"}"
        )
        .await,
        9.0
    );
    assert!(metric(&proxy, "mlflow_proxy_auth_cache_entries").await <= 10.0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_decision_expires_after_the_ttl_and_follows_mlflow() {
    let ttl = Duration::from_secs(1);
    let (policy, _s3, proxy) = alice_allowed(ttl).await;

    // Allowed, and remembered from when MLflow was asked (after `asked`).
    let asked = std::time::Instant::now();
    let (status, _, _) = get(proxy.addr, "1/a.txt", Some(ALICE)).await;
    assert_eq!(status, 200);
    // Revoked in MLflow: refused once the cached answer expires. The expiry is absolute (hits
    // do not extend it): never before the TTL, and (with seconds of slack for a loaded machine)
    // not long after it, though the cached answer is hit every 50 ms.
    policy.alice_allowed.store(false, Ordering::SeqCst);
    loop {
        let (status, _, body) = get(proxy.addr, "1/a.txt", Some(ALICE)).await;
        if status == 403 {
            assert_eq!(body, "Permission denied");
            assert!(
                asked.elapsed() >= ttl,
                "refused after {:?}, before the cached answer expired",
                asked.elapsed()
            );
            break;
        }
        assert_eq!(status, 200);
        assert!(
            asked.elapsed() < ttl + Duration::from_secs(30),
            "still allowed {:?} after the answer was cached: hits extend its life",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(
            &proxy,
            "mlflow_proxy_auth_decisions_total{outcome=\"403\",source=\"mlflow\"}"
        )
        .await,
        1.0
    );
    proxy.shutdown().await;
}
