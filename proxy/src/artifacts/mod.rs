//! The artifact routes MLflow's clients and UI use, answered from S3 directly.

mod conditional;
mod delete;
mod download;
mod list;
mod upload;

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::router::Route;
use crate::s3::StoreError;
use crate::state::App;

pub async fn handle(
    app: &Arc<App>,
    route: Route,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    // MLflow's security middleware, before anything is read or stored.
    if let Some(rejection) = app.security.reject(&request) {
        return rejection;
    }
    let facts = app.security.facts(&request);
    let result = match route {
        Route::Download { path, head } => {
            download::download(app, &path, request.headers(), head).await
        }
        Route::Upload { path } => upload::upload(app, &path, request).await,
        Route::Delete { path } => delete::delete(app, &path).await,
        Route::List => {
            // Flask reads query arguments only for GET, so HEAD lists the root.
            let query = (request.method() == http::Method::GET)
                .then(|| request.uri().query())
                .flatten();
            list::list(app, query).await
        }
        // Stock MLflow's own wording: the client falls back to a plain PUT only on this message.
        Route::Multipart => Err(ProxyError::not_implemented(
            "Multipart upload is not supported for the current artifact repository",
        )),
        Route::Presigned => Err(ProxyError::not_implemented(
            "Multipart download is not supported for the current artifact repository",
        )),
        Route::ServerInfo | Route::PassThrough => {
            Err(ProxyError::internal("route is not an artifact route"))
        }
    };
    let mut response = result.unwrap_or_else(ProxyError::into_response);
    app.security.decorate(&facts, &mut response);
    response
}

/// The store failed. The answer names what went wrong in general terms only: the endpoint,
/// bucket and key prefix stay in the log.
pub fn store_error(error: StoreError) -> ProxyError {
    tracing::warn!("S3: {error}");
    match &error {
        StoreError::Unreachable(_) => ProxyError::store(
            StatusCode::SERVICE_UNAVAILABLE,
            "The artifact store cannot be reached",
        ),
        StoreError::TimedOut => ProxyError::timed_out(
            crate::error::Side::Store,
            "The artifact store did not answer in time",
        ),
        StoreError::Status { status, message } => match refused_request(*status, message) {
            // The request itself is at fault (a key S3 cannot hold...): retrying cannot help.
            Some(code) => ProxyError::mlflow(
                crate::error::Side::Client,
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER_VALUE",
                format!("The artifact store refused the request: {code}"),
            ),
            None => ProxyError::store(
                StatusCode::BAD_GATEWAY,
                format!("The artifact store answered {status}"),
            ),
        },
        StoreError::Other(_) => {
            ProxyError::store(StatusCode::BAD_GATEWAY, "The artifact store request failed")
        }
    }
}

/// S3 error codes that blame the request (its key or an argument), not the store.
const CLIENT_CAUSED: &[&str] = &[
    "KeyTooLongError",
    "InvalidArgument",
    "InvalidRequest",
    "InvalidObjectName",
    "InvalidURI",
    "MetadataTooLarge",
];

/// The S3 error code, when it is one the client caused.
fn refused_request(status: u16, message: &str) -> Option<&'static str> {
    if !(400..500).contains(&status) || matches!(status, 401 | 403 | 404) {
        return None;
    }
    let code = message.split(':').next().unwrap_or_default().trim();
    CLIENT_CAUSED.iter().find(|c| **c == code).copied()
}
