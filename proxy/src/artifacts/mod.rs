//! The artifact routes MLflow's clients and UI use, answered from S3 directly: one checkpoint
//! (`handle`: security → auth → handler → decorate), then one handler per route.

mod delete;
pub mod download;
mod list;
pub mod locations;
mod scope;
pub mod security;
pub mod signed;
pub mod state;
mod ui_routes;
pub mod upload;

use std::sync::Arc;

use http::{Request, Response, StatusCode};

use crate::artifacts::state::App;
use crate::artifacts::state::public_url::ClientAddr;
use crate::auth::Operation;
use crate::router::Route;
use crate::upstream::workspaces::{self, Resolution, Workspace};
use crate::wire::body::ProxyBody;
use crate::wire::error::ProxyError;
use scope::Scope;
use signed::{multipart, presigned};

pub async fn handle(
    app: &Arc<App>,
    route: Route,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    // The UI's downloads may go to MLflow as they came: they apply MLflow's rules themselves.
    if let Route::UiDownload { source, head } = route {
        return ui_routes::handle(app, source, head, request).await;
    }
    // MLflow's security middleware, before anything is read or stored.
    if let Some(rejection) = app.security.reject(&request) {
        return rejection;
    }
    let facts = app.security.facts(&request);
    let refuse = |error: ProxyError| {
        let mut refusal = error.into_response();
        app.security.decorate(&facts, &mut refusal);
        refusal
    };
    // Which MLflow this is answered as, and in which workspace; the URLs the proxy signed
    // itself carry what they need in their tokens.
    let scope = if matches!(route, Route::SignedPart | Route::SignedObject { .. }) {
        None
    } else {
        match request_scope(app, &request).await {
            Ok(Some(scope)) => Some(scope),
            Ok(None) => return pass_through(app, request).await,
            Err(error) => return refuse(error),
        }
    };
    // MLflow 3.18's presigned-only mode: the routes that move bytes themselves refuse, and MLflow
    // says so itself (after its own auth checks, before reading a byte or touching the store).
    if scope
        .as_ref()
        .is_some_and(|s| s.capabilities.presigned_only)
        && matches!(route, Route::Download { .. } | Route::Upload { .. })
    {
        return pass_through(app, request).await;
    }
    // MLflow's authentication and permissions, before the body is read or S3 is asked.
    let mut permit = crate::auth::Permit::default();
    if let Some((operation, path)) = auth_target(&route, &request) {
        let skills_by_name = scope
            .as_ref()
            .is_some_and(|s| s.capabilities.skills_immutable());
        match authorize(app, operation, &path, &request, skills_by_name).await {
            Ok(granted) => permit = granted,
            Err(refusal) => {
                let mut refusal = refusal.into_response();
                app.security.decorate(&facts, &mut refusal);
                return refusal;
            }
        }
    }
    let result = match (route, scope) {
        (Route::Download { path, head }, Some(scope)) => {
            download::download(app, &scope, &path, request.headers(), head).await
        }
        (Route::Upload { path }, Some(scope)) => upload::upload(app, &scope, &path, request).await,
        (Route::Delete { path }, Some(scope)) => delete::delete(app, &scope, &path).await,
        (Route::List, Some(scope)) => {
            // Flask reads query arguments only for GET, so HEAD lists the root.
            let query = (request.method() == http::Method::GET)
                .then(|| request.uri().query())
                .flatten();
            list::list(app, &scope, query, permit.hide_run_dirs).await
        }
        (Route::Multipart { action, path }, Some(scope)) => {
            multipart::handle(app, &scope, action, &path, request).await
        }
        (Route::Presigned { path }, Some(scope)) => {
            presigned::presign(app, &scope, &path, &request).await
        }
        // Authorized by the token `mpu/create` or `presigned/` handed out, not by MLflow.
        (Route::SignedPart, _) => multipart::upload_part(app, request).await,
        (Route::SignedObject { head }, _) => presigned::serve(app, &request, head).await,
        _ => Err(ProxyError::internal("route is not an artifact route")),
    };
    let mut response = result.unwrap_or_else(ProxyError::into_response);
    app.security.decorate(&facts, &mut response);
    response
}

