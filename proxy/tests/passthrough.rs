//! Everything that is not an artifact route reaches MLflow unchanged, and comes back streaming.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pretty_assertions::assert_eq;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_mlflow_unchanged() {
    let h = Harness::start().await;
    let body = br#"{"experiment_id": "1", "run_name": "r \u00e9"}"#.to_vec();
    let response = h
        .http
        .post(h.url("/api/2.0/mlflow/runs/create?x=1&y=a%20b&z=%2F"))
        .header("host", "mlflow.example.com:5000")
        .header("content-type", "application/json")
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "dropped")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-upstream"], "fake-mlflow");
    assert_eq!(response.bytes().await.unwrap().as_ref(), body.as_slice());

    let seen = h.mlflow.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.path_and_query,
        "/api/2.0/mlflow/runs/create?x=1&y=a%20b&z=%2F"
    );
    assert_eq!(seen.body.as_ref(), body.as_slice());
    assert_eq!(
        seen.headers["host"], "mlflow.example.com:5000",
        "MLflow must see the client's Host"
    );
    assert_eq!(seen.headers["authorization"], "Basic YWxpY2U6c2VjcmV0");
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(
        seen.headers.get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_of_unknown_length_arrives_intact() {
    let h = Harness::start().await;
    let response = h.http.get(h.url("/stream/4096")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "no length: streamed"
    );
    let body = response.bytes().await.unwrap();
    assert_eq!(sha256(&body), sha256(&pattern(4096 * 1024, 7)));
    // A streamed request body goes up the same way.
    let data = random_bytes(3 * MIB + 5);
    let frames: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(65_537).map(|c| Ok(c.to_vec())).collect();
    let response = h
        .http
        .put(h.url("/ajax-api/2.0/mlflow/upload-something"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            frames,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&response.bytes().await.unwrap()), sha256(&data));
    assert_eq!(sha256(&h.mlflow.last().body), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_info_offers_multipart_through_the_proxy() {
    let h = Harness::start().await;
    for path in [
        "/api/3.0/mlflow/server-info",
        "/ajax-api/3.0/mlflow/server-info",
    ] {
        let response = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"store_type":"SqlStore","workspaces_enabled":false,"multipart_uploads_enabled":true,"multipart_downloads_enabled":true,"artifact_serving_enabled":true}"#
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_artifact_requests_are_left_to_mlflow() {
    let h = Harness::start().await;
    let response = h
        .http
        .get(h.artifact("1/r/a.txt"))
        .header("x-mlflow-workspace", "team-a")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "answered by the MLflow stand-in");
    assert_eq!(
        h.mlflow.last().path_and_query,
        "/api/2.0/mlflow-artifacts/artifacts/1/r/a.txt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_down_gives_a_quick_502_in_mlflow_shape() {
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let s3 = S3Server::start().await;
    let mut config = serve_config(&s3, &format!("http://{closed}"));
    config.shutdown_grace = Duration::from_secs(1);
    let upstream_timeout = config.timeouts.upstream;
    assert!(upstream_timeout > PATIENCE);
    let proxy = mlflow_artifact_proxy::Proxy::start(config).await.unwrap();
    // Quick: a refused connection is answered at once, not after the upstream timeout; a
    // minute of slack for a loaded machine.
    let started = Instant::now();
    let response = raw_request(proxy.addr, "GET", "/api/2.0/mlflow/experiments/search", b"").await;
    assert!(started.elapsed() < PATIENCE, "took {:?}", started.elapsed());
    assert_eq!(response.status, 502);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["error_code"], "TEMPORARILY_UNAVAILABLE");
    // MLflow's address stays in the log.
    assert_eq!(body["message"], "The MLflow server did not answer");
    assert!(!response.text().contains(&closed.to_string()), "{body}");
    // Artifacts still work without MLflow.
    let put = raw_request(
        proxy.addr,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/x.txt",
        b"abc",
    )
    .await;
    assert_eq!(put.status, 200);
    // /readyz names the failing side.
    let ready = raw_request(proxy.metrics_addr, "GET", "/readyz?deep=1", b"").await;
    assert_eq!(ready.status, 503);
    let verdict: serde_json::Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(verdict["ready"], false);
    assert_eq!(verdict["s3"], "ok");
    assert!(
        verdict["mlflow"].as_str().unwrap().starts_with("error:"),
        "{verdict}"
    );
    proxy.shutdown().await;
}

/// What the dropping upstream did with one request: the connection (numbered in the order of
/// acceptance), the request line, and whether it answered or closed the connection instead.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Handled {
    connection: usize,
    line: String,
    answered: bool,
}

/// An MLflow stand-in that answers the first request on each connection (keep-alive) and closes
/// the connection, unanswered, on the second: what uvicorn does to a kept-alive connection after
/// an unhandled exception, made certain (no real server closes on cue).
async fn dropping_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<Handled>>>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Handled>::new()));
    let record = log.clone();
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                for nth in 0..2 {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        stream.read_line(&mut header).await.unwrap();
                        if header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let answered = nth == 0;
                    record.lock().unwrap().push(Handled {
                        connection,
                        line: line.trim_end().to_owned(),
                        answered,
                    });
                    if !answered {
                        return; // dropped: closed without a byte of answer
                    }
                    let text = format!("connection {connection}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    );
                    stream.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, log)
}

