//! The client-facing listener: accepts connections, routes each request, records it (metrics and
//! one access-log line, once its response body has been sent), shuts down gracefully.

pub mod request_line;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntCounter;
use tokio::net::TcpListener;

use crate::artifacts;
use crate::wire::body::{BodyError, ProxyBody};
use crate::wire::error::{FailedSide, ProxyError, Side};

use crate::artifacts::state::App;
use crate::router::{Route, classify_under};

/// What one connection's tasks share: the request lines hyper read (for their fragments), and
/// whether a response body waits on the client to read.
struct Connection {
    seen: request_line::Shared,
    turn: Mutex<Turn>,
    /// Set for every connection when the shutdown grace period ends.
    shutdown_cut: Arc<AtomicBool>,
}

/// Whether the client owes us a read, since when.
struct Turn {
    since: Instant,
    /// A response frame was handed to hyper and hyper has not come back for the next one: the
    /// client is not reading.
    waiting_on_client: bool,
    /// The watchdog ended the connection for it.
    idle_cut: bool,
}

/// Serve until `shutdown` resolves, then let requests in flight finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let shutdown_cut = Arc::new(AtomicBool::new(false));
    let mut connections = tokio::task::JoinSet::new();
    let idle = app.upload.body_idle_timeout;
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Headers and small bodies leave at once instead of waiting on the client's ACK.
        let _ = stream.set_nodelay(true);
        while connections.try_join_next().is_some() {}
        let state = Arc::new(Connection {
            seen: request_line::Shared::default(),
            turn: Mutex::new(Turn {
                since: Instant::now(),
                waiting_on_client: false,
                idle_cut: false,
            }),
            shutdown_cut: shutdown_cut.clone(),
        });
        let app = app.clone();
        let for_service = state.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            let state = for_service.clone();
            let answer: Pin<
                Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
            > = Box::pin(async move { Ok(handle(app, request, remote, state).await) });
            answer
        });
        let io = request_line::Watched::new(stream, state.seen.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(crate::wire::timeouts::HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!("connection from {remote} ended: {e}");
                },
                () = stalled(&state, idle) => {
                    tracing::info!("connection from {remote} closed: the client read nothing for {}s", idle.as_secs());
                }
            }
        });
    }
    drop(listener);
    tracing::info!(
        "shutting down: waiting up to {}s for requests in flight",
        grace.as_secs()
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all requests finished"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; aborting what is still running");
            // Cut what is left now, while the process can still count and log it.
            shutdown_cut.store(true, Ordering::Relaxed);
            connections.abort_all();
            let drained = async { while connections.join_next().await.is_some() {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
            app.abort_open_uploads().await;
        }
    }
}

/// Resolves when a response body has waited `idle` on the client to read; marks the cut.
async fn stalled(state: &Connection, idle: Duration) {
    let check = idle.min(Duration::from_secs(1));
    loop {
        tokio::time::sleep(check).await;
        let mut turn = state.turn.lock().unwrap_or_else(|e| e.into_inner());
        if turn.waiting_on_client && turn.since.elapsed() >= idle {
            turn.idle_cut = true;
            return;
        }
    }
}

