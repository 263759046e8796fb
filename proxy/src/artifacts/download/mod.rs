//! `GET|HEAD artifacts/<path>`: the object streamed from S3 as it arrives, with MLflow's
//! labels. Conditional requests and ranges are decided here from the object's validators
//! (`conditional`), whatever the store makes of them; what is sent (`Answer`) is decided apart
//! from how its body is produced (`object_body`).

mod conditional;
pub mod ranged;

use std::ops::RangeInclusive;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;

use super::scope::Scope;
use crate::artifacts::state::App;
use crate::integrity::Digest;
use crate::mlflow::content::{basename, content_disposition_attachment, guess_mime_type};
use crate::mlflow::path::validate_path_is_safe;
use crate::store::answer::store_error;
use crate::store::s3::{ObjectMeta, StoreError, header_value, read_error_body, user_metadata};
use crate::wire::body::{ProxyBody, boxed, empty};
use crate::wire::error::ProxyError;
use conditional::{Conditions, Precondition, Selection, Validators};
use http_body_util::BodyExt;

/// Request headers that S3 evaluates as HTTP does: passed on so that a store that honours them
/// answers 304/412 without sending the body. The proxy checks them again either way.
const FORWARDED_CONDITIONS: &[header::HeaderName] = &[
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
];

/// S3 keys hold at most 1024 bytes of UTF-8.
const MAX_KEY_BYTES: usize = 1024;

/// What a GET answers with 200 or 206, decided from the object's metadata.
pub struct Answer {
    pub status: StatusCode,
    /// The object's full size.
    pub size: u64,
    /// The bytes sent (inclusive); the whole object for a 200.
    pub bytes: RangeInclusive<u64>,
    /// ETag and Last-Modified exactly as the store gave them.
    pub validators: HeaderMap,
    /// The object's digest, if it has one (`integrity`).
    pub digest: Option<Digest>,
}

pub async fn download(
    app: &Arc<App>,
    scope: &Scope,
    raw_path: &str,
    request_headers: &HeaderMap,
    head_only: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path().fastapi())?;
    let path = scope.repo_path(&path).map_err(ProxyError::fastapi)?;
    download_validated(app, &path, request_headers, head_only).await
}

/// The download of a path already through `validate_path_is_safe` (the presigned-object route
/// has it from its token; validating twice would decode twice).
pub async fn download_validated(
    app: &Arc<App>,
    path: &str,
    request_headers: &HeaderMap,
    head_only: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = path.to_owned();
    if path.is_empty() || path.ends_with('/') {
        return Err(directory_error(&path));
    }
    let key = app.store.key(&path);
    if key.len() > MAX_KEY_BYTES {
        // Stores answer this in their own ways (400, 500, a HEAD with no body to tell).
        return Err(ProxyError::mlflow(
            crate::wire::error::Side::Client,
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
            "The artifact path is too long for the artifact store",
        )
        .fastapi());
    }
    let conditions = Conditions::parse(request_headers);
    if head_only {
        let meta = match app.store.head_object(&key).await {
            Ok(Some(meta)) => meta,
            Ok(None) => return Err(missing(app, &path, &key).await),
            Err(e) => return Err(failed_or_directory(app, &path, &key, e).await),
        };
        let validators = meta_validators(&meta);
        return Ok(
            match conditions.preconditions(&Validators::from_headers(&validators)) {
                Precondition::Pass => {
                    let digest = app.integrity.expected(&meta.metadata);
                    head_response(&path, &meta, &validators, digest)
                }
                Precondition::NotModified => not_modified(&path, &validators),
                Precondition::Failed => precondition_failed(),
            },
        );
    }

    // A GET holds an S3 connection and buffers until its client has read the answer: only so
    // many at once (`PROXY_MAX_DOWNLOADS`); the turn goes with the answer's body.
    let Some(turn) = app.downloads.turn().await else {
        app.downloads.metrics.refused.inc();
        let mut refused = ProxyError::mlflow(
            crate::wire::error::Side::Internal,
            StatusCode::SERVICE_UNAVAILABLE,
            "TEMPORARILY_UNAVAILABLE",
            "Too many downloads in progress; try again shortly",
        )
        .into_response();
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Ok(refused);
    };
    let response = get(app, &path, &key, request_headers, &conditions).await?;
    Ok(response.map(|body| {
        body.map_frame(move |frame| {
            let _held = &turn;
            frame
        })
        .boxed()
    }))
}

