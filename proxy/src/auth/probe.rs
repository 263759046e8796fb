//! Validator probes: for each artifact operation, a request that makes MLflow's auth app run the
//! same validator on a path of the same class as the real request, while the handler behind it
//! can do nothing harmful; and how MLflow's answer to it reads. The rules MLflow applies are not
//! copied here: only how to ask, and what its answers look like.
//!
//! How a probe keeps the path class (MLflow 3.17's `_authorize_artifact_proxy_resolved`): the
//! class depends on the experiment prefix, the first segment after it, whether the second is
//! `artifacts`, whether anything follows, and (Flask routes) a few substrings of the request path.
//! Appending one segment `TOKEN` to a path changes none of these for a non-root path, and for an
//! experiment root the delete probes cover each tier MLflow checks.

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::Operation;

/// The segment appended to probe paths: not digits, not 32 hex, not `artifacts`/`models`/
/// `traces`, ASCII, no `/`, `#` or `..`. Nothing is ever stored under it by a probe (a list, an
/// abort without a body, a delete of something inside the subtree the real request names).
pub const TOKEN: &str = ".mlflow-proxy-authz-probe";
/// A run id shape (32 hex): a listing probe below it lands on the run tier.
const RUN_SHAPED: &str = "00000000000000000000000000000000";

/// Percent-encode for a path: uvicorn decodes exactly once, so MLflow sees the text we mean.
/// `.` is encoded too, so that no HTTP layer on the way can read a `..` segment.
const PATH_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');
/// Percent-encode for a query value (`+` and `/` too: Flask decodes form values once).
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Which question a probe asks, and so which harmless answer means "passed".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `GET artifacts?path=…/TOKEN`: MLflow's read validator (one empty listing).
    List,
    /// `GET users/current`: authentication and `is_admin` (HEAD is admin-only in MLflow).
    CurrentUser,
    /// `POST mpu/abort/<P>` with `{}`: the update validator; the handler stops at its schema.
    MpuAbort,
    /// `DELETE artifacts/<P>/…/TOKEN`: the manage validator; nothing exists there to delete.
    Delete,
    /// `GET presigned/<P>/TOKEN`: the presigned route's read validator.
    Presigned,
    /// One of MLflow's UI download routes itself, without its artifact-path argument: the
    /// route's own validator; its handler then stops at the missing argument (400).
    Route,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::List => "list",
            Kind::CurrentUser => "users_current",
            Kind::MpuAbort => "mpu_abort",
            Kind::Delete => "delete",
            Kind::Presigned => "presigned",
            Kind::Route => "route",
        }
    }

    pub const ALL: [Kind; 6] = [
        Kind::List,
        Kind::CurrentUser,
        Kind::MpuAbort,
        Kind::Delete,
        Kind::Presigned,
        Kind::Route,
    ];
}

/// One request to MLflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub kind: Kind,
    pub method: Method,
    pub path_and_query: String,
    pub json_body: bool,
    /// Asks about the request's own path (no token appended): MLflow's refusal of the probe is
    /// its refusal of the request.
    pub exact: bool,
}

fn child(path: &str, tail: &str) -> String {
    if path.is_empty() {
        tail.to_owned()
    } else {
        format!("{path}/{tail}")
    }
}

fn list_probe(api: &str, path: &str) -> Probe {
    Probe {
        kind: Kind::List,
        method: Method::GET,
        path_and_query: format!(
            "{api}/mlflow-artifacts/artifacts?path={}",
            utf8_percent_encode(path, QUERY_SET)
        ),
        json_body: false,
        exact: false,
    }
}

fn delete_probe(api: &str, path: &str) -> Probe {
    Probe {
        kind: Kind::Delete,
        method: Method::DELETE,
        path_and_query: format!(
            "{api}/mlflow-artifacts/artifacts/{}",
            utf8_percent_encode(path, PATH_SET)
        ),
        json_body: false,
        exact: false,
    }
}

