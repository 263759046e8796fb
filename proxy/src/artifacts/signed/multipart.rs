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
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;

use crate::artifacts::scope::Scope;
use crate::artifacts::state::App;
use crate::artifacts::state::upload_memory::BudgetPermit;
use crate::integrity::{self, Algorithm, Digest, Hasher, parts};
use crate::mlflow::content::guess_mime_type;
use crate::mlflow::json::{Dialect, dumps};
use crate::mlflow::mpu_body::{MAX_PARTS as MAX_PARTS_USIZE, MpuBody, Part, Parts, Scalar};
use crate::mlflow::path::validate_path_is_safe;
use crate::router::{MpuAction, SIGNED_PART_PATH};
use crate::signing::{Claims, Grant, now_secs};
use crate::store::answer::store_error;
use crate::store::s3::StoreError;
use crate::wire::body::{ProxyBody, empty, full};
use crate::wire::error::{ProxyError, Side};

/// S3's limit on parts per upload.
const MAX_PARTS: u64 = MAX_PARTS_USIZE as u64;
/// create and abort bodies are a local file path and a number or an upload id: a few KiB.
const SMALL_BODY_LIMIT: usize = 64 * 1024;
/// The longest public base URL parts are handed out under (`PROXY_PUBLIC_URL` or the Host).
const MAX_BASE: usize = 256;
/// S3 keys hold at most 1024 bytes; upload ids longer than this are not handed out.
const MAX_KEY: usize = 1024;
const MAX_UPLOAD_ID: usize = 512;
/// The largest body the real client sends: a complete of 10,000 parts, each
/// `{"part_number": 10000, "etag": <up to 130>, "url": "<the URL handed out>"}, ` (the client
/// echoes every URL), the URL at most the base, the route and a token for the longest key and
/// upload id; plus the local path (4 KiB, `\uXXXX`-escaped). About 26 MB; a typical key and
/// upload id make it 4-5 MB.
const COMPLETE_BODY_LIMIT: usize = {
    let payload = 14 + 2 + MAX_UPLOAD_ID + 2 + MAX_KEY;
    let token = payload.div_ceil(3) * 4 + 1 + 43;
    let url = MAX_BASE + "/ajax-api/2.0/mlflow-artifacts/signed/part?token=".len() + token;
    let entry = r#"{"part_number": 10000, "etag": "#.len() + 130 + r#", "url": ""}, "#.len() + url;
    MAX_PARTS_USIZE * entry + 6 * 4096 + 1024
};
/// A JSON body's budget is taken in steps of this much when it declares no length.
const BODY_STEP: usize = 64 * 1024;

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

fn invalid_value(name: &str, value: &str) -> ProxyError {
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
        .get::<crate::artifacts::state::public_url::ClientAddr>()
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

/// Stock's order: the path, the skill rule, its workspace, then (a step early: a client sent back
/// to plain uploads is refused there the same) whether uploads are on, the body and its file
/// name, the skill rule on the file.
pub async fn handle(
    app: &Arc<App>,
    scope: &Scope,
    action: MpuAction,
    raw_path: &str,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let dir = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path())?;
    scope.skill_write(&dir)?;
    let dir = scope.repo_path(&dir)?;
    if !app.transfers.config.uploads {
        return Err(ProxyError::not_implemented(UPLOADS_OFF));
    }
    let base = match action {
        MpuAction::Create => Some(public_base(app, &request)?),
        _ => None,
    };
    if base.as_ref().is_some_and(|b| b.len() > MAX_BASE) {
        return Err(bad_request(format!(
            "Cannot build transfer URLs: the public address is longer than {MAX_BASE} characters"
        )));
    }
    let prefix = api_prefix(app, request.uri().path());
    let limit = match action {
        MpuAction::Complete => COMPLETE_BODY_LIMIT,
        MpuAction::Create | MpuAction::Abort => SMALL_BODY_LIMIT,
    };
    let (body, held) = read_json(app, request, limit).await?;
    let name = file_name(&body)?;
    scope.skill_write(&crate::store::s3::posix_join(&dir, &name))?;
    let key = app.store.upload_key(dir.trim_end_matches('/'), &name);
    match action {
        MpuAction::Create => {
            drop(held);
            let base = base.unwrap_or_default();
            create(app, &key, &name, &body, &format!("{base}{prefix}")).await
        }
        MpuAction::Complete => {
            // The part list is all that is kept of the body: the bytes go back to the budget.
            let upload_id = upload_id(app, &body, &key)?;
            let parts = part_list(&body)?;
            drop(held);
            complete(app, &key, &upload_id, parts).await
        }
        MpuAction::Abort => {
            drop(held);
            abort(app, &key, &body).await
        }
    }
}

