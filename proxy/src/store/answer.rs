//! What a client is told when the store fails: the failure in general terms (the endpoint, bucket
//! and key prefix stay in the log), and the S3 error codes that blame the request, not the store.

use http::StatusCode;

use crate::store::s3::StoreError;
use crate::wire::error::{ProxyError, Side};

/// The store failed. The answer names what went wrong in general terms only: the endpoint,
/// bucket and key prefix stay in the log.
pub fn store_error(error: StoreError) -> ProxyError {
    tracing::warn!("S3: {error}");
    match &error {
        StoreError::Unreachable(_) => ProxyError::store(
            StatusCode::SERVICE_UNAVAILABLE,
            "The artifact store cannot be reached",
        ),
        StoreError::TimedOut => {
            ProxyError::timed_out(Side::Store, "The artifact store did not answer in time")
        }
        StoreError::Status { status, message } => match refused_request(*status, message) {
            // The request itself is at fault (a key S3 cannot hold...): retrying cannot help.
            Some(code) => ProxyError::mlflow(
                Side::Client,
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER_VALUE",
                format!("The artifact store refused the request: {code}"),
            ),
            None => ProxyError::store(
                StatusCode::BAD_GATEWAY,
                format!("The artifact store answered {status}"),
            ),
        },
        StoreError::Other(_) => {
            ProxyError::store(StatusCode::BAD_GATEWAY, "The artifact store request failed")
        }
    }
}

/// S3 error codes that blame the request (its key or an argument), not the store.
const CLIENT_CAUSED: &[&str] = &[
    "KeyTooLongError",
    "InvalidArgument",
    "InvalidRequest",
    "InvalidObjectName",
    "InvalidURI",
    "MetadataTooLarge",
];

/// The S3 error code, when it is one the client caused.
fn refused_request(status: u16, message: &str) -> Option<&'static str> {
    if !(400..500).contains(&status) || matches!(status, 401 | 403 | 404) {
        return None;
    }
    let code = message.split(':').next().unwrap_or_default().trim();
    CLIENT_CAUSED.iter().find(|c| **c == code).copied()
}
