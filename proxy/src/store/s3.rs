//! The artifact store: S3 (MinIO, Garage, s3s, AWS...) with path-style addressing.
//!
//! Every request that names a key or a key prefix (get, head, put, parts, multipart create/
//! complete/abort, list) is signed by `signer`, which keeps the key exactly as MLflow names it, and
//! sent with hyper: payload bytes pass through unhashed (`UNSIGNED-PAYLOAD`) and uncopied, with
//! backpressure both ways. rust-s3 carries only the calls whose URL holds no key: DeleteObjects
//! (the keys travel in its body), ListMultipartUploads of the configured root, and creating the
//! bucket. Knows nothing of HTTP routing or MLflow.

mod checksums;
mod signer;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use s3::Bucket;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::region::Region;
use s3::serde_types::ListBucketResult;

use crate::integrity::{Algorithm, Digest, chunked};
use crate::ops::metrics::Metrics;
use crate::store::StoreConfig;
use crate::wire::body::{ProxyBody, empty, from_frames, full};
use crate::wire::timeouts::SendError;
pub use checksums::Native;
use signer::{Payload, Signer};

/// Completing a multipart upload can take the store a while.
const COMPLETE_TIMEOUT: Duration = Duration::from_secs(300);
/// Error bodies from S3 are small XML documents; we read at most this much of one.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The answer to a control call, the largest being a ListObjectsV2 page: at most 1,000 keys of
/// at most 1 KiB each, with their metadata.
const ANSWER_LIMIT: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("S3 endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("S3 answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("S3 request failed: {0}")]
    Other(String),
    #[error("S3 gave no answer within the time limit (PROXY_S3_TIMEOUT_SECS)")]
    TimedOut,
}

impl StoreError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Status { status: 404, .. })
    }
}

impl From<S3Error> for StoreError {
    fn from(error: S3Error) -> Self {
        match error {
            S3Error::HttpFailWithBody(status, body) => StoreError::Status {
                status,
                message: summarize_error_xml(&body),
            },
            S3Error::Reqwest(e) if e.is_connect() => StoreError::Unreachable(e.to_string()),
            // rust-s3 does not say which limit it applied; the control calls use one of ours.
            S3Error::Reqwest(e) if e.is_timeout() => StoreError::TimedOut,
            other => StoreError::Other(other.to_string()),
        }
    }
}

/// What a listing under one prefix holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Common prefixes (with their trailing delimiter).
    pub prefixes: Vec<String>,
    /// Object keys and sizes.
    pub objects: Vec<(String, u64)>,
}

/// One object of a listing page.
#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    /// As S3 wrote it (`2026-11-30T19:00:00.000Z`).
    pub last_modified: String,
}

/// One page of a listing (at most the `max_keys` asked for), and whether more follow.
#[derive(Debug, Default)]
pub struct Page {
    /// Common prefixes (with their trailing `/`).
    pub prefixes: Vec<String>,
    pub objects: Vec<Entry>,
    pub truncated: bool,
}

impl Page {
    /// Where the next page starts (its `start_after`): past the last key, and past everything
    /// under the last common prefix (`a/b/` becomes `a/b0`, as `0` follows `/`). Positions, not
    /// continuation tokens, so keys deleted between pages move nothing on any store.
    pub fn next_start_after(&self) -> Option<String> {
        let last_key = self.objects.last().map(|o| o.key.clone());
        let past_prefix = self.prefixes.last().map(|p| match p.strip_suffix('/') {
            Some(stem) => format!("{stem}0"),
            None => p.clone(),
        });
        last_key.max(past_prefix)
    }
}

/// Metadata of one object, from HEAD.
#[derive(Debug)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// The object's user metadata (`x-amz-meta-*` headers).
    pub metadata: HeaderMap,
}

/// Plain HTTP, or TLS with the roots `tls` chooses.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct Store {
    /// rust-s3, for the calls whose URL names no key (see the module's comment).
    bucket: Box<Bucket>,
    signer: Signer,
    /// How long S3 may take to answer (see `timeouts::send`).
    timeout: Duration,
    prefix: String,
    http: Client<Connector, ProxyBody>,
    metrics: Metrics,
    /// Which S3 checksums the store verifies, found out at first need (`checksums`).
    native: tokio::sync::OnceCell<Native>,
}