/// `_get_request_message` for a POST: JSON only, an object, at most `limit` bytes. The bytes
/// held while reading count in the upload budget (so all JSON bodies together stay within it);
/// a body silent for the idle timeout ends with 408. Checked before a byte is read: the type and
/// the declared length.
async fn read_json(
    app: &App,
    request: Request<ProxyBody>,
    limit: usize,
) -> Result<(MpuBody, BudgetPermit), ProxyError> {
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
    let too_large = || {
        ProxyError::mlflow(
            Side::Client,
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_PARAMETER_VALUE",
            format!("Bad Request. The JSON body is larger than {limit} bytes."),
        )
    };
    let declared = match request.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad_request("Invalid Content-Length"))?,
        ),
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // A declared length is reserved at once (one wait, nothing held while waiting); without one,
    // step by step.
    let mut held = app.reserve(declared.unwrap_or(BODY_STEP).max(1)).await;
    let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) if e.is_idle_timeout() => {
                app.metrics
                    .body_idle_timeouts
                    .with_label_values(&["upload"])
                    .inc();
                return Err(ProxyError::body_stalled(format!(
                    "Bad Request. The JSON body stalled ({e})."
                )));
            }
            Err(e) => {
                return Err(bad_request(format!(
                    "Bad Request. Could not read the JSON body: {e}"
                )));
            }
        };
        if bytes.len() + data.len() > limit {
            return Err(too_large());
        }
        bytes.reserve(data.len());
        let needed = bytes.capacity() as u64;
        if needed > held.bytes() {
            let more = usize::try_from(needed - held.bytes()).unwrap_or(usize::MAX);
            match app.try_reserve(more.max(BODY_STEP)) {
                Some(granted) => held.merge(granted),
                // Wait for all of it at once, holding nothing: waiting while holding part of the
                // budget could deadlock with others doing the same.
                None => {
                    drop(held);
                    held = app
                        .reserve(usize::try_from(needed).unwrap_or(usize::MAX))
                        .await;
                }
            }
        }
        bytes.extend_from_slice(&data);
    }
    let body = crate::mlflow::mpu_body::parse(&bytes)
        .map_err(|_| bad_request("Bad Request. The body is not a JSON object."))?;
    drop(bytes);
    Ok((body, held))
}

