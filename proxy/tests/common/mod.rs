//! The test harness: a real S3 server (s3s + s3s-fs, SigV4 checked) and an MLflow stand-in on
//! loopback, and the proxy in front of them, all in-process on ephemeral ports.

#![allow(dead_code)]

pub mod process;

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
use mlflow_artifact_proxy::artifacts::state::download_memory::DownloadConfig;
use mlflow_artifact_proxy::config::{ServeConfig, StoreConfig, UploadConfig};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-123";
pub const BUCKET: &str = "default";
pub const MIB: usize = 1024 * 1024;

/// How long a test waits for something that must happen (a log line, a metric, a cleanup in the
/// background, a port): long enough that only a hang exhausts it on a loaded machine. Verdicts
/// never depend on how much of it was used.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Which S3 server the tests run against. By default a real S3 server in this process (s3s +
/// s3s-fs, SigV4 checked). With `PROXY_TEST_S3_ENDPOINT` set, an external store instead (the
/// native stack's Garage in CI): `PROXY_TEST_S3_ACCESS_KEY`, `PROXY_TEST_S3_SECRET_KEY`,
/// `PROXY_TEST_S3_REGION` (us-east-1) and `PROXY_TEST_S3_STORE` (its name, e.g. `garage`) go with
/// it. Each test then gets a fresh bucket of its own (the key must be allowed to create buckets),
/// removed when the test ends, and reaches the store through a relay on loopback that `stop`
/// and `restart` can cut and restore.
pub struct S3Server {
    /// What the proxy is given as its S3 endpoint.
    pub endpoint: String,
    pub addr: SocketAddr,
    /// The in-process server's folder (empty and unused for an external store).
    pub root: PathBuf,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// `s3s-fs`, or the external store's `PROXY_TEST_S3_STORE`.
    pub store: String,
    _dir: tempfile::TempDir,
    external: Option<External>,
    /// The accept loop; it owns every connection, so aborting it closes them all.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set by `stop`: every connection of the loop ends at its next poll without serving another
    /// request (aborting the loop alone ends them asynchronously, so a request already on a
    /// kept-alive connection could still be served on a loaded machine).
    down: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    /// The in-process server's requests as they arrived: method and target, unaltered.
    received: Arc<Mutex<Vec<String>>>,
}

/// An external store: its address, and a client of our own to inspect and clean up the bucket.
struct External {
    upstream: String,
    bucket: Box<s3::Bucket>,
}

/// The external store named by the environment, if any.
pub fn external_store() -> Option<(String, String, String, String, String)> {
    let endpoint = std::env::var("PROXY_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())?;
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    Some((
        endpoint,
        var("PROXY_TEST_S3_ACCESS_KEY", ""),
        var("PROXY_TEST_S3_SECRET_KEY", ""),
        var("PROXY_TEST_S3_REGION", "us-east-1"),
        var("PROXY_TEST_S3_STORE", "external"),
    ))
}

/// The name of the store the tests run against.
pub fn store_name() -> String {
    external_store().map_or_else(|| "s3s-fs".to_owned(), |(.., name)| name)
}

fn s3_bucket(endpoint: &str, name: &str, key: &str, secret: &str, region: &str) -> Box<s3::Bucket> {
    let region = s3::region::Region::Custom {
        region: region.to_owned(),
        endpoint: endpoint.trim_end_matches('/').to_owned(),
    };
    let credentials =
        s3::creds::Credentials::new(Some(key), Some(secret), None, None, None).unwrap();
    s3::Bucket::new(name, region, credentials)
        .unwrap()
        .with_path_style()
}

/// Run `call` to completion on a runtime of its own, so that the synchronous inspection
/// helpers below can be called from async tests (and from `Drop`).
fn block_on<T: Send + 'static>(call: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(call)
    })
    .join()
    .unwrap()
}

