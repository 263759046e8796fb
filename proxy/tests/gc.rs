//! Deleting frees the storage: the DELETE route a page at a time, and `gc` (orphaned folders)
//! against a real S3 server and an MLflow stand-in that knows which runs, logged models and
//! traces exist. The real MLflow is in scripts/e2e/test_gc.py.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mlflow_artifact_proxy::commands::gc::{
    self, Candidate, Credentials, GcConfig, Hook, Sink, parse_age,
};
use tokio::net::TcpListener;

const LIVE_RUN: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1";
const ORPHAN_RUN: &str = "0bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb2";
const REFERENCED_RUN: &str = "cccccccccccccccccccccccccccccc03";
const LIVE_MODEL: &str = "m-dddddddddddddddddddddddddddddd04";
const ORPHAN_MODEL: &str = "m-eeeeeeeeeeeeeeeeeeeeeeeeeeeeee05";
const LIVE_TRACE: &str = "tr-ffffffffffffffffffffffffffffff06";
const ORPHAN_TRACE: &str = "tr-00000000000000000000000000000007";

/// The destination's prefix in these tests: `s3://<bucket>/mlflow`.
const PREFIX: &str = "mlflow";

fn planted() -> Vec<(String, Vec<u8>)> {
    let keys = [
        format!("{PREFIX}/1/{LIVE_RUN}/artifacts/a.txt"),
        format!("{PREFIX}/1/{LIVE_RUN}/artifacts/model/MLmodel"),
        format!("{PREFIX}/1/{ORPHAN_RUN}/artifacts/x/y/z.bin"),
        format!("{PREFIX}/1/{ORPHAN_RUN}/artifacts/x/w.bin"),
        format!("{PREFIX}/1/{ORPHAN_RUN}/artifacts/top.txt"),
        format!("{PREFIX}/1/models/{LIVE_MODEL}/artifacts/MLmodel"),
        format!("{PREFIX}/1/models/{ORPHAN_MODEL}/artifacts/MLmodel"),
        format!("{PREFIX}/1/models/{ORPHAN_MODEL}/artifacts/model.pkl"),
        format!("{PREFIX}/1/datasets/d1/data.csv"),
        format!("{PREFIX}/2/{REFERENCED_RUN}/artifacts/model/MLmodel"),
        format!("{PREFIX}/2/traces/{LIVE_TRACE}/artifacts/traces.json"),
        format!("{PREFIX}/2/traces/{ORPHAN_TRACE}/artifacts/traces.json"),
        // Not an experiment folder: never looked into.
        format!("{PREFIX}/backups/{ORPHAN_RUN}/dump.sql"),
        // Outside the destination `s3://<bucket>/mlflow`, though their keys start with `mlflow`.
        format!("{PREFIX}-other/1/{ORPHAN_RUN}/artifacts/a.txt"),
        format!("{PREFIX}x/1/{ORPHAN_RUN}/artifacts/a.txt"),
        "1/{ORPHAN_RUN}/artifacts/outside.txt".replace("{ORPHAN_RUN}", ORPHAN_RUN),
    ];
    keys.into_iter()
        .enumerate()
        .map(|(i, key)| (key, random_bytes(100 + i * 37)))
        .collect()
}

/// The orphans among `planted()`: (what gc prints, the key prefix it frees).
fn orphans() -> Vec<(String, String)> {
    [
        ("run", format!("1/{ORPHAN_RUN}/")),
        ("logged_model", format!("1/models/{ORPHAN_MODEL}/")),
        ("trace", format!("2/traces/{ORPHAN_TRACE}/")),
    ]
    .into_iter()
    .map(|(kind, path)| (format!("{kind} {path}"), format!("{PREFIX}/{path}")))
    .collect()
}

async fn plant(s3: &S3Server, objects: &[(String, Vec<u8>)]) {
    let bucket = s3.client();
    futures_util::stream::iter(objects)
        .for_each_concurrent(16, |(key, data)| {
            let bucket = bucket.clone();
            async move {
                bucket.put_object(key, data).await.unwrap();
            }
        })
        .await;
}

