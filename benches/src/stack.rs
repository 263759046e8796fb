//! The parts of the real stack a bench starts as processes of its own: stock MLflow, launched by
//! the image's entrypoint (`mlflow-image/entrypoint.sh`, so exactly the server the stack runs),
//! with or without its basic-auth app; the proxy binary with a given environment; and a small
//! client for MLflow's REST API (users, grants, experiments, runs) and for requests with headers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use serde_json::Value;

use crate::client::{self, ReqBody, Target};
use crate::procs::{self, Managed};
use crate::s3store::{ACCESS_KEY, BUCKET, S3Store, SECRET_KEY};

/// Where MLflow and the proxy find the S3 store and its bucket.
#[derive(Clone, Debug)]
pub struct S3Access {
    pub url: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// s3s-fs (`servers::start_s3_store`) with its files under `work` and the bench bucket made (a
/// folder under its root), and how MLflow and the proxies reach that bucket.
pub fn start_s3s_fs_bucket(work: &Path) -> Result<(S3Store, S3Access), String> {
    let store = crate::servers::start_s3_store(
        "s3s-fs",
        &crate::setup::tools_dir(),
        work,
        ACCESS_KEY,
        SECRET_KEY,
    )?;
    std::fs::create_dir_all(work.join("s3s-fs").join(BUCKET)).map_err(|e| e.to_string())?;
    let s3 = S3Access {
        url: store.url.clone(),
        bucket: BUCKET.to_owned(),
        access_key: ACCESS_KEY.to_owned(),
        secret_key: SECRET_KEY.to_owned(),
        region: store.region.to_owned(),
    };
    Ok((store, s3))
}

/// MLflow's basic-auth app, as `entrypoint.sh` configures it from the environment.
#[derive(Clone, Debug)]
pub struct MlflowAuth {
    pub admin_username: String,
    pub admin_password: String,
    /// `default_permission`: what users without a grant may do (READ, NO_PERMISSIONS, ...).
    pub default_permission: String,
    /// `auth_cache_ttl_seconds`: MLflow's own cache of password checks (the stack's default: 5).
    pub cache_ttl_secs: u32,
}

pub struct Mlflow {
    pub process: Managed,
    pub url: String,
    pub log: PathBuf,
    /// What runs, for the report.
    pub kind: String,
}

/// The folder holding the `mlflow` executable: `MLFLOW_BENCH_MLFLOW_BIN`'s folder, else
/// `$MLFLOW_STACK_VENV/bin` (the venv `scripts/stack` uses), else `<root>/.venv/bin`, else the
/// first folder on `PATH` that has one.
pub fn mlflow_bin_dir(root: &Path) -> Option<PathBuf> {
    let explicit = std::env::var_os("MLFLOW_BENCH_MLFLOW_BIN")
        .map(PathBuf::from)
        .and_then(|bin| bin.parent().map(Path::to_path_buf));
    let venv = std::env::var_os("MLFLOW_STACK_VENV").map(|v| PathBuf::from(v).join("bin"));
    explicit
        .into_iter()
        .chain(venv)
        .chain(std::iter::once(root.join(".venv").join("bin")))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .collect::<Vec<_>>(),
        )
        .find(|dir| dir.join("mlflow").is_file())
}