impl S3Server {
    pub async fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = format!("http://{addr}");
        let received = Arc::new(Mutex::new(Vec::new()));
        let Some((upstream, access_key, secret_key, region, store)) = external_store() else {
            std::fs::create_dir(root.join(BUCKET)).unwrap();
            let (down, up) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(serve_s3(listener, root.clone(), received.clone(), up));
            return S3Server {
                endpoint,
                addr,
                root,
                bucket: BUCKET.into(),
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
                region: "us-east-1".into(),
                store: "s3s-fs".into(),
                _dir: dir,
                external: None,
                task: Mutex::new(Some(task)),
                down: Mutex::new(Some(down)),
                received,
            };
        };
        let name = format!("proxy-test-{:016x}", rand::random::<u64>());
        let bucket = s3_bucket(&upstream, &name, &access_key, &secret_key, &region);
        let created = s3::Bucket::create_with_path_style(
            &name,
            bucket.region(),
            bucket.credentials().await.unwrap(),
            s3::BucketConfiguration::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("creating bucket {name} on {upstream}: {e}"));
        assert!(
            created.success(),
            "creating bucket {name}: {}",
            created.response_text
        );
        let upstream_addr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let (down, up) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve_relay(listener, upstream_addr.clone(), up));
        S3Server {
            endpoint,
            addr,
            root,
            bucket: name,
            access_key,
            secret_key,
            region,
            store,
            _dir: dir,
            external: Some(External {
                upstream: upstream_addr,
                bucket,
            }),
            task: Mutex::new(Some(task)),
            down: Mutex::new(Some(down)),
            received,
        }
    }

    pub fn is_external(&self) -> bool {
        self.external.is_some()
    }

    /// Every request the in-process server received, as `METHOD /bucket/key?query` exactly as it
    /// came (what the proxy sent, before s3s-fs's disk resolves "." segments). Not for an
    /// external store: there, `keys` shows what was stored.
    pub fn received(&self) -> Vec<String> {
        assert!(
            self.external.is_none(),
            "received: the store is external; use keys()"
        );
        self.received.lock().unwrap().clone()
    }

    /// The proxy's store settings for this server's bucket.
    pub fn store_config(&self, prefix: &str) -> StoreConfig {
        StoreConfig {
            endpoint: url::Url::parse(&self.endpoint).unwrap(),
            bucket: self.bucket.clone(),
            prefix: prefix.into(),
            access_key: self.access_key.clone(),
            secret_key: self.secret_key.clone(),
            region: self.region.clone(),
            ca_bundle: None,
        }
    }

    /// A client of our own for the bucket, straight to the store (not through the relay).
    pub fn client(&self) -> Box<s3::Bucket> {
        match &self.external {
            Some(external) => external.bucket.clone(),
            None => s3_bucket(
                &self.endpoint,
                &self.bucket,
                &self.access_key,
                &self.secret_key,
                &self.region,
            ),
        }
    }

    /// The in-process server's file for a key (s3s-fs keeps keys as files). Not for an
    /// external store: use `object`.
    pub fn object_path(&self, key: &str) -> PathBuf {
        assert!(
            self.external.is_none(),
            "object_path: the store is external; use object()"
        );
        self.root.join(BUCKET).join(key)
    }

    /// The stored bytes of a key, if it exists.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let Some(external) = &self.external else {
            return std::fs::read(self.root.join(BUCKET).join(key)).ok();
        };
        let bucket = external.bucket.clone();
        let key = key.to_owned();
        block_on(async move {
            match bucket.get_object(&key).await {
                Ok(data) => Some(data.to_vec()),
                Err(s3::error::S3Error::HttpFailWithBody(404, _)) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    /// Every key in the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        let Some(external) = &self.external else {
            let mut keys = Vec::new();
            collect_files(&self.root.join(BUCKET), &self.root.join(BUCKET), &mut keys);
            // s3s-fs's own metadata files (keys like `d/.x` or `d/.../x` are kept)
            keys.retain(|k| {
                !k.split('/').any(|s| {
                    [".bucket-", ".upload", ".tmp."]
                        .iter()
                        .any(|p| s.starts_with(p))
                })
            });
            keys.sort();
            return keys;
        };
        let bucket = external.bucket.clone();
        let mut keys: Vec<String> = block_on(async move {
            bucket
                .list(String::new(), None)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|page| page.contents.into_iter().map(|o| o.key))
                .collect()
        });
        keys.sort();
        keys
    }

    /// Multipart uploads still open and parts still kept. An external store answers
    /// ListMultipartUploads. s3s-fs does not (NotImplemented), so there we read its bookkeeping
    /// files: `.upload-<id>.json` per open upload, `.upload_id-<id>.part-<n>` per stored part,
    /// `.tmp.*` for parts being written.
    pub fn multipart_leftovers(&self) -> Vec<String> {
        let Some(external) = &self.external else {
            let mut files = Vec::new();
            collect_files(&self.root, &self.root, &mut files);
            files.retain(|f| {
                let name = f.rsplit('/').next().unwrap_or(f);
                name.starts_with(".upload") || name.starts_with(".tmp.")
            });
            return files;
        };
        let bucket = external.bucket.clone();
        block_on(async move {
            bucket
                .list_multiparts_uploads(None, None)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|page| page.uploads)
                .map(|u| format!("{} (upload {})", u.key, u.id))
                .collect()
        })
    }

    /// Stop listening and close every connection, kept-alive ones included: the port refuses
    /// connections until `restart`. The stored objects stay.
    pub fn stop(&self) {
        if let Some(down) = self.down.lock().unwrap().take() {
            let _ = down.send(true);
        }
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listen again on the same port, over the same folder (or the same external store).
    pub async fn restart(&self) {
        self.stop();
        // The aborted loop drops its listener at its next poll; bind once the port is free.
        let deadline = std::time::Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        let (down, up) = tokio::sync::watch::channel(false);
        let task = match &self.external {
            Some(external) => tokio::spawn(serve_relay(listener, external.upstream.clone(), up)),
            None => tokio::spawn(serve_s3(
                listener,
                self.root.clone(),
                self.received.clone(),
                up,
            )),
        };
        *self.down.lock().unwrap() = Some(down);
        *self.task.lock().unwrap() = Some(task);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        // An external store: remove the test's bucket with whatever it holds.
        if let Some(external) = &self.external {
            let bucket = external.bucket.clone();
            block_on(async move {
                for upload in bucket
                    .list_multiparts_uploads(None, None)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .flat_map(|page| page.uploads)
                {
                    let _ = bucket.abort_upload(&upload.key, &upload.id).await;
                }
                for page in bucket.list(String::new(), None).await.unwrap_or_default() {
                    for object in page.contents {
                        let _ = bucket.delete_object(&object.key).await;
                    }
                }
                let _ = bucket.delete().await;
            });
        }
    }
}

