//! The downloads the UI and the registry make by naming a run, a model version or a logged
//! model: `GET /get-artifact?path=&run_id=` (run artifacts: preview and download),
//! `GET /model-versions/get-artifact?path=&name=&version=` (the registry's model files), and
//! `GET /ajax-api/2.0/mlflow/logged-models/<id>/artifacts/files?artifact_file_path=` (MLflow 3's
//! logged models); also under MLflow's static prefix, and HEAD as Flask answers it.
//!
//! Stock MLflow looks up the location, copies the whole object into its temp folder, then sends
//! it. Here MLflow is asked the location as the caller (`locations`) and, when its auth app is
//! on, whether the caller may use the route (a probe of the route itself, without the artifact
//! path: MLflow judges it as the real request and its handler stops at the missing argument);
//! the bytes then stream from S3 as the download route streams them (Range, conditional
//! requests, parallel reads), with MLflow's labels and error shapes. What the proxy cannot answer
//! as stock would (a missing argument, an unsafe path, a refusal, an unknown run, a location
//! outside the proxy's store) goes to MLflow unchanged: it answers those before touching an
//! artifact byte.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;

use super::download;
use super::signed::presigned::{json_response, signed_object_url};
use crate::artifacts::locations::{Lookup, store_path};
use crate::artifacts::state::App;
use crate::artifacts::state::public_url::ClientAddr;
use crate::auth::{Probe, route_probe};
use crate::mlflow::json::{Dialect, dumps};
use crate::mlflow::path::validate_path_is_safe;
use crate::router::ArtifactSource;
use crate::wire::body::ProxyBody;
use crate::wire::error::ProxyError;

/// MLflow 3.18's words when the artifact repository cannot presign (here: the proxy's presigned
/// downloads are switched off).
const PRESIGNED_OFF: &str =
    "Presigned download is not supported for the current artifact repository";

/// A logged model's id as one path segment.
const SEGMENT: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a well-formed request asks for.
struct Ask {
    lookup: Lookup,
    /// What the handler joins below the location.
    relative: String,
    /// `presigned=true` on the model routes (MLflow 3.18: a URL instead of the bytes).
    presigned: bool,
    /// The route without its artifact-path argument, for MLflow's auth app.
    probe: Probe,
}

