//! `DELETE artifacts/<path>`: everything at or under the path, recursively; a missing path is
//! not an error (as stock MLflow). Deleted a page of keys at a time (`purge`), so memory stays
//! bounded for any number of keys. The answer says what was freed, in two headers `mlflow gc`'s
//! wrapper reads (mlflow-image/gc.py); the body is MLflow's `{}`.

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use super::scope::Scope;
use crate::artifacts::state::App;
use crate::mlflow::path::validate_path_is_safe;
use crate::store::answer::store_error;
use crate::store::s3::{header_value, posix_join};
use crate::wire::body::{ProxyBody, full};
use crate::wire::error::ProxyError;

/// How many objects and bytes the DELETE removed.
pub const DELETED_OBJECTS: &str = "x-mlflow-proxy-deleted-objects";
pub const DELETED_BYTES: &str = "x-mlflow-proxy-deleted-bytes";

pub async fn delete(
    app: &Arc<App>,
    scope: &Scope,
    raw_path: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path())?;
    // A path that decodes to nothing (e.g. "file:") would make stock MLflow delete every
    // artifact of every experiment (or of the whole workspace). Refuse it.
    if path.is_empty() {
        return Err(ProxyError::invalid_path());
    }
    scope.skill_write(&path)?;
    let path = scope.repo_path(&path)?;
    let target = posix_join(app.store.root(), &path);
    let freed = crate::store::purge::delete_tree(&app.store, &target)
        .await
        .map_err(store_error)?;
    if freed.objects > 0 {
        tracing::info!(
            path,
            objects = freed.objects,
            bytes = freed.bytes,
            "artifacts deleted"
        );
    }
    let mut response = Response::new(full("{}"));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(DELETED_OBJECTS, header_value(&freed.objects.to_string()));
    headers.insert(DELETED_BYTES, header_value(&freed.bytes.to_string()));
    Ok(response)
}