/// Start stock MLflow on a free loopback port through `mlflow-image/entrypoint.sh` (`mlflow db
/// upgrade`, then `mlflow server --serve-artifacts`; with `auth`, `--app-name basic-auth` and its
/// ini file written by the entrypoint), SQLite backend and user store under `work`, and wait
/// (at most `within`) until `/health` answers. Its environment is built from scratch, so that
/// nothing of the caller's shell (an exported `MLFLOW_AUTH`, tracking credentials) changes it.
pub fn start_mlflow(
    root: &Path,
    work: &Path,
    s3: &S3Access,
    auth: Option<&MlflowAuth>,
    within: Duration,
) -> Result<Mlflow, String> {
    let bin_dir = mlflow_bin_dir(root).ok_or(
        "no mlflow executable: set MLFLOW_STACK_VENV (e.g. the shared venv), MLFLOW_BENCH_MLFLOW_BIN, or put one on PATH",
    )?;
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let temp = work.join("mlflow-tmp");
    std::fs::create_dir_all(&temp).map_err(|e| e.to_string())?;
    let path = std::env::join_paths(
        std::iter::once(bin_dir.clone()).chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .collect::<Vec<_>>(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut command = Command::new("sh");
    command
        .arg(root.join("mlflow-image").join("entrypoint.sh"))
        .env_clear()
        .env("PATH", path)
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| "/".into()),
        )
        .env("PYTHON", bin_dir.join("python"))
        .env("PYTHONUNBUFFERED", "1")
        .env("TMPDIR", &temp)
        .env(
            "BACKEND_STORE_URI",
            format!("sqlite:///{}", work.join("mlflow.db").display()),
        )
        .env("MLFLOW_HOST", "127.0.0.1")
        .env("MLFLOW_PORT", port.to_string())
        .env(
            "MLFLOW_ARTIFACTS_DESTINATION",
            format!("s3://{}/", s3.bucket),
        )
        .env("MLFLOW_S3_ENDPOINT_URL", &s3.url)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_DEFAULT_REGION", &s3.region)
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true");
    let mut kind = format!(
        "stock MLflow ({}/mlflow, mlflow-image/entrypoint.sh, SQLite",
        bin_dir.display()
    );
    if let Some(auth) = auth {
        command
            .env("MLFLOW_AUTH", "true")
            .env("MLFLOW_AUTH_ADMIN_USERNAME", &auth.admin_username)
            .env("MLFLOW_AUTH_ADMIN_PASSWORD", &auth.admin_password)
            .env("MLFLOW_AUTH_DEFAULT_PERMISSION", &auth.default_permission)
            .env(
                "MLFLOW_AUTH_CACHE_TTL_SECONDS",
                auth.cache_ttl_secs.to_string(),
            )
            .env(
                "MLFLOW_AUTH_DATABASE_URI",
                format!("sqlite:///{}", work.join("mlflow-auth.db").display()),
            )
            .env("MLFLOW_AUTH_CONFIG_PATH", work.join("basic_auth.ini"))
            // Fixed here so the entrypoint need not make one (it only signs session cookies).
            .env(
                "MLFLOW_FLASK_SERVER_SECRET_KEY",
                format!("bench-{}-{port}", std::process::id()),
            );
        kind.push_str(&format!(
            ", --app-name basic-auth: default_permission {}, auth_cache_ttl_seconds {}",
            auth.default_permission, auth.cache_ttl_secs
        ));
    }
    kind.push(')');
    let log = work.join("mlflow.log");
    let mut process = Managed::spawn("stock MLflow", &mut command, Some(&log))?;
    let url = format!("http://127.0.0.1:{port}");
    if let Err(e) = wait_ok_blocking(&format!("{url}/health"), within) {
        let _ = process.check_alive();
        return Err(format!(
            "stock MLflow did not start ({e}); log {}",
            log.display()
        ));
    }
    Ok(Mlflow {
        process,
        url,
        log,
        kind,
    })
}

pub struct Proxy {
    pub process: Managed,
    pub url: String,
    pub metrics_url: String,
}

/// Start the proxy binary on free loopback ports in front of `upstream` and `s3`, with `env` on
/// top (e.g. `PROXY_MLFLOW_AUTH`), its log on a pipe; wait until `/readyz` answers.
pub fn start_proxy(
    bin: &Path,
    name: &str,
    upstream: &str,
    s3: &S3Access,
    env: &[(&str, String)],
) -> Result<Proxy, String> {
    let mut settings = vec![
        (
            "MLFLOW_ARTIFACTS_DESTINATION",
            format!("s3://{}/", s3.bucket),
        ),
        ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
    ];
    settings.extend(env.iter().cloned());
    let proxy = crate::proxy::start_proxy(bin, name, &s3.url, &s3.region, upstream, &settings)?;
    wait_ok_blocking(
        &format!("{}/readyz", proxy.metrics),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{name}: {e}\n{}", proxy.process.last_lines()))?;
    Ok(Proxy {
        process: proxy.process,
        url: proxy.url,
        metrics_url: proxy.metrics,
    })
}

/// GET `url` until it answers 2xx (at most `within`), from a thread of its own with its own
/// runtime, so that callers may be inside a runtime or not.
pub fn wait_ok_blocking(url: &str, within: Duration) -> Result<(), String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(client::wait_ok(&url, within))
    })
    .join()
    .map_err(|_| "readiness probe panicked".to_owned())?
}