pub async fn handle(
    app: &Arc<App>,
    source: ArtifactSource,
    head: bool,
    request: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let Some(ask) = Ask::parse(&source, &request) else {
        return pass_through(app, request).await;
    };
    if let Some(rejection) = app.security.reject(&request) {
        return rejection;
    }
    let facts = app.security.facts(&request);
    let (allowed, location) = tokio::join!(
        app.auth.allows(&ask.probe, &request),
        app.locations
            .find(&app.auth, &ask.lookup, request.headers())
    );
    let path = location
        .filter(|_| allowed)
        .and_then(|location| store_path(&location, &ask.relative));
    let Some(path) = path else {
        return pass_through(app, request).await;
    };
    // MLflow 3.18 answers `presigned=true` with a URL; 3.17 ignores it, and so does the proxy
    // in front of it.
    let presigned = ask.presigned
        && match app.locations.presigned_downloads(&app.auth).await {
            Some(honoured) => honoured,
            // Neither answer is known to be right; never MLflow's own, which names the store.
            None => {
                let mut refusal = unknown_version().into_response();
                app.security.decorate(&facts, &mut refusal);
                return refusal;
            }
        };
    let result = if presigned {
        presigned_url(app, path, &request).await
    } else {
        download::download_validated(app, &path, request.headers(), head).await
    };
    let mut response = result
        .map_err(ProxyError::flask)
        .unwrap_or_else(ProxyError::into_response);
    if !presigned && matches!(response.status().as_u16(), 200 | 206 | 304) {
        // What Flask's `send_file` says; the validators let the browser revalidate cheaply.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    app.security.decorate(&facts, &mut response);
    response
}

fn unknown_version() -> ProxyError {
    ProxyError::mlflow(
        crate::wire::error::Side::Upstream,
        StatusCode::SERVICE_UNAVAILABLE,
        "TEMPORARILY_UNAVAILABLE",
        "The MLflow server could not be asked which version it runs",
    )
}

/// The real request, to MLflow as it came.
async fn pass_through(app: &Arc<App>, request: Request<ProxyBody>) -> Response<ProxyBody> {
    let client = request
        .extensions()
        .get::<ClientAddr>()
        .map_or_else(|| ([127, 0, 0, 1], 0).into(), |c| c.0);
    app.upstream
        .forward(request, client)
        .await
        .unwrap_or_else(ProxyError::into_response)
}

/// `presigned=true` on MLflow 3.18's model routes: stock's JSON, with a URL on the proxy (the
/// presigned route's) instead of one on the store.
async fn presigned_url(
    app: &Arc<App>,
    path: String,
    request: &Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !app.transfers.config.downloads {
        return Err(ProxyError::not_implemented(PRESIGNED_OFF));
    }
    let (url, size) = signed_object_url(app, path, request).await?;
    // `jsonify(PresignedDownloadUrlResponse.to_dict())`.
    let answer = json!({ "url": url, "headers": {}, "file_size": size });
    Ok(json_response(format!(
        "{}\n",
        dumps(&answer, Dialect::Jsonify)
    )))
}

impl Ask {
    /// The request as the stock handler reads it, or None for anything it would refuse or
    /// answer differently (MLflow then answers it: the same error, no artifact read).
    fn parse(source: &ArtifactSource, request: &Request<ProxyBody>) -> Option<Ask> {
        let query = request.uri().query().unwrap_or("");
        // Flask's `request.args.get(name)`: the first value, `+` a space, decoded once.
        let arg = |name: &str| {
            url::form_urlencoded::parse(query.as_bytes())
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.into_owned())
        };
        let truthy = |value: Option<String>| value.filter(|v| !v.is_empty());
        let (lookup, path_arg, route) = match source {
            ArtifactSource::Run => {
                let run_id = truthy(arg("run_id")).or_else(|| truthy(arg("run_uuid")))?;
                (Lookup::Run { run_id }, "path", "/get-artifact".to_owned())
            }
            ArtifactSource::ModelVersion => {
                let name = truthy(arg("name"))?;
                let version = truthy(arg("version"))?;
                (
                    Lookup::ModelVersion { name, version },
                    "path",
                    "/model-versions/get-artifact".to_owned(),
                )
            }
            ArtifactSource::LoggedModel { model_id } => (
                Lookup::LoggedModel {
                    model_id: model_id.clone(),
                },
                "artifact_file_path",
                format!(
                    "/ajax-api/2.0/mlflow/logged-models/{}/artifacts/files",
                    utf8_percent_encode(model_id, SEGMENT)
                ),
            ),
        };
        let raw_path = arg(path_arg)?;
        let checked = validate_path_is_safe(&raw_path).ok()?;
        let relative = match source {
            // The logged-model handler checks the path, then joins it as it came.
            ArtifactSource::LoggedModel { .. } => {
                if raw_path.is_empty() {
                    return None;
                }
                raw_path
            }
            _ => checked,
        };
        let presigned =
            !matches!(source, ArtifactSource::Run) && arg("presigned").as_deref() == Some("true");
        let rest = without_arg(query, path_arg);
        let path_and_query = if rest.is_empty() {
            route
        } else {
            format!("{route}?{rest}")
        };
        Some(Ask {
            lookup,
            relative,
            presigned,
            probe: route_probe(request.method().clone(), path_and_query),
        })
    }
}