/// Every key with the SHA-256 of its bytes.
fn snapshot(s3: &S3Server) -> BTreeMap<String, String> {
    s3.keys()
        .into_iter()
        .map(|key| {
            let digest = sha256(&s3.object(&key).unwrap());
            (key, digest)
        })
        .collect()
}

/// What MLflow holds and how it answers.
#[derive(Default)]
struct Known {
    existing: HashSet<String>,
    /// Registered model versions (the JSON of model-versions/search).
    versions: Vec<serde_json::Value>,
    workspaces: bool,
    deny: bool,
    authorization: Vec<String>,
    in_flight: usize,
    max_in_flight: usize,
}

/// An MLflow stand-in answering what gc asks, as MLflow 3.17 does.
struct Mlflow {
    addr: SocketAddr,
    known: Arc<Mutex<Known>>,
}

impl Mlflow {
    async fn start(existing: &[&str]) -> Mlflow {
        let known = Arc::new(Mutex::new(Known {
            existing: existing.iter().map(|id| (*id).to_owned()).collect(),
            versions: vec![serde_json::json!({
                "name": "doubler",
                "version": "1",
                "source": format!("mlflow-artifacts:/2/{REFERENCED_RUN}/artifacts/model"),
                "run_id": REFERENCED_RUN,
            })],
            ..Known::default()
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = known.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let known = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let known = known.clone();
                        async move { Ok::<_, Infallible>(answer(&known, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Mlflow { addr, known }
    }

    fn add(&self, id: &str) {
        self.known.lock().unwrap().existing.insert(id.to_owned());
    }
}

async fn answer(known: &Mutex<Known>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let uri = request.uri().to_string();
    let (deny, workspaces, versions) = {
        let mut known = known.lock().unwrap();
        if let Some(value) = request.headers().get("authorization") {
            known
                .authorization
                .push(value.to_str().unwrap_or("").to_owned());
        }
        known.in_flight += 1;
        known.max_in_flight = known.max_in_flight.max(known.in_flight);
        (known.deny, known.workspaces, known.versions.clone())
    };
    // Long enough for concurrent checks to overlap here.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let missing = r#"{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}"#;
    let id = uri
        .strip_prefix("/api/2.0/mlflow/runs/get?run_id=")
        .or_else(|| {
            uri.strip_prefix("/api/2.0/mlflow/logged-models/")
                .and_then(|rest| rest.strip_suffix("?allow_deleted=true"))
        })
        .or_else(|| uri.strip_prefix("/api/3.0/mlflow/traces/"));
    let (status, body) = if uri.starts_with("/api/3.0/mlflow/server-info") {
        (200, format!(r#"{{"workspaces_enabled": {workspaces}}}"#))
    } else if uri.starts_with("/api/2.0/mlflow/model-versions/search") {
        (
            200,
            serde_json::json!({ "model_versions": versions }).to_string(),
        )
    } else if deny {
        (
            403,
            r#"{"error_code": "PERMISSION_DENIED", "message": "no"}"#.to_owned(),
        )
    } else if let Some(id) = id {
        if known.lock().unwrap().existing.contains(id) {
            (200, "{}".to_owned())
        } else {
            (404, missing.to_owned())
        }
    } else {
        (404, "<html>Not Found</html>".to_owned())
    };
    known.lock().unwrap().in_flight -= 1;
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn config(s3: &S3Server, mlflow: &Mlflow, delete: bool, older_than: &str) -> GcConfig {
    GcConfig {
        store: s3.store_config(PREFIX),
        tracking_uri: format!("http://{}", mlflow.addr),
        credentials: Credentials {
            username: Some("admin".into()),
            password: Some("pw".into()),
            token: None,
        },
        delete,
        older_than: parse_age(older_than).unwrap(),
        older_than_text: older_than.into(),
        concurrency: 4,
        under: None,
        resume_file: None,
        metrics_file: None,
        progress_every: None,
        s3_timeout: Duration::from_secs(30),
        mlflow_timeout: Duration::from_secs(30),
        pause_before_delete: false,
    }
}

/// Run gc; its lines and outcome.
async fn run_gc(
    config: GcConfig,
    hook: Option<Hook>,
) -> (Vec<String>, Result<gc::Summary, String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink_lines = lines.clone();
    let sink: Sink = Arc::new(move |line| sink_lines.lock().unwrap().push(line.to_owned()));
    let result = gc::run(config, hook, sink).await;
    let lines = lines.lock().unwrap().clone();
    (lines, result)
}

/// The lines starting with `start`, sorted, cut at the first `:` after it.
fn reported(lines: &[String], start: &str) -> Vec<String> {
    let mut found: Vec<String> = lines
        .iter()
        .filter_map(|line| line.strip_prefix(start))
        .map(|rest| rest.split(':').next().unwrap_or("").to_owned())
        .collect();
    found.sort();
    found
}

fn orphan_names() -> Vec<String> {
    let mut names: Vec<String> = orphans().into_iter().map(|(name, _)| name).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_finds_exactly_the_planted_orphans_and_deletes_nothing() {
    let s3 = S3Server::start().await;
    let mlflow = Mlflow::start(&[LIVE_RUN, LIVE_MODEL, LIVE_TRACE]).await;
    plant(&s3, &planted()).await;
    let before = snapshot(&s3);

    for (older_than, verdict) in [
        ("7d", "(younger than 7d: kept)"),
        ("0", "(--delete would delete it)"),
    ] {
        let (lines, result) = run_gc(config(&s3, &mlflow, false, older_than), None).await;
        let summary = result.unwrap();
        assert_eq!(
            reported(&lines, "gc: orphan "),
            orphan_names(),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .filter(|l| l.starts_with("gc: orphan "))
                .all(|l| l.ends_with(verdict)),
            "{lines:#?}"
        );
        assert_eq!(
            reported(&lines, "gc: kept "),
            [format!("run 2/{REFERENCED_RUN}/")],
            "the run a registered model version points at is kept: {lines:#?}"
        );
        assert_eq!(summary.orphans.count(), 3);
        assert_eq!(summary.orphans.objects, 6);
        assert_eq!(summary.live, 3);
        assert_eq!(summary.deleted.count(), 0);
        // `1/datasets/` and `backups/`.
        assert_eq!(summary.unknown, 2, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("gc: dry run, nothing deleted"))
        );
    }
    assert_eq!(snapshot(&s3), before, "a dry run changes nothing");
    // MLflow was asked as the admin given.
    let known = mlflow.known.lock().unwrap();
    assert!(!known.authorization.is_empty());
    assert!(
        known
            .authorization
            .iter()
            .all(|a| a == "Basic YWRtaW46cHc="),
        "{:?}",
        known.authorization
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_frees_exactly_the_old_enough_orphans_inside_the_destination() {
    let s3 = S3Server::start().await;
    let mlflow = Mlflow::start(&[LIVE_RUN, LIVE_MODEL, LIVE_TRACE]).await;
    let objects = planted();
    plant(&s3, &objects).await;
    let before = snapshot(&s3);

    // Everything was just written: nothing is older than a day.
    let (lines, result) = run_gc(config(&s3, &mlflow, true, "1d"), None).await;
    assert_eq!(result.unwrap().deleted.count(), 0);
    assert_eq!(
        reported(&lines, "gc: orphan "),
        orphan_names(),
        "{lines:#?}"
    );
    assert_eq!(
        snapshot(&s3),
        before,
        "orphans younger than the threshold are kept"
    );

    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("gc.prom");
    let mut with_metrics = config(&s3, &mlflow, true, "0");
    with_metrics.metrics_file = Some(metrics.clone());
    let (lines, result) = run_gc(with_metrics, None).await;
    let summary = result.unwrap();
    assert_eq!(
        reported(&lines, "gc: deleted orphan "),
        orphan_names(),
        "one line per deleted prefix: {lines:#?}"
    );
    let freed: Vec<&(String, Vec<u8>)> = objects
        .iter()
        .filter(|(key, _)| orphans().iter().any(|(_, dir)| key.starts_with(dir)))
        .collect();
    assert_eq!(freed.len(), 6);
    assert_eq!(summary.deleted.objects, 6);
    assert_eq!(
        summary.deleted.bytes,
        freed.iter().map(|(_, data)| data.len() as u64).sum::<u64>()
    );
    let mut expected = before.clone();
    expected.retain(|key, _| !orphans().iter().any(|(_, dir)| key.starts_with(dir)));
    assert_eq!(
        snapshot(&s3),
        expected,
        "exactly the orphans are gone; every other key (outside the destination too) is intact"
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    for line in [
        "mlflow_proxy_gc_deleted_objects 6",
        "mlflow_proxy_gc_deleted_prefixes{kind=\"run\"} 1",
        "mlflow_proxy_gc_deleted_prefixes{kind=\"logged_model\"} 1",
        "mlflow_proxy_gc_deleted_prefixes{kind=\"trace\"} 1",
        "mlflow_proxy_gc_last_run_success 1",
        "mlflow_proxy_gc_last_run_delete 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }

    // Again: nothing left to do.
    let (_, result) = run_gc(config(&s3, &mlflow, true, "0"), None).await;
    let summary = result.unwrap();
    assert_eq!((summary.orphans.count(), summary.deleted.count()), (0, 0));
    assert_eq!(snapshot(&s3), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_whose_run_appears_during_gc_is_kept_and_new_runs_are_untouched() {
    let s3 = S3Server::start().await;
    let mlflow = Arc::new(Mlflow::start(&[LIVE_RUN, LIVE_MODEL, LIVE_TRACE]).await);
    plant(&s3, &planted()).await;
    let before = snapshot(&s3);
    const NEW_RUN: &str = "11111111111111111111111111111111";
    let new_run = vec![(
        format!("{PREFIX}/1/{NEW_RUN}/artifacts/during.txt"),
        random_bytes(50),
    )];
    let paused = Arc::new(Mutex::new(Vec::new()));
    // At the pause before ORPHAN_RUN's re-check: its run is restored (MLflow has it again), and a
    // brand-new run writes its first artifact in the same experiment.
    let hook: Hook = {
        let (mlflow, paused, s3_client, new_run) =
            (mlflow.clone(), paused.clone(), s3.client(), new_run.clone());
        Arc::new(move |candidate: &Candidate| {
            paused.lock().unwrap().push(candidate.path.clone());
            let (mlflow, s3_client, new_run) = (mlflow.clone(), s3_client.clone(), new_run.clone());
            let restore = candidate.id == ORPHAN_RUN;
            Box::pin(async move {
                if restore {
                    mlflow.add(ORPHAN_RUN);
                    mlflow.add(NEW_RUN);
                    for (key, data) in &new_run {
                        s3_client.put_object(key, data).await.unwrap();
                    }
                }
            })
        })
    };
    let (lines, result) = run_gc(config(&s3, &mlflow, true, "0"), Some(hook)).await;
    let summary = result.unwrap();
    assert_eq!(
        *paused.lock().unwrap(),
        orphans()
            .into_iter()
            .map(|(name, _)| name.split_once(' ').unwrap().1.to_owned())
            .collect::<Vec<_>>(),
        "gc pauses before each re-check, in key order"
    );
    assert_eq!(summary.revived, 1);
    assert!(
        lines.contains(&format!(
            "gc: kept run 1/{ORPHAN_RUN}/: MLflow has the run again (re-checked just before deleting)"
        )),
        "{lines:#?}"
    );
    assert_eq!(
        reported(&lines, "gc: deleted orphan "),
        [
            format!("logged_model 1/models/{ORPHAN_MODEL}/"),
            format!("trace 2/traces/{ORPHAN_TRACE}/"),
        ]
    );
    let mut expected = before;
    expected.retain(|key, _| {
        !key.starts_with(&format!("{PREFIX}/1/models/{ORPHAN_MODEL}/"))
            && !key.starts_with(&format!("{PREFIX}/2/traces/{ORPHAN_TRACE}/"))
    });
    for (key, data) in &new_run {
        expected.insert(key.clone(), sha256(data));
    }
    assert_eq!(snapshot(&s3), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_resumes_after_its_checkpoint() {
    let s3 = S3Server::start().await;
    let mlflow = Mlflow::start(&[LIVE_RUN, LIVE_MODEL, LIVE_TRACE]).await;
    plant(&s3, &planted()).await;
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("gc.resume");
    let destination = format!("s3://{}/{PREFIX}/", s3.bucket);

    // The checkpoint is written as the walk goes: at the trace's pause (experiment 2), every
    // folder of experiment 1 and 2's run folders are done.
    let seen = Arc::new(Mutex::new(None));
    let hook: Hook = {
        let (seen, checkpoint) = (seen.clone(), checkpoint.clone());
        Arc::new(move |candidate: &Candidate| {
            if candidate.id == ORPHAN_TRACE {
                *seen.lock().unwrap() = std::fs::read_to_string(&checkpoint).ok();
            }
            Box::pin(async {})
        })
    };
    let mut first = config(&s3, &mlflow, true, "0");
    first.resume_file = Some(checkpoint.clone());
    let (_, result) = run_gc(first, Some(hook)).await;
    result.unwrap();
    assert_eq!(
        seen.lock().unwrap().as_deref(),
        Some(
            format!(r#"{{"destination":"{destination}","after":"2/{REFERENCED_RUN}/"}}"#).as_str()
        )
    );
    assert!(
        !checkpoint.exists(),
        "a finished run removes its checkpoint"
    );

    // A run that stopped after the logged models of experiment 1 goes on from there (the
    // orphans planted again).
    plant(&s3, &planted()).await;
    std::fs::write(
        &checkpoint,
        format!(r#"{{"destination":"{destination}","after":"1/models/{ORPHAN_MODEL}/"}}"#),
    )
    .unwrap();
    let mut resumed = config(&s3, &mlflow, true, "0");
    resumed.resume_file = Some(checkpoint.clone());
    let (lines, result) = run_gc(resumed, None).await;
    result.unwrap();
    assert!(
        lines[0].ends_with(&format!(", resuming after 1/models/{ORPHAN_MODEL}/")),
        "{lines:#?}"
    );
    assert_eq!(
        reported(&lines, "gc: deleted orphan "),
        [format!("trace 2/traces/{ORPHAN_TRACE}/")]
    );
    let keys = s3.keys();
    assert!(keys.contains(&format!("{PREFIX}/1/{ORPHAN_RUN}/artifacts/top.txt")));
    assert!(keys.contains(&format!(
        "{PREFIX}/1/models/{ORPHAN_MODEL}/artifacts/MLmodel"
    )));
    assert!(!checkpoint.exists());

    // A checkpoint of another destination is refused, and nothing is done.
    std::fs::write(
        &checkpoint,
        r#"{"destination":"s3://elsewhere/","after":"1/"}"#,
    )
    .unwrap();
    let mut other = config(&s3, &mlflow, true, "0");
    other.resume_file = Some(checkpoint.clone());
    let before = snapshot(&s3);
    let (_, result) = run_gc(other, None).await;
    assert!(result.unwrap_err().contains("belongs to s3://elsewhere/"));
    assert_eq!(snapshot(&s3), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_stops_without_deleting_when_mlflow_cannot_answer_for_sure() {
    let s3 = S3Server::start().await;
    let mlflow = Mlflow::start(&[LIVE_RUN, LIVE_MODEL, LIVE_TRACE]).await;
    plant(&s3, &planted()).await;
    let before = snapshot(&s3);

    mlflow.known.lock().unwrap().deny = true;
    let (_, result) = run_gc(config(&s3, &mlflow, true, "0"), None).await;
    let error = result.unwrap_err();
    assert!(error.contains("403"), "{error}");
    assert_eq!(snapshot(&s3), before);

    mlflow.known.lock().unwrap().deny = false;
    mlflow.known.lock().unwrap().workspaces = true;
    let (_, result) = run_gc(config(&s3, &mlflow, true, "0"), None).await;
    assert!(result.unwrap_err().contains("workspaces"));
    assert_eq!(snapshot(&s3), before);

    // Nobody answers at all.
    let mut nowhere = config(&s3, &mlflow, true, "0");
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    nowhere.tracking_uri = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_, result) = run_gc(nowhere, None).await;
    assert!(result.is_err());
    assert_eq!(snapshot(&s3), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_at_most_concurrency_at_a_time_under_limits_the_walk_and_progress_is_reported() {
    let s3 = S3Server::start().await;
    let runs: Vec<String> = (0..40).map(|i| format!("{i:032x}")).collect();
    let ids: Vec<&str> = runs.iter().map(String::as_str).collect();
    let mlflow = Mlflow::start(&ids).await;
    let mut objects: Vec<(String, Vec<u8>)> = runs
        .iter()
        .map(|run| (format!("{PREFIX}/3/{run}/artifacts/f"), random_bytes(10)))
        .collect();
    objects.push((
        format!("{PREFIX}/4/{ORPHAN_RUN}/artifacts/f"),
        random_bytes(10),
    ));
    plant(&s3, &objects).await;

    let mut limited = config(&s3, &mlflow, false, "0");
    limited.concurrency = 3;
    limited.under = Some(vec!["3/".into()]);
    // A progress line after every folder (a long run prints one every --progress-secs).
    limited.progress_every = Some(Duration::ZERO);
    let (lines, result) = run_gc(limited, None).await;
    let summary = result.unwrap();
    assert_eq!(summary.checked[0], 40, "only experiment 3: {lines:#?}");
    let progress: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("gc: progress: "))
        .collect();
    assert_eq!(progress.len(), 40, "{lines:#?}");
    assert!(
        progress[39].starts_with("gc: progress: 40 prefixes checked, 0 orphaned"),
        "{}",
        progress[39]
    );
    assert_eq!(summary.orphans.count(), 0);
    let max = mlflow.known.lock().unwrap().max_in_flight;
    assert!(
        (1..=3).contains(&max),
        "at most 3 MLflow calls at once, saw {max}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_route_frees_a_tree_of_any_size_a_page_at_a_time() {
    let h = Harness::start().await;
    let tree: Vec<(String, Vec<u8>)> = (0..2500)
        .map(|i| {
            (
                format!("1/r/artifacts/d{}/sub {}/f{i}.bin", i % 10, i % 3),
                random_bytes(1 + i % 50),
            )
        })
        .collect();
    let mut kept = vec![
        ("1/r/artifacts-old/x".to_owned(), random_bytes(5)),
        ("1/r/artifactsX".to_owned(), random_bytes(6)),
        ("1/r/artifact".to_owned(), random_bytes(7)),
    ];
    kept.sort();
    plant(&h.s3, &tree).await;
    plant(&h.s3, &kept).await;
    let metrics_before = h.metrics().await;

    let response = h
        .http
        .delete(h.artifact("1/r/artifacts"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = header_map(&response);
    assert_eq!(headers["x-mlflow-proxy-deleted-objects"], "2500");
    assert_eq!(
        headers["x-mlflow-proxy-deleted-bytes"],
        tree.iter()
            .map(|(_, data)| data.len())
            .sum::<usize>()
            .to_string()
    );
    assert_eq!(response.text().await.unwrap(), "{}");
    assert_eq!(
        h.s3.keys(),
        kept.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        "0 keys left under the path; its siblings untouched"
    );
    for (key, data) in &kept {
        assert_eq!(h.s3.object(key).as_deref(), Some(data.as_slice()));
    }
    // One listing page and one DeleteObjects call per 1,000 keys (and one listing to see whether
    // the path is a file itself): memory holds a page, whatever the number of keys.
    let metrics_after = h.metrics().await;
    let count = |text: &str, operation: &str| -> u64 {
        let series =
            format!("mlflow_proxy_s3_requests_total{{operation=\"{operation}\",outcome=\"ok\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(
        count(&metrics_after, "delete_objects") - count(&metrics_before, "delete_objects"),
        3
    );
    assert_eq!(
        count(&metrics_after, "list_objects") - count(&metrics_before, "list_objects"),
        4
    );

    // Idempotent: again, and a path that never existed.
    for path in ["1/r/artifacts", "1/never"] {
        let response = h.http.delete(h.artifact(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header_map(&response)["x-mlflow-proxy-deleted-objects"], "0");
    }
}
