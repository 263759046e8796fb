//! `cargo bench --bench stores` (harness = false): the main transfer scenarios on each real S3
//! store, one table per store: s3s-fs 0.14.1 (the test store) and Garage 2.5.0 (a production
//! store), so that a change that helps one store and hurts the other shows. Next to each figure:
//! the CPU seconds the proxy and the store spent per GiB moved (from /proc/<pid>/stat), for
//! transfers through the proxy and straight to the store.
//!
//! Knobs: BENCH_QUICK=1 (64 MiB single stream, 8 × 8 MiB), BENCH_STORES=s3s-fs,garage (the
//! default; a store that is not installed is reported as missing and fails the run),
//! BENCH_SIZE_MIB, BENCH_ROUNDS, BENCH_PROXY_BIN, MLFLOW_STACK_TOOLS. JSON:
//! target/bench-stores.json.
//!
//! Upload bodies are distinct incompressible bytes per transfer (`garage::distinct_pattern`):
//! Garage deduplicates equal 1 MiB blocks, so a repeated pattern would be stored once and
//! measure nothing.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use benches::client::{self, MIB, Transfer, artifact_url};
use benches::garage::distinct_pattern;
use benches::procs;
use benches::proxy::start_proxy;
use benches::s3store::{S3Store, presign_list};
use benches::servers;
use benches::setup::{self, ACCESS_KEY, SECRET_KEY, Scratch, env_u64};
use benches::stats::{percentile, round, spread};
use serde_json::{Value, json};

const GIB: f64 = (1u64 << 30) as f64;

fn main() {
    setup::bench_main(run);
}

struct Config {
    quick: bool,
    size: u64,
    rounds: usize,
    /// (transfers at once, MiB each)
    concurrent: (usize, u64),
    small_n: usize,
}

impl Config {
    fn from_env() -> Config {
        let quick = setup::quick();
        Config {
            quick,
            size: env_u64("BENCH_SIZE_MIB").unwrap_or(if quick { 64 } else { 1024 }) * MIB,
            rounds: env_u64("BENCH_ROUNDS")
                .map_or(if quick { 2 } else { 3 }, |r| r.max(1) as usize),
            concurrent: if quick { (8, 8) } else { (8, 128) },
            small_n: if quick { 200 } else { 1000 },
        }
    }
}

/// CPU seconds a process used while `work` ran.
struct Cpu {
    proxy: f64,
    store: f64,
}

fn with_cpu<T>(
    proxy: u32,
    store: u32,
    work: impl FnOnce() -> Result<T, String>,
) -> Result<(T, Cpu), String> {
    let (p0, s0) = (procs::cpu_secs(proxy), procs::cpu_secs(store));
    let out = work()?;
    Ok((
        out,
        Cpu {
            proxy: procs::cpu_secs(proxy) - p0,
            store: procs::cpu_secs(store) - s0,
        },
    ))
}

/// One measured direction of a scenario, through the proxy and straight to the store.
#[derive(Default)]
struct Side {
    mib_s: Vec<f64>,
    bytes: u64,
    proxy_cpu: f64,
    store_cpu: f64,
}

impl Side {
    fn add(&mut self, mib_s: f64, bytes: u64, cpu: &Cpu) {
        self.mib_s.push(mib_s);
        self.bytes += bytes;
        self.proxy_cpu += cpu.proxy;
        self.store_cpu += cpu.store;
    }
    fn per_gib(cpu: f64, bytes: u64) -> f64 {
        cpu / (bytes as f64 / GIB).max(1e-12)
    }
    fn json(&self) -> Value {
        let s = spread(&self.mib_s);
        json!({"mib_s": s.json(), "bytes": self.bytes,
            "proxy_cpu_s_per_gib": round(Self::per_gib(self.proxy_cpu, self.bytes), 3),
            "store_cpu_s_per_gib": round(Self::per_gib(self.store_cpu, self.bytes), 3)})
    }
}

struct Table {
    store: String,
    rows: Vec<[String; 6]>,
    json: Vec<Value>,
}

