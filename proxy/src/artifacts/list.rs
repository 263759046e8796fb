//! `GET artifacts?path=<dir>`: the entries directly under a directory, as MLflow lists them:
//! basenames, sorted, `file_size` only for non-empty files, `{}` when there is nothing.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use serde_json::{Value, json};

use super::scope::Scope;
use crate::artifacts::state::App;
use crate::mlflow::content::basename;
use crate::mlflow::json::{Dialect, dumps};
use crate::mlflow::path::validate_path_is_safe;
use crate::store::answer::store_error;
use crate::store::s3::posix_join;
use crate::wire::body::{ProxyBody, full};
use crate::wire::error::ProxyError;

struct Entry {
    name: String,
    is_dir: bool,
    size: u64,
}

/// `hide_run_dirs`: leave out entries named like a run id (32 lowercase hex), as MLflow's auth
/// app does for a caller who may not read the runs of the listed experiment.
pub async fn list(
    app: &Arc<App>,
    scope: &Scope,
    query: Option<&str>,
    hide_run_dirs: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let requested = query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(name, _)| name == "path")
            .map(|(_, value)| value.into_owned())
    });
    let path = match requested {
        Some(p) => validate_path_is_safe(&p).map_err(|_| ProxyError::invalid_path())?,
        None => String::new(),
    };
    let path = scope.repo_path(&path)?;
    let root = app.store.root();
    let dir = if path.is_empty() {
        root.to_owned()
    } else {
        posix_join(root, &path)
    };
    let dir = dir.trim_end_matches('/');
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };

    // Held in memory: the answer is one JSON document that must be sorted. Its size is that of
    // the directory's listing, never of any artifact.
    let listing = app
        .store
        .list(&prefix, Some("/"))
        .await
        .map_err(store_error)?;
    let mut entries: Vec<Entry> = listing
        .prefixes
        .iter()
        .map(|p| Entry {
            name: basename(p).to_owned(),
            is_dir: true,
            size: 0,
        })
        .chain(
            listing
                .objects
                .iter()
                // A zero-byte key ending in "/" is a folder marker, not a file.
                .filter(|(key, size)| !(*size == 0 && key.ends_with('/')))
                .map(|(key, size)| Entry {
                    name: basename(key).to_owned(),
                    is_dir: false,
                    size: *size,
                }),
        )
        .collect();
    if hide_run_dirs {
        entries.retain(|entry| !is_run_id(&entry.name));
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));

    let body = if entries.is_empty() {
        json!({})
    } else {
        let files: Vec<Value> = entries
            .iter()
            .map(|entry| {
                let mut file = json!({ "path": entry.name, "is_dir": entry.is_dir });
                if entry.size > 0 {
                    file["file_size"] = json!(entry.size);
                }
                file
            })
            .collect();
        json!({ "files": files })
    };
    let mut response = Response::new(full(Bytes::from(dumps(&body, Dialect::FlaskPretty))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `[0-9a-f]{32}`, matched in full.
fn is_run_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
