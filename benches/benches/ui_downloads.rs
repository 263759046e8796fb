//! `cargo bench --bench ui_downloads` (harness = false): one large file downloaded through each
//! route that moves artifact bytes to a user — the MLflow client's
//! (`/api/2.0/mlflow-artifacts/artifacts/…`), the UI's run artifact (`/get-artifact`), the UI's
//! logged-model file (`/ajax-api/2.0/mlflow/logged-models/<id>/artifacts/files`) and the
//! registry's model-version file (`/model-versions/get-artifact`) — through the proxy and
//! through stock MLflow's own port, in one run, on the same S3 store and the same MLflow server.
//!
//! Processes (loopback, started here): s3s-fs 0.14.1 (or the same code embedded in this binary);
//! stock MLflow 3.17 through `mlflow-image/entrypoint.sh` (SQLite, `--serve-artifacts`, a
//! `TMPDIR` of its own), found via MLFLOW_STACK_VENV, MLFLOW_BENCH_MLFLOW_BIN, `.venv` or PATH;
//! the proxy in front of both (MLflow's auth app off). The world: an experiment, a run, a logged
//! model, a registered model version of it; the file is uploaded once as the run's artifact and
//! once as the logged model's (through the proxy), the version's download URI is the logged
//! model's location.
//!
//! Per route and side, each round: time to first byte and throughput of one GET on a fresh
//! connection (the body counted and checked against Content-Length), and the peak growth of
//! stock MLflow's `TMPDIR` while it ran (sampled every 20 ms). Rounds interleave the targets
//! (rotating order), so that load drifting on a shared machine hits every row alike. Nothing is
//! asserted: figures and their ratios (against the proxy's client route, and proxy against stock
//! per route) are printed and written to target/bench-ui-downloads.json, with the load average.
//!
//! Knobs: BENCH_QUICK=1 (64 MiB, one round), BENCH_UI_MIB (1024), BENCH_UI_ROUNDS (3),
//! BENCH_STOCK=0 (the proxy only), BENCH_PROXY_BIN, MLFLOW_STACK_TOOLS, BENCH_KEEP=1. Disk: the
//! file twice in the store, once more in stock MLflow's temp folder while it serves it.

use std::collections::BTreeMap;
use std::time::Duration;

use benches::client::{self, MIB};
use benches::procs::{self, Sampler};
use benches::setup;
use benches::stack::{self, MlflowApi};
use benches::stats::{Spread, round, spread};
use serde_json::{Value, json};

const ROUTES: [&str; 4] = [
    "client route",
    "run (UI)",
    "logged model (UI)",
    "model version",
];

fn main() {
    setup::bench_main(run);
}

struct Config {
    quick: bool,
    size: u64,
    rounds: usize,
    stock: bool,
}

impl Config {
    fn from_env() -> Config {
        let quick = setup::quick();
        Config {
            quick,
            size: setup::env_u64("BENCH_UI_MIB").unwrap_or(if quick { 64 } else { 1024 }) * MIB,
            rounds: setup::env_u64("BENCH_UI_ROUNDS")
                .map_or(if quick { 1 } else { 3 }, |r| r.max(1) as usize),
            stock: std::env::var("BENCH_STOCK").as_deref() != Ok("0"),
        }
    }
}

/// One route on one side, over the rounds.
#[derive(Default)]
struct Row {
    ttfb_ms: Vec<f64>,
    mib_s: Vec<f64>,
    temp_growth: Vec<u64>,
}

/// The four targets of one side (`base`: the proxy's or MLflow's address).
fn targets(base: &str, w: &World) -> Vec<(&'static str, String)> {
    vec![
        (
            ROUTES[0],
            format!(
                "{base}/api/2.0/mlflow-artifacts/artifacts/{}/{}/artifacts/big.bin",
                w.exp, w.run
            ),
        ),
        (
            ROUTES[1],
            format!("{base}/get-artifact?path=big.bin&run_id={}", w.run),
        ),
        (
            ROUTES[2],
            format!(
                "{base}/ajax-api/2.0/mlflow/logged-models/{}/artifacts/files?artifact_file_path=big.bin",
                w.model
            ),
        ),
        (
            ROUTES[3],
            format!(
                "{base}/model-versions/get-artifact?path=big.bin&name={}&version=1",
                w.name
            ),
        ),
    ]
}