// A kept-alive connection can close just as the proxy picks it from its pool. A GET, HEAD or
// OPTIONS without a body is then sent once more on a new connection (RFC 9110 §9.2.2, what a
// browser does against stock MLflow); anything else gets the 502, never a replayed body. Which
// request lands on a reused connection is the pool's choice, so requests are sent until the
// stand-in has dropped one (bounded by a count), then the books are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_safe_request_on_a_connection_mlflow_dropped_is_sent_again_once() {
    let s3 = S3Server::start().await;
    let (upstream, log) = dropping_upstream().await;
    let proxy =
        mlflow_artifact_proxy::Proxy::start(serve_config(&s3, &format!("http://{upstream}")))
            .await
            .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |path: &str| format!("http://{}{path}", proxy.addr);
    let upstream_requests = |outcome: &'static str| {
        let url = format!("http://{}/metrics", proxy.metrics_addr);
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            series(
                &text,
                &format!("mlflow_proxy_upstream_requests_total{{outcome=\"{outcome}\"}}"),
            )
        }
    };
    let dropped = |prefix: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|h| !h.answered && h.line.starts_with(prefix))
            .count()
    };

    for n in 0..50 {
        let response = http
            .get(url(&format!("/ajax-api/2.0/mlflow/experiments/get?n={n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "GET {n}: every GET is answered");
        assert!(response.text().await.unwrap().starts_with("connection "));
        if dropped("GET") > 0 {
            break;
        }
    }
    let gets = dropped("GET");
    assert!(
        gets > 0,
        "the pool reused a connection at least once in 50 GETs"
    );
    assert_eq!(
        upstream_requests("retried").await,
        gets as f64,
        "one retry per dropped GET"
    );
    assert_eq!(upstream_requests("error").await, 0.0, "no GET failed");

    let mut refused = 0;
    for n in 0..50 {
        let response = http
            .post(url("/ajax-api/2.0/mlflow/runs/create"))
            .header("content-type", "application/json")
            .body(format!("{{\"n\": {n}}}"))
            .send()
            .await
            .unwrap();
        if response.status() == 502 {
            refused += 1;
            let body: serde_json::Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["error_code"], "TEMPORARILY_UNAVAILABLE", "{body}");
        } else {
            assert_eq!(response.status(), 200);
        }
        if dropped("POST") > 0 {
            break;
        }
    }
    assert_eq!(
        (dropped("POST"), refused),
        (1, 1),
        "the dropped POST got the 502, and was not sent again"
    );
    let posts = log
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h.line.starts_with("POST"))
        .count();
    assert_eq!(
        upstream_requests("retried").await,
        gets as f64,
        "no POST was retried ({posts} POSTs reached the stand-in)"
    );
}
