//! Where S3 stores differ (docs/stores.md): what the store under test answers itself, asserted
//! per store, and what the proxy answers the client, which must not depend on the store.
//!
//! Runs against the in-process s3s-fs, or against the store `PROXY_TEST_S3_ENDPOINT` names
//! (`PROXY_TEST_S3_STORE=garage` in CI; see tests/common). A store without a row here fails.

mod common;

use std::collections::HashMap;

use common::*;
use pretty_assertions::assert_eq;

/// The documented answer of the store under test.
fn per_store<T>(s3: &S3Server, s3s_fs: T, garage: T) -> T {
    match s3.store.as_str() {
        "s3s-fs" => s3s_fs,
        "garage" => garage,
        other => {
            panic!("no documented behaviour for store {other:?}: add it to docs/stores.md and here")
        }
    }
}

/// A request straight to the store, presigned: (status, body).
async fn direct(
    h: &Harness,
    method: reqwest::Method,
    key: &str,
    queries: &[(&str, &str)],
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let bucket = h.s3.client();
    let queries: Option<HashMap<String, String>> = (!queries.is_empty()).then(|| {
        queries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    });
    let url = match method.as_str() {
        "PUT" => bucket.presign_put(key, 300, None, queries).await,
        "DELETE" => bucket.presign_delete(key, 300).await,
        _ => bucket.presign_get(key, 300, queries).await,
    }
    .unwrap();
    let mut request = h.http.request(method, url).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_gets_on_the_store() {
    let h = Harness::start().await;
    assert_eq!(h.put("c/data.bin", random_bytes(100)).await.status(), 200);
    let etag = h.get("c/data.bin").await.headers()["etag"]
        .to_str()
        .unwrap()
        .to_owned();
    let get = |headers: Vec<(&'static str, String)>| {
        let h = &h;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            direct(h, reqwest::Method::GET, "c/data.bin", &[], &headers, b"")
                .await
                .0
        }
    };
    let future = "Fri, 01 Jan 2100 00:00:00 GMT".to_owned();
    let past = "Thu, 01 Jan 1998 00:00:00 GMT".to_owned();
    // s3s-fs ignores every conditional header on GetObject; Garage evaluates all but If-Range.
    let cases = [
        (
            "If-Match other",
            vec![("if-match", "\"other\"".to_owned())],
            200,
            412,
        ),
        ("If-Match same", vec![("if-match", etag.clone())], 200, 200),
        (
            "If-None-Match same",
            vec![("if-none-match", etag.clone())],
            200,
            304,
        ),
        (
            "If-Modified-Since future",
            vec![("if-modified-since", future)],
            200,
            304,
        ),
        (
            "If-Unmodified-Since past",
            vec![("if-unmodified-since", past)],
            200,
            412,
        ),
        (
            "If-Range other with Range",
            vec![
                ("range", "bytes=0-9".to_owned()),
                ("if-range", "\"other\"".to_owned()),
            ],
            206,
            206,
        ),
    ];
    for (what, headers, s3s_fs, garage) in cases {
        assert_eq!(
            get(headers).await,
            per_store(&h.s3, s3s_fs, garage),
            "{what}"
        );
    }
}