impl Table {
    /// A proxy-vs-direct row: throughput, ratio, and CPU per GiB of the proxy and of the store.
    fn transfer_row(&mut self, scenario: &str, proxy: &Side, direct: &Side) {
        let (p, d) = (spread(&proxy.mib_s), spread(&direct.mib_s));
        let row = [
            scenario.to_owned(),
            format!("{} MiB/s", p.show(1)),
            format!("{} MiB/s", d.show(1)),
            format!("{:.2}", p.median / d.median.max(1e-9)),
            format!("{:.2}", Side::per_gib(proxy.proxy_cpu, proxy.bytes)),
            format!(
                "{:.2} / {:.2}",
                Side::per_gib(proxy.store_cpu, proxy.bytes),
                Side::per_gib(direct.store_cpu, direct.bytes)
            ),
        ];
        println!("  {}", row.join(" | "));
        self.rows.push(row);
        self.json.push(
            json!({"scenario": scenario, "proxy": proxy.json(), "direct": direct.json(),
            "proxy_over_direct": round(p.median / d.median.max(1e-9), 3)}),
        );
    }

    fn print(&self) {
        println!(
            "\n| {} | proxy | direct | proxy / direct | proxy CPU s/GiB | store CPU s/GiB (via proxy / direct) |",
            self.store
        );
        println!("|---|---|---|---|---|---|");
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
    }
}

fn run() -> Result<(), String> {
    let config = Config::from_env();
    let names: Vec<String> = std::env::var("BENCH_STORES")
        .unwrap_or_else(|_| "s3s-fs,garage".into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    println!(
        "mlflow-artifact-proxy store bench ({} variant: {} MiB single stream × {} rounds, {} × {} MiB at once; stores: {})",
        if config.quick { "quick" } else { "full" },
        config.size / MIB,
        config.rounds,
        config.concurrent.0,
        config.concurrent.1,
        names.join(", ")
    );
    let proxy_bin = procs::proxy_binary(&setup::workspace_root())?;
    let tools = setup::tools_dir();
    let work = Scratch::create("mlflow-proxy-bench-stores")?;

    // The MLflow stand-in (the proxy needs an upstream; nothing here goes to it; the null store
    // beside it goes unused).
    let stand_in_url = servers::start_null_store_and_stand_in(client::pattern())?.stand_in_url;
    // The load client: one thread, as in the load bench.
    let runtime = setup::client_runtime()?;

    let mut tables = Vec::new();
    let mut missing = Vec::new();
    for name in &names {
        println!("\n== {name} ==");
        let store = match servers::start_s3_store(name, &tools, work.path(), ACCESS_KEY, SECRET_KEY)
        {
            Ok(store) => store,
            Err(e) => {
                println!("  {name}: NOT RUN: {e}");
                missing.push(format!("{name}: {e}"));
                continue;
            }
        };
        println!("  S3 store: {} at {}", store.kind, store.url);
        tables.push(run_store(
            &runtime,
            &config,
            &proxy_bin,
            &store,
            &stand_in_url,
        )?);
    }

    println!("\n== results (MiB/s median (min–max); CPU seconds per GiB moved) ==");
    for table in &tables {
        table.print();
    }
    let out_dir = setup::target_dir();
    let out = out_dir.join("bench-stores.json");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let report = json!({
        "config": {"variant": if config.quick { "quick" } else { "full" }, "single_stream_mib": config.size / MIB,
            "rounds": config.rounds, "concurrent": {"transfers": config.concurrent.0, "mib_each": config.concurrent.1},
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get())},
        "stores": tables.iter().map(|t| json!({"store": t.store, "scenarios": t.json})).collect::<Vec<_>>(),
        "missing": missing,
    });
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nJSON: {}", out.display());
    if !missing.is_empty() {
        return Err(format!("stores not run: {}", missing.join("; ")));
    }
    Ok(())
}

