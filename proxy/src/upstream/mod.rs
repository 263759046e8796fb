//! MLflow behind the proxy: the pass-through (here), its connections (`pool`, `quickack`), the
//! forwarding headers it trusts, and the proxy's own questions (`ask`, `capabilities`, `workspaces`).
//!
//! Everything that is not an artifact route streams through to the MLflow server unchanged:
//! bodies are handed over frame by frame, the client's Host is kept (MLflow's allowed-hosts check
//! must see what it would see without us), hop-by-hop headers are dropped.

pub mod ask;
pub mod capabilities;
pub mod forwarding;
pub mod pool;
mod quickack;
pub mod workspaces;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::ops::metrics::Metrics;
use crate::upstream::forwarding::TrustedProxies;
use crate::upstream::quickack::QuickAckConnector;
use crate::wire::body::{ProxyBody, boxed, empty, full};
use crate::wire::error::{ProxyError, Side};
use crate::wire::timeouts::SendError;
use pool::PoolConfig;

/// server-info is a small JSON document; anything larger is passed on untouched.
const SERVER_INFO_LIMIT: usize = 1024 * 1024;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a client's `Connection` list may not remove: MLflow's Host and Origin checks must see
/// them, and the body's framing must stay as sent.
const NEVER_HOP_BY_HOP: &[HeaderName] = &[header::HOST, header::ORIGIN, header::CONTENT_LENGTH];

/// What it takes to send a request again: only a GET, HEAD or OPTIONS without a body, which
/// RFC 9110 §9.2.2 lets a client repeat when its connection fails before the answer.
struct Replay {
    method: http::Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(request: &Request<ProxyBody>) -> Option<Replay> {
        let safe = matches!(
            *request.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
        );
        (safe && http_body::Body::is_end_stream(request.body())).then(|| Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(self) -> Request<ProxyBody> {
        let mut request = Request::new(empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

/// Whether the connection broke before MLflow began an answer (closed, reset, or cancelled as
/// hyper picked it): not a refused connect, not a malformed answer, not a timeout.
fn dropped_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(io.kind(), ConnectionReset | ConnectionAborted | BrokenPipe);
        }
        source = err.source();
    }
    false
}

pub struct Upstream {
    base: Uri,
    client: Client<QuickAckConnector, ProxyBody>,
    metrics: Metrics,
    /// How long MLflow may take to answer (see `timeouts::send`).
    timeout: Duration,
    trusted: TrustedProxies,
    pool: PoolConfig,
}

impl Upstream {
    pub fn new(
        base: Uri,
        metrics: Metrics,
        timeout: Duration,
        trusted: TrustedProxies,
        pool: PoolConfig,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = pool::client(connector, pool);
        Upstream {
            base,
            client,
            metrics,
            timeout,
            trusted,
            pool,
        }
    }

    fn target(&self, uri: &Uri) -> Result<Uri, ProxyError> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = uri.path_and_query().cloned();
        Uri::from_parts(parts).map_err(|e| ProxyError::internal(format!("upstream URI: {e}")))
    }

    /// Send the request to MLflow and return its response with the body still streaming.
    pub async fn forward(
        &self,
        mut request: Request<ProxyBody>,
        client: SocketAddr,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        *request.uri_mut() = self.target(request.uri())?;
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        // hyper answers the client's 100-continue itself; the upstream need not see it.
        headers.remove(header::EXPECT);
        self.trusted.apply(headers, client);

        // Tells a client whose body broke off, or went silent for the idle timeout (server.rs),
        // from an upstream that failed.
        let client_failed = Arc::new(AtomicBool::new(false));
        let client_idle = Arc::new(AtomicBool::new(false));
        let (flag, idle) = (client_failed.clone(), client_idle.clone());
        let mut request = request.map(|body| {
            body.map_err(move |e| {
                flag.store(true, Ordering::Relaxed);
                idle.store(e.is_idle_timeout(), Ordering::Relaxed);
                e
            })
            .boxed()
        });

        let started = Instant::now();
        let replay = Replay::of(&request);
        let retire = pool::Retire::watch(&mut request, &self.pool);
        let mut result = crate::wire::timeouts::send(&self.client, request, self.timeout).await;
        if let Ok(response) = &result {
            retire.after(response);
        }
        // A kept-alive connection MLflow closed as we picked it (uvicorn closes one after an
        // unhandled exception, for instance): a browser talking to stock would send a safe,
        // bodiless request again on a new connection, so the proxy does too, once.
        if let (Err(SendError::Http(e)), Some(replay)) = (&result, replay)
            && dropped_before_answer(e)
        {
            tracing::info!(
                "MLflow upstream {}: {e}; sending the request again",
                self.base
            );
            self.metrics
                .upstream_requests
                .with_label_values(&["retried"])
                .inc();
            let mut again = replay.request();
            let retire = pool::Retire::watch(&mut again, &self.pool);
            result = crate::wire::timeouts::send(&self.client, again, self.timeout).await;
            if let Ok(response) = &result {
                retire.after(response);
            }
        }
        if client_idle.load(Ordering::Relaxed) {
            self.metrics
                .body_idle_timeouts
                .with_label_values(&["upload"])
                .inc();
            return Err(ProxyError::body_stalled("The request body stalled"));
        }
        if client_failed.load(Ordering::Relaxed) {
            return Err(ProxyError::mlflow(
                Side::Client,
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "The request body ended early",
            ));
        }
        self.metrics
            .record_upstream(result.is_ok(), started.elapsed());
        // MLflow's address stays in the log; the client learns only what happened.
        let response = result.map_err(|e| {
            tracing::warn!("MLflow upstream {}: {e}", self.base);
            match e {
                SendError::TimedOut(_) => ProxyError::timed_out(
                    Side::Upstream,
                    "The MLflow server did not answer in time",
                ),
                SendError::Http(_) => ProxyError::upstream("The MLflow server did not answer"),
            }
        })?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, boxed(body)))
    }

    /// Pass server-info through, with the transfer flags saying what the proxy offers (MLflow's
    /// own would send clients straight to S3, which they may not reach). `capabilities`:
    /// (multipart uploads, multipart downloads). Keys MLflow does not send (3.17 has no
    /// `model_artifact_presigned_downloads_supported`) are not added: its clients read what
    /// they read from stock.
    pub async fn server_info(
        &self,
        request: Request<ProxyBody>,
        client: SocketAddr,
        capabilities: (bool, bool),
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let response = self.forward(request, client).await?;
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if response.status() != StatusCode::OK || !is_json {
            return Ok(response);
        }
        let (mut parts, body) = response.into_parts();
        let bytes = Limited::new(body, SERVER_INFO_LIMIT)
            .collect()
            .await
            .map_err(|e| ProxyError::upstream(format!("reading server-info: {e}")))?
            .to_bytes();
        let rewritten = rewrite_server_info(&bytes, capabilities).unwrap_or(bytes);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, rewritten.len().into());
        Ok(Response::from_parts(parts, full(rewritten)))
    }

    /// Whether MLflow answers (for /readyz): its `/health`, under its static prefix.
    pub async fn check(&self, static_prefix: &str) -> Result<(), String> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{static_prefix}/health")
                .parse()
                .map_err(|e| format!("health URI: {e}"))?,
        );
        let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
        let request = Request::get(uri)
            .header(header::HOST, "localhost")
            .body(crate::wire::body::empty())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(3), self.client.request(request))
            .await
            .map_err(|_| "no answer within 3 s".to_owned())?
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "{static_prefix}/health answered {}",
                response.status()
            ))
        }
    }
}

