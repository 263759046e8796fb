//! The proxy binary as a process of its own (so that its RSS, read from /proc, is the proxy's
//! alone), and raw-socket helpers for clients that misbehave at the byte level.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{FakeMlflow, S3Server};

pub const PATH: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// The proxy binary, started against the test's S3 server and MLflow stand-in.
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
}

impl ProxyProcess {
    pub async fn start(s3: &S3Server, mlflow: &FakeMlflow, extra: &[(&str, &str)]) -> ProxyProcess {
        // HOSTILE_PROXY_BIN: another build of the proxy (to show that these tests fail on one
        // without the bounds).
        let binary = std::env::var("HOSTILE_PROXY_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_mlflow-artifact-proxy").to_owned());
        let mut command = super::proxy_command(&binary, s3, mlflow);
        let (addr, metrics) = testkit::proxy::listen_on_free_ports(&mut command).unwrap();
        command
            .env("RUST_LOG", "warn")
            .env("PROXY_SINGLE_PUT_MAX_MIB", "8")
            .env("PROXY_PART_SIZE_MIB", "8")
            .env("PROXY_UPLOAD_BUDGET_MIB", "64")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("start the proxy binary");
        wait_listening(addr).await;
        ProxyProcess {
            child,
            addr,
            metrics,
        }
    }

    /// Resident memory, in MiB, from /proc.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib / 1024.0
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = exchange(
            self.metrics,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            &[],
        )
        .await;
        assert_eq!(status, 200);
        body
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    testkit::proxy::free_port().unwrap()
}

/// Wait until `addr` accepts connections (at most 20 s).
pub async fn wait_listening(addr: SocketAddr) {
    super::eventually_async("the proxy listens", || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

/// Send a request head and body bytes on a fresh socket, read the whole answer (bounded).
pub async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    read_answer(&mut stream, super::PATIENCE).await
}

pub async fn read_answer(stream: &mut TcpStream, within: Duration) -> (u16, String) {
    let mut raw = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut raw))
        .await
        .expect("no answer in time")
        .ok();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn put_head(path: &str, length: Option<u64>) -> String {
    let framing = match length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    format!(
        "PUT {PATH}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{framing}\r\n\r\n"
    )
}

/// `data` as one HTTP chunk.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}
