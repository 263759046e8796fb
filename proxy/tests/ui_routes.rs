//! The UI's and the registry's downloads (`/get-artifact`, `/model-versions/get-artifact`, a
//! logged model's `artifacts/files`) against a real S3 server and a stand-in MLflow that answers
//! the lookups, the route probes and server-info as MLflow does, and counts what it is asked.
//! What only the real MLflow can show (its decisions, its exact answers) is in scripts/e2e
//! (test_ui_downloads.py, test_differential.py, test_auth.py, test_ui_workspaces.py).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{S3Server, random_bytes, serve_config, sha256};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::auth::{AuthConfig, Mode};
use mlflow_artifact_proxy::upstream::capabilities::{Capabilities, CapabilitiesConfig, Version};

/// `alice:pw`: may use every route and read every location.
const ALICE: &str = "Basic YWxpY2U6cHc=";
/// `bob:pw`: may read the run (runs/get) but not use the route (its probe is refused).
const BOB: &str = "Basic Ym9iOnB3";
/// `carol:pw`: may use the route, but the lookup is refused to her (MLflow judges the two
/// differently for some model versions).
const CAROL: &str = "Basic Y2Fyb2w6cHc=";

/// The stand-in's world: what MLflow would answer, and what it saw.
#[derive(Default)]
struct Registry {
    auth_app: AtomicBool,
    /// MLflow 3.18's server-info key (model downloads answer `presigned=true` with a URL).
    presigned_key: AtomicBool,
    prefix: String,
    /// "<user> <method> <path_and_query>" of every request, in order; "[<workspace>] " before
    /// it when the request named one.
    seen: Mutex<Vec<String>>,
}

impl Registry {
    fn count(&self, needle: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.contains(needle))
            .count()
    }
}

fn user(request: &Request<Incoming>) -> &'static str {
    match request.headers().get("authorization").map(|v| v.as_bytes()) {
        None => "anonymous",
        Some(v) if v == ALICE.as_bytes() => "alice",
        Some(v) if v == BOB.as_bytes() => "bob",
        Some(v) if v == CAROL.as_bytes() => "carol",
        Some(_) => "stranger",
    }
}