struct World {
    exp: String,
    run: String,
    model: String,
    name: String,
}

/// POST as `api.post` does, once more (up to 3 times) when the connection broke: under load,
/// uvicorn restarts a worker that missed its health check, dropping what it was answering.
/// `body(attempt)` may differ per attempt (a fresh name, so a retry never collides with a first
/// attempt that did land).
async fn post_retrying(
    mlflow: &MlflowApi,
    path: &str,
    body: impl Fn(usize) -> Value,
) -> Result<Value, String> {
    let mut attempt = 0;
    loop {
        match mlflow.post(path, &body(attempt)).await {
            Err(e) if attempt < 2 && !e.contains(" answered ") => {
                println!("  {path}: {e}; asking again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            other => return other,
        }
    }
}

/// The experiment, run, logged model and model version, and the file twice (through the proxy).
async fn make_world(mlflow: &MlflowApi, proxy: &str, size: u64) -> Result<World, String> {
    let text = |v: &Value, pointer: &str| {
        v.pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no {pointer} in {v}"))
    };
    let exp = post_retrying(
        mlflow,
        "/api/2.0/mlflow/experiments/create",
        |a| json!({"name": format!("bench-ui-downloads-{a}")}),
    )
    .await?;
    let exp = text(&exp, "/experiment_id")?;
    let run = post_retrying(
        mlflow,
        "/api/2.0/mlflow/runs/create",
        |_| json!({"experiment_id": exp}),
    )
    .await?;
    let run = text(&run, "/run/info/run_id")?;
    let model = post_retrying(
        mlflow,
        "/api/2.0/mlflow/logged-models",
        |_| json!({"experiment_id": exp, "name": "bench"}),
    )
    .await?;
    let model = text(&model, "/model/info/model_id")?;
    let registered = post_retrying(
        mlflow,
        "/api/2.0/mlflow/registered-models/create",
        |a| json!({"name": format!("bench-ui-model-{a}")}),
    )
    .await?;
    let name = text(&registered, "/registered_model/name")?;
    post_retrying(
        mlflow,
        "/api/2.0/mlflow/model-versions/create",
        |_| json!({"name": name, "source": format!("models:/{model}"), "model_id": model}),
    )
    .await?;
    for path in [
        format!("{exp}/{run}/artifacts/big.bin"),
        format!("{exp}/models/{model}/artifacts/big.bin"),
    ] {
        let url = client::artifact_url(proxy, &path);
        client::upload(&url, size, client::pattern(), true).await?;
    }
    Ok(World {
        exp,
        run,
        model,
        name,
    })
}

fn run() -> Result<(), String> {
    let config = Config::from_env();
    let root = setup::workspace_root();
    let load_before = procs::load_average();
    println!(
        "mlflow-artifact-proxy UI download bench ({} variant: {} MiB, {} round(s)); load average {load_before}",
        if config.quick { "quick" } else { "full" },
        config.size / MIB,
        config.rounds,
    );
    let proxy_bin = procs::proxy_binary(&root)?;
    let scratch = setup::Scratch::create("mlflow-proxy-bench-ui")?;
    let work = scratch.path();
    let (store, s3) = stack::start_s3s_fs_bucket(work)?;
    println!("  S3 store: {} at {}", store.kind, store.url);
    println!("  starting stock MLflow (up to 240 s)");
    let mlflow = stack::start_mlflow(&root, work, &s3, None, Duration::from_secs(240))?;
    let temp = work.join("mlflow-tmp");
    println!("  {} at {}", mlflow.kind, mlflow.url);
    let proxy = stack::start_proxy(&proxy_bin, "proxy", &mlflow.url, &s3, &[])?;
    println!("  proxy at {}", proxy.url);

    let runtime = setup::client_runtime()?;
    let api = MlflowApi {
        url: mlflow.url.clone(),
        // MLflow runs without its auth app here; the header is ignored.
        authorization: stack::basic_auth("bench", "bench"),
    };
    let world = runtime.block_on(make_world(&api, &proxy.url, config.size))?;

    let mut sides = vec![("proxy", targets(&proxy.url, &world))];
    if config.stock {
        sides.push(("stock MLflow", targets(&mlflow.url, &world)));
    }
    let mut rows: BTreeMap<(usize, usize), Row> = BTreeMap::new();
    let count = sides.iter().map(|(_, t)| t.len()).sum::<usize>();
    for round_no in 0..config.rounds {
        // Every target once per round, starting one further along each time.
        let order: Vec<(usize, usize)> = sides
            .iter()
            .enumerate()
            .flat_map(|(s, (_, t))| (0..t.len()).map(move |r| (s, r)))
            .collect();
        for i in 0..count {
            let (s, r) = order[(i + round_no) % count];
            let (side, ref targets) = sides[s];
            let (route, url) = &targets[r];
            let baseline = procs::dir_size(&temp);
            let sampler = Sampler::start(vec![], vec![], vec![temp.clone()]);
            let transfer = runtime.block_on(client::download(url, Some(config.size)));
            let samples = sampler.finish();
            let transfer = transfer.map_err(|e| format!("{side}, {route}: {e}"))?;
            let peak = samples.peak_dir_bytes.get(&temp).copied().unwrap_or(0);
            let row = rows.entry((s, r)).or_default();
            row.ttfb_ms.push(transfer.first_byte_secs * 1000.0);
            row.mib_s.push(transfer.mib_s());
            row.temp_growth.push(peak.saturating_sub(baseline));
            println!(
                "  round {} {side:12} {route:18} first byte {:8.1} ms, {:7.1} MiB/s, MLflow's temp +{} MiB",
                round_no + 1,
                transfer.first_byte_secs * 1000.0,
                transfer.mib_s(),
                peak.saturating_sub(baseline) / MIB
            );
        }
    }

    let client_route = rows
        .get(&(0, 0))
        .map_or(0.0, |row| spread(&row.mib_s).median);
    let mut report = Vec::new();
    println!(
        "\n{:12} {:18} {:>22} {:>22} {:>14} {:>10} {:>10}",
        "side", "route", "first byte, ms", "MiB/s", "temp peak MiB", "vs client", "vs stock"
    );
    for ((s, r), row) in &rows {
        let (side, targets) = &sides[*s];
        let route = targets[*r].0;
        let (ttfb, rate): (Spread, Spread) = (spread(&row.ttfb_ms), spread(&row.mib_s));
        let temp_peak = row.temp_growth.iter().copied().max().unwrap_or(0);
        let vs_client = rate.median / client_route.max(1e-9);
        let vs_stock = (*s == 0)
            .then(|| rows.get(&(1, *r)))
            .flatten()
            .map(|stock| rate.median / spread(&stock.mib_s).median.max(1e-9));
        println!(
            "{side:12} {route:18} {:>22} {:>22} {:>14} {:>10.2} {:>10}",
            ttfb.show(1),
            rate.show(1),
            temp_peak / MIB,
            vs_client,
            vs_stock.map_or("-".to_owned(), |v| format!("{v:.2}"))
        );
        report.push(json!({
            "side": side,
            "route": route,
            "url": targets[*r].1,
            "first_byte_ms": ttfb.json(),
            "mib_s": rate.json(),
            "temp_peak_bytes": temp_peak,
            "throughput_vs_proxy_client_route": round(vs_client, 3),
            "throughput_vs_stock": vs_stock.map(|v| round(v, 3)),
        }));
    }
    let load_after = procs::load_average();
    println!("load average: before {load_before}, after {load_after}");
    let out = setup::target_dir().join("bench-ui-downloads.json");
    let summary = json!({
        "size_mib": config.size / MIB,
        "rounds": config.rounds,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "mlflow": mlflow.kind,
        "store": store.kind,
        "rows": report,
    });
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("written: {}", out.display());
    drop(proxy);
    drop(mlflow);
    drop(store);
    Ok(())
}
