//! mlflow-artifact-proxy: port 5000 of an MLflow stack. MLflow's artifact routes are answered
//! straight from S3 in bounded memory; every other request streams through to MLflow.
//!
//! One folder (or file) per concern; a request goes server → router → artifacts (or upstream),
//! and every concern calls down, never back up:
//! - `server/`: the client-facing listener: accept, the request line, access log, drain.
//! - `router`: which requests the proxy answers itself and which go to MLflow.
//! - `artifacts/`: the artifact routes: one checkpoint (security, auth), then `download/`,
//!   `upload/`, `signed/` (multipart and presigned), list, delete, the UI's routes; `state/`
//!   holds what they share (settings, memory budgets, uploads in progress, the public address).
//! - `auth/`: MLflow's authentication and permissions, asked of MLflow for every artifact route.
//! - `upstream/`: MLflow behind the proxy: pass-through, its connections, forwarding headers,
//!   and the proxy's own questions to it (its release and modes, workspaces).
//! - `store/`: the artifact store: the S3 client, deleting a prefix, the one sweeper of
//!   abandoned uploads, how store failures are answered.
//! - `integrity/`: a digest of every artifact, recorded on upload, checked on download.
//! - `signing`: the HMAC key behind the URLs the proxy signs and the tags of part digests.
//! - `mlflow/`: what the stock MLflow server does that clients can observe, reproduced.
//! - `wire/`: the body type, the one error type (MLflow's JSON shape), timeouts.
//! - `ops/`: Prometheus metrics and the operations listener (/metrics, /healthz, /readyz).
//! - `config/`: every flag and its environment variable, and their generated reference.
//! - `commands/`: the one-off subcommands that walk the destination (`gc`, `verify`).

pub mod artifacts;
pub mod auth;
pub mod commands;
pub mod config;
pub mod integrity;
pub mod mlflow;
pub mod ops;
pub mod router;
pub mod server;
pub mod signing;
pub mod store;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::artifacts::state::App;
use crate::config::ServeConfig;
use crate::ops::metrics::{Metrics, ReadinessProbe};

/// A running proxy: its addresses, and the means to stop it.
pub struct Proxy {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub app: Arc<App>,
    /// Set when shutdown begins; /readyz answers 503 from then on.
    draining: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    operations: JoinHandle<()>,
    auth_recheck: JoinHandle<()>,
    /// Re-learns MLflow's version and modes (`capabilities`).
    capabilities_recheck: JoinHandle<()>,
    /// The stale-upload sweep and abort retries (`sweep`).
    sweeper: JoinHandle<()>,
}

impl Proxy {
    /// Bind both listeners and start serving.
    pub async fn start(config: ServeConfig) -> Result<Proxy, String> {
        let metrics = Metrics::new();
        let store = store::s3::Store::new(&config.store, metrics.clone(), config.timeouts.s3)?;
        let upstream = upstream::Upstream::new(
            config.upstream.clone(),
            metrics.clone(),
            config.timeouts.upstream,
            config.trusted_proxies.clone(),
            config.upstream_pool,
        );
        // The proxy's own questions to MLflow (auth, its release and modes, workspaces).
        let asked = upstream::ask::Target::new(
            config.upstream.clone(),
            &config.static_prefix,
            config.upstream_pool,
        )?;
        let auth = Arc::new(auth::Auth::new(
            auth::AuthConfig {
                static_prefix: config.static_prefix.clone(),
                ..config.auth.clone()
            },
            asked.clone(),
            metrics.clone(),
        )?);
        let capabilities = Arc::new(upstream::capabilities::Tracker::new(
            config.mlflow.clone(),
            asked,
            config.auth.cache_ttl,
        ));
        let app = Arc::new(
            App::new(
                store,
                upstream,
                config.upload,
                config.security.clone(),
                metrics.clone(),
                artifacts::state::FromMlflow {
                    auth: auth.clone(),
                    capabilities: capabilities.clone(),
                },
                config.download,
            )
            .with_transfers(config.transfers.clone())
            .with_integrity(config.integrity)
            .with_static_prefix(&config.static_prefix),
        );
        // Which S3 checksums the store verifies (`s3::Native`), asked before the first upload
        // (a store that does not answer in time is asked again at the first upload; with
        // PROXY_STORE_CHECKSUMS=off it is never asked).
        if config.integrity.algorithm.is_some() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), app.store_checksums())
                .await;
        }

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let ops_listener = TcpListener::bind(config.metrics_listen)
            .await
            .map_err(|e| format!("cannot listen on {} (metrics): {e}", config.metrics_listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let metrics_addr = ops_listener.local_addr().map_err(|e| e.to_string())?;

        let draining = Arc::new(AtomicBool::new(false));
        let operations = tokio::spawn(ops::metrics::serve_operations(
            ops_listener,
            metrics,
            Arc::new(Readiness {
                app: app.clone(),
                draining: draining.clone(),
            }),
        ));
        let auth_recheck = tokio::spawn(auth.recheck_forever());
        let capabilities_recheck = tokio::spawn(capabilities.recheck_forever());
        let sweeper = tokio::spawn(artifacts::upload::sweep::run(app.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            app.clone(),
            async move {
                let _ = stopped.await;
            },
            config.shutdown_grace,
        ));
        Ok(Proxy {
            addr,
            metrics_addr,
            app,
            draining,
            stop: Some(stop),
            task,
            operations,
            auth_recheck,
            capabilities_recheck,
            sweeper,
        })
    }

    /// Begin shutdown without waiting: /readyz turns 503, the listener closes, idle
    /// keep-alive connections close, requests in flight go on (within the grace period).
    pub fn start_draining(&mut self) {
        self.draining.store(true, Ordering::SeqCst);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stop accepting, let requests in flight finish (within the grace period), return.
    pub async fn shutdown(mut self) {
        self.start_draining();
        let _ = (&mut self.task).await;
        self.operations.abort();
        self.auth_recheck.abort();
        self.capabilities_recheck.abort();
        self.sweeper.abort();
    }
}

struct Readiness {
    app: Arc<App>,
    draining: Arc<AtomicBool>,
}

impl ReadinessProbe for Readiness {
    fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn configured(&self) -> Result<(), String> {
        self.app.auth.readiness()
    }

    async fn probe(&self) -> Vec<(&'static str, Result<(), String>)> {
        let store = tokio::time::timeout(std::time::Duration::from_secs(3), self.app.store.check());
        let modes = async {
            self.app.capabilities.current().await.map(|_| ()).map_err(|_| {
                "MLflow has not said which release and modes it runs (artifact requests get 503)"
                    .to_owned()
            })
        };
        let (store, upstream, modes) = tokio::join!(
            store,
            self.app.upstream.check(&self.app.static_prefix),
            modes
        );
        let store = match store {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 3 s".to_owned()),
        };
        vec![("s3", store), ("mlflow", upstream), ("mlflow_modes", modes)]
    }
}