/// MLflow's decision on `path`, and on the path a store that resolves "." segments reads for it
/// (`./3/x` → `3/x`): MLflow judges only the first, where `./3/…` names no experiment. Both must
/// allow; the S3 key stays the path as MLflow names it (docs/security.md).
async fn authorize<B>(
    app: &App,
    operation: Operation,
    path: &str,
    request: &Request<B>,
    skills_by_name: bool,
) -> Result<crate::auth::Permit, crate::auth::Refusal> {
    let mut permit = app
        .auth
        .authorize(operation, path, request, skills_by_name)
        .await?;
    if let Some(resolved) = crate::mlflow::path::without_dot_segments(path) {
        let also = app
            .auth
            .authorize(operation, &resolved, request, skills_by_name)
            .await?;
        permit.hide_run_dirs |= also.hide_run_dirs;
    }
    Ok(permit)
}

/// The MLflow this request is answered as; None: MLflow must answer it itself (its workspace
/// rules refuse it before any artifact is touched, in words only it has).
async fn request_scope<B>(app: &App, request: &Request<B>) -> Result<Option<Scope>, ProxyError> {
    let capabilities = app.capabilities.current().await?;
    let workspace = match workspaces::resolve(request.headers(), capabilities.workspaces) {
        Resolution::PassThrough => return Ok(None),
        Resolution::Serve(workspace) => workspace,
    };
    if let (Workspace::Named(name), Some(header)) =
        (&workspace, request.headers().get(workspaces::HEADER))
    {
        match app.capabilities.workspace_exists(name, header).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                tracing::warn!("cannot ask MLflow about workspace {name:?}: {e}");
                return Err(ProxyError::mlflow(
                    crate::wire::error::Side::Upstream,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "TEMPORARILY_UNAVAILABLE",
                    "The MLflow server could not be asked whether the workspace exists",
                ));
            }
        }
    }
    Ok(Some(Scope {
        capabilities,
        workspace,
    }))
}

/// Hand the request to MLflow unchanged, as for any route that is not ours.
async fn pass_through(app: &App, request: Request<ProxyBody>) -> Response<ProxyBody> {
    let Some(ClientAddr(client)) = request.extensions().get::<ClientAddr>().copied() else {
        return ProxyError::internal("no client address").into_response();
    };
    app.upstream
        .forward(request, client)
        .await
        .unwrap_or_else(ProxyError::into_response)
}

/// What MLflow's auth app judges for a route: the operation, and the artifact path as the
/// route gives it (decoded once; for a listing, its `path` argument).
fn auth_target<B>(route: &Route, request: &Request<B>) -> Option<(Operation, String)> {
    let target = match route {
        Route::Download { path, head: false } => (Operation::Download, path.clone()),
        Route::Download { path, head: true } => (Operation::Head, path.clone()),
        Route::Upload { path } => (Operation::Upload, path.clone()),
        Route::Delete { path } => (Operation::Delete, path.clone()),
        Route::List if request.method() == http::Method::HEAD => (Operation::Head, String::new()),
        Route::List => {
            // Flask's `request.args.get("path")`: the first one.
            let path = request
                .uri()
                .query()
                .and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(name, _)| name == "path")
                        .map(|(_, value)| value.into_owned())
                })
                .unwrap_or_default();
            (Operation::List, path)
        }
        Route::Multipart { path, .. } => (Operation::Multipart, path.clone()),
        Route::Presigned { path } => (Operation::Presigned, path.clone()),
        // Authorized by the token `mpu/create` or `presigned/` handed out, not by MLflow.
        Route::SignedPart | Route::SignedObject { .. } => return None,
        Route::ServerInfo | Route::PassThrough | Route::UiDownload { .. } => return None,
    };
    Some(target)
}