/// A presigned GET URL (valid for an hour) for `key` in the bucket, path-style, signed as the proxy
/// signs (rust-s3): the "direct to the store" reference.
pub async fn presign_get(s3: &S3Access, key: &str) -> Result<String, String> {
    let region = s3::region::Region::Custom {
        region: s3.region.clone(),
        endpoint: s3.url.clone(),
    };
    let credentials =
        s3::creds::Credentials::new(Some(&s3.access_key), Some(&s3.secret_key), None, None, None)
            .map_err(|e| e.to_string())?;
    s3::Bucket::new(&s3.bucket, region, credentials)
        .map_err(|e| e.to_string())?
        .with_path_style()
        .presign_get(key, 3600, None)
        .await
        .map_err(|e| e.to_string())
}

/// `Authorization: Basic …` for a user and password.
pub fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

/// Standard base64 with padding (RFC 4648 §4): all the bench needs, without a dependency.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request on an open connection: `headers` on top of Host; a non-empty `body` is sent with
/// its Content-Length. Returns the status and the whole (small) body.
pub async fn send_on(
    sender: &mut SendRequest<ReqBody>,
    target: &Target,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(header::HOST, target.host.as_str());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = if body.is_empty() {
        client::empty()
    } else {
        request = request.header(header::CONTENT_LENGTH, body.len());
        Full::new(body).boxed()
    };
    let request = request.body(body).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// One request on a new connection to `base` (`http://host:port`).
pub async fn send(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    let target = Target::parse(base)?;
    let mut sender = client::connect(target.addr).await?;
    send_on(&mut sender, &target, method, path, headers, body).await
}

/// MLflow's REST API as one user (setup only: a new connection per call).
pub struct MlflowApi {
    pub url: String,
    pub authorization: String,
}

impl MlflowApi {
    /// POST a JSON body; anything but 200 is an error. Returns the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let (status, answer) = send(
            &self.url,
            Method::POST,
            path,
            &[
                ("authorization", self.authorization.as_str()),
                ("content-type", "application/json"),
            ],
            Bytes::from(body.to_string()),
        )
        .await?;
        if status != StatusCode::OK {
            return Err(format!(
                "POST {path} answered {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            ));
        }
        if answer.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&answer).map_err(|e| format!("POST {path}: {e}"))
    }

    /// PUT a file through MLflow's own artifact route (`/api/2.0/mlflow-artifacts/artifacts/…`).
    pub async fn put_artifact(&self, path: &str, data: Bytes) -> Result<(), String> {
        let route = format!("/api/2.0/mlflow-artifacts/artifacts/{path}");
        let (status, answer) = send(
            &self.url,
            Method::PUT,
            &route,
            &[
                ("authorization", self.authorization.as_str()),
                ("content-type", "application/octet-stream"),
            ],
            data,
        )
        .await?;
        if status != StatusCode::OK {
            return Err(format!(
                "PUT {route} answered {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(300)])
            ));
        }
        Ok(())
    }
}

/// The value of one sample in a Prometheus text page: the line for `name` whose labels include
/// every `label="value"` in `labels` (0 when there is none).
pub fn metric_value(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(basic_auth("admin", "pw"), "Basic YWRtaW46cHc=");
    }

    #[test]
    fn metric_lines() {
        let page = "# HELP x y\nm_total{outcome=\"allowed\",source=\"cache\"} 7\nm_total{outcome=\"allowed\",source=\"mlflow\"} 3\nm_total{outcome=\"401\",source=\"mlflow\"} 2\n";
        assert_eq!(metric_value(page, "m_total", &[("source", "mlflow")]), 5.0);
        assert_eq!(
            metric_value(
                page,
                "m_total",
                &[("outcome", "allowed"), ("source", "cache")]
            ),
            7.0
        );
        assert_eq!(metric_value(page, "other", &[]), 0.0);
    }
}
