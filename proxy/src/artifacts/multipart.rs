//! MLflow's multipart upload, driven by the client, through the proxy:
//! - `mpu/create` starts an S3 multipart upload and hands out one URL per part, on this proxy,
//!   each with a token binding (upload id, key, part number, expiry);
//! - `signed/part` checks the token and streams the part's body into S3 UploadPart, frame by
//!   frame with its Content-Length (nothing buffered), answering with the part's ETag;
//! - `mpu/complete` and `mpu/abort` complete or abort it in S3.
//!
//! No state lives in the process: the token and S3 carry everything, so any replica serves any
//! call of any upload, and a replica that stops takes nothing with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value, json};

use super::store_error;
use crate::body::{ProxyBody, empty, full};
use crate::error::{ProxyError, Side};
use crate::mlflow::content::guess_mime_type;
use crate::mlflow::json::{Dialect, dumps};
use crate::mlflow::path::validate_path_is_safe;
use crate::router::{MpuAction, SIGNED_PART_PATH};
use crate::s3::StoreError;
use crate::signing::{Claims, Grant, now_secs};
use crate::state::App;

/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;
/// create/abort bodies are a few names; complete lists up to 10,000 parts, each with the URL the
/// client was given (a few hundred bytes): 16 MiB holds that with room to spare.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Stock MLflow's words; the client falls back to a single PUT on exactly this message.
pub const UPLOADS_OFF: &str =
    "Multipart upload is not supported for the current artifact repository";

fn bad_request(message: impl Into<String>) -> ProxyError {
    ProxyError::mlflow(
        Side::Client,
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER_VALUE",
        message,
    )
}

pub(super) fn forbidden(message: impl Into<String>) -> ProxyError {
    ProxyError::mlflow(
        Side::Client,
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        message,
    )
}

fn missing_value(name: &str) -> ProxyError {
    bad_request(format!(
        "Missing value for required parameter '{name}'. See the API docs for more information about request parameters."
    ))
}

fn invalid_value(name: &str, value: &Value) -> ProxyError {
    bad_request(format!(
        "Invalid value {value} for parameter '{name}' supplied. See the API docs for more information about request parameters."
    ))
}

/// `/api/2.0` or `/ajax-api/2.0`, whichever the client came in on (below MLflow's static
/// prefix, kept): the URLs we hand out use it too, so they pass whatever a front proxy routes
/// for that client.
pub(super) fn api_prefix(app: &App, request_path: &str) -> String {
    let prefix = app.static_prefix.as_str();
    let below = crate::router::without_static_prefix(request_path, prefix).unwrap_or(request_path);
    if below.starts_with("/ajax-api/") {
        format!("{prefix}/ajax-api/2.0")
    } else {
        format!("{prefix}/api/2.0")
    }
}

/// The public base URL for this request, or a 400 when it names no usable host.
pub(super) fn public_base(app: &App, request: &Request<ProxyBody>) -> Result<String, ProxyError> {
    let peer = request
        .extensions()
        .get::<crate::public_url::ClientAddr>()
        .map(|c| c.0);
    app.transfers
        .config
        .public_url
        .base(request.headers(), peer)
        .ok_or_else(|| {
            bad_request(
                "Cannot build transfer URLs: the request has no usable Host header (or set PROXY_PUBLIC_URL)",
            )
        })
}

pub async fn handle(
    app: &Arc<App>,
    action: MpuAction,
    raw_path: &str,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !app.transfers.config.uploads {
        return Err(ProxyError::not_implemented(UPLOADS_OFF));
    }
    let dir = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path())?;
    let base = match action {
        MpuAction::Create => Some(public_base(app, &request)?),
        _ => None,
    };
    let prefix = api_prefix(app, request.uri().path());
    let body = read_json(request).await?;
    let name = file_name(&body)?;
    let key = app.store.upload_key(dir.trim_end_matches('/'), &name);
    match action {
        MpuAction::Create => {
            let base = base.unwrap_or_default();
            create(app, &key, &name, &body, &format!("{base}{prefix}")).await
        }
        MpuAction::Complete => complete(app, &key, &body).await,
        MpuAction::Abort => abort(app, &key, &body).await,
    }
}

/// `_get_request_message` for a POST: JSON only, at most `BODY_LIMIT` bytes, an object.
async fn read_json(request: Request<ProxyBody>) -> Result<Map<String, Value>, ProxyError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match content_type {
        None => return Err(bad_request("Bad Request. Content-Type header is missing.")),
        Some(ct) if ct.split(';').next().map(str::trim) != Some("application/json") => {
            return Err(bad_request(
                "Bad Request. Content-Type must be one of ['application/json'].",
            ));
        }
        Some(_) => {}
    }
    let bytes = Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| bad_request(format!("Bad Request. Could not read the JSON body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad_request("Bad Request. The body is not a JSON object.")),
    }
}

