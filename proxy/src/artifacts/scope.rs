//! The MLflow a request is answered as: the rules of its version and modes (`capabilities`), and
//! the request's workspace (`workspaces`). Handlers take the paths they serve through it.

use std::sync::Arc;

use http::StatusCode;

use crate::mlflow::skills;
use crate::upstream::capabilities::Capabilities;
use crate::upstream::workspaces::{Workspace, scoped_path};
use crate::wire::error::{ProxyError, Side};

pub struct Scope {
    pub capabilities: Arc<Capabilities>,
    pub workspace: Workspace,
}

impl Scope {
    /// The destination-relative path MLflow serves for a validated path in this request's
    /// workspace (the path itself without workspaces).
    pub fn repo_path(&self, path: &str) -> Result<String, ProxyError> {
        scoped_path(
            path,
            &self.workspace,
            self.capabilities.workspace_prefix_any_case(),
        )
    }

    /// MLflow 3.18+ refuses writes to uploaded skill content: the refusal for a validated path,
    /// if it lies in the skill tree, as the Flask routes (DELETE, `mpu/*`) answer it: MLflow's
    /// `PERMISSION_DENIED` JSON.
    pub fn skill_write(&self, path: &str) -> Result<(), ProxyError> {
        if self.capabilities.skills_immutable() && skills::is_skill_upload_namespace(path) {
            return Err(ProxyError::mlflow(
                Side::Client,
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                skills::IMMUTABLE,
            ));
        }
        Ok(())
    }

    /// The same refusal as the native PUT route answers it: FastAPI's `HTTPException(403)`.
    pub fn skill_upload(&self, path: &str) -> Result<(), ProxyError> {
        self.skill_write(path)
            .map_err(|_| ProxyError::detail(StatusCode::FORBIDDEN, skills::IMMUTABLE))
    }
}
