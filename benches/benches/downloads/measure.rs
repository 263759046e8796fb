//! What the scenarios measure of each side: CPU seconds per process (from /proc) and, over the
//! rounds, MiB/s, time to first byte and CPU seconds per GiB.

use std::collections::HashMap;

use benches::client::MIB;
use benches::procs;
use benches::stats::round;
use serde_json::{Value, json};

/// CPU seconds of a set of processes (trees summed), for per-transfer accounting.
pub struct Cpu {
    pids: Vec<(String, u32, bool)>,
    before: Vec<f64>,
}

fn cpu_of(pid: u32, tree: bool) -> f64 {
    if !tree {
        return procs::cpu_secs(pid);
    }
    let mut pids = procs::descendants(pid);
    pids.push(pid);
    pids.iter().map(|p| procs::cpu_secs(*p)).sum()
}

impl Cpu {
    /// Start counting for each (name, pid, whole tree).
    pub fn start(pids: Vec<(String, u32, bool)>) -> Cpu {
        let before = pids.iter().map(|(_, p, t)| cpu_of(*p, *t)).collect();
        Cpu { pids, before }
    }

    /// CPU seconds each used since `start`.
    pub fn end(&self) -> Vec<(String, f64)> {
        self.pids
            .iter()
            .zip(&self.before)
            .map(|((n, p, t), b)| (n.clone(), cpu_of(*p, *t) - b))
            .collect()
    }
}

/// What one side of a comparison did, over its rounds.
#[derive(Default)]
pub struct Side {
    pub mib_s: Vec<f64>,
    pub ttfb_ms: Vec<f64>,
    pub cpu: HashMap<String, f64>,
    pub bytes: u64,
}

impl Side {
    pub fn add_cpu(&mut self, cpu: Vec<(String, f64)>) {
        for (n, c) in cpu {
            *self.cpu.entry(n).or_default() += c;
        }
    }

    pub fn cpu_per_gib(&self) -> Value {
        let gib = self.bytes as f64 / (1024.0 * MIB as f64);
        Value::Object(
            self.cpu
                .iter()
                .map(|(n, c)| (n.clone(), json!(round(c / gib.max(1e-9), 2))))
                .collect(),
        )
    }

    pub fn cpu_text(&self) -> String {
        let gib = self.bytes as f64 / (1024.0 * MIB as f64);
        let mut parts: Vec<String> = self
            .cpu
            .iter()
            .map(|(n, c)| format!("{n} {:.2}", c / gib.max(1e-9)))
            .collect();
        parts.sort();
        parts.join(", ")
    }
}