/// `_get_multipart_upload_file_name`: the basename of `path` (`\` separates too), validated.
fn file_name(body: &Map<String, Value>) -> Result<String, ProxyError> {
    let path = match body.get("path") {
        None | Some(Value::Null) => return Err(missing_value("path")),
        Some(Value::String(s)) if s.is_empty() => return Err(missing_value("path")),
        Some(Value::String(s)) => s,
        Some(other) => return Err(invalid_value("path", other)),
    };
    let ntpath_basename = |p: &str| p.rsplit(['/', '\\']).next().unwrap_or("").to_owned();
    let name =
        validate_path_is_safe(&ntpath_basename(path)).map_err(|_| ProxyError::invalid_path())?;
    let name = ntpath_basename(&name);
    if name.is_empty() || name == "." || name == ".." {
        return Err(ProxyError::invalid_path());
    }
    Ok(name)
}

/// An integer, or a string of one (protobuf's JSON parsing takes both).
fn int_field(body: &Map<String, Value>, name: &str) -> Result<Option<i64>, ProxyError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().ok()),
        Some(other) => Err(invalid_value(name, other)),
    }
}

fn upload_id(body: &Map<String, Value>) -> Result<String, ProxyError> {
    match body.get("upload_id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(missing_value("upload_id")),
        Some(other) => Err(invalid_value("upload_id", other)),
    }
}

fn json_response(text: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn create(
    app: &Arc<App>,
    key: &str,
    name: &str,
    body: &Map<String, Value>,
    url_base: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Stock MLflow hands out `num_parts` URLs (none when it is absent); S3 takes 10,000 parts.
    let num_parts = int_field(body, "num_parts")?.unwrap_or(0);
    let num_parts = u32::try_from(num_parts)
        .ok()
        .filter(|n| u64::from(*n) <= MAX_PARTS)
        .ok_or_else(|| invalid_value("num_parts", &json!(num_parts)))?;
    let config = &app.transfers.config;
    let upload_id = app
        .store
        .create_multipart(key, guess_mime_type(name))
        .await
        .map_err(store_error)?;
    app.transfers
        .uploads_total
        .with_label_values(&["created"])
        .inc();
    let expires = now_secs() + config.part_url_ttl.as_secs();
    let mut credentials = Vec::with_capacity(num_parts as usize);
    for part_number in 1..=num_parts {
        let token = config
            .signer
            .sign(&Claims {
                grant: Grant::Part,
                expires,
                part_number,
                upload_id: upload_id.clone(),
                target: key.to_owned(),
            })
            .map_err(|e| bad_request(format!("Cannot sign an upload URL: {e}")))?;
        credentials.push(json!({
            "url": format!("{url_base}/mlflow-artifacts/{SIGNED_PART_PATH}?token={token}"),
            "part_number": part_number,
        }));
    }
    tracing::info!(key, num_parts, "multipart upload created");
    // `message_to_json`: pretty, `upload_id` then `credentials`, empty `headers` left out.
    let answer = json!({ "upload_id": upload_id, "credentials": credentials });
    Ok(json_response(dumps(&answer, Dialect::FlaskPretty)))
}

/// S3's answer to a call whose inputs came from the client: its 404 (no such upload) and 400s
/// (bad part list, part too small) are the client's to fix, not a store failure to retry.
/// s3s-fs answers AccessDenied (403) where S3 says NoSuchUpload; after a create that succeeded
/// with the same credentials, a 403 means the same thing.
fn client_or_store(error: StoreError) -> ProxyError {
    match &error {
        StoreError::Status {
            status: 404 | 403,
            message,
        } => ProxyError::mlflow(
            Side::Client,
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
            format!("No such multipart upload ({message})"),
        ),
        StoreError::Status {
            status: 400,
            message,
        } => bad_request(format!("The store refused the request: {message}")),
        _ => store_error(error),
    }
}

async fn complete(
    app: &Arc<App>,
    key: &str,
    body: &Map<String, Value>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upload_id = upload_id(body)?;
    let parts = match body.get("parts") {
        None | Some(Value::Null) => return Err(missing_value("parts")),
        Some(Value::Array(parts)) if !parts.is_empty() => parts,
        Some(other) => return Err(invalid_value("parts", other)),
    };
    if parts.len() as u64 > MAX_PARTS {
        return Err(bad_request("More than 10000 parts"));
    }
    let mut list = Vec::with_capacity(parts.len());
    for part in parts {
        let Some(fields) = part.as_object() else {
            return Err(invalid_value("parts", part));
        };
        let number = int_field(fields, "part_number")?
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_PARTS).contains(&u64::from(*n)))
            .ok_or_else(|| invalid_value("part_number", part))?;
        let etag = match fields.get("etag") {
            Some(Value::String(etag)) if !etag.is_empty() => etag.clone(),
            _ => return Err(invalid_value("etag", part)),
        };
        list.push((number, etag));
    }
    app.store
        .complete_multipart(key, &upload_id, list)
        .await
        .map_err(client_or_store)?;
    app.transfers
        .uploads_total
        .with_label_values(&["completed"])
        .inc();
    tracing::info!(key, "multipart upload completed");
    Ok(json_response("{}".to_owned()))
}