fn run_store(
    runtime: &tokio::runtime::Runtime,
    config: &Config,
    proxy_bin: &Path,
    store: &S3Store,
    stand_in_url: &str,
) -> Result<Table, String> {
    let bucket = runtime.block_on(store.create_bucket())?;
    let mut proxy = start_proxy(
        proxy_bin,
        &format!("proxy ({})", store.name),
        &store.url,
        store.region,
        stand_in_url,
        &[],
    )?;
    runtime.block_on(proxy.wait_ready(Duration::from_secs(30)))?;
    let proxy_url = proxy.url.clone();
    let (pp, sp) = (proxy.pid(), store.process.pid());
    let mut table = Table {
        store: format!("{} ({})", store.name, store.kind),
        rows: Vec::new(),
        json: Vec::new(),
    };
    let presign_put = |key: &str| {
        runtime
            .block_on(bucket.presign_put(key, 3600, None, None))
            .map_err(|e| e.to_string())
    };
    let presign_get = |key: &str| {
        runtime
            .block_on(bucket.presign_get(key, 3600, None))
            .map_err(|e| e.to_string())
    };
    let mut seed = 0u64;

    // 1. One stream each way, proxy and direct interleaved (the order swaps every round).
    let size = config.size;
    let (mut up_p, mut up_d, mut down_p, mut down_d) = (
        Side::default(),
        Side::default(),
        Side::default(),
        Side::default(),
    );
    let mut ttfb = (Vec::new(), Vec::new());
    for round in 0..config.rounds {
        let order = if round % 2 == 0 {
            ["proxy", "direct"]
        } else {
            ["direct", "proxy"]
        };
        for side in order {
            seed += 1;
            let url = if side == "proxy" {
                artifact_url(&proxy_url, "single/proxy.bin")
            } else {
                presign_put("single/direct.bin")?
            };
            let (t, cpu) = with_cpu(pp, sp, || {
                runtime.block_on(client::upload(&url, size, distinct_pattern(seed), true))
            })?;
            let target = if side == "proxy" {
                &mut up_p
            } else {
                &mut up_d
            };
            target.add(t.mib_s(), t.bytes, &cpu);
        }
        for side in order {
            let url = if side == "proxy" {
                artifact_url(&proxy_url, "single/proxy.bin")
            } else {
                presign_get("single/direct.bin")?
            };
            let (t, cpu): (Transfer, Cpu) = with_cpu(pp, sp, || {
                runtime.block_on(client::download(&url, Some(size)))
            })?;
            let (target, first) = if side == "proxy" {
                (&mut down_p, &mut ttfb.0)
            } else {
                (&mut down_d, &mut ttfb.1)
            };
            target.add(t.mib_s(), t.bytes, &cpu);
            first.push(t.first_byte_secs * 1000.0);
        }
    }
    let mib = size / MIB;
    table.transfer_row(&format!("upload {mib} MiB, 1 stream"), &up_p, &up_d);
    table.transfer_row(&format!("download {mib} MiB, 1 stream"), &down_p, &down_d);
    let (tp, td) = (spread(&ttfb.0), spread(&ttfb.1));
    let row = [
        format!("download {mib} MiB, time to first byte"),
        format!("{} ms", tp.show(2)),
        format!("{} ms", td.show(2)),
        "-".into(),
        String::new(),
        String::new(),
    ];
    println!("  {}", row.join(" | "));
    table.rows.push(row);
    table.json.push(json!({"scenario": "download time to first byte (ms)", "proxy": tp.json(), "direct": td.json()}));

    // 2. Several transfers at once, each on its own connection.
    let (n, each_mib) = config.concurrent;
    let each = each_mib * MIB;
    let proxy_urls: Vec<String> = (0..n)
        .map(|i| artifact_url(&proxy_url, &format!("conc/proxy-{i}.bin")))
        .collect();
    let direct_puts = (0..n)
        .map(|i| presign_put(&format!("conc/direct-{i}.bin")))
        .collect::<Result<Vec<_>, _>>()?;
    let direct_gets = (0..n)
        .map(|i| presign_get(&format!("conc/direct-{i}.bin")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sides: HashMap<&str, Side> = HashMap::new();
    for (key, urls, upload) in [
        ("up proxy", proxy_urls.clone(), true),
        ("up direct", direct_puts, true),
        ("down proxy", proxy_urls, false),
        ("down direct", direct_gets, false),
    ] {
        seed += 100;
        let (batch, cpu) = with_cpu(pp, sp, || {
            runtime.block_on(async {
                if upload {
                    let uploads = urls
                        .into_iter()
                        .zip(seed..)
                        .map(|(url, seed)| (url, distinct_pattern(seed)))
                        .collect();
                    client::upload_batch_each(uploads, each, true).await
                } else {
                    client::download_batch(urls, each).await
                }
            })
        })?;
        sides
            .entry(key)
            .or_default()
            .add(batch.mib_s(), batch.bytes(), &cpu);
    }
    table.transfer_row(
        &format!("upload {n} × {each_mib} MiB at once"),
        &sides["up proxy"],
        &sides["up direct"],
    );
    table.transfer_row(
        &format!("download {n} × {each_mib} MiB at once"),
        &sides["down proxy"],
        &sides["down direct"],
    );

    // 3. A chunked upload (no Content-Length): the proxy's multipart path.
    seed += 1;
    let (t, cpu) = with_cpu(pp, sp, || {
        runtime.block_on(client::upload(
            &artifact_url(&proxy_url, "chunked/one.bin"),
            size,
            distinct_pattern(seed),
            false,
        ))
    })?;
    let mut chunked = Side::default();
    chunked.add(t.mib_s(), t.bytes, &cpu);
    let c = spread(&chunked.mib_s);
    let row = [
        format!("upload {mib} MiB chunked (multipart), 1 stream"),
        format!("{} MiB/s", c.show(1)),
        String::new(),
        "-".into(),
        format!("{:.2}", Side::per_gib(chunked.proxy_cpu, chunked.bytes)),
        format!("{:.2} / -", Side::per_gib(chunked.store_cpu, chunked.bytes)),
    ];
    println!("  {}", row.join(" | "));
    table.rows.push(row);
    table
        .json
        .push(json!({"scenario": "chunked upload (multipart), 1 stream", "proxy": chunked.json()}));

    // 4. Listing 20 small files, keep-alive: the proxy's answer vs ListObjectsV2 straight to the store.
    for i in 0..20 {
        runtime.block_on(client::upload(
            &artifact_url(&proxy_url, &format!("small/file-{i:02}.txt")),
            4096,
            distinct_pattern(1000 + i),
            true,
        ))?;
    }
    let direct_list = runtime.block_on(presign_list(&bucket, "small/"))?;
    let proxy_list = format!("{proxy_url}/api/2.0/mlflow-artifacts/artifacts?path=small");
    let p = runtime.block_on(client::small_requests(&proxy_list, config.small_n, true))?;
    let d = runtime.block_on(client::small_requests(&direct_list, config.small_n, true))?;
    let (p50, p99, d50, d99) = (
        percentile(&p.millis, 50.0),
        percentile(&p.millis, 99.0),
        percentile(&d.millis, 50.0),
        percentile(&d.millis, 99.0),
    );
    let row = [
        "artifact list (20 files) vs ListObjectsV2, keep-alive, p50 / p99".to_owned(),
        format!("{p50:.2} / {p99:.2} ms"),
        format!("{d50:.2} / {d99:.2} ms"),
        format!("{:.2}", p50 / d50.max(1e-9)),
        String::new(),
        String::new(),
    ];
    println!("  {}", row.join(" | "));
    table.rows.push(row);
    table.json.push(json!({"scenario": "artifact list 20 files, keep-alive", "proxy_p50_ms": round(p50, 3), "proxy_p99_ms": round(p99, 3), "direct_p50_ms": round(d50, 3), "direct_p99_ms": round(d99, 3)}));
    drop(proxy);
    Ok(table)
}