/// `_get_multipart_upload_file_name`: the basename of `path` (`\` separates too), validated.
fn file_name(body: &MpuBody) -> Result<String, ProxyError> {
    let path = match &body.path {
        Scalar::Absent | Scalar::Null => return Err(missing_value("path")),
        Scalar::Str(s) if s.is_empty() => return Err(missing_value("path")),
        Scalar::Str(s) => s,
        other => return Err(invalid_value("path", &other.json())),
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
fn int_field(value: &Scalar, name: &str) -> Result<Option<i64>, ProxyError> {
    match value {
        Scalar::Absent | Scalar::Null => Ok(None),
        Scalar::Int(n) => Ok(Some(*n)),
        Scalar::Str(s) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().ok()),
        other => Err(invalid_value(name, &other.json())),
    }
}

/// The S3 upload id of the body's `upload_id`, which must have been handed out for `key`.
fn upload_id(app: &App, body: &MpuBody, key: &str) -> Result<String, ProxyError> {
    let sealed = match &body.upload_id {
        Scalar::Str(s) if !s.is_empty() => s,
        Scalar::Absent | Scalar::Null => return Err(missing_value("upload_id")),
        other => return Err(invalid_value("upload_id", &other.json())),
    };
    app.transfers
        .config
        .signer
        .open_upload_id(sealed, key)
        .map_err(|_| {
            ProxyError::mlflow(
                Side::Client,
                StatusCode::NOT_FOUND,
                "RESOURCE_DOES_NOT_EXIST",
                "No such multipart upload for this artifact path",
            )
        })
}

/// A complete's parts as S3 takes them: (number, ETag), checked.
fn part_list(body: &MpuBody) -> Result<Vec<(u32, String)>, ProxyError> {
    let parts = match &body.parts {
        Parts::Absent => return Err(missing_value("parts")),
        Parts::TooMany => return Err(bad_request("More than 10000 parts")),
        Parts::List(parts) if !parts.is_empty() => parts,
        Parts::List(_) => return Err(invalid_value("parts", "[]")),
        Parts::Invalid(other) => return Err(invalid_value("parts", &other.json())),
    };
    let mut list = Vec::with_capacity(parts.len());
    for part in parts {
        let Part::Fields { part_number, etag } = part else {
            return Err(invalid_value("parts", &part.json()));
        };
        let number = int_field(part_number, "part_number")?
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_PARTS).contains(&u64::from(*n)))
            .ok_or_else(|| invalid_value("part_number", &part.json()))?;
        let etag = match etag {
            Scalar::Str(etag) if !etag.is_empty() => etag.clone(),
            _ => return Err(invalid_value("etag", &part.json())),
        };
        list.push((number, etag));
    }
    Ok(list)
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
    body: &MpuBody,
    url_base: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Stock MLflow hands out `num_parts` URLs (none when it is absent); S3 takes 10,000 parts.
    let num_parts = int_field(&body.num_parts, "num_parts")?.unwrap_or(0);
    let num_parts = u32::try_from(num_parts)
        .ok()
        .filter(|n| u64::from(*n) <= MAX_PARTS)
        .ok_or_else(|| invalid_value("num_parts", &num_parts.to_string()))?;
    if key.len() > MAX_KEY {
        return Err(bad_request(format!(
            "The artifact path is too long for the artifact store ({MAX_KEY} bytes at most)"
        )));
    }
    let upload_id = app
        .store
        .create_multipart(key, guess_mime_type(name), false)
        .await
        .map_err(store_error)?;
    if upload_id.len() > MAX_UPLOAD_ID {
        // Longer than the complete body limit allows for: not handed out.
        let _ = app.store.abort_multipart(key, &upload_id).await;
        return Err(ProxyError::store(
            StatusCode::BAD_GATEWAY,
            "The artifact store's upload id is too long",
        ));
    }
    app.transfers
        .uploads_total
        .with_label_values(&["created"])
        .inc();
    tracing::info!(key, num_parts, "multipart upload created");
    let mut response = Response::new(create_answer(
        app.transfers.config.signer.clone(),
        Claims {
            grant: Grant::Part,
            expires: now_secs() + app.transfers.config.part_url_ttl.as_secs(),
            part_number: 0,
            upload_id,
            target: key.to_owned(),
        },
        url_base.to_owned(),
        num_parts,
    ));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Credentials written per frame of the create answer.
const CREDENTIALS_PER_FRAME: u32 = 256;

/// The create answer as `message_to_json` writes it (pretty, `upload_id` then `credentials`,
/// empty `headers` left out), produced a few hundred credentials at a time as the client reads:
/// 10,000 URLs are up to 25 MB of text, never held at once. The upload id handed out is bound to
/// the key (`Signer::seal_upload_id`).
fn create_answer(
    signer: crate::signing::Signer,
    part: Claims,
    url_base: String,
    num_parts: u32,
) -> ProxyBody {
    let sealed = signer.seal_upload_id(&part.upload_id, &part.target);
    let head = format!(
        "{{\n  \"upload_id\": {},\n  \"credentials\": [",
        dumps(&json!(sealed), Dialect::FlaskPretty)
    );
    let tail = if num_parts == 0 { "]\n}" } else { "\n  ]\n}" };
    let batches = (0..num_parts.div_ceil(CREDENTIALS_PER_FRAME)).map(move |batch| {
        let first = batch * CREDENTIALS_PER_FRAME + 1;
        let last = (first + CREDENTIALS_PER_FRAME - 1).min(num_parts);
        let mut text = String::new();
        for part_number in first..=last {
            let token = signer
                .sign(&Claims {
                    part_number,
                    ..part.clone()
                })
                .map_err(|e| crate::wire::body::BodyError(e.to_string().into()))?;
            let url = format!("{url_base}/mlflow-artifacts/{SIGNED_PART_PATH}?token={token}");
            if part_number > 1 {
                text.push(',');
            }
            text.push_str(&format!(
                "\n    {{\n      \"url\": {},\n      \"part_number\": {part_number}\n    }}",
                dumps(&json!(url), Dialect::FlaskPretty)
            ));
        }
        Ok(Bytes::from(text))
    });
    let frames = std::iter::once(Ok(Bytes::from(head)))
        .chain(batches)
        .chain(std::iter::once(Ok(Bytes::from_static(tail.as_bytes()))))
        .map(|frame| frame.map(hyper::body::Frame::data));
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed()
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
    upload_id: &str,
    list: Vec<(u32, String)>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (list, digest) = open_parts(app, key, upload_id, list).await?;
    let etag = app
        .store
        .complete_multipart(key, upload_id, list, None)
        .await
        .map_err(client_or_store)?;
    let content_type = guess_mime_type(key.rsplit('/').next().unwrap_or(key));
    crate::artifacts::upload::record_digest(app, key, content_type, etag, digest).await;
    app.transfers
        .uploads_total
        .with_label_values(&["completed"])
        .inc();
    tracing::info!(key, "multipart upload completed");
    Ok(json_response("{}".to_owned()))
}

