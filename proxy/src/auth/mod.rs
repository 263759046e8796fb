//! MLflow's authentication and permissions on the artifact routes the proxy serves itself.
//!
//! The decision always comes from MLflow: before any S3 call, the proxy asks MLflow's auth app a
//! "validator probe" as the caller (see `probe`) and relays MLflow's 401/403, or serves the
//! request. Answers are remembered briefly (`cache`). Whether MLflow runs its auth app at all is
//! found out from MLflow (`PROXY_MLFLOW_AUTH=auto`) and re-checked periodically; when the proxy
//! cannot tell, artifact requests are refused (503), never served unchecked.

mod cache;
mod probe;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use ring::hmac;
use tokio::sync::OnceCell;

use crate::body::{ProxyBody, empty, full};
use crate::error::{ProxyError, Side};
use crate::metrics::Metrics;
use crate::quickack::QuickAckConnector;

pub use cache::{Cached, DecisionCache, Key};
pub use probe::{Kind, Probe, Verdict};

/// MLflow's answers are small (a 401 text, `{}`, a short error); more is not read.
const ANSWER_LIMIT: usize = 64 * 1024;
/// After a failed detection, requests are refused for this long without asking again, so an
/// unreachable MLflow is not asked once per request.
const DETECT_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Ask MLflow whether its auth app is on; re-check periodically.
    Auto,
    /// MLflow runs its auth app: every artifact request is checked.
    On,
    /// No checks (MLflow runs without its auth app).
    Off,
}

#[derive(Clone, Debug, Args)]
pub struct AuthArgs {
    /// Apply MLflow's authentication and permissions (`mlflow server --app-name basic-auth`) to
    /// the artifact routes: auto (find out from MLflow, re-checked periodically; refuse artifact
    /// requests while MLflow cannot be asked), on, or off.
    #[arg(long, env = "PROXY_MLFLOW_AUTH", value_enum, default_value_t = Mode::Auto)]
    pub mlflow_auth: Mode,
    /// How long MLflow's allow/deny answer for a (credentials, resource, action) is reused, in
    /// seconds; 0 asks MLflow on every request. A permission change in MLflow takes effect
    /// through the proxy within this time.
    #[arg(long, env = "PROXY_MLFLOW_AUTH_CACHE_TTL_SECS", default_value_t = 5.0)]
    pub mlflow_auth_cache_ttl_secs: f64,
    /// Most answers remembered at once (oldest dropped first).
    #[arg(long, env = "PROXY_MLFLOW_AUTH_CACHE_SIZE", default_value_t = 10_000)]
    pub mlflow_auth_cache_size: usize,
    /// With auto: how often to re-check whether MLflow's auth app is on, in seconds.
    #[arg(long, env = "PROXY_MLFLOW_AUTH_RECHECK_SECS", default_value_t = 10)]
    pub mlflow_auth_recheck_secs: u64,
    /// How long to wait for MLflow's answer to one check, in seconds.
    #[arg(long, env = "PROXY_MLFLOW_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub mlflow_auth_timeout_secs: u64,
    /// The request headers that carry credentials (comma-separated): sent to MLflow with each
    /// check and part of the cache key. Add e.g. `cookie` for a custom authorization_function.
    #[arg(
        long,
        env = "PROXY_MLFLOW_AUTH_HEADERS",
        default_value = "authorization"
    )]
    pub mlflow_auth_headers: String,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: Mode,
    pub cache_ttl: Duration,
    pub cache_size: usize,
    pub recheck: Duration,
    pub timeout: Duration,
    pub credential_headers: Vec<HeaderName>,
}

impl AuthConfig {
    /// No checks: the proxy as it was before MLflow's auth was applied (tests of other parts).
    pub fn off() -> Self {
        AuthConfig {
            mode: Mode::Off,
            cache_ttl: Duration::from_secs(5),
            cache_size: 10_000,
            recheck: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            credential_headers: vec![header::AUTHORIZATION],
        }
    }
}

