//! The real proxy binary as a process of its own in front of the S3 server and an MLflow (or a
//! stand-in), its log read line by line.

use super::{FakeMlflow, PATIENCE, S3Server};

/// The real proxy binary in front of `s3` and `mlflow`, on ports it picks itself (its log says
/// which), its log (stderr) read line by line; killed when the test ends, passed or not.
pub struct ProxyBinary {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

/// The proxy binary with an empty environment but the store and the upstream. The fake MLflow
/// has no auth app to ask, so `PROXY_MLFLOW_AUTH=off`.
pub fn proxy_command(binary: &str, s3: &S3Server, mlflow: &FakeMlflow) -> std::process::Command {
    proxy_command_to(binary, s3, &s3.endpoint, &format!("http://{}", mlflow.addr))
}

/// As `proxy_command`, with the store reached at `endpoint` (e.g. through a TLS terminator) and
/// MLflow at `upstream`.
pub fn proxy_command_to(
    binary: &str,
    s3: &S3Server,
    endpoint: &str,
    upstream: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PROXY_MLFLOW_AUTH", "off");
    let store = testkit::proxy::Store {
        endpoint,
        bucket: &s3.bucket,
        access_key: &s3.access_key,
        secret_key: &s3.secret_key,
        region: &s3.region,
    };
    testkit::proxy::store_and_upstream(&mut command, &store, upstream);
    command
}

impl ProxyBinary {
    /// Start it with an empty environment but the store, the upstream and `RUST_LOG=info`, plus
    /// `extra`. The fake MLflow has no auth app to ask, so `PROXY_MLFLOW_AUTH=off`.
    pub fn spawn(s3: &S3Server, mlflow: &FakeMlflow, extra: &[(&str, &str)]) -> ProxyBinary {
        let mut command = proxy_command(env!("CARGO_BIN_EXE_mlflow-artifact-proxy"), s3, mlflow);
        command
            .env("PROXY_LISTEN", "127.0.0.1:0")
            .env("PROXY_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped());
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        ProxyBinary { child, lines }
    }

    /// The next line of its log (waiting at most [`PATIENCE`]). Blocks this worker thread only:
    /// the in-process S3 and MLflow keep running on the other (the tests use a multi-threaded
    /// runtime).
    pub fn next_line(&self) -> String {
        tokio::task::block_in_place(|| self.lines.recv_timeout(PATIENCE))
            .expect("a log line from the proxy")
    }
}

impl Drop for ProxyBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