/// What the client gets for conditional GETs, on every store. If-None-Match is evaluated by
/// the proxy on the store's ETag, so it answers 304 even where the store ignores the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_none_match_is_the_same_on_every_store() {
    let h = Harness::start().await;
    assert_eq!(h.put("c/data.bin", random_bytes(100)).await.status(), 200);
    let etag = h.get("c/data.bin").await.headers()["etag"].clone();
    let cached = h
        .http
        .get(h.artifact("c/data.bin"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
}

type Case = (&'static str, Vec<(&'static str, &'static str)>, u16, usize);

/// The other conditional headers: the proxy still forwards them to the store, so the client
/// sees the store's answer (200 with the body on s3s-fs, 412/304 on Garage). The answers below
/// are the HTTP ones (RFC 9110 §13), which the proxy must give on every store once it evaluates
/// them itself (issue 11, the conditional-request work on download.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_conditionals_are_the_same_on_every_store() {
    let h = Harness::start().await;
    let data = random_bytes(100);
    assert_eq!(h.put("c/data.bin", data.clone()).await.status(), 200);
    // (what, request headers, status, body length)
    let cases: [Case; 4] = [
        ("If-Match other", vec![("if-match", "\"other\"")], 412, 0),
        (
            "If-Modified-Since future",
            vec![("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")],
            304,
            0,
        ),
        (
            "If-Unmodified-Since past",
            vec![("if-unmodified-since", "Thu, 01 Jan 1998 00:00:00 GMT")],
            412,
            0,
        ),
        (
            "If-Range other with Range: the whole object",
            vec![("range", "bytes=0-9"), ("if-range", "\"other\"")],
            200,
            100,
        ),
    ];
    for (what, headers, status, len) in cases {
        let mut request = h.http.get(h.artifact("c/data.bin"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(response.bytes().await.unwrap().len(), len, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_encoding_on_the_store_and_through_the_proxy() {
    let h = Harness::start().await;
    for path in ["enc/plus+sign.txt", "enc/a b.txt", "enc/100%.txt"] {
        assert_eq!(h.put(path, b"x".to_vec()).await.status(), 200, "{path}");
    }
    let (status, xml) = direct(
        &h,
        reqwest::Method::GET,
        "/",
        &[
            ("list-type", "2"),
            ("prefix", "enc/"),
            ("encoding-type", "url"),
        ],
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{xml}");
    // s3s-fs echoes EncodingType=url but sends the keys as they are, so a client that decodes
    // them (boto3) turns '+' into a space; Garage encodes them as asked, '/' included.
    assert_eq!(
        xml_values(&xml, "Key"),
        per_store(
            &h.s3,
            vec!["enc/100%.txt", "enc/a b.txt", "enc/plus+sign.txt"],
            vec![
                "enc%2F100%25.txt",
                "enc%2Fa%20b.txt",
                "enc%2Fplus%2Bsign.txt"
            ],
        )
    );
    assert_eq!(xml_values(&xml, "EncodingType"), vec!["url"]);
    // The proxy lists without encoding-type, and lists the real names on every store.
    let list = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/artifacts?path=enc"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    let names: Vec<&str> = list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["100%.txt", "a b.txt", "plus+sign.txt"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_listing() {
    let h = Harness::start().await;
    let bucket = h.s3.client();
    let upload = bucket
        .initiate_multipart_upload("mpu/open.bin", "application/octet-stream")
        .await
        .unwrap();
    let listed = bucket.list_multiparts_uploads(None, None).await;
    match h.s3.store.as_str() {
        // No ListMultipartUploads: the harness reads s3s-fs's files instead.
        "s3s-fs" => assert!(
            matches!(
                listed,
                Err(s3::error::S3Error::HttpFailWithBody(501, ref body)) if body.contains("NotImplemented")
            ),
            "{listed:?}"
        ),
        _ => {
            let keys: Vec<String> = listed
                .unwrap()
                .into_iter()
                .flat_map(|page| page.uploads)
                .map(|u| u.key)
                .collect();
            assert_eq!(keys, vec!["mpu/open.bin"]);
        }
    }
    assert_eq!(h.s3.multipart_leftovers().len(), 1);
    bucket
        .abort_upload("mpu/open.bin", &upload.upload_id)
        .await
        .unwrap();
    assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_keys_on_the_store_and_through_the_proxy() {
    let h = Harness::start().await;
    assert_eq!(h.put("f/sub/x.txt", b"x".to_vec()).await.status(), 200);
    let store = |method: reqwest::Method, key: &'static str, body: &'static [u8]| {
        let h = &h;
        async move { direct(h, method, key, &[], &[], body).await }
    };
    // s3s-fs keeps keys as files: "f/sub" is a directory on its disk.
    let (get, body) = store(reqwest::Method::GET, "f/sub", b"").await;
    assert_eq!(
        get,
        per_store(&h.s3, 500, 404),
        "GET of a folder key: {body}"
    );
    let (delete, body) = store(reqwest::Method::DELETE, "f/sub", b"").await;
    assert_eq!(
        delete,
        per_store(&h.s3, 500, 204),
        "DELETE of a folder key: {body}"
    );

    // Through the proxy: the same answers on every store.
    let get = h.get("f/sub").await;
    assert_eq!(get.status(), 400);
    assert_eq!(
        get.text().await.unwrap(),
        r#"{"detail":"Artifact path refers to a directory, not a file: 'f/sub'"}"#
    );
    let missing = h.get("f/nope").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.text().await.unwrap(),
        r#"{"error_code":"RESOURCE_DOES_NOT_EXIST","message":"No such artifact: 'f/nope'","sqlstate":"KAM00","error_class":"RESOURCE_NOT_FOUND"}"#
    );

    // An object beside a folder of the same name: real S3 stores it, s3s-fs cannot, and the
    // proxy says the store refused (502, not retried forever, nothing half-written).
    let onto = h.put("f/sub", b"file".to_vec()).await;
    assert_eq!(onto.status().as_u16(), per_store(&h.s3, 502, 200));
    assert_eq!(
        h.s3.keys(),
        per_store(
            &h.s3,
            vec!["f/sub/x.txt".to_owned()],
            vec!["f/sub".to_owned(), "f/sub/x.txt".to_owned()],
        )
    );

    // Delete is recursive on every store, and leaves nothing.
    let deleted = h.http.delete(h.artifact("f/sub")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(h.s3.keys(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes_on_the_store() {
    let h = Harness::start().await;
    let (status, body) = direct(&h, reqwest::Method::GET, "nope.txt", &[], &[], b"").await;
    assert_eq!(
        (status, xml_values(&body, "Code")),
        (404, vec!["NoSuchKey".to_owned()])
    );
    // A bad signature: the store refuses with 403 and its own code.
    let bucket = h.s3.client();
    let url = bucket.presign_get("nope.txt", 300, None).await.unwrap();
    // The signature is the URL's last parameter: change its last hex digit.
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let flipped = if url.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &url[..url.len() - 1]);
    let response = h.http.get(tampered).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(
        (status, xml_values(&body, "Code")),
        (
            403,
            vec![per_store(&h.s3, "SignatureDoesNotMatch", "AccessDenied").to_owned()]
        ),
        "{body}"
    );
}

/// Wrong credentials: the client gets the same answer whatever the store says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_refusing_the_proxy_gives_the_same_answer_everywhere() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let mut store = s3.store_config("");
    store.secret_key = "not-the-secret-key".into();
    let mut config = serve_config(&s3, &format!("http://{}", mlflow.addr));
    config.store = store;
    config.shutdown_grace = std::time::Duration::from_secs(1);
    let proxy = mlflow_artifact_proxy::Proxy::start(config).await.unwrap();
    for (method, target) in [
        ("GET", "/api/2.0/mlflow-artifacts/artifacts/x.txt"),
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/x.txt"),
        ("GET", "/api/2.0/mlflow-artifacts/artifacts?path=d"),
        ("DELETE", "/api/2.0/mlflow-artifacts/artifacts/d"),
    ] {
        let response = raw_request(proxy.addr, method, target, b"x").await;
        assert_eq!(
            response.status,
            502,
            "{method} {target}: {}",
            response.text()
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(
            body["error_code"], "TEMPORARILY_UNAVAILABLE",
            "{method} {target}"
        );
    }
    assert_eq!(s3.keys(), Vec::<String>::new());
}

/// MLflow keeps a "." segment in the key (`d/./x.txt`); S3 keys are opaque, so a real store holds
/// exactly that key. The proxy drops the segment today: rust-s3 builds the URL it signs with
/// `url::Url`, which removes "." segments (s3s-fs hides it: both names are the same file there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "proxy bug: rust-s3 normalises '.' segments out of object URLs (docs/stores.md); run with --ignored"]
async fn dot_segments_keep_mlflows_key() {
    let h = Harness::start().await;
    let put = raw_request(
        h.proxy.addr,
        "PUT",
        "/api/2.0/mlflow-artifacts/artifacts/d/./x.txt",
        b"dot",
    )
    .await;
    assert_eq!(put.status, 200);
    assert_eq!(
        h.s3.keys(),
        vec![per_store(&h.s3, "d/x.txt", "d/./x.txt").to_owned()]
    );
}