/// The GET of a download, decided and answered (`download_validated`, past its turn).
async fn get(
    app: &Arc<App>,
    path: &str,
    key: &str,
    request_headers: &HeaderMap,
    conditions: &Conditions,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (path, key) = (path.to_owned(), key.to_owned());
    let mut forwarded = HeaderMap::new();
    for name in FORWARDED_CONDITIONS {
        if let Some(value) = request_headers.get(name)
            && conditions.parsed(name)
        {
            forwarded.insert(name, value.clone());
        }
    }
    let ranged = conditions.store_range();
    if let Some(range) = &ranged {
        forwarded.insert(header::RANGE, range.clone());
    }
    let response = app
        .store
        .get_object(&key, forwarded)
        .await
        .map_err(store_error)?;
    let status = response.status();
    match status {
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
            let validators = kept_validators(response.headers());
            let object = Validators::from_headers(&validators);
            match conditions.preconditions(&object) {
                Precondition::NotModified => return Ok(not_modified(&path, &validators)),
                Precondition::Failed => return Ok(precondition_failed()),
                Precondition::Pass => {}
            }
            let Some((size, sent)) = store_extent(status, response.headers()) else {
                // A store that sends no length: pass its whole answer on as it is.
                return Ok(unsized_response(&path, response));
            };
            let wanted = match conditions.selection(&object, size) {
                Selection::Unsatisfiable => return Ok(unsatisfiable(size)),
                Selection::Whole => None,
                Selection::Part(range) => Some(range),
            };
            let answer = Answer {
                status: if wanted.is_some() {
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                },
                size,
                bytes: wanted.clone().unwrap_or(whole(size)),
                validators,
                digest: app.integrity.expected(&user_metadata(response.headers())),
            };
            if wanted.as_ref() == sent.as_ref()
                || (wanted.is_none() && sent.as_ref() == Some(&whole(size)))
            {
                // Large answers: the same status and headers, the body read as parallel ranges;
                // a whole object checked as a whole as it goes out.
                let check = answer.check();
                let response = object_response(&path, answer, boxed(response.into_body()));
                let response = ranged::parallelize(app, &key, response);
                return Ok(checked(app, &key, size, check, response));
            }
            // The store sent other bytes than HTTP asks for (it ignored If-Range, or read a
            // range its own way): ask again for exactly those.
            drop(response);
            refetch(app, &path, &key, answer).await
        }
        StatusCode::NOT_MODIFIED => Ok(not_modified(&path, &kept_validators(response.headers()))),
        StatusCode::PRECONDITION_FAILED => Ok(precondition_failed()),
        // Some stores refuse (416) or fail on (500) ranges HTTP allows, such as a suffix longer
        // than the object: decide from the object's metadata and ask for exact bytes.
        _ if ranged.is_some()
            && (status == StatusCode::RANGE_NOT_SATISFIABLE || status.is_server_error()) =>
        {
            drop(response);
            by_metadata(app, &path, &key, conditions).await
        }
        StatusCode::NOT_FOUND => Err(missing(app, &path, &key).await),
        _ => {
            let message = read_error_body(response.into_body()).await;
            let error = StoreError::Status {
                status: status.as_u16(),
                message,
            };
            Err(failed_or_directory(app, &path, &key, error).await)
        }
    }
}

/// Decide from HEAD, then GET exactly the bytes decided.
async fn by_metadata(
    app: &Arc<App>,
    path: &str,
    key: &str,
    conditions: &Conditions,
) -> Result<Response<ProxyBody>, ProxyError> {
    let meta = match app.store.head_object(key).await {
        Ok(Some(meta)) => meta,
        Ok(None) => return Err(missing(app, path, key).await),
        Err(e) => return Err(failed_or_directory(app, path, key, e).await),
    };
    let validators = meta_validators(&meta);
    let object = Validators::from_headers(&validators);
    match conditions.preconditions(&object) {
        Precondition::NotModified => return Ok(not_modified(path, &validators)),
        Precondition::Failed => return Ok(precondition_failed()),
        Precondition::Pass => {}
    }
    let (status, bytes) = match conditions.selection(&object, meta.size) {
        Selection::Unsatisfiable => return Ok(unsatisfiable(meta.size)),
        Selection::Whole => (StatusCode::OK, whole(meta.size)),
        Selection::Part(range) => (StatusCode::PARTIAL_CONTENT, range),
    };
    let answer = Answer {
        status,
        size: meta.size,
        bytes,
        validators,
        digest: app.integrity.expected(&meta.metadata),
    };
    refetch(app, path, key, answer).await
}

