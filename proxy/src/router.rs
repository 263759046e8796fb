//! Which requests the proxy answers itself and which go to MLflow.

use http::{Method, Request};

use crate::mlflow::path::py_unquote;

/// The two prefixes MLflow registers its artifact service under.
const ARTIFACT_PREFIXES: &[&str] = &[
    "/api/2.0/mlflow-artifacts/",
    "/ajax-api/2.0/mlflow-artifacts/",
];
const SERVER_INFO_PATHS: &[&str] = &[
    "/api/3.0/mlflow/server-info",
    "/ajax-api/3.0/mlflow/server-info",
];
/// The UI's and the registry's own downloads (Flask routes of MLflow's server).
const RUN_ARTIFACT_PATH: &str = "/get-artifact";
const MODEL_VERSION_ARTIFACT_PATH: &str = "/model-versions/get-artifact";
const LOGGED_MODELS_PATH: &str = "/ajax-api/2.0/mlflow/logged-models/";
const LOGGED_MODEL_FILES: &str = "/artifacts/files";

/// Where the URLs the proxy hands out point, after the artifact prefix the client used.
pub const SIGNED_PART_PATH: &str = "signed/part";
pub const SIGNED_OBJECT_PATH: &str = "signed/object";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpuAction {
    Create,
    Complete,
    Abort,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// GET (or HEAD) `artifacts/<path>`; the path as the server sees it (decoded once).
    Download {
        path: String,
        head: bool,
    },
    Upload {
        path: String,
    },
    Delete {
        path: String,
    },
    /// GET/HEAD `artifacts?path=`.
    List,
    /// POST `mpu/{create,complete,abort}/<path>`.
    Multipart {
        action: MpuAction,
        path: String,
    },
    /// GET `presigned/<path>`.
    Presigned {
        path: String,
    },
    /// PUT `signed/part?token=`: one part of a multipart upload, authorized by the token the
    /// proxy handed out at `mpu/create` (no MLflow credentials, as the client sends none).
    SignedPart,
    /// GET/HEAD `signed/object?token=`: an object, authorized by a `presigned/` token.
    SignedObject {
        head: bool,
    },
    /// GET/HEAD of a download the UI or the registry makes by naming a run, a model version or
    /// a logged model; where its bytes are is asked of MLflow (`artifacts::ui_routes`).
    UiDownload {
        source: ArtifactSource,
        head: bool,
    },
    /// Passed through, with the capability flags rewritten.
    ServerInfo,
    PassThrough,
}

/// What a UI download names; the artifact path is in the query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    /// `/get-artifact?path=&run_id=` (or `run_uuid=`): a run's artifact.
    Run,
    /// `/model-versions/get-artifact?path=&name=&version=`: a registered model version's file.
    ModelVersion,
    /// `/ajax-api/2.0/mlflow/logged-models/<model_id>/artifacts/files?artifact_file_path=`.
    LoggedModel { model_id: String },
}

impl Route {
    /// A fixed label for metrics and logs: never a raw path.
    pub fn class(&self) -> &'static str {
        match self {
            Route::Download { .. } => "download",
            Route::Upload { .. } => "upload",
            Route::Delete { .. } => "delete",
            Route::List => "list",
            Route::Multipart { .. } => "mpu",
            Route::Presigned { .. } => "presigned",
            Route::SignedPart => "signed_part",
            Route::SignedObject { .. } => "signed_object",
            Route::UiDownload { .. } => "ui_download",
            Route::ServerInfo => "server_info",
            Route::PassThrough => "passthrough",
        }
    }
}

/// The route of a request to an MLflow server without a `--static-prefix`. A workspace header
/// does not change a route of ours: the handlers serve it in its workspace, or hand it to MLflow
/// when MLflow runs without workspaces or does not know the workspace (`workspaces`).
pub fn classify<B>(request: &Request<B>) -> Route {
    classify_under(request, "")
}