impl AuthArgs {
    pub fn build(&self) -> Result<AuthConfig, String> {
        let ttl = self.mlflow_auth_cache_ttl_secs;
        if !(0.0..=3600.0).contains(&ttl) {
            return Err(format!(
                "PROXY_MLFLOW_AUTH_CACHE_TTL_SECS={ttl} must be between 0 and 3600"
            ));
        }
        if self.mlflow_auth_recheck_secs == 0 || self.mlflow_auth_timeout_secs == 0 {
            return Err(
                "PROXY_MLFLOW_AUTH_RECHECK_SECS and PROXY_MLFLOW_AUTH_TIMEOUT_SECS must be at least 1"
                    .to_owned(),
            );
        }
        let credential_headers = self
            .mlflow_auth_headers
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("PROXY_MLFLOW_AUTH_HEADERS: {h:?} is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if credential_headers.is_empty() {
            return Err("PROXY_MLFLOW_AUTH_HEADERS names no header".to_owned());
        }
        Ok(AuthConfig {
            mode: self.mlflow_auth,
            cache_ttl: Duration::from_secs_f64(ttl),
            cache_size: self.mlflow_auth_cache_size,
            recheck: Duration::from_secs(self.mlflow_auth_recheck_secs),
            timeout: Duration::from_secs(self.mlflow_auth_timeout_secs),
            credential_headers,
        })
    }
}

/// The artifact operations, each judged as MLflow judges its route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// GET `artifacts/<path>` (read).
    Download,
    /// HEAD `artifacts/<path>` or `artifacts?path=` (MLflow: admins only).
    Head,
    /// GET `artifacts?path=` (read); the path is the `path` argument.
    List,
    /// PUT `artifacts/<path>` (write).
    Upload,
    /// DELETE `artifacts/<path>` (write: MLflow requires MANAGE, recursively).
    Delete,
    /// POST `mpu/{create,complete,abort}/<path>` (write).
    Multipart,
    /// GET `presigned/<path>` (read).
    Presigned,
}

/// Read or write, as the issue names them; `Operation` is finer because MLflow judges HEAD and
/// DELETE by their own rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Operation {
    pub fn access(self) -> Access {
        match self {
            Operation::Download | Operation::Head | Operation::List | Operation::Presigned => {
                Access::Read
            }
            Operation::Upload | Operation::Delete | Operation::Multipart => Access::Write,
        }
    }

    fn tag(self) -> u8 {
        self as u8
    }

    /// The FastAPI routes (native GET/PUT) parse credentials and shape their refusals
    /// differently from the Flask ones.
    fn native(self) -> bool {
        matches!(self, Operation::Download | Operation::Upload)
    }
}

/// The answer to send instead of serving the request: MLflow's 401 or 403, or 503/502 when
/// MLflow could not be asked.
#[derive(Debug)]
pub struct Refusal(Box<Response<ProxyBody>>);

impl Refusal {
    pub fn into_response(self) -> Response<ProxyBody> {
        *self.0
    }

    pub fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl From<Response<ProxyBody>> for Refusal {
    fn from(response: Response<ProxyBody>) -> Self {
        Refusal(Box::new(response))
    }
}

/// Permission to go on, with what MLflow would do to the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permit {
    /// A listing must leave out run directories (32-hex names), as MLflow's after-request
    /// filter does for callers who may not read the run tier.
    pub hide_run_dirs: bool,
}

const STATE_UNKNOWN: u8 = 0;
const STATE_OFF: u8 = 1;
const STATE_ON: u8 = 2;

struct Detection {
    state: AtomicU8,
    /// One detection at a time; holds when the last one failed.
    running: tokio::sync::Mutex<Option<Instant>>,
}

pub struct Auth {
    config: AuthConfig,
    base: Uri,
    client: Client<QuickAckConnector, ProxyBody>,
    pool: crate::upstream_pool::PoolConfig,
    cache: DecisionCache,
    /// Keys the credential digests: a per-process secret, so that digests say nothing outside.
    key: hmac::Key,
    detection: Detection,
    metrics: Metrics,
    /// Probes in progress: callers with the same key wait for the one answer (single flight).
    in_flight: std::sync::Mutex<std::collections::HashMap<Key, Arc<OnceCell<Outcome>>>>,
}

