//! MLflow's presigned download, through the proxy: `presigned/<path>` answers with a URL on this
//! proxy whose token names the artifact and an expiry; `signed/object?token=` serves it as the
//! download route does (Range, conditional requests, MLflow's headers). The MLflow client fetches
//! large files in parallel ranges this way; the UI uses it when server-info offers it.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use serde_json::json;

use super::multipart::{api_prefix, public_base, verify_token};
use crate::artifacts::download;
use crate::artifacts::scope::Scope;
use crate::artifacts::state::App;
use crate::mlflow::json::{Dialect, dumps};
use crate::mlflow::path::validate_path_is_safe;
use crate::router::SIGNED_OBJECT_PATH;
use crate::signing::{Claims, Grant, now_secs};
use crate::store::answer::store_error;
use crate::wire::body::{ProxyBody, full};
use crate::wire::error::ProxyError;

/// Stock MLflow's words for a store without presigned downloads.
pub const DOWNLOADS_OFF: &str =
    "Multipart download is not supported for the current artifact repository";

pub async fn presign(
    app: &Arc<App>,
    scope: &Scope,
    raw_path: &str,
    request: &Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Stock's order: the path, its workspace, then whether the store can presign.
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path())?;
    let path = scope.repo_path(&path)?;
    if !app.transfers.config.downloads {
        return Err(ProxyError::not_implemented(DOWNLOADS_OFF));
    }
    let (url, size) = signed_object_url(app, path, request).await?;
    // `json.dumps(PresignedDownloadUrlResponse.to_dict())`: Flask spacing, headers always there.
    let answer = json!({ "url": url, "headers": {}, "file_size": size });
    Ok(json_response(dumps(&answer, Dialect::Flask)))
}

/// A URL on this proxy for the object at `path` (the store path: destination-relative, through
/// `validate_path_is_safe` and its workspace), good until it expires, and the object's size.
pub(in crate::artifacts) async fn signed_object_url(
    app: &Arc<App>,
    path: String,
    request: &Request<ProxyBody>,
) -> Result<(String, u64), ProxyError> {
    let config = &app.transfers.config;
    let base = public_base(app, request)?;
    // Stock MLflow asks S3 for the object's size first (HeadObject), and so do we: a missing
    // object is a 404 here, which the UI and client take as "fall back" or "not found".
    let meta = app
        .store
        .head_object(&app.store.key(&path))
        .await
        .map_err(store_error)?
        // Stock's words: boto's message for a HeadObject 404.
        .ok_or_else(|| ProxyError::not_found("Not Found"))?;
    let token = config
        .signer
        .sign(&Claims {
            grant: Grant::Object,
            expires: now_secs() + config.object_url_ttl.as_secs(),
            part_number: 0,
            upload_id: String::new(),
            target: path,
        })
        .map_err(|_| ProxyError::invalid_path())?;
    let prefix = api_prefix(app, request.uri().path());
    let url = format!("{base}{prefix}/mlflow-artifacts/{SIGNED_OBJECT_PATH}?token={token}");
    Ok((url, meta.size))
}

pub(in crate::artifacts) fn json_response(text: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET|HEAD signed/object?token=`: the object the token names, as the download route serves it.
pub async fn serve(
    app: &Arc<App>,
    request: &Request<ProxyBody>,
    head: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !app.transfers.config.downloads {
        return Err(ProxyError::not_implemented(DOWNLOADS_OFF));
    }
    let claims = verify_token(app, request.uri().query(), Grant::Object)?;
    download::download_validated(app, &claims.target, request.headers(), head).await
}
