//! How the proxy holds its connections to MLflow: a bounded pool of kept-alive connections, each
//! retired after a short, randomly spread lifetime.
//!
//! A fresh connection per request left one socket in TIME_WAIT per request on the proxy's side
//! (1,200 requests → 1,231 TIME_WAIT); at a few hundred requests per second across a pod network
//! that exhausts the ephemeral ports in about a minute. Kept-alive connections do not, and with
//! `TCP_QUICKACK` re-armed after every read and write (`quickack`) they do not bring back
//! uvicorn's 40 ms Nagle/delayed-ACK stall either (no pile of requests at 40–50 ms in
//! `scripts/passthrough-load --histogram`). What made the first version of this pool slower than
//! fresh connections at 8 clients / 150 req/s was pinning: each uvicorn worker accepts
//! connections on its own, one worker often takes a whole burst of new ones (8 kept-alive
//! clients straight to MLflow all sat on one of its 4 workers), and a kept-alive connection stays
//! on its worker for its life. Over a 60 s life the busiest worker did 2–4 times the work of
//! the idlest; a fresh connection is taken by whichever worker is free. So connections live
//! [`LIFETIME`] ± 50% (a random draw per connection, so that connections opened together do
//! not retire together): placement is re-drawn every few seconds, at the cost of a few
//! TIME_WAIT sockets per second, not one per request. Figures: docs/kubernetes.md.
//!
//! The bounds:
//! - at most [`MAX_IDLE`] idle connections are kept; a burst above that opens extra connections
//!   that close after their response;
//! - an idle connection is dropped after [`IDLE_TIMEOUT`] (`PROXY_UPSTREAM_IDLE_TIMEOUT_SECS`),
//!   well before uvicorn closes it (its keep-alive timeout is 5 s), so that a request is never
//!   written onto a connection the server is closing (hyper retries the rare one that was not
//!   yet written);
//! - a connection is retired after its lifetime (see above; `PROXY_UPSTREAM_LIFETIME_SECS`),
//!   which also rebalances the load behind a Service with several MLflow pods after a scale-out
//!   or a restart.

use std::time::Duration;

use clap::Args;

use http::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{CaptureConnection, HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::upstream::quickack::{OpenedAt, QuickAckConnector};
use crate::wire::body::ProxyBody;

pub const MAX_IDLE: usize = 32;
/// The default idle timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// The default mean lifetime of a connection; each one lives between half and one and a half
/// of the mean.
pub const LIFETIME: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Args)]
pub struct PoolArgs {
    /// Mean lifetime of a kept-alive connection to MLflow; each one is retired after a random
    /// time between half and one and a half of it (so that load re-spreads over MLflow's
    /// workers and pods).
    #[arg(long, env = "PROXY_UPSTREAM_LIFETIME_SECS", default_value_t = LIFETIME.as_secs())]
    pub upstream_lifetime_secs: u64,
    /// An idle kept-alive connection to MLflow is closed after this; keep it below MLflow's own
    /// keep-alive timeout (uvicorn's is 5 s).
    #[arg(long, env = "PROXY_UPSTREAM_IDLE_TIMEOUT_SECS", default_value_t = IDLE_TIMEOUT.as_secs())]
    pub upstream_idle_timeout_secs: u64,
}

/// How long connections to MLflow are kept.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// The mean lifetime (see [`lifetime`]).
    pub lifetime: Duration,
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            lifetime: LIFETIME,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

impl PoolArgs {
    pub fn build(&self) -> Result<PoolConfig, String> {
        if self.upstream_lifetime_secs == 0 || self.upstream_idle_timeout_secs == 0 {
            return Err(
                "PROXY_UPSTREAM_LIFETIME_SECS and PROXY_UPSTREAM_IDLE_TIMEOUT_SECS must be at least 1"
                    .to_owned(),
            );
        }
        Ok(PoolConfig {
            lifetime: Duration::from_secs(self.upstream_lifetime_secs),
            idle_timeout: Duration::from_secs(self.upstream_idle_timeout_secs),
        })
    }
}

/// The client every upstream request goes through.
pub fn client(
    connector: HttpConnector,
    config: PoolConfig,
) -> Client<QuickAckConnector, ProxyBody> {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IDLE)
        .pool_idle_timeout(config.idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(QuickAckConnector(connector))
}

/// How long the connection opened with this draw lives: from `mean / 2` up to (not including)
/// `mean * 3 / 2`, spread evenly over the draws.
pub fn lifetime(opened: &OpenedAt, mean: Duration) -> Duration {
    mean / 2 + mean * (opened.draw % 1000) / 1000
}

/// Follows one request's connection, to retire it once it has lived its [`lifetime`].
pub struct Retire {
    connection: CaptureConnection,
    mean: Duration,
}

impl Retire {
    pub fn watch<B>(request: &mut Request<B>, config: &PoolConfig) -> Retire {
        Retire {
            connection: capture_connection(request),
            mean: config.lifetime,
        }
    }

    /// After the response head: a connection past its lifetime goes back to the pool poisoned,
    /// so it closes once this response is done instead of serving another.
    pub fn after<B>(self, response: &Response<B>) {
        let old = response
            .extensions()
            .get::<OpenedAt>()
            .is_some_and(|opened| opened.at.elapsed() >= lifetime(opened, self.mean));
        if old && let Some(connection) = self.connection.connection_metadata().as_ref() {
            connection.poison();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lifetimes_spread_over_half_to_one_and_a_half_of_the_mean() {
        let at = Instant::now();
        let lifetimes: Vec<Duration> = (0..5000u32)
            .map(|draw| lifetime(&OpenedAt { at, draw }, LIFETIME))
            .collect();
        let min = *lifetimes.iter().min().unwrap();
        let max = *lifetimes.iter().max().unwrap();
        assert_eq!(min, LIFETIME / 2);
        assert!(max < LIFETIME * 3 / 2 && max > LIFETIME * 3 / 2 - Duration::from_millis(50));
        let mean = lifetimes.iter().sum::<Duration>() / 5000;
        assert!(
            mean.abs_diff(LIFETIME) < Duration::from_millis(50),
            "{mean:?}"
        );
        // Extreme draws stay in range.
        assert!(lifetime(&OpenedAt { at, draw: u32::MAX }, LIFETIME) < LIFETIME * 3 / 2);
        // Any mean: the same spread.
        let mean = Duration::from_secs(3600);
        assert_eq!(lifetime(&OpenedAt { at, draw: 0 }, mean), mean / 2);
        assert!(lifetime(&OpenedAt { at, draw: 999 }, mean) < mean * 3 / 2);
    }
}
