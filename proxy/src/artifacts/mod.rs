//! The artifact routes MLflow's clients and UI use, answered from S3 directly.

mod delete;
mod download;
mod list;
mod multipart;
mod presigned;
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
    // AUTH (issue 10): the one permission check point for these routes. Helper "auth" provides
    // `(Read|Write, path, headers) -> Result<(), ProxyError>`; the lead wires it here:
    // mpu create/complete/abort need Write, presigned needs Read, signed part/object URLs are
    // authorized by their token alone (`needs` says None). Until then no MLflow permission is
    // consulted on this branch, as for every other artifact route.
    let _needs = needs(&route);
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
        Route::Multipart { action, path } => multipart::handle(app, action, &path, request).await,
        Route::Presigned { path } => presigned::presign(app, &path, &request).await,
        // Authorized by the token `mpu/create` or `presigned/` handed out, not by MLflow.
        Route::SignedPart => multipart::upload_part(app, request).await,
        Route::SignedObject { head } => presigned::serve(app, &request, head).await,
        Route::ServerInfo | Route::PassThrough => {
            Err(ProxyError::internal("route is not an artifact route"))
        }
    };
    let mut response = result.unwrap_or_else(ProxyError::into_response);
    app.security.decorate(&facts, &mut response);
    response
}

/// What a route needs from MLflow's permissions before it touches the store (issue 10 decides
/// how that is checked; this only names it). None: no MLflow check (a token, or not ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    Read,
    Write,
}

pub fn needs(route: &Route) -> Option<(Needs, &str)> {
    match route {
        Route::Download { path, .. } | Route::Presigned { path } => Some((Needs::Read, path)),
        Route::List => Some((Needs::Read, "")),
        Route::Upload { path } | Route::Delete { path } | Route::Multipart { path, .. } => {
            Some((Needs::Write, path))
        }
        Route::SignedPart | Route::SignedObject { .. } | Route::ServerInfo | Route::PassThrough => {
            None
        }
    }
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