/// uvicorn's answer to a request it cannot parse (what stock MLflow sends).
fn invalid_request() -> Response<ProxyBody> {
    let mut response = Response::new(crate::wire::body::full(Bytes::from_static(
        b"Invalid HTTP request received.",
    )));
    *response.status_mut() = http::StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Requests uvicorn refuses before MLflow sees them, refused the same way here.
fn protocol_error<B>(request: &Request<B>) -> Option<Response<ProxyBody>> {
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    // RFC 9112 §3.2: HTTP/1.1 requests carry exactly one Host.
    let host_missing = request.version() == http::Version::HTTP_11 && hosts == 0;
    // h11 knows no transfer coding but `chunked`, alone.
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    let odd_coding = codings.next().is_some_and(|first| {
        !first.as_bytes().eq_ignore_ascii_case(b"chunked") || codings.next().is_some()
    });
    let target_too_long = request.uri().to_string().len() > request_line::MAX_TARGET;
    if host_missing || hosts > 1 || odd_coding || target_too_long {
        return Some(invalid_request());
    }
    if request.method() == Method::CONNECT {
        return Some(
            ProxyError::detail(http::StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
                .into_response(),
        );
    }
    None
}

async fn handle(
    app: Arc<App>,
    mut request: Request<Incoming>,
    remote: SocketAddr,
    connection: Arc<Connection>,
) -> Response<ProxyBody> {
    // hyper dropped a raw `#...`; put it back, so that routes see the path MLflow would.
    if let Some(uri) = request_line::restore(&connection.seen, request.uri()) {
        *request.uri_mut() = uri;
    }
    let refused = protocol_error(&request).or_else(|| app.security.reject_hostless(&request));
    let route = if refused.is_some() {
        Route::PassThrough
    } else {
        classify_under(&request, &app.static_prefix)
    };
    // From here on the exchange is recorded exactly once, whenever and however it ends: if
    // hyper drops this future because the client went away, the record's `Drop` does it.
    let mut record = Record::start(app.clone(), &route, &request);
    record.shutdown_cut = Some(connection.shutdown_cut.clone());

    // Count request bytes as they are read (and as artifact bytes for uploads), and notice a
    // request body that breaks off: its client went away.
    let counted_in = record.bytes_in.clone();
    let request_broke = record.request_broke.clone();
    let upload_bytes = (record.direction == Some(UPLOAD))
        .then(|| app.metrics.artifact_bytes.with_label_values(&[UPLOAD]));
    // Every request body ends after the body idle timeout without a byte (uploads, part PUTs,
    // mpu JSON, pass-through): a client that declares a length and goes silent holds nothing
    // (an S3 or MLflow connection, budget) for longer than that.
    let idle = app.upload.body_idle_timeout;
    let mut request = request.map(move |body| {
        let counted = body
            .map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    counted_in.fetch_add(n, Ordering::Relaxed);
                    if let Some(counter) = &upload_bytes {
                        counter.inc_by(n);
                    }
                }
                frame
            })
            .map_err(move |e| {
                request_broke.store(true, Ordering::Relaxed);
                BodyError(Box::new(e))
            })
            .boxed();
        crate::wire::body::idle_timeout(counted, idle)
    });

    // The peer, for the handlers that trust forwarded headers only from known front proxies.
    request
        .extensions_mut()
        .insert(crate::artifacts::state::public_url::ClientAddr(remote));

    let response = match route {
        _ if refused.is_some() => refused.unwrap_or_else(invalid_request),
        Route::PassThrough => app
            .upstream
            .forward(request, remote)
            .await
            .unwrap_or_else(ProxyError::into_response),
        Route::ServerInfo => app
            .upstream
            .server_info(request, remote, app.transfers.capabilities())
            .await
            .unwrap_or_else(ProxyError::into_response),
        route => artifacts::handle(&app, route, request).await,
    };

    record.status = Some(response.status().as_u16());
    record.failed = response
        .extensions()
        .get::<FailedSide>()
        .map(|f| f.0.as_str());
    // Only an object's bytes are artifact bytes, not the JSON of an error.
    let download_bytes = (record.direction == Some(DOWNLOAD)
        && matches!(response.status().as_u16(), 200 | 206))
    .then(|| app.metrics.artifact_bytes.with_label_values(&[DOWNLOAD]));
    let (parts, body) = response.into_parts();
    let logged = Logged {
        inner: body,
        record: Some(record),
        download_bytes,
        connection,
    };
    Response::from_parts(parts, logged.boxed())
}

const UPLOAD: &str = "upload";
const DOWNLOAD: &str = "download";

/// How an exchange ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The whole answer was handed to the connection (whether the client read it or not).
    Completed,
    /// The answer's body failed on our side (the store or MLflow broke off mid-stream).
    BodyFailed,
    /// The client went away: before the answer, or while its body was being sent.
    ClientGone,
    /// The client read nothing for the body idle timeout; the connection was closed.
    IdleTimeout,
}

/// What is known about one exchange; counted and logged once, when it is dropped: after the
/// response body ended, or when hyper gave up on the connection.
struct Record {
    app: Arc<App>,
    route: &'static str,
    method: Method,
    path: String,
    /// `upload` or `download` for artifact transfers (counted in `transfers_in_flight`).
    direction: Option<&'static str>,
    /// Who produced the response body, to blame if it breaks off: the store or MLflow.
    body_side: Side,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    /// The request body ended in an error: the client stopped sending and went away.
    request_broke: Arc<AtomicBool>,
    bytes_out: u64,
    /// None until the handler has answered.
    status: Option<u16>,
    failed: Option<&'static str>,
    ending: Ending,
    /// Set when the shutdown grace period ended: what was cut then is not the client's doing.
    shutdown_cut: Option<Arc<AtomicBool>>,
}