/// Serve S3 (SigV4 checked) from `root` until aborted; `up` turning true ends every connection
/// at its next poll, before it serves another request.
/// Each request's method and target are noted in `received` first.
async fn serve_s3(
    listener: TcpListener,
    root: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
    up: tokio::sync::watch::Receiver<bool>,
) {
    let fs = s3s_fs::FileSystem::new(&root).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let s3 = builder.build();
    let service = service_fn(move |request: Request<Incoming>| {
        received
            .lock()
            .unwrap()
            .push(format!("{} {}", request.method(), request.uri()));
        hyper::service::Service::call(&s3, request)
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let service = service.clone();
        let mut down = up.clone();
        connections.spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let serve = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                biased;
                _ = down.wait_for(|down| *down) => {}
                _ = serve => {}
            }
        });
    }
}

/// Relay TCP connections to `upstream` until aborted; aborting also ends every connection.
async fn serve_relay(
    listener: TcpListener,
    upstream: String,
    up: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let upstream = upstream.clone();
        let mut down = up.clone();
        connections.spawn(async move {
            if let Ok(mut store) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = store.set_nodelay(true);
                let _ = client.set_nodelay(true);
                tokio::select! {
                    biased;
                    _ = down.wait_for(|down| *down) => {}
                    _ = tokio::io::copy_bidirectional(&mut client, &mut store) => {}
                }
            }
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

/// `serve_stand_in` for answers made at once from the request (no waiting, body unread).
pub async fn serve_answers<F>(answer: F) -> SocketAddr
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    serve_stand_in(move |request: Request<Incoming>| {
        let response = answer(&request);
        async move { response }
    })
    .await
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

/// A stand-in server on a free loopback port whose every answer is `answer(request)` (the
/// request's body unread unless `answer` reads it), a task per connection: an MLflow that answers
/// as a test needs.
pub async fn serve_stand_in<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let answered = answer(request);
                    async move { Ok::<_, std::convert::Infallible>(answered.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

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
        // No sweep in tests: its listing would add S3 calls (stores that list) to exact counts.
        stale_upload_age: None,
    }
}

/// The proxy's configuration for tests: loopback, ephemeral ports, small parts.
pub fn serve_config(s3: &S3Server, upstream: &str) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        upstream: upstream.parse().unwrap(),
        static_prefix: String::new(),
        store: s3.store_config(""),
        upload: upload_config(),
        download: Default::default(),
        security: mlflow_artifact_proxy::artifacts::security::Security::default(),
        auth: mlflow_artifact_proxy::auth::AuthConfig::off(),
        mlflow: mlflow_artifact_proxy::upstream::capabilities::CapabilitiesConfig::fixed(
            mlflow_artifact_proxy::upstream::capabilities::Capabilities::pinned(),
        ),
        transfers: test_transfers(),
        integrity: Default::default(),
        shutdown_grace: Duration::from_secs(5),
        timeouts: mlflow_artifact_proxy::wire::timeouts::Timeouts::default(),
        trusted_proxies: Default::default(),
        upstream_pool: Default::default(),
    }
}

/// Multipart uploads and presigned downloads on, signed with a fixed test key.
pub fn test_transfers() -> mlflow_artifact_proxy::artifacts::state::transfers::TransferConfig {
    mlflow_artifact_proxy::artifacts::state::transfers::TransferConfig::with_key(TEST_SIGNING_KEY)
}

pub const TEST_SIGNING_KEY: &[u8] = &[7; 32];

