//! "." segments and MLflow's auth: MLflow judges the path as written, where `./3/…` names no
//! experiment, while a store that resolves "." segments (s3s-fs, a file system) serves experiment
//! 3's objects for it. The proxy also asks MLflow about the path as such a store reads it
//! (`3/…`), and refuses unless both are allowed; the S3 key stays MLflow's. The real auth app's
//! answers are in scripts/e2e/test_auth.py; here a stand-in judges as MLflow 3.17 does (the
//! experiment is the first segment of the canonical path) and notes every path it is asked about.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{RawResponse, S3Server, raw_request_with, serve_config};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::auth::{AuthConfig, Mode};
use mlflow_artifact_proxy::mlflow::path::{py_unquote, validate_path_is_safe};
use pretty_assertions::assert_eq;

/// `alice:pw`: no permission on experiment 3, READ and EDIT elsewhere.
const ALICE: &str = "Basic YWxpY2U6cHc=";
/// `admin:pw`: everything.
const ADMIN: &str = "Basic YWRtaW46cHc=";

/// MLflow's auth app, reduced to one rule: alice may do nothing on experiment 3. `asked` gets the
/// artifact path of every validator probe, as MLflow's validator reads it.
async fn start_mlflow(asked: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    common::serve_answers(move |request| judge(&asked, request)).await
}

