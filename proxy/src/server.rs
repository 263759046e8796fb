//! The client-facing listener: accepts connections, routes each request, records it (metrics and
//! one access-log line, once its response body has been sent), shuts down gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::error::{FailedSide, ProxyError};
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
    let started = Instant::now();
    let route = classify(&request);
    let record = Record {
        app: app.clone(),
        route: route.class(),
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        started,
        bytes_in: Arc::new(AtomicU64::new(0)),
        bytes_out: 0,
        status: 0,
        failed: None,
        completed: false,
    };
    let direction = match &route {
        Route::Upload { .. } => Some("upload"),
        Route::Download { head: false, .. } => Some("download"),
        _ => None,
    };
    if let Some(direction) = direction {
        app.metrics
            .transfers_in_flight
            .with_label_values(&[direction])
            .inc();
    }

    // Count request bytes as they are read (and as artifact bytes for uploads).
    let counted_in = record.bytes_in.clone();
    let upload_bytes = (direction == Some("upload"))
        .then(|| app.metrics.artifact_bytes.with_label_values(&["upload"]));
    let request = request.map(move |body| {
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
        .map_err(|e| BodyError(Box::new(e)))
        .boxed()
    });

    let response = match route {
        Route::PassThrough => app
            .upstream
            .forward(request, remote)
            .await
            .unwrap_or_else(ProxyError::into_response),
        Route::ServerInfo => app
            .upstream
            .server_info(request, remote)
            .await
            .unwrap_or_else(ProxyError::into_response),
        route => artifacts::handle(&app, route, request).await,
    };

    let download_bytes = (direction == Some("download"))
        .then(|| app.metrics.artifact_bytes.with_label_values(&["download"]));
    let mut record = record;
    record.status = response.status().as_u16();
    record.failed = response
        .extensions()
        .get::<FailedSide>()
        .map(|f| f.0.as_str());
    let (parts, body) = response.into_parts();
    let logged = Logged {
        inner: body,
        record: Some(record),
        direction,
        download_bytes,
    };
    Response::from_parts(parts, logged.boxed())
}

/// What is known about one exchange; logged and counted when its response body is done.
struct Record {
    app: Arc<App>,
    route: &'static str,
    method: Method,
    path: String,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    status: u16,
    failed: Option<&'static str>,
    completed: bool,
}

impl Record {
    fn finish(self) {
        let metrics = &self.app.metrics;
        let status_class = match self.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        metrics
            .requests
            .with_label_values(&[self.route, self.method.as_str(), status_class])
            .inc();
        let elapsed = self.started.elapsed();
        metrics
            .request_duration
            .with_label_values(&[self.route])
            .observe(elapsed.as_secs_f64());
        if !self.completed {
            metrics.client_disconnects.inc();
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            route = self.route,
            status = self.status,
            bytes_in = self.bytes_in.load(Ordering::Relaxed),
            bytes_out = self.bytes_out,
            duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            failed = self.failed.unwrap_or("-"),
            completed = self.completed,
        );
    }
}

/// The response body, counted on its way out; the exchange is recorded when it ends, or when
/// hyper drops it because the client went away.
struct Logged {
    inner: ProxyBody,
    record: Option<Record>,
    direction: Option<&'static str>,
    download_bytes: Option<IntCounter>,
}

impl Logged {
    fn close(&mut self, completed: bool) {
        if let Some(mut record) = self.record.take() {
            record.completed = completed;
            if let Some(direction) = self.direction {
                record
                    .app
                    .metrics
                    .transfers_in_flight
                    .with_label_values(&[direction])
                    .dec();
            }
            record.finish();
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
                if let Some(record) = &mut self.record {
                    record.failed.get_or_insert("store");
                }
                self.close(false);
            }
            Poll::Ready(None) => self.close(true),
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
        let ended = self.inner.is_end_stream();
        self.close(ended);
    }
}
