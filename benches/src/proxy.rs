//! The proxy under test as a process of its own (`procs::proxy_binary` builds it), one per
//! configuration, so that its RSS, CPU and /proc/<pid>/io are its own.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::client;
use crate::procs::{self, Managed};
use crate::setup::{ACCESS_KEY, BUCKET, SECRET_KEY};
use testkit::proxy::Store;

/// One proxy process and its addresses.
pub struct ProxyProc {
    pub process: Managed,
    /// `http://127.0.0.1:P`, the artifact and pass-through port.
    pub url: String,
    /// `http://127.0.0.1:Q`, the operations port (`/readyz`, `/metrics`).
    pub metrics: String,
    pub label: String,
}

/// Start `bin serve` on free loopback ports, storing into the bench bucket at `store_url`
/// (signing for `region`) and passing MLflow's routes to `upstream`; `env` adds or overrides
/// settings (`PROXY_*` from the bench's own environment are inherited). Its output goes to a pipe
/// kept in memory: the proxy's access log must not count as disk writes. Does not wait: see
/// `wait_ready`.
pub fn start_proxy(
    bin: &Path,
    label: &str,
    store_url: &str,
    region: &str,
    upstream: &str,
    env: &[(&str, String)],
) -> Result<ProxyProc, String> {
    let mut command = Command::new(bin);
    command.arg("serve").env_remove("RUST_LOG");
    let (addr, metrics) =
        testkit::proxy::listen_on_free_ports(&mut command).map_err(|e| e.to_string())?;
    let store = Store {
        endpoint: store_url,
        bucket: BUCKET,
        access_key: ACCESS_KEY,
        secret_key: SECRET_KEY,
        region,
    };
    testkit::proxy::store_and_upstream(&mut command, &store, upstream);
    for (name, value) in env {
        command.env(name, value);
    }
    let process = Managed::spawn(label, &mut command, None)?;
    Ok(ProxyProc {
        process,
        url: format!("http://{addr}"),
        metrics: format!("http://{metrics}"),
        label: label.to_owned(),
    })
}

impl ProxyProc {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Wait (at most `within`) until `/readyz` answers 200; on failure the error carries the
    /// proxy's last output lines.
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let ready = client::wait_ok(&format!("{}/readyz", self.metrics), within).await;
        ready.map_err(|e| {
            let _ = self.process.check_alive();
            format!(
                "{}: {e}\nits output:\n{}",
                self.label,
                self.process.last_lines()
            )
        })
    }

    /// Bytes this process has caused to be written to storage since it started.
    pub fn write_bytes(&self) -> u64 {
        procs::io(self.pid()).map_or(0, |io| io.write_bytes)
    }
}
