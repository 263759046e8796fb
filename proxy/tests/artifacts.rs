//! The artifact routes against a real S3 server (s3s-fs, SigV4 checked), over real HTTP.

mod common;

use common::*;
use futures_util::StreamExt;
use pretty_assertions::assert_eq;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_keep_every_byte() {
    let h = Harness::start().await;
    // Around the 5 MiB part size, and well past the 8 MiB single-PUT limit (multipart).
    for size in [0, 1, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 64 * MIB] {
        let data = random_bytes(size);
        let path = format!("1/run/artifacts/size-{size}.bin");
        let put = h.put(&path, data.clone()).await;
        assert_eq!(put.status(), 200, "PUT {size} bytes");
        assert_eq!(put.headers().get("content-length").unwrap(), "0");
        assert!(
            put.headers().get("content-type").is_none(),
            "stock PUT has no Content-Type"
        );
        assert_eq!(put.bytes().await.unwrap().len(), 0);

        let get = h.get(&path).await;
        assert_eq!(get.status(), 200, "GET {size} bytes");
        let headers = header_map(&get);
        assert_eq!(headers["content-length"], size.to_string());
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert_eq!(
            headers["content-disposition"],
            format!("attachment; filename=size-{size}.bin")
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["accept-ranges"], "bytes");
        assert!(headers.contains_key("etag") && headers.contains_key("last-modified"));
        let body = get.bytes().await.unwrap();
        assert_eq!(sha256(&body), sha256(&data), "content of {size} bytes");
        // What S3 holds is the same object under the same key the Python server would use.
        assert_eq!(sha256(&h.s3.object(&path).expect("stored")), sha256(&data));
    }
    assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
    let metrics = h.metrics().await;
    // Only the 64 MiB upload is above the 8 MiB single-PUT limit.
    assert!(
        metrics.contains("mlflow_proxy_multipart_uploads_total{event=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlflow_proxy_upload_budget_in_use_bytes 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_uploads_without_content_length() {
    let h = Harness::start().await;
    for size in [0, 100 * 1024, 12 * MIB + 17] {
        let data = random_bytes(size);
        // Uneven frames, as a real client would send them.
        let frames: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(300_007).map(|c| Ok(c.to_vec())).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(frames));
        let path = format!("chunked/{size}.bin");
        let put = h
            .http
            .put(h.artifact(&path))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200, "chunked PUT of {size} bytes");
        let body = h.get(&path).await.bytes().await.unwrap();
        assert_eq!(
            sha256(&body),
            sha256(&data),
            "chunked upload of {size} bytes"
        );
    }
    assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_map_to_the_keys_mlflow_uses() {
    let h = Harness::start().await;
    // (path as sent on the wire, key MLflow's validate_path_is_safe gives)
    let cases = [
        ("names/with%20space.txt", "names/with space.txt"),
        (
            "names/%E6%97%A5%E6%9C%AC%E8%AA%9E%20%E2%9C%93.bin",
            "names/日本語 ✓.bin",
        ),
        ("names/100%25%20done.txt", "names/100% done.txt"),
        ("names/a+b=c&d.txt", "names/a+b=c&d.txt"),
        ("names/twice%2520decoded.txt", "names/twice decoded.txt"),
        ("names/trailing.txt%23", "names/trailing.txt"),
    ];
    for (wire, key) in cases {
        let data = random_bytes(1000);
        let put = raw_request(
            h.proxy.addr,
            "PUT",
            &format!("/api/2.0/mlflow-artifacts/artifacts/{wire}"),
            &data,
        )
        .await;
        assert_eq!(put.status, 200, "PUT {wire}: {}", put.text());
        assert!(
            h.s3.object(key).is_some(),
            "{wire} should be stored as {key:?}; keys: {:?}",
            h.s3.keys()
        );
        let get = raw_request(
            h.proxy.addr,
            "GET",
            &format!("/api/2.0/mlflow-artifacts/artifacts/{wire}"),
            b"",
        )
        .await;
        assert_eq!(get.status, 200, "GET {wire}");
        assert_eq!(sha256(&get.body), sha256(&data), "GET {wire}");
    }
    let get = raw_request(
        h.proxy.addr,
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/names/%E6%97%A5%E6%9C%AC%E8%AA%9E%20%E2%9C%93.bin",
        b"",
    )
    .await;
    assert_eq!(
        get.header("content-disposition"),
        Some(
            "attachment; filename=\" .bin\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E%20%E2%9C%93.bin"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_heads_and_conditionals() {
    let h = Harness::start().await;
    let data = random_bytes(1000);
    assert_eq!(h.put("r/data.bin", data.clone()).await.status(), 200);
    let url = h.artifact("r/data.bin");
    for (range, start, end) in [
        ("bytes=0-9", 0, 9),
        ("bytes=500-509", 500, 509),
        ("bytes=990-", 990, 999),
        ("bytes=-10", 990, 999),
    ] {
        let response = h
            .http
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(
            header_map(&response)["content-range"],
            format!("bytes {start}-{end}/1000"),
            "{range}"
        );
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            &data[start..=end],
            "{range}"
        );
    }
    let past_end = h
        .http
        .get(&url)
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(past_end.status(), 416);
    assert_eq!(header_map(&past_end)["content-range"], "bytes */1000");

    let head = raw_request(
        h.proxy.addr,
        "HEAD",
        "/api/2.0/mlflow-artifacts/artifacts/r/data.bin",
        b"",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    assert_eq!(
        head.header("content-disposition"),
        Some("attachment; filename=data.bin")
    );
    assert!(head.body.is_empty());
    let etag = head.header("etag").expect("HEAD has an ETag").to_owned();

    let cached = h
        .http
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());
    let changed = h
        .http
        .get(&url)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(changed.bytes().await.unwrap().len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_follows_mlflow() {
    let h = Harness::start().await;
    for (path, size) in [
        ("d/a.txt", 3),
        ("d/empty.bin", 0),
        ("d/sub/x.txt", 5),
        ("d/sub/deeper/y.txt", 1),
        ("d/日.txt", 2),
        ("d/a", 4),
    ] {
        assert_eq!(h.put(path, random_bytes(size)).await.status(), 200);
    }
    let list = |path: &str| {
        let url = h.url(&format!("/api/2.0/mlflow-artifacts/artifacts?path={path}"));
        let http = h.http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            assert_eq!(response.headers()["content-type"], "application/json");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let expected = "{\n  \"files\": [\n    {\n      \"path\": \"a\",\n      \"is_dir\": false,\n      \"file_size\": 4\n    },\n    {\n      \"path\": \"a.txt\",\n      \"is_dir\": false,\n      \"file_size\": 3\n    },\n    {\n      \"path\": \"empty.bin\",\n      \"is_dir\": false\n    },\n    {\n      \"path\": \"sub\",\n      \"is_dir\": true\n    },\n    {\n      \"path\": \"\\u65e5.txt\",\n      \"is_dir\": false,\n      \"file_size\": 2\n    }\n  ]\n}";
    assert_eq!(list("d").await, (200, expected.to_owned()));
    assert_eq!(list("d/").await, (200, expected.to_owned()));
    assert_eq!(
        list("d%2Fsub").await,
        (200, "{\n  \"files\": [\n    {\n      \"path\": \"deeper\",\n      \"is_dir\": true\n    },\n    {\n      \"path\": \"x.txt\",\n      \"is_dir\": false,\n      \"file_size\": 5\n    }\n  ]\n}".to_owned())
    );
    assert_eq!(list("nothing/here").await, (200, "{}".to_owned()));
    assert_eq!(list("d/a.txt").await, (200, "{}".to_owned()));
    // No path: the destination root.
    let root = h
        .http
        .get(h.url("/ajax-api/2.0/mlflow-artifacts/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        root.text().await.unwrap(),
        "{\n  \"files\": [\n    {\n      \"path\": \"d\",\n      \"is_dir\": true\n    }\n  ]\n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_recursive_idempotent_and_spares_siblings() {
    let h = Harness::start().await;
    for path in [
        "d/a",
        "d/a.txt",
        "d/sub/x.txt",
        "d/sub/deeper/y.txt",
        "d/subway.txt",
    ] {
        assert_eq!(h.put(path, random_bytes(10)).await.status(), 200);
    }
    for _ in 0..2 {
        let response = h.http.delete(h.artifact("d/sub")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), "{}");
    }
    assert_eq!(h.s3.keys(), vec!["d/a", "d/a.txt", "d/subway.txt"]);
    assert_eq!(
        h.http
            .delete(h.artifact("d/a"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(h.s3.keys(), vec!["d/a.txt", "d/subway.txt"]);
    assert_eq!(
        h.http
            .delete(h.artifact("d"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(h.s3.keys(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_paths_are_refused_exactly_as_mlflow_does() {
    let h = Harness::start().await;
    let fastapi = r#"{"error_code":"INVALID_PARAMETER_VALUE","message":"Invalid path","sqlstate":"KAM00","error_class":"INVALID_PARAMETER_VALUE"}"#;
    let flask = r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path", "sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}"#;
    let unsafe_paths = [
        "../x",
        "a/../../b",
        "%2e%2e/x",
        "..%2f..%2fetc%2fpasswd",
        "%252e%252e/x",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",
        "C:/Windows/win.ini",
        "C:%5CWindows",
        "a%23b",
        "file:%2F%2F%2Fetc%2Fpasswd",
        "%5C%5Cserver%5Cshare%5Cx",
    ];
    for path in unsafe_paths {
        for (method, expected) in [("GET", fastapi), ("PUT", fastapi), ("DELETE", flask)] {
            let response = raw_request(
                h.proxy.addr,
                method,
                &format!("/api/2.0/mlflow-artifacts/artifacts/{path}"),
                b"x",
            )
            .await;
            assert_eq!(
                (response.status, response.text()),
                (400, expected.to_owned()),
                "{method} {path}"
            );
            assert_eq!(response.header("content-type"), Some("application/json"));
        }
        let list = raw_request(
            h.proxy.addr,
            "GET",
            &format!("/api/2.0/mlflow-artifacts/artifacts?path={path}"),
            b"",
        )
        .await;
        assert_eq!(
            (list.status, list.text()),
            (400, flask.to_owned()),
            "list {path}"
        );
    }
    assert_eq!(h.s3.keys(), Vec::<String>::new(), "nothing may be written");

    let trailing = raw_request(
        h.proxy.addr,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/dir/",
        b"x",
    )
    .await;
    assert_eq!(
        (trailing.status, trailing.text()),
        (
            400,
            r#"{"detail":"Artifact path must include a filename (cannot end with '/')."}"#
                .to_owned()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_and_directories() {
    let h = Harness::start().await;
    assert_eq!(h.put("d/sub/x.txt", b"hello".to_vec()).await.status(), 200);
    let missing = raw_request(
        h.proxy.addr,
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/d/nope.txt",
        b"",
    )
    .await;
    assert_eq!(
        (missing.status, missing.text()),
        (404, r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"No such artifact: 'd/nope.txt'","sqlstate":"KAM00","error_class":"RESOURCE_NOT_FOUND"}"#.to_owned())
    );
    let dir = raw_request(
        h.proxy.addr,
        "GET",
        "/api/2.0/mlflow-artifacts/artifacts/d/sub",
        b"",
    )
    .await;
    assert_eq!(
        (dir.status, dir.text()),
        (
            400,
            r#"{"detail":"Artifact path refers to a directory, not a file: 'd/sub'"}"#.to_owned()
        )
    );
    let head = raw_request(
        h.proxy.addr,
        "HEAD",
        "/api/2.0/mlflow-artifacts/artifacts/d/nope.txt",
        b"",
    )
    .await;
    assert_eq!(head.status, 404);
    let text = h.get("d/sub/x.txt").await;
    assert_eq!(text.headers()["content-type"], "text/plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_and_presigned_routes_switched_off_send_clients_back_to_plain_transfers() {
    let mut transfers = test_transfers();
    transfers.uploads = false;
    transfers.downloads = false;
    let h = Harness::start_with_transfers(upload_config(), "", transfers).await;
    let mpu = raw_request(
        h.proxy.addr,
        "POST",
        "/api/2.0/mlflow-artifacts/mpu/create/1/r/artifacts",
        br#"{"path":"big.bin","num_parts":3}"#,
    )
    .await;
    assert_eq!(
        (mpu.status, mpu.text()),
        (501, r#"{"error_code": "NOT_IMPLEMENTED", "message": "Multipart upload is not supported for the current artifact repository"}"#.to_owned())
    );
    let presigned = raw_request(
        h.proxy.addr,
        "GET",
        "/ajax-api/2.0/mlflow-artifacts/presigned/1/r/artifacts/x",
        b"",
    )
    .await;
    assert_eq!(presigned.status, 501);
    let info = h
        .http
        .get(h.url("/api/3.0/mlflow/server-info"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        info.contains(r#""multipart_uploads_enabled":false,"multipart_downloads_enabled":false"#),
        "{info}"
    );
}

/// Send the headers and part of the body, then drop the connection.
async fn interrupted_put(h: &Harness, path: &str, declared: Option<usize>, sent: usize) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(h.proxy.addr).await.unwrap();
    let framing = match declared {
        Some(len) => format!("Content-Length: {len}"),
        None => "Transfer-Encoding: chunked".to_owned(),
    };
    let head = format!(
        "PUT /api/2.0/mlflow-artifacts/artifacts/{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = random_bytes(MIB);
    for _ in 0..sent / MIB {
        if declared.is_none() {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await
                .unwrap();
            stream.write_all(&chunk).await.unwrap();
            stream.write_all(b"\r\n").await.unwrap();
        } else {
            stream.write_all(&chunk).await.unwrap();
        }
    }
    stream.flush().await.unwrap();
    // Let the proxy start parts before the client vanishes.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_uploads_leave_no_object_and_no_parts() {
    let h = Harness::start().await;
    // Multipart (64 MiB declared, 20 MiB sent), single PUT (6 MiB declared, 3 sent), chunked.
    interrupted_put(&h, "cut/multipart.bin", Some(64 * MIB), 20 * MIB).await;
    interrupted_put(&h, "cut/single.bin", Some(6 * MIB), 3 * MIB).await;
    interrupted_put(&h, "cut/chunked.bin", None, 12 * MIB).await;
    eventually("no multipart upload or part left", || {
        h.s3.multipart_leftovers().is_empty()
    })
    .await;
    assert_eq!(h.s3.keys(), Vec::<String>::new(), "no object may appear");
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("mlflow_proxy_multipart_uploads_total{event=\"aborted\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mlflow_proxy_multipart_uploads_total{event=\"started\"} 2"),
        "{metrics}"
    );
    // The proxy still works afterwards.
    assert_eq!(h.put("cut/after.bin", random_bytes(10)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_prefix_is_honoured() {
    let h = Harness::start_with(upload_config(), "team/mlflow").await;
    let data = random_bytes(6 * MIB);
    assert_eq!(
        h.put("1/r/artifacts/m.bin", data.clone()).await.status(),
        200
    );
    assert_eq!(h.s3.keys(), vec!["team/mlflow/1/r/artifacts/m.bin"]);
    let body = h.get("1/r/artifacts/m.bin").await.bytes().await.unwrap();
    assert_eq!(sha256(&body), sha256(&data));
    let list = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/artifacts?path=1/r/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        list.text().await.unwrap(),
        "{\n  \"files\": [\n    {\n      \"path\": \"m.bin\",\n      \"is_dir\": false,\n      \"file_size\": 6291456\n    }\n  ]\n}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_streams_before_the_object_is_read_whole() {
    let h = Harness::start().await;
    let data = random_bytes(32 * MIB);
    assert_eq!(h.put("big/stream.bin", data.clone()).await.status(), 200);
    let response = h.get("big/stream.bin").await;
    let mut stream = response.bytes_stream();
    let mut frames = 0;
    let mut received = Vec::with_capacity(data.len());
    while let Some(chunk) = stream.next().await {
        received.extend_from_slice(&chunk.unwrap());
        frames += 1;
    }
    assert!(
        frames > 10,
        "the body arrived in {frames} frames: it was not streamed"
    );
    assert_eq!(sha256(&received), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlflow_security_middleware_is_kept() {
    let h = Harness::start().await;
    assert_eq!(
        h.put("sec/hello.txt", b"hello".to_vec()).await.status(),
        200
    );

    // A foreign Host (DNS rebinding): refused before anything is read or stored.
    let foreign = h
        .http
        .put(h.artifact("sec/evil.txt"))
        .header("host", "evil.example.com")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert_eq!(foreign.headers()["content-type"], "text/plain");
    assert_eq!(
        foreign.text().await.unwrap(),
        "Invalid Host header - possible DNS rebinding attack detected"
    );
    let foreign_get = h
        .http
        .get(h.artifact("sec/hello.txt"))
        .header("host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign_get.status(), 403);

    // A cross-origin write from a foreign origin: blocked; from localhost: allowed, with CORS headers.
    for (method, path) in [
        (reqwest::Method::PUT, "sec/o.txt"),
        (reqwest::Method::DELETE, "sec/hello.txt"),
    ] {
        let blocked = h
            .http
            .request(method.clone(), h.artifact(path))
            .header("origin", "http://evil.example.com")
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(blocked.status(), 403, "{method} {path}");
        assert_eq!(
            blocked.text().await.unwrap(),
            "Cross-origin request blocked"
        );
    }
    assert_eq!(
        h.s3.keys(),
        vec!["sec/hello.txt"],
        "nothing written or deleted"
    );
    let local = h
        .http
        .put(h.artifact("sec/local.txt"))
        .header("origin", "http://localhost:3000")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);
    let headers = header_map(&local);
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(headers["access-control-allow-credentials"], "true");

    // Every answer carries MLflow's security headers.
    let get = h.get("sec/hello.txt").await;
    let headers = header_map(&get);
    assert_eq!(headers["x-frame-options"], "SAMEORIGIN");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["vary"], "Origin");
    let list = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/artifacts?path=sec"))
        .send()
        .await
        .unwrap();
    assert_eq!(header_map(&list)["x-frame-options"], "SAMEORIGIN");
}
