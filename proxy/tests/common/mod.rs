//! The test harness: a real S3 server (s3s + s3s-fs, SigV4 checked) and an MLflow stand-in on
//! loopback, and the proxy in front of them, all in-process on ephemeral ports.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::config::{ServeConfig, StoreConfig, UploadConfig};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-123";
pub const BUCKET: &str = "default";
pub const MIB: usize = 1024 * 1024;

/// A real S3 server on 127.0.0.1, storing into a temporary folder.
pub struct S3Server {
    pub endpoint: String,
    pub addr: SocketAddr,
    pub root: PathBuf,
    _dir: tempfile::TempDir,
    /// The accept loop; it owns every connection, so aborting it closes them all.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join(BUCKET)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_s3(listener, root.clone()));
        S3Server {
            endpoint: format!("http://{addr}"),
            addr,
            root,
            _dir: dir,
            task: Mutex::new(Some(task)),
        }
    }

    /// The object as stored, read from the server's folder (s3s-fs keeps keys as files).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// Every key in the bucket, as relative paths (metadata files left out).
    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        collect_files(&self.root.join(BUCKET), &self.root.join(BUCKET), &mut keys);
        keys.retain(|k| !k.split('/').any(|s| s.starts_with('.')));
        keys.sort();
        keys
    }

    /// Multipart uploads still open and parts still kept. s3s-fs has no ListMultipartUploads
    /// (NotImplemented), so we read its bookkeeping files: `.upload-<id>.json` per open
    /// upload, `.upload_id-<id>.part-<n>` per stored part, `.tmp.*` for parts being written.
    pub fn multipart_leftovers(&self) -> Vec<String> {
        let mut files = Vec::new();
        collect_files(&self.root, &self.root, &mut files);
        files.retain(|f| {
            let name = f.rsplit('/').next().unwrap_or(f);
            name.starts_with(".upload") || name.starts_with(".tmp.")
        });
        files
    }

    /// Stop listening and close every connection, kept-alive ones included: the port refuses
    /// connections until `restart`. The stored objects stay.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listen again on the same port, over the same folder.
    pub async fn restart(&self) {
        self.stop();
        // The aborted loop drops its listener at its next poll; bind once the port is free.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        let task = tokio::spawn(serve_s3(listener, self.root.clone()));
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serve S3 (SigV4 checked) from `root` until aborted; aborting also ends every connection.
async fn serve_s3(listener: TcpListener, root: PathBuf) {
    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let service = service.clone();
        connections.spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(base, &path, out);
        } else {
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

/// What the MLflow stand-in saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A small stand-in for the MLflow server: records each request; `/stream/<n>` answers n KiB
/// of known bytes in chunks with no Content-Length; server-info answers MLflow's JSON;
/// anything else echoes the request body.
pub struct FakeMlflow {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

pub const SERVER_INFO: &str = r#"{"store_type":"SqlStore","workspaces_enabled":false,"multipart_uploads_enabled":true,"multipart_downloads_enabled":true,"artifact_serving_enabled":true}"#;

impl FakeMlflow {
    pub async fn start() -> FakeMlflow {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen_by_server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                fake_mlflow_answer(request, seen).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeMlflow { addr, seen, task }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("MLflow saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// Deterministic bytes for the streamed answer.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn fake_mlflow_answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<TestBody> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    if let Some(kib) = path.strip_prefix("/stream/") {
        let kib: usize = kib.parse().unwrap();
        let data = Bytes::from(pattern(kib * 1024, 7));
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..kib)
            .map(|i| Ok(Frame::data(data.slice(i * 1024..(i + 1) * 1024))))
            .collect();
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
            .unwrap();
    }
    if path.ends_with("/mlflow/server-info") {
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(SERVER_INFO.as_bytes())).boxed())
            .unwrap();
    }
    Response::builder()
        .status(201)
        .header("x-upstream", "fake-mlflow")
        .body(Full::new(body).boxed())
        .unwrap()
}

pub struct Harness {
    pub s3: S3Server,
    pub mlflow: FakeMlflow,
    pub proxy: Proxy,
    pub base: String,
    pub http: reqwest::Client,
}

pub fn upload_config() -> UploadConfig {
    UploadConfig {
        single_put_max: 8 * MIB as u64,
        part_size: 5 * MIB,
        parts_in_flight: 3,
        budget: 64 * MIB as u64,
        body_idle_timeout: Duration::from_secs(60),
        stale_upload_age: Some(Duration::from_secs(24 * 3600)),
    }
}

pub fn store_config(endpoint: &str, prefix: &str) -> StoreConfig {
    StoreConfig {
        endpoint: url::Url::parse(endpoint).unwrap(),
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        region: "us-east-1".into(),
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(upload_config(), "").await
    }

    pub async fn start_with(upload: UploadConfig, prefix: &str) -> Harness {
        let s3 = S3Server::start().await;
        let mlflow = FakeMlflow::start().await;
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".parse().unwrap(),
            upstream: format!("http://{}", mlflow.addr).parse().unwrap(),
            store: store_config(&s3.endpoint, prefix),
            upload,
            security: mlflow_artifact_proxy::security::Security::default(),
            shutdown_grace: Duration::from_secs(5),
        };
        let proxy = Proxy::start(config).await.unwrap();
        let base = format!("http://{}", proxy.addr);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Harness {
            s3,
            mlflow,
            proxy,
            base,
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn artifact(&self, path: &str) -> String {
        self.url(&format!("/api/2.0/mlflow-artifacts/artifacts/{path}"))
    }

    pub async fn put(&self, path: &str, data: Vec<u8>) -> reqwest::Response {
        self.http
            .put(self.artifact(path))
            .body(data)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.artifact(path)).send().await.unwrap()
    }

    /// GET a path of the operations listener: status and body.
    pub async fn operations(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.proxy.metrics_addr);
        let response = self.http.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.proxy.metrics_addr);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

/// Headers as a map of lower-case names, for readable assertions.
pub fn header_map(response: &reqwest::Response) -> HashMap<String, String> {
    response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<binary>").to_owned(),
            )
        })
        .collect()
}

/// One HTTP/1.1 exchange over a fresh socket, with the request target sent exactly as given
/// (no client-side normalisation of `..` or percent escapes).
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub async fn raw_request(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> RawResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_lowercase(), v.to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked && !head {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Wait (bounded) until `check` holds; S3 cleanup after a disconnect runs in the background.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still not true after 5 s: {what}");
}