impl Store {
    pub fn new(config: &StoreConfig, metrics: Metrics, timeout: Duration) -> Result<Self, String> {
        let bucket = control_bucket(config, timeout)?;
        let signer = Signer::new(config)?;
        let http = http_client(config.ca_bundle.as_deref())?;
        Ok(Store {
            bucket,
            signer,
            timeout,
            prefix: config.prefix.clone(),
            http,
            metrics,
            native: tokio::sync::OnceCell::new(),
        })
    }

    /// The key of a destination-relative artifact path (`posixpath.join(prefix, path)`).
    pub fn key(&self, path: &str) -> String {
        posix_join(&self.prefix, path)
    }

    /// The key a stock upload of `head/tail` writes (`join(join(prefix, head), tail)`).
    pub fn upload_key(&self, head: &str, tail: &str) -> String {
        let dir = if head.is_empty() {
            self.prefix.clone()
        } else {
            posix_join(&self.prefix, head)
        };
        posix_join(&dir, tail)
    }

    /// The destination prefix itself (the root of all artifacts).
    pub fn root(&self) -> &str {
        &self.prefix
    }

    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .record_s3(operation, result.is_ok(), started.elapsed());
        result
    }

    /// A control call (HEAD, list, delete, create/complete/abort): `timed`, its whole time bounded
    /// by `limit`. rust-s3 retries a failed request after 1 s, so a silent store used to cost
    /// twice the timeout and a second; now the retry only happens within the limit.
    async fn control<T>(
        &self,
        operation: &'static str,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.timed(operation, async {
            tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(StoreError::TimedOut))
        })
        .await
    }

    /// Send under `limit` (see `timeouts::send`).
    async fn send(
        &self,
        request: Request<ProxyBody>,
        limit: Duration,
    ) -> Result<Response<Incoming>, StoreError> {
        crate::wire::timeouts::send(&self.http, request, limit)
            .await
            .map_err(|e| match e {
                SendError::Http(e) if e.is_connect() => StoreError::Unreachable(e.to_string()),
                SendError::Http(e) => StoreError::Other(e.to_string()),
                SendError::TimedOut(_) => StoreError::TimedOut,
            })
    }

    /// A request for `key` with the key as MLflow names it (see `signer`), sent with hyper; the
    /// answer's body is left unread.
    async fn send_keyed(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, Option<&str>)],
        headers: HeaderMap,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, StoreError> {
        let request = self
            .signer
            .request(method, key, query, headers, Payload::Unsigned, body)
            .map_err(StoreError::Other)?;
        self.send(request, self.timeout).await
    }

    /// `send_keyed` of a body of `len` bytes: as it is, or (`trailer`) already framed by
    /// `integrity::with_trailer` with that checksum, for the store to verify.
    async fn send_sized(
        &self,
        key: &str,
        query: &[(&str, Option<&str>)],
        mut headers: HeaderMap,
        len: u64,
        trailer: Option<Algorithm>,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, StoreError> {
        let Some(algorithm) = trailer else {
            headers.insert(header::CONTENT_LENGTH, len.into());
            return self
                .send_keyed(Method::PUT, key, query, headers, body)
                .await;
        };
        headers.insert(
            header::CONTENT_LENGTH,
            chunked::encoded_len(len, algorithm).into(),
        );
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("aws-chunked"),
        );
        headers.insert("x-amz-decoded-content-length", len.into());
        headers.insert(
            "x-amz-trailer",
            HeaderValue::from_static(algorithm.s3_header()),
        );
        let request = self
            .signer
            .request(Method::PUT, key, query, headers, Payload::Trailer, body)
            .map_err(StoreError::Other)?;
        self.send(request, self.timeout).await
    }

    /// A control call (small request, small answer): sent, answered with success and its body
    /// read in full (at most `ANSWER_LIMIT`), all within `deadline`; S3's error otherwise.
    async fn call(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, Option<&str>)],
        headers: HeaderMap,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, StoreError> {
        let exchange = async {
            let request = self
                .signer
                .request(
                    method,
                    key,
                    query,
                    headers,
                    Payload::Bytes(&body),
                    full(body.clone()),
                )
                .map_err(StoreError::Other)?;
            let response = self.send(request, deadline).await?;
            let status = response.status();
            if !status.is_success() {
                return Err(StoreError::Status {
                    status: status.as_u16(),
                    message: read_error_body(response.into_body()).await,
                });
            }
            Limited::new(response.into_body(), ANSWER_LIMIT)
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .map_err(|e| StoreError::Other(format!("reading S3's answer: {e}")))
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or(Err(StoreError::TimedOut))
    }

    /// GET the object, forwarding the conditional and range headers given. The response body is
    /// returned unread, to be streamed to the client.
    pub async fn get_object(
        &self,
        key: &str,
        mut headers: HeaderMap,
    ) -> Result<Response<Incoming>, StoreError> {
        headers.insert(CHECKSUM_MODE, HeaderValue::from_static("ENABLED"));
        self.timed("get_object", async {
            // 404 and the like are answers, not failures of the call.
            self.send_keyed(Method::GET, key, &[], headers, empty())
                .await
        })
        .await
    }

    pub async fn head_object(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.timed("head_object", async {
            let exchange = async {
                let mut headers = HeaderMap::new();
                headers.insert(CHECKSUM_MODE, HeaderValue::from_static("ENABLED"));
                let response = self
                    .send_keyed(Method::HEAD, key, &[], headers, empty())
                    .await?;
                let status = response.status();
                let (parts, body) = response.into_parts();
                let _ = body.collect().await;
                if status == StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                if !status.is_success() {
                    // A HEAD answer has no body to say more.
                    return Err(StoreError::Status {
                        status: status.as_u16(),
                        message: "(no body)".to_owned(),
                    });
                }
                let text = |name: header::HeaderName| {
                    parts
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                Ok(Some(ObjectMeta {
                    size: text(header::CONTENT_LENGTH)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                    etag: text(header::ETAG),
                    last_modified: text(header::LAST_MODIFIED),
                    metadata: user_metadata(&parts.headers),
                }))
            };
            tokio::time::timeout(self.timeout, exchange)
                .await
                .unwrap_or(Err(StoreError::TimedOut))
        })
        .await
    }

    /// One streamed PutObject of exactly `len` bytes (framed with its checksum as `trailer` says,
    /// see `send_sized`); returns the new object's ETag.
    pub async fn put_object(
        &self,
        key: &str,
        content_type: &str,
        len: u64,
        trailer: Option<Algorithm>,
        body: ProxyBody,
    ) -> Result<Option<String>, StoreError> {
        self.timed("put_object", async {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, header_value(content_type));
            let response = self
                .send_sized(key, &[], headers, len, trailer, body)
                .await?;
            let headers = expect_success(response).await?;
            Ok(headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned))
        })
        .await
    }

    /// Replace the user metadata of the object at `key` with `metadata` (`x-amz-meta-*`
    /// headers), if it is still the version `etag` names: a CopyObject onto itself with
    /// `REPLACE`, which s3s-fs and Garage do without copying the bytes (ETag kept). Content-Type
    /// is part of what is replaced, so it is given again. `Ok(false)`: the object changed (or
    /// went) in between and was left alone.
    pub async fn replace_metadata(
        &self,
        key: &str,
        etag: &str,
        content_type: &str,
        metadata: HeaderMap,
    ) -> Result<bool, StoreError> {
        self.timed("copy_object", async {
            // The user metadata only (not the store's checksums `user_metadata` also keeps).
            let mut headers: HeaderMap = metadata
                .into_iter()
                .filter_map(|(name, value)| Some((name?, value)))
                .filter(|(name, _)| name.as_str().starts_with("x-amz-meta-"))
                .collect();
            headers.insert(
                "x-amz-copy-source",
                header_value(&self.signer.copy_source(key)),
            );
            headers.insert("x-amz-copy-source-if-match", header_value(etag));
            headers.insert(
                "x-amz-metadata-directive",
                HeaderValue::from_static("REPLACE"),
            );
            headers.insert(header::CONTENT_TYPE, header_value(content_type));
            let answer = self
                .call(Method::PUT, key, &[], headers, Bytes::new(), self.timeout)
                .await;
            match answer {
                // S3 may answer 200 and still fail: the failure is then the body.
                Ok(answer) => match root_element(&answer).as_deref() {
                    Some("CopyObjectResult") => Ok(true),
                    _ => Err(StoreError::Status {
                        status: 500,
                        message: summarize_error_xml(&String::from_utf8_lossy(&answer)),
                    }),
                },
                Err(StoreError::Status {
                    status: 404 | 412, ..
                }) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Start a multipart upload; `full_object`: of one whose parts all carry their CRC64NVME and
    /// whose completion gives the whole object's (`complete_multipart`), which the store verifies
    /// and keeps as the object's checksum (S3's `FULL_OBJECT` type).
    pub async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
        full_object: bool,
    ) -> Result<String, StoreError> {
        self.timed(
            "create_multipart_upload",
            self.initiate(key, content_type, full_object),
        )
        .await
    }

    /// CreateMultipartUpload, not counted in the metrics (the probe's, `checksums`).
    async fn initiate(
        &self,
        key: &str,
        content_type: &str,
        full_object: bool,
    ) -> Result<String, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, header_value(content_type));
        if full_object {
            headers.insert(
                "x-amz-checksum-algorithm",
                HeaderValue::from_static("CRC64NVME"),
            );
            headers.insert(
                "x-amz-checksum-type",
                HeaderValue::from_static("FULL_OBJECT"),
            );
        }
        let answer = self
            .call(
                Method::POST,
                key,
                &[("uploads", None)],
                headers,
                Bytes::new(),
                self.timeout,
            )
            .await?;
        #[derive(serde::Deserialize)]
        struct Initiated {
            #[serde(rename = "UploadId")]
            upload_id: String,
        }
        quick_xml::de::from_reader::<_, Initiated>(answer.as_ref())
            .map(|initiated| initiated.upload_id)
            .map_err(|e| StoreError::Other(format!("CreateMultipartUpload answer: {e}")))
    }

    /// Upload one part from the `Bytes` frames it is made of; returns its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        frames: Vec<Bytes>,
        len: usize,
        trailer: Option<Algorithm>,
    ) -> Result<String, StoreError> {
        let mut body = from_frames(frames);
        if let Some(algorithm) = trailer {
            body = crate::integrity::with_trailer(body, len as u64, algorithm).0;
        }
        self.upload_part_body(key, upload_id, part_number, len as u64, trailer, body)
            .await
    }

    /// Upload one part streamed from a client's body of exactly `len` bytes (framed with its
    /// checksum as `trailer` says, see `send_sized`); returns its ETag. Nothing is held here:
    /// hyper hands the frames on as S3 takes them.
    pub async fn upload_part_body(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        len: u64,
        trailer: Option<Algorithm>,
        body: ProxyBody,
    ) -> Result<String, StoreError> {
        self.timed("upload_part", async {
            let number = part_number.to_string();
            let query = [
                ("partNumber", Some(number.as_str())),
                ("uploadId", Some(upload_id)),
            ];
            let response = self
                .send_sized(key, &query, HeaderMap::new(), len, trailer, body)
                .await?;
            let headers = expect_success(response).await?;
            headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| {
                    StoreError::Other(format!("part {part_number} stored without an ETag"))
                })
        })
        .await
    }

    /// Multipart uploads open under `prefix`: (key, upload id, initiated as S3 wrote it).
    /// A store without the call (501) is not counted as an S3 error: nothing failed.
    pub async fn list_multipart_uploads(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let started = Instant::now();
        let result = self
            .bucket
            .list_multiparts_uploads(Some(prefix), None)
            .await
            .map_err(StoreError::from);
        if !matches!(result, Err(StoreError::Status { status: 501, .. })) {
            self.metrics
                .record_s3("list_multipart_uploads", result.is_ok(), started.elapsed());
        }
        Ok(result?
            .into_iter()
            .flat_map(|page| page.uploads)
            .map(|u| (u.key, u.id, u.initiated))
            .collect())
    }

    /// Complete the upload (with `whole`, the whole object's CRC64NVME, for an upload started
    /// `full_object`); returns the new object's ETag.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: Vec<(u32, String)>,
        whole: Option<Digest>,
    ) -> Result<Option<String>, StoreError> {
        parts.sort_by_key(|(n, _)| *n);
        let xml = complete_multipart_xml(&parts);
        let mut headers = HeaderMap::new();
        if let Some(whole) = whole {
            headers.insert(
                whole.algorithm().s3_header(),
                header_value(&whole.to_base64()),
            );
            headers.insert(
                "x-amz-checksum-type",
                HeaderValue::from_static("FULL_OBJECT"),
            );
        }
        self.timed("complete_multipart_upload", async {
            let answer = self
                .call(
                    Method::POST,
                    key,
                    &[("uploadId", Some(upload_id))],
                    headers,
                    Bytes::from(xml),
                    // S3 may take minutes to assemble a large object.
                    self.timeout.max(COMPLETE_TIMEOUT),
                )
                .await?;
            // S3 may answer 200 and still fail: the failure is then the body.
            match root_element(&answer).as_deref() {
                Some("CompleteMultipartUploadResult") => {
                    #[derive(serde::Deserialize)]
                    struct Completed {
                        #[serde(rename = "ETag")]
                        etag: Option<String>,
                    }
                    Ok(quick_xml::de::from_reader::<_, Completed>(answer.as_ref())
                        .ok()
                        .and_then(|completed| completed.etag))
                }
                _ => Err(StoreError::Status {
                    status: 500,
                    message: summarize_error_xml(&String::from_utf8_lossy(&answer)),
                }),
            }
        })
        .await
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.timed("abort_multipart_upload", async {
            self.call(
                Method::DELETE,
                key,
                &[("uploadId", Some(upload_id))],
                HeaderMap::new(),
                Bytes::new(),
                self.timeout,
            )
            .await
            .map(drop)
        })
        .await
    }

    /// Every entry under `prefix`, page by page (ListObjectsV2).
    pub async fn list(&self, prefix: &str, delimiter: Option<&str>) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .list_page(prefix, delimiter, after.as_deref(), 1000)
                .await?;
            after = page.next_start_after();
            let more = page.truncated && after.is_some();
            listing.prefixes.extend(page.prefixes);
            listing
                .objects
                .extend(page.objects.into_iter().map(|o| (o.key, o.size)));
            if !more {
                return Ok(listing);
            }
        }
    }

    /// One page of the listing under `prefix`, from `start_after` on (ListObjectsV2).
    pub async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Page, StoreError> {
        let max_keys = max_keys.to_string();
        let query: Vec<(&str, Option<&str>)> = [
            ("list-type", Some("2")),
            ("prefix", Some(prefix)),
            ("delimiter", delimiter),
            ("start-after", start_after),
            ("max-keys", Some(max_keys.as_str())),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_some())
        .collect();
        // Without `encoding-type`: keys come back as they are.
        let page: ListBucketResult = self
            .timed("list_objects", async {
                let answer = self
                    .call(
                        Method::GET,
                        "",
                        &query,
                        HeaderMap::new(),
                        Bytes::new(),
                        self.timeout,
                    )
                    .await?;
                quick_xml::de::from_reader(answer.as_ref())
                    .map_err(|e| StoreError::Other(format!("ListObjectsV2 answer: {e}")))
            })
            .await?;
        Ok(Page {
            prefixes: page
                .common_prefixes
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.prefix)
                .collect(),
            objects: page
                .contents
                .into_iter()
                .map(|o| Entry {
                    key: o.key,
                    size: o.size,
                    last_modified: o.last_modified,
                })
                .collect(),
            truncated: page.is_truncated,
        })
    }

    /// Whether anything at all is stored under `prefix` (one key is enough).
    pub async fn any_under(&self, prefix: &str) -> Result<bool, StoreError> {
        let page = self.list_page(prefix, None, None, 1).await?;
        Ok(!page.objects.is_empty())
    }

    pub async fn delete_keys(&self, keys: Vec<String>) -> Result<(), StoreError> {
        // DeleteObjects takes at most 1000 keys a call.
        for batch in keys.chunks(1000) {
            let objects: Vec<s3::serde_types::ObjectIdentifier> = batch
                .iter()
                .map(|key| s3::serde_types::ObjectIdentifier {
                    key: key.clone(),
                    version_id: None,
                })
                .collect();
            self.control("delete_objects", self.timeout, async {
                let result = self.bucket.delete_objects(objects).await?;
                match result.errors.first() {
                    None => Ok(()),
                    Some(error) => Err(StoreError::Other(format!("could not delete {error:?}"))),
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Whether the endpoint answers for the bucket (for /readyz).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.any_under(&self.prefix).await.map(drop)
    }
}

/// An HTTP/1.1 client for http:// and https:// URLs (TLS with the roots `tls` chooses for `ca_bundle`),
/// connecting within 5 s, keeping idle connections 30 s.
pub fn http_client(
    ca_bundle: Option<&std::path::Path>,
) -> Result<Client<Connector, ProxyBody>, String> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::store::tls::client_config(ca_bundle)?)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(TokioTimer::new())
        .build(connector))
}

