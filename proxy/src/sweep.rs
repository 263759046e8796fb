//! Multipart uploads nobody will finish. Aborts that failed (S3 down at the time) are tried
//! again until they succeed, and open uploads under the destination prefix older than
//! `PROXY_STALE_UPLOAD_AGE_HOURS` (left by a crash, a kill, an outage that outlived the retries,
//! another replica) are aborted, so that an interrupted upload leaves no parts behind.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::s3::StoreError;
use crate::state::App;

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

/// Abort the uploads under the destination prefix initiated more than `age` ago that this
/// proxy is not writing; returns how many were aborted.
pub async fn sweep(app: &App, age: Duration) -> Result<usize, StoreError> {
    let open = app.store.list_multipart_uploads(app.store.root()).await?;
    let now = SystemTime::now();
    let mut aborted = 0;
    for (key, upload_id, initiated) in open {
        if !is_stale(&initiated, now, age) || app.is_active_upload(&upload_id) {
            continue;
        }
        match app.store.abort_multipart(&key, &upload_id).await {
            Ok(()) => {
                aborted += 1;
                app.metrics
                    .multipart_uploads
                    .with_label_values(&["swept"])
                    .inc();
                tracing::info!(
                    key,
                    "aborted stale multipart upload {upload_id} ({initiated})"
                );
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(key, "could not abort stale upload {upload_id}: {e}"),
        }
    }
    Ok(aborted)
}

/// Whether an upload initiated at `initiated` (S3's ISO 8601) is older than `age`. An
/// unreadable date is not stale: the sweep never removes what it cannot date.
fn is_stale(initiated: &str, now: SystemTime, age: Duration) -> bool {
    match parse_iso8601(initiated) {
        Some(at) => now.duration_since(at).is_ok_and(|elapsed| elapsed > age),
        None => false,
    }
}

/// `2026-11-30T19:04:05.123Z` (or `+00:00`, or no fraction) → the instant, UTC only.
fn parse_iso8601(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let mut time = time.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_s3_writes_them() {
        let at = |s: &str| {
            parse_iso8601(s)
                .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs())
                .unwrap_or(0)
        };
        assert_eq!(at("1970-01-01T00:00:00Z"), 0);
        assert_eq!(at("2000-03-01T00:00:00.000Z"), 951_868_800);
        assert_eq!(at("2026-11-30T19:04:05.123Z"), 1_796_065_445);
        assert_eq!(at("2026-11-30T19:04:05+00:00"), 1_796_065_445);
        assert!(parse_iso8601("2026-11-30 19:04:05").is_none());
        assert!(parse_iso8601("yesterday").is_none());
        assert!(parse_iso8601("2026-11-30T19:04:05+02:00").is_none());
    }

    #[test]
    fn only_old_uploads_are_stale() {
        let now = UNIX_EPOCH + Duration::from_secs(1_796_065_445);
        let day = Duration::from_secs(86_400);
        assert!(is_stale("2026-11-28T19:04:05.000Z", now, day));
        assert!(!is_stale("2026-11-30T10:00:00.000Z", now, day));
        // In the future (clock skew) or undated: left alone.
        assert!(!is_stale("2026-12-30T10:00:00.000Z", now, day));
        assert!(!is_stale("", now, day));
    }
}
