//! Asking MLflow, as an admin, whether a run, logged model or trace still exists, and which runs
//! and logged models registered model versions point at. Only MLflow's definite "does not exist"
//! (404 `RESOURCE_DOES_NOT_EXIST`) makes a folder an orphan; any other answer (401, 403, 5xx, no
//! answer) stops the command before it deletes anything more.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

use super::layout::{Kind, ids_in};
use crate::store::s3::{Connector, http_client};
use crate::wire::body::{ProxyBody, empty};

/// A page of model versions, with their tags, stays far below this.
const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Attempts of one call when MLflow is briefly away (502/503/504, no connection, no answer).
const ATTEMPTS: u32 = 3;

/// How the command proves who it is: MLflow's client variables, so an admin's usual settings work.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

pub struct Mlflow {
    http: Client<Connector, ProxyBody>,
    base: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Mlflow {
    pub fn new(
        tracking_uri: &str,
        credentials: &Credentials,
        timeout: Duration,
    ) -> Result<Mlflow, String> {
        let base = tracking_uri.trim_end_matches('/').to_owned();
        let uri: http::Uri = base
            .parse()
            .map_err(|e| format!("MLFLOW_TRACKING_URI={tracking_uri:?} is not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(format!(
                "MLFLOW_TRACKING_URI={tracking_uri:?} must be an http:// or https:// URL (the proxy, or MLflow itself)"
            ));
        }
        let authorization = match credentials {
            Credentials {
                token: Some(token), ..
            } => Some(format!("Bearer {token}")),
            Credentials {
                username: Some(user),
                password,
                ..
            } => {
                let pair = format!("{user}:{}", password.as_deref().unwrap_or(""));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            _ => None,
        }
        .map(|value| HeaderValue::from_str(&value).map_err(|_| "unusable MLflow credentials"))
        .transpose()?;
        Ok(Mlflow {
            http: http_client(None)?,
            base,
            authorization,
            timeout,
        })
    }

    /// MLflow's workspaces scope every lookup to one workspace: a run of another workspace would
    /// look deleted. Until the scan knows workspaces, it refuses to run against them.
    pub async fn refuse_workspaces(&self) -> Result<(), String> {
        let (status, body) = self.get("/api/3.0/mlflow/server-info").await?;
        if status == StatusCode::OK && body.get("workspaces_enabled") == Some(&Value::Bool(true)) {
            return Err(
                "MLflow runs with workspaces enabled: gc does not scan workspaces yet, and nothing was deleted"
                    .into(),
            );
        }
        // An MLflow without server-info predates workspaces.
        Ok(())
    }

    /// Whether MLflow still has the object (a deleted-but-not-collected one counts as existing).
    pub async fn exists(&self, kind: Kind, id: &str) -> Result<bool, String> {
        let path = match kind {
            Kind::Run => format!("/api/2.0/mlflow/runs/get?run_id={id}"),
            Kind::LoggedModel => format!("/api/2.0/mlflow/logged-models/{id}?allow_deleted=true"),
            Kind::Trace => format!("/api/3.0/mlflow/traces/{id}"),
        };
        let (status, body) = self.get(&path).await?;
        match status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND
                if body.get("error_code").and_then(Value::as_str)
                    == Some("RESOURCE_DOES_NOT_EXIST") =>
            {
                Ok(false)
            }
            _ => Err(format!(
                "MLflow answered {status} to GET {path} ({}): stopping; an admin's credentials are needed (MLFLOW_TRACKING_USERNAME/PASSWORD)",
                summary(&body)
            )),
        }
    }

    /// Every run and logged-model id a registered model version points at, with the first
    /// version that does (`name` version `n`): their files are the version's files.
    pub async fn registered_references(&self) -> Result<HashMap<String, String>, String> {
        let mut references = HashMap::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = "/api/2.0/mlflow/model-versions/search?max_results=1000".to_owned();
            if let Some(token) = &token {
                path.push_str("&page_token=");
                path.extend(utf8_percent_encode(token, NON_ALPHANUMERIC));
            }
            let (status, body) = self.get(&path).await?;
            if status != StatusCode::OK {
                return Err(format!(
                    "MLflow answered {status} to GET {path} ({}): stopping",
                    summary(&body)
                ));
            }
            for version in body
                .get("model_versions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(fields) = version.as_object() else {
                    continue;
                };
                let name = format!(
                    "registered model {:?} version {}",
                    fields.get("name").and_then(Value::as_str).unwrap_or("?"),
                    fields.get("version").and_then(Value::as_str).unwrap_or("?")
                );
                for text in fields.values().filter_map(Value::as_str) {
                    for id in ids_in(text) {
                        references
                            .entry(id.to_owned())
                            .or_insert_with(|| name.clone());
                    }
                }
            }
            match body.get("next_page_token").and_then(Value::as_str) {
                Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                _ => return Ok(references),
            }
        }
    }

    /// GET a JSON answer; retried while MLflow is briefly away.
    async fn get(&self, path_and_query: &str) -> Result<(StatusCode, Value), String> {
        let url = format!("{}{path_and_query}", self.base);
        let mut attempt = 1;
        loop {
            let outcome = self.get_once(&url).await;
            let retry = match &outcome {
                Ok((status, _)) => matches!(status.as_u16(), 502..=504),
                Err(_) => true,
            };
            if !retry || attempt == ATTEMPTS {
                return outcome.map_err(|e| format!("MLflow at {}: {e}", self.base));
            }
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            attempt += 1;
        }
    }

    async fn get_once(&self, url: &str) -> Result<(StatusCode, Value), String> {
        let mut request = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(empty())
            .map_err(|e| e.to_string())?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, authorization.clone());
        }
        let response = crate::wire::timeouts::send(&self.http, request, self.timeout)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(response.into_body(), BODY_LIMIT).collect(),
        )
        .await
        .map_err(|_| format!("no complete answer within {} s", self.timeout.as_secs()))?
        .map_err(|e| e.to_string())?
        .to_bytes();
        // Error pages that are not JSON still carry a status worth reporting.
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, json))
    }
}

/// A short form of an answer, for error messages.
fn summary(body: &Value) -> String {
    let text = match body {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    text.chars().take(200).collect()
}