/// The outcome of asking MLflow, shared by every caller waiting on the same key.
#[derive(Clone, Debug)]
enum Outcome {
    Allowed(Permit),
    Denied,
    Unauthenticated {
        www_authenticate: Option<HeaderValue>,
        body: Bytes,
    },
    /// MLflow could not be asked (503) or answered something that does not say (502).
    Failed(StatusCode, String),
}

impl Auth {
    pub fn new(
        config: AuthConfig,
        base: Uri,
        metrics: Metrics,
        pool: crate::upstream_pool::PoolConfig,
    ) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        // The same kept-alive, retired-in-time connections as pass-through (`upstream_pool`): a
        // fresh connection per check left a socket in TIME_WAIT per check.
        let client = crate::upstream_pool::client(connector, pool);
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "no randomness for the auth cache key".to_owned())?;
        let initial = match config.mode {
            Mode::Off => STATE_OFF,
            Mode::On => STATE_ON,
            Mode::Auto => STATE_UNKNOWN,
        };
        let auth = Auth {
            cache: DecisionCache::new(config.cache_ttl, config.cache_size),
            config,
            base,
            client,
            pool,
            key,
            detection: Detection {
                state: AtomicU8::new(initial),
                running: tokio::sync::Mutex::new(None),
            },
            metrics,
            in_flight: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        auth.publish_state(initial);
        Ok(auth)
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// With auto: re-check every `recheck` until the process ends (spawned by `Proxy::start`).
    pub async fn recheck_forever(self: Arc<Self>) {
        if self.config.mode != Mode::Auto {
            return;
        }
        loop {
            self.detect().await;
            tokio::time::sleep(self.config.recheck).await;
        }
    }

    fn publish_state(&self, state: u8) {
        for (value, label) in [
            (STATE_UNKNOWN, "unknown"),
            (STATE_OFF, "off"),
            (STATE_ON, "on"),
        ] {
            self.metrics
                .auth_state
                .with_label_values(&[label])
                .set(i64::from(value == state));
        }
    }

    /// Ask MLflow whether its auth app runs: `users/current` without credentials is a 404
    /// without it, a 401 (or a custom function's redirect) with it.
    async fn detect(&self) -> u8 {
        let mut running = self.detection.running.lock().await;
        self.detect_locked(&mut running).await
    }

    /// A request found the state unknown: detect now, unless another detection just did (or
    /// just failed).
    async fn detect_inline(&self) -> u8 {
        let mut running = self.detection.running.lock().await;
        let state = self.detection.state.load(Ordering::Relaxed);
        if state != STATE_UNKNOWN {
            return state;
        }
        if running.is_some_and(|failed| failed.elapsed() < DETECT_BACKOFF) {
            return STATE_UNKNOWN;
        }
        self.detect_locked(&mut running).await
    }

    async fn detect_locked(&self, running: &mut Option<Instant>) -> u8 {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        let started = Instant::now();
        let answer = self
            .send(
                http::Method::GET,
                "/api/2.0/mlflow/users/current",
                headers,
                false,
            )
            .await;
        self.metrics
            .auth_mlflow_duration
            .with_label_values(&["detect"])
            .observe(started.elapsed().as_secs_f64());
        let state = match &answer {
            Ok((status, _, _)) if *status == StatusCode::NOT_FOUND => STATE_OFF,
            Ok((status, _, _))
                if *status == StatusCode::UNAUTHORIZED || status.is_redirection() =>
            {
                STATE_ON
            }
            Ok((status, _, _)) => {
                tracing::warn!(
                    "cannot tell whether MLflow's auth app is on: users/current answered {status}"
                );
                STATE_UNKNOWN
            }
            Err(e) => {
                tracing::warn!("cannot tell whether MLflow's auth app is on: {e}");
                STATE_UNKNOWN
            }
        };
        let before = self.detection.state.swap(state, Ordering::Relaxed);
        if before != state {
            let name = ["unknown", "off", "on"][usize::from(state)];
            tracing::info!(
                "MLflow auth app: {name} (artifact requests are checked: {})",
                state != STATE_OFF
            );
            self.publish_state(state);
        }
        *running = (state == STATE_UNKNOWN).then(Instant::now);
        state
    }

    /// Whether artifact requests must be checked now: Ok(true/false), or the refusal while
    /// MLflow cannot tell.
    async fn required(&self) -> Result<bool, ProxyError> {
        let state = match self.detection.state.load(Ordering::Relaxed) {
            STATE_UNKNOWN => self.detect_inline().await,
            s => s,
        };
        match state {
            STATE_OFF => Ok(false),
            STATE_ON => Ok(true),
            _ => Err(unavailable(
                "The MLflow server could not be asked whether its authentication is on; artifact requests are refused until it answers",
            )),
        }
    }

    /// The one entry point: may this request go on? `path` is the artifact path as the route
    /// gives it (decoded once; for a listing, the `path` argument). Call before reading the body
    /// and before any S3 call. `Err` is the answer to send (MLflow's 401/403, or 503/502).
    pub async fn authorize<B>(
        &self,
        op: Operation,
        path: &str,
        request: &Request<B>,
    ) -> Result<Permit, Refusal> {
        if self.config.mode == Mode::Off {
            return Ok(Permit::default());
        }
        match self.required().await {
            Ok(false) => return Ok(Permit::default()),
            Ok(true) => {}
            Err(e) => {
                self.count("error", "mlflow");
                return Err(e.into_response().into());
            }
        }
        let headers = request.headers();
        let api = if request.uri().path().starts_with("/ajax-api/") {
            "/ajax-api/2.0"
        } else {
            "/api/2.0"
        };
        let credentials = match self.credentials(op, headers) {
            Ok(c) => c,
            Err(()) => {
                // FastAPI's Basic parsing refused the header: MLflow answers 401 without
                // looking further.
                self.count("401", "mlflow");
                return Err(unauthenticated(op, None, None).into());
            }
        };
        let key = credentials
            .digest
            .and_then(|digest| self.key_for(op, path, digest));
        let now = Instant::now();
        if let Some(key) = &key {
            match self.cache.get(key, now) {
                Some(Cached::Allowed) => {
                    self.count("allowed", "cache");
                    return self
                        .cached_permit(op, api, path, key, &credentials, headers)
                        .await;
                }
                Some(Cached::Denied) => {
                    self.count("403", "cache");
                    return Err(forbidden(op).into());
                }
                None => {}
            }
        }
        let outcome = match &key {
            Some(key) => {
                let cell = {
                    let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                    in_flight.entry(*key).or_default().clone()
                };
                let outcome = cell
                    .get_or_init(|| self.ask(op, api, path, &credentials, headers))
                    .await
                    .clone();
                if let Ok(mut in_flight) = self.in_flight.lock()
                    && in_flight.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell))
                {
                    in_flight.remove(key);
                }
                outcome
            }
            None => self.ask(op, api, path, &credentials, headers).await,
        };
        self.answer(op, key, now, outcome)
    }

    /// A cached allow for a listing still needs the run-tier answer for the filter; it has its
    /// own cache entry.
    async fn cached_permit(
        &self,
        op: Operation,
        api: &str,
        path: &str,
        key: &Key,
        credentials: &Credentials,
        headers: &HeaderMap,
    ) -> Result<Permit, Refusal> {
        if op != Operation::List {
            return Ok(Permit::default());
        }
        let runs_key = Key {
            credentials: key.credentials,
            resource: run_tier_resource(&key.resource),
        };
        match self.cache.get(&runs_key, Instant::now()) {
            Some(Cached::Allowed) => Ok(Permit::default()),
            Some(Cached::Denied) => Ok(Permit {
                hide_run_dirs: true,
            }),
            None => match self.ask(op, api, path, credentials, headers).await {
                Outcome::Allowed(permit) => Ok(permit),
                other => self.answer(op, None, Instant::now(), other),
            },
        }
    }

    fn answer(
        &self,
        op: Operation,
        key: Option<Key>,
        asked_at: Instant,
        outcome: Outcome,
    ) -> Result<Permit, Refusal> {
        match outcome {
            Outcome::Allowed(permit) => {
                self.count("allowed", "mlflow");
                if let Some(key) = key {
                    self.cache.insert(key, Cached::Allowed, asked_at);
                    if op == Operation::List {
                        let runs = Key {
                            credentials: key.credentials,
                            resource: run_tier_resource(&key.resource),
                        };
                        let value = if permit.hide_run_dirs {
                            Cached::Denied
                        } else {
                            Cached::Allowed
                        };
                        self.cache.insert(runs, value, asked_at);
                    }
                }
                self.metrics.auth_cache_entries.set(self.cache.len() as i64);
                Ok(permit)
            }
            Outcome::Denied => {
                self.count("403", "mlflow");
                if let Some(key) = key {
                    self.cache.insert(key, Cached::Denied, asked_at);
                }
                self.metrics.auth_cache_entries.set(self.cache.len() as i64);
                Err(forbidden(op).into())
            }
            Outcome::Unauthenticated {
                www_authenticate,
                body,
            } => {
                self.count("401", "mlflow");
                // The credential is refused now: nothing decided for it earlier still holds.
                if let Some(key) = key {
                    self.cache.forget_credentials(&key.credentials);
                }
                Err(unauthenticated(op, www_authenticate, Some(body)).into())
            }
            Outcome::Failed(status, message) => {
                self.count("error", "mlflow");
                tracing::warn!("MLflow auth check failed ({status}): {message}");
                let error = if status == StatusCode::SERVICE_UNAVAILABLE {
                    unavailable(
                        "The MLflow server could not be asked whether this request is allowed",
                    )
                } else {
                    ProxyError::upstream(
                        "The MLflow server's answer did not say whether this request is allowed",
                    )
                };
                Err(error.into_response().into())
            }
        }
    }

    fn count(&self, outcome: &str, source: &str) {
        self.metrics
            .auth_decisions
            .with_label_values(&[outcome, source])
            .inc();
    }

    /// Every probe the operation needs, at once; the strictest answer wins.
    async fn ask(
        &self,
        op: Operation,
        api: &str,
        path: &str,
        credentials: &Credentials,
        headers: &HeaderMap,
    ) -> Outcome {
        let mut probes = probe::probes_for(op, api, path);
        let run_tier = if op == Operation::List {
            probe::run_tier_probe(api, path)
        } else {
            None
        };
        if let Some(extra) = run_tier.clone() {
            probes.push(extra);
        }
        let host = headers.get(header::HOST).cloned();
        let answers = futures_util::future::join_all(
            probes
                .iter()
                .map(|p| self.run_probe(p, credentials, host.clone())),
        )
        .await;
        let mut hide_run_dirs = false;
        let mut denied = false;
        let mut failure = None;
        for (probe, verdict) in probes.iter().zip(answers) {
            let is_run_tier = run_tier.as_ref() == Some(probe);
            match verdict {
                Ok(Verdict::Allowed) => {}
                Ok(Verdict::Denied) if is_run_tier => hide_run_dirs = true,
                Ok(Verdict::Denied) => denied = true,
                Ok(Verdict::Unauthenticated {
                    www_authenticate,
                    body,
                }) => {
                    return Outcome::Unauthenticated {
                        www_authenticate,
                        body,
                    };
                }
                Ok(Verdict::Odd(message)) => {
                    failure.get_or_insert((StatusCode::BAD_GATEWAY, message));
                }
                Err(message) => {
                    failure.get_or_insert((StatusCode::SERVICE_UNAVAILABLE, message));
                }
            }
        }
        if denied {
            // A denial is an answer, whatever else failed: the request is refused either way.
            Outcome::Denied
        } else if let Some((status, message)) = failure {
            Outcome::Failed(status, message)
        } else {
            Outcome::Allowed(Permit { hide_run_dirs })
        }
    }

    async fn run_probe(
        &self,
        probe: &Probe,
        credentials: &Credentials,
        host: Option<HeaderValue>,
    ) -> Result<Verdict, String> {
        let mut headers = credentials.forward.clone();
        headers.insert(
            header::HOST,
            host.unwrap_or_else(|| {
                HeaderValue::from_str(self.base.authority().map_or("localhost", |a| a.as_str()))
                    .unwrap_or(HeaderValue::from_static("localhost"))
            }),
        );
        let started = Instant::now();
        let answer = self
            .send(
                probe.method.clone(),
                &probe.path_and_query,
                headers,
                probe.json_body,
            )
            .await;
        self.metrics
            .auth_mlflow_duration
            .with_label_values(&[probe.kind.label()])
            .observe(started.elapsed().as_secs_f64());
        let (status, www, body) = answer?;
        Ok(probe::read_answer(probe.kind, status, www, &body))
    }

    /// One request to MLflow, its answer read in full (bounded), within the timeout.
    async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        json_body: bool,
    ) -> Result<(StatusCode, Option<HeaderValue>, Bytes), String> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|e| format!("probe URI: {e}"))?,
        );
        let uri = Uri::from_parts(parts).map_err(|e| format!("probe URI: {e}"))?;
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let body = if json_body {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            full(Bytes::from_static(b"{}"))
        } else {
            empty()
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let retire = crate::upstream_pool::Retire::watch(&mut request, &self.pool);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("MLflow at {}: {e}", self.base))?;
            retire.after(&response);
            let status = response.status();
            let www = response.headers().get(header::WWW_AUTHENTICATE).cloned();
            let body = Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map_err(|e| format!("reading MLflow's answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, www, body))
        };
        tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "MLflow at {} did not answer within {} s",
                    self.base,
                    self.config.timeout.as_secs()
                )
            })?
    }

    /// The headers sent to MLflow as the caller, and their digest (None: no credentials, which
    /// is never cached).
    fn credentials(&self, op: Operation, headers: &HeaderMap) -> Result<Credentials, ()> {
        let mut forward = HeaderMap::new();
        let mut ctx = hmac::Context::with_key(&self.key);
        let mut any = false;
        for name in &self.config.credential_headers {
            for value in headers.get_all(name) {
                any = true;
                ctx.update(name.as_str().as_bytes());
                ctx.update(b"\0");
                ctx.update(value.as_bytes());
                ctx.update(b"\0");
                forward.append(name.clone(), value.clone());
            }
        }
        // MLflow's default authorization function on its FastAPI routes (native GET/PUT):
        // Basic credentials parsed FastAPI's way, anything else is a 401.
        if op.native() && self.basic_only() {
            let value = headers.get(header::AUTHORIZATION).ok_or(())?;
            let encoded = fastapi_basic(value).ok_or(())?;
            forward.insert(header::AUTHORIZATION, encoded);
        }
        let digest = any.then(|| {
            let tag = ctx.sign();
            let mut out = [0u8; 32];
            out.copy_from_slice(tag.as_ref());
            out
        });
        Ok(Credentials { forward, digest })
    }

    /// Everything else the decision depends on: the operation, the first segments of the
    /// canonical path (never coarser than MLflow's classification: experiment, tier, the
    /// `artifacts` marker), and the Flask-path substrings MLflow treats specially. None: a path
    /// MLflow cannot parse, never cached.
    fn key_for(&self, op: Operation, path: &str, credentials: [u8; 32]) -> Option<Key> {
        let canonical = crate::mlflow::path::validate_path_is_safe(path).ok()?;
        let keep = if canonical.starts_with("workspaces/") {
            5
        } else {
            3
        };
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        digest.update(&[op.tag()]);
        if op != Operation::Head {
            for segment in canonical.split('/').take(keep) {
                digest.update(segment.as_bytes());
                digest.update(b"\0");
            }
            // MLflow's Flask substring rule and the delete probes depend on the whole path.
            let flags = [
                [
                    "/mlflow/traces/",
                    "/mlflow/datasets/",
                    "/mlflow/jobs/",
                    "/mlflow/issues/",
                ]
                .iter()
                .any(|s| format!("/{path}/").contains(s)),
                path.trim_end_matches('/').rsplit('/').next() == Some("mlflow"),
                path.ends_with('/'),
            ];
            digest.update(&flags.map(u8::from));
        }
        let mut resource = [0u8; 32];
        resource.copy_from_slice(digest.finish().as_ref());
        Some(Key {
            credentials,
            resource,
        })
    }

    /// Credentials in `Authorization` only: MLflow's default (Basic) authorization function.
    fn basic_only(&self) -> bool {
        self.config.credential_headers == [header::AUTHORIZATION]
    }

    pub fn cache(&self) -> &DecisionCache {
        &self.cache
    }
}

