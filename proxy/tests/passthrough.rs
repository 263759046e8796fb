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