/// The endpoint as rust-s3 addresses it, and the static credentials.
fn region_and_credentials(config: &StoreConfig) -> Result<(Region, Credentials), String> {
    let region = Region::Custom {
        region: config.region.clone(),
        endpoint: config.endpoint.as_str().trim_end_matches('/').to_owned(),
    };
    let credentials = Credentials::new(
        Some(&config.access_key),
        Some(&config.secret_key),
        None,
        None,
        None,
    )
    .map_err(|e| format!("S3 credentials: {e}"))?;
    Ok((region, credentials))
}

fn control_bucket(config: &StoreConfig, timeout: Duration) -> Result<Box<Bucket>, String> {
    let (region, credentials) = region_and_credentials(config)?;
    let bucket = Bucket::new(&config.bucket, region, credentials)
        .map_err(|e| format!("S3 bucket {:?}: {e}", config.bucket))?
        .with_path_style()
        .with_request_timeout(timeout)
        .map_err(|e| format!("S3 client: {e}"))?;
    Ok(bucket)
}

/// `posixpath.join(a, b)` for two relative parts.
pub fn posix_join(a: &str, b: &str) -> String {
    if b.starts_with('/') || a.is_empty() {
        b.to_owned()
    } else if a.ends_with('/') {
        format!("{a}{b}")
    } else {
        format!("{a}/{b}")
    }
}

