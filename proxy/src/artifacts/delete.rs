//! `DELETE artifacts/<path>`: everything at or under the path, recursively; a missing path is
//! not an error (as stock MLflow).

use std::sync::Arc;

use http::{HeaderValue, Response, header};

use super::store_error;
use crate::body::{ProxyBody, full};
use crate::error::ProxyError;
use crate::mlflow::path::validate_path_is_safe;
use crate::s3::posix_join;
use crate::state::App;

pub async fn delete(app: &Arc<App>, raw_path: &str) -> Result<Response<ProxyBody>, ProxyError> {
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path())?;
    // A path that decodes to nothing (e.g. "file:") would make stock MLflow delete every
    // artifact of every experiment. Refuse it.
    if path.is_empty() {
        return Err(ProxyError::invalid_path());
    }
    let target = posix_join(app.store.root(), &path);
    let target = target.trim_end_matches('/');
    let listing = app.store.list(target, None).await.map_err(store_error)?;
    let keys: Vec<String> = listing
        .objects
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| is_within(key, target))
        .collect();
    if !keys.is_empty() {
        app.store.delete_keys(keys).await.map_err(store_error)?;
    }
    let mut response = Response::new(full("{}"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `_is_object_key_within_path`: the key itself or below it, not a sibling such as `foobar`.
fn is_within(key: &str, path: &str) -> bool {
    path.is_empty()
        || key == path
        || key
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::is_within;

    #[test]
    fn siblings_are_not_deleted() {
        assert!(is_within("a/foo", "a/foo"));
        assert!(is_within("a/foo/x", "a/foo"));
        assert!(!is_within("a/foobar", "a/foo"));
    }
}
