//! What the load bench prints and keeps: one table row per figure (printed as it is measured,
//! and once more as Markdown at the end), notes, and everything in `target/bench-results.json`.

use std::collections::HashMap;

use benches::client::{MIB, Transfer};
use benches::setup;
use benches::stats::{Spread, spread};
use serde_json::{Value, json};

use crate::Bench;

/// One line of the printed table.
struct Row {
    scenario: String,
    proxy: String,
    reference: String,
    ratio: String,
    rss: String,
}

pub struct Report {
    rows: Vec<Row>,
    json: serde_json::Map<String, Value>,
    notes: Vec<String>,
    /// Every scenario's detailed figures (the JSON's `scenarios`).
    pub scenarios: Vec<Value>,
    /// The headline figures (the JSON's `summary`).
    pub summary: serde_json::Map<String, Value>,
    /// (proxy process, bytes it wrote to storage since it started), for every proxy process the
    /// scenarios started and stopped themselves; `whole_run` adds the two that live throughout.
    pub writes: Vec<(String, u64)>,
}

/// `PROXY_*` settings from the environment (the proxies inherit them), except the addresses
/// the bench sets itself.
fn proxy_overrides() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("PROXY_")
                && !matches!(
                    k.as_str(),
                    "PROXY_LISTEN" | "PROXY_METRICS_LISTEN" | "PROXY_UPSTREAM"
                )
        })
        .collect()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

impl Report {
    /// A report that starts with the machine, the configuration and the proxy settings.
    pub fn new(bench: &Bench) -> Report {
        let config = &bench.config;
        let mut report = Report {
            rows: Vec::new(),
            json: serde_json::Map::new(),
            notes: Vec::new(),
            scenarios: Vec::new(),
            summary: serde_json::Map::new(),
            writes: Vec::new(),
        };
        report.json.insert(
            "machine".into(),
            json!({
                "cpus": cpus(),
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
                "cpu_model": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
                    .find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("").trim(),
                "mem_total": std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or("").trim(),
            }),
        );
        let overrides = proxy_overrides();
        report.json.insert(
            "config".into(),
            json!({
                "variant": config.variant(),
                "single_stream_mib": config.size / MIB, "rounds": config.rounds,
                "concurrent": config.concurrent.iter().map(|(n, m)| json!({"transfers": n, "mib_each": m})).collect::<Vec<_>>(),
                "small_requests": config.small_n, "s3_server": bench.s3.kind, "proxy_bin": bench.proxy_bin.display().to_string(),
                "proxy_settings": "defaults: PROXY_SINGLE_PUT_MAX_MIB=1024, PROXY_PART_SIZE_MIB=8, PROXY_PARTS_IN_FLIGHT=4, PROXY_UPLOAD_BUDGET_MIB=128; overrides from the environment (the proxy inherits it) in proxy_env",
                "proxy_env": overrides,
            }),
        );
        if !overrides.is_empty() {
            let mut pairs: Vec<String> =
                overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.sort();
            report.note(format!(
                "proxy settings from the environment: {}",
                pairs.join(" ")
            ));
        }
        report
    }

    /// Print a row of the table and keep it for the Markdown copy.
    pub fn row(
        &mut self,
        scenario: &str,
        proxy: String,
        reference: String,
        ratio: String,
        rss: String,
    ) {
        println!("  {scenario:<58} {proxy:<28} {reference:<34} {ratio:<7} {rss}");
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            proxy,
            reference,
            ratio,
            rss,
        });
    }

    /// A top-level entry of the JSON.
    pub fn json_insert(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_owned(), value);
    }

    pub fn note(&mut self, text: String) {
        println!("  note: {text}");
        self.notes.push(text);
    }

    /// Print the table once more as Markdown, with the notes, and write the JSON.
    pub fn finish(mut self, bench: &Bench) -> Result<(), String> {
        self.json
            .insert("summary".into(), Value::Object(self.summary));
        self.json
            .insert("scenarios".into(), Value::Array(self.scenarios));
        self.json.insert("notes".into(), json!(self.notes));

        let mut table = String::new();
        table.push_str(&format!(
            "\nResults ({} variant; {} CPUs, loopback; S3 server: {}; medians with (min–max)):\n\n",
            bench.config.variant(),
            cpus(),
            bench.s3.kind
        ));
        table.push_str("| scenario | proxy | reference | proxy / ref | proxy peak RSS MiB |\n|---|---|---|---|---|\n");
        for row in &self.rows {
            table.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                row.scenario, row.proxy, row.reference, row.ratio, row.rss
            ));
        }
        println!("{table}");
        for note in &self.notes {
            println!("- {note}");
        }
        self.json.insert("table_markdown".into(), json!(table));
        let target_dir = setup::target_dir();
        let out = target_dir.join("bench-results.json");
        std::fs::create_dir_all(&target_dir).map_err(|e| e.to_string())?;
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&Value::Object(self.json)).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{}: {e}", out.display()))?;
        println!("\nJSON: {}", out.display());
        Ok(())
    }
}

/// `a / b` with two decimals, `-` when there is no reference.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

/// The spread of one per-transfer time, in milliseconds.
pub fn spread_ms(transfers: &[Transfer], secs: impl Fn(&Transfer) -> f64) -> Spread {
    spread(
        &transfers
            .iter()
            .map(|t| secs(t) * 1000.0)
            .collect::<Vec<_>>(),
    )
}
