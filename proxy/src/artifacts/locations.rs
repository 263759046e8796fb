//! Where MLflow keeps the artifacts of a run, a logged model or a registered model version, as
//! MLflow itself tells the caller, and which key of the proxy's store such a location maps to.
//!
//! The location is read from MLflow's REST API as the caller (their credential headers, their
//! Host), so MLflow's auth app decides whether they may know it: the run's `artifact_uri`
//! (`runs/get`), the logged model's `artifact_location` (`logged-models/<id>`), the model
//! version's download URI (`model-versions/get-download-uri`, what the registry's download
//! handler reads). Answers are remembered for no longer than the auth cache's, per credential.
//! Mapping a location to a key (`store_path`) follows MLflow's handlers, rule for rule.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use crate::auth::{Auth, Credentials, DecisionCache, Key};
use crate::mlflow::path::urlparse;
use crate::store::s3::posix_join;

/// MLflow's answers are read up to this size: a run's JSON carries its params, tags and latest
/// metrics, which for most runs is a few KiB. A larger answer is not read (MLflow then answers
/// the request itself).
const LOOKUP_LIMIT: usize = 1024 * 1024;
/// server-info is a small JSON document.
const SERVER_INFO_LIMIT: usize = 64 * 1024;
/// How long what server-info says of MLflow's version is reused.
const FEATURES_TTL: Duration = Duration::from_secs(10);
/// The workspace a request names (MLflow 3.10+): part of what a lookup depends on.
const WORKSPACE_HEADER: &str = "x-mlflow-workspace";

/// Query values and path segments as MLflow's routes decode them (once).
const COMPONENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a download names, whose location MLflow knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Run { run_id: String },
    LoggedModel { model_id: String },
    ModelVersion { name: String, version: String },
}

impl Lookup {
    /// The REST call that answers it (below MLflow's static prefix), and where the location is
    /// in the answer.
    fn request(&self) -> (String, &'static str) {
        let encode = |v: &str| utf8_percent_encode(v, COMPONENT).to_string();
        match self {
            Lookup::Run { run_id } => (
                format!("/api/2.0/mlflow/runs/get?run_id={}", encode(run_id)),
                "/run/info/artifact_uri",
            ),
            Lookup::LoggedModel { model_id } => (
                format!("/api/2.0/mlflow/logged-models/{}", encode(model_id)),
                "/model/info/artifact_uri",
            ),
            Lookup::ModelVersion { name, version } => (
                format!(
                    "/api/2.0/mlflow/model-versions/get-download-uri?name={}&version={}",
                    encode(name),
                    encode(version)
                ),
                "/artifact_uri",
            ),
        }
    }
}

pub struct Locations {
    cache: DecisionCache<String>,
    /// Whether MLflow answers `presigned=true` with a URL (3.18+), and since when that is known.
    presigned: Mutex<Option<(Instant, bool)>>,
}

