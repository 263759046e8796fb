//! What a gc run tells its operator: one line per orphan (and per deleted prefix), a progress
//! line now and then, a summary at the end, and the same figures as a Prometheus text file for
//! node_exporter's textfile collector (a one-shot command has no endpoint to scrape).

use std::path::Path;

use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use super::layout::Kind;
use crate::store::purge::Freed;

/// Objects and bytes per kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub prefixes: [u64; 3],
    pub objects: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, kind: Kind, freed: Freed) {
        self.prefixes[kind.index()] += 1;
        self.objects += freed.objects;
        self.bytes += freed.bytes;
    }

    pub fn count(&self) -> u64 {
        self.prefixes.iter().sum()
    }

    fn kinds(&self) -> String {
        format!(
            "{} runs, {} logged models, {} traces",
            self.prefixes[0], self.prefixes[1], self.prefixes[2]
        )
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    /// Candidate folders looked at, per kind.
    pub checked: [u64; 3],
    /// Their object still exists in MLflow.
    pub live: u64,
    /// Orphans a registered model version still points at: kept.
    pub referenced: u64,
    /// Every orphan found (deleted or not).
    pub orphans: Tally,
    /// The orphans old enough to delete.
    pub old_enough: Tally,
    /// The orphan written to least recently: its last write, as S3 wrote it.
    pub oldest: Option<(u64, String)>,
    pub deleted: Tally,
    /// Orphans whose object existed again when re-checked just before deleting.
    pub revived: u64,
    /// Prefixes whose deletion failed.
    pub failed: u64,
    /// Folders of no known shape, left alone.
    pub unknown: u64,
}

impl Summary {
    pub fn note_oldest(&mut self, secs: u64, text: &str) {
        if self
            .oldest
            .as_ref()
            .is_none_or(|(oldest, _)| secs < *oldest)
        {
            self.oldest = Some((secs, text.to_owned()));
        }
    }

    pub fn progress_line(&self, at: &str) -> String {
        format!(
            "gc: progress: {} prefixes checked, {} orphaned ({} objects, {}), {} deleted; at {at}",
            self.checked.iter().sum::<u64>(),
            self.orphans.count(),
            self.orphans.objects,
            human_bytes(self.orphans.bytes),
            self.deleted.count(),
        )
    }

    pub fn final_lines(&self, delete: bool, age: &str) -> Vec<String> {
        let oldest = self
            .oldest
            .as_ref()
            .map_or_else(|| "none".to_owned(), |(_, text)| text.clone());
        let mut lines = vec![format!(
            "gc: checked {} prefixes ({} runs, {} logged models, {} traces): {} exist in MLflow, {} orphaned, {} kept for a registered model version; {} folders of unknown shape left alone",
            self.checked.iter().sum::<u64>(),
            self.checked[0],
            self.checked[1],
            self.checked[2],
            self.live,
            self.orphans.count(),
            self.referenced,
            self.unknown,
        )];
        lines.push(format!(
            "gc: orphaned: {} prefixes ({}), {} objects, {} bytes ({}), oldest last written {oldest}",
            self.orphans.count(),
            self.orphans.kinds(),
            self.orphans.objects,
            self.orphans.bytes,
            human_bytes(self.orphans.bytes),
        ));
        if delete {
            lines.push(format!(
                "gc: deleted {} prefixes ({}), {} objects, {} bytes ({}); kept {} younger than {age}, {} that exist again; {} failed",
                self.deleted.count(),
                self.deleted.kinds(),
                self.deleted.objects,
                self.deleted.bytes,
                human_bytes(self.deleted.bytes),
                self.orphans.count() - self.old_enough.count(),
                self.revived,
                self.failed,
            ));
        } else {
            lines.push(format!(
                "gc: dry run, nothing deleted: --delete would delete {} prefixes older than {age} ({} objects, {} bytes, {})",
                self.old_enough.count(),
                self.old_enough.objects,
                self.old_enough.bytes,
                human_bytes(self.old_enough.bytes),
            ));
        }
        lines
    }

    /// The figures as Prometheus gauges (the last run's), written atomically to `path`.
    pub fn write_metrics(
        &self,
        path: &Path,
        delete: bool,
        success: bool,
        finished_at: u64,
        duration_secs: u64,
    ) -> Result<(), String> {
        let text = self.metrics_text(delete, success, finished_at, duration_secs)?;
        super::resume::write_atomically(path, &text)
    }

    fn metrics_text(
        &self,
        delete: bool,
        success: bool,
        finished_at: u64,
        duration_secs: u64,
    ) -> Result<String, String> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, value: u64| -> Result<(), prometheus::Error> {
            let gauge = IntGauge::with_opts(Opts::new(name, help).namespace("mlflow_proxy_gc"))?;
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(Box::new(gauge))
        };
        let per_kind = |name: &str, help: &str, tally: &Tally| -> Result<(), prometheus::Error> {
            let vec = IntGaugeVec::new(
                Opts::new(name, help).namespace("mlflow_proxy_gc"),
                &["kind"],
            )?;
            for kind in Kind::ALL {
                vec.with_label_values(&[kind.name()])
                    .set(i64::try_from(tally.prefixes[kind.index()]).unwrap_or(i64::MAX));
            }
            registry.register(Box::new(vec))
        };
        (|| -> Result<(), prometheus::Error> {
            gauge(
                "last_run_timestamp_seconds",
                "When the last gc run ended (Unix time).",
                finished_at,
            )?;
            gauge(
                "last_run_success",
                "1 if the last gc run ended without error.",
                u64::from(success),
            )?;
            gauge(
                "last_run_duration_seconds",
                "How long the last gc run took.",
                duration_secs,
            )?;
            gauge(
                "last_run_delete",
                "1 if the last gc run deleted (--delete), 0 for a dry run.",
                u64::from(delete),
            )?;
            gauge(
                "checked_prefixes",
                "Candidate prefixes the last run looked at.",
                self.checked.iter().sum(),
            )?;
            per_kind(
                "orphaned_prefixes",
                "Orphaned prefixes found by the last run, by kind.",
                &self.orphans,
            )?;
            gauge(
                "orphaned_objects",
                "Objects under the orphaned prefixes found by the last run.",
                self.orphans.objects,
            )?;
            gauge(
                "orphaned_bytes",
                "Bytes under the orphaned prefixes found by the last run.",
                self.orphans.bytes,
            )?;
            per_kind(
                "deleted_prefixes",
                "Orphaned prefixes the last run deleted, by kind.",
                &self.deleted,
            )?;
            gauge(
                "deleted_objects",
                "Objects the last run deleted.",
                self.deleted.objects,
            )?;
            gauge(
                "deleted_bytes",
                "Bytes the last run freed.",
                self.deleted.bytes,
            )?;
            gauge(
                "failed_prefixes",
                "Prefixes whose deletion failed in the last run.",
                self.failed,
            )?;
            Ok(())
        })()
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// `5242880` → `5.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let mut summary = Summary::default();
        summary.deleted.add(
            Kind::Trace,
            Freed {
                objects: 2,
                bytes: 10,
            },
        );
        let text = summary.metrics_text(true, true, 1_700_000_000, 3).unwrap();
        assert!(
            text.contains("mlflow_proxy_gc_deleted_prefixes{kind=\"trace\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mlflow_proxy_gc_deleted_bytes 10\n"),
            "{text}"
        );
        assert!(
            text.contains("mlflow_proxy_gc_last_run_success 1\n"),
            "{text}"
        );
    }
}
