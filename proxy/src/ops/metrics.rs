//! Prometheus metrics (one registry, prefix `mlflow_proxy_`) and the operations listener that
//! serves them with /healthz and /readyz, apart from MLflow's URL space on the main port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::wire::body::{ProxyBody, full};

const PREFIX: &str = "mlflow_proxy";

/// Latency buckets from 1 ms to 10 minutes: small JSON calls and multi-GiB transfers alike.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The methods a label may name; anything else is counted as `_OTHER`, so that a client cannot
/// create series at will (OpenTelemetry's rule for `http.request.method`).
const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The `method` label for a request method.
pub fn method_label(method: &http::Method) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == method.as_str())
        .copied()
        .unwrap_or("_OTHER")
}

/// The `status` label: the status class, `2xx` ... `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Cheap to clone: every field is a handle into the one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub artifact_bytes: IntCounterVec,
    pub transfers_in_flight: IntGaugeVec,
    pub upload_budget_in_use: IntGauge,
    pub upload_budget_capacity: IntGauge,
    pub s3_requests: IntCounterVec,
    pub s3_duration: HistogramVec,
    pub multipart_uploads: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub client_disconnects: IntCounter,
    // MLflow's auth on the artifact routes (auth module).
    pub auth_decisions: IntCounterVec,
    pub auth_mlflow_duration: HistogramVec,
    pub auth_state: IntGaugeVec,
    pub auth_cache_entries: IntGauge,
    pub body_idle_timeouts: IntCounterVec,
    pub shutdown_cuts: IntCounter,
    pub multipart_aborts_pending: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

