//! MLflow's workspaces (3.10+, `mlflow server --enable-workspaces`) on the artifact routes.
//!
//! With workspaces on, MLflow keeps a workspace's proxied artifacts under
//! `workspaces/<workspace>/` of the destination (`_get_workspace_scoped_repo_path_if_enabled`):
//! a request runs in the workspace its `X-MLFLOW-WORKSPACE` header names (trimmed; without one,
//! the default workspace, whose artifacts stay at the root as before workspaces), and a path that
//! names `workspaces/<other>/` is refused. The proxy serves these requests itself with the path
//! MLflow would use (`scoped_path`); MLflow decides whether the workspace exists (`Checker`:
//! asked, and the answer kept briefly) and, with its auth app, who may do what (the probes carry
//! the header). A request MLflow would refuse before its artifact handler (workspaces off, or a
//! workspace it does not know) is passed to MLflow, which answers it exactly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::upstream::ask::Asker;
use crate::wire::error::{ProxyError, Side};

/// The request header that names the workspace.
pub const HEADER: &str = "x-mlflow-workspace";
/// MLflow's default workspace: its artifacts live at the destination's root.
pub const DEFAULT: &str = "default";
/// The reserved first segment of workspace-scoped paths.
const PREFIX: &str = "workspaces";

/// The workspace a request runs in, as MLflow resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workspace {
    /// MLflow runs without workspaces: paths are used as they are.
    Off,
    /// The request's workspace.
    Named(String),
}

/// What to do with a request, given MLflow's workspace mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Serve it, in this workspace.
    Serve(Workspace),
    /// MLflow answers it (with its own error), before any artifact is touched: a header while
    /// workspaces are off, or a header value that is not plain text.
    PassThrough,
}

/// The workspace of a request, before MLflow is asked whether it exists (`Checker`).
pub fn resolve(headers: &HeaderMap, workspaces_on: bool) -> Resolution {
    let named = match headers.get(HEADER) {
        None => None,
        Some(value) => match value.to_str() {
            // `_normalize_workspace`: trimmed, and empty means none.
            Ok(text) => Some(text.trim()).filter(|t| !t.is_empty()),
            Err(_) => return Resolution::PassThrough,
        },
    };
    match (named, workspaces_on) {
        (None, false) => Resolution::Serve(Workspace::Off),
        // MLflow: "Workspace APIs are not available: workspaces are not enabled on this server".
        (Some(_), false) => Resolution::PassThrough,
        (None, true) => Resolution::Serve(Workspace::Named(DEFAULT.to_owned())),
        (Some(name), true) => Resolution::Serve(Workspace::Named(name.to_owned())),
    }
}

/// `_get_workspace_scoped_repo_path_if_enabled`: the destination-relative path MLflow serves for
/// `path` (already through `validate_path_is_safe`) in `workspace`. `any_case`: MLflow 3.18+,
/// which takes `WORKSPACES/` (any letter case) for the reserved prefix.
pub fn scoped_path(
    path: &str,
    workspace: &Workspace,
    any_case: bool,
) -> Result<String, ProxyError> {
    let Workspace::Named(workspace) = workspace else {
        return Ok(path.to_owned());
    };
    let normalized = path.trim_start_matches('/');
    if normalized.is_empty() {
        // The default workspace keeps the root as it was before workspaces.
        return Ok(if workspace == DEFAULT {
            path.to_owned()
        } else {
            format!("{PREFIX}/{workspace}")
        });
    }
    // Python's str.lower(), which also folds e.g. the Kelvin sign into `k`.
    let is_prefix = |segment: &str| {
        if any_case {
            segment.to_lowercase() == PREFIX
        } else {
            segment == PREFIX
        }
    };
    let mut segments = normalized.splitn(3, '/');
    let first = segments.next().unwrap_or_default();
    let reserved = is_prefix(first);
    if workspace == DEFAULT && !(reserved && normalized.len() > first.len()) {
        // Legacy default-workspace artifacts never had the prefix.
        return Ok(path.to_owned());
    }
    if !reserved {
        return Ok(format!("{PREFIX}/{workspace}/{normalized}"));
    }
    match segments.next() {
        None | Some("") => Err(invalid(
            "Artifact paths prefixed with 'workspaces/' must include a workspace name.",
        )),
        Some(requested) if requested != workspace => Err(invalid(format!(
            "Artifact path targets workspace '{requested}' but the workspace specified in the request is '{workspace}'."
        ))),
        Some(_) => Ok(normalized.to_owned()),
    }
}

fn invalid(message: impl Into<String>) -> ProxyError {
    ProxyError::mlflow(
        Side::Client,
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER_VALUE",
        message,
    )
}

/// Whether MLflow knows a workspace, asked as MLflow's own workspace middleware answers it: a
/// `GET /health` carrying the header (no credentials: the route is open) is 200 for a workspace
/// it resolves and its error otherwise. Answers are kept for `ttl`, as auth decisions are, so a
/// deleted workspace stops being served within that time.
pub struct Checker {
    asker: Asker,
    ttl: Duration,
    known: Mutex<HashMap<String, (Instant, bool)>>,
}