/// GET exactly the bytes of `answer` (the same version of the object, by its ETag).
async fn refetch(
    app: &Arc<App>,
    path: &str,
    key: &str,
    answer: Answer,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut headers = HeaderMap::new();
    if let Some(etag) = answer.validators.get(header::ETAG) {
        headers.insert(header::IF_MATCH, etag.clone());
    }
    if answer.status == StatusCode::PARTIAL_CONTENT {
        let (start, end) = (answer.bytes.start(), answer.bytes.end());
        headers.insert(header::RANGE, header_value(&format!("bytes={start}-{end}")));
    }
    let response = app
        .store
        .get_object(key, headers)
        .await
        .map_err(store_error)?;
    let status = response.status();
    let sent = store_extent(status, response.headers());
    let same_version = kept_validators(response.headers()).get(header::ETAG)
        == answer.validators.get(header::ETAG);
    let check = answer.check();
    match sent {
        Some((size, sent)) if size == answer.size && same_version => {
            if sent.as_ref().unwrap_or(&whole(size)) == &answer.bytes {
                let response = object_response(path, answer, boxed(response.into_body()));
                Ok(checked(app, key, size, check, response))
            } else if sent.is_none() {
                // A store that ignores Range altogether: the whole object is a valid answer.
                let answer = Answer {
                    status: StatusCode::OK,
                    bytes: whole(size),
                    ..answer
                };
                let check = answer.check();
                let response = object_response(path, answer, boxed(response.into_body()));
                Ok(checked(app, key, size, check, response))
            } else {
                Err(store_error(StoreError::Other(format!(
                    "asked for bytes {:?}, got {sent:?}",
                    answer.bytes
                ))))
            }
        }
        // The object changed in between: let the client ask again.
        _ if status.is_success() || status == StatusCode::PRECONDITION_FAILED => Err(store_error(
            StoreError::Other("the object changed during the request".into()),
        )),
        _ => {
            let message = read_error_body(response.into_body()).await;
            Err(store_error(StoreError::Status {
                status: status.as_u16(),
                message,
            }))
        }
    }
}

/// The object's size and, for a 206, the bytes the store sent.
fn store_extent(
    status: StatusCode,
    headers: &HeaderMap,
) -> Option<(u64, Option<RangeInclusive<u64>>)> {
    if status == StatusCode::PARTIAL_CONTENT {
        // `bytes 0-9/100`
        let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
        let (range, size) = value.strip_prefix("bytes ")?.split_once('/')?;
        let (start, end) = range.split_once('-')?;
        let size: u64 = size.trim().parse().ok()?;
        Some((
            size,
            Some(start.trim().parse().ok()?..=end.trim().parse().ok()?),
        ))
    } else {
        let size = headers
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some((size, None))
    }
}

fn whole(size: u64) -> RangeInclusive<u64> {
    // An empty object's "whole" is the empty range 0..=u64::MAX, never equal to a real slice.
    0..=size.checked_sub(1).unwrap_or(u64::MAX)
}