/// CompleteMultipartUpload's body. ETags come from the client (`mpu/complete`): escaped.
fn complete_multipart_xml(parts: &[(u32, String)]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (number, etag) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
            quick_xml::escape::partial_escape(etag)
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

/// The name of an XML document's root element.
fn root_element(xml: &[u8]) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e) | Event::Empty(e)) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => buf.clear(),
        }
    }
}

/// The `x-amz-meta-*` headers of an answer, and the store's own whole-object checksums
/// (`x-amz-checksum-crc64nvme`, `-sha256`, `-type`: where `FULL_OBJECT` multipart uploads keep
/// their digest, see `integrity::Digest::from_metadata`).
pub fn user_metadata(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name.starts_with("x-amz-meta-") || STORE_CHECKSUMS.contains(&name)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The store's checksum headers the integrity checks read.
const STORE_CHECKSUMS: &[&str] = &[
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha256",
    "x-amz-checksum-type",
];
/// Asks the store for an object's checksums with GET and HEAD (Garage sends them only then).
const CHECKSUM_MODE: &str = "x-amz-checksum-mode";

/// Turn a non-2xx store response into an error carrying S3's own code and message.
async fn expect_success(response: Response<Incoming>) -> Result<HeaderMap, StoreError> {
    let status = response.status();
    let (parts, body) = response.into_parts();
    if status.is_success() {
        // Drain the (empty) body so the connection goes back to the pool.
        let _ = body.collect().await;
        return Ok(parts.headers);
    }
    Err(StoreError::Status {
        status: status.as_u16(),
        message: read_error_body(body).await,
    })
}

pub async fn read_error_body(body: Incoming) -> String {
    match Limited::new(body, ERROR_BODY_LIMIT).collect().await {
        Ok(collected) => summarize_error_xml(&String::from_utf8_lossy(&collected.to_bytes())),
        Err(e) => format!("(unreadable error body: {e})"),
    }
}

/// `<Error><Code>NoSuchKey</Code><Message>...</Message></Error>` → `NoSuchKey: ...`.
fn summarize_error_xml(xml: &str) -> String {
    let field = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = xml.find(&open)? + open.len();
        let end = xml[start..].find(&close)? + start;
        Some(xml[start..end].to_owned())
    };
    match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code,
        _ if xml.trim().is_empty() => "(no body)".to_owned(),
        _ => xml.chars().take(200).collect(),
    }
}

