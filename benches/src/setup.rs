//! What every bench driver sets up the same way: the store credentials and bucket, where the
//! workspace, the target folder and the stack's tools are, the knobs read from the environment,
//! the scratch folder, the load client's runtime, and the `main` prologue that turns the bench
//! binary into the embedded S3 server when asked (`s3store::start_s3s_fs` starts it so).

use std::path::{Path, PathBuf};

// The store's credentials and bucket live with the store (so that `s3store` does not reach back
// up here); drivers keep finding them in `setup`.
pub use crate::s3store::{ACCESS_KEY, BUCKET, SECRET_KEY};

/// The repository root (the bench crate sits one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where results are written: `CARGO_TARGET_DIR`, else `target/` of the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// The native stack's tools folder (`bin/s3s-fs`, `bin/garage`): `MLFLOW_STACK_TOOLS`, else
/// `~/.cache/mlflow-stack/tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("MLFLOW_STACK_TOOLS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/mlflow-stack/tools")
        },
        PathBuf::from,
    )
}

/// A whole number from the environment (None when unset or not a number).
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A switch from the environment: set, not empty and not `0`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `BENCH_QUICK=1`: the quick variant of every bench.
pub fn quick() -> bool {
    env_flag("BENCH_QUICK")
}

/// The load client's runtime: one thread, so the client never takes more than one core.
pub fn client_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// A scratch folder `$TMPDIR/<prefix>-<pid>` (S3 files, logs), removed when dropped, also on
/// error, unless `BENCH_KEEP` is set.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn create(prefix: &str) -> Result<Scratch, String> {
        Scratch::create_in(&std::env::temp_dir(), prefix)
    }

    /// `<parent>/<prefix>-<pid>` (e.g. on a tmpfs), removed as `create`'s is.
    pub fn create_in(parent: &Path, prefix: &str) -> Result<Scratch, String> {
        let dir = parent.join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A bench's whole `main`: `--list` (from `cargo test --benches`) lists nothing,
/// `BENCH_ROLE=s3s-fs` (set by `s3store::start_s3s_fs` when no s3s-fs binary is installed) makes
/// this process the embedded S3 server, and otherwise `run` runs; its error ends the process
/// with status 1.
pub fn bench_main(run: impl FnOnce() -> Result<(), String>) {
    if handled_role_or_list() {
        return;
    }
    if let Err(e) = run() {
        eprintln!("\nbench failed: {e}");
        std::process::exit(1);
    }
}

/// `--list`, or the embedded S3 server's role (see `bench_main`): true when `main` has nothing
/// more to do.
pub fn handled_role_or_list() -> bool {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("s3s-fs") {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let port = var("BENCH_S3_PORT", "0").parse().unwrap_or(0);
        let (access_key, secret_key) = (
            var("BENCH_S3_ACCESS_KEY", ACCESS_KEY),
            var("BENCH_S3_SECRET_KEY", SECRET_KEY),
        );
        let root = var("BENCH_S3_ROOT", "");
        if let Err(e) = crate::servers::run_embedded_s3s_fs(&root, port, &access_key, &secret_key) {
            eprintln!("embedded s3s-fs: {e}");
            std::process::exit(1);
        }
        return true;
    }
    std::env::args().any(|a| a == "--list")
}
