//! One measured row of the auth bench (a target, its credentials and connection handling) and
//! one round of measured GETs on it.

use std::time::{Duration, Instant};

use benches::client::{self, Target};
use benches::stack;
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper::client::conn::http1::SendRequest;

/// Unmeasured requests after (re)opening a kept-alive connection.
const WARM: usize = 3;
/// A kept-alive connection idle this long is re-opened before its next round (uvicorn closes
/// idle connections after 5 s).
const MAX_IDLE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    KeepAlive,
    New,
}

/// One measured row.
pub struct Row {
    pub name: &'static str,
    pub url: String,
    /// Request-target and credentials (None: a presigned URL, which carries its own).
    pub path: String,
    pub authorization: Option<String>,
    pub connection: Connection,
    /// The proxy serving it (None: MLflow itself).
    pub proxy_pid: Option<u32>,
    pub millis: Vec<f64>,
    /// CPU seconds over the measured requests: the serving proxy, MLflow's tree, s3s-fs.
    pub cpu: [f64; 3],
    /// Unmeasured requests sent (warm-ups), and connections re-opened.
    pub unmeasured: usize,
    pub reconnects: usize,
    sender: Option<(SendRequest<client::ReqBody>, Instant)>,
}

impl Row {
    pub fn new(
        name: &'static str,
        url: &str,
        path: &str,
        authorization: Option<&str>,
        connection: Connection,
        proxy: Option<&stack::Proxy>,
    ) -> Row {
        Row {
            name,
            url: url.to_owned(),
            path: path.to_owned(),
            authorization: authorization.map(str::to_owned),
            connection,
            proxy_pid: proxy.map(|p| p.process.pid()),
            millis: Vec::new(),
            cpu: [0.0; 3],
            unmeasured: 0,
            reconnects: 0,
            sender: None,
        }
    }
}

/// GET the artifact on an open connection; anything but 200 with exactly `data` is an error.
async fn get_on(
    sender: &mut SendRequest<client::ReqBody>,
    target: &Target,
    path: &str,
    authorization: Option<&str>,
    data: &Bytes,
) -> Result<(), String> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let (status, body) =
        stack::send_on(sender, target, Method::GET, path, &headers, Bytes::new()).await?;
    if status != StatusCode::OK || body != *data {
        return Err(format!(
            "GET {}{path} answered {status} with {} bytes ({})",
            target.addr,
            body.len(),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(())
}

/// One round of `n` measured GETs on `row`'s target.
pub async fn measure_round(
    row: &mut Row,
    n: usize,
    data: &Bytes,
    cpu_pids: &dyn Fn(Option<u32>) -> [f64; 3],
) -> Result<(), String> {
    let target = Target::parse(&row.url)?;
    let (path, authorization) = (row.path.clone(), row.authorization.clone());
    let (path, authorization) = (path.as_str(), authorization.as_deref());
    if row.connection == Connection::KeepAlive {
        let stale = row
            .sender
            .as_ref()
            .is_none_or(|(s, used)| s.is_closed() || used.elapsed() >= MAX_IDLE);
        if stale {
            if row.sender.is_some() {
                row.reconnects += 1;
            }
            let mut sender = client::connect(target.addr).await?;
            for _ in 0..WARM {
                get_on(&mut sender, &target, path, authorization, data).await?;
            }
            row.unmeasured += WARM;
            row.sender = Some((sender, Instant::now()));
        }
    }
    let before = cpu_pids(row.proxy_pid);
    for _ in 0..n {
        let started = Instant::now();
        match (&mut row.sender, row.connection) {
            (Some((sender, _)), Connection::KeepAlive) => {
                get_on(sender, &target, path, authorization, data).await?;
            }
            _ => {
                let mut fresh = client::connect(target.addr).await?;
                get_on(&mut fresh, &target, path, authorization, data).await?;
            }
        }
        row.millis.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let after = cpu_pids(row.proxy_pid);
    for (i, cpu) in row.cpu.iter_mut().enumerate() {
        *cpu += after[i] - before[i];
    }
    if let Some((_, used)) = &mut row.sender {
        *used = Instant::now();
    }
    Ok(())
}
