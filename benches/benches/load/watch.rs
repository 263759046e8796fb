//! What was seen of the processes during one scenario: CPU seconds of each (and of the bench
//! client, and of other work on the machine), the proxy's peak RSS and storage I/O, and for
//! stock MLflow the RSS of its whole process tree and the size of its temp folder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use benches::client::MIB;
use benches::procs::{self, Sampler};
use benches::stats::round;
use serde_json::{Value, json};

pub struct Watch {
    label: String,
    proxy: Option<u32>,
    others: Vec<(String, u32)>,
    tree: Option<(String, u32)>,
    temp_dir: Option<PathBuf>,
    io_before: Option<procs::Io>,
    cpu_before: HashMap<u32, f64>,
    tree_cpu_before: f64,
    busy_before: f64,
    started: Instant,
    sampler: Sampler,
}

fn tree_cpu(root: u32) -> f64 {
    let mut pids = procs::descendants(root);
    pids.push(root);
    pids.iter().map(|p| procs::cpu_secs(*p)).sum()
}

impl Watch {
    /// Start watching: the `proxy` process, `others` (named, CPU only), a process `tree` (named
    /// by its root: CPU and summed RSS) and a `temp_dir` (its size).
    pub fn begin(
        label: &str,
        proxy: Option<u32>,
        others: Vec<(String, u32)>,
        tree: Option<(String, u32)>,
        temp_dir: Option<PathBuf>,
    ) -> Watch {
        if let Some(p) = proxy {
            procs::reset_peak(p);
        }
        let mut cpu_before = HashMap::new();
        for pid in proxy.iter().chain(others.iter().map(|(_, p)| p)) {
            cpu_before.insert(*pid, procs::cpu_secs(*pid));
        }
        cpu_before.insert(std::process::id(), procs::cpu_secs(std::process::id()));
        let tree_cpu_before = tree.as_ref().map_or(0.0, |(_, r)| tree_cpu(*r));
        let sampler = Sampler::start(
            proxy.into_iter().collect(),
            tree.iter().map(|(_, r)| *r).collect(),
            temp_dir.iter().cloned().collect(),
        );
        Watch {
            label: label.to_owned(),
            proxy,
            io_before: proxy.and_then(procs::io),
            others,
            tree,
            temp_dir,
            cpu_before,
            tree_cpu_before,
            busy_before: procs::machine_busy_secs(),
            started: Instant::now(),
            sampler,
        }
    }

    /// Stop watching; the figures as JSON (`proxy_peak_rss_mib`, `cpu`, `foreign_cores`, ...).
    pub fn end(self) -> Value {
        let wall = self.started.elapsed().as_secs_f64();
        let busy = procs::machine_busy_secs() - self.busy_before;
        let samples = self.sampler.finish();
        let mut cpu = serde_json::Map::new();
        let mut ours = 0.0;
        let names: Vec<(String, u32)> = self
            .proxy
            .map(|p| ("proxy".to_owned(), p))
            .into_iter()
            .chain(self.others.iter().cloned())
            .chain(std::iter::once((
                "bench client".to_owned(),
                std::process::id(),
            )))
            .collect();
        for (name, pid) in &names {
            let used = procs::cpu_secs(*pid) - self.cpu_before.get(pid).copied().unwrap_or(0.0);
            ours += used;
            cpu.insert(format!("{name} cpu_s"), json!(round(used, 2)));
        }
        let mut result = json!({"scenario": self.label, "wall_s": round(wall, 3)});
        if let Some((name, root)) = &self.tree {
            let used = tree_cpu(*root) - self.tree_cpu_before;
            ours += used;
            cpu.insert(format!("{name} cpu_s"), json!(round(used, 2)));
            result["stock_tree_peak_rss_mib"] = json!(round(
                samples.peak_tree_kib.get(root).copied().unwrap_or(0) as f64 / 1024.0,
                1
            ));
        }
        if let Some(dir) = &self.temp_dir {
            result["stock_temp_peak_mib"] = json!(round(
                samples.peak_dir_bytes.get(dir).copied().unwrap_or(0) as f64 / MIB as f64,
                1
            ));
        }
        result["cpu"] = Value::Object(cpu);
        result["foreign_cores"] = json!(round((busy - ours) / wall.max(1e-9), 2));
        if let Some(p) = self.proxy {
            let sampled = samples.peak_rss_kib.get(&p).copied().unwrap_or(0);
            let peak = procs::hwm_kib(p).max(sampled);
            result["proxy_peak_rss_mib"] = json!(round(peak as f64 / 1024.0, 1));
            result["proxy_rss_after_mib"] = json!(round(procs::rss_kib(p) as f64 / 1024.0, 1));
            if let (Some(before), Some(after)) = (self.io_before, procs::io(p)) {
                result["proxy_write_bytes"] = json!(after.write_bytes - before.write_bytes);
                result["proxy_read_bytes"] = json!(after.read_bytes - before.read_bytes);
            }
        }
        result
    }
}

/// The proxy's peak RSS from a watch, for the table's last column.
pub fn rss_of(watch: &Value) -> String {
    watch["proxy_peak_rss_mib"]
        .as_f64()
        .map_or_else(String::new, |v| format!("{v:.1}"))
}
