//! One error type for the proxy, recording which side failed, and the one function that
//! turns it into MLflow's JSON error shape.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::mlflow::json::{Dialect, dumps};
use crate::wire::body::{ProxyBody, full};

/// Who is to blame: decides the status class and what the access log says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse (4xx).
    Client,
    /// The S3 store failed or could not be reached (502/503).
    Store,
    /// The MLflow server failed or could not be reached (502).
    Upstream,
    /// A bug or resource problem of ours (500).
    Internal,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Store => "store",
            Side::Upstream => "upstream",
            Side::Internal => "proxy",
        }
    }
}

#[derive(Debug)]
enum Payload {
    /// `{"error_code": ..., "message": ...}` plus MLflow's derived `sqlstate`/`error_class`.
    Mlflow { code: &'static str, message: String },
    /// FastAPI's `HTTPException`: `{"detail": ...}`.
    Detail(String),
}

#[derive(Debug)]
pub struct ProxyError {
    pub side: Side,
    pub status: StatusCode,
    payload: Payload,
    dialect: Dialect,
}

impl ProxyError {
    pub fn mlflow(
        side: Side,
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ProxyError {
            side,
            status,
            payload: Payload::Mlflow {
                code,
                message: message.into(),
            },
            dialect: Dialect::Flask,
        }
    }

    /// A FastAPI `HTTPException` (the stock download/upload routes use these).
    pub fn detail(status: StatusCode, detail: impl Into<String>) -> Self {
        ProxyError {
            side: Side::Client,
            status,
            payload: Payload::Detail(detail.into()),
            dialect: Dialect::FastApi,
        }
    }

    pub fn invalid_path() -> Self {
        Self::mlflow(
            Side::Client,
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER_VALUE",
            "Invalid path",
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::mlflow(
            Side::Client,
            StatusCode::NOT_FOUND,
            "RESOURCE_DOES_NOT_EXIST",
            message,
        )
    }

    pub fn not_implemented(message: &str) -> Self {
        Self::mlflow(
            Side::Client,
            StatusCode::NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED",
            message,
        )
    }

    pub fn store(status: StatusCode, message: impl Into<String>) -> Self {
        Self::mlflow(Side::Store, status, "TEMPORARILY_UNAVAILABLE", message)
    }

    /// S3 or MLflow did not answer within its timeout: MLflow's own code for a 504.
    pub fn timed_out(side: Side, message: impl Into<String>) -> Self {
        Self::mlflow(
            side,
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            message,
        )
    }

    /// The client's request body went silent for the body idle timeout (408; the caller counts it
    /// in `body_idle_timeouts`).
    pub fn body_stalled(message: impl Into<String>) -> Self {
        Self::mlflow(
            Side::Client,
            StatusCode::REQUEST_TIMEOUT,
            "BAD_REQUEST",
            message,
        )
    }

    pub fn upstream(message: impl Into<String>) -> Self {
        Self::mlflow(
            Side::Upstream,
            StatusCode::BAD_GATEWAY,
            "TEMPORARILY_UNAVAILABLE",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::mlflow(
            Side::Internal,
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            message,
        )
    }

    /// Serialise as the FastAPI routes do (compact, UTF-8) instead of Flask's spacing.
    #[must_use]
    pub fn fastapi(mut self) -> Self {
        self.dialect = Dialect::FastApi;
        self
    }

    /// The same error as a Flask route of MLflow's answers it: the `MlflowException` a FastAPI
    /// route turns into `{"detail": ...}` stays in MLflow's own shape, with Flask's spacing.
    #[must_use]
    pub fn flask(mut self) -> Self {
        if let Payload::Detail(message) = &mut self.payload {
            let code = match self.status {
                StatusCode::BAD_REQUEST => "INVALID_PARAMETER_VALUE",
                StatusCode::NOT_FOUND => "RESOURCE_DOES_NOT_EXIST",
                _ => "INTERNAL_ERROR",
            };
            self.payload = Payload::Mlflow {
                code,
                message: std::mem::take(message),
            };
        }
        self.dialect = Dialect::Flask;
        self
    }

    pub fn message(&self) -> &str {
        match &self.payload {
            Payload::Mlflow { message, .. } | Payload::Detail(message) => message,
        }
    }

    fn body(&self) -> Value {
        match &self.payload {
            Payload::Detail(detail) => json!({ "detail": detail }),
            Payload::Mlflow { code, message } => {
                let mut body = json!({ "error_code": code, "message": message });
                if let Some((sqlstate, class)) = classification(code) {
                    body["sqlstate"] = json!(sqlstate);
                    body["error_class"] = json!(class);
                }
                body
            }
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let text = dumps(&self.body(), self.dialect);
        let mut response = Response::new(full(Bytes::from(text)));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.extensions_mut().insert(FailedSide(self.side));
        response
    }
}

/// Marks a response produced from an error, so that the access log can say who failed.
#[derive(Clone, Copy, Debug)]
pub struct FailedSide(pub Side);

/// `mlflow.error_classification`: the `sqlstate`/`error_class` derived from an error code.
fn classification(code: &str) -> Option<(&'static str, &'static str)> {
    match code {
        "INVALID_PARAMETER_VALUE" | "BAD_REQUEST" => Some(("KAM00", "INVALID_PARAMETER_VALUE")),
        "RESOURCE_DOES_NOT_EXIST" => Some(("KAM00", "RESOURCE_NOT_FOUND")),
        "PERMISSION_DENIED" => Some(("KAM00", "PERMISSION_DENIED")),
        "INTERNAL_ERROR" | "TEMPORARILY_UNAVAILABLE" => Some(("XXM00", "CLIENT_INTERNAL_ERROR")),
        _ => None,
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status,
            self.side.as_str(),
            self.message()
        )
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_path_matches_mlflow_bytes() {
        let flask = dumps(&ProxyError::invalid_path().body(), Dialect::Flask);
        assert_eq!(
            flask,
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path", "sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}"#
        );
        let fast = ProxyError::invalid_path().fastapi();
        assert_eq!(
            dumps(&fast.body(), fast.dialect),
            r#"{"error_code":"INVALID_PARAMETER_VALUE","message":"Invalid path","sqlstate":"KAM00","error_class":"INVALID_PARAMETER_VALUE"}"#
        );
    }

    #[test]
    fn flask_keeps_mlflows_shape() {
        // What stock's `/get-artifact` answers for a directory (FastAPI's routes say `detail`).
        let error = ProxyError::detail(
            StatusCode::BAD_REQUEST,
            "Artifact path refers to a directory, not a file: '1/r/artifacts/d'",
        )
        .flask();
        assert_eq!(
            dumps(&error.body(), error.dialect),
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Artifact path refers to a directory, not a file: '1/r/artifacts/d'", "sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}"#
        );
        let missing = ProxyError::not_found("No such artifact: 'x'")
            .fastapi()
            .flask();
        assert_eq!(missing.dialect, Dialect::Flask);
    }
}