/// S3's ETags of the parts the client lists, and the object's CRC combined from their seals
/// (`integrity::parts`) when every part has one. A seal this proxy did not make is refused.
async fn open_parts(
    app: &App,
    key: &str,
    upload_id: &str,
    list: Vec<(u32, String)>,
) -> Result<(Vec<(u32, String)>, Option<crate::integrity::Digest>), ProxyError> {
    let signer = &app.transfers.config.signer;
    let mut s3_parts = Vec::with_capacity(list.len());
    let mut sums = Some(Vec::with_capacity(list.len()));
    for (number, etag) in list {
        match parts::open(signer, key, upload_id, number, &etag) {
            parts::Opened::Sealed { etag, crc, len } => {
                if let Some(sums) = &mut sums {
                    sums.push((number, crc, len));
                }
                s3_parts.push((number, etag));
            }
            parts::Opened::Plain(etag) => {
                sums = None;
                s3_parts.push((number, etag));
            }
            parts::Opened::Refused => {
                return Err(bad_request(format!(
                    "The ETag of part {number} was not issued by this server for this upload"
                )));
            }
        }
    }
    let digest = match sums {
        Some(mut sums) if !sums.is_empty() && app.integrity.config.algorithm.is_some() => {
            sums.sort_by_key(|(number, ..)| *number);
            let distinct = sums.windows(2).all(|w| w[0].0 != w[1].0);
            let sums: Vec<(u64, u64)> = sums.into_iter().map(|(_, crc, len)| (crc, len)).collect();
            match distinct {
                true => tokio::task::spawn_blocking(move || parts::combine(&sums))
                    .await
                    .ok(),
                // S3 refuses the complete; nothing to record.
                false => None,
            }
        }
        _ => None,
    };
    Ok((s3_parts, digest))
}

