//! The test harness: a real S3 server (s3s + s3s-fs, SigV4 checked) and an MLflow stand-in on
//! loopback, and the proxy in front of them, all in-process on ephemeral ports. One file per
//! part, every name re-exported here (tests `use common::*`):
//! - `s3_server.rs`: the S3 server (in-process s3s-fs, or an external store through a relay),
//!   with what the tests inspect (stored keys and bytes, requests received, multipart leftovers)
//!   and its faults (stop, restart);
//! - `mlflow_stand_in.rs`: the MLflow stand-in that records what it is sent, and stand-ins whose
//!   answers a test makes;
//! - `harness.rs`: the proxy in-process in front of both, with the tests' settings;
//! - `proxy_binary.rs` and `process.rs`: the proxy binary as a process of its own;
//! - `raw_http.rs`: one exchange over a raw socket, the request target sent exactly as given.
//!
//! The S3 server's serving loop, the stand-ins' accept loop and the proxy binary's store
//! settings are the benches' too: they live in the `testkit` crate.

#![allow(dead_code)]

mod harness;
mod mlflow_stand_in;
pub mod process;
mod proxy_binary;
mod raw_http;
mod s3_server;

use std::collections::HashMap;
use std::time::Duration;

use sha2::{Digest, Sha256};

#[allow(unused_imports)]
pub use harness::*;
#[allow(unused_imports)]
pub use mlflow_stand_in::*;
#[allow(unused_imports)]
pub use proxy_binary::*;
#[allow(unused_imports)]
pub use raw_http::*;
#[allow(unused_imports)]
pub use s3_server::*;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-123";
pub const BUCKET: &str = "default";
pub const MIB: usize = 1024 * 1024;

/// How long a test waits for something that must happen (a log line, a metric, a cleanup in the
/// background, a port): long enough that only a hang exhausts it on a loaded machine. Verdicts
/// never depend on how much of it was used.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The external store named by the environment, if any (`S3Server` says what each variable
/// does). Read here: the config reference (`proxy/src/config_reference.rs`) finds them in this file.
pub fn external_store() -> Option<(String, String, String, String, String)> {
    let endpoint = std::env::var("PROXY_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())?;
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    Some((
        endpoint,
        var("PROXY_TEST_S3_ACCESS_KEY", ""),
        var("PROXY_TEST_S3_SECRET_KEY", ""),
        var("PROXY_TEST_S3_REGION", "us-east-1"),
        var("PROXY_TEST_S3_STORE", "external"),
    ))
}

/// The name of the store the tests run against.
pub fn store_name() -> String {
    external_store().map_or_else(|| "s3s-fs".to_owned(), |(.., name)| name)
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}

/// Headers as a map of lower-case names, for readable assertions.
pub fn header_map(response: &reqwest::Response) -> HashMap<String, String> {
    response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or("<binary>").to_owned(),
            )
        })
        .collect()
}

/// Wait (bounded by [`PATIENCE`]) until `check` holds; S3 cleanup after a disconnect runs in
/// the background.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "still not true after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// As [`eventually`], for a check that is itself asynchronous (a scrape, a request).
pub async fn eventually_async<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "still not true after {PATIENCE:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of one series in a Prometheus text scrape (NaN when it is absent).
pub fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