/// The raw query without any `name=` pair (names compared decoded, as Flask reads them); every
/// other pair exactly as sent.
fn without_arg(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| {
            let raw_name = pair.split('=').next().unwrap_or("");
            let decoded = url::form_urlencoded::parse(raw_name.as_bytes())
                .next()
                .map(|(n, _)| n.into_owned())
                .unwrap_or_default();
            !pair.is_empty() && decoded != name
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn ask(source: ArtifactSource, method: Method, uri: &str) -> Option<Ask> {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(crate::wire::body::empty())
            .unwrap();
        Ask::parse(&source, &request)
    }

    #[test]
    fn reads_the_arguments_as_flask_does() {
        let a = ask(
            ArtifactSource::Run,
            Method::GET,
            "/get-artifact?path=d/a%20b+c.txt&run_id=&run_uuid=r1&x=1",
        )
        .unwrap();
        assert_eq!(
            a.lookup,
            Lookup::Run {
                run_id: "r1".into()
            }
        );
        assert_eq!(a.relative, "d/a b c.txt");
        assert!(!a.presigned);
        assert_eq!(
            a.probe.path_and_query,
            "/get-artifact?run_id=&run_uuid=r1&x=1"
        );
        // run_id wins over run_uuid; the first `path` counts, every `path` leaves the probe.
        let a = ask(
            ArtifactSource::Run,
            Method::HEAD,
            "/get-artifact?pa%74h=x&run_id=r&path=y&run_uuid=s",
        )
        .unwrap();
        assert_eq!(a.relative, "x");
        assert_eq!(a.lookup, Lookup::Run { run_id: "r".into() });
        assert_eq!(a.probe.method, Method::HEAD);
        assert_eq!(a.probe.path_and_query, "/get-artifact?run_id=r&run_uuid=s");
        // The stock handler's own refusals: MLflow answers them.
        for refused in [
            "/get-artifact?path=x",
            "/get-artifact?run_id=r",
            "/get-artifact?path=../x&run_id=r",
            "/get-artifact?path=%252e%252e/x&run_id=r",
            "/get-artifact?path=a%23b&run_id=r",
        ] {
            assert!(
                ask(ArtifactSource::Run, Method::GET, refused).is_none(),
                "{refused}"
            );
        }
        // An empty path is the run's root: a directory, answered by the proxy.
        assert_eq!(
            ask(
                ArtifactSource::Run,
                Method::GET,
                "/get-artifact?path=&run_id=r"
            )
            .unwrap()
            .relative,
            ""
        );
    }

    #[test]
    fn model_routes() {
        let a = ask(
            ArtifactSource::ModelVersion,
            Method::GET,
            "/model-versions/get-artifact?path=MLmodel&name=my%20model&version=3&presigned=true",
        )
        .unwrap();
        assert_eq!(
            a.lookup,
            Lookup::ModelVersion {
                name: "my model".into(),
                version: "3".into()
            }
        );
        assert!(a.presigned);
        assert_eq!(
            a.probe.path_and_query,
            "/model-versions/get-artifact?name=my%20model&version=3&presigned=true"
        );
        for refused in [
            "/model-versions/get-artifact?path=x&name=m",
            "/model-versions/get-artifact?path=x&version=1",
            "/model-versions/get-artifact?name=m&version=1",
        ] {
            assert!(
                ask(ArtifactSource::ModelVersion, Method::GET, refused).is_none(),
                "{refused}"
            );
        }
        let model = || ArtifactSource::LoggedModel {
            model_id: "m-1 x".into(),
        };
        // Checked decoded, joined as it came (the handler discards the checked form).
        let a = ask(
            model(),
            Method::GET,
            "/ajax-api/2.0/mlflow/logged-models/m-1%20x/artifacts/files?artifact_file_path=a%2520b&presigned=TRUE",
        )
        .unwrap();
        assert_eq!(a.relative, "a%20b");
        assert!(!a.presigned);
        assert_eq!(
            a.probe.path_and_query,
            "/ajax-api/2.0/mlflow/logged-models/m-1%20x/artifacts/files?presigned=TRUE"
        );
        assert!(
            ask(
                model(),
                Method::GET,
                "/ajax-api/2.0/mlflow/logged-models/m/artifacts/files?artifact_file_path="
            )
            .is_none()
        );
    }
}
