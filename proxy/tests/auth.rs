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
    /// MLflow's Host check: when set, only these `Host` values pass (as the chart renders
    /// MLFLOW_SERVER_ALLOWED_HOSTS: the public name and the Service names, no `localhost`).
    allowed_hosts: std::sync::Mutex<Option<Vec<String>>>,
    /// Every `Host` the proxy sent.
    hosts_seen: std::sync::Mutex<Vec<String>>,
    /// Listing probes are counted, then never answered (an MLflow that is slow to decide).
    hold_probes: AtomicBool,
}

/// Answers like MLflow's auth app: `users/current` without credentials is 401 with the app and
/// 404 without; a listing probe is 401 without alice's credentials, 403 or 200 for alice.
async fn start_auth_mlflow(policy: Arc<Policy>) -> SocketAddr {
    common::serve_stand_in(move |request: Request<Incoming>| {
        let policy = policy.clone();
        async move {
            if policy.hold_probes.load(Ordering::SeqCst)
                && request.uri().path() == "/api/2.0/mlflow-artifacts/artifacts"
            {
                policy.probes.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            answer(&policy, &request)
        }
    })
    .await
}

fn answer(policy: &Policy, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    let host = request
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap().to_owned())
        .unwrap_or_default();
    policy.hosts_seen.lock().unwrap().push(host.clone());
    if let Some(allowed) = &*policy.allowed_hosts.lock().unwrap()
        && !allowed.contains(&host)
    {
        return reply(
            403,
            "Invalid Host header - possible DNS rebinding attack detected",
        );
    }
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

/// GET an artifact as a client that reached the proxy by `host` (an ingress passes it on).
async fn get_as(addr: SocketAddr, host: &str, path: &str, auth: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = format!(
        "GET /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    );
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    common::parse_response(&raw, false).status
}

/// A proxy set up as the chart sets it: MLflow and the proxy share one allowed-hosts list, the
/// public name and MLflow's Service address (`localhost` is not in it).
async fn chart_like_proxy(s3: &S3Server, mlflow: SocketAddr, mode: Mode) -> Proxy {
    let mut config = serve_config(s3, &format!("http://{mlflow}"));
    config.security = mlflow_artifact_proxy::artifacts::security::SecurityArgs {
        allowed_hosts: Some(format!("mlflow.example.com,{mlflow}")),
        cors_allowed_origins: None,
        x_frame_options: "SAMEORIGIN".into(),
        disable_security_middleware: "false".into(),
    }
    .build()
    .unwrap();
    config.auth = AuthConfig {
        mode,
        recheck: Duration::from_secs(1),
        ..AuthConfig::off()
    };
    config.shutdown_grace = Duration::from_secs(1);
    Proxy::start(config).await.unwrap()
}

async fn readyz(proxy: &Proxy) -> (u16, serde_json::Value) {
    let response = raw_request(proxy.metrics_addr, "GET", "/readyz", b"").await;
    (
        response.status,
        serde_json::from_slice(&response.body).unwrap(),
    )
}

/// Poll /readyz until its first check has ended (the detection runs at start).
async fn readyz_settled(proxy: &Proxy) -> (u16, serde_json::Value) {
    common::eventually_async("the first auth check ends", || async {
        readyz(proxy)
            .await
            .1
            .get("mlflow_auth")
            .and_then(|r| r.as_str())
            != Some("MLflow's auth app not checked yet")
    })
    .await;
    readyz(proxy).await
}

/// Issue 20: an MLflow whose allowed hosts are the chart's (the public name and its own Service
/// name, no `localhost`) answers the proxy's detection and probes, with and without its auth app:
/// every question carries the upstream's own address as Host. Before, detection sent
/// `Host: localhost`, got 403, and every artifact request was a 503 while /readyz said ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detection_and_probes_carry_the_upstreams_host() {
    let s3 = S3Server::start().await;
    s3.client().put_object("1/a.txt", b"hello").await.unwrap();
    for auth_app in [false, true] {
        let policy = Arc::new(Policy::default());
        policy.auth_app.store(auth_app, Ordering::SeqCst);
        policy.alice_allowed.store(true, Ordering::SeqCst);
        let mlflow = start_auth_mlflow(policy.clone()).await;
        *policy.allowed_hosts.lock().unwrap() =
            Some(vec!["mlflow.example.com".into(), mlflow.to_string()]);
        let proxy = chart_like_proxy(&s3, mlflow, Mode::Auto).await;
        assert_eq!(
            readyz_settled(&proxy).await,
            (200, serde_json::json!({"ready": true})),
            "auth app {auth_app}"
        );
        assert_eq!(
            get_as(proxy.addr, "mlflow.example.com", "1/a.txt", Some(ALICE)).await,
            200,
            "auth app {auth_app}"
        );
        if auth_app {
            assert_eq!(
                get_as(proxy.addr, "mlflow.example.com", "1/a.txt", None).await,
                401
            );
            assert!(policy.probes.load(Ordering::SeqCst) >= 1);
        }
        let seen = policy.hosts_seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|h| *h == mlflow.to_string()),
            "every question to MLflow carries its own address as Host: {seen:?}"
        );
        proxy.shutdown().await;
    }
}

