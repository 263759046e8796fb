//! What the proxy learns from MLflow (`capabilities`) and how it answers by it: the version and modes
//! read from server-info (and `/version` when it answers), 503 while MLflow cannot tell, 3.18's
//! immutable skill content, presigned-only requests handed to MLflow, workspaces served at MLflow's
//! key (and handed to MLflow when it runs without them or does not know the workspace), the workspace
//! header in the auth probes. The MLflow here is a small stand-in whose answers a test sets; the real
//! MLflow 3.17.2 and 3.18.0 are compared with the proxy in scripts/e2e (test_mlflow_rules.py,
//! test_workspaces.py, test_presigned_only.py, test_auth.py).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{S3Server, serve_config};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::auth::{AuthConfig, Mode};
use mlflow_artifact_proxy::upstream::capabilities::CapabilitiesConfig;
use pretty_assertions::assert_eq;

const INFO_3_17: &str = r#"{"store_type": "SqlStore", "workspaces_enabled": false, "multipart_uploads_enabled": false, "multipart_downloads_enabled": false}"#;
const INFO_3_18: &str = r#"{"store_type": "SqlStore", "workspaces_enabled": false, "multipart_uploads_enabled": false, "multipart_downloads_enabled": false, "model_artifact_presigned_downloads_supported": true, "artifacts_presigned_only": false}"#;

/// What the stand-in answers; a test changes it as it goes.
struct Stand {
    /// `/version`'s text; None: 401, as behind MLflow's auth app.
    version: Option<&'static str>,
    /// server-info's JSON; None: 500.
    info: Option<String>,
    /// Workspaces `/health` resolves (with the header).
    workspaces: Vec<&'static str>,
    /// `users/current` without credentials: 401 (auth app on) or 404.
    auth_app: bool,
    /// Every request: (method, path and query, workspace header).
    seen: Vec<(String, String, Option<String>)>,
}

type Shared = Arc<Mutex<Stand>>;

fn stand(version: Option<&'static str>, info: &str) -> Shared {
    Arc::new(Mutex::new(Stand {
        version,
        info: Some(info.to_owned()),
        workspaces: vec!["team"],
        auth_app: false,
        seen: Vec::new(),
    }))
}