/// The route of a request to an MLflow server run with `--static-prefix <static_prefix>` (""
/// for none): MLflow's routes are all under it, so the proxy's are too.
pub fn classify_under<B>(request: &Request<B>, static_prefix: &str) -> Route {
    // uvicorn percent-decodes the path once before routing; so do we.
    let path = py_unquote(request.uri().path());
    let Some(path) = without_static_prefix(&path, static_prefix) else {
        return Route::PassThrough;
    };
    let method = request.method();
    if SERVER_INFO_PATHS.contains(&path) && method == Method::GET {
        return Route::ServerInfo;
    }
    if let Some(source) = ui_download(path) {
        return match *method {
            Method::GET => Route::UiDownload {
                source,
                head: false,
            },
            // Flask answers HEAD on every GET route (by running the GET).
            Method::HEAD => Route::UiDownload { source, head: true },
            _ => Route::PassThrough,
        };
    }
    let Some(rest) = ARTIFACT_PREFIXES.iter().find_map(|p| path.strip_prefix(p)) else {
        return Route::PassThrough;
    };
    if rest == "artifacts" {
        return match *method {
            Method::GET | Method::HEAD => Route::List,
            _ => Route::PassThrough,
        };
    }
    if let Some(artifact) = rest.strip_prefix("artifacts/") {
        let path = artifact.to_owned();
        return match *method {
            Method::GET => Route::Download { path, head: false },
            Method::HEAD => Route::Download { path, head: true },
            Method::PUT => Route::Upload { path },
            // An empty path has no route in MLflow (404 there); let MLflow say so.
            Method::DELETE if !path.is_empty() => Route::Delete { path },
            _ => Route::PassThrough,
        };
    }
    for (prefix, action) in [
        ("mpu/create/", MpuAction::Create),
        ("mpu/complete/", MpuAction::Complete),
        ("mpu/abort/", MpuAction::Abort),
    ] {
        if let Some(path) = rest.strip_prefix(prefix).filter(|p| !p.is_empty())
            && method == Method::POST
        {
            let path = path.to_owned();
            return Route::Multipart { action, path };
        }
    }
    if let Some(path) = rest.strip_prefix("presigned/").filter(|p| !p.is_empty())
        && method == Method::GET
    {
        let path = path.to_owned();
        return Route::Presigned { path };
    }
    match (rest, method) {
        (SIGNED_PART_PATH, &Method::PUT) => Route::SignedPart,
        (SIGNED_OBJECT_PATH, &Method::GET) => Route::SignedObject { head: false },
        (SIGNED_OBJECT_PATH, &Method::HEAD) => Route::SignedObject { head: true },
        _ => Route::PassThrough,
    }
}

