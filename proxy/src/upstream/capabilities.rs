//! Which MLflow runs behind the proxy, and how, learned from MLflow itself and asked again every
//! `PROXY_MLFLOW_RECHECK_SECS`: the modes its server-info reports (`workspaces_enabled`,
//! `artifacts_presigned_only`) and which release's artifact rules apply. server-info is open
//! even with MLflow's auth app on; `/version` is not, so the release is read from `/version`
//! when it answers, else from server-info's contract (3.18 added `artifacts_presigned_only`).
//! The artifact routes follow those rules and modes (`artifacts::scope`, `workspaces`). Until MLflow
//! has answered once, the artifact routes answer 503 (never a guess; `/readyz?deep=1` says so too);
//! the URLs the proxy signed itself keep working. Once known, a question that fails (MLflow busy,
//! restarting) changes nothing: only an answer does, so an MLflow outage does not stop artifact
//! traffic that needs no MLflow, and a restarted MLflow's new release or flags apply within the
//! re-check interval of its first answer.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use clap::Args;
use http::{HeaderMap, Method, StatusCode, header};

use crate::upstream::ask::{Asker, Target};
use crate::upstream::workspaces::Checker;
use crate::wire::error::{ProxyError, Side};

/// How long one question may take (server-info is slow on a busy MLflow).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed attempt, requests are refused for this long without asking again, so an
/// unreachable MLflow is not asked once per request.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// An MLflow release, `major.minor.patch` (pre-release and local tails ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// The release that made skill content immutable and workspace prefixes case-insensitive.
    pub const V3_18: Version = Version::new(3, 18, 0);
    /// The pin (mlflow-image/requirements.txt).
    pub const V3_17_2: Version = Version::new(3, 17, 2);

    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// `3.18.0`, `3.18.0rc1`, `3.18.1.dev0`: the leading three numbers.
    pub fn parse(text: &str) -> Option<Version> {
        let mut numbers = text.trim().splitn(3, '.').map(|part| {
            let digits: &str = &part[..part
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(part.len())];
            digits.parse::<u32>().ok()
        });
        let major = numbers.next()??;
        let minor = numbers.next()??;
        let patch = numbers.next().flatten().unwrap_or(0);
        Some(Version::new(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What the proxy knows about the MLflow behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The release, when `/version` says (it needs credentials while the auth app is on).
    pub version: Option<Version>,
    /// MLflow 3.18's artifact rules apply.
    pub rules_3_18: bool,
    /// `mlflow server --enable-workspaces`.
    pub workspaces: bool,
    /// `mlflow server --artifacts-presigned-only` (3.18+).
    pub presigned_only: bool,
}

/// The key 3.18 added to server-info, always sent from then on.
const KEY_SINCE_3_18: &str = "artifacts_presigned_only";

impl Capabilities {
    /// The pin, without workspaces or presigned-only: what tests of other parts run against.
    pub fn pinned() -> Self {
        Capabilities {
            version: Some(Version::V3_17_2),
            rules_3_18: false,
            workspaces: false,
            presigned_only: false,
        }
    }

    /// MLflow 3.18+: skill uploads cannot be overwritten, deleted or re-uploaded.
    pub fn skills_immutable(&self) -> bool {
        self.rules_3_18
    }

    /// MLflow 3.18+: `workspaces/` is recognised in any letter case.
    pub fn workspace_prefix_any_case(&self) -> bool {
        self.rules_3_18
    }

    /// From server-info's JSON and, if it answered, `/version`'s text; None if what answered
    /// cannot be read.
    pub fn read(version: Option<&str>, server_info: &[u8]) -> Option<Capabilities> {
        let info: serde_json::Value = serde_json::from_slice(server_info).ok()?;
        let info = info.as_object()?;
        // Keys a release does not know are off (3.17 has no presigned-only mode).
        let flag = |key: &str| info.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
        let version = match version {
            Some(text) => Some(Version::parse(text)?),
            None => None,
        };
        Some(Capabilities {
            version,
            rules_3_18: version.map_or(info.contains_key(KEY_SINCE_3_18), |v| v >= Version::V3_18),
            workspaces: flag("workspaces_enabled"),
            presigned_only: flag("artifacts_presigned_only"),
        })
    }

    fn describe(&self) -> String {
        let release = match (self.version, self.rules_3_18) {
            (Some(v), _) => format!("MLflow {v}"),
            (None, true) => "MLflow 3.18+ (its version needs credentials)".to_owned(),
            (None, false) => "MLflow before 3.18 (its version needs credentials)".to_owned(),
        };
        format!(
            "{release}, workspaces: {}, presigned-only: {}",
            self.workspaces, self.presigned_only
        )
    }
}

#[derive(Clone, Debug, Args)]
pub struct CapabilitiesArgs {
    /// How often to ask MLflow again for its version and modes (workspaces, presigned-only), in
    /// seconds. A change (an upgrade, a restart with other flags) applies within this time.
    #[arg(long, env = "PROXY_MLFLOW_RECHECK_SECS", default_value_t = 10)]
    pub mlflow_recheck_secs: u64,
}

impl CapabilitiesArgs {
    pub fn build(&self) -> Result<CapabilitiesConfig, String> {
        if self.mlflow_recheck_secs == 0 {
            return Err("PROXY_MLFLOW_RECHECK_SECS must be at least 1".to_owned());
        }
        Ok(CapabilitiesConfig {
            fixed: None,
            recheck: Duration::from_secs(self.mlflow_recheck_secs),
        })
    }
}

#[derive(Clone, Debug)]
pub struct CapabilitiesConfig {
    /// Known in advance instead of learned (tests of other parts, with a stand-in for MLflow).
    pub fixed: Option<Capabilities>,
    pub recheck: Duration,
}

impl CapabilitiesConfig {
    pub fn fixed(capabilities: Capabilities) -> Self {
        CapabilitiesConfig {
            fixed: Some(capabilities),
            recheck: Duration::from_secs(10),
        }
    }
}

/// Learns and holds what MLflow is.
pub struct Tracker {
    config: CapabilitiesConfig,
    asker: Asker,
    /// Which workspaces MLflow resolves (asked per workspace, kept briefly).
    workspaces: Checker,
    current: RwLock<Option<Arc<Capabilities>>>,
    /// One attempt at a time; holds when the last one failed.
    asking: tokio::sync::Mutex<Option<Instant>>,
}

impl Tracker {
    /// `workspace_ttl`: how long MLflow's answer about a workspace is kept (the auth cache's
    /// lifetime: a deleted workspace stops being served as soon as a revoked grant would).
    pub fn new(config: CapabilitiesConfig, target: Target, workspace_ttl: Duration) -> Self {
        let current = RwLock::new(config.fixed.clone().map(Arc::new));
        Tracker {
            config,
            workspaces: Checker::new(Asker::new(target.clone(), ASK_TIMEOUT), workspace_ttl),
            asker: Asker::new(target, ASK_TIMEOUT),
            current,
            asking: tokio::sync::Mutex::new(None),
        }
    }

    /// What MLflow is now, or the 503 to answer while the proxy cannot tell.
    pub async fn current(&self) -> Result<Arc<Capabilities>, ProxyError> {
        if let Some(known) = self.known() {
            return Ok(known);
        }
        let mut asking = self.asking.lock().await;
        if let Some(known) = self.known() {
            return Ok(known);
        }
        if !asking.is_some_and(|failed| failed.elapsed() < RETRY_AFTER) {
            self.learn(&mut asking).await;
        }
        self.known().ok_or_else(|| {
            ProxyError::mlflow(
                Side::Upstream,
                StatusCode::SERVICE_UNAVAILABLE,
                "TEMPORARILY_UNAVAILABLE",
                "The MLflow server could not be asked which version and modes it runs; artifact requests are refused until it answers",
            )
        })
    }

    /// Whether MLflow resolves the workspace the request's header names (see `Checker`).
    pub async fn workspace_exists(
        &self,
        name: &str,
        header: &http::HeaderValue,
    ) -> Result<bool, String> {
        self.workspaces.exists(name, header).await
    }

    /// The last answer, if the last attempt succeeded.
    pub fn known(&self) -> Option<Arc<Capabilities>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ask again every `recheck` until the process ends (spawned by `Proxy::start`).
    pub async fn recheck_forever(self: Arc<Self>) {
        if self.config.fixed.is_some() {
            return;
        }
        loop {
            {
                let mut asking = self.asking.lock().await;
                self.learn(&mut asking).await;
            }
            tokio::time::sleep(self.config.recheck).await;
        }
    }

    /// One attempt; a failure keeps what was known (it says nothing about a change).
    async fn learn(&self, asking: &mut Option<Instant>) {
        let learned = match self.ask().await {
            Ok(capabilities) => capabilities,
            Err(e) => {
                tracing::warn!("cannot ask MLflow which release and modes it runs: {e}");
                *asking = Some(Instant::now());
                return;
            }
        };
        *asking = None;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() != Some(&learned) {
            tracing::info!("{}", learned.describe());
            *current = Some(Arc::new(learned));
        }
    }

    async fn ask(&self) -> Result<Capabilities, String> {
        let get = |path: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, self.asker.host());
            self.asker.ask(Method::GET, path, headers, None)
        };
        let (version, info) = tokio::join!(get("/version"), get("/api/3.0/mlflow/server-info"));
        let info = info?;
        if info.status != StatusCode::OK {
            return Err(format!("server-info answered {}", info.status));
        }
        // The auth app guards /version (401): server-info's contract tells then.
        let version = version.ok().filter(|v| v.status == StatusCode::OK);
        let text = match &version {
            Some(v) => Some(std::str::from_utf8(&v.body).map_err(|_| "/version is not text")?),
            None => None,
        };
        Capabilities::read(text, &info.body)
            .ok_or_else(|| format!("cannot read /version ({text:?}) and server-info"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Version::parse("3.18.0"), Some(Version::new(3, 18, 0)));
        assert_eq!(Version::parse(" 3.18.1rc2\n"), Some(Version::new(3, 18, 1)));
        assert_eq!(Version::parse("3.19.0.dev0"), Some(Version::new(3, 19, 0)));
        assert_eq!(Version::parse("4.0"), Some(Version::new(4, 0, 0)));
        assert_eq!(Version::parse("three"), None);
        assert_eq!(Version::parse("3"), None);
        assert!(Version::new(3, 17, 2) < Version::V3_18);
        assert!(Version::new(3, 18, 0) >= Version::V3_18);
        assert!(Version::new(4, 0, 0) >= Version::V3_18);
    }

    #[test]
    fn server_info_modes() {
        let info_3_18 = br#"{"workspaces_enabled": true, "artifacts_presigned_only": true}"#;
        let c = Capabilities::read(Some("3.18.0"), info_3_18).unwrap();
        assert!(c.workspaces && c.presigned_only && c.skills_immutable());
        // Behind the auth app /version is not readable: server-info's contract tells.
        let c = Capabilities::read(None, info_3_18).unwrap();
        assert!(c.skills_immutable() && c.version.is_none());
        // 3.17.2's server-info has no presigned-only key.
        let info_3_17 = br#"{"workspaces_enabled": false}"#;
        let c = Capabilities::read(Some("3.17.2"), info_3_17).unwrap();
        assert!(!c.workspaces && !c.presigned_only && !c.skills_immutable());
        assert!(
            !Capabilities::read(None, info_3_17)
                .unwrap()
                .skills_immutable()
        );
        assert_eq!(Capabilities::read(Some("3.17.2"), b"<html>"), None);
        assert_eq!(Capabilities::read(Some("3.17.2"), b"[]"), None);
        assert_eq!(Capabilities::read(Some("three"), info_3_17), None);
    }
}
