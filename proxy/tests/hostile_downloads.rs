//! Downloads whose clients stop reading (issue 20): each holds an S3 connection and buffers
//! outside the download budget (hyper's read buffer, the frame waiting for the socket), so their
//! number is bounded (`PROXY_MAX_DOWNLOADS`); beyond it a download waits for a turn, then is
//! refused with 503.

mod common;

use std::time::Duration;

use common::process::*;
use common::*;
use mlflow_artifact_proxy::artifacts::state::download_memory::DownloadConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A client that asks for `path` with a 4 KiB receive buffer and never reads.
async fn stalled_reader(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let head = format!("GET {PATH}/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Issue 20: 600 clients that GET a 12 MiB object and never read took the proxy to 721 MiB
/// (1.2 MiB each, held until the idle cut). With 64 turns the bound is 64 × ~1.2 MiB plus the
/// process's own ~20 MiB; the 236 waiting hold only their connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_are_bounded_by_their_turns() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    s3.client()
        .put_object("stall/big.bin", &random_bytes(12 * MIB))
        .await
        .unwrap();
    let proxy = ProxyProcess::start(&s3, &mlflow, &[("PROXY_MAX_DOWNLOADS", "64")]).await;
    let before = proxy.rss_mib();
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(stalled_reader(proxy.addr, "stall/big.bin").await);
    }
    // Every turn taken: the proxy has answered as much as it can.
    eventually_async("every turn is taken", || async {
        metric(&proxy.metrics().await, "mlflow_proxy_downloads_in_progress") >= 64.0
    })
    .await;
    assert_eq!(
        metric(&proxy.metrics().await, "mlflow_proxy_downloads_in_progress"),
        64.0
    );
    let mut peak = proxy.rss_mib();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        peak = peak.max(proxy.rss_mib());
    }
    eprintln!("300 stalled downloads of 12 MiB: RSS {before:.1} MiB before, peak {peak:.1} MiB");
    assert!(peak < 140.0, "RSS reached {peak:.1} MiB");
    drop(clients);
}

/// When every turn is taken for longer than the wait, the answer is a quick 503 with
/// Retry-After (MLflow's client retries it); a turn that frees up serves the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_beyond_the_turns_is_refused_then_served() {
    let h = Harness::start_with_download(DownloadConfig {
        max_downloads: 1,
        queue_wait: Duration::ZERO,
        ..DownloadConfig::default()
    })
    .await;
    let data = random_bytes(4 * MIB);
    h.s3.client().put_object("d/x.bin", &data).await.unwrap();
    let first = stalled_reader(h.proxy.addr, "d/x.bin").await;
    eventually_async("the stalled reader holds the turn", || async {
        h.metrics()
            .await
            .contains("mlflow_proxy_downloads_in_progress 1")
    })
    .await;
    let refused = h.get("d/x.bin").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(header_map(&refused)["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error_code"], "TEMPORARILY_UNAVAILABLE");
    drop(first);
    // The freed turn serves the next request (once the proxy has seen the reader go).
    let served = std::sync::Mutex::new(None);
    eventually_async("a freed turn serves the next request", || async {
        let response = h.get("d/x.bin").await;
        if response.status() != 200 {
            return false;
        }
        *served.lock().unwrap() = Some(response.bytes().await.unwrap());
        true
    })
    .await;
    let served = served.into_inner().unwrap();
    assert_eq!(served.map(|b| sha256(&b)), Some(sha256(&data)));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("mlflow_proxy_downloads_refused_total")
            && !metrics.contains("mlflow_proxy_downloads_refused_total 0"),
        "{metrics}"
    );
}
