//! MLflow's client-driven multipart upload and presigned download through the proxy, against a
//! real S3 server (s3s-fs): the JSON the client reads, the part URLs on the proxy, what is left in
//! the store, and every way a token can be wrong.

mod common;

use std::time::Duration;

use common::*;
use mlflow_artifact_proxy::signing::{Claims, Grant, Signer, now_secs};
use pretty_assertions::assert_eq;
use serde_json::{Value, json};

const MPU: &str = "/api/2.0/mlflow-artifacts/mpu";

struct Created {
    upload_id: String,
    urls: Vec<String>,
}

async fn create(h: &Harness, dir: &str, name: &str, parts: u32) -> Created {
    let (status, body) = post_json(
        h,
        &h.url(&format!("{MPU}/create/{dir}")),
        json!({"path": name, "num_parts": parts}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let credentials = body["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), parts as usize);
    for (i, credential) in credentials.iter().enumerate() {
        assert_eq!(credential["part_number"], json!(i + 1));
        assert!(
            credential.get("headers").is_none(),
            "empty headers left out"
        );
    }
    Created {
        upload_id: body["upload_id"].as_str().unwrap().to_owned(),
        urls: credentials
            .iter()
            .map(|c| c["url"].as_str().unwrap().to_owned())
            .collect(),
    }
}

async fn put_part(h: &Harness, url: &str, data: Vec<u8>) -> reqwest::Response {
    h.http.put(url).body(data).send().await.unwrap()
}

/// Parts s3s-fs keeps for open uploads (`.upload_id-<id>.part-<n>`).
/// Whether a multipart upload is open: s3s-fs shows its folder, an external store lists it.
fn upload_open(h: &Harness) -> bool {
    let left = h.s3.multipart_leftovers();
    if h.s3.is_external() {
        !left.is_empty()
    } else {
        left.iter().any(|f| f.contains(".upload-"))
    }
}

fn stored_parts(h: &Harness) -> Vec<String> {
    h.s3.multipart_leftovers()
        .into_iter()
        .filter(|f| f.contains(".part-") || f.contains(".tmp."))
        .collect()
}

fn token_of(url: &str) -> &str {
    url.split_once("token=").unwrap().1
}

fn with_token(url: &str, token: &str) -> String {
    format!("{}token={token}", url.split_once("token=").unwrap().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_driven_upload_end_to_end() {
    let h = Harness::start().await;
    let data = random_bytes(11 * MIB);
    let chunk = 5 * MIB;
    let created = create(&h, "1/r/artifacts/sub", "/home/me/big.bin", 3).await;
    // The URLs point at the proxy, as the client reached it.
    for url in &created.urls {
        assert!(
            url.starts_with(&format!(
                "{}/api/2.0/mlflow-artifacts/signed/part?token=",
                h.base
            )),
            "{url}"
        );
    }
    // Parts in parallel, out of order, as the client's thread pool sends them.
    let mut sends = Vec::new();
    for (i, url) in created.urls.iter().enumerate().rev() {
        let part = data[i * chunk..((i + 1) * chunk).min(data.len())].to_vec();
        sends.push(put_part(&h, url, part));
    }
    let mut etags = Vec::new();
    for (i, response) in futures_util::future::join_all(sends)
        .await
        .into_iter()
        .rev()
        .enumerate()
    {
        assert_eq!(response.status(), 200);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"'), "S3's quoted ETag: {etag}");
        etags.push(json!({"part_number": i + 1, "etag": etag, "url": created.urls[i]}));
    }
    let (status, body) = post_json(
        &h,
        &h.url(&format!("{MPU}/complete/1/r/artifacts/sub")),
        json!({"path": "big.bin", "upload_id": created.upload_id, "parts": etags}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let stored = h.s3.object("1/r/artifacts/sub/big.bin").expect("stored");
    assert_eq!(sha256(&stored), sha256(&data));
    assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
    assert_eq!(h.mlflow.count(), 0, "nothing went to MLflow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_with_the_same_key_takes_the_parts() {
    let h = Harness::start().await;
    // A second proxy on the same store and key; a third with another key.
    let twin = replica(&h, TEST_SIGNING_KEY).await;
    let stranger = replica(&h, &[9; 32]).await;
    let created = create(&h, "1/r/artifacts", "x.bin", 1).await;
    let elsewhere = |proxy: &mlflow_artifact_proxy::Proxy| {
        created.urls[0].replace(&h.base, &format!("http://{}", proxy.addr))
    };
    let refused = put_part(&h, &elsewhere(&stranger), vec![1; 1000]).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(stored_parts(&h), Vec::<String>::new());
    let accepted = put_part(&h, &elsewhere(&twin), vec![1; 1000]).await;
    assert_eq!(accepted.status(), 200);
    let etag = accepted.headers()["etag"].to_str().unwrap().to_owned();
    let (status, _) = post_json(
        &h,
        &format!("http://{}{MPU}/complete/1/r/artifacts", twin.addr),
        json!({"path": "x.bin", "upload_id": created.upload_id,
               "parts": [{"part_number": 1, "etag": etag}]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        h.s3.object("1/r/artifacts/x.bin").expect("stored"),
        vec![1; 1000]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_and_store_nothing() {
    let h = Harness::start().await;
    let created = create(&h, "1/r/artifacts", "x.bin", 2).await;
    let url = &created.urls[0];
    let valid = token_of(url).to_owned();
    let claims = |part_number: u32, expires: u64| Claims {
        grant: Grant::Part,
        expires,
        part_number,
        upload_id: created.upload_id.clone(),
        target: "1/r/artifacts/x.bin".into(),
    };
    let ours = Signer::with_key(TEST_SIGNING_KEY);
    let forged = Signer::with_key(&[1; 32])
        .sign(&claims(1, now_secs() + 600))
        .unwrap();
    // Part 2's payload with part 1's signature.
    let part2 = token_of(&created.urls[1])
        .split_once('.')
        .unwrap()
        .0
        .to_owned();
    let altered = format!("{part2}.{}", valid.split_once('.').unwrap().1);
    let expired = ours.sign(&claims(1, now_secs() - 1)).unwrap();
    let object_token = ours
        .sign(&Claims {
            grant: Grant::Object,
            ..claims(1, now_secs() + 600)
        })
        .unwrap();
    for (what, token) in [
        ("forged", forged),
        ("altered", altered),
        ("expired", expired),
        ("download token", object_token),
        ("garbage", "x.y".to_owned()),
        ("none", String::new()),
    ] {
        let response = put_part(&h, &with_token(url, &token), vec![5; 64 * 1024]).await;
        assert_eq!(response.status(), 403, "{what}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error_code"], "PERMISSION_DENIED", "{what}");
    }
    assert_eq!(stored_parts(&h), Vec::<String>::new(), "no part stored");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"mlflow_proxy_signed_url_refusals_total{reason="signature"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_leaves_no_parts_and_later_parts_are_refused() {
    let h = Harness::start().await;
    let created = create(&h, "1/r/artifacts", "x.bin", 3).await;
    for url in &created.urls[..2] {
        assert_eq!(put_part(&h, url, vec![3; 5 * MIB]).await.status(), 200);
    }
    if h.s3.is_external() {
        // An external store lists open uploads, not their parts.
        assert!(upload_open(&h), "{:?}", h.s3.multipart_leftovers());
    } else {
        assert_eq!(
            stored_parts(&h).len(),
            2,
            "{:?}",
            h.s3.multipart_leftovers()
        );
    }
    let (status, body) = post_json(
        &h,
        &h.url(&format!("{MPU}/abort/1/r/artifacts")),
        json!({"path": "x.bin", "upload_id": created.upload_id}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
    // A valid token for an upload that no longer exists: refused, nothing stored.
    let late = put_part(&h, &created.urls[2], vec![3; 1000]).await;
    assert_eq!(late.status(), 404);
    assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
    assert_eq!(h.s3.keys(), Vec::<String>::new());
    // Completing or aborting it again: the client's error, not a retryable 5xx.
    let (status, body) = post_json(
        &h,
        &h.url(&format!("{MPU}/complete/1/r/artifacts")),
        json!({"path": "x.bin", "upload_id": created.upload_id,
               "parts": [{"part_number": 1, "etag": "\"x\""}]}),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].clone()),
        (404, json!("RESOURCE_DOES_NOT_EXIST"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_must_declare_a_size_within_bounds_and_send_it() {
    let mut transfers = test_transfers();
    transfers.max_part = 512 * 1024;
    let h = Harness::start_with_transfers(upload_config(), "", transfers).await;
    let created = create(&h, "1/r/artifacts", "x.bin", 1).await;
    let url = created.urls[0].clone();
    // (A refused body up to 1 MiB is read and dropped, so the client sees the answer.)
    let too_big = put_part(&h, &url, vec![1; 600 * 1024]).await;
    assert_eq!(too_big.status(), 413);
    // No Content-Length (chunked): 411.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(vec![1u8; 10])]);
    let chunked = h
        .http
        .put(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 411);
    // Fewer bytes than declared, then the client goes away: nothing kept.
    {
        use tokio::io::AsyncWriteExt;
        let target = url.split_once(&h.base).unwrap().1;
        let mut stream = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
        let head = format!(
            "PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            400 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&vec![2; 100_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("no partial part kept", || stored_parts(&h).is_empty()).await;
    // More bytes than declared: the part is the declared bytes, not one more; the rest is not
    // a request, and the proxy says so (400) and closes.
    let target = url.split_once(&h.base).unwrap().1;
    let raw = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
        let head =
            format!("PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[4; 1000]).await.unwrap();
        let mut raw = Vec::new();
        // The proxy answers the part, refuses the excess and closes.
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
            .await
            .expect("the proxy closes after refusing the excess")
            .unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
    assert!(raw.contains("HTTP/1.1 400"), "the excess is refused: {raw}");
    assert_eq!(h.s3.keys(), Vec::<String>::new());
    // What the part holds, on any store: exactly the 10 declared bytes.
    let etag = raw
        .lines()
        .find_map(|l| {
            l.strip_prefix("etag: ")
                .or_else(|| l.strip_prefix("ETag: "))
        })
        .expect("the part's ETag")
        .trim()
        .to_owned();
    let (status, body) = post_json(
        &h,
        &h.url(&format!("{MPU}/complete/1/r/artifacts")),
        json!({"path": "x.bin", "upload_id": created.upload_id,
               "parts": [{"part_number": 1, "etag": etag, "url": url}]}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(h.s3.object("1/r/artifacts/x.bin"), Some(vec![4; 10]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpu_requests_are_checked_like_mlflow() {
    let h = Harness::start().await;
    let url = h.url(&format!("{MPU}/create/1/r/artifacts"));
    let no_type = h
        .http
        .post(&url)
        .body(r#"{"path": "x.bin", "num_parts": 1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), 400);
    for (body, what) in [
        (json!({"num_parts": 1}), "path missing"),
        (json!({"path": "..", "num_parts": 1}), "path .."),
        (
            json!({"path": "x.bin", "num_parts": 10_001}),
            "too many parts",
        ),
        (json!({"path": "x.bin", "num_parts": -1}), "negative"),
        (json!({"path": 3, "num_parts": 1}), "path not a string"),
    ] {
        let (status, answer) = post_json(&h, &url, body).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error_code"], "INVALID_PARAMETER_VALUE", "{what}");
    }
    let (status, _) = post_json(
        &h,
        &h.url(&format!("{MPU}/create/..%2F..%2Fetc")),
        json!({"path": "x", "num_parts": 1}),
    )
    .await;
    assert_eq!(status, 400);
    // Bad part lists on complete: the client's fault (400), never a retryable 5xx.
    let created = create(&h, "1/r/artifacts", "x.bin", 1).await;
    let complete = h.url(&format!("{MPU}/complete/1/r/artifacts"));
    for parts in [
        json!([]),
        json!([{"part_number": 1}]),
        json!([{"part_number": 0, "etag": "\"a\""}]),
    ] {
        let (status, _) = post_json(
            &h,
            &complete,
            json!({"path": "x.bin", "upload_id": created.upload_id, "parts": parts}),
        )
        .await;
        assert_eq!(status, 400, "{parts}");
    }
    // (An ETag S3 does not know: real S3 says 400 InvalidPart, which the proxy passes on as
    // 400; s3s-fs answers 500 InternalError, so that case is not asserted here.)
    assert_eq!(h.mlflow.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_download_serves_the_object_with_and_without_range() {
    let h = Harness::start().await;
    let data = random_bytes(3 * MIB + 17);
    assert_eq!(
        h.put("1/r/artifacts/m.bin", data.clone()).await.status(),
        200
    );
    for prefix in ["/api/2.0", "/ajax-api/2.0"] {
        let response = h
            .http
            .get(h.url(&format!(
                "{prefix}/mlflow-artifacts/presigned/1/r/artifacts/m.bin"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let answer: Value = serde_json::from_str(&text).unwrap();
        let url = answer["url"].as_str().unwrap().to_owned();
        assert!(
            url.starts_with(&format!(
                "{}{prefix}/mlflow-artifacts/signed/object?token=",
                h.base
            )),
            "{url}"
        );
        assert_eq!(
            text,
            format!(
                r#"{{"url": "{url}", "headers": {{}}, "file_size": {}}}"#,
                data.len()
            )
        );
        let whole = h.http.get(&url).send().await.unwrap();
        assert_eq!(whole.status(), 200);
        assert_eq!(
            whole.headers()["content-disposition"],
            "attachment; filename=m.bin"
        );
        assert_eq!(sha256(&whole.bytes().await.unwrap()), sha256(&data));
        let ranged = h
            .http
            .get(&url)
            .header("range", "bytes=1048576-2097151")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), 206);
        assert_eq!(
            ranged.headers()["content-range"],
            format!("bytes 1048576-2097151/{}", data.len())
        );
        assert_eq!(
            sha256(&ranged.bytes().await.unwrap()),
            sha256(&data[MIB..2 * MIB])
        );
        // The token names this object only: altered, it is refused.
        let mut altered = url.clone().into_bytes();
        let at = altered.len() - 3;
        altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
        let refused = h
            .http
            .get(String::from_utf8(altered).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403);
    }
    let missing = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/presigned/1/r/artifacts/nope.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // A part token cannot read objects.
    let created = create(&h, "1/r/artifacts", "m.bin", 1).await;
    let part_token = token_of(&created.urls[0]);
    let response = h
        .http
        .get(h.url(&format!(
            "/api/2.0/mlflow-artifacts/signed/object?token={part_token}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_url_and_trusted_proxies_shape_the_urls() {
    let mut transfers = test_transfers();
    transfers.public_url =
        mlflow_artifact_proxy::artifacts::state::public_url::PublicUrlArgs { public_url: None }
            .build("127.0.0.1".parse().unwrap())
            .unwrap();
    let h = Harness::start_with_transfers(upload_config(), "", transfers).await;
    h.put("1/a.txt", b"hello".to_vec()).await;
    let response = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/presigned/1/a.txt"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "mlflow.example.com")
        .send()
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert!(
        answer["url"]
            .as_str()
            .unwrap()
            .starts_with("https://mlflow.example.com/api/2.0/mlflow-artifacts/signed/object?"),
        "{answer}"
    );
}

/// Another proxy process on the harness's store and MLflow, with `key`.
async fn replica(h: &Harness, key: &[u8]) -> mlflow_artifact_proxy::Proxy {
    let mut config = serve_config(&h.s3, &format!("http://{}", h.mlflow.addr));
    config.transfers =
        mlflow_artifact_proxy::artifacts::state::transfers::TransferConfig::with_key(key);
    config.shutdown_grace = Duration::from_secs(1);

    mlflow_artifact_proxy::Proxy::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_shuts_down_leaves_client_uploads_to_the_others() {
    let h = Harness::start().await;
    let twin = replica(&h, TEST_SIGNING_KEY).await;
    let twin_base = format!("http://{}", twin.addr);
    let created = create(&h, "1/r/artifacts", "x.bin", 2).await;
    let first = put_part(&h, &created.urls[0], vec![1; 5 * MIB]).await;
    assert_eq!(first.status(), 200);
    let etag1 = first.headers()["etag"].to_str().unwrap().to_owned();
    // The replica that created the upload stops (as on SIGTERM), the upload still open.
    let Harness {
        s3, proxy, http, ..
    } = h;
    proxy.shutdown().await;
    let left = s3.multipart_leftovers();
    let open = if s3.is_external() {
        !left.is_empty()
    } else {
        left.iter().any(|f| f.contains(".upload-"))
    };
    assert!(
        open,
        "the upload is still open after the shutdown: {left:?}"
    );
    // The client carries on with the other replica: part 2, then complete.
    let url2 = created.urls[1].replacen("http://", "", 1);
    let url2 = format!("{twin_base}{}", &url2[url2.find('/').unwrap()..]);
    let second = http.put(url2).body(vec![2; 1000]).send().await.unwrap();
    assert_eq!(second.status(), 200);
    let etag2 = second.headers()["etag"].to_str().unwrap().to_owned();
    let done = http
        .post(format!("{twin_base}{MPU}/complete/1/r/artifacts"))
        .header("content-type", "application/json")
        .body(
            json!({"path": "x.bin", "upload_id": created.upload_id, "parts": [
                {"part_number": 1, "etag": etag1}, {"part_number": 2, "etag": etag2}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let stored = s3.object("1/r/artifacts/x.bin").expect("stored");
    assert_eq!(stored.len(), 5 * MIB + 1000);
    assert_eq!(s3.multipart_leftovers(), Vec::<String>::new());
}

/// Issue 20: an upload id is bound to its key. s3s-fs completed alice's upload into bob's path
/// when bob's complete named her upload id; now a complete or abort at another path is refused
/// (404, as for an unknown upload) and the upload stays the owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_id_serves_only_its_own_path() {
    let h = Harness::start().await;
    let created = create(&h, "1/alice/artifacts", "x.bin", 1).await;
    let part = put_part(&h, &created.urls[0], vec![5; 10]).await;
    assert_eq!(part.status(), 200);
    let etag = part.headers()["etag"].to_str().unwrap().to_owned();
    let parts = json!([{"part_number": 1, "etag": etag}]);
    for (action, body) in [
        (
            "complete",
            json!({"path": "x.bin", "upload_id": created.upload_id, "parts": parts}),
        ),
        (
            "abort",
            json!({"path": "x.bin", "upload_id": created.upload_id}),
        ),
    ] {
        let (status, answer) =
            post_json(&h, &h.url(&format!("{MPU}/{action}/2/bob/artifacts")), body).await;
        assert_eq!(status, 404, "{action}: {answer}");
        assert_eq!(answer["error_code"], "RESOURCE_DOES_NOT_EXIST");
    }
    // Another file name in the same directory is another key too.
    let (status, _) = post_json(
        &h,
        &h.url(&format!("{MPU}/complete/1/alice/artifacts")),
        json!({"path": "y.bin", "upload_id": created.upload_id, "parts": parts}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(h.s3.object("2/bob/artifacts/x.bin"), None);
    let (status, body) = post_json(
        &h,
        &h.url(&format!("{MPU}/complete/1/alice/artifacts")),
        json!({"path": "x.bin", "upload_id": created.upload_id, "parts": parts}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(h.s3.object("1/alice/artifacts/x.bin"), Some(vec![5; 10]));
}