/// Issue 20: when MLflow refuses the proxy's questions outright (here its Host check refuses
/// every Host), waiting does not help: /readyz is 503 and names the reason, and artifact
/// requests are refused (never served unchecked), in auto and in on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_mlflow_refuses_the_proxy() {
    let s3 = S3Server::start().await;
    s3.client().put_object("1/a.txt", b"hello").await.unwrap();
    for mode in [Mode::Auto, Mode::On] {
        let policy = Arc::new(Policy::default());
        policy.auth_app.store(true, Ordering::SeqCst);
        policy.alice_allowed.store(true, Ordering::SeqCst);
        *policy.allowed_hosts.lock().unwrap() = Some(vec!["mlflow.example.com".into()]);
        let mlflow = start_auth_mlflow(policy.clone()).await;
        let proxy = chart_like_proxy(&s3, mlflow, mode).await;
        let (status, verdict) = readyz_settled(&proxy).await;
        assert_eq!(status, 503, "{mode:?}: {verdict}");
        assert_eq!(verdict["ready"], false);
        let reason = verdict["mlflow_auth"].as_str().unwrap();
        assert!(
            reason.contains("403") && reason.contains(&format!("Host: {mlflow}")),
            "{reason}"
        );
        let status = get_as(proxy.addr, "mlflow.example.com", "1/a.txt", Some(ALICE)).await;
        assert!(status == 503 || status == 502, "{mode:?}: {status}");
        // MLflow fixed (its Host check now passes the proxy's): ready again at a later check,
        // without a restart.
        *policy.allowed_hosts.lock().unwrap() = None;
        common::eventually_async("ready again after MLflow was fixed", || async {
            readyz(&proxy).await.0 == 200
        })
        .await;
        assert_eq!(
            get_as(proxy.addr, "mlflow.example.com", "1/a.txt", Some(ALICE)).await,
            200
        );
        proxy.shutdown().await;
    }
}

/// A client that asks and goes away before MLflow answers leaves no single-flight entry behind
/// (issue 20: each one used to stay forever, ~1 GiB per 4 M requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_of_clients_that_went_away_are_forgotten() {
    use tokio::io::AsyncWriteExt;
    let policy = Arc::new(Policy::default());
    policy.auth_app.store(true, Ordering::SeqCst);
    policy.hold_probes.store(true, Ordering::SeqCst);
    let mlflow = start_auth_mlflow(policy.clone()).await;
    let s3 = S3Server::start().await;
    let proxy = proxy(&s3, mlflow, Mode::On, Duration::from_secs(5)).await;
    const CLIENTS: usize = 300;
    for i in 0..CLIENTS {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        // A unique path and credential each: every request is a question of its own.
        let credential = base64_basic(&format!("user{i}:pw{i}"));
        let head = format!(
            "GET /api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/{i}.txt HTTP/1.1\r\n\
             Host: 127.0.0.1\r\nAuthorization: {credential}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Wait until MLflow has the question, then reset the connection.
        common::eventually("MLflow has the question", || {
            policy.probes.load(Ordering::SeqCst) > i
        })
        .await;
        assert_eq!(policy.probes.load(Ordering::SeqCst), i + 1, "MLflow asked");
        stream.set_zero_linger().unwrap();
        drop(stream);
    }
    common::eventually("no question of a client that went away is held", || {
        proxy.app.auth.in_flight() == 0
    })
    .await;
    proxy.shutdown().await;
}

