//! What the auth bench measures against: the users, experiment, run and artifact it makes in
//! MLflow as the admin, and the check that each target answers as its row says.

use benches::stack::{self, MlflowApi};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "bench-admin-password-1";
pub const READER: &str = "reader";
pub const READER_PASSWORD: &str = "reader-password-1";
pub const DENIED: &str = "denied";
pub const DENIED_PASSWORD: &str = "denied-password-1";

/// An experiment and a run made by the admin, one reader (READ grant), one user with DENY, and
/// the artifact `data`, written through MLflow's own artifact route. Returns the artifact's path
/// (`<exp>/<run>/artifacts/small.bin`).
pub async fn create(admin: &MlflowApi, data: &Bytes) -> Result<String, String> {
    for (user, password) in [(READER, READER_PASSWORD), (DENIED, DENIED_PASSWORD)] {
        admin
            .post(
                "/api/2.0/mlflow/users/create",
                &json!({"username": user, "password": password}),
            )
            .await?;
    }
    let exp = admin
        .post(
            "/api/2.0/mlflow/experiments/create",
            &json!({"name": "bench-auth"}),
        )
        .await?["experiment_id"]
        .as_str()
        .ok_or("experiments/create: no experiment_id")?
        .to_owned();
    let run = admin
        .post(
            "/api/2.0/mlflow/runs/create",
            &json!({"experiment_id": exp}),
        )
        .await?["run"]["info"]["run_id"]
        .as_str()
        .ok_or("runs/create: no run_id")?
        .to_owned();
    for (user, permission) in [(READER, "READ"), (DENIED, "DENY")] {
        admin
            .post(
                "/api/3.0/mlflow/users/permissions/grant",
                &json!({"username": user, "resource_type": "experiment", "resource_id": exp, "permission": permission}),
            )
            .await?;
    }
    let artifact = format!("{exp}/{run}/artifacts/small.bin");
    admin.put_artifact(&artifact, data.clone()).await?;
    Ok(artifact)
}

/// The status of one GET of `path` on `url` as `authorization` (None: anonymous).
async fn status_of(
    url: &str,
    path: &str,
    authorization: Option<&str>,
) -> Result<(StatusCode, Bytes), String> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    stack::send(url, Method::GET, path, &headers, Bytes::new()).await
}

/// Each target is what its row says: (name, URL, whether it checks permissions). The reader
/// gets the exact bytes everywhere; where permissions are checked anonymous gets 401 and the
/// DENY user 403, elsewhere both get 200.
pub async fn check(targets: &[(&str, &str, bool)], path: &str, data: &Bytes) -> Result<(), String> {
    let reader = stack::basic_auth(READER, READER_PASSWORD);
    let denied = stack::basic_auth(DENIED, DENIED_PASSWORD);
    for &(name, url, checks) in targets {
        let (status, body) = status_of(url, path, Some(&reader)).await?;
        if status != StatusCode::OK || body != *data {
            return Err(format!(
                "{name}: the reader's GET answered {status} ({} bytes)",
                body.len()
            ));
        }
        let anonymous = status_of(url, path, None).await?.0;
        let refused = status_of(url, path, Some(&denied)).await?.0;
        let expected = if checks {
            (StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN)
        } else {
            (StatusCode::OK, StatusCode::OK)
        };
        if (anonymous, refused) != expected {
            return Err(format!(
                "{name}: anonymous {anonymous}, DENY user {refused}; expected {} and {}",
                expected.0, expected.1
            ));
        }
        println!(
            "  check {name}: reader 200 (same bytes), anonymous {anonymous}, DENY user {refused}"
        );
    }
    Ok(())
}
