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
/// exactly that key. s3s-fs keeps keys as files, where `d/./x.txt` and `d/x.txt` are one file: there
/// the proof is the request the proxy sent. (rust-s3 used to drop the segment: it builds its URLs
/// with `url::Url`, which resolves "." segments.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_keep_mlflows_key() {
    let h = Harness::start().await;
    let put = artifacts(&h, "PUT", "/d/./x.txt", b"dot").await;
    assert_eq!(put.status, 200);
    assert_eq!(
        h.s3.keys(),
        vec![per_store(&h.s3, "d/x.txt", "d/./x.txt").to_owned()]
    );
    if !h.s3.is_external() {
        assert_eq!(sent(&h, "d/x.txt"), Vec::<String>::new());
        assert_eq!(sent(&h, "d/./x.txt"), ["PUT"]);
    }
}

/// A request to `/api/2.0/mlflow-artifacts/artifacts<target>`, sent as written.
async fn artifacts(h: &Harness, method: &str, target: &str, body: &[u8]) -> RawResponse {
    let target = format!("/api/2.0/mlflow-artifacts/artifacts{target}");
    raw_request(h.proxy.addr, method, &target, body).await
}

/// The methods of the in-process store's requests for exactly `key` (percent-decoded, the query
/// left out), sorted, each once.
fn sent(h: &Harness, key: &str) -> Vec<String> {
    let path = format!("/{}/{key}", h.s3.bucket);
    let mut methods: Vec<String> =
        h.s3.received()
            .into_iter()
            .filter_map(|line| {
                let (method, target) = line.split_once(' ')?;
                let target = target.split('?').next()?;
                let decoded = percent_encoding::percent_decode_str(target).decode_utf8_lossy();
                (decoded == path).then(|| method.to_owned())
            })
            .collect();
    methods.sort();
    methods.dedup();
    methods
}