impl Locations {
    /// `ttl`, `capacity`: the auth cache's (`Auth::cache_policy`): a location is never known to
    /// a caller for longer than MLflow's permission to know it.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Locations {
            cache: DecisionCache::new(ttl, capacity),
            presigned: Mutex::new(None),
        }
    }

    /// The location MLflow gives this caller for `lookup`; None when MLflow refuses, does not
    /// know it, cannot be asked, or answers something else (the caller then gets MLflow's own
    /// answer to the real request). A model version whose source is `runs:/<run>/<path>` is
    /// resolved through the run, as MLflow's `RunsArtifactRepository` does.
    pub async fn find(&self, auth: &Auth, lookup: &Lookup, headers: &HeaderMap) -> Option<String> {
        let location = self.ask(auth, lookup, headers).await?;
        if !matches!(lookup, Lookup::ModelVersion { .. }) {
            return Some(location);
        }
        let Some((run_id, within)) = runs_uri(&location) else {
            return Some(location);
        };
        let root = self.ask(auth, &Lookup::Run { run_id }, headers).await?;
        append_to_uri_path(&root, &within)
    }

    async fn ask(&self, auth: &Auth, lookup: &Lookup, headers: &HeaderMap) -> Option<String> {
        let (path_and_query, pointer) = lookup.request();
        let mut caller = auth.caller(headers);
        let workspace = headers.get(WORKSPACE_HEADER);
        if let Some(workspace) = workspace {
            caller.forward.insert(WORKSPACE_HEADER, workspace.clone());
        }
        let key = cache_key(&caller, &path_and_query, workspace);
        let now = Instant::now();
        if let Some(location) = self.cache.get(&key, now) {
            return Some(location);
        }
        let answer = auth.get_as(&path_and_query, &caller, LOOKUP_LIMIT).await;
        let location = json_answer(answer, &format!("the location of {lookup:?}"))?
            .pointer(pointer)?
            .as_str()?
            .to_owned();
        self.cache.insert(key, location.clone(), now);
        Some(location)
    }

    /// Whether MLflow answers `presigned=true` on the model downloads with a URL instead of the
    /// bytes (MLflow 3.18 does, and says so in server-info; 3.17 ignores the argument). None
    /// while MLflow cannot be asked.
    pub async fn presigned_downloads(&self, auth: &Auth) -> Option<bool> {
        if let Ok(known) = self.presigned.lock()
            && let Some((at, value)) = *known
            && at.elapsed() < FEATURES_TTL
        {
            return Some(value);
        }
        // server-info is public: asked without anyone's credentials.
        let nobody = Credentials {
            forward: HeaderMap::new(),
            digest: None,
        };
        let answer = auth
            .get_as("/api/3.0/mlflow/server-info", &nobody, SERVER_INFO_LIMIT)
            .await;
        let value = json_answer(answer, "MLflow's server-info")?
            .get("model_artifact_presigned_downloads_supported")
            .is_some();
        if let Ok(mut known) = self.presigned.lock() {
            *known = Some((Instant::now(), value));
        }
        Some(value)
    }
}

/// MLflow's JSON answer when it answered 200 with JSON; None (and a log line) otherwise.
fn json_answer(answer: Result<(StatusCode, bytes::Bytes), String>, what: &str) -> Option<Value> {
    match answer {
        Ok((StatusCode::OK, body)) => serde_json::from_slice(&body).ok(),
        // A refusal or an unknown thing: MLflow answers the real request itself.
        Ok((status, _)) => {
            tracing::debug!("{what}: MLflow answered {status}");
            None
        }
        Err(e) => {
            tracing::warn!("{what}: {e}");
            None
        }
    }
}

/// One caller's lookup: their credentials' digest (none: a slot of its own) and what was asked.
fn cache_key(caller: &Credentials, path_and_query: &str, workspace: Option<&HeaderValue>) -> Key {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(b"location\0");
    digest.update(path_and_query.as_bytes());
    digest.update(b"\0");
    digest.update(workspace.map_or(&b""[..], HeaderValue::as_bytes));
    let mut resource = [0u8; 32];
    resource.copy_from_slice(digest.finish().as_ref());
    Key {
        credentials: caller.digest.unwrap_or([0; 32]),
        resource,
    }
}

/// The destination-relative path in the proxy's store of `relative` below `location`, as MLflow's
/// download handlers compute it (`_is_servable_proxied_run_artifact_root`, then
/// `_get_proxied_run_artifact_destination_path`): a proxied root (`mlflow-artifacts:`, or an
/// `http(s)` URL of the artifact API) is a path below `--artifacts-destination`, which is the
/// proxy's store. None for any other location (`s3://…`, another store, a local path): MLflow
/// reads those itself. `relative` is what the handler joins (already checked by
/// `validate_path_is_safe`).
///
/// This is the one place a location becomes a key.
pub fn store_path(location: &str, relative: &str) -> Option<String> {
    let parsed = urlparse(location).ok()?;
    let root = match parsed.scheme.as_str() {
        "mlflow-artifacts" => parsed.path.trim_start_matches('/').to_owned(),
        "http" | "https" => {
            // MLflow splits on the anchor of its artifact route; a URL without it fails there.
            const ANCHOR: &str = "/api/2.0/mlflow-artifacts/artifacts/";
            let (_, below) = parsed.path.split_once(ANCHOR)?;
            below.trim_start_matches('/').to_owned()
        }
        _ => return None,
    };
    Some(posix_join(&root, relative))
}

