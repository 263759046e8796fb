//! The S3 server the tests run against: s3s-fs in this process (`testkit::s3`), or an external
//! store reached through a relay on loopback; what the tests inspect of it, and its faults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use mlflow_artifact_proxy::config::StoreConfig;
use tokio::net::TcpListener;

use super::{ACCESS_KEY, BUCKET, PATIENCE, SECRET_KEY, external_store};

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

/// Serve S3 (SigV4 checked) from `root` until aborted (`testkit::s3`); `up` turning true ends
/// every connection at its next poll, before it serves another request.
/// Each request's method and target are noted in `received` first.
async fn serve_s3(
    listener: TcpListener,
    root: PathBuf,
    received: Arc<Mutex<Vec<String>>>,
    up: tokio::sync::watch::Receiver<bool>,
) {
    let note = move |request: &Request<Incoming>| {
        received
            .lock()
            .unwrap()
            .push(format!("{} {}", request.method(), request.uri()));
    };
    testkit::s3::serve_s3s_fs(listener, &root, ACCESS_KEY, SECRET_KEY, note, up)
        .await
        .unwrap();
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
