//! Every wait on a peer has an end: how long S3 and MLflow may take to answer, how long a client
//! may leave a download unread. The settings, and the one function that sends a request to S3 or
//! MLflow under them.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::Connect;

use crate::wire::body::{BodyError, ProxyBody};

#[derive(Clone, Debug, Args)]
pub struct TimeoutArgs {
    /// How long S3 may take to start its answer (its response headers) once it has the whole
    /// request; also how long it may leave an upload body unread. List, HEAD and delete calls
    /// must be answered in full within it. A store that exceeds it gets a 504.
    #[arg(long, env = "PROXY_S3_TIMEOUT_SECS", default_value_t = 60)]
    pub s3_timeout_secs: u64,
    /// How long MLflow may take to start its answer once it has the whole request (and may leave
    /// a request body unread). Generous: some MLflow calls (large searches, gateway calls) are
    /// slow. Exceeded: 504.
    #[arg(long, env = "PROXY_UPSTREAM_TIMEOUT_SECS", default_value_t = 300)]
    pub upstream_timeout_secs: u64,
}

/// The settings, checked.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub s3: Duration,
    pub upstream: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            s3: Duration::from_secs(60),
            upstream: Duration::from_secs(300),
        }
    }
}

impl TimeoutArgs {
    pub fn build(&self) -> Result<Timeouts, String> {
        if self.s3_timeout_secs == 0 || self.upstream_timeout_secs == 0 {
            return Err(
                "PROXY_S3_TIMEOUT_SECS and PROXY_UPSTREAM_TIMEOUT_SECS must be at least 1".into(),
            );
        }
        Ok(Timeouts {
            s3: Duration::from_secs(self.s3_timeout_secs),
            upstream: Duration::from_secs(self.upstream_timeout_secs),
        })
    }
}

/// Why a request to S3 or MLflow got no answer.
#[derive(Debug)]
pub enum SendError {
    /// hyper's own error (connect refused, connection reset, ...).
    Http(hyper_util::client::legacy::Error),
    /// The peer went silent: it did not read our body, or did not answer in time.
    TimedOut(Duration),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Http(e) => e.fmt(f),
            SendError::TimedOut(d) => write!(f, "no answer within {} s", d.as_secs()),
        }
    }
}

/// Send `request` and wait for the response headers. The wait has two clocks, both `limit`:
/// while the request body is being sent, the peer must take each frame within `limit` of the
/// previous one (a body that our own client is slow to deliver does not count against it);
/// once the body is sent, the answer must begin within `limit`.
pub async fn send<C>(
    client: &Client<C, ProxyBody>,
    request: Request<ProxyBody>,
    limit: Duration,
) -> Result<Response<Incoming>, SendError>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let progress = Arc::new(Mutex::new(Progress {
        since: Instant::now(),
        waiting_on_peer: true,
    }));
    let request = request.map(|body| {
        Watched {
            inner: body,
            progress: progress.clone(),
        }
        .boxed()
    });
    let answer = client.request(request);
    let mut answer = std::pin::pin!(answer);
    loop {
        let deadline = {
            let progress = progress.lock().unwrap_or_else(|e| e.into_inner());
            progress.waiting_on_peer.then(|| progress.since + limit)
        };
        // While our own client is slow to deliver a frame, look again a little later.
        let wake = deadline.unwrap_or_else(|| Instant::now() + limit.min(Duration::from_secs(1)));
        tokio::select! {
            result = &mut answer => return result.map_err(SendError::Http),
            () = tokio::time::sleep_until(wake.into()) => {
                let progress = progress.lock().unwrap_or_else(|e| e.into_inner());
                if progress.waiting_on_peer && progress.since.elapsed() >= limit {
                    return Err(SendError::TimedOut(limit));
                }
            }
        }
    }
}

/// Who the exchange is waiting on, since when.
struct Progress {
    since: Instant,
    /// True while the peer holds the turn: it has not taken our last frame yet, or it has the
    /// whole body and owes the answer. False while we wait for our own client's next frame.
    waiting_on_peer: bool,
}

/// A request body that notes when the peer takes a frame and when our source makes it wait.
struct Watched {
    inner: ProxyBody,
    progress: Arc<Mutex<Progress>>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut progress = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        // Being polled means the peer took what we gave it: its turn ends either way.
        progress.since = Instant::now();
        progress.waiting_on_peer = !polled.is_pending();
        drop(progress);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a client may take to send a request's headers (main and operations ports).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_refused() {
        let args = TimeoutArgs {
            s3_timeout_secs: 0,
            upstream_timeout_secs: 5,
        };
        assert!(args.build().is_err());
    }
}
