//! The proxy in-process (`Proxy::start`) in front of the S3 server and the MLflow stand-in, with
//! the tests' settings (small parts, a fixed signing key, no sweep), and a client for it.

use std::time::Duration;

use mlflow_artifact_proxy::Proxy;
use mlflow_artifact_proxy::artifacts::state::download_memory::DownloadConfig;
use mlflow_artifact_proxy::config::{ServeConfig, StoreConfig, UploadConfig};

use super::{ACCESS_KEY, BUCKET, FakeMlflow, MIB, S3Server, SECRET_KEY};

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
