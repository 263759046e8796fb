//! Abandoned multipart uploads (created, never completed or aborted: the client died) keep their
//! parts in the store, billed and invisible. This is the one sweeper: the one-shot `sweep-uploads`
//! subcommand (for a cron job) and the running proxy's periodic sweep (`artifacts::upload::sweep`,
//! which also retries failed aborts) both call [`sweep`], so both read the same uploads and dates.
//!
//! Safe from every replica at once and from a cron job: it reads its work from S3
//! (ListMultipartUploads) and aborting an upload twice is harmless. It never touches an upload
//! younger than the age, so uploads in progress on any replica are left alone; a replica that
//! shuts down aborts nothing (other replicas may be serving the same upload).

use std::time::Duration;

use crate::signing::now_secs;
use crate::store::s3::{Store, StoreError};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub open: usize,
    pub aborted: usize,
    pub failed: usize,
}

/// Abort every upload under the store's prefix initiated at least `age` ago, but those whose
/// upload id `in_use` names (a running proxy's own, still being written).
pub async fn sweep(
    store: &Store,
    age: Duration,
    in_use: impl Fn(&str) -> bool,
) -> Result<SweepReport, StoreError> {
    // `prefix/`, not `prefix`: a destination `s3://b/mlflow` must not sweep `mlflow-other/`.
    let root = match store.root() {
        "" => String::new(),
        root if root.ends_with('/') => root.to_owned(),
        root => format!("{root}/"),
    };
    let open = store.list_multipart_uploads(&root).await?;
    let mut report = SweepReport {
        open: open.len(),
        ..SweepReport::default()
    };
    for (key, upload_id, initiated) in stale(open, now_secs(), age) {
        if in_use(&upload_id) {
            continue;
        }
        match store.abort_multipart(&key, &upload_id).await {
            Ok(()) => {
                report.aborted += 1;
                tracing::info!(key, initiated, "aborted a stale multipart upload");
            }
            // Another replica got there first.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                report.failed += 1;
                tracing::warn!(key, "could not abort stale upload {upload_id}: {e}");
            }
        }
    }
    Ok(report)
}

/// The uploads initiated at least `age` before `now`; one whose time cannot be read (or that
/// is not UTC) is left: the sweep never removes what it cannot date.
fn stale(
    open: Vec<(String, String, String)>,
    now: u64,
    age: Duration,
) -> Vec<(String, String, String)> {
    let cutoff = now.saturating_sub(age.as_secs());
    open.into_iter()
        .filter(|(key, _, initiated)| match parse_timestamp(initiated) {
            Some(started) => started <= cutoff,
            None => {
                tracing::warn!(
                    key,
                    "upload with an unreadable Initiated time {initiated:?}: left"
                );
                false
            }
        })
        .collect()
}

/// `2026-11-30T19:00:00.000Z` (S3's Initiated, LastModified; `+00:00` also, no fraction also) →
/// Unix seconds. UTC only: another offset is unreadable.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let text = text.trim();
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let mut clock = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&hour)
        || !(0..=59).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_timestamp, stale};
    use std::time::Duration;

    #[test]
    fn only_uploads_older_than_the_age_are_stale() {
        let upload =
            |key: &str, initiated: &str| (key.to_owned(), "id".to_owned(), initiated.to_owned());
        let now = parse_timestamp("2026-11-30T19:00:00.000Z").unwrap();
        let open = vec![
            upload("old", "2026-11-29T18:59:59.000Z"),
            upload("exactly-a-day", "2026-11-29T19:00:00.000Z"),
            upload("young", "2026-11-30T18:00:00.000Z"),
            upload("unreadable", "yesterday"),
            // In the future (clock skew): left alone.
            upload("future", "2026-12-30T10:00:00.000Z"),
        ];
        let keys: Vec<String> = stale(open, now, Duration::from_secs(24 * 3600))
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        assert_eq!(keys, ["old", "exactly-a-day"]);
    }

    #[test]
    fn s3_timestamps() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_timestamp("2026-11-30T19:00:00.000Z"),
            Some(1_796_065_200)
        );
        assert_eq!(parse_timestamp("2000-02-29T12:30:15Z"), Some(951_827_415));
        assert_eq!(
            parse_timestamp("2000-03-01T00:00:00.000Z"),
            Some(951_868_800)
        );
        assert_eq!(
            parse_timestamp("2026-11-30T19:04:05+00:00"),
            Some(1_796_065_445)
        );
        assert_eq!(parse_timestamp("nonsense"), None);
        assert_eq!(parse_timestamp("2026-11-30 19:04:05"), None);
        // Another offset is not read as UTC.
        assert_eq!(parse_timestamp("2026-11-30T19:04:05+02:00"), None);
    }
}