/// Create the destination bucket unless it exists, waiting up to `wait` for the endpoint.
pub async fn ensure_bucket(config: &StoreConfig, wait: Duration) -> Result<&'static str, String> {
    // A bad AWS_CA_BUNDLE is named here, before any wait.
    crate::store::tls::roots(config.ca_bundle.as_deref())?;
    let bucket = control_bucket(config, Duration::from_secs(10))?;
    let deadline = Instant::now() + wait;
    let mut last_error;
    loop {
        match bucket
            .list_page(String::new(), None, None, None, Some(1))
            .await
            .map_err(StoreError::from)
        {
            Ok(_) => return Ok("exists"),
            Err(StoreError::Status { status: 404, .. }) => break,
            Err(e) => last_error = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "S3 endpoint {} did not answer within {}s: {last_error}",
                config.endpoint,
                wait.as_secs()
            ));
        }
        tracing::info!("waiting for S3 at {}: {last_error}", config.endpoint);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (region, credentials) = region_and_credentials(config)?;
    match Bucket::create_with_path_style(
        &config.bucket,
        region,
        credentials,
        s3::BucketConfiguration::default(),
    )
    .await
    {
        Ok(response) if response.success() => Ok("created"),
        Ok(response) => Err(format!(
            "creating bucket {:?} failed: {} {}",
            config.bucket, response.response_code, response.response_text
        )),
        Err(e) => {
            // Another process may have created it in between.
            match StoreError::from(e) {
                StoreError::Status { status: 409, .. } => Ok("exists"),
                e => Err(format!("creating bucket {:?} failed: {e}", config.bucket)),
            }
        }
    }
}

