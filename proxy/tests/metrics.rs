//! What an operator sees: exact counters after a scripted session, a scrape that promtool
//! accepts, /readyz following S3 down and up, and one JSON access-log line per request.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pretty_assertions::assert_eq;

/// The scrape as `series → value`, the series written as the text format writes it.
fn parse(scrape: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// Every series of one metric (histograms: pass `name_count` and the like).
fn family(series: &BTreeMap<String, f64>, name: &str) -> BTreeMap<String, f64> {
    series
        .iter()
        .filter(|(s, _)| s.split('{').next() == Some(name))
        .map(|(s, v)| (s.clone(), *v))
        .collect()
}

fn expected(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(s, v)| ((*s).to_owned(), *v)).collect()
}

/// Send the headers and `sent` bytes of a PUT that declares `declared`, then (once `ready`
/// says so) drop the connection.
async fn interrupted_put<F: Future<Output = ()>>(
    h: &Harness,
    path: &str,
    declared: usize,
    sent: usize,
    ready: impl FnOnce() -> F,
) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let head = format!(
        "PUT /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&random_bytes(sent)).await.unwrap();
    stream.flush().await.unwrap();
    ready().await;
    drop(stream);
}

/// Scrape until `series` has `value` (the proxy records S3 calls as they finish).
async fn wait_for_series(h: &Harness, series: &str, value: f64) {
    eventually_async(&format!("{series} reaches {value}"), || async {
        parse(&h.metrics().await).get(series) == Some(&value)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_moves_exactly_these_counters() {
    let h = Harness::start().await;
    let small = random_bytes(1000);
    let big = random_bytes(12 * MIB); // above the 8 MiB single-PUT limit: 5 + 5 + 2 MiB parts
    // The digests recorded by a metadata copy: both objects', except where the store verifies
    // FULL_OBJECT multipart uploads and keeps the big one's itself (Garage, with
    // PROXY_STORE_CHECKSUMS=auto; docs/integrity.md).
    let full_object = mlflow_artifact_proxy::integrity::IntegrityConfig::default().store_checksums
        && mlflow_artifact_proxy::store::s3::Store::new(
            &h.s3.store_config(""),
            mlflow_artifact_proxy::ops::metrics::Metrics::new(),
            std::time::Duration::from_secs(60),
        )
        .unwrap()
        .native()
        .await
        .full_object;
    let copies = if full_object { 1.0 } else { 2.0 };

    assert_eq!(
        h.put("1/r/artifacts/small.txt", small.clone())
            .await
            .status(),
        200
    );
    assert_eq!(
        h.put("1/r/artifacts/big.bin", big.clone()).await.status(),
        200
    );
    let body = h
        .get("1/r/artifacts/small.txt")
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), small.len());
    let body = h.get("1/r/artifacts/big.bin").await.bytes().await.unwrap();
    assert_eq!(sha256(&body), sha256(&big));
    assert_eq!(h.get("1/r/artifacts/missing.txt").await.status(), 404);
    let refused = raw_request(
        h.proxy.addr,
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/%2e%2e/etc/passwd",
        b"",
    )
    .await;
    assert_eq!(refused.status, 400);
    let listing = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/artifacts?path=1/r/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), 200);
    let deleted = h
        .http
        .delete(h.artifact("1/r/artifacts/small.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let passed = h
        .http
        .post(h.url("/api/2.0/mlflow/runs/create"))
        .body(r#"{"experiment_id":"1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), 201);

    // Cut off: a single PUT (3 of 6 MiB sent) once the proxy serves it, and a multipart upload
    // (6 of 64 MiB sent) once its first part is stored, so that exactly one part was uploaded.
    interrupted_put(&h, "cut/single.bin", 6 * MIB, 3 * MIB, || {
        wait_for_series(
            &h,
            r#"mlflow_proxy_transfers_in_flight{direction="upload"}"#,
            1.0,
        )
    })
    .await;
    wait_for_series(
        &h,
        r#"mlflow_proxy_transfers_in_flight{direction="upload"}"#,
        0.0,
    )
    .await;
    interrupted_put(&h, "cut/multipart.bin", 64 * MIB, 6 * MIB, || {
        wait_for_series(
            &h,
            r#"mlflow_proxy_s3_requests_total{operation="upload_part",outcome="ok"}"#,
            4.0,
        )
    })
    .await;
    eventually("the cut-off multipart upload is aborted", || {
        h.s3.multipart_leftovers().is_empty()
    })
    .await;
    wait_for_series(
        &h,
        r#"mlflow_proxy_multipart_uploads_total{event="aborted"}"#,
        1.0,
    )
    .await;
    wait_for_series(
        &h,
        r#"mlflow_proxy_transfers_in_flight{direction="upload"}"#,
        0.0,
    )
    .await;

    let text = h.metrics().await;
    let scrape = parse(&text);
    let mib = MIB as f64;

    assert_eq!(
        family(&scrape, "mlflow_proxy_http_server_requests_total"),
        expected(&[
            (
                r#"mlflow_proxy_http_server_requests_total{method="DELETE",route="delete",status="2xx"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="GET",route="download",status="2xx"}"#,
                2.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="GET",route="download",status="4xx"}"#,
                2.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="GET",route="list",status="2xx"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="POST",route="passthrough",status="2xx"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="PUT",route="upload",status="2xx"}"#,
                2.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="PUT",route="upload",status="4xx"}"#,
                2.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(
            &scrape,
            "mlflow_proxy_http_server_request_duration_seconds_count"
        ),
        expected(&[
            (
                r#"mlflow_proxy_http_server_request_duration_seconds_count{route="delete"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_request_duration_seconds_count{route="download"}"#,
                4.0
            ),
            (
                r#"mlflow_proxy_http_server_request_duration_seconds_count{route="list"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_request_duration_seconds_count{route="passthrough"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_request_duration_seconds_count{route="upload"}"#,
                4.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(&scrape, "mlflow_proxy_artifact_bytes_total"),
        expected(&[
            // Downloads: the two objects, not the 404's JSON. Uploads: every byte read,
            // the cut-off ones included.
            (
                r#"mlflow_proxy_artifact_bytes_total{direction="download"}"#,
                1000.0 + 12.0 * mib
            ),
            (
                r#"mlflow_proxy_artifact_bytes_total{direction="upload"}"#,
                1000.0 + 12.0 * mib + 3.0 * mib + 6.0 * mib
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(&scrape, "mlflow_proxy_s3_requests_total"),
        expected(&[
            (
                r#"mlflow_proxy_s3_requests_total{operation="abort_multipart_upload",outcome="ok"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_s3_requests_total{operation="complete_multipart_upload",outcome="ok"}"#,
                1.0
            ),
            // The digests of the two stored objects, recorded (integrity).
            (
                r#"mlflow_proxy_s3_requests_total{operation="copy_object",outcome="ok"}"#,
                copies
            ),
            (
                r#"mlflow_proxy_s3_requests_total{operation="create_multipart_upload",outcome="ok"}"#,
                2.0
            ),
            (
                r#"mlflow_proxy_s3_requests_total{operation="delete_objects",outcome="ok"}"#,
                1.0
            ),
            // small, big, missing (S3 answers 404: an answer, not a failed call).
            (
                r#"mlflow_proxy_s3_requests_total{operation="get_object",outcome="ok"}"#,
                3.0
            ),
            // missing (is it a directory?), the listing, the delete (the file itself, then the
            // page under it).
            (
                r#"mlflow_proxy_s3_requests_total{operation="list_objects",outcome="ok"}"#,
                4.0
            ),
            (
                r#"mlflow_proxy_s3_requests_total{operation="put_object",outcome="error"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_s3_requests_total{operation="put_object",outcome="ok"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_s3_requests_total{operation="upload_part",outcome="ok"}"#,
                4.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(&scrape, "mlflow_proxy_s3_request_duration_seconds_count"),
        expected(&[
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="abort_multipart_upload"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="complete_multipart_upload"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="copy_object"}"#,
                copies
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="create_multipart_upload"}"#,
                2.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="delete_objects"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="get_object"}"#,
                3.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="list_objects"}"#,
                4.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="put_object"}"#,
                2.0
            ),
            (
                r#"mlflow_proxy_s3_request_duration_seconds_count{operation="upload_part"}"#,
                4.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(&scrape, "mlflow_proxy_multipart_uploads_total"),
        expected(&[
            (
                r#"mlflow_proxy_multipart_uploads_total{event="aborted"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_multipart_uploads_total{event="completed"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_multipart_uploads_total{event="started"}"#,
                2.0
            ),
            // s3s-fs cannot list multipart uploads: the sweep is off, and says so quietly.
            (
                r#"mlflow_proxy_multipart_uploads_total{event="swept"}"#,
                0.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(&scrape, "mlflow_proxy_upstream_requests_total"),
        expected(&[
            (
                r#"mlflow_proxy_upstream_requests_total{outcome="error"}"#,
                0.0
            ),
            (r#"mlflow_proxy_upstream_requests_total{outcome="ok"}"#, 1.0),
            (
                r#"mlflow_proxy_upstream_requests_total{outcome="retried"}"#,
                0.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        family(
            &scrape,
            "mlflow_proxy_upstream_request_duration_seconds_count"
        ),
        expected(&[(
            r#"mlflow_proxy_upstream_request_duration_seconds_count{outcome="ok"}"#,
            1.0
        )]),
        "{text}"
    );
    for (series, value) in [
        ("mlflow_proxy_client_disconnects_total", 2.0),
        (
            r#"mlflow_proxy_transfers_in_flight{direction="download"}"#,
            0.0,
        ),
        (
            r#"mlflow_proxy_transfers_in_flight{direction="upload"}"#,
            0.0,
        ),
        ("mlflow_proxy_upload_budget_in_use_bytes", 0.0),
        ("mlflow_proxy_upload_budget_capacity_bytes", 64.0 * mib),
        (
            &format!(
                "mlflow_proxy_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ] {
        assert_eq!(scrape.get(series), Some(&value), "{series} in {text}");
    }
    for process in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(scrape[process] > 0.0, "{process} in {text}");
    }
    // Fixed labels only: no path, no experiment id, no file name anywhere in the scrape.
    for raw in [
        "small.txt",
        "big.bin",
        "missing.txt",
        "passwd",
        "1/r",
        "cut/",
    ] {
        assert!(
            !text.lines().any(|l| !l.starts_with('#') && l.contains(raw)),
            "{raw} leaked into a label"
        );
    }

    promtool(&["check", "metrics"], Some(&text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_download_is_counted_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start().await;
    assert_eq!(h.put("big.bin", random_bytes(32 * MIB)).await.status(), 200);
    let mut stream = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /api/2.0/mlflow-artifacts/artifacts/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .await
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    stream.read_exact(&mut first).await.unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200 OK"));
    drop(stream);
    wait_for_series(
        &h,
        r#"mlflow_proxy_transfers_in_flight{direction="download"}"#,
        0.0,
    )
    .await;

    let text = h.metrics().await;
    let scrape = parse(&text);
    assert_eq!(
        family(&scrape, "mlflow_proxy_http_server_requests_total"),
        expected(&[
            (
                r#"mlflow_proxy_http_server_requests_total{method="GET",route="download",status="2xx"}"#,
                1.0
            ),
            (
                r#"mlflow_proxy_http_server_requests_total{method="PUT",route="upload",status="2xx"}"#,
                1.0
            ),
        ]),
        "{text}"
    );
    assert_eq!(
        scrape["mlflow_proxy_client_disconnects_total"], 1.0,
        "{text}"
    );
    let sent = scrape[r#"mlflow_proxy_artifact_bytes_total{direction="download"}"#];
    assert!(sent > 0.0 && sent < 32.0 * MIB as f64, "{sent} bytes sent");
}

/// Run promtool when it is installed; in CI (CI=true) it must be.
fn promtool(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool is not installed (CI must install it: apt-get install prometheus)"
            );
            eprintln!("promtool not found: skipping promtool {}", args.join(" "));
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_compose_prometheus_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../compose/prometheus.yml");
    promtool(&["check", "config", config], None);
}

/// Ask /readyz?deep=1 until it answers `status`; return the verdict and how many answers
/// came before it.
async fn readyz_until(h: &Harness, status: u16) -> (serde_json::Value, usize) {
    let deadline = Instant::now() + PATIENCE;
    let mut before = 0;
    loop {
        let (got, body) = h.operations("/readyz?deep=1").await;
        if got == status {
            assert_eq!(body.lines().count(), 1, "one line of JSON: {body:?}");
            return (serde_json::from_str(&body).unwrap(), before);
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {got} after {before} answers: {body}"
        );
        before += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_store_down_and_up() {
    let h = Harness::start().await;
    assert_eq!(
        h.operations("/healthz").await,
        (200, "{\"status\":\"ok\"}\n".to_owned())
    );
    // A kept-alive S3 connection exists before the store goes away.
    assert_eq!(h.put("x.txt", b"x".to_vec()).await.status(), 200);
    let (verdict, _) = readyz_until(&h, 200).await;
    assert_eq!(
        verdict,
        serde_json::json!({"ready": true, "s3": "ok", "mlflow": "ok", "mlflow_modes": "ok"})
    );

    // The store is gone (every connection to it closed): the very next check says so; no
    // verdict is remembered.
    h.s3.stop();
    let (verdict, before) = readyz_until(&h, 503).await;
    assert_eq!(before, 0, "ready {before} more time(s) with the store gone");
    assert_eq!(verdict["ready"], false);
    assert_eq!(verdict["mlflow"], "ok");
    assert!(
        verdict["s3"].as_str().unwrap().starts_with("error: "),
        "{verdict}"
    );
    // The process itself is fine.
    assert_eq!(h.operations("/healthz").await.0, 200);

    h.s3.restart().await;
    let (verdict, before) = readyz_until(&h, 200).await;
    assert_eq!(
        before, 0,
        "unready {before} more time(s) with the store back"
    );
    assert_eq!(verdict["s3"], "ok");
    assert_eq!(h.get("x.txt").await.text().await.unwrap(), "x");
}

/// The real binary with `PROXY_LOG_FORMAT=json`: every line on stderr is one JSON object, and
/// each request gets one access line with the fields a log shipper needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_one_object_per_request() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let child = ProxyBinary::spawn(&s3, &mlflow, &[("PROXY_LOG_FORMAT", "json")]);
    let mut lines = Vec::new();
    let next_line = |lines: &mut Vec<String>| {
        let line = child.next_line();
        lines.push(line.clone());
        line
    };

    // "listening on 127.0.0.1:P (metrics on ...), ..." tells the port.
    let addr: std::net::SocketAddr = loop {
        let line = next_line(&mut lines);
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(rest) = event["fields"]["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("listening on "))
        {
            break rest.split(' ').next().unwrap().parse().unwrap();
        }
    };
    let upload = raw_request(
        addr,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
        b"hello",
    )
    .await;
    assert_eq!(upload.status, 200);
    let download = raw_request(
        addr,
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
        b"",
    )
    .await;
    assert_eq!(download.body, b"hello");
    let missing = raw_request(
        addr,
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/1/b.txt",
        b"",
    )
    .await;
    assert_eq!(missing.status, 404);
    let passed = raw_request(addr, "POST", "/api/2.0/mlflow/runs/create", b"{}").await;
    assert_eq!(passed.status, 201);

    let mut access = Vec::new();
    while access.len() < 4 {
        let line = next_line(&mut lines);
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event.is_object(), "{line}");
        if event["target"] == "access" {
            access.push(event);
        }
    }
    drop(child);

    let summary: Vec<serde_json::Value> = access
        .iter()
        .map(|event| {
            let fields = &event["fields"];
            assert_eq!(event["level"], "INFO");
            assert!(fields["duration_ms"].as_f64().unwrap() >= 0.0, "{event}");
            serde_json::json!([
                fields["method"],
                fields["path"],
                fields["route"],
                fields["status"],
                fields["bytes_in"],
                fields["bytes_out"],
                fields["failed"],
                fields["completed"],
            ])
        })
        .collect();
    let missing_body = missing.body.len();
    assert_eq!(
        summary,
        vec![
            serde_json::json!([
                "PUT",
                "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
                "upload",
                200,
                5,
                0,
                "-",
                true
            ]),
            serde_json::json!([
                "GET",
                "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
                "download",
                200,
                0,
                5,
                "-",
                true
            ]),
            serde_json::json!([
                "GET",
                "/api/2.0/mlflow-artifacts/artifacts/1/b.txt",
                "download",
                404,
                0,
                missing_body,
                "client",
                true
            ]),
            serde_json::json!([
                "POST",
                "/api/2.0/mlflow/runs/create",
                "passthrough",
                201,
                2,
                2,
                "-",
                true
            ]),
        ],
        "{lines:#?}"
    );
}