async fn abort(
    app: &Arc<App>,
    key: &str,
    body: &Map<String, Value>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upload_id = upload_id(body)?;
    app.store
        .abort_multipart(key, &upload_id)
        .await
        .map_err(client_or_store)?;
    app.transfers
        .uploads_total
        .with_label_values(&["aborted"])
        .inc();
    tracing::info!(key, "multipart upload aborted by the client");
    Ok(json_response("{}".to_owned()))
}

/// The `token` query parameter, checked for `grant`; every refusal is a 403 that stores nothing.
pub(super) fn verify_token(
    app: &App,
    query: Option<&str>,
    grant: Grant,
) -> Result<Claims, ProxyError> {
    let token = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    });
    let result = match token {
        Some(token) => app
            .transfers
            .config
            .signer
            .verify(&token, grant, now_secs()),
        None => Err(crate::signing::TokenError::Malformed),
    };
    result.map_err(|e| {
        use crate::signing::TokenError;
        let reason = match e {
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "signature",
            TokenError::Expired => "expired",
            TokenError::WrongGrant => "grant",
        };
        app.transfers
            .refused_total
            .with_label_values(&[reason])
            .inc();
        tracing::warn!("signed URL refused: {e}");
        forbidden(format!("Access denied: {e}"))
    })
}

fn declared_length(headers: &HeaderMap) -> Result<u64, ProxyError> {
    let length_required = || {
        ProxyError::mlflow(
            Side::Client,
            StatusCode::LENGTH_REQUIRED,
            "BAD_REQUEST",
            "A part upload must declare its Content-Length",
        )
    };
    let value = headers
        .get(header::CONTENT_LENGTH)
        .ok_or_else(length_required)?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad_request("Invalid Content-Length"))
}

/// Read and drop up to `REFUSED_BODY_DRAIN` bytes (for at most a second) of a refused request's
/// body: a client that sends its whole body before reading the answer (python-requests does)
/// then sees the refusal instead of a reset connection. Anything larger is cut off.
async fn discard_some(mut body: ProxyBody) {
    const REFUSED_BODY_DRAIN: usize = 1024 * 1024;
    let drain = async {
        let mut seen = 0;
        while seen < REFUSED_BODY_DRAIN {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, Bytes::len),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

/// `PUT signed/part?token=`: the part's bytes, straight into S3 UploadPart.
pub async fn upload_part(
    app: &Arc<App>,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !app.transfers.config.uploads {
        return Err(ProxyError::not_implemented(UPLOADS_OFF));
    }
    // Token and size first: a refused part is never sent on to S3.
    let checked = verify_token(app, request.uri().query(), Grant::Part).and_then(|claims| {
        let len = declared_length(request.headers())?;
        let max = app.transfers.config.max_part;
        if len > max {
            return Err(ProxyError::mlflow(
                Side::Client,
                StatusCode::PAYLOAD_TOO_LARGE,
                "BAD_REQUEST",
                format!("A part may be at most {max} bytes; this one declares {len}"),
            ));
        }
        Ok((claims, len))
    });
    let (claims, len) = match checked {
        Ok(checked) => checked,
        Err(refusal) => {
            discard_some(request.into_body()).await;
            return Err(refusal);
        }
    };
    // Tells a client whose body broke off (fewer bytes than declared) from a store failure.
    let client_failed = Arc::new(AtomicBool::new(false));
    let flag = client_failed.clone();
    let body = request
        .into_body()
        .map_err(move |e| {
            flag.store(true, Ordering::Relaxed);
            e
        })
        .boxed();
    let stored = app
        .store
        .upload_part_body(
            &claims.target,
            &claims.upload_id,
            claims.part_number,
            len,
            body,
        )
        .await;
    match stored {
        Ok(etag) => {
            let mut response = Response::new(empty());
            let headers = response.headers_mut();
            headers.insert(header::ETAG, crate::s3::header_value(&etag));
            headers.insert(header::CONTENT_LENGTH, 0.into());
            Ok(response)
        }
        Err(e) if client_failed.load(Ordering::Relaxed) => Err(ProxyError::mlflow(
            Side::Client,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("The part's body ended early: {e}"),
        )),
        Err(e) => {
            tracing::warn!(
                key = claims.target,
                part = claims.part_number,
                "part not stored: {e}"
            );
            Err(client_or_store(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(path: &str) -> Map<String, Value> {
        json!({ "path": path }).as_object().unwrap().clone()
    }

    #[test]
    fn file_names_like_mlflow() {
        assert_eq!(file_name(&body("/home/me/big.bin")).unwrap(), "big.bin");
        assert_eq!(file_name(&body("C:\\data\\big.bin")).unwrap(), "big.bin");
        assert_eq!(file_name(&body("a%2520b.bin")).unwrap(), "a b.bin");
        for bad in ["", "x/", "..", "."] {
            assert!(file_name(&body(bad)).is_err(), "{bad:?}");
        }
        assert!(file_name(&Map::new()).is_err());
    }
}