/// The in-process server's settings (see `S3Server::store_config` for any store).
pub fn store_config(endpoint: &str, prefix: &str) -> StoreConfig {
    StoreConfig {
        endpoint: url::Url::parse(endpoint).unwrap(),
        bucket: BUCKET.into(),
        prefix: prefix.into(),
        access_key: ACCESS_KEY.into(),
        secret_key: SECRET_KEY.into(),
        region: "us-east-1".into(),
        ca_bundle: None,
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(upload_config(), "").await
    }

    pub async fn start_with(upload: UploadConfig, prefix: &str) -> Harness {
        Self::start_full(upload, DownloadConfig::default(), prefix).await
    }

    /// With the given settings for client-driven multipart uploads and presigned downloads.
    pub async fn start_with_transfers(
        upload: UploadConfig,
        prefix: &str,
        transfers: mlflow_artifact_proxy::artifacts::state::transfers::TransferConfig,
    ) -> Harness {
        Self::start_configured(|config| {
            config.upload = upload;
            config.store.prefix = prefix.into();
            config.transfers = transfers;
        })
        .await
    }

    /// With the given settings for large (parallel) downloads.
    pub async fn start_with_download(download: DownloadConfig) -> Harness {
        Self::start_full(upload_config(), download, "").await
    }

    pub async fn start_full(
        upload: UploadConfig,
        download: DownloadConfig,
        prefix: &str,
    ) -> Harness {
        Self::start_configured(|config| {
            config.upload = upload;
            config.download = download;
            config.store.prefix = prefix.into();
        })
        .await
    }

    /// Start with the test defaults, changed by `adjust` (timeouts, trusted proxies...).
    pub async fn start_configured(adjust: impl FnOnce(&mut ServeConfig)) -> Harness {
        let s3 = S3Server::start().await;
        let mlflow = FakeMlflow::start().await;
        let mut config = serve_config(&s3, &format!("http://{}", mlflow.addr));
        adjust(&mut config);
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

/// POST a JSON body: the status, and the answer as JSON (or as a JSON string when it is not).
pub async fn post_json(
    h: &Harness,
    url: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = h
        .http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
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
    raw_request_with(addr, method, target, &[], body).await
}

/// `raw_request` with more request headers.
pub async fn raw_request_with(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_response(&raw, method == "HEAD")
}

pub fn parse_response(raw: &[u8], head: bool) -> RawResponse {
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

/// Wait (bounded by [`PATIENCE`]) until `check` holds; S3 cleanup after a disconnect runs in
/// the background.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "still not true after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As [`eventually`], for a check that is itself asynchronous (a scrape, a request).
pub async fn eventually_async<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "still not true after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series in a Prometheus text scrape (NaN when it is absent).
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The real proxy binary in front of `s3` and `mlflow`, on ports it picks itself (its log says
/// which), its log (stderr) read line by line; killed when the test ends, passed or not.
pub struct ProxyBinary {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

/// The proxy binary with an empty environment but the store and the upstream. The fake MLflow
/// has no auth app to ask, so `PROXY_MLFLOW_AUTH=off`.
pub fn proxy_command(binary: &str, s3: &S3Server, mlflow: &FakeMlflow) -> std::process::Command {
    proxy_command_to(binary, s3, &s3.endpoint, &format!("http://{}", mlflow.addr))
}

/// As `proxy_command`, with the store reached at `endpoint` (e.g. through a TLS terminator) and
/// MLflow at `upstream`.
pub fn proxy_command_to(
    binary: &str,
    s3: &S3Server,
    endpoint: &str,
    upstream: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "MLFLOW_ARTIFACTS_DESTINATION",
            format!("s3://{}/", s3.bucket),
        )
        .env("MLFLOW_S3_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_DEFAULT_REGION", &s3.region)
        .env("PROXY_UPSTREAM", upstream)
        .env("PROXY_MLFLOW_AUTH", "off");
    command
}

impl ProxyBinary {
    /// Start it with an empty environment but the store, the upstream and `RUST_LOG=info`, plus
    /// `extra`. The fake MLflow has no auth app to ask, so `PROXY_MLFLOW_AUTH=off`.
    pub fn spawn(s3: &S3Server, mlflow: &FakeMlflow, extra: &[(&str, &str)]) -> ProxyBinary {
        let mut command = proxy_command(env!("CARGO_BIN_EXE_mlflow-artifact-proxy"), s3, mlflow);
        command
            .env("PROXY_LISTEN", "127.0.0.1:0")
            .env("PROXY_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        ProxyBinary { child, lines }
    }

    /// The next line of its log (waiting at most [`PATIENCE`]). Blocks this worker thread only:
    /// the in-process S3 and MLflow keep running on the other (the tests use a multi-threaded
    /// runtime).
    pub fn next_line(&self) -> String {
        tokio::task::block_in_place(|| self.lines.recv_timeout(PATIENCE))
            .expect("a log line from the proxy")
    }
}

impl Drop for ProxyBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