fn judge(asked: &Mutex<Vec<String>>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: u16, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r
    };
    let user = request
        .headers()
        .get("authorization")
        .and_then(|v| match v.to_str() {
            Ok(ALICE) => Some("alice"),
            Ok(ADMIN) => Some("admin"),
            _ => None,
        });
    let Some(user) = user else {
        return reply(401, "You are not authenticated.");
    };
    let path = request.uri().path();
    let Some(route) = path.strip_prefix("/api/2.0/mlflow-artifacts/") else {
        return reply(500, "unexpected");
    };
    // Where the validator finds the artifact path (uvicorn decodes the URL path once, Flask the
    // query value), and the harmless answer of the handler behind each probe once allowed.
    let (artifact_path, allowed) = if route == "artifacts" {
        let query = request.uri().query().unwrap_or_default();
        let path = url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "path")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        (path, reply(200, "{}"))
    } else if let Some(rest) = route.strip_prefix("artifacts/") {
        (py_unquote(rest), reply(200, "{}"))
    } else if let Some(rest) = route.strip_prefix("mpu/abort/") {
        let answer = reply(400, r#"{"error_code": "INVALID_PARAMETER_VALUE"}"#);
        (py_unquote(rest), answer)
    } else if let Some(rest) = route.strip_prefix("presigned/") {
        let answer = reply(404, r#"{"error_code": "RESOURCE_DOES_NOT_EXIST"}"#);
        (py_unquote(rest), answer)
    } else {
        return reply(500, "unexpected");
    };
    asked.lock().unwrap().push(artifact_path.clone());
    let experiment = validate_path_is_safe(&artifact_path)
        .ok()
        .and_then(|canonical| {
            let first = canonical.split('/').next()?.to_owned();
            (!first.is_empty() && first.bytes().all(|b| b.is_ascii_digit())).then_some(first)
        });
    if user == "alice" && experiment.as_deref() == Some("3") {
        return reply(403, "Permission denied");
    }
    allowed
}

struct Setup {
    s3: S3Server,
    proxy: Proxy,
    asked: Arc<Mutex<Vec<String>>>,
}

impl Setup {
    async fn start() -> Setup {
        let s3 = S3Server::start().await;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mlflow = start_mlflow(asked.clone()).await;
        let mut config = serve_config(&s3, &format!("http://{mlflow}"));
        config.auth = AuthConfig {
            mode: Mode::On,
            // Every request asked afresh: what MLflow is asked is the subject here.
            cache_ttl: std::time::Duration::ZERO,
            ..AuthConfig::off()
        };
        let proxy = Proxy::start(config).await.unwrap();
        Setup { s3, proxy, asked }
    }

    async fn send(&self, who: &str, method: &str, target: &str, body: &[u8]) -> RawResponse {
        let mut headers = vec![("authorization", who)];
        if method == "POST" {
            headers.push(("content-type", "application/json"));
        }
        raw_request_with(self.proxy.addr, method, target, &headers, body).await
    }

    fn asked_since(&self, from: usize) -> Vec<String> {
        let asked = self.asked.lock().unwrap();
        let mut paths: Vec<String> = asked[from..]
            .iter()
            .map(|p| p.replace("/.mlflow-proxy-authz-probe", ""))
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

const A: &str = "/api/2.0/mlflow-artifacts/artifacts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_segment_does_not_hide_the_experiment() {
    let s = Setup::start().await;
    let seeded = s
        .send(
            ADMIN,
            "PUT",
            &format!("{A}/3/r/artifacts/secret.txt"),
            b"secret",
        )
        .await;
    assert_eq!(seeded.status, 200);
    assert_eq!(
        s.send(ALICE, "GET", &format!("{A}/3/r/artifacts/secret.txt"), b"")
            .await
            .status,
        403
    );

    let mpu = "/api/2.0/mlflow-artifacts/mpu/create";
    let presigned = "/api/2.0/mlflow-artifacts/presigned";
    let create_body = br#"{"path": "x.bin", "num_parts": 1}"#;
    for (method, target, body) in [
        ("GET", format!("{A}/./3/r/artifacts/secret.txt"), &b""[..]),
        ("GET", format!("{A}/%2E/3/r/artifacts/secret.txt"), b""),
        ("GET", format!("{A}/%252E/3/r/artifacts/secret.txt"), b""),
        ("GET", format!("{A}/.//3/r/artifacts/secret.txt"), b""),
        ("GET", format!("{A}?path=.%2F3"), b""),
        ("GET", format!("{A}?path=.%2F3%2Fr%2Fartifacts"), b""),
        (
            "GET",
            format!("{presigned}/./3/r/artifacts/secret.txt"),
            b"",
        ),
        ("PUT", format!("{A}/./3/r/artifacts/new.txt"), b"new"),
        ("DELETE", format!("{A}/./3"), b""),
        ("DELETE", format!("{A}/./3/r/artifacts/secret.txt"), b""),
        ("POST", format!("{mpu}/./3/r/artifacts"), create_body),
    ] {
        let from = s.asked.lock().unwrap().len();
        let answer = s.send(ALICE, method, &target, body).await;
        assert_eq!(
            (answer.status, answer.text().as_str()),
            (403, "Permission denied"),
            "{method} {target}"
        );
        // MLflow was asked about the path as written and as the store reads it.
        let asked = s.asked_since(from);
        assert!(
            asked.iter().any(|p| p.starts_with("3")),
            "{method} {target}: MLflow was asked about {asked:?}"
        );
    }
    // Nothing was read, written or deleted.
    let stored = s
        .send(ADMIN, "GET", &format!("{A}/3/r/artifacts/secret.txt"), b"")
        .await;
    assert_eq!((stored.status, stored.text().as_str()), (200, "secret"));
    let keys: Vec<String> = s.s3.keys();
    assert_eq!(keys, ["3/r/artifacts/secret.txt"]);

    // Where both readings are allowed, nothing changes: alice writes and reads `./1/…`, under
    // MLflow's key `./1/…` (on s3s-fs the same file as `1/…`).
    let put = s
        .send(ALICE, "PUT", &format!("{A}/./1/r/artifacts/ok.txt"), b"ok")
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let from = s.asked.lock().unwrap().len();
    let get = s
        .send(ALICE, "GET", &format!("{A}/./1/r/artifacts/ok.txt"), b"")
        .await;
    assert_eq!((get.status, get.text().as_str()), (200, "ok"));
    assert_eq!(
        s.asked_since(from),
        ["./1/r/artifacts/ok.txt", "1/r/artifacts/ok.txt"]
    );
    // A path without "." segments is asked about once, as before.
    let from = s.asked.lock().unwrap().len();
    let get = s
        .send(ALICE, "GET", &format!("{A}/1/r/artifacts/a..b"), b"")
        .await;
    assert_eq!(get.status, 404);
    assert_eq!(s.asked_since(from), ["1/r/artifacts/a..b"]);
}