/// Every S3 call the proxy makes with a key, for a key with a "." segment: single and
/// multipart uploads (streamed parts and parts from a chunked body), client-driven multipart
/// create/part/complete/abort, HEAD, GET, ranged and parallel GETs, presigned downloads, the
/// listing and the delete. Each uses MLflow's key `d/./…`, never `d/…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_call_keeps_the_dot_segment() {
    let h = Harness::start_configured(|config| {
        config.download.chunk = MIB as u64;
        config.download.threshold = 2 * MIB as u64;
    })
    .await;
    // `%252E` arrives as `%2E` and MLflow's path check decodes it to "." (a URL client would
    // resolve a literal "./" or "%2E/" itself before sending).
    let artifact = |name: &str| h.artifact(&format!("d/%252E/{name}"));
    let small = b"small".to_vec();
    let put = artifacts(&h, "PUT", "/d/./small.txt", &small).await;
    assert_eq!(put.status, 200);
    let big = random_bytes(9 * MIB + 5);
    let put = h
        .http
        .put(artifact("big.bin"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "streamed multipart upload");
    let chunked = random_bytes(6 * MIB + 3);
    let frames: Vec<Result<Vec<u8>, std::io::Error>> =
        chunked.chunks(300_007).map(|c| Ok(c.to_vec())).collect();
    let put = h
        .http
        .put(artifact("chunked.bin"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            frames,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "multipart upload of a chunked body");

    let get = artifacts(&h, "GET", "/d/./small.txt", b"").await;
    assert_eq!((get.status, get.body), (200, small.clone()));
    let head = artifacts(&h, "HEAD", "/d/./small.txt", b"").await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("5"))
    );
    let ranged = h
        .http
        .get(artifact("small.txt"))
        .header("range", "bytes=1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(ranged.bytes().await.unwrap().as_ref(), b"ma");
    for (name, data) in [("big.bin", &big), ("chunked.bin", &chunked)] {
        let body = h
            .get(&format!("d/%252E/{name}"))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            sha256(&body),
            sha256(data),
            "parallel ranged download of {name}"
        );
    }

    // Client-driven multipart upload, and one aborted.
    let mpu = |action: &str| h.url(&format!("/api/2.0/mlflow-artifacts/mpu/{action}/d/%252E"));
    let mut created = Vec::new();
    for name in ["mpu.bin", "gone.bin"] {
        let body = serde_json::json!({"path": name, "num_parts": 1});
        let (status, answer) = post_json(&h, &mpu("create"), body).await;
        assert_eq!(status, 200, "{answer}");
        created.push(answer);
    }
    let (created, aborted) = (&created[0], &created[1]);
    let part_url = created["credentials"][0]["url"].as_str().unwrap();
    let part = h
        .http
        .put(part_url)
        .body(b"client part".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 200);
    let etag = part.headers()["etag"].to_str().unwrap().to_owned();
    let parts = serde_json::json!([{"part_number": 1, "etag": etag}]);
    let done =
        serde_json::json!({"path": "mpu.bin", "upload_id": created["upload_id"], "parts": parts});
    assert_eq!(
        post_json(&h, &mpu("complete"), done).await,
        (200, serde_json::json!({}))
    );
    let abort = serde_json::json!({"path": "gone.bin", "upload_id": aborted["upload_id"]});
    assert_eq!(
        post_json(&h, &mpu("abort"), abort).await,
        (200, serde_json::json!({}))
    );

    // A presigned download.
    let presigned = h
        .http
        .get(h.url("/api/2.0/mlflow-artifacts/presigned/d/%252E/small.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(presigned.status(), 200);
    let answer: serde_json::Value = serde_json::from_str(&presigned.text().await.unwrap()).unwrap();
    let url = answer["url"].as_str().unwrap().to_owned();
    assert_eq!(
        h.http
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        small
    );

    // The listing of `d/.` is the listing of the prefix `d/./`: the objects above on a store
    // with opaque keys; nothing on s3s-fs, whose keys (file paths) never hold a "." segment.
    let list = artifacts(&h, "GET", "?path=d%2F.", b"").await;
    assert_eq!(list.status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let names: Vec<&str> = listed["files"].as_array().map_or(vec![], |files| {
        files.iter().map(|f| f["path"].as_str().unwrap()).collect()
    });
    let listable = vec!["big.bin", "chunked.bin", "mpu.bin", "small.txt"];
    assert_eq!(names, per_store(&h.s3, vec![], listable));
    let everything = vec![
        "d/./big.bin",
        "d/./chunked.bin",
        "d/./mpu.bin",
        "d/./small.txt",
    ];

    if h.s3.is_external() {
        assert_eq!(h.s3.keys(), everything);
        assert_eq!(h.s3.multipart_leftovers(), Vec::<String>::new());
    } else {
        // s3s-fs resolves "." segments on its disk: check what the proxy asked for.
        for name in ["small.txt", "big.bin", "chunked.bin", "mpu.bin", "gone.bin"] {
            assert_eq!(
                sent(&h, &format!("d/{name}")),
                Vec::<String>::new(),
                "{name}"
            );
        }
        assert_eq!(sent(&h, "d/./small.txt"), ["GET", "HEAD", "PUT"]);
        // create and complete (POST), the parts (PUT), the downloads.
        assert_eq!(sent(&h, "d/./big.bin"), ["GET", "POST", "PUT"]);
        assert_eq!(sent(&h, "d/./chunked.bin"), ["GET", "POST", "PUT"]);
        assert_eq!(sent(&h, "d/./mpu.bin"), ["POST", "PUT"]);
        assert_eq!(sent(&h, "d/./gone.bin"), ["DELETE", "POST"]);
        let listings: Vec<String> =
            h.s3.received()
                .into_iter()
                .filter(|line| line.contains("list-type=2"))
                .collect();
        assert!(
            listings.iter().any(|l| l.contains("prefix=d%2F.%2F")),
            "{listings:?}"
        );
        assert_eq!(
            h.s3.keys(),
            ["d/big.bin", "d/chunked.bin", "d/mpu.bin", "d/small.txt"]
        );
    }

    // DELETE of `d/.` removes what is under the prefix `d/./`; on s3s-fs nothing is listed there.
    let delete = artifacts(&h, "DELETE", "/d/.", b"").await;
    assert_eq!(delete.status, 200);
    assert_eq!(
        h.s3.keys(),
        per_store(
            &h.s3,
            vec!["d/big.bin", "d/chunked.bin", "d/mpu.bin", "d/small.txt"],
            vec![]
        )
    );
}

/// Other spellings of "." and names with dots: the key is MLflow's (`validate_path_is_safe`),
/// sent byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotted_names_keep_mlflows_key() {
    let h = Harness::start().await;
    // (request target after `artifacts/`, MLflow's key, what s3s-fs's disk makes of it)
    let cases = [
        ("d/%2E/encoded.txt", "d/./encoded.txt", "d/encoded.txt"),
        ("d/%252E/twice.txt", "d/./twice.txt", "d/twice.txt"),
        ("./first.txt", "./first.txt", "first.txt"),
        ("d/a..b.txt", "d/a..b.txt", "d/a..b.txt"),
        ("d/.../three.txt", "d/.../three.txt", "d/.../three.txt"),
        ("d/100%25.txt", "d/100%.txt", "d/100%.txt"),
    ];
    for (target, key, _) in cases {
        let put = artifacts(&h, "PUT", &format!("/{target}"), key.as_bytes()).await;
        assert_eq!(put.status, 200, "{target}: {}", put.text());
        let get = artifacts(&h, "GET", &format!("/{target}"), b"").await;
        assert_eq!((get.status, get.text()), (200, key.to_owned()), "{target}");
        if !h.s3.is_external() {
            assert_eq!(sent(&h, key), ["GET", "PUT"], "{target}");
        }
    }
    let mut expected: Vec<&str> = cases
        .iter()
        .map(|(_, key, file)| per_store(&h.s3, *file, *key))
        .collect();
    expected.sort_unstable();
    assert_eq!(h.s3.keys(), expected);

    // MLflow refuses a ".." segment, wherever a "." is: nothing is stored.
    for target in ["d/./b/../c.txt", "d/%2E%2E/c.txt", "./../c.txt"] {
        let put = artifacts(&h, "PUT", &format!("/{target}"), b"x").await;
        assert_eq!(put.status, 400, "{target}: {}", put.text());
    }
    // A file named "." is no file: stock MLflow cannot write it (its temp file would be its
    // temp folder); the proxy refuses it as a bad path.
    let put = artifacts(&h, "PUT", "/d/.", b"x").await;
    assert_eq!(put.status, 400, "{}", put.text());
    assert_eq!(h.s3.keys(), expected);
}
