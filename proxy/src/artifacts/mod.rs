//! The artifact routes MLflow's clients and UI use, answered from S3 directly.

mod delete;
mod download;
mod list;
pub mod ranged;
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

/// The store failed: unreachable → 503, answered with an error → 502.
pub fn store_error(error: StoreError) -> ProxyError {
    tracing::warn!("S3: {error}");
    let status = match error {
        StoreError::Unreachable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    ProxyError::store(status, format!("Artifact store error: {error}"))
}