async fn abort(
    app: &Arc<App>,
    key: &str,
    body: &MpuBody,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upload_id = upload_id(app, body, key)?;
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
    // Tells a client whose body broke off (fewer bytes than declared) or went silent (the idle
    // timeout, server.rs) from a store failure.
    let client_failed = Arc::new(AtomicBool::new(false));
    let client_idle = Arc::new(AtomicBool::new(false));
    let (flag, idle) = (client_failed.clone(), client_idle.clone());
    let body = request
        .into_body()
        .map_err(move |e| {
            flag.store(true, Ordering::Relaxed);
            idle.store(e.is_idle_timeout(), Ordering::Relaxed);
            e
        })
        .boxed();
    // Each part's CRC, whatever the algorithm: only CRCs combine (`integrity::parts`).
    let hasher = app
        .integrity
        .config
        .algorithm
        .map(|_| Hasher::new(Algorithm::Crc64Nvme));
    // Sent with its CRC for the store to verify, where it does (`s3::Native`).
    let trailer = match hasher {
        Some(_) if app.store_checksums().await.parts => Some(Algorithm::Crc64Nvme),
        _ => None,
    };
    let (body, tally) = match trailer {
        Some(algorithm) => integrity::with_trailer(body, len, algorithm),
        None => integrity::tally(body, hasher),
    };
    let stored = app
        .store
        .upload_part_body(
            &claims.target,
            &claims.upload_id,
            claims.part_number,
            len,
            trailer,
            body,
        )
        .await;
    match stored {
        Ok(etag) => {
            let etag = match tally.take().map(Hasher::finish) {
                Some(Digest::Crc64Nvme(crc)) => parts::seal(
                    &app.transfers.config.signer,
                    &claims.target,
                    &claims.upload_id,
                    claims.part_number,
                    &etag,
                    crc,
                    len,
                ),
                _ => etag,
            };
            let mut response = Response::new(empty());
            let headers = response.headers_mut();
            headers.insert(header::ETAG, crate::store::s3::header_value(&etag));
            headers.insert(header::CONTENT_LENGTH, 0.into());
            Ok(response)
        }
        Err(_) if client_idle.load(Ordering::Relaxed) => {
            app.metrics
                .body_idle_timeouts
                .with_label_values(&["upload"])
                .inc();
            Err(ProxyError::body_stalled(
                "The part's body stalled; the part was not stored",
            ))
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

    fn body(path: &str) -> MpuBody {
        MpuBody {
            path: Scalar::Str(path.to_owned()),
            ..MpuBody::default()
        }
    }

    fn claims(key: &str, upload_id: &str) -> Claims {
        Claims {
            grant: Grant::Part,
            expires: 4_000_000_000,
            part_number: 0,
            upload_id: upload_id.to_owned(),
            target: key.to_owned(),
        }
    }

    /// Produced frame by frame, the answer is byte for byte what `message_to_json` writes.
    #[tokio::test]
    async fn the_create_answer_is_mlflows_json() {
        let signer = crate::signing::Signer::with_key(&[7; 32]);
        let base = "http://h:5000/api/2.0";
        for n in [0, 1, 3, 257, 600] {
            let part = claims("1/r/artifacts/ü.bin", "id-1");
            let body = create_answer(signer.clone(), part.clone(), base.into(), n);
            let text = body.collect().await.unwrap().to_bytes();
            let credentials: Vec<_> = (1..=n)
                .map(|part_number| {
                    let token = signer
                        .sign(&Claims {
                            part_number,
                            ..part.clone()
                        })
                        .unwrap();
                    json!({
                        "url": format!("{base}/mlflow-artifacts/{SIGNED_PART_PATH}?token={token}"),
                        "part_number": part_number,
                    })
                })
                .collect();
            let sealed = signer.seal_upload_id("id-1", "1/r/artifacts/ü.bin");
            let expected = json!({ "upload_id": sealed, "credentials": credentials });
            assert_eq!(
                String::from_utf8(text.to_vec()).unwrap(),
                dumps(&expected, Dialect::FlaskPretty),
                "{n} parts"
            );
        }
    }

    /// The real client's largest complete (10,000 parts, the longest key, upload id, base URL
    /// and ETag, the client's `json.dumps` separators) fits the limit, with little to spare.
    #[test]
    fn the_largest_complete_fits_the_limit() {
        let signer = crate::signing::Signer::with_key(&[7; 32]);
        let key = "k".repeat(MAX_KEY);
        let part = claims(&key, &"u".repeat(MAX_UPLOAD_ID));
        let base = format!(
            "http://{}/ajax-api/2.0",
            "h".repeat(MAX_BASE - "http:///ajax-api/2.0".len())
        );
        let parts: Vec<_> = (1..=MAX_PARTS_USIZE as u32)
            .map(|part_number| {
                let token = signer
                    .sign(&Claims {
                        part_number: part_number.max(10_000),
                        ..part.clone()
                    })
                    .unwrap();
                json!({
                    "part_number": 10_000,
                    "etag": "e".repeat(128),
                    "url": format!("{base}/mlflow-artifacts/{SIGNED_PART_PATH}?token={token}"),
                })
            })
            .collect();
        let body = json!({
            "path": "\u{1F600}".repeat(1024),
            "upload_id": signer.seal_upload_id(&part.upload_id, &key),
            "parts": parts,
        });
        let len = dumps(&body, Dialect::Flask).len();
        assert!(len <= COMPLETE_BODY_LIMIT, "{len} > {COMPLETE_BODY_LIMIT}");
        assert!(
            len > COMPLETE_BODY_LIMIT * 9 / 10,
            "{len} is far below {COMPLETE_BODY_LIMIT}"
        );
    }

    #[test]
    fn file_names_like_mlflow() {
        assert_eq!(file_name(&body("/home/me/big.bin")).unwrap(), "big.bin");
        assert_eq!(file_name(&body("C:\\data\\big.bin")).unwrap(), "big.bin");
        assert_eq!(file_name(&body("a%2520b.bin")).unwrap(), "a b.bin");
        for bad in ["", "x/", "..", "."] {
            assert!(file_name(&body(bad)).is_err(), "{bad:?}");
        }
        assert!(file_name(&MpuBody::default()).is_err());
    }
}
