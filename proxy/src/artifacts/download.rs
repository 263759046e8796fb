//! `GET|HEAD artifacts/<path>`: the object streamed from S3 as it arrives, with MLflow's
//! labels, Range (206/416) and If-None-Match (304).

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;

use super::store_error;
use crate::body::{ProxyBody, boxed, empty};
use crate::error::ProxyError;
use crate::mlflow::content::{basename, content_disposition_attachment, guess_mime_type};
use crate::mlflow::path::validate_path_is_safe;
use crate::s3::{ObjectMeta, header_value, read_error_body};
use crate::state::App;

/// Request headers that S3 evaluates the same way HTTP does.
const FORWARDED_CONDITIONS: &[header::HeaderName] = &[
    header::IF_NONE_MATCH,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Response headers taken from S3 as they are.
const KEPT_FROM_STORE: &[header::HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ETAG,
    header::LAST_MODIFIED,
];

pub async fn download(
    app: &Arc<App>,
    raw_path: &str,
    request_headers: &HeaderMap,
    head_only: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path().fastapi())?;
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
    if head_only {
        return match app.store.head_object(&key).await.map_err(store_error)? {
            Some(meta) => Ok(head_response(&path, &meta)),
            None => Err(missing(app, &path, &key).await),
        };
    }

    let mut forwarded = HeaderMap::new();
    for name in FORWARDED_CONDITIONS {
        if let Some(value) = request_headers.get(name) {
            forwarded.insert(name, value.clone());
        }
    }
    // S3 serves one range; for a multi-range request we answer 200 with the whole object,
    // which HTTP allows.
    if let Some(range) = request_headers.get(header::RANGE)
        && !range.as_bytes().contains(&b',')
    {
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
            // Some stores ignore If-None-Match; answer 304 ourselves when the ETag matches.
            if status == StatusCode::OK
                && let Some(condition) = request_headers.get(header::IF_NONE_MATCH)
                && etag_matches(condition, response.headers().get(header::ETAG))
            {
                return Ok(not_modified(&path, response.headers()));
            }
            Ok(object_response(&path, status, response))
        }
        StatusCode::NOT_MODIFIED => Ok(not_modified(&path, response.headers())),
        StatusCode::PRECONDITION_FAILED => {
            let mut answer = Response::new(empty());
            *answer.status_mut() = status;
            Ok(answer)
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let size = app
                .store
                .head_object(&key)
                .await
                .map_err(store_error)?
                .map(|m| m.size);
            let mut answer = Response::new(empty());
            *answer.status_mut() = status;
            if let Some(size) = size {
                answer.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{size}")),
                );
            }
            Ok(answer)
        }
        StatusCode::NOT_FOUND => Err(missing(app, &path, &key).await),
        // A store that keeps keys as files (s3s-fs) fails a GET on a "folder" with a 500.
        _ if status.is_server_error()
            && app
                .store
                .any_under(&format!("{key}/"))
                .await
                .unwrap_or(false) =>
        {
            Err(directory_error(&path))
        }
        _ => {
            let message = read_error_body(response.into_body()).await;
            Err(store_error(crate::s3::StoreError::Status {
                status: status.as_u16(),
                message,
            }))
        }
    }
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

fn object_response(
    path: &str,
    status: StatusCode,
    store: Response<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = store.into_parts();
    let mut response = labelled(path, status, boxed(body));
    for name in KEPT_FROM_STORE {
        if let Some(value) = parts.headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

fn not_modified(path: &str, store_headers: &HeaderMap) -> Response<ProxyBody> {
    let mut response = labelled(path, StatusCode::NOT_MODIFIED, empty());
    for name in [header::ETAG, header::LAST_MODIFIED] {
        if let Some(value) = store_headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

fn head_response(path: &str, meta: &ObjectMeta) -> Response<ProxyBody> {
    let mut response = labelled(path, StatusCode::OK, empty());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    if let Some(etag) = &meta.etag {
        headers.insert(header::ETAG, header_value(etag));
    }
    if let Some(modified) = &meta.last_modified {
        headers.insert(header::LAST_MODIFIED, header_value(modified));
    }
    response
}

/// `If-None-Match` against an ETag (weak comparison, as RFC 9110 asks for this header).
fn etag_matches(condition: &HeaderValue, etag: Option<&HeaderValue>) -> bool {
    let Ok(condition) = condition.to_str() else {
        return false;
    };
    let Some(etag) = etag.and_then(|e| e.to_str().ok()) else {
        return false;
    };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    condition
        .split(',')
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == opaque(etag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_comparison() {
        let etag = HeaderValue::from_static("\"abc\"");
        for (condition, expected) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
        ] {
            assert_eq!(
                etag_matches(&HeaderValue::from_static(condition), Some(&etag)),
                expected,
                "{condition}"
            );
        }
    }
}
