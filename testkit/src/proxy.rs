//! The proxy binary as a process of its own, in front of an S3 store and an MLflow (or a
//! stand-in): the settings that say where they are, and free loopback ports for it to listen on.

use std::net::SocketAddr;
use std::process::Command;

/// An S3 store and bucket the proxy stores into, and the key it signs with.
pub struct Store<'a> {
    /// `http://host:port`, what the proxy is given as `MLFLOW_S3_ENDPOINT_URL`.
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub region: &'a str,
}

/// Set the variables that put the proxy in front of `store` (the whole bucket) and pass
/// MLflow's routes to `upstream`. Everything else is the caller's (listen addresses, a cleared or
/// inherited environment, `PROXY_*` knobs).
pub fn store_and_upstream<'c>(
    command: &'c mut Command,
    store: &Store<'_>,
    upstream: &str,
) -> &'c mut Command {
    command
        .env(
            "MLFLOW_ARTIFACTS_DESTINATION",
            format!("s3://{}/", store.bucket),
        )
        .env("MLFLOW_S3_ENDPOINT_URL", store.endpoint)
        .env("AWS_ACCESS_KEY_ID", store.access_key)
        .env("AWS_SECRET_ACCESS_KEY", store.secret_key)
        .env("AWS_DEFAULT_REGION", store.region)
        .env("PROXY_UPSTREAM", upstream)
}

/// Let the proxy listen on free loopback ports: (its artifact and pass-through address, its
/// operations address for `/readyz` and `/metrics`).
pub fn listen_on_free_ports(command: &mut Command) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    command
        .env("PROXY_LISTEN", addr.to_string())
        .env("PROXY_METRICS_LISTEN", metrics.to_string());
    Ok((addr, metrics))
}

/// A free loopback port (bound, then released; the proxy binds it a moment later).
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
