//! Child processes and what Linux says about them under /proc: RSS, peak RSS, bytes written
//! to storage, CPU time, process trees, and the whole machine's CPU use (to show noise from
//! other work on a shared host).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Clock ticks per second for /proc/<pid>/stat and /proc/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

pub use testkit::proxy::free_port;

/// A child process that is stopped (SIGTERM, then SIGKILL) together with its descendants when
/// dropped.
pub struct Managed {
    pub name: String,
    child: Child,
    /// Last lines of output when it goes to a pipe instead of a file.
    pub tail: Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
}

impl Managed {
    /// Start `command` with its output in the file `log`, or, with `None`, in a pipe that a
    /// thread drains, keeping the last 30 lines in memory (so that the process itself writes
    /// nothing to any file: its logs go where a container runtime would take them).
    pub fn spawn(name: &str, command: &mut Command, log: Option<&Path>) -> Result<Managed, String> {
        let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        command.stdin(Stdio::null());
        match log {
            Some(log) => {
                let out =
                    std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
                let err = out
                    .try_clone()
                    .map_err(|e| format!("{}: {e}", log.display()))?;
                command.stdout(Stdio::from(out)).stderr(Stdio::from(err));
            }
            None => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let readers: Vec<Box<dyn std::io::Read + Send>> = [
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for reader in readers {
            let tail = tail.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(reader)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut t = tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if t.len() >= 30 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
        }
        Ok(Managed {
            name: name.to_owned(),
            child,
            tail,
        })
    }

    pub fn last_lines(&self) -> String {
        let t = self
            .tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err if the process has already exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let mut pids = descendants(self.pid());
        pids.push(self.pid());
        signal(&pids, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever is left of the tree (MLflow's workers linger) goes now.
        let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(500));
            signal(&left, "KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut command = Command::new("kill");
    command.arg(format!("-{sig}"));
    for pid in pids {
        command.arg(pid.to_string());
    }
    let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn alive(pid: u32) -> bool {
    // A zombie has a stat file but no memory; treat it as gone.
    read_stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

/// Fields of /proc/<pid>/stat after the `(comm)`: state, ppid, ... (index 0 = state).
fn read_stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of one process, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    read_stat_fields(pid)
        .and_then(|f| {
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SEC)
        })
        .unwrap_or(0.0)
}

/// All processes below `root` (children, grandchildren, ...).
/// Every process id under /proc.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    for pid in all_pids() {
        if let Some(ppid) =
            read_stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
        {
            parent_of.insert(pid, ppid);
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid) in &parent_of {
            if *ppid == parent && !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    found
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory now, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:").unwrap_or(0)
}

/// Peak resident memory since start or since the last `reset_peak`, KiB.
pub fn hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:").unwrap_or(0)
}

/// Reset VmHWM to the current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux ≥ 4.0).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Storage I/O of one process, from /proc/<pid>/io.
#[derive(Clone, Copy, Debug, Default)]
pub struct Io {
    /// Bytes this process caused to be sent to the storage layer (page cache writes count).
    pub write_bytes: u64,
    pub cancelled_write_bytes: u64,
    pub read_bytes: u64,
}

pub fn io(pid: u32) -> Option<Io> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(Io {
        write_bytes: field("write_bytes:"),
        cancelled_write_bytes: field("cancelled_write_bytes:"),
        read_bytes: field("read_bytes:"),
    })
}

/// Files this process holds open for writing outside /proc, /dev and sockets (should be none).
pub fn open_files(pid: u32) -> Vec<String> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') && !t.starts_with("/dev/") && !t.starts_with("/proc/") {
                    files.push(t);
                }
            }
        }
    }
    files
}

/// Busy and total CPU ticks of the whole machine (first line of /proc/stat).
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let values: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// CPU seconds the whole machine spent busy, for `machine_busy_secs() - ours` = foreign load.
pub fn machine_busy_secs() -> f64 {
    machine_ticks().0 as f64 / TICKS_PER_SEC
}

/// The machine's 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Wait (at most `max`) until the machine is nearly idle: other work on a shared host would
/// otherwise land in our figures. Returns the busy cores seen last and the seconds waited.
pub fn wait_quiet(threshold_cores: f64, max: Duration) -> (f64, f64) {
    let started = Instant::now();
    loop {
        let (b0, t0) = machine_ticks();
        std::thread::sleep(Duration::from_millis(400));
        let (b1, t1) = machine_ticks();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
        let busy = if t1 > t0 {
            (b1 - b0) as f64 / (t1 - t0) as f64 * cores
        } else {
            0.0
        };
        if busy < threshold_cores || started.elapsed() >= max {
            return (busy, started.elapsed().as_secs_f64());
        }
    }
}

