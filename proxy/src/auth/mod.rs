//! MLflow's authentication and permissions on the artifact routes the proxy serves itself.
//!
//! The decision always comes from MLflow: before any S3 call, the proxy asks MLflow's auth app a
//! "validator probe" as the caller (see `probe`) and relays MLflow's 401/403, or serves the
//! request. Answers are remembered briefly (`cache`). Whether MLflow runs its auth app at all is
//! found out from MLflow (`PROXY_MLFLOW_AUTH=auto`) and re-checked periodically; when the proxy
//! cannot tell, artifact requests are refused (503), never served unchecked.
//!
//! Every request to MLflow (detection and probes) carries the upstream's own address as its
//! `Host`, as any client of that address would: the client's `Host` was already checked by the
//! proxy with MLflow's rule (`security`), and no decision may depend on it (the cache is not keyed
//! by it). When MLflow refuses the proxy's requests outright (its Host check, any 4xx but 401 and
//! 404), waiting does not help: `/readyz` says so until MLflow answers.

mod cache;
mod flight;
mod probe;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use ring::hmac;

use crate::ops::metrics::Metrics;
use crate::upstream::ask::{ANSWER_LIMIT, Asker, Target};
use crate::wire::body::{ProxyBody, full};
use crate::wire::error::{ProxyError, Side};

pub use cache::{Cached, DecisionCache, Key};
pub use probe::{Kind, Probe, Verdict, route_probe};

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
    /// requests while MLflow cannot be asked), on, or off. Unset or empty: follow MLFLOW_AUTH
    /// (true: on; false or unset: auto).
    #[arg(long, env = "PROXY_MLFLOW_AUTH", value_name = "auto|on|off")]
    pub mlflow_auth: Option<String>,
    /// The stack's one switch for MLflow's auth app (mlflow-image/entrypoint.sh reads it too):
    /// true (MLflow runs its auth app) makes every artifact request checked from the first one
    /// (PROXY_MLFLOW_AUTH=on; auto or off are refused with it); false or unset leaves it to
    /// PROXY_MLFLOW_AUTH (default auto).
    #[arg(
        long = "mlflow-auth-app",
        env = "MLFLOW_AUTH",
        value_name = "true|false"
    )]
    pub mlflow_auth_app: Option<String>,
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
    /// MLflow's `--static-prefix` ("" for none): every question goes under it.
    pub static_prefix: String,
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
            static_prefix: String::new(),
        }
    }
}

/// The mode from PROXY_MLFLOW_AUTH and MLFLOW_AUTH (empty values count as unset).
///
/// MLFLOW_AUTH=true means MLflow runs its auth app: the proxy checks from the first request
/// (`auto` would serve unchecked until its next detection after MLflow restarts with the app).
/// MLFLOW_AUTH=false keeps `auto`, not `off`: an MLflow whose auth app is on by another route (an
/// image, an extra flag, one more server behind the same address) is still found out and obeyed;
/// `off` stays available for those who want artifacts served while MLflow is down.
pub fn resolve_mode(proxy: Option<&str>, stack: Option<&str>) -> Result<Mode, String> {
    let stack = match stack.map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(format!("MLFLOW_AUTH={other:?} must be true or false")),
    };
    let proxy = match proxy.map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(value) => Some(
            Mode::from_str(value, true)
                .map_err(|_| format!("PROXY_MLFLOW_AUTH={value:?} must be auto, on or off"))?,
        ),
    };
    match (proxy, stack) {
        (Some(Mode::On) | None, Some(true)) => Ok(Mode::On),
        (Some(mode), Some(true)) => Err(format!(
            "MLFLOW_AUTH=true (MLflow runs its auth app) with PROXY_MLFLOW_AUTH={}: artifact requests could be served unchecked; set PROXY_MLFLOW_AUTH=on or leave it unset",
            if mode == Mode::Off { "off" } else { "auto" }
        )),
        (Some(mode), _) => Ok(mode),
        (None, _) => Ok(Mode::Auto),
    }
}