/// `runs:/<run_id>/<path>` (`RunsArtifactRepository.parse_runs_uri`): the run and the path
/// within its artifacts ("" for the root). None for any other URI, and for forms MLflow refuses
/// or this proxy does not resolve (a host part, a query).
fn runs_uri(uri: &str) -> Option<(String, String)> {
    let parsed = urlparse(uri).ok()?;
    if parsed.scheme != "runs"
        || !parsed.netloc.is_empty()
        || !parsed.query.is_empty()
        || !parsed.fragment.is_empty()
    {
        return None;
    }
    let path = parsed.path.strip_prefix('/')?;
    let (run_id, within) = path.split_once('/').unwrap_or((path, ""));
    (!run_id.is_empty()).then(|| (run_id.to_owned(), within.to_owned()))
}

/// `append_to_uri_path(uri, path)` for a root without query, params or fragment (what MLflow
/// makes); None for any other.
fn append_to_uri_path(uri: &str, path: &str) -> Option<String> {
    let parsed = urlparse(uri).ok()?;
    if !parsed.query.is_empty() || !parsed.params.is_empty() || !parsed.fragment.is_empty() {
        return None;
    }
    if path.is_empty() {
        return Some(uri.to_owned());
    }
    let path = path.trim_start_matches('/');
    Some(if uri.ends_with('/') {
        format!("{uri}{path}")
    } else {
        format!("{uri}/{path}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_become_keys_as_mlflow_makes_them() {
        let run = "mlflow-artifacts:/1/0123/artifacts";
        assert_eq!(
            store_path(run, "d/f.txt").as_deref(),
            Some("1/0123/artifacts/d/f.txt")
        );
        // An empty path names the root itself (MLflow: a directory).
        assert_eq!(store_path(run, "").as_deref(), Some("1/0123/artifacts/"));
        assert_eq!(
            store_path("mlflow-artifacts://host:5000/1/models/m-1/artifacts", "a b").as_deref(),
            Some("1/models/m-1/artifacts/a b")
        );
        assert_eq!(
            store_path(
                "https://mlflow.example/api/2.0/mlflow-artifacts/artifacts/7/r/artifacts",
                "x"
            )
            .as_deref(),
            Some("7/r/artifacts/x")
        );
        // Not served by the proxy: MLflow reads these itself.
        for other in [
            "s3://default/1/r/artifacts",
            "s3://another-bucket/x",
            "/var/mlruns/1/r/artifacts",
            "file:///var/mlruns/1",
            "https://elsewhere.example/artifacts/1",
            "runs:/0123/model",
            "models:/m-1",
        ] {
            assert_eq!(store_path(other, "f"), None, "{other}");
        }
    }

    #[test]
    fn runs_sources() {
        let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(runs_uri("runs:/0123/model"), pair("0123", "model"));
        assert_eq!(runs_uri("runs:/0123/a/b"), pair("0123", "a/b"));
        assert_eq!(runs_uri("runs:/0123"), pair("0123", ""));
        assert_eq!(runs_uri("runs://host/0123/m"), None);
        assert_eq!(runs_uri("runs:/"), None);
        assert_eq!(runs_uri("mlflow-artifacts:/1/r"), None);
        assert_eq!(
            append_to_uri_path("mlflow-artifacts:/1/r/artifacts", "model").as_deref(),
            Some("mlflow-artifacts:/1/r/artifacts/model")
        );
        assert_eq!(
            append_to_uri_path("mlflow-artifacts:/1/r/artifacts", "").as_deref(),
            Some("mlflow-artifacts:/1/r/artifacts")
        );
        assert_eq!(append_to_uri_path("s3://b/x?v=1", "m"), None);
    }

    #[test]
    fn one_callers_lookup_is_never_anothers() {
        let alice = Credentials {
            forward: HeaderMap::new(),
            digest: Some([1; 32]),
        };
        let bob = Credentials {
            forward: HeaderMap::new(),
            digest: Some([2; 32]),
        };
        let q = "/api/2.0/mlflow/runs/get?run_id=r";
        assert_ne!(cache_key(&alice, q, None), cache_key(&bob, q, None));
        assert_ne!(
            cache_key(&alice, q, None),
            cache_key(&alice, "/api/2.0/mlflow/runs/get?run_id=s", None)
        );
        let team = HeaderValue::from_static("team");
        assert_ne!(
            cache_key(&alice, q, None),
            cache_key(&alice, q, Some(&team))
        );
        assert_eq!(cache_key(&alice, q, None), cache_key(&alice, q, None));
    }
}