fn rewrite_server_info(bytes: &Bytes, (uploads, downloads): (bool, bool)) -> Option<Bytes> {
    let mut info: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let object = info.as_object_mut()?;
    for (flag, on) in [
        ("multipart_uploads_enabled", uploads),
        ("multipart_downloads_enabled", downloads),
        // MLflow 3.18: the UI asks `model-versions/get-artifact` and the logged-model files
        // route for `presigned=true` URLs. The proxy answers those itself (`ui_routes`: a URL on
        // the proxy); off still, because what MLflow answers for a location the proxy leaves to it
        // (not under the destination) is a URL on that store. The UI then downloads through
        // port 5000 (and, with multipart downloads on, through the proxy's presigned route).
        ("model_artifact_presigned_downloads_supported", false),
    ] {
        if object.contains_key(flag) {
            object.insert(flag.to_owned(), on.into());
        }
    }
    serde_json::to_vec(&info).ok().map(Bytes::from)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !NEVER_HOP_BY_HOP.contains(&name) {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn server_info_of_mlflow_3_18() {
        let input = Bytes::from_static(
            br#"{"store_type":"SqlStore","workspaces_enabled":true,"multipart_uploads_enabled":false,"multipart_downloads_enabled":false,"artifact_serving_enabled":true,"presigned_upload_run_id_supported":true,"model_artifact_presigned_downloads_supported":true,"artifacts_presigned_only":true}"#,
        );
        let output = rewrite_server_info(&input, (true, true)).unwrap();
        assert_eq!(
            std::str::from_utf8(&output).unwrap(),
            r#"{"store_type":"SqlStore","workspaces_enabled":true,"multipart_uploads_enabled":true,"multipart_downloads_enabled":true,"artifact_serving_enabled":true,"presigned_upload_run_id_supported":true,"model_artifact_presigned_downloads_supported":false,"artifacts_presigned_only":true}"#
        );
    }

    #[test]
    fn server_info_flags_say_what_the_proxy_offers() {
        let input = Bytes::from_static(
            br#"{"store_type":"SqlStore","multipart_uploads_enabled":false,"multipart_downloads_enabled":true,"artifact_serving_enabled":true}"#,
        );
        let output = rewrite_server_info(&input, (true, false)).unwrap();
        assert_eq!(
            std::str::from_utf8(&output).unwrap(),
            r#"{"store_type":"SqlStore","multipart_uploads_enabled":true,"multipart_downloads_enabled":false,"artifact_serving_enabled":true}"#
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        headers.insert("x-custom", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("example:5000"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[header::HOST], "example:5000");
    }

    #[test]
    fn connection_cannot_remove_host_origin_or_length() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("host, Origin, content-length"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("example:5000"));
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 3);
    }
}