struct Credentials {
    forward: HeaderMap,
    digest: Option<[u8; 32]>,
}

/// The cache slot for a listing's run-tier answer, next to the listing's own.
fn run_tier_resource(resource: &[u8; 32]) -> [u8; 32] {
    let mut out = *resource;
    out[0] ^= 0x80;
    out
}

/// MLflow's FastAPI routes (native GET/PUT) parse Basic credentials their own way
/// (`_authenticate_fastapi_request`): exactly two whitespace-separated parts, scheme `basic` in
/// any case, lenient base64, ASCII only; anything else is a 401. The probe goes to a Flask route,
/// whose parsing differs, so the credentials are parsed here as FastAPI would and sent
/// re-encoded (None: FastAPI refuses them).
fn fastapi_basic(value: &HeaderValue) -> Option<HeaderValue> {
    let text = std::str::from_utf8(value.as_bytes()).ok()?;
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [scheme, encoded] = parts.as_slice() else {
        return None;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    // Python's non-strict b64decode drops characters outside the alphabet first.
    let filtered: String = encoded
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
        .collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(filtered)
        .ok()?;
    if !decoded.is_ascii() {
        return None;
    }
    let reencoded = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&decoded)
    );
    HeaderValue::from_str(&reencoded).ok()
}

/// MLflow's 401: `WWW-Authenticate: Basic realm="mlflow"` and its text.
fn unauthenticated(
    op: Operation,
    www_authenticate: Option<HeaderValue>,
    body: Option<Bytes>,
) -> Response<ProxyBody> {
    let body = body.filter(|b| !b.is_empty()).unwrap_or_else(|| {
        Bytes::from_static(
            b"You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow on how to authenticate.",
        )
    });
    let mut response = text_response(op, StatusCode::UNAUTHORIZED, body);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        www_authenticate.unwrap_or(HeaderValue::from_static("Basic realm=\"mlflow\"")),
    );
    response
}