async fn start_registry(registry: Arc<Registry>) -> SocketAddr {
    common::serve_answers(move |request| answer(&registry, request)).await
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

fn answer(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let who = user(request);
    let path_and_query = request.uri().path_and_query().unwrap().to_string();
    // MLflow's workspace middleware: the header trimmed; none is the default workspace.
    let workspace = request
        .headers()
        .get("x-mlflow-workspace")
        .map(|v| v.to_str().unwrap().trim().to_owned());
    let named = workspace
        .as_deref()
        .map(|w| format!("[{w}] "))
        .unwrap_or_default();
    registry.seen.lock().unwrap().push(format!(
        "{named}{who} {} {path_and_query}",
        request.method()
    ));
    let workspace = workspace
        .as_deref()
        .filter(|w| !w.is_empty() && *w != "default");
    let auth_on = registry.auth_app.load(Ordering::SeqCst);
    let Some(path) = request.uri().path().strip_prefix(registry.prefix.as_str()) else {
        return reply(404, "text/html", "not under the prefix");
    };
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if path == "/health" {
        if workspace.is_some_and(|w| !KNOWN_WORKSPACES.contains(&w)) {
            return reply(
                404,
                "application/json",
                r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Workspace not found"}"#,
            );
        }
        return reply(200, "text/plain", "OK");
    }
    if path == "/api/3.0/mlflow/server-info" {
        let body = if registry.presigned_key.load(Ordering::SeqCst) {
            r#"{"store_type": "SqlStore", "model_artifact_presigned_downloads_supported": true}"#
        } else {
            r#"{"store_type": "SqlStore"}"#
        };
        return reply(200, "application/json", body);
    }
    if path == "/api/2.0/mlflow/users/current" && who == "anonymous" {
        return if auth_on {
            reply(401, "text/html", "You are not authenticated.")
        } else {
            reply(404, "text/html", "not found")
        };
    }
    if auth_on && (who == "anonymous" || who == "stranger") {
        let mut r = reply(401, "text/html", "You are not authenticated.");
        r.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Basic realm=\"mlflow\""),
        );
        return r;
    }
    let ui_route = matches!(path, "/get-artifact" | "/model-versions/get-artifact")
        || path.ends_with("/artifacts/files");
    let path_arg = query.contains_key("path") || query.contains_key("artifact_file_path");
    if ui_route && path_arg {
        // The real request, passed through: stock MLflow's own answer.
        return reply(200, "text/plain", "answered by MLflow itself");
    }
    if ui_route {
        // A route probe: the validator, then the handler's missing-argument answer.
        if auth_on && who == "bob" {
            return reply(403, "text/html; charset=utf-8", "Permission denied");
        }
        return reply(
            400,
            "text/html; charset=utf-8",
            "<!doctype html>\n<title>400 Bad Request</title>",
        );
    }
    if auth_on && who == "carol" {
        return reply(403, "text/html; charset=utf-8", "Permission denied");
    }
    if let Some(workspace) = workspace {
        return match in_workspace(workspace, path, &query) {
            Some(location) => reply(200, "application/json", location),
            None => reply(
                404,
                "application/json",
                r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}"#,
            ),
        };
    }
    let location = match path {
        "/api/2.0/mlflow/runs/get" => match query.get("run_id").map(String::as_str) {
            Some("r1") => Some(
                r#"{"run": {"info": {"run_id": "r1", "artifact_uri": "mlflow-artifacts:/1/r1/artifacts"}, "data": {}}}"#.to_owned(),
            ),
            Some("rh") => Some(
                r#"{"run": {"info": {"artifact_uri": "http://mlflow.example/api/2.0/mlflow-artifacts/artifacts/1/rh/artifacts"}}}"#.to_owned(),
            ),
            Some("rs3") => Some(r#"{"run": {"info": {"artifact_uri": "s3://elsewhere/1/rs3/artifacts"}}}"#.to_owned()),
            // A default-workspace experiment whose location names another workspace's tree
            // (made before workspaces were on): MLflow refuses to serve it in `default`.
            Some("dws") => Some(
                r#"{"run": {"info": {"artifact_uri": "mlflow-artifacts:/workspaces/team/1/dws/artifacts"}}}"#.to_owned(),
            ),
            // A run whose JSON is larger than the proxy reads (params and tags): 2 MiB.
            Some("rbig") => Some(format!(
                r#"{{"run": {{"info": {{"artifact_uri": "mlflow-artifacts:/1/rbig/artifacts"}}, "data": {{"tags": [{{"key": "k", "value": "{}"}}]}}}}}}"#,
                "x".repeat(2 << 20)
            )),
            _ => None,
        },
        "/api/2.0/mlflow/logged-models/m-1" => Some(
            r#"{"model": {"info": {"model_id": "m-1", "artifact_uri": "mlflow-artifacts:/1/models/m-1/artifacts"}}}"#.to_owned(),
        ),
        "/api/2.0/mlflow/model-versions/get-download-uri" => {
            match (query.get("name").map(String::as_str), query.get("version").map(String::as_str)) {
                (Some("reg"), Some("1")) => Some(r#"{"artifact_uri": "mlflow-artifacts:/1/models/m-1/artifacts"}"#.to_owned()),
                (Some("reg"), Some("2")) => Some(r#"{"artifact_uri": "runs:/r1/model"}"#.to_owned()),
                _ => None,
            }
        }
        _ => return reply(404, "text/html", "no such route"),
    };
    match location {
        Some(json) => reply(200, "application/json", json),
        None => reply(
            404,
            "application/json",
            r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}"#,
        ),
    }
}

/// The workspaces the stand-in resolves besides `default`.
const KNOWN_WORKSPACES: &[&str] = &["team", "other"];

/// The lookups MLflow answers inside a named workspace (its stores are scoped: a run of another
/// workspace is not found). The locations are the experiment's, as the workspace store makes
/// them (`<root>/workspaces/<ws>/<experiment>`), or a workspace's own root (no prefix: MLflow
/// adds it when it serves), or one that names another workspace (MLflow refuses to serve it).
fn in_workspace(workspace: &str, path: &str, query: &HashMap<String, String>) -> Option<String> {
    let arg = |name: &str| query.get(name).map(String::as_str);
    let run = |uri: &str| {
        Some(format!(
            r#"{{"run": {{"info": {{"artifact_uri": "{uri}"}}}}}}"#
        ))
    };
    match (workspace, path) {
        ("team", "/api/2.0/mlflow/runs/get") => match arg("run_id")? {
            "wr" => run("mlflow-artifacts:/workspaces/team/1/wr/artifacts"),
            "own-root" => run("mlflow-artifacts:/1/own-root/artifacts"),
            "across" => run("mlflow-artifacts:/workspaces/other/1/across/artifacts"),
            _ => None,
        },
        ("other", "/api/2.0/mlflow/runs/get") => match arg("run_id")? {
            "or" => run("mlflow-artifacts:/workspaces/other/1/or/artifacts"),
            _ => None,
        },
        ("team", "/api/2.0/mlflow/logged-models/m-w") => Some(
            r#"{"model": {"info": {"artifact_uri": "mlflow-artifacts:/workspaces/team/1/models/m-w/artifacts"}}}"#.to_owned(),
        ),
        ("team", "/api/2.0/mlflow/model-versions/get-download-uri")
            if arg("name") == Some("wreg") && arg("version") == Some("1") =>
        {
            Some(r#"{"artifact_uri": "runs:/wr/model"}"#.to_owned())
        }
        _ => None,
    }
}

/// Put `data` at `key` in the test bucket, straight into the store.
async fn seed(setup: &Setup, key: &str, data: &[u8]) {
    setup.s3.client().put_object(key, data).await.unwrap();
}

struct Setup {
    s3: S3Server,
    registry: Arc<Registry>,
    proxy: Proxy,
    http: reqwest::Client,
}

impl Setup {
    async fn start(auth: Mode, prefix: &str) -> Setup {
        Self::start_with(auth, prefix, false).await
    }

    /// `mlflow_3_18`: server-info says what MLflow 3.18's does of presigned model downloads.
    async fn start_with(auth: Mode, prefix: &str, mlflow_3_18: bool) -> Setup {
        Self::start_as(auth, prefix, mlflow_3_18, Capabilities::pinned()).await
    }

    /// MLflow 3.18 run with `--enable-workspaces`.
    async fn start_in_workspaces(auth: Mode) -> Setup {
        let capabilities = Capabilities {
            version: Some(Version::V3_18),
            rules_3_18: true,
            workspaces: true,
            presigned_only: false,
        };
        Self::start_as(auth, "", true, capabilities).await
    }

    async fn start_as(
        auth: Mode,
        prefix: &str,
        mlflow_3_18: bool,
        capabilities: Capabilities,
    ) -> Setup {
        let s3 = S3Server::start().await;
        let registry = Arc::new(Registry {
            auth_app: AtomicBool::new(auth != Mode::Off),
            presigned_key: AtomicBool::new(mlflow_3_18),
            prefix: prefix.to_owned(),
            ..Registry::default()
        });
        let upstream = start_registry(registry.clone()).await;
        let mut config = serve_config(&s3, &format!("http://{upstream}"));
        config.static_prefix = prefix.to_owned();
        config.mlflow = CapabilitiesConfig::fixed(capabilities);
        config.auth = AuthConfig {
            mode: auth,
            // Long enough that no test depends on the clock: reuse is counted, not timed.
            cache_ttl: Duration::from_secs(600),
            ..AuthConfig::off()
        };
        let proxy = Proxy::start(config).await.unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Setup {
            s3,
            registry,
            proxy,
            http,
        }
    }

    async fn get(&self, target: &str, auth: Option<&str>) -> reqwest::Response {
        self.request(reqwest::Method::GET, target, auth, &[]).await
    }

    async fn request(
        &self,
        method: reqwest::Method,
        target: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .request(method, format!("http://{}{target}", self.proxy.addr));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Served by the proxy: the bytes, MLflow's labels, and what the download route adds.
#[tokio::test]
async fn each_route_streams_the_object_from_s3() {
    let setup = Setup::start(Mode::Off, "").await;
    let data = random_bytes(9 << 20);
    let bucket = setup.s3.client();
    bucket
        .put_object("1/r1/artifacts/d/plot.png", &data)
        .await
        .unwrap();
    bucket
        .put_object("1/models/m-1/artifacts/MLmodel", &data[..1000])
        .await
        .unwrap();
    bucket
        .put_object("1/r1/artifacts/model/model.pkl", &data[..2000])
        .await
        .unwrap();
    bucket
        .put_object("1/rh/artifacts/x.json", b"{}")
        .await
        .unwrap();

    for (target, want) in [
        ("/get-artifact?path=d/plot.png&run_id=r1", &data[..]),
        ("/get-artifact?path=d%2Fplot.png&run_uuid=r1", &data[..]),
        ("/get-artifact?path=x.json&run_id=rh", &b"{}"[..]),
        (
            "/model-versions/get-artifact?path=MLmodel&name=reg&version=1",
            &data[..1000],
        ),
        // A `runs:/` source, resolved through the run.
        (
            "/model-versions/get-artifact?path=model.pkl&name=reg&version=2",
            &data[..2000],
        ),
        (
            "/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files?artifact_file_path=MLmodel",
            &data[..1000],
        ),
    ] {
        let response = setup.get(target, None).await;
        assert_eq!(response.status(), 200, "{target}");
        let name = if target.contains("plot") {
            "plot.png"
        } else if target.contains("MLmodel") {
            "MLmodel"
        } else if target.contains("model.pkl") {
            "model.pkl"
        } else {
            "x.json"
        };
        assert_eq!(
            header(&response, "content-disposition").unwrap(),
            format!("attachment; filename={name}"),
            "{target}"
        );
        assert_eq!(
            header(&response, "x-content-type-options").unwrap(),
            "nosniff"
        );
        assert_eq!(header(&response, "cache-control").unwrap(), "no-cache");
        assert_eq!(
            header(&response, "content-length").unwrap(),
            want.len().to_string()
        );
        let expected_type = match name {
            "plot.png" => "image/png",
            // MLflow's table previews these as text.
            "x.json" | "MLmodel" => "text/plain",
            _ => "application/octet-stream",
        };
        assert_eq!(header(&response, "content-type").unwrap(), expected_type);
        assert!(header(&response, "etag").is_some());
        let body = response.bytes().await.unwrap();
        assert_eq!(sha256(&body), sha256(want), "{target}");
    }
    // MLflow was asked where, never for the bytes.
    assert_eq!(setup.registry.count("path="), 0);
    assert_eq!(setup.registry.count("artifact_file_path="), 0);

    // Range and conditional requests, as on the download route.
    let target = "/get-artifact?path=d/plot.png&run_id=r1";
    let response = setup
        .request(
            reqwest::Method::GET,
            target,
            None,
            &[("range", "bytes=10-19")],
        )
        .await;
    assert_eq!(response.status(), 206);
    assert_eq!(
        header(&response, "content-range").unwrap(),
        format!("bytes 10-19/{}", data.len())
    );
    assert_eq!(&response.bytes().await.unwrap()[..], &data[10..20]);
    let etag = header(&setup.get(target, None).await, "etag").unwrap();
    let response = setup
        .request(
            reqwest::Method::GET,
            target,
            None,
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(response.status(), 304);
    let response = setup
        .request(reqwest::Method::HEAD, target, None, &[])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-length").unwrap(),
        data.len().to_string()
    );
}

/// A directory and a missing file are answered by the proxy (stock copies a directory into its
/// temp folder first, and answers a missing file with a 500 naming the store).
#[tokio::test]
async fn directories_and_missing_files_in_mlflows_shape() {
    let setup = Setup::start(Mode::Off, "").await;
    seed(&setup, "1/r1/artifacts/d/f.txt", b"x").await;
    for (target, status, body) in [
        (
            "/get-artifact?path=d&run_id=r1",
            400,
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Artifact path refers to a directory, not a file: '1/r1/artifacts/d'", "sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}"#,
        ),
        (
            "/get-artifact?path=&run_id=r1",
            400,
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Artifact path refers to a directory, not a file: '1/r1/artifacts/'", "sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}"#,
        ),
        (
            "/get-artifact?path=nope.txt&run_id=r1",
            404,
            r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No such artifact: '1/r1/artifacts/nope.txt'", "sqlstate": "KAM00", "error_class": "RESOURCE_NOT_FOUND"}"#,
        ),
    ] {
        let response = setup.get(target, None).await;
        assert_eq!(response.status(), status, "{target}");
        assert_eq!(
            header(&response, "content-type").unwrap(),
            "application/json"
        );
        assert_eq!(response.text().await.unwrap(), body, "{target}");
    }
}

/// Whatever the proxy cannot answer as stock would goes to MLflow as it came.
#[tokio::test]
async fn what_the_proxy_cannot_answer_goes_to_mlflow() {
    let setup = Setup::start(Mode::Off, "").await;
    for target in [
        // Missing or unsafe arguments: the stock handler's own errors (the stand-in answers a
        // request without its path argument as MLflow answers a probe: 400).
        "/get-artifact?path=f.txt",
        "/get-artifact?run_id=r1",
        "/get-artifact?path=../f.txt&run_id=r1",
        "/model-versions/get-artifact?path=f&name=reg",
        "/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files",
        // MLflow does not know it.
        "/get-artifact?path=f.txt&run_id=nope",
        "/model-versions/get-artifact?path=f&name=reg&version=9",
        "/ajax-api/2.0/mlflow/logged-models/m-2/artifacts/files?artifact_file_path=f",
        // A location outside the proxy's store.
        "/get-artifact?path=f.txt&run_id=rs3",
        // MLflow's answer is larger than the proxy reads.
        "/get-artifact?path=f.txt&run_id=rbig",
    ] {
        let status = setup.get(target, None).await.status();
        assert!(matches!(status.as_u16(), 200 | 400), "{target}: {status}");
        let seen = setup.registry.seen.lock().unwrap().last().unwrap().clone();
        assert!(seen.ends_with(target), "{target}: MLflow saw {seen}");
    }
}

/// With MLflow's auth app on: the route itself decides (probe), the lookup is made as the
/// caller, and a lookup is never reused for another caller's credentials.
#[tokio::test]
async fn mlflow_decides_as_the_caller() {
    let setup = Setup::start(Mode::On, "").await;
    seed(&setup, "1/r1/artifacts/f.txt", b"alice's").await;
    let target = "/get-artifact?path=f.txt&run_id=r1";

    let response = setup.get(target, Some(ALICE)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "alice's");
    assert_eq!(setup.registry.count("alice GET /get-artifact?run_id=r1"), 1);
    assert_eq!(
        setup.registry.count("alice GET /api/2.0/mlflow/runs/get"),
        1
    );

    // Asked once per credential while the answers last.
    for _ in 0..3 {
        assert_eq!(setup.get(target, Some(ALICE)).await.status(), 200);
    }
    assert_eq!(setup.registry.count("alice GET /get-artifact?run_id=r1"), 1);
    assert_eq!(
        setup.registry.count("alice GET /api/2.0/mlflow/runs/get"),
        1
    );

    // Bob may read the run but not use the route: MLflow answers the real request.
    let response = setup.get(target, Some(BOB)).await;
    assert_eq!(response.text().await.unwrap(), "answered by MLflow itself");
    assert_eq!(setup.registry.count("bob GET /api/2.0/mlflow/runs/get"), 1);
    assert_eq!(setup.registry.count(&format!("bob GET {target}")), 1);
    // Carol may use the route but MLflow does not tell her where: MLflow answers.
    let response = setup.get(target, Some(CAROL)).await;
    assert_eq!(response.text().await.unwrap(), "answered by MLflow itself");
    // Without credentials, and with credentials MLflow refuses: MLflow answers (its 401).
    for auth in [None, Some("Basic c3RyYW5nZXI6eA==")] {
        let response = setup.get(target, auth).await;
        assert_eq!(response.status(), 401);
    }
    // HEAD is its own question (MLflow's auth app has no rule for it: admins only).
    let response = setup
        .request(reqwest::Method::HEAD, target, Some(ALICE), &[])
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        setup.registry.count("alice HEAD /get-artifact?run_id=r1"),
        1
    );
}

/// MLflow 3.18 answers `presigned=true` with a URL on the store; the proxy with one on itself.
/// MLflow 3.17 ignores the argument, and so does the proxy in front of it.
#[tokio::test]
async fn presigned_model_downloads_point_at_the_proxy() {
    let setup = Setup::start(Mode::Off, "/mlflow").await;
    let data = random_bytes(3000);
    seed(&setup, "1/models/m-1/artifacts/MLmodel", &data).await;
    let targets = [
        "/mlflow/model-versions/get-artifact?path=MLmodel&name=reg&version=1&presigned=true",
        "/mlflow/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files?artifact_file_path=MLmodel&presigned=true",
    ];
    for target in targets {
        let response = setup.get(target, None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.bytes().await.unwrap(), data, "3.17: {target}");
    }
    let setup = Setup::start_with(Mode::Off, "/mlflow", true).await;
    seed(&setup, "1/models/m-1/artifacts/MLmodel", &data).await;
    for target in targets {
        let response = setup.get(target, None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            header(&response, "content-type").unwrap(),
            "application/json"
        );
        let text = response.text().await.unwrap();
        assert!(text.ends_with('\n'), "{text}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["file_size"], 3000);
        assert_eq!(answer["headers"], serde_json::json!({}));
        let url = answer["url"].as_str().unwrap();
        let on_proxy = format!("http://{}/mlflow/", setup.proxy.addr);
        assert!(url.starts_with(&on_proxy), "{url}");
        assert!(!url.contains(&setup.s3.endpoint), "{url}");
        let fetched = setup.http.get(url).send().await.unwrap();
        assert_eq!(fetched.status(), 200);
        assert_eq!(fetched.bytes().await.unwrap(), data);
    }
}

/// Under MLflow's `--static-prefix`: served under it, asked under it, nothing outside it.
#[tokio::test]
async fn under_the_static_prefix() {
    // Auto: whether MLflow's auth app is on is asked under the prefix too.
    let setup = Setup::start(Mode::Auto, "/mlflow").await;
    seed(&setup, "1/r1/artifacts/f.txt", b"prefixed").await;
    let response = setup
        .get("/mlflow/get-artifact?path=f.txt&run_id=r1", Some(ALICE))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "prefixed");
    assert_eq!(
        setup
            .registry
            .count("alice GET /mlflow/api/2.0/mlflow/runs/get?run_id=r1"),
        1
    );
    assert_eq!(
        setup
            .registry
            .count("alice GET /mlflow/get-artifact?run_id=r1"),
        1
    );
    // Auth detection under the prefix too (the stand-in answers 404 outside it), and readiness.
    assert!(
        setup
            .registry
            .count("GET /mlflow/api/2.0/mlflow/users/current")
            >= 1
    );
    let ready = setup
        .http
        .get(format!("http://{}/readyz?deep=1", setup.proxy.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    assert_eq!(setup.registry.count("GET /mlflow/health"), 1);
    // Outside the prefix MLflow has no such route: it says so itself.
    let response = setup
        .get("/get-artifact?path=f.txt&run_id=r1", Some(ALICE))
        .await;
    assert_eq!(response.status(), 404);
}

/// With workspaces on, a request is answered in its workspace: MLflow is asked the location with
/// the header (its stores are scoped), and the key gets the workspace's part as MLflow's handlers
/// add it. A workspace MLflow does not resolve, a thing it does not know there, and a location
/// that names another workspace go to MLflow, which answers them: never another workspace's bytes.
#[tokio::test]
async fn workspaces_are_asked_and_keyed_as_mlflow_does() {
    let setup = Setup::start_in_workspaces(Mode::Off).await;
    for (key, data) in [
        ("workspaces/team/1/wr/artifacts/f.txt", &b"team's"[..]),
        (
            "workspaces/team/1/wr/artifacts/model/MLmodel",
            b"team's model",
        ),
        (
            "workspaces/team/1/models/m-w/artifacts/MLmodel",
            b"team's logged model",
        ),
        (
            "workspaces/team/1/own-root/artifacts/f.txt",
            b"team's own root",
        ),
        ("workspaces/other/1/or/artifacts/f.txt", b"other's"),
        (
            "workspaces/other/1/across/artifacts/f.txt",
            b"other's, named from team",
        ),
        (
            "workspaces/team/1/dws/artifacts/f.txt",
            b"team's, named from default",
        ),
        // Where an unscoped key would point: never served to a workspace.
        ("1/wr/artifacts/f.txt", b"unscoped"),
        ("1/own-root/artifacts/f.txt", b"unscoped"),
        ("1/r1/artifacts/f.txt", b"default's"),
    ] {
        seed(&setup, key, data).await;
    }
    let wr = "/get-artifact?path=f.txt&run_id=wr";
    for (target, workspace, want) in [
        (wr, Some("team"), "team's"),
        (wr, Some("  team "), "team's"),
        (
            "/get-artifact?path=f.txt&run_id=or",
            Some("other"),
            "other's",
        ),
        (
            "/get-artifact?path=f.txt&run_id=own-root",
            Some("team"),
            "team's own root",
        ),
        (
            "/model-versions/get-artifact?path=MLmodel&name=wreg&version=1",
            Some("team"),
            "team's model",
        ),
        (
            "/ajax-api/2.0/mlflow/logged-models/m-w/artifacts/files?artifact_file_path=MLmodel",
            Some("team"),
            "team's logged model",
        ),
        // The default workspace keeps the root's layout.
        ("/get-artifact?path=f.txt&run_id=r1", None, "default's"),
        (
            "/get-artifact?path=f.txt&run_id=r1",
            Some("default"),
            "default's",
        ),
    ] {
        let headers: Vec<_> = workspace
            .map(|w| ("x-mlflow-workspace", w))
            .into_iter()
            .collect();
        let response = setup
            .request(reqwest::Method::GET, target, None, &headers)
            .await;
        assert_eq!(response.status(), 200, "{target} in {workspace:?}");
        assert_eq!(
            response.text().await.unwrap(),
            want,
            "{target} in {workspace:?}"
        );
    }
    // MLflow was asked in the workspace, never for the bytes.
    assert_eq!(setup.registry.count("path="), 0);
    assert_eq!(
        setup
            .registry
            .count("[team] anonymous GET /api/2.0/mlflow/runs/get?run_id=wr"),
        1
    );

    // What MLflow answers itself.
    for (target, workspace) in [
        // Another workspace's run, and a workspace MLflow does not resolve.
        (wr, Some("other")),
        (wr, Some("missing")),
        // Locations that name another workspace than the request's (MLflow's 400).
        ("/get-artifact?path=f.txt&run_id=across", Some("team")),
        ("/get-artifact?path=f.txt&run_id=dws", None),
        // A model of another workspace.
        (
            "/ajax-api/2.0/mlflow/logged-models/m-w/artifacts/files?artifact_file_path=MLmodel",
            Some("other"),
        ),
    ] {
        let headers: Vec<_> = workspace
            .map(|w| ("x-mlflow-workspace", w))
            .into_iter()
            .collect();
        let response = setup
            .request(reqwest::Method::GET, target, None, &headers)
            .await;
        assert_eq!(
            response.text().await.unwrap(),
            "answered by MLflow itself",
            "{target} in {workspace:?}"
        );
        let seen = setup.registry.seen.lock().unwrap().last().unwrap().clone();
        assert!(seen.ends_with(target), "{target}: MLflow saw {seen}");
    }

    // `presigned=true`: a URL on the proxy for the workspace's key.
    let response = setup
        .request(
            reqwest::Method::GET,
            "/model-versions/get-artifact?path=MLmodel&name=wreg&version=1&presigned=true",
            None,
            &[("x-mlflow-workspace", "team")],
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let fetched = setup
        .http
        .get(answer["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.text().await.unwrap(), "team's model");
}

/// The route's auth decision is MLflow's in the request's workspace: remembered per workspace,
/// never reused for another.
#[tokio::test]
async fn decisions_are_remembered_per_workspace() {
    let setup = Setup::start_in_workspaces(Mode::On).await;
    seed(&setup, "workspaces/team/1/wr/artifacts/f.txt", b"team's").await;
    let target = "/get-artifact?path=f.txt&run_id=wr";
    let setup = &setup;
    let get = |workspace: &'static str| async move {
        setup
            .request(
                reqwest::Method::GET,
                target,
                Some(ALICE),
                &[("x-mlflow-workspace", workspace)],
            )
            .await
    };
    for _ in 0..3 {
        let response = get("team").await;
        assert_eq!(response.text().await.unwrap(), "team's");
    }
    let probe = "alice GET /get-artifact?run_id=wr";
    assert_eq!(setup.registry.count(&format!("[team] {probe}")), 1);
    assert_eq!(
        setup
            .registry
            .count("[team] alice GET /api/2.0/mlflow/runs/get?run_id=wr"),
        1
    );
    // Another workspace is another question (and MLflow does not know the run there).
    let response = get("other").await;
    assert_eq!(response.text().await.unwrap(), "answered by MLflow itself");
    assert_eq!(setup.registry.count(&format!("[other] {probe}")), 1);
    assert_eq!(
        setup
            .registry
            .count("[other] alice GET /api/2.0/mlflow/runs/get?run_id=wr"),
        1
    );
}
