//! `mlflow-artifact-proxy gc`: the artifacts MLflow lost track of. Walks the destination for the
//! folders of runs, logged models and traces (`layout`, `walk`), asks MLflow as an admin whether
//! each still exists (`mlflow`), and reports the orphans: folders whose object MLflow no longer
//! has (a gc that died half way, a database restored from an older backup, traces deleted with
//! `delete_traces`, the logged models and traces of a hard-deleted experiment).
//!
//! A dry run by default. With `--delete` it deletes an orphan only if nothing under it was
//! written for `--older-than` and MLflow still says "does not exist" when asked again just
//! before the delete; never a folder a registered model version points at, never outside the
//! destination's prefix (`s3://b/mlflow` never touches `mlflow-other/`), never a folder of no
//! known shape. Folders are checked `--concurrency` at a time, a listing page at a time
//! (bounded memory), with a checkpoint file for resuming (`resume`) and a summary and
//! Prometheus text file at the end (`report`).

pub mod layout;
pub mod mlflow;
mod report;
mod resume;
mod walk;

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

pub use self::layout::{Candidate, Kind};
pub use self::mlflow::Credentials;
use self::mlflow::Mlflow;
pub use self::report::Summary;
use self::resume::Resume;
use self::walk::{Tops, Walk};
use crate::config::GcArgs;
use crate::signing::now_secs;
use crate::store::StoreConfig;
use crate::store::purge::Freed;
use crate::store::s3::Store;
use crate::store::stale_uploads::parse_timestamp;

/// The settings, checked.
#[derive(Clone, Debug)]
pub struct GcConfig {
    pub store: StoreConfig,
    pub tracking_uri: String,
    pub credentials: Credentials,
    pub delete: bool,
    pub older_than: Duration,
    /// As given, for messages.
    pub older_than_text: String,
    pub concurrency: usize,
    /// Destination-relative folders ending with `/`, sorted; None: every experiment folder.
    pub under: Option<Vec<String>>,
    pub resume_file: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub progress_every: Option<Duration>,
    pub s3_timeout: Duration,
    pub mlflow_timeout: Duration,
    pub pause_before_delete: bool,
}

impl GcConfig {
    /// The command line's settings, checked.
    pub fn from_args(args: &GcArgs) -> Result<GcConfig, String> {
        let tracking_uri = args.tracking_uri.clone().ok_or(
            "--tracking-uri (MLFLOW_TRACKING_URI) is required: the proxy's URL, e.g. http://127.0.0.1:5000",
        )?;
        if args.concurrency == 0 {
            return Err("--concurrency (PROXY_GC_CONCURRENCY) must be at least 1".into());
        }
        if args.s3_timeout_secs == 0 || args.mlflow_timeout_secs == 0 {
            return Err("the timeouts must be at least 1 s".into());
        }
        let under = if args.under.is_empty() {
            None
        } else {
            let mut folders = args
                .under
                .iter()
                .map(|path| folder(path))
                .collect::<Result<Vec<_>, _>>()?;
            folders.sort();
            folders.dedup();
            Some(folders)
        };
        Ok(GcConfig {
            store: args.store.build()?,
            tracking_uri,
            credentials: Credentials {
                username: args.username.clone().filter(|u| !u.is_empty()),
                password: args.password.clone(),
                token: args.token.clone().filter(|t| !t.is_empty()),
            },
            delete: args.delete,
            older_than: parse_age(&args.older_than)?,
            older_than_text: args.older_than.clone(),
            concurrency: args.concurrency,
            under,
            resume_file: args
                .resume_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            metrics_file: args
                .metrics_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            progress_every: (args.progress_secs > 0)
                .then(|| Duration::from_secs(args.progress_secs)),
            s3_timeout: Duration::from_secs(args.s3_timeout_secs),
            mlflow_timeout: Duration::from_secs(args.mlflow_timeout_secs),
            pause_before_delete: args.pause_before_delete,
        })
    }
}

/// `12`, `team-a/exp/` → `12/`, `team-a/exp/`; nothing that could leave the destination.
fn folder(path: &str) -> Result<String, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty()
        || path.starts_with('/')
        || trimmed
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!(
            "--under {path:?}: give a folder relative to the destination, such as 12 or team-a/exp"
        ));
    }
    Ok(format!("{trimmed}/"))
}

/// `7d`, `12h`, `30m`, `45s`, `1d12h`, `0` → a duration (MLflow's `--older-than` forms, whole
/// numbers).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || format!("--older-than {text:?}: expected e.g. 7d, 12h, 30m, 1d12h or 0");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut secs: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        secs = n
            .checked_mul(unit)
            .and_then(|s| secs.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// Called with each orphan just before it is re-checked (tests create the object there).
pub type Hook = Arc<dyn Fn(&Candidate) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
/// Where the report's lines go (stdout for the command).
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// What is under one folder.
#[derive(Clone, Debug, Default)]
struct Usage {
    freed: Freed,
    /// The most recent write, as Unix seconds (None: some time S3 gave could not be read).
    newest: Option<u64>,
    newest_text: String,
}

enum Outcome {
    Live,
    Referenced(String),
    /// Nothing under it any more (deleted meanwhile).
    Empty,
    Orphan {
        usage: Usage,
        old_enough: bool,
    },
    Revived {
        usage: Usage,
    },
    Deleted {
        usage: Usage,
        freed: Freed,
    },
    Failed {
        usage: Usage,
        error: String,
    },
}

struct Context<'a> {
    store: &'a Store,
    mlflow: &'a Mlflow,
    root: &'a str,
    references: &'a std::collections::HashMap<String, String>,
    delete: bool,
    older_than: Duration,
    now: u64,
    hook: Option<Hook>,
}