fn histogram(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(PREFIX)
        .buckets(DURATION_BUCKETS.to_vec())
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            opts(
                "http_server_requests_total",
                "Client requests finished, by route class, method and status class (499: the client went away before the answer).",
            ),
            &["route", "method", "status"],
        )
        .expect("static metric definition");
        let request_duration = HistogramVec::new(
            histogram(
                "http_server_request_duration_seconds",
                "Time from a request's headers to its last response byte (or to the client going away), by route class.",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let artifact_bytes = IntCounterVec::new(
            opts(
                "artifact_bytes_total",
                "Artifact bytes moved, by direction: upload = read from clients on the upload route, download = object bytes sent to clients.",
            ),
            &["direction"],
        )
        .expect("static metric definition");
        let transfers_in_flight = IntGaugeVec::new(
            opts(
                "transfers_in_flight",
                "Artifact uploads and downloads (GET) in progress, by direction.",
            ),
            &["direction"],
        )
        .expect("static metric definition");
        let upload_budget_in_use = IntGauge::with_opts(opts(
            "upload_budget_in_use_bytes",
            "Bytes of the upload part budget currently held by parts in memory.",
        ))
        .expect("static metric definition");
        let upload_budget_capacity = IntGauge::with_opts(opts(
            "upload_budget_capacity_bytes",
            "The upload part budget (PROXY_UPLOAD_BUDGET_MIB), in bytes.",
        ))
        .expect("static metric definition");
        let s3_requests = IntCounterVec::new(
            opts(
                "s3_requests_total",
                "S3 operations, by operation and outcome (error = unreachable, or S3 refused the call; a missing object is ok).",
            ),
            &["operation", "outcome"],
        )
        .expect("static metric definition");
        let s3_duration = HistogramVec::new(
            histogram(
                "s3_request_duration_seconds",
                "S3 operation duration, by operation: until the response headers for get_object, until the stored answer for the others.",
            ),
            &["operation"],
        )
        .expect("static metric definition");
        let multipart_uploads = IntCounterVec::new(
            opts(
                "multipart_uploads_total",
                "Multipart uploads, by event (started, completed, aborted; swept = an abandoned upload older than PROXY_STALE_UPLOAD_AGE_HOURS aborted by the sweep).",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let upstream_requests = IntCounterVec::new(
            opts(
                "upstream_requests_total",
                "Requests passed to MLflow, by outcome (ok = any HTTP answer, error = no answer; retried = a safe, bodiless request sent again once because its kept-alive connection broke before the answer).",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let upstream_duration = HistogramVec::new(
            histogram(
                "upstream_request_duration_seconds",
                "Time until MLflow's response headers, by outcome.",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let client_disconnects = IntCounter::with_opts(opts(
            "client_disconnects_total",
            "Requests whose client went away before the whole answer was sent.",
        ))
        .expect("static metric definition");
        // --- MLflow's auth on the artifact routes (auth module)
        let auth_decisions = IntCounterVec::new(
            opts(
                "auth_decisions_total",
                "Artifact requests checked against MLflow's auth app, by outcome (allowed, 401, 403, error = MLflow could not be asked: refused) and source (mlflow = asked, cache = a recent answer).",
            ),
            &["outcome", "source"],
        )
        .expect("static metric definition");
        let auth_mlflow_duration = HistogramVec::new(
            histogram(
                "auth_mlflow_request_duration_seconds",
                "Time asking MLflow's auth app, by question (list, mpu_abort, delete, presigned, users_current: the probes; detect: whether the auth app is on).",
            ),
            &["probe"],
        )
        .expect("static metric definition");
        let auth_state = IntGaugeVec::new(
            opts(
                "auth_mlflow_state",
                "1 for what the proxy knows of MLflow's auth app: on, off, or unknown (artifact requests refused).",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let auth_cache_entries = IntGauge::with_opts(opts(
            "auth_cache_entries",
            "Answers of MLflow's auth app currently remembered (PROXY_MLFLOW_AUTH_CACHE_SIZE bounds it).",
        ))
        .expect("static metric definition");
        for outcome in ["allowed", "401", "403", "error"] {
            for source in ["mlflow", "cache"] {
                auth_decisions.with_label_values(&[outcome, source]);
            }
        }
        for state in ["on", "off", "unknown"] {
            auth_state.with_label_values(&[state]);
        }

        let body_idle_timeouts = IntCounterVec::new(
            opts(
                "body_idle_timeouts_total",
                "Transfers ended because the client sent (upload: any request body) or read (download) nothing for PROXY_BODY_IDLE_TIMEOUT_SECS, by direction.",
            ),
            &["direction"],
        )
        .expect("static metric definition");
        let shutdown_cuts = IntCounter::with_opts(opts(
            "shutdown_cut_requests_total",
            "Requests still running when the shutdown grace period (PROXY_SHUTDOWN_GRACE_SECS) ended, and cut off.",
        ))
        .expect("static metric definition");
        let multipart_aborts_pending = IntGauge::with_opts(opts(
            "multipart_aborts_pending",
            "Multipart uploads whose abort failed (S3 down) and is being retried.",
        ))
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            opts(
                "build_info",
                "Always 1; the proxy's version in the version label.",
            ),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        // Series with a fixed set of labels exist from the start, at 0, so that rates and
        // ratios over them are defined before the first event (a missing series is no zero).
        for direction in ["upload", "download"] {
            artifact_bytes.with_label_values(&[direction]);
            transfers_in_flight.with_label_values(&[direction]);
            body_idle_timeouts.with_label_values(&[direction]);
        }
        for event in ["started", "completed", "aborted", "swept"] {
            multipart_uploads.with_label_values(&[event]);
        }
        for outcome in ["ok", "error", "retried"] {
            upstream_requests.with_label_values(&[outcome]);
        }

        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(requests.clone()),
            Box::new(request_duration.clone()),
            Box::new(artifact_bytes.clone()),
            Box::new(transfers_in_flight.clone()),
            Box::new(upload_budget_in_use.clone()),
            Box::new(upload_budget_capacity.clone()),
            Box::new(s3_requests.clone()),
            Box::new(s3_duration.clone()),
            Box::new(multipart_uploads.clone()),
            Box::new(upstream_requests.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(client_disconnects.clone()),
            Box::new(body_idle_timeouts.clone()),
            Box::new(shutdown_cuts.clone()),
            Box::new(multipart_aborts_pending.clone()),
            Box::new(build_info),
            Box::new(auth_decisions.clone()),
            Box::new(auth_mlflow_duration.clone()),
            Box::new(auth_state.clone()),
            Box::new(auth_cache_entries.clone()),
            #[cfg(target_os = "linux")]
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            requests,
            request_duration,
            artifact_bytes,
            transfers_in_flight,
            upload_budget_in_use,
            upload_budget_capacity,
            s3_requests,
            s3_duration,
            multipart_uploads,
            upstream_requests,
            upstream_duration,
            client_disconnects,
            auth_decisions,
            auth_mlflow_duration,
            auth_state,
            auth_cache_entries,
            body_idle_timeouts,
            shutdown_cuts,
            multipart_aborts_pending,
        }
    }

    pub fn record_s3(&self, operation: &'static str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.s3_requests
            .with_label_values(&[operation, outcome])
            .inc();
        self.s3_duration
            .with_label_values(&[operation])
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_upstream(&self, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.upstream_requests.with_label_values(&[outcome]).inc();
        self.upstream_duration
            .with_label_values(&[outcome])
            .observe(elapsed.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!("encoding metrics failed: {e}");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Answers /readyz. Plain `/readyz` depends on the proxy alone (started, not draining, not
/// refused by MLflow for a reason that waiting does not clear), so that an MLflow or S3 outage
/// does not pull every proxy out of a load balancer; `/readyz?deep=1` also checks each
/// dependency, as a one-line JSON verdict.
pub trait ReadinessProbe: Send + Sync + 'static {
    /// True once shutdown has begun: the load balancer must stop sending new requests.
    fn draining(&self) -> bool;
    /// Err while the proxy refuses artifact requests for a reason of its configuration (MLflow
    /// refuses its questions), named in the verdict as `mlflow_auth`.
    fn configured(&self) -> Result<(), String>;
    fn probe(&self) -> impl Future<Output = Vec<(&'static str, Result<(), String>)>> + Send;
}

/// Serve /metrics, /healthz and /readyz until the process ends.
pub async fn serve_operations<P: ReadinessProbe>(
    listener: TcpListener,
    metrics: Metrics,
    probe: Arc<P>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("operations listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let metrics = metrics.clone();
        let probe = probe.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                let probe = probe.clone();
                async move {
                    Ok::<_, Infallible>(operations_response(&request, &metrics, &*probe).await)
                }
            });
            // The same header timeout as the main port: a silent client cannot hold a task.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(crate::wire::timeouts::HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn operations_response<P: ReadinessProbe>(
    request: &Request<Incoming>,
    metrics: &Metrics,
    probe: &P,
) -> Response<ProxyBody> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (
            StatusCode::OK,
            "application/json",
            "{\"status\":\"ok\"}\n".to_owned(),
        ),
        "/readyz" => readiness(request, probe).await,
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz\n".to_owned(),
        ),
    };
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// `/readyz` (local) or `/readyz?deep=1` (S3 and MLflow too): status and one line of JSON.
async fn readiness<P: ReadinessProbe>(
    request: &Request<Incoming>,
    probe: &P,
) -> (StatusCode, &'static str, String) {
    let deep = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "deep=1" || pair == "deep=true")
    });
    let draining = probe.draining();
    let mut verdict = serde_json::Map::new();
    let mut ready = !draining;
    verdict.insert("ready".into(), ready.into());
    if draining {
        verdict.insert("draining".into(), true.into());
    }
    if let Err(reason) = probe.configured() {
        ready = false;
        verdict.insert("ready".into(), false.into());
        verdict.insert("mlflow_auth".into(), reason.into());
    }
    if deep {
        for (name, result) in probe.probe().await {
            let text = match result {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    ready = false;
                    format!("error: {e}")
                }
            };
            verdict.insert(name.into(), text.into());
        }
        verdict.insert("ready".into(), ready.into());
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        "application/json",
        format!("{}\n", serde_json::Value::Object(verdict)),
    )
}