/// A header value we control (never fails for the ASCII we put in).
pub fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_like_posixpath() {
        assert_eq!(posix_join("", "a/b"), "a/b");
        assert_eq!(posix_join("pre", "a"), "pre/a");
        assert_eq!(posix_join("pre/", "a"), "pre/a");
        assert_eq!(posix_join("pre", ""), "pre/");
    }

    #[test]
    fn the_next_page_starts_past_the_last_entry() {
        let entry = |key: &str| Entry {
            key: key.into(),
            size: 0,
            last_modified: String::new(),
        };
        let page = Page {
            prefixes: vec!["1/a/".into(), "1/b/".into()],
            objects: vec![entry("1/a.txt")],
            truncated: true,
        };
        assert_eq!(page.next_start_after().as_deref(), Some("1/b0"));
        let page = Page {
            prefixes: vec!["1/a/".into()],
            objects: vec![entry("1/c.txt")],
            truncated: true,
        };
        assert_eq!(page.next_start_after().as_deref(), Some("1/c.txt"));
        assert_eq!(Page::default().next_start_after(), None);
        // Everything under `1/b/` sorts before `1/b0`, and nothing else does.
        assert!("1/b/\u{10ffff}" < "1/b0" && "1/b." < "1/b/");
    }

    #[test]
    fn error_xml_is_summarised() {
        let xml =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        assert_eq!(summarize_error_xml(xml), "NoSuchKey: gone");
    }

    #[test]
    fn complete_multipart_body_escapes_the_client_s_etags() {
        let parts = [(1, "\"a1\"".to_owned()), (2, "</ETag><x>&".to_owned())];
        assert_eq!(
            complete_multipart_xml(&parts),
            "<CompleteMultipartUpload>\
             <Part><PartNumber>1</PartNumber><ETag>\"a1\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>&lt;/ETag&gt;&lt;x&gt;&amp;</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn root_elements() {
        let done = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Key>k</Key></CompleteMultipartUploadResult>";
        assert_eq!(
            root_element(done).as_deref(),
            Some("CompleteMultipartUploadResult")
        );
        let failed = b"<Error><Code>InternalError</Code><Message>x</Message></Error>";
        assert_eq!(root_element(failed).as_deref(), Some("Error"));
        assert_eq!(root_element(b"").as_deref(), None);
    }
}