impl AuthArgs {
    pub fn build(&self) -> Result<AuthConfig, String> {
        let mode = resolve_mode(self.mlflow_auth.as_deref(), self.mlflow_auth_app.as_deref())?;
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
            mode,
            cache_ttl: Duration::from_secs_f64(ttl),
            cache_size: self.mlflow_auth_cache_size,
            recheck: Duration::from_secs(self.mlflow_auth_recheck_secs),
            timeout: Duration::from_secs(self.mlflow_auth_timeout_secs),
            credential_headers,
            static_prefix: String::new(),
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
    /// Set once a check has ended (answered or failed): until then readiness is not known.
    checked: AtomicBool,
    /// Why MLflow refuses the proxy's own requests (its last answer said so), for /readyz.
    refused: std::sync::Mutex<Option<String>>,
}

pub struct Auth {
    config: AuthConfig,
    /// Asks MLflow (probes, detection) on the kept-alive upstream pool.
    asker: Asker,
    cache: DecisionCache,
    /// Keys the credential digests: a per-process secret, so that digests say nothing outside.
    key: hmac::Key,
    detection: Detection,
    metrics: Metrics,
    /// Probes in progress: callers with the same key wait for the one answer (single flight).
    in_flight: flight::Flights<Key, Outcome>,
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
    /// MLflow refused the request itself with a 400 (its JSON, relayed).
    Refused(Bytes),
    /// MLflow could not be asked (503) or answered something that does not say (502).
    Failed(StatusCode, String),
}

impl Auth {
    pub fn new(config: AuthConfig, target: Target, metrics: Metrics) -> Result<Self, String> {
        // The same kept-alive, retired-in-time connections as pass-through (`pool`): a
        // fresh connection per check left a socket in TIME_WAIT per check.
        let asker = Asker::new(target, config.timeout);
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
            asker,
            key,
            detection: Detection {
                state: AtomicU8::new(initial),
                running: tokio::sync::Mutex::new(None),
                checked: AtomicBool::new(false),
                refused: std::sync::Mutex::new(None),
            },
            metrics,
            in_flight: flight::Flights::new(),
        };
        auth.publish_state(initial);
        Ok(auth)
    }

    pub fn mode(&self) -> Mode {
        self.config.mode
    }