/// The probes for one real request; all must pass. `path` is the artifact path as the route
/// gives it (decoded once, as uvicorn decodes it); `api` is `/api/2.0` or `/ajax-api/2.0`.
pub fn probes_for(op: Operation, api: &str, path: &str) -> Vec<Probe> {
    match op {
        Operation::Download | Operation::List => vec![list_probe(api, &child(path, TOKEN))],
        Operation::Head => vec![Probe {
            kind: Kind::CurrentUser,
            method: Method::GET,
            path_and_query: format!("{api}/mlflow/users/current"),
            json_body: false,
            exact: false,
        }],
        Operation::Upload | Operation::Multipart => {
            let target = if path.is_empty() { TOKEN } else { path };
            vec![Probe {
                kind: Kind::MpuAbort,
                method: Method::POST,
                path_and_query: format!(
                    "{api}/mlflow-artifacts/mpu/abort/{}",
                    utf8_percent_encode(target, PATH_SET)
                ),
                json_body: true,
                exact: false,
            }]
        }
        Operation::Delete => {
            // A delete is recursive: at an experiment root MLflow checks the run, trace and
            // logged-model tiers. Below a root all three probes land in the real path's class,
            // so sending them everywhere needs no knowledge of where roots are.
            let mut probes = vec![
                delete_probe(api, &child(path, TOKEN)),
                delete_probe(api, &child(path, &format!("models/{TOKEN}"))),
            ];
            // `…/mlflow/traces/` in a Flask path makes MLflow deny every non-admin; a path whose
            // last segment is `mlflow` is never an experiment root (those are digits), so its
            // traces probe is not needed and would only over-deny.
            let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            if last != "mlflow" {
                probes.push(delete_probe(api, &child(path, &format!("traces/{TOKEN}"))));
            }
            probes
        }
        Operation::Presigned => vec![Probe {
            kind: Kind::Presigned,
            method: Method::GET,
            path_and_query: format!(
                "{api}/mlflow-artifacts/presigned/{}",
                utf8_percent_encode(&child(path, TOKEN), PATH_SET)
            ),
            json_body: false,
            exact: false,
        }],
    }
}

/// A probe of one of MLflow's own download routes: the real request's method, route and
/// arguments, less the artifact path (`path_and_query` as sent, below the static prefix).
pub fn route_probe(method: Method, path_and_query: String) -> Probe {
    Probe {
        kind: Kind::Route,
        method,
        path_and_query,
        json_body: false,
        exact: false,
    }
}

/// MLflow 3.18 judges its skill tree (`skills/`, also below `workspaces/<ws>/`) by the skill a
/// path names, and refuses odd spellings there with a 400: a token appended would name another
/// skill (or an invalid one), so these paths are probed as they are. Reads (a listing or a
/// presigned URL of the path itself: a read whose answer is dropped) ask exactly the request's
/// question. Writes ask the update validator (`mpu/abort`, which stops at its schema); every
/// write there is then refused anyway (`artifacts::scope`: skill content is immutable), so for a
/// DELETE only which 403 is sent can differ from stock (its MANAGE check against UPDATE here).
/// None: the path is not in the skill tree.
pub fn skill_tree_probes(op: Operation, api: &str, path: &str) -> Option<Vec<Probe>> {
    if !crate::mlflow::skills::is_skill_upload_namespace(path) {
        return None;
    }
    let mut probe = match op {
        Operation::Download | Operation::List => list_probe(api, path),
        Operation::Presigned => Probe {
            kind: Kind::Presigned,
            method: Method::GET,
            path_and_query: format!(
                "{api}/mlflow-artifacts/presigned/{}",
                utf8_percent_encode(path, PATH_SET)
            ),
            json_body: false,
            exact: false,
        },
        Operation::Head => return Some(probes_for(op, api, path)),
        // The update probe names the path itself already.
        Operation::Upload | Operation::Multipart | Operation::Delete => {
            probes_for(Operation::Multipart, api, path).remove(0)
        }
    };
    probe.exact = true;
    Some(vec![probe])
}

/// For a listing: MLflow withholds run directories from an experiment-root listing when the
/// caller may not read the run tier. A listing probe one run-shaped segment below the listed
/// directory asks exactly that (below a root it lands in the listed directory's own class, and
/// so passes whenever the listing does).
pub fn run_tier_probe(api: &str, path: &str) -> Option<Probe> {
    // MLflow skips the filter for the destination root.
    (!path.is_empty()).then(|| list_probe(api, &format!("{path}/{RUN_SHAPED}/{TOKEN}")))
}

/// What MLflow's answer to a probe means.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 403 `Permission denied`.
    Denied,
    /// 401: missing or wrong credentials; MLflow's header and body, to relay.
    Unauthenticated {
        www_authenticate: Option<HeaderValue>,
        body: Bytes,
    },
    /// An exact probe refused with a 400 (other than `mpu/abort`'s schema check, which an allowed
    /// caller reaches): MLflow's refusal of the request itself, to relay.
    Refused(Bytes),
    /// Anything else: MLflow's answer does not say; the request is refused.
    Odd(String),
}

/// An exact probe's 400, when it is MLflow's refusal of the path rather than the harmless end of
/// an allowed probe (`mpu/abort` without a body stops at its schema check: "Missing value for
/// required parameter 'path'").
pub fn refusal_of_exact(probe: &Probe, status: StatusCode, body: &Bytes) -> Option<Bytes> {
    if !probe.exact || status != StatusCode::BAD_REQUEST {
        return None;
    }
    let schema_stop = probe.kind == Kind::MpuAbort
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .is_some_and(|m| m.starts_with("Missing value for required parameter 'path'"));
    (!schema_stop).then(|| body.clone())
}