/// ETag and Last-Modified as the store gave them.
fn kept_validators(store_headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [header::ETAG, header::LAST_MODIFIED] {
        if let Some(value) = store_headers.get(&name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

fn meta_validators(meta: &ObjectMeta) -> HeaderMap {
    let mut kept = HeaderMap::new();
    if let Some(etag) = &meta.etag {
        kept.insert(header::ETAG, header_value(etag));
    }
    if let Some(modified) = &meta.last_modified {
        kept.insert(header::LAST_MODIFIED, header_value(modified));
    }
    kept
}

/// The store failed on the key: a "directory" (keys below it), or a real failure. A store that
/// keeps keys as files (s3s-fs) fails GET and HEAD of a "folder" with a 500.
async fn failed_or_directory(
    app: &Arc<App>,
    path: &str,
    key: &str,
    error: StoreError,
) -> ProxyError {
    let server_side = matches!(&error, StoreError::Status { status, .. } if *status >= 500);
    if server_side
        && app
            .store
            .any_under(&format!("{key}/"))
            .await
            .unwrap_or(false)
    {
        return directory_error(path);
    }
    store_error(error)
}

/// Nothing at the key: a "directory" (keys below it) or truly missing.
async fn missing(app: &Arc<App>, path: &str, key: &str) -> ProxyError {
    match app.store.any_under(&format!("{key}/")).await {
        Ok(true) => directory_error(path),
        // Stock MLflow on S3 answers 500 here, which clients retry for minutes; 404 is honest.
        Ok(false) => ProxyError::not_found(format!("No such artifact: '{path}'")).fastapi(),
        Err(e) => store_error(e),
    }
}

fn directory_error(path: &str) -> ProxyError {
    ProxyError::detail(
        StatusCode::BAD_REQUEST,
        format!("Artifact path refers to a directory, not a file: '{path}'"),
    )
}

/// The headers MLflow puts on every download.
fn labelled(path: &str, status: StatusCode, body: ProxyBody) -> Response<ProxyBody> {
    let filename = basename(path);
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(guess_mime_type(path)),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition_attachment(filename)),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response
}

/// A 200 or 206: status and headers from `answer`, the bytes from `body`.
fn object_response(path: &str, answer: Answer, body: ProxyBody) -> Response<ProxyBody> {
    let body = object_body(&answer, body);
    let mut response = labelled(path, answer.status, body);
    let headers = response.headers_mut();
    let length = if answer.size == 0 {
        0
    } else {
        answer.bytes.end() - answer.bytes.start() + 1
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if answer.status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            header::CONTENT_RANGE,
            header_value(&format!(
                "bytes {}-{}/{}",
                answer.bytes.start(),
                answer.bytes.end(),
                answer.size
            )),
        );
    }
    headers.extend(answer.validators);
    if let Some(digest) = &answer.digest {
        headers.extend(digest.response_headers(answer.status == StatusCode::OK));
    }
    response
}

impl Answer {
    /// What the answer's bytes are checked against: `Some` when they are the whole object (a 200,
    /// or a range that covers it all, as MLflow's client asks for through `presigned/`), with the
    /// object's digest if it has one.
    fn check(&self) -> Option<Option<Digest>> {
        (self.bytes == whole(self.size)).then_some(self.digest)
    }
}

/// An answer that carries the whole object of `size` bytes (`Answer::check`), checked against
/// its digest as it streams (`integrity::verified`): a mismatch cuts it before its last byte.
/// Other answers (parts of the object) as they are.
fn checked(
    app: &App,
    key: &str,
    size: u64,
    check: Option<Option<Digest>>,
    response: Response<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(digest) = check else {
        return response;
    };
    if !response.status().is_success() || app.integrity.config.algorithm.is_none() {
        return response;
    }
    let outcomes = app.integrity.downloads.clone();
    match digest {
        // No byte to cut: an empty object is checked by its length alone.
        Some(_) if size == 0 => response,
        Some(digest) => {
            response.map(|body| crate::integrity::verified(body, key, size, digest, outcomes))
        }
        None => {
            outcomes.with_label_values(&["no_digest"]).inc();
            response
        }
    }
}

/// How the bytes of a decided answer are produced: here, the store's own response body.
fn object_body(_answer: &Answer, store_body: ProxyBody) -> ProxyBody {
    store_body
}

/// A store answer without a length (never from S3 proper): passed on as a whole.
fn unsized_response(path: &str, store: Response<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = store.into_parts();
    let mut response = labelled(path, StatusCode::OK, boxed(body));
    response
        .headers_mut()
        .extend(kept_validators(&parts.headers));
    response
}

fn not_modified(path: &str, validators: &HeaderMap) -> Response<ProxyBody> {
    let mut response = labelled(path, StatusCode::NOT_MODIFIED, empty());
    response.headers_mut().extend(validators.clone());
    response
}

fn precondition_failed() -> Response<ProxyBody> {
    let mut answer = Response::new(empty());
    *answer.status_mut() = StatusCode::PRECONDITION_FAILED;
    answer
}

fn unsatisfiable(size: u64) -> Response<ProxyBody> {
    let mut answer = Response::new(empty());
    *answer.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    answer.headers_mut().insert(
        header::CONTENT_RANGE,
        header_value(&format!("bytes */{size}")),
    );
    answer
}

fn head_response(
    path: &str,
    meta: &ObjectMeta,
    validators: &HeaderMap,
    digest: Option<Digest>,
) -> Response<ProxyBody> {
    let mut response = labelled(path, StatusCode::OK, empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    headers.extend(validators.clone());
    if let Some(digest) = digest {
        headers.extend(digest.response_headers(true));
    }
    response
}