    /// With auto: re-check every `recheck` until the process ends (spawned by `Proxy::start`).
    /// With on, the same check only finds out whether MLflow refuses the proxy (for /readyz).
    pub async fn recheck_forever(self: Arc<Self>) {
        if self.config.mode == Mode::Off {
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
        let started = Instant::now();
        let answer = self
            .send(
                http::Method::GET,
                "/api/2.0/mlflow/users/current",
                HeaderMap::new(),
                false,
                ANSWER_LIMIT,
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
            Ok((status, _, body)) => {
                tracing::warn!(
                    "cannot tell whether MLflow's auth app is on: users/current answered {status}"
                );
                if status.is_client_error() {
                    self.refused(*status, body);
                }
                STATE_UNKNOWN
            }
            Err(e) => {
                tracing::warn!("cannot tell whether MLflow's auth app is on: {e}");
                STATE_UNKNOWN
            }
        };
        if matches!(state, STATE_ON | STATE_OFF) {
            *self
                .detection
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.detection.checked.store(true, Ordering::Relaxed);
        if self.config.mode != Mode::Auto {
            // With on, the answer only tells whether MLflow refuses the proxy.
            return self.detection.state.load(Ordering::Relaxed);
        }
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

    /// MLflow refused the proxy's own question (a 4xx other than 401/404: its Host check, a
    /// front proxy's rule): artifact requests are refused until that changes, which waiting
    /// alone will not do.
    fn refused(&self, status: StatusCode, body: &Bytes) {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        let reason = format!(
            "MLflow refuses the proxy's requests (users/current answered {status}: {:?}); they carry Host: {}, which MLflow's MLFLOW_SERVER_ALLOWED_HOSTS must allow",
            text.trim(),
            self.asker.host().to_str().unwrap_or("?"),
        );
        tracing::error!("{reason}; artifact requests are refused until it answers");
        *self
            .detection
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// For /readyz: Err while artifact requests are refused for a reason that does not clear by
    /// waiting (MLflow refuses the proxy), or before the first check has ended.
    pub fn readiness(&self) -> Result<(), String> {
        if self.config.mode == Mode::Off {
            return Ok(());
        }
        if !self.detection.checked.load(Ordering::Relaxed) {
            return Err("MLflow's auth app not checked yet".to_owned());
        }
        match &*self
            .detection
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
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
    /// `skills_by_name`: MLflow 3.18+ judges its skill tree by skill (`probe::skill_tree_probes`).
    pub async fn authorize<B>(
        &self,
        op: Operation,
        path: &str,
        request: &Request<B>,
        skills_by_name: bool,
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
        let path_only = request.uri().path();
        let api = if path_only
            .strip_prefix(self.config.static_prefix.as_str())
            .unwrap_or(path_only)
            .starts_with("/ajax-api/")
        {
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
            .and_then(|digest| self.key_for(op, path, headers, skills_by_name, digest));
        let now = Instant::now();
        if let Some(key) = &key {
            match self.cache.get(key, now) {
                Some(Cached::Allowed) => {
                    self.count("allowed", "cache");
                    return self
                        .cached_permit(op, api, path, key, &credentials, skills_by_name)
                        .await;
                }
                Some(Cached::Denied) => {
                    self.count("403", "cache");
                    return Err(forbidden(op).into());
                }
                None => {}
            }
        }
        let outcome = self
            .single_flight(key, self.ask(op, api, path, &credentials, skills_by_name))
            .await;
        self.answer(op, key, now, outcome)
    }

    /// Callers with the same key wait for one answer from MLflow (None: no key, ask alone); the
    /// entry goes with its last waiter, answered or gone (`flight`).
    async fn single_flight(&self, key: Option<Key>, ask: impl Future<Output = Outcome>) -> Outcome {
        match key {
            Some(key) => self.in_flight.join(key).answer(|| ask).await,
            None => ask.await,
        }
    }

    /// Whether MLflow lets the caller through `probe`: a request to one of MLflow's own routes
    /// that its auth app judges exactly as the real request (the route itself, with an argument
    /// left out so that its handler stops at once). False for a refusal, and for anything that
    /// does not say (the caller then gets MLflow's own answer to the real request). Answers are
    /// cached like every other decision.
    pub async fn allows<B>(&self, probe: &Probe, request: &Request<B>) -> bool {
        match self.checks().await {
            Some(false) => return true,
            Some(true) => {}
            None => return false,
        }
        let credentials = self.caller(request.headers());
        let key = credentials.digest.map(|credentials| {
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            digest.update(probe.method.as_str().as_bytes());
            digest.update(b" ");
            digest.update(probe.path_and_query.as_bytes());
            let mut resource = [0u8; 32];
            resource.copy_from_slice(digest.finish().as_ref());
            Key {
                credentials,
                resource,
            }
        });
        let now = Instant::now();
        if let Some(key) = &key {
            match self.cache.get(key, now) {
                Some(Cached::Allowed) => {
                    self.count("allowed", "cache");
                    return true;
                }
                Some(Cached::Denied) => {
                    self.count("403", "cache");
                    return false;
                }
                None => {}
            }
        }
        let ask = async {
            match self.run_probe(probe, &credentials).await {
                Ok(Verdict::Allowed) => Outcome::Allowed(Permit::default()),
                Ok(Verdict::Denied) => Outcome::Denied,
                Ok(Verdict::Unauthenticated {
                    www_authenticate,
                    body,
                }) => Outcome::Unauthenticated {
                    www_authenticate,
                    body,
                },
                Ok(Verdict::Refused(body)) => Outcome::Refused(body),
                Ok(Verdict::Odd(message)) => Outcome::Failed(StatusCode::BAD_GATEWAY, message),
                Err(message) => Outcome::Failed(StatusCode::SERVICE_UNAVAILABLE, message),
            }
        };
        let outcome = self.single_flight(key, ask).await;
        // MLflow answers the real request itself when this is not an allow: no refusal here.
        self.answer(Operation::Download, key, now, outcome).is_ok()
    }

    /// Whether MLflow's auth app is on now: None while that cannot be told.
    pub async fn checks(&self) -> Option<bool> {
        if self.config.mode == Mode::Off {
            return Some(false);
        }
        self.required().await.ok()
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
        skills_by_name: bool,
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
            None => match self.ask(op, api, path, credentials, skills_by_name).await {
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
            Outcome::Refused(body) => {
                self.count("400", "mlflow");
                Err(refused(op, body).into())
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
        skills_by_name: bool,
    ) -> Outcome {
        let skill_tree = skills_by_name
            .then(|| probe::skill_tree_probes(op, api, path))
            .flatten();
        let in_skill_tree = skill_tree.is_some();
        let mut probes = skill_tree.unwrap_or_else(|| probe::probes_for(op, api, path));
        // MLflow's run-directory filter concerns experiment roots, never the skill tree.
        let run_tier = if op == Operation::List && !in_skill_tree {
            probe::run_tier_probe(api, path)
        } else {
            None
        };
        if let Some(extra) = run_tier.clone() {
            probes.push(extra);
        }
        // A delete's probes: the first alone, so that wrong credentials (or a denial) cost MLflow
        // one check, not three; the rest at once if it passed. (A listing's two stay parallel.)
        let at_once = if op == Operation::Delete {
            1
        } else {
            probes.len()
        };
        let mut answers = futures_util::future::join_all(
            probes[..at_once]
                .iter()
                .map(|p| self.run_probe(p, credentials)),
        )
        .await;
        if at_once < probes.len() && matches!(answers[0], Ok(Verdict::Allowed)) {
            answers.extend(
                futures_util::future::join_all(
                    probes[at_once..]
                        .iter()
                        .map(|p| self.run_probe(p, credentials)),
                )
                .await,
            );
        }
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
                Ok(Verdict::Refused(body)) => return Outcome::Refused(body),
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

    async fn run_probe(&self, probe: &Probe, credentials: &Credentials) -> Result<Verdict, String> {
        let headers = credentials.forward.clone();
        let started = Instant::now();
        let answer = self
            .send(
                probe.method.clone(),
                &probe.path_and_query,
                headers,
                probe.json_body,
                ANSWER_LIMIT,
            )
            .await;
        self.metrics
            .auth_mlflow_duration
            .with_label_values(&[probe.kind.label()])
            .observe(started.elapsed().as_secs_f64());
        let (status, www, body) = answer?;
        if let Some(refusal) = probe::refusal_of_exact(probe, status, &body) {
            return Ok(Verdict::Refused(refusal));
        }
        Ok(probe::read_answer(probe.kind, status, www, &body))
    }

    /// A GET of MLflow's REST API as the caller (their credentials; the Host every question to
    /// MLflow carries), its answer read
    /// up to `limit` bytes (more is an error) within the check timeout. MLflow's auth app
    /// judges it as it judges any request of the caller.
    pub async fn get_as(
        &self,
        path_and_query: &str,
        credentials: &Credentials,
        limit: usize,
    ) -> Result<(StatusCode, Bytes), String> {
        let headers = credentials.forward.clone();
        let (status, _, body) = self
            .send(http::Method::GET, path_and_query, headers, false, limit)
            .await?;
        Ok((status, body))
    }

    /// One request to MLflow (under its static prefix), its answer read in full up to `limit`
    /// bytes, within the timeout.
    async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        headers: HeaderMap,
        json_body: bool,
        limit: usize,
    ) -> Result<(StatusCode, Option<HeaderValue>, Bytes), String> {
        let body = json_body.then(|| Bytes::from_static(b"{}"));
        let answer = self
            .asker
            .ask_limited(method, path_and_query, headers, body, limit)
            .await?;
        let www = answer.headers.get(header::WWW_AUTHENTICATE).cloned();
        Ok((answer.status, www, answer.body))
    }

    /// The headers sent to MLflow as the caller, and their digest (None: no credentials, which
    /// is never cached).
    fn credentials(&self, op: Operation, headers: &HeaderMap) -> Result<Credentials, ()> {
        let mut credentials = self.caller(headers);
        // MLflow's default authorization function on its FastAPI routes (native GET/PUT):
        // Basic credentials parsed FastAPI's way, anything else is a 401.
        if op.native() && self.basic_only() {
            let value = headers.get(header::AUTHORIZATION).ok_or(())?;
            let encoded = fastapi_basic(value).ok_or(())?;
            credentials.forward.insert(header::AUTHORIZATION, encoded);
        }
        Ok(credentials)
    }

    /// The caller's credential headers (PROXY_MLFLOW_AUTH_HEADERS) as a Flask route of MLflow
    /// reads them, and their keyed digest (None: the caller sent none).
    pub fn caller(&self, headers: &HeaderMap) -> Credentials {
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
        // MLflow judges in the request's workspace (and 3.18 compares it with the path's).
        if let Some(workspace) = headers.get(crate::upstream::workspaces::HEADER) {
            forward.insert(crate::upstream::workspaces::HEADER, workspace.clone());
        }
        let digest = any.then(|| {
            let tag = ctx.sign();
            let mut out = [0u8; 32];
            out.copy_from_slice(tag.as_ref());
            out
        });
        Credentials { forward, digest }
    }

    /// Everything else the decision depends on (see `cache::resource`): also the workspace the
    /// request names (decisions differ per workspace, as sent) and whether 3.18's skill rules
    /// apply. None: a path MLflow cannot parse, never cached.
    fn key_for(
        &self,
        op: Operation,
        path: &str,
        headers: &HeaderMap,
        skills_by_name: bool,
        credentials: [u8; 32],
    ) -> Option<Key> {
        let path = (op != Operation::Head).then_some(path);
        let workspace = headers.get(crate::upstream::workspaces::HEADER);
        let mut context = vec![u8::from(skills_by_name), u8::from(workspace.is_some())];
        context.extend_from_slice(workspace.map_or(&b""[..], |w| w.as_bytes()));
        Some(Key {
            credentials,
            resource: cache::resource(op.tag(), &context, path)?,
        })
    }

    /// Credentials in `Authorization` only: MLflow's default (Basic) authorization function.
    fn basic_only(&self) -> bool {
        self.config.credential_headers == [header::AUTHORIZATION]
    }

    pub fn cache(&self) -> &DecisionCache {
        &self.cache
    }

    /// Questions to MLflow in progress (single-flight entries).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

/// Who is asking, as MLflow is told: the credential headers sent on the caller's behalf, and
/// their keyed digest (what cache keys are made of; None: no credentials).
pub struct Credentials {
    pub forward: HeaderMap,
    pub digest: Option<[u8; 32]>,
}

impl Auth {
    /// How long and how many answers of MLflow may be remembered (`PROXY_MLFLOW_AUTH_CACHE_*`).
    pub fn cache_policy(&self) -> (Duration, usize) {
        (self.config.cache_ttl, self.config.cache_size)
    }
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

/// MLflow's 400 for the request itself: the Flask routes' JSON as it is; MLflow's FastAPI
/// middleware (native GET/PUT) answers the message as text.
fn refused(op: Operation, body: Bytes) -> Response<ProxyBody> {
    if op.native()
        && let Some(message) = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
    {
        let mut response = Response::new(full(Bytes::from(message)));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return response;
    }
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
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

    /// One switch: MLFLOW_AUTH=true means checked from the first request; nothing weaker
    /// may be combined with it (issue 20).
    #[test]
    fn mode_follows_the_stacks_switch() {
        assert_eq!(resolve_mode(None, None), Ok(Mode::Auto));
        assert_eq!(resolve_mode(Some(""), Some("")), Ok(Mode::Auto));
        assert_eq!(resolve_mode(None, Some("true")), Ok(Mode::On));
        assert_eq!(resolve_mode(Some(""), Some("true")), Ok(Mode::On));
        assert_eq!(resolve_mode(Some("on"), Some("true")), Ok(Mode::On));
        assert_eq!(resolve_mode(None, Some("false")), Ok(Mode::Auto));
        assert_eq!(resolve_mode(Some("off"), Some("false")), Ok(Mode::Off));
        assert_eq!(resolve_mode(Some("on"), Some("false")), Ok(Mode::On));
        assert_eq!(resolve_mode(Some("off"), None), Ok(Mode::Off));
        assert!(resolve_mode(Some("off"), Some("true")).is_err());
        assert!(resolve_mode(Some("auto"), Some("true")).is_err());
        assert!(resolve_mode(None, Some("yes")).is_err());
        assert!(resolve_mode(Some("maybe"), None).is_err());
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