/// One gc run. Errors (MLflow or S3 unreachable, an answer gc cannot read) end it; the summary is
/// reported either way.
pub async fn run(config: GcConfig, hook: Option<Hook>, out: Sink) -> Result<Summary, String> {
    let started = Instant::now();
    let store = Store::new(
        &config.store,
        crate::ops::metrics::Metrics::new(),
        config.s3_timeout,
    )?;
    let mlflow = Mlflow::new(
        &config.tracking_uri,
        &config.credentials,
        config.mlflow_timeout,
    )?;
    // `prefix/`, not `prefix`: a destination `s3://b/mlflow` must never reach `mlflow-other/`.
    let root = match store.root().trim_end_matches('/') {
        "" => String::new(),
        root => format!("{root}/"),
    };
    let destination = format!("s3://{}/{root}", config.store.bucket);
    let resume = config
        .resume_file
        .clone()
        .map(|path| Resume::new(path, destination.clone()));
    let mut summary = Summary::default();
    let mut unknown = 0;
    let hook = match (&hook, config.pause_before_delete) {
        (Some(_), _) | (None, false) => hook,
        (None, true) => Some(stdin_pause(out.clone())),
    };
    let result = async {
        mlflow.refuse_workspaces().await?;
        let references = mlflow.registered_references().await?;
        let resume_after = match &resume {
            Some(resume) => resume.load()?,
            None => None,
        };
        out(&format!(
            "gc: {} under {destination}, orphans last written more than {} ago{}",
            if config.delete {
                "deleting"
            } else {
                "dry run (nothing is deleted)"
            },
            config.older_than_text,
            resume_after
                .as_ref()
                .map_or_else(String::new, |after| format!(", resuming after {after}")),
        ));
        let tops = match &config.under {
            Some(folders) => Tops::Given(folders.clone()),
            None => Tops::Experiments,
        };
        let mut walk = Walk::new(&store, root.clone(), tops, resume_after);
        let context = Context {
            store: &store,
            mlflow: &mlflow,
            root: &root,
            references: &references,
            delete: config.delete,
            older_than: config.older_than,
            now: now_secs(),
            hook: hook.clone(),
        };
        let mut last_progress = Instant::now();
        let walked = async {
            while let Some(chunk) = walk
                .next_chunk()
                .await
                .map_err(|e| format!("listing {destination}: {e}"))?
            {
                let last = chunk.last().map(|c| c.path.clone()).unwrap_or_default();
                let mut outcomes = futures_util::stream::iter(chunk)
                    .map(|candidate| {
                        let context = &context;
                        async move {
                            let outcome = process(context, &candidate).await;
                            (candidate, outcome)
                        }
                    })
                    .buffer_unordered(config.concurrency);
                while let Some((candidate, outcome)) = outcomes.next().await {
                    record(&mut summary, &candidate, outcome?, &config, &out);
                    if let Some(every) = config.progress_every
                        && last_progress.elapsed() >= every
                    {
                        out(&summary.progress_line(&candidate.path));
                        last_progress = Instant::now();
                    }
                }
                if let Some(resume) = &resume {
                    resume.save(&last)?;
                }
            }
            Ok::<(), String>(())
        }
        .await;
        unknown = walk.unknown;
        walked
    }
    .await;
    summary.unknown = unknown;
    for line in summary.final_lines(config.delete, &config.older_than_text) {
        out(&line);
    }
    let result = result.and_then(|()| match summary.failed {
        0 => Ok(()),
        n => Err(format!("{n} orphaned prefixes could not be deleted")),
    });
    if let Some(path) = &config.metrics_file
        && let Err(e) = summary.write_metrics(
            path,
            config.delete,
            result.is_ok(),
            now_secs(),
            started.elapsed().as_secs(),
        )
    {
        tracing::warn!("{e}");
    }
    match result {
        Ok(()) => {
            if let Some(resume) = &resume {
                resume.finish()?;
            }
            Ok(summary)
        }
        Err(e) => Err(e),
    }
}

