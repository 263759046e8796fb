//! Multipart uploads nobody will finish. Aborts that failed (S3 down at the time) are tried
//! again until they succeed, and open uploads under the destination prefix older than
//! `PROXY_STALE_UPLOAD_AGE_HOURS` (left by a crash, a kill, an outage that outlived the retries,
//! another replica) are aborted, so that an interrupted upload leaves no parts behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::artifacts::state::App;
use crate::store::s3::StoreError;

/// How often due abort retries are looked at.
const TICK: Duration = Duration::from_secs(1);
/// The first sweep runs this long after start, then every age / 4, within these bounds.
const FIRST_SWEEP: Duration = Duration::from_secs(5);
const SWEEP_EVERY_MIN: Duration = Duration::from_secs(60);
const SWEEP_EVERY_MAX: Duration = Duration::from_secs(3600);

/// Run until the proxy stops (the task is aborted).
pub async fn run(app: Arc<App>) {
    let mut sweep_age = app.upload.stale_upload_age;
    let every = sweep_age.map_or(SWEEP_EVERY_MAX, |age| {
        (age / 4).clamp(SWEEP_EVERY_MIN, SWEEP_EVERY_MAX)
    });
    let mut next_sweep = Instant::now() + FIRST_SWEEP;
    loop {
        tokio::time::sleep(TICK).await;
        app.retry_aborts().await;
        let Some(age) = sweep_age else { continue };
        if Instant::now() < next_sweep {
            continue;
        }
        next_sweep = Instant::now() + every;
        match sweep(&app, age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("aborted {n} stale multipart upload(s)"),
            Err(e) if unsupported(&e) => {
                // s3s-fs, for one: nothing to sweep with; say so once, quietly.
                tracing::info!(
                    "the store does not list multipart uploads ({e}); the stale-upload sweep is off"
                );
                sweep_age = None;
            }
            Err(e) => tracing::warn!("stale-upload sweep failed, will try again: {e}"),
        }
    }
}

fn unsupported(error: &StoreError) -> bool {
    matches!(error, StoreError::Status { status: 501, .. })
}

/// Abort the uploads under the destination prefix initiated at least `age` ago that this
/// proxy is not writing (`stale_uploads`, the one sweeper); returns how many were aborted.
pub async fn sweep(app: &App, age: Duration) -> Result<usize, StoreError> {
    let report =
        crate::store::stale_uploads::sweep(&app.store, age, |id| app.is_active_upload(id)).await?;
    app.metrics
        .multipart_uploads
        .with_label_values(&["swept"])
        .inc_by(report.aborted as u64);
    Ok(report.aborted)
}