fn base64_basic(user_password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

/// An MLflow whose auth app judges DELETE as 3.17's `_find_validator` does for a user with
/// MANAGE everywhere: a Flask path containing `/mlflow/traces/` (or datasets, jobs, issues) is
/// denied, unless it also contains `/mlflow/logged-models` (or webhooks), which skips those rules.
async fn start_trap_mlflow(probes: Arc<AtomicUsize>) -> SocketAddr {
    common::serve_stand_in(move |request: Request<Incoming>| {
        let probes = probes.clone();
        async move {
            let path = percent_encoding::percent_decode_str(request.uri().path())
                .decode_utf8_lossy()
                .into_owned();
            let (status, body) = if request
                .headers()
                .get("authorization")
                .is_none_or(|v| v != ALICE)
            {
                if request.method() == http::Method::DELETE {
                    probes.fetch_add(1, Ordering::SeqCst);
                }
                (401, "You are not authenticated.")
            } else if request.method() == http::Method::DELETE {
                probes.fetch_add(1, Ordering::SeqCst);
                let skipped = ["/mlflow/logged-models", "/mlflow/webhooks"]
                    .iter()
                    .any(|s| path.contains(s));
                let trapped = [
                    "/mlflow/traces/",
                    "/mlflow/datasets/",
                    "/mlflow/jobs/",
                    "/mlflow/issues/",
                ]
                .iter()
                .any(|s| path.contains(s));
                if trapped && !skipped {
                    (403, "Permission denied")
                } else {
                    (200, "{}")
                }
            } else {
                (500, "unexpected")
            };
            let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            r
        }
    })
    .await
}

/// issue 20's sequence: an allow for one path was reused for a path MLflow denies, because both
/// shared a cache key. Each DELETE must get MLflow's own answer for its own path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_never_reused_for_a_path_mlflow_judges_otherwise() {
    let probes = Arc::new(AtomicUsize::new(0));
    let mlflow = start_trap_mlflow(probes.clone()).await;
    let s3 = S3Server::start().await;
    let trapped = "1/x/mlflow/traces/y/t.txt";
    s3.client().put_object(trapped, b"keep me").await.unwrap();
    let proxy = proxy(&s3, mlflow, Mode::On, Duration::from_secs(60)).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let delete = |path: &str| {
        client
            .delete(format!(
                "http://{}/api/2.0/mlflow-artifacts/artifacts/{path}",
                proxy.addr
            ))
            .header("authorization", ALICE)
            .send()
    };
    assert_eq!(delete(trapped).await.unwrap().status(), 403);
    assert_eq!(
        delete("1/x/mlflow/logged-models/mlflow/traces/z")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        delete(trapped).await.unwrap().status(),
        403,
        "the allow for the logged-models path was reused"
    );
    assert_eq!(s3.object(trapped), Some(b"keep me".to_vec()));
    // The steps were more than the TTL apart, so its second DELETE was asked afresh: the
    // allow it cached then served the trapped path. The same without the first step:
    let trapped2 = "1/x2/mlflow/traces/y/t.txt";
    s3.client().put_object(trapped2, b"keep me").await.unwrap();
    assert_eq!(
        delete("1/x2/mlflow/logged-models/mlflow/traces/z")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(delete(trapped2).await.unwrap().status(), 403);
    assert_eq!(s3.object(trapped2), Some(b"keep me".to_vec()));
    // Wrong credentials: MLflow checks the password once, not once per delete probe (issue 20:
    // three times).
    let asked = probes.load(Ordering::SeqCst);
    let wrong = client
        .delete(format!(
            "http://{}/api/2.0/mlflow-artifacts/artifacts/1/other/x.txt",
            proxy.addr
        ))
        .header("authorization", "Basic YWxpY2U6d3Jvbmc=")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(probes.load(Ordering::SeqCst) - asked, 1);
    // Repeats of one path are still answered from the cache.
    let asked = probes.load(Ordering::SeqCst);
    assert_eq!(delete(trapped).await.unwrap().status(), 403);
    assert_eq!(probes.load(Ordering::SeqCst), asked);
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
