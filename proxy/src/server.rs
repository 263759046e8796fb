//! The client-facing listener: accepts connections, routes each request, records it (metrics and
//! one access-log line, once its response body has been sent), shuts down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntCounter;
use tokio::net::TcpListener;

use crate::artifacts;
use crate::body::{BodyError, ProxyBody};
use crate::error::{FailedSide, ProxyError, Side};
use crate::router::{Route, classify};
use crate::state::App;

/// Serve until `shutdown` resolves, then let requests in flight finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
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
        let app = app.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            let answer: Pin<
                Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>,
            > = Box::pin(async move { Ok(handle(app, request, remote).await) });
            answer
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {remote} ended: {e}");
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
            app.abort_open_uploads().await;
        }
    }
}

async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
    remote: SocketAddr,
) -> Response<ProxyBody> {
    let route = classify(&request);
    // From here on the exchange is recorded exactly once, whenever and however it ends: if
    // hyper drops this future because the client went away, the record's `Drop` does it.
    let mut record = Record::start(app.clone(), &route, &request);

    // Count request bytes as they are read (and as artifact bytes for uploads), and notice a
    // request body that breaks off: its client went away.
    let counted_in = record.bytes_in.clone();
    let request_broke = record.request_broke.clone();
    let upload_bytes = (record.direction == Some(UPLOAD))
        .then(|| app.metrics.artifact_bytes.with_label_values(&[UPLOAD]));
    let mut request = request.map(move |body| {
        body.map_frame(move |frame| {
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
        .boxed()
    });

    // The peer, for the handlers that trust forwarded headers only from known front proxies.
    request
        .extensions_mut()
        .insert(crate::public_url::ClientAddr(remote));

    let response = match route {
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
}

/// nginx's "client closed request": logged (and counted as 4xx) when no answer was sent.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Record {
    fn start(app: Arc<App>, route: &Route, request: &Request<Incoming>) -> Record {
        let direction = match route {
            Route::Upload { .. } | Route::SignedPart => Some(UPLOAD),
            Route::Download { head: false, .. } | Route::SignedObject { head: false } => {
                Some(DOWNLOAD)
            }
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
                crate::metrics::method_label(&self.method),
                crate::metrics::status_class(status),
            ])
            .inc();
        metrics
            .request_duration
            .with_label_values(&[self.route])
            .observe(elapsed.as_secs_f64());
        let request_broke = self.request_broke.load(Ordering::Relaxed);
        let client = Side::Client.as_str();
        if request_broke {
            // Whatever failed next (a pass-through 502, say) followed from the client leaving.
            self.failed = Some(client);
        } else if self.ending == Ending::ClientGone {
            self.failed.get_or_insert(client);
        }
        if request_broke || self.ending == Ending::ClientGone {
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
        // An empty body may never be polled: it ended, it was not cut off.
        let ending = if self.inner.is_end_stream() {
            Ending::Completed
        } else {
            Ending::ClientGone
        };
        self.close(ending);
    }
}