/// nginx's "client closed request": logged (and counted as 4xx) when no answer was sent.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Record {
    fn start(app: Arc<App>, route: &Route, request: &Request<Incoming>) -> Record {
        let direction = match route {
            Route::Upload { .. } | Route::SignedPart => Some(UPLOAD),
            Route::Download { head: false, .. }
            | Route::SignedObject { head: false }
            | Route::UiDownload { head: false, .. } => Some(DOWNLOAD),
            _ => None,
        };
        if let Some(direction) = direction {
            app.metrics
                .transfers_in_flight
                .with_label_values(&[direction])
                .inc();
        }
        let body_side = match route {
            Route::PassThrough | Route::ServerInfo => Side::Upstream,
            _ => Side::Store,
        };
        Record {
            app,
            route: route.class(),
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            direction,
            body_side,
            started: Instant::now(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            request_broke: Arc::new(AtomicBool::new(false)),
            bytes_out: 0,
            status: None,
            failed: None,
            ending: Ending::ClientGone,
            shutdown_cut: None,
        }
    }

    /// Count and log the exchange (the only place that does); runs once, from `Drop`.
    fn finish(&mut self) {
        let metrics = &self.app.metrics;
        let elapsed = self.started.elapsed();
        let status = self.status.unwrap_or(CLIENT_CLOSED_REQUEST);
        metrics
            .requests
            .with_label_values(&[
                self.route,
                crate::ops::metrics::method_label(&self.method),
                crate::ops::metrics::status_class(status),
            ])
            .inc();
        metrics
            .request_duration
            .with_label_values(&[self.route])
            .observe(elapsed.as_secs_f64());
        let request_broke = self.request_broke.load(Ordering::Relaxed);
        let client = Side::Client.as_str();
        let cut_by_shutdown = self.ending != Ending::Completed
            && self
                .shutdown_cut
                .as_ref()
                .is_some_and(|cut| cut.load(Ordering::Relaxed));
        if cut_by_shutdown {
            self.failed = Some("shutdown");
            metrics.shutdown_cuts.inc();
        } else if self.ending == Ending::IdleTimeout {
            self.failed = Some("idle_timeout");
            metrics
                .body_idle_timeouts
                .with_label_values(&[DOWNLOAD])
                .inc();
        } else if request_broke {
            // Whatever failed next (a pass-through 502, say) followed from the client leaving.
            self.failed = Some(client);
        } else if self.ending == Ending::ClientGone {
            self.failed.get_or_insert(client);
        }
        if !cut_by_shutdown
            && self.ending != Ending::IdleTimeout
            && (request_broke || self.ending == Ending::ClientGone)
        {
            metrics.client_disconnects.inc();
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            route = self.route,
            status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            duration_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            failed = self.failed.unwrap_or("-"),
            completed = self.ending == Ending::Completed && !request_broke,
        );
        // Last, so that a scrape that sees no transfer in flight sees it counted.
        if let Some(direction) = self.direction {
            metrics
                .transfers_in_flight
                .with_label_values(&[direction])
                .dec();
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The response body, counted on its way out; the record goes (and is written) when the body
/// ends, or when hyper drops it because the client went away.
struct Logged {
    inner: ProxyBody,
    record: Option<Record>,
    download_bytes: Option<IntCounter>,
    /// Told when a frame waits on the client, for the idle watchdog.
    connection: Arc<Connection>,
}

impl Logged {
    fn close(&mut self, ending: Ending) {
        if let Some(mut record) = self.record.take() {
            record.ending = ending;
            if ending == Ending::BodyFailed {
                record.failed.get_or_insert(record.body_side.as_str());
            }
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        {
            let mut turn = self
                .connection
                .turn
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            turn.since = Instant::now();
            // hyper polls again once it has written the frame; until then the client owes a read.
            turn.waiting_on_client = matches!(polled, Poll::Ready(Some(Ok(_))));
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if let Some(record) = &mut self.record {
                        record.bytes_out += n;
                    }
                    if let Some(counter) = &self.download_bytes {
                        counter.inc_by(n);
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!("response body failed: {e}");
                self.close(Ending::BodyFailed);
            }
            Poll::Ready(None) => self.close(Ending::Completed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let mut turn = self
            .connection
            .turn
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        turn.waiting_on_client = false;
        let idle_cut = std::mem::take(&mut turn.idle_cut);
        drop(turn);
        // An empty body may never be polled: it ended, it was not cut off.
        let ending = if self.inner.is_end_stream() {
            Ending::Completed
        } else if idle_cut {
            Ending::IdleTimeout
        } else {
            Ending::ClientGone
        };
        self.close(ending);
    }
}