/// Most workspace answers kept at once (a flood of made-up names cannot grow the map beyond).
const MAX_KEPT: usize = 10_000;

impl Checker {
    pub fn new(asker: Asker, ttl: Duration) -> Self {
        Checker {
            asker,
            ttl,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Ok(true): MLflow resolves the workspace; Ok(false): it refuses it (the request goes to
    /// MLflow, which answers with its reason); Err: MLflow could not be asked.
    pub async fn exists(&self, name: &str, header: &HeaderValue) -> Result<bool, String> {
        if let Some(&(at, exists)) = self.lock().get(name)
            && at.elapsed() < self.ttl
        {
            return Ok(exists);
        }
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, self.asker.host());
        headers.insert(HEADER, header.clone());
        let answer = self
            .asker
            .ask(Method::GET, "/health", headers, None)
            .await?;
        let exists = match answer.status {
            StatusCode::OK => true,
            // MLflow's JSON error for a workspace it cannot resolve.
            s if s.is_client_error() => false,
            s => return Err(format!("/health with a workspace answered {s}")),
        };
        let mut known = self.lock();
        if known.len() >= MAX_KEPT {
            known.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if known.len() >= MAX_KEPT {
                known.clear();
            }
        }
        known.insert(name.to_owned(), (Instant::now(), exists));
        Ok(exists)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, bool)>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(ws: &str) -> Workspace {
        Workspace::Named(ws.to_owned())
    }

    fn scoped(path: &str, ws: &str, any_case: bool) -> Result<String, String> {
        scoped_path(path, &named(ws), any_case).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn off_leaves_paths_alone() {
        assert_eq!(
            scoped_path("workspaces/x/1", &Workspace::Off, true).unwrap(),
            "workspaces/x/1"
        );
    }

    #[test]
    fn default_workspace_keeps_the_legacy_layout() {
        assert_eq!(scoped("", "default", false).unwrap(), "");
        assert_eq!(
            scoped("1/r/artifacts/a", "default", false).unwrap(),
            "1/r/artifacts/a"
        );
        assert_eq!(
            scoped("workspaces", "default", false).unwrap(),
            "workspaces"
        );
        assert_eq!(
            scoped("workspaces/default/1/a", "default", false).unwrap(),
            "workspaces/default/1/a"
        );
        assert!(scoped("workspaces/team/1/a", "default", false).is_err());
        // 3.17 takes only the lower-case prefix as reserved; 3.18 any case.
        assert_eq!(
            scoped("WORKSPACES/team/1", "default", false).unwrap(),
            "WORKSPACES/team/1"
        );
        assert_eq!(
            scoped("WORKSPACES/team/1", "default", true).unwrap_err(),
            "Artifact path targets workspace 'team' but the workspace specified in the request is 'default'."
        );
    }

    #[test]
    fn named_workspaces_are_prefixed_and_checked() {
        assert_eq!(scoped("", "team", false).unwrap(), "workspaces/team");
        assert_eq!(
            scoped("1/r/a.txt", "team", false).unwrap(),
            "workspaces/team/1/r/a.txt"
        );
        assert_eq!(
            scoped("workspaces/team/1/a", "team", false).unwrap(),
            "workspaces/team/1/a"
        );
        assert_eq!(
            scoped("workspaces/other/1/a", "team", false).unwrap_err(),
            "Artifact path targets workspace 'other' but the workspace specified in the request is 'team'."
        );
        assert_eq!(
            scoped("workspaces", "team", false).unwrap_err(),
            "Artifact paths prefixed with 'workspaces/' must include a workspace name."
        );
        assert_eq!(
            scoped("workspaces//x", "team", false).unwrap_err(),
            "Artifact paths prefixed with 'workspaces/' must include a workspace name."
        );
        // Another case of the prefix: a plain directory for 3.17, the prefix for 3.18 (the key
        // keeps the letters as sent).
        assert_eq!(
            scoped("Workspaces/team/a", "team", false).unwrap(),
            "workspaces/team/Workspaces/team/a"
        );
        assert_eq!(
            scoped("Workspaces/team/a", "team", true).unwrap(),
            "Workspaces/team/a"
        );
        // U+212A KELVIN SIGN lower-cases to `k` in Python as in Rust.
        assert_eq!(
            scoped("wor\u{212a}spaces/team/a", "team", true).unwrap(),
            "wor\u{212a}spaces/team/a"
        );
    }

    #[test]
    fn headers_resolve_like_mlflow() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(HEADER, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(
            resolve(&HeaderMap::new(), false),
            Resolution::Serve(Workspace::Off)
        );
        assert_eq!(resolve(&with("team"), false), Resolution::PassThrough);
        assert_eq!(
            resolve(&with("  "), false),
            Resolution::Serve(Workspace::Off)
        );
        assert_eq!(
            resolve(&HeaderMap::new(), true),
            Resolution::Serve(named("default"))
        );
        assert_eq!(
            resolve(&with(" team "), true),
            Resolution::Serve(named("team"))
        );
        let mut odd = HeaderMap::new();
        odd.insert(HEADER, HeaderValue::from_bytes(b"t\xe9am").unwrap());
        assert_eq!(resolve(&odd, true), Resolution::PassThrough);
    }
}