/// Apparent size of all files under `dir`, bytes.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Environment variable of a running process (None if unreadable).
pub fn env_of(pid: u32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|b| *b == 0).find_map(|entry| {
        let text = String::from_utf8_lossy(entry);
        text.strip_prefix(&format!("{name}=")).map(str::to_owned)
    })
}

pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

fn parent(pid: u32) -> Option<u32> {
    read_stat_fields(pid).and_then(|f| f.get(1)?.parse().ok())
}

/// The process listening on 127.0.0.1:`port` (or any address), found through the socket inode
/// in /proc/net/tcp; then walked up while the parent is still an `mlflow` process, so that the
/// result is the root of the server's tree (the `mlflow server` launcher).
pub fn server_root_for_port(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let wanted = format!(":{port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1)?.ends_with(&wanted) && *cols.get(3)? == "0A")
            .then(|| cols.get(9).map(|s| (*s).to_owned()))?
    })?;
    let needle = format!("socket:[{inode}]");
    let mut owner = None;
    for pid in all_pids() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == needle))
        {
            owner = Some(owner.map_or(pid, |o: u32| o.min(pid)));
        }
    }
    let mut root = owner?;
    while let Some(p) = parent(root) {
        if p > 1 && cmdline(p).contains("mlflow") {
            root = p;
        } else {
            break;
        }
    }
    Some(root)
}

/// What a sampler saw while it ran.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Max VmRSS of each single process watched, KiB.
    pub peak_rss_kib: HashMap<u32, u64>,
    /// Max summed RSS of each process tree watched (root + descendants), KiB.
    pub peak_tree_kib: HashMap<u32, u64>,
    /// Max apparent size of each directory watched, bytes.
    pub peak_dir_bytes: HashMap<PathBuf, u64>,
}

/// Samples RSS and directory sizes every 20 ms on a thread of its own until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Samples>>,
}

impl Sampler {
    pub fn start(pids: Vec<u32>, trees: Vec<u32>, dirs: Vec<PathBuf>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Samples::default();
            let mut tick = 0u64;
            let mut tree_members: HashMap<u32, Vec<u32>> = HashMap::new();
            loop {
                for pid in &pids {
                    let rss = rss_kib(*pid);
                    let peak = samples.peak_rss_kib.entry(*pid).or_default();
                    *peak = (*peak).max(rss);
                }
                for root in &trees {
                    // The tree is rescanned every 25th sample (0.5 s): walking /proc is dear.
                    if tick.is_multiple_of(25) || !tree_members.contains_key(root) {
                        let mut members = descendants(*root);
                        members.push(*root);
                        tree_members.insert(*root, members);
                    }
                    let sum: u64 = tree_members[root].iter().map(|p| rss_kib(*p)).sum();
                    let peak = samples.peak_tree_kib.entry(*root).or_default();
                    *peak = (*peak).max(sum);
                }
                for dir in &dirs {
                    let size = dir_size(dir);
                    let peak = samples.peak_dir_bytes.entry(dir.clone()).or_default();
                    *peak = (*peak).max(size);
                }
                if flag.load(Ordering::Relaxed) {
                    return samples;
                }
                tick += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The proxy binary the benches run: `BENCH_PROXY_BIN`, or `cargo build --release --locked` of the
/// workspace at `root`.
pub fn proxy_binary(root: &Path) -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("BENCH_PROXY_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("building the proxy: cargo build --release --locked -p mlflow-artifact-proxy");
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "mlflow-artifact-proxy",
        ])
        .current_dir(root);
    // `cargo bench` sets per-package variables (CARGO_PKG_*, CARGO_MANIFEST_DIR, ...) for the
    // bench binary; build scripts that watch them would rebuild the proxy's dependencies on every
    // run. Build in the environment a shell would have.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_CRATE_")
            || name.starts_with("CARGO_BIN_")
            || matches!(
                name.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            command.env_remove(name.as_ref());
        }
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the proxy failed: {status}"));
    }
    Ok(target_dir.join("release").join("mlflow-artifact-proxy"))
}
