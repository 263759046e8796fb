//! Small questions to MLflow, asked by the proxy itself (auth probes, its version and modes, a
//! workspace's existence): one request on the kept-alive upstream pool, the answer read in full
//! up to a bound, all within a timeout.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::upstream::pool::PoolConfig;
use crate::upstream::quickack::QuickAckConnector;
use crate::wire::body::{ProxyBody, empty, full};

/// MLflow's answers to these questions are small (a version, server-info, a short error).
pub const ANSWER_LIMIT: usize = 64 * 1024;

/// MLflow's answer: status, headers, and the body (at most `ANSWER_LIMIT` bytes).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Where the proxy's own questions go.
#[derive(Clone, Debug)]
pub struct Target {
    /// MLflow's address (PROXY_UPSTREAM).
    pub base: Uri,
    /// The `Host` of every question: the upstream's own address, which MLflow's allowed hosts
    /// admit wherever the proxy can reach it (the chart's list has no `localhost`).
    pub host: HeaderValue,
    /// MLflow's `--static-prefix` ("" for none): every route of MLflow's is under it.
    pub static_prefix: String,
    /// The lifetimes of pooled connections (`pool`).
    pub pool: PoolConfig,
}

impl Target {
    pub fn new(base: Uri, static_prefix: &str, pool: PoolConfig) -> Result<Self, String> {
        let host = base
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or_else(|| format!("PROXY_UPSTREAM={base} names no host"))?;
        Ok(Target {
            base,
            host,
            static_prefix: static_prefix.to_owned(),
            pool,
        })
    }
}

pub struct Asker {
    target: Target,
    client: Client<QuickAckConnector, ProxyBody>,
    timeout: Duration,
}

impl Asker {
    pub fn new(target: Target, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Asker {
            // The same kept-alive, retired-in-time connections as pass-through (`pool`).
            client: crate::upstream::pool::client(connector, target.pool),
            target,
            timeout,
        }
    }

    pub fn base(&self) -> &Uri {
        &self.target.base
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `Host` for questions not asked with a client's own.
    pub fn host(&self) -> HeaderValue {
        self.target.host.clone()
    }

    /// One request; `json_body` is sent with `Content-Type: application/json`. Err says why
    /// there is no answer (unreachable, timed out, unreadable); it names MLflow's address, so
    /// it belongs in the log, not in a client's answer.
    pub async fn ask(
        &self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        json_body: Option<Bytes>,
    ) -> Result<Answer, String> {
        self.ask_limited(method, path_and_query, headers, json_body, ANSWER_LIMIT)
            .await
    }

    /// [`Asker::ask`], the answer read up to `limit` bytes (more is an error).
    pub async fn ask_limited(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        json_body: Option<Bytes>,
        limit: usize,
    ) -> Result<Answer, String> {
        let mut parts = self.target.base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{}{path_and_query}", self.target.static_prefix)
                .parse()
                .map_err(|e| format!("request URI: {e}"))?,
        );
        let uri = Uri::from_parts(parts).map_err(|e| format!("request URI: {e}"))?;
        let body = match json_body {
            Some(bytes) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                full(bytes)
            }
            None => empty(),
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let retire = crate::upstream::pool::Retire::watch(&mut request, &self.target.pool);
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("MLflow at {}: {e}", self.target.base))?;
            retire.after(&response);
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| format!("reading MLflow's answer: {e}"))?
                .to_bytes();
            Ok::<_, String>(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "MLflow at {} did not answer within {} s",
                    self.target.base,
                    self.timeout.as_secs()
                )
            })?
    }
}