/// The path below MLflow's `--static-prefix`, or None when it is not under it.
pub fn without_static_prefix<'a>(path: &'a str, static_prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(static_prefix)?;
    (static_prefix.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The UI's downloads, matched as Flask matches its rules (exact paths; `<model_id>` is one
/// non-empty segment).
fn ui_download(path: &str) -> Option<ArtifactSource> {
    match path {
        RUN_ARTIFACT_PATH => return Some(ArtifactSource::Run),
        MODEL_VERSION_ARTIFACT_PATH => return Some(ArtifactSource::ModelVersion),
        _ => {}
    }
    let model_id = path
        .strip_prefix(LOGGED_MODELS_PATH)?
        .strip_suffix(LOGGED_MODEL_FILES)?;
    (!model_id.is_empty() && !model_id.contains('/')).then(|| ArtifactSource::LoggedModel {
        model_id: model_id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, uri: &str) -> Route {
        classify(&Request::builder().method(method).uri(uri).body(()).unwrap())
    }

    #[test]
    fn artifact_routes() {
        let dl = |p: &str| Route::Download {
            path: p.into(),
            head: false,
        };
        assert_eq!(
            route(Method::GET, "/api/2.0/mlflow-artifacts/artifacts/1/r/a.txt"),
            dl("1/r/a.txt")
        );
        assert_eq!(
            route(
                Method::GET,
                "/ajax-api/2.0/mlflow-artifacts/artifacts/a%20b"
            ),
            dl("a b")
        );
        assert_eq!(
            route(Method::GET, "/api/2.0/mlflow-artifacts/artifacts/"),
            dl("")
        );
        assert_eq!(
            route(Method::GET, "/api/2.0/mlflow-artifacts/artifacts?path=x"),
            Route::List
        );
        assert_eq!(
            route(Method::PUT, "/api/2.0/mlflow-artifacts/artifacts/x"),
            Route::Upload { path: "x".into() }
        );
        assert_eq!(
            route(Method::DELETE, "/api/2.0/mlflow-artifacts/artifacts/x"),
            Route::Delete { path: "x".into() }
        );
        assert_eq!(
            route(Method::DELETE, "/api/2.0/mlflow-artifacts/artifacts/"),
            Route::PassThrough
        );
        assert_eq!(
            route(Method::POST, "/api/2.0/mlflow-artifacts/artifacts"),
            Route::PassThrough
        );
        assert_eq!(
            route(Method::POST, "/api/2.0/mlflow-artifacts/mpu/create/1/x"),
            Route::Multipart {
                action: MpuAction::Create,
                path: "1/x".into()
            }
        );
        assert_eq!(
            route(Method::POST, "/ajax-api/2.0/mlflow-artifacts/mpu/abort/1/x"),
            Route::Multipart {
                action: MpuAction::Abort,
                path: "1/x".into()
            }
        );
        assert_eq!(
            route(Method::POST, "/api/2.0/mlflow-artifacts/mpu/create/"),
            Route::PassThrough
        );
        assert_eq!(
            route(Method::GET, "/api/2.0/mlflow-artifacts/presigned/1/x"),
            Route::Presigned { path: "1/x".into() }
        );
        assert_eq!(
            route(Method::PUT, "/api/2.0/mlflow-artifacts/signed/part?token=t"),
            Route::SignedPart
        );
        assert_eq!(
            route(
                Method::HEAD,
                "/ajax-api/2.0/mlflow-artifacts/signed/object?token=t"
            ),
            Route::SignedObject { head: true }
        );
        assert_eq!(
            route(Method::GET, "/api/2.0/mlflow-artifacts/signed/part"),
            Route::PassThrough
        );
        assert_eq!(
            route(Method::GET, "/api/3.0/mlflow/server-info"),
            Route::ServerInfo
        );
        assert_eq!(
            route(Method::GET, "/api/2.0/mlflow/experiments/search"),
            Route::PassThrough
        );
        assert_eq!(
            route(Method::GET, "/mlflow/api/2.0/mlflow-artifacts/artifacts/x"),
            Route::PassThrough
        );
    }

    #[test]
    fn ui_downloads() {
        let ui = |source: ArtifactSource, head: bool| Route::UiDownload { source, head };
        assert_eq!(
            route(Method::GET, "/get-artifact?path=a&run_id=r"),
            ui(ArtifactSource::Run, false)
        );
        assert_eq!(
            route(Method::HEAD, "/model-versions/get-artifact?path=a"),
            ui(ArtifactSource::ModelVersion, true)
        );
        assert_eq!(
            route(
                Method::GET,
                "/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files?artifact_file_path=a"
            ),
            ui(
                ArtifactSource::LoggedModel {
                    model_id: "m-1".into()
                },
                false
            )
        );
        for passed in [
            (Method::POST, "/get-artifact?path=a"),
            (Method::GET, "/get-artifact/"),
            (Method::GET, "//get-artifact"),
            (
                Method::GET,
                "/api/2.0/mlflow/logged-models/m-1/artifacts/files",
            ),
            (
                Method::GET,
                "/ajax-api/2.0/mlflow/logged-models//artifacts/files",
            ),
            // `%2F` is decoded before routing: two segments, no Flask rule.
            (
                Method::GET,
                "/ajax-api/2.0/mlflow/logged-models/a%2Fb/artifacts/files",
            ),
        ] {
            assert_eq!(
                route(passed.0.clone(), passed.1),
                Route::PassThrough,
                "{passed:?}"
            );
        }
    }

    #[test]
    fn under_a_static_prefix() {
        let under = |method: Method, uri: &str| {
            classify_under(
                &Request::builder().method(method).uri(uri).body(()).unwrap(),
                "/mlflow",
            )
        };
        assert_eq!(
            under(Method::GET, "/mlflow/get-artifact?path=a&run_id=r"),
            Route::UiDownload {
                source: ArtifactSource::Run,
                head: false
            }
        );
        assert_eq!(
            under(Method::GET, "/mlflow/api/2.0/mlflow-artifacts/artifacts/x"),
            Route::Download {
                path: "x".into(),
                head: false
            }
        );
        assert_eq!(
            under(Method::GET, "/mlflow/ajax-api/3.0/mlflow/server-info"),
            Route::ServerInfo
        );
        // MLflow serves nothing of ours outside its prefix (its native GET/PUT answer for
        // themselves there).
        for outside in [
            "/get-artifact?path=a&run_id=r",
            "/api/2.0/mlflow-artifacts/artifacts/x",
            "/mlflowx/get-artifact",
            "/api/3.0/mlflow/server-info",
        ] {
            assert_eq!(under(Method::GET, outside), Route::PassThrough, "{outside}");
        }
    }

    #[test]
    fn workspace_requests_are_artifact_routes() {
        let request = Request::get("/api/2.0/mlflow-artifacts/artifacts/x")
            .header("X-MLFLOW-WORKSPACE", "team")
            .body(())
            .unwrap();
        assert_eq!(
            classify(&request),
            Route::Download {
                path: "x".into(),
                head: false
            }
        );
        // So are the UI's downloads: `ui_routes` asks MLflow in the request's workspace.
        let request = Request::get("/get-artifact?path=a&run_id=r")
            .header("X-MLFLOW-WORKSPACE", "team")
            .body(())
            .unwrap();
        assert_eq!(
            classify(&request),
            Route::UiDownload {
                source: ArtifactSource::Run,
                head: false
            }
        );
    }
}
