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
    /// Passed through, with the capability flags rewritten.
    ServerInfo,
    PassThrough,
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
            Route::ServerInfo => "server_info",
            Route::PassThrough => "passthrough",
        }
    }
}

pub fn classify<B>(request: &Request<B>) -> Route {
    // MLflow's workspace feature rewrites artifact paths; only MLflow can answer those faithfully.
    if request
        .headers()
        .get("x-mlflow-workspace")
        .is_some_and(|v| !v.is_empty())
    {
        return Route::PassThrough;
    }
    // uvicorn percent-decodes the path once before routing; so do we.
    let path = py_unquote(request.uri().path());
    let method = request.method();
    if SERVER_INFO_PATHS.contains(&path.as_str()) && method == Method::GET {
        return Route::ServerInfo;
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
    fn workspace_requests_go_to_mlflow() {
        let request = Request::get("/api/2.0/mlflow-artifacts/artifacts/x")
            .header("X-MLFLOW-WORKSPACE", "team")
            .body(())
            .unwrap();
        assert_eq!(classify(&request), Route::PassThrough);
    }
}
