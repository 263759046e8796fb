//! How the proxy holds its connections to MLflow: a bounded pool of kept-alive connections.
//!
//! A fresh connection per request left one socket in TIME_WAIT per request on the proxy's side
//! (1,200 requests → 1,231 TIME_WAIT); at a few hundred requests per second across a pod network
//! that exhausts the ephemeral ports in about a minute. Kept-alive connections do not, and with
//! `TCP_QUICKACK` re-armed after every read (`quickack`) they do not bring back uvicorn's 40 ms
//! Nagle/delayed-ACK stall either. Three bounds:
//! - at most [`MAX_IDLE`] idle connections are kept; a burst above that opens extra connections
//!   that close after their response;
//! - an idle connection is dropped after [`IDLE_TIMEOUT`], well before uvicorn closes it (its
//!   keep-alive timeout is 5 s), so that a request is never written onto a connection the server
//!   is closing (hyper retries the rare one that was not yet written);
//! - a connection is retired after [`LIFETIME`], so that behind a Service with several MLflow
//!   pods the load rebalances after a scale-out or a restart instead of staying pinned.

use std::time::Duration;

use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{CaptureConnection, HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::quickack::{OpenedAt, QuickAckConnector};

pub const MAX_IDLE: usize = 32;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
pub const LIFETIME: Duration = Duration::from_secs(60);

/// The client every upstream request goes through.
pub fn client(connector: HttpConnector) -> Client<QuickAckConnector, ProxyBody> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(QuickAckConnector(connector))
}

/// Follows one request's connection, to retire it once it is older than [`LIFETIME`].
pub struct Retire(CaptureConnection);

impl Retire {
    pub fn watch<B>(request: &mut Request<B>) -> Retire {
        Retire(capture_connection(request))
    }

    /// After the response head: a connection past its lifetime goes back to the pool poisoned,
    /// so it closes once this response is done instead of serving another.
    pub fn after<B>(self, response: &Response<B>) {
        let old = response
            .extensions()
            .get::<OpenedAt>()
            .is_some_and(|opened| opened.0.elapsed() >= LIFETIME);
        if old && let Some(connection) = self.0.connection_metadata().as_ref() {
            connection.poison();
        }
    }
}