async fn start_stand(state: Shared) -> SocketAddr {
    common::serve_stand_in(move |request: Request<Incoming>| {
        let state = state.clone();
        async move { answer(&state, request).await }
    })
    .await
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn answer(state: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().to_string();
    let target = request.uri().to_string();
    let path = request.uri().path().to_owned();
    let workspace = request
        .headers()
        .get("x-mlflow-workspace")
        .map(|v| v.to_str().unwrap().to_owned());
    let has_credentials = request.headers().contains_key("authorization");
    let _ = request.into_body().collect().await;
    let mut s = state.lock().unwrap();
    s.seen
        .push((method.clone(), target.clone(), workspace.clone()));
    match path.as_str() {
        "/version" => match s.version {
            Some(v) => reply(200, "text/plain", v.to_owned()),
            None => reply(401, "text/html", "You are not authenticated.".into()),
        },
        "/api/3.0/mlflow/server-info" => match &s.info {
            Some(info) => reply(200, "application/json", info.clone()),
            None => reply(500, "text/html", "Internal Server Error".into()),
        },
        "/health" => match workspace {
            Some(ws) if !s.workspaces.contains(&ws.as_str()) => reply(
                404,
                "application/json",
                format!(
                    r#"{{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"Workspace '{ws}' not found"}}"#
                ),
            ),
            _ => reply(200, "text/plain", "OK".into()),
        },
        "/api/2.0/mlflow/users/current" if !has_credentials => {
            if s.auth_app {
                reply(401, "text/html", "You are not authenticated.".into())
            } else {
                reply(404, "text/html", "Not Found".into())
            }
        }
        // The auth app's read validator, passed.
        "/api/2.0/mlflow-artifacts/artifacts" => reply(200, "application/json", "{}".into()),
        // Whatever MLflow itself is handed.
        _ => reply(418, "text/plain", format!("stand-in: {method} {target}")),
    }
}

struct Setup {
    s3: S3Server,
    state: Shared,
    proxy: Proxy,
    http: reqwest::Client,
}

async fn setup(state: Shared, auth: bool) -> Setup {
    let s3 = S3Server::start().await;
    let addr = start_stand(state.clone()).await;
    let mut config = serve_config(&s3, &format!("http://{addr}"));
    config.mlflow = CapabilitiesConfig {
        fixed: None,
        recheck: Duration::from_secs(3600),
    };
    if auth {
        config.auth = AuthConfig {
            mode: Mode::On,
            ..AuthConfig::off()
        };
    }
    let proxy = Proxy::start(config).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    Setup {
        s3,
        state,
        proxy,
        http,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.addr)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        workspace: Option<&str>,
        body: &'static [u8],
    ) -> (u16, String) {
        let mut request = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .body(body);
        if let Some(ws) = workspace {
            request = request.header("x-mlflow-workspace", ws);
        }
        if method == "POST" {
            request = request.header("content-type", "application/json");
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Requests MLflow was handed (not the proxy's own questions).
    fn handed(&self) -> Vec<String> {
        let own = [
            "/version",
            "/api/3.0/mlflow/server-info",
            "/health",
            "/api/2.0/mlflow/users/current",
        ];
        self.state
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|(_, target, _)| !own.iter().any(|o| target.starts_with(o)))
            .map(|(method, target, _)| format!("{method} {target}"))
            .collect()
    }
}

const A: &str = "/api/2.0/mlflow-artifacts/artifacts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_routes_wait_for_mlflow_to_say_what_it_is() {
    let state = stand(Some("3.17.2"), INFO_3_17);
    state.lock().unwrap().info = None;
    let s = setup(state.clone(), false).await;
    let (status, body) = s.send("PUT", &format!("{A}/1/a.txt"), None, b"x").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("which version and modes"), "{body}");
    assert!(s.s3.keys().is_empty());
    // MLflow answers again: so does the proxy (a failed attempt is retried after a second).
    state.lock().unwrap().info = Some(INFO_3_17.to_owned());
    let mut attempts = 0;
    let status = loop {
        let (status, _) = s.send("PUT", &format!("{A}/1/a.txt"), None, b"x").await;
        attempts += 1;
        if status != 503 || attempts == 40 {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200);
    assert_eq!(s.s3.object("1/a.txt").unwrap(), b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skill_content_is_immutable_from_3_18_on() {
    // Behind the auth app /version is a 401: server-info's contract tells it is 3.18.
    let s = setup(stand(None, INFO_3_18), false).await;
    let immutable = "Skill upload content is immutable; register a new version instead";
    let (status, body) = s
        .send("PUT", &format!("{A}/skills/x/t/SKILL.md"), None, b"x")
        .await;
    assert_eq!(
        (status, body),
        (403, format!(r#"{{"detail":"{immutable}"}}"#))
    );
    for (method, path, body) in [
        ("DELETE", format!("{A}/SKILLS/x"), &b""[..]),
        (
            "POST",
            "/api/2.0/mlflow-artifacts/mpu/create/skills/x/t".to_owned(),
            &br#"{"path": "f.bin", "num_parts": 1}"#[..],
        ),
        (
            "POST",
            "/api/2.0/mlflow-artifacts/mpu/create/workspaces/w".to_owned(),
            &br#"{"path": "skills", "num_parts": 1}"#[..],
        ),
    ] {
        let response = s
            .http
            .request(method.parse().unwrap(), s.url(&path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        assert_eq!(
            response.text().await.unwrap(),
            format!(
                r#"{{"error_code": "PERMISSION_DENIED", "message": "{immutable}", "sqlstate": "KAM00", "error_class": "PERMISSION_DENIED"}}"#
            ),
            "{method} {path}"
        );
    }
    assert!(s.s3.keys().is_empty());
    // Reads are not writes.
    let (status, _) = s.send("GET", &format!("{A}?path=skills"), None, b"").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skill_paths_are_ordinary_before_3_18() {
    let s = setup(stand(Some("3.17.2"), INFO_3_17), false).await;
    let (status, _) = s
        .send("PUT", &format!("{A}/skills/x/t/SKILL.md"), None, b"v1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.s3.object("skills/x/t/SKILL.md").unwrap(), b"v1");
    let (status, _) = s.send("DELETE", &format!("{A}/skills/x"), None, b"").await;
    assert_eq!(status, 200);
    assert!(s.s3.keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_only_gets_and_puts_are_mlflows_to_answer() {
    let info = INFO_3_18.replace(
        r#""artifacts_presigned_only": false"#,
        r#""artifacts_presigned_only": true"#,
    );
    let s = setup(stand(Some("3.18.0"), &info), false).await;
    for method in ["GET", "HEAD", "PUT"] {
        let (status, _) = s.send(method, &format!("{A}/1/f.txt"), None, b"x").await;
        assert_eq!(status, 418, "{method}: MLflow answers it");
    }
    assert_eq!(
        s.handed(),
        [
            format!("GET {A}/1/f.txt"),
            format!("HEAD {A}/1/f.txt"),
            format!("PUT {A}/1/f.txt")
        ]
    );
    assert!(s.s3.keys().is_empty());
    // The proxy's own presigned transfers are what the mode is for.
    let (status, body) = s
        .send(
            "POST",
            "/api/2.0/mlflow-artifacts/mpu/create/1/r",
            None,
            br#"{"path": "f.bin", "num_parts": 1}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let create: serde_json::Value = serde_json::from_str(&body).unwrap();
    let part_url = create["credentials"][0]["url"].as_str().unwrap();
    let put = s.http.put(part_url).body("part").send().await.unwrap();
    assert_eq!(put.status(), 200);
    // server-info says so, unchanged; the model presigned flag is the proxy's.
    let (_, info) = s
        .send("GET", "/api/3.0/mlflow/server-info", None, b"")
        .await;
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["artifacts_presigned_only"], true);
    assert_eq!(info["model_artifact_presigned_downloads_supported"], false);
    assert_eq!(info["multipart_uploads_enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_requests_are_served_at_mlflows_key() {
    let info = INFO_3_17.replace(
        r#""workspaces_enabled": false"#,
        r#""workspaces_enabled": true"#,
    );
    let s = setup(stand(Some("3.17.2"), &info), false).await;
    let (status, _) = s
        .send("PUT", &format!("{A}/1/r/a.txt"), Some("team"), b"ws")
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.s3.object("workspaces/team/1/r/a.txt").unwrap(), b"ws");
    let (status, body) = s
        .send("GET", &format!("{A}/1/r/a.txt"), Some("team"), b"")
        .await;
    assert_eq!((status, body.as_str()), (200, "ws"));
    let (status, body) = s
        .send(
            "GET",
            &format!("{A}/workspaces/team/1/r/a.txt"),
            Some("team"),
            b"",
        )
        .await;
    assert_eq!((status, body.as_str()), (200, "ws"));
    let (_, listing) = s
        .send("GET", &format!("{A}?path=1/r"), Some("team"), b"")
        .await;
    assert!(listing.contains(r#""path": "a.txt""#), "{listing}");
    // Across workspaces: MLflow's 400, from the proxy.
    let (status, body) = s
        .send(
            "GET",
            &format!("{A}/workspaces/other/1/r/a.txt"),
            Some("team"),
            b"",
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body.contains("Artifact path targets workspace 'other' but the workspace specified in the request is 'team'."),
        "{body}"
    );
    // No header: the default workspace, whose artifacts stay at the root.
    let (status, _) = s
        .send("PUT", &format!("{A}/1/r/b.txt"), None, b"root")
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.s3.object("1/r/b.txt").unwrap(), b"root");
    // A workspace MLflow does not know: MLflow answers.
    let (status, _) = s
        .send("PUT", &format!("{A}/1/r/c.txt"), Some("nope"), b"x")
        .await;
    assert_eq!(status, 418);
    assert_eq!(s.handed(), [format!("PUT {A}/1/r/c.txt")]);
    assert_eq!(s.s3.keys(), ["1/r/b.txt", "workspaces/team/1/r/a.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_header_without_workspaces_is_mlflows_to_answer() {
    let s = setup(stand(Some("3.17.2"), INFO_3_17), false).await;
    let (status, _) = s
        .send("PUT", &format!("{A}/1/r/a.txt"), Some("team"), b"x")
        .await;
    assert_eq!(status, 418);
    assert_eq!(s.handed(), [format!("PUT {A}/1/r/a.txt")]);
    assert!(s.s3.keys().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_probes_carry_the_workspace_and_3_18_skill_paths_as_they_are() {
    let info = INFO_3_18.replace(
        r#""workspaces_enabled": false"#,
        r#""workspaces_enabled": true"#,
    );
    let state = stand(None, &info);
    state.lock().unwrap().auth_app = true;
    let s = setup(state.clone(), true).await;
    let get = |path: String| {
        s.http
            .get(s.url(&path))
            .header("x-mlflow-workspace", "team")
            .header("authorization", "Basic YWxpY2U6cHc=")
            .send()
    };
    assert_eq!(get(format!("{A}?path=1")).await.unwrap().status(), 200);
    assert_eq!(get(format!("{A}?path=skills")).await.unwrap().status(), 200);
    let mut probes: Vec<(String, Option<String>)> = state
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|(_, target, _)| target.starts_with(A))
        .map(|(_, target, ws)| (target.clone(), ws.clone()))
        .collect();
    probes.sort();
    let team = Some("team".to_owned());
    assert_eq!(
        probes,
        [
            (
                format!("{A}?path=1%2F.mlflow-proxy-authz-probe"),
                team.clone()
            ),
            (
                format!(
                    "{A}?path=1%2F00000000000000000000000000000000%2F.mlflow-proxy-authz-probe"
                ),
                team.clone()
            ),
            // 3.18 judges its skill tree by name: the path as it is, no run-tier question.
            (format!("{A}?path=skills"), team),
        ]
    );
}