async fn process(context: &Context<'_>, candidate: &Candidate) -> Result<Outcome, String> {
    let mlflow = context.mlflow;
    if mlflow.exists(candidate.kind, &candidate.id).await? {
        return Ok(Outcome::Live);
    }
    if let Some(version) = context.references.get(&candidate.id) {
        return Ok(Outcome::Referenced(version.clone()));
    }
    let dir = format!("{}{}", context.root, candidate.path);
    let usage = usage(context.store, &dir)
        .await
        .map_err(|e| format!("listing {dir}: {e}"))?;
    if usage.freed.objects == 0 {
        return Ok(Outcome::Empty);
    }
    let cutoff = context.now.saturating_sub(context.older_than.as_secs());
    let old_enough =
        context.older_than.is_zero() || usage.newest.is_some_and(|newest| newest <= cutoff);
    if !context.delete || !old_enough {
        return Ok(Outcome::Orphan { usage, old_enough });
    }
    if let Some(hook) = &context.hook {
        hook(candidate).await;
    }
    // Just before deleting: does MLflow know it now (a restore, a run written meanwhile)?
    if mlflow.exists(candidate.kind, &candidate.id).await? {
        return Ok(Outcome::Revived { usage });
    }
    match crate::store::purge::delete_under(context.store, &dir).await {
        Ok(freed) => Ok(Outcome::Deleted { usage, freed }),
        Err(e) => Ok(Outcome::Failed {
            usage,
            error: e.to_string(),
        }),
    }
}

/// Objects, bytes and the most recent write under `dir`, a page at a time.
async fn usage(store: &Store, dir: &str) -> Result<Usage, crate::store::s3::StoreError> {
    let mut usage = Usage {
        newest: Some(0),
        ..Usage::default()
    };
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(dir, None, after.as_deref(), 1000).await?;
        for entry in &page.objects {
            usage.freed.objects += 1;
            usage.freed.bytes += entry.size;
            let written = parse_timestamp(&entry.last_modified);
            usage.newest = usage.newest.zip(written).map(|(a, b)| a.max(b));
            if entry.last_modified > usage.newest_text {
                usage.newest_text = entry.last_modified.clone();
            }
        }
        after = page.next_start_after();
        if !page.truncated || after.is_none() {
            return Ok(usage);
        }
    }
}

fn record(
    summary: &mut Summary,
    candidate: &Candidate,
    outcome: Outcome,
    config: &GcConfig,
    out: &Sink,
) {
    let kind = candidate.kind;
    summary.checked[kind.index()] += 1;
    let what = format!("{} {}", kind.name(), candidate.path);
    let sizes = |usage: &Usage| {
        format!(
            "{} objects, {} bytes, last written {}",
            usage.freed.objects, usage.freed.bytes, usage.newest_text
        )
    };
    let mut orphan = |usage: &Usage, old_enough: bool| {
        summary.orphans.add(kind, usage.freed);
        if old_enough {
            summary.old_enough.add(kind, usage.freed);
        }
        if let Some(newest) = usage.newest {
            summary.note_oldest(newest, &usage.newest_text);
        }
    };
    match outcome {
        Outcome::Live => summary.live += 1,
        Outcome::Empty => {}
        Outcome::Referenced(version) => {
            summary.referenced += 1;
            out(&format!(
                "gc: kept {what}: MLflow has no such {}, but {version} points at it",
                kind.name()
            ));
        }
        Outcome::Orphan { usage, old_enough } => {
            orphan(&usage, old_enough);
            // An old enough orphan of a --delete run is re-checked, never reported here.
            let verdict = if old_enough {
                "--delete would delete it".to_owned()
            } else {
                format!("younger than {}: kept", config.older_than_text)
            };
            out(&format!("gc: orphan {what}: {} ({verdict})", sizes(&usage)));
        }
        Outcome::Revived { usage } => {
            orphan(&usage, true);
            summary.revived += 1;
            out(&format!(
                "gc: kept {what}: MLflow has the {} again (re-checked just before deleting)",
                kind.name()
            ));
        }
        Outcome::Deleted { usage, freed } => {
            orphan(&usage, true);
            summary.deleted.add(kind, freed);
            out(&format!(
                "gc: deleted orphan {what}: {} objects, {} bytes, last written {}",
                freed.objects, freed.bytes, usage.newest_text
            ));
        }
        Outcome::Failed { usage, error } => {
            orphan(&usage, true);
            summary.failed += 1;
            out(&format!("gc: could not delete orphan {what}: {error}"));
        }
    }
}

/// `--pause-before-delete`: print a line, wait for one on stdin (end of input: stop pausing).
fn stdin_pause(out: Sink) -> Hook {
    let closed = Arc::new(tokio::sync::Mutex::new(false));
    Arc::new(move |candidate: &Candidate| {
        let closed = closed.clone();
        let out = out.clone();
        let line = format!(
            "gc: paused before re-checking {} {} (press Enter)",
            candidate.kind.name(),
            candidate.path
        );
        Box::pin(async move {
            let mut closed = closed.lock().await;
            if *closed {
                return;
            }
            out(&line);
            let read = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                *closed = true;
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("1d12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        for bad in ["", "7", "d", "7w", "-1d", "1.5d", "7d3"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn folders_stay_inside_the_destination() {
        assert_eq!(folder("12"), Ok("12/".into()));
        assert_eq!(folder("team-a/exp/"), Ok("team-a/exp/".into()));
        for bad in ["", "/", "/12", "a/../b", "..", "a//b", "./a"] {
            assert!(folder(bad).is_err(), "{bad}");
        }
    }
}