pub fn read_answer(
    kind: Kind,
    status: StatusCode,
    www: Option<HeaderValue>,
    body: &Bytes,
) -> Verdict {
    if status == StatusCode::UNAUTHORIZED {
        return Verdict::Unauthenticated {
            www_authenticate: www,
            body: body.clone(),
        };
    }
    if status == StatusCode::FORBIDDEN && body.as_ref() == b"Permission denied" {
        return Verdict::Denied;
    }
    let error_code = || {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error_code")
                    .and_then(|c| c.as_str())
                    .map(str::to_owned)
            })
    };
    // The handler's own harmless answers. An admin (who skips validators) sending an unsafe
    // path gets the handler's 400 "Invalid path": allowed, and the proxy's own handler then
    // answers the same 400.
    let passed = match (kind, status.as_u16()) {
        (Kind::List | Kind::Delete, 200) => true,
        (Kind::List | Kind::Delete | Kind::MpuAbort | Kind::Presigned, 400) => {
            error_code().as_deref() == Some("INVALID_PARAMETER_VALUE")
        }
        // An exact probe (`skill_tree_probes`) asks for an object that exists.
        (Kind::Presigned, 200) => true,
        (Kind::Presigned, 501) => error_code().as_deref() == Some("NOT_IMPLEMENTED"),
        // 3.18's handlers refuse writes to skill content once the caller is authorized: JSON,
        // where the auth app's refusal is the text above.
        (Kind::MpuAbort | Kind::Delete, 403) => {
            error_code().as_deref() == Some("PERMISSION_DENIED")
                && serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                    .as_deref()
                    == Some(crate::mlflow::skills::IMMUTABLE)
        }
        (Kind::Presigned, 404) => error_code().as_deref() == Some("RESOURCE_DOES_NOT_EXIST"),
        // The handler's missing-argument answer: werkzeug's HTML page (`request.args["path"]`)
        // or MLflow's BAD_REQUEST; a validator's own 400 (INVALID_PARAMETER_VALUE) is not it.
        (Kind::Route, 400) => error_code().is_none_or(|code| code == "BAD_REQUEST"),
        (Kind::CurrentUser, 200) => {
            return match serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.pointer("/user/is_admin").and_then(|a| a.as_bool()))
            {
                Some(true) => Verdict::Allowed,
                // MLflow refuses HEAD to non-admins (no validator for it; fail-closed).
                Some(false) => Verdict::Denied,
                None => Verdict::Odd("users/current: no user.is_admin in the answer".into()),
            };
        }
        _ => false,
    };
    if passed {
        Verdict::Allowed
    } else {
        Verdict::Odd(format!("{} probe answered {status}", kind.label()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_targets() {
        let p = probes_for(Operation::Download, "/api/2.0", "%31/a b+c.txt");
        assert_eq!(
            p[0].path_and_query,
            "/api/2.0/mlflow-artifacts/artifacts?path=%2531%2Fa%20b%2Bc.txt%2F.mlflow-proxy-authz-probe"
        );
        let p = probes_for(Operation::List, "/ajax-api/2.0", "");
        assert_eq!(
            p[0].path_and_query,
            "/ajax-api/2.0/mlflow-artifacts/artifacts?path=.mlflow-proxy-authz-probe"
        );
        let p = probes_for(Operation::Upload, "/api/2.0", "1/r/artifacts/ü x");
        assert_eq!(
            p[0].path_and_query,
            "/api/2.0/mlflow-artifacts/mpu/abort/1/r/artifacts/%C3%BC%20x"
        );
        assert!(p[0].json_body);
        let p = probes_for(Operation::Delete, "/api/2.0", "1");
        let targets: Vec<&str> = p.iter().map(|p| p.path_and_query.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/api/2.0/mlflow-artifacts/artifacts/1/%2Emlflow-proxy-authz-probe",
                "/api/2.0/mlflow-artifacts/artifacts/1/models/%2Emlflow-proxy-authz-probe",
                "/api/2.0/mlflow-artifacts/artifacts/1/traces/%2Emlflow-proxy-authz-probe",
            ]
        );
        assert_eq!(
            probes_for(Operation::Delete, "/api/2.0", "1/x/mlflow").len(),
            2
        );
        assert_eq!(
            probes_for(Operation::Head, "/api/2.0", "x")[0].path_and_query,
            "/api/2.0/mlflow/users/current"
        );
        assert_eq!(run_tier_probe("/api/2.0", ""), None);
    }

    #[test]
    fn skill_tree_paths_are_probed_as_they_are() {
        assert_eq!(
            skill_tree_probes(Operation::List, "/api/2.0", "1/skills"),
            None
        );
        let p = skill_tree_probes(Operation::List, "/api/2.0", "skills/@org").unwrap();
        assert_eq!(
            p[0].path_and_query,
            "/api/2.0/mlflow-artifacts/artifacts?path=skills%2F%40org"
        );
        assert!(p[0].exact);
        let p =
            skill_tree_probes(Operation::Download, "/api/2.0", "workspaces/t/skills/x/f").unwrap();
        assert_eq!(
            p[0].path_and_query,
            "/api/2.0/mlflow-artifacts/artifacts?path=workspaces%2Ft%2Fskills%2Fx%2Ff"
        );
        let p = skill_tree_probes(Operation::Delete, "/api/2.0", "skills/x").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].kind, p[0].exact), (Kind::MpuAbort, true));
        let p = skill_tree_probes(Operation::Head, "/api/2.0", "skills/x").unwrap();
        assert_eq!(p[0].kind, Kind::CurrentUser);
    }

    #[test]
    fn answers() {
        let b = |s: &str| Bytes::from(s.to_owned());
        assert_eq!(
            read_answer(Kind::List, StatusCode::OK, None, &b("{}")),
            Verdict::Allowed
        );
        assert_eq!(
            read_answer(
                Kind::List,
                StatusCode::FORBIDDEN,
                None,
                &b("Permission denied")
            ),
            Verdict::Denied
        );
        assert!(matches!(
            read_answer(
                Kind::List,
                StatusCode::FORBIDDEN,
                None,
                &b("Invalid Host header - possible DNS rebinding attack detected")
            ),
            Verdict::Odd(_)
        ));
        assert!(matches!(
            read_answer(Kind::MpuAbort, StatusCode::UNAUTHORIZED, None, &b("no")),
            Verdict::Unauthenticated { .. }
        ));
        assert_eq!(
            read_answer(
                Kind::MpuAbort,
                StatusCode::BAD_REQUEST,
                None,
                &b(
                    r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Missing value for required parameter 'path'."}"#
                )
            ),
            Verdict::Allowed
        );
        assert!(matches!(
            read_answer(
                Kind::MpuAbort,
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                &b("{}")
            ),
            Verdict::Odd(_)
        ));
        assert_eq!(
            read_answer(
                Kind::CurrentUser,
                StatusCode::OK,
                None,
                &b(
                    r#"{"is_basic_auth": true, "user": {"id": 2, "is_admin": false, "username": "a"}}"#
                )
            ),
            Verdict::Denied
        );
        // The route's handler stopped at the left-out argument: the validator let it through.
        let html = b("<!doctype html>\n<html lang=en>\n<title>400 Bad Request</title>");
        assert_eq!(
            read_answer(Kind::Route, StatusCode::BAD_REQUEST, None, &html),
            Verdict::Allowed
        );
        assert_eq!(
            read_answer(
                Kind::Route,
                StatusCode::BAD_REQUEST,
                None,
                &b(
                    r#"{"error_code": "BAD_REQUEST", "message": "Request must include the \"artifact_file_path\" query parameter."}"#
                )
            ),
            Verdict::Allowed
        );
        assert!(matches!(
            read_answer(
                Kind::Route,
                StatusCode::BAD_REQUEST,
                None,
                &b(
                    r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Request must specify run_id or run_uuid parameter"}"#
                )
            ),
            Verdict::Odd(_)
        ));
        assert!(matches!(
            read_answer(Kind::Route, StatusCode::OK, None, &b("file bytes")),
            Verdict::Odd(_)
        ));
        // 3.18 refuses writes to skill content after the auth app let the caller through.
        let immutable = b(
            r#"{"error_code": "PERMISSION_DENIED", "message": "Skill upload content is immutable; register a new version instead"}"#,
        );
        for kind in [Kind::MpuAbort, Kind::Delete] {
            assert_eq!(
                read_answer(kind, StatusCode::FORBIDDEN, None, &immutable),
                Verdict::Allowed
            );
        }
        assert!(matches!(
            read_answer(
                Kind::MpuAbort,
                StatusCode::FORBIDDEN,
                None,
                &b(r#"{"error_code": "PERMISSION_DENIED", "message": "other"}"#)
            ),
            Verdict::Odd(_)
        ));
        // A server without the auth app has no users/current route.
        assert!(matches!(
            read_answer(Kind::CurrentUser, StatusCode::NOT_FOUND, None, &b("")),
            Verdict::Odd(_)
        ));
    }
}