/// MLflow's 403 `Permission denied`.
fn forbidden(op: Operation) -> Response<ProxyBody> {
    text_response(
        op,
        StatusCode::FORBIDDEN,
        Bytes::from_static(b"Permission denied"),
    )
}

/// FastAPI answers `text/plain`, Flask `text/html` (both with the same text).
fn text_response(op: Operation, status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let content_type = if op.native() {
        "text/plain; charset=utf-8"
    } else {
        "text/html; charset=utf-8"
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn unavailable(message: &str) -> ProxyError {
    ProxyError::mlflow(
        Side::Upstream,
        StatusCode::SERVICE_UNAVAILABLE,
        "TEMPORARILY_UNAVAILABLE",
        message,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(v: &str) -> Option<String> {
        fastapi_basic(&HeaderValue::from_str(v).unwrap()).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn fastapi_credential_parsing() {
        // alice:pw
        let alice = Some("Basic YWxpY2U6cHc=".to_owned());
        assert_eq!(basic("Basic YWxpY2U6cHc="), alice);
        assert_eq!(basic("basic  YWxpY2U6cHc= "), alice);
        // Junk characters are dropped, as Python's lenient decoder does.
        assert_eq!(basic("Basic YWxp*Y2U6cHc="), alice);
        // "gina:Pässwörd" in UTF-8: not ASCII, refused by FastAPI.
        let utf8 = base64::engine::general_purpose::STANDARD.encode("gina:Pässwörd");
        assert_eq!(basic(&format!("Basic {utf8}")), None);
        assert_eq!(basic("Basic a b"), None);
        assert_eq!(basic("Basic"), None);
        assert_eq!(basic("Bearer xyz"), None);
    }
}
