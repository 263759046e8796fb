//! MLflow's security middleware (`mlflow/server/fastapi_security.py`), applied to the routes the
//! proxy answers itself. Without it the proxy would silently weaken MLflow: no DNS-rebinding
//! check on the Host header, cross-origin writes allowed, no security headers. Same environment
//! variables, same defaults, same answers.

use bytes::Bytes;
use clap::Args;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use crate::wire::body::{ProxyBody, full};

const INVALID_HOST: &str = "Invalid Host header - possible DNS rebinding attack detected";
const CORS_BLOCKED: &str = "Cross-origin request blocked";

#[derive(Clone, Debug, Args)]
pub struct SecurityArgs {
    /// Host headers accepted (comma-separated, fnmatch wildcards, `*` for any); the same variable
    /// MLflow reads. Default: localhost and private-network addresses, as MLflow.
    #[arg(long, env = "MLFLOW_SERVER_ALLOWED_HOSTS")]
    pub allowed_hosts: Option<String>,
    /// Origins allowed to make state-changing cross-origin requests (comma-separated, wildcards,
    /// `*` for any); localhost origins always are.
    #[arg(long, env = "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")]
    pub cors_allowed_origins: Option<String>,
    /// X-Frame-Options on every answer; NONE leaves it out.
    #[arg(
        long,
        env = "MLFLOW_SERVER_X_FRAME_OPTIONS",
        default_value = "SAMEORIGIN"
    )]
    pub x_frame_options: String,
    /// "true" turns all of the above off (as MLflow's --disable-security-middleware).
    #[arg(
        long,
        env = "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE",
        default_value = "false"
    )]
    pub disable_security_middleware: String,
}

#[derive(Clone, Debug)]
pub struct Security {
    disabled: bool,
    /// `None`: every host is accepted.
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Vec<String>,
    x_frame_options: Option<HeaderValue>,
}

fn split_list(value: Option<&str>) -> Option<Vec<String>> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| v.split(',').map(|item| item.trim().to_owned()).collect())
}

/// `get_default_allowed_hosts`.
fn default_allowed_hosts() -> Vec<String> {
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]", "0.0.0.0"]
        .iter()
        .map(|h| (*h).to_owned())
        .collect();
    hosts.extend(["localhost:*", "127.0.0.1:*", "[[]::1]:*", "0.0.0.0:*"].map(str::to_owned));
    hosts.extend(["192.168.*", "10.*"].map(str::to_owned));
    hosts.extend((16..32).map(|i| format!("172.{i}.*")));
    hosts.extend(["fc00:*", "fd00:*"].map(str::to_owned));
    hosts
}

impl SecurityArgs {
    pub fn build(&self) -> Result<Security, String> {
        let hosts = split_list(self.allowed_hosts.as_deref()).unwrap_or_else(default_allowed_hosts);
        let x_frame = self.x_frame_options.to_uppercase();
        Ok(Security {
            disabled: self.disable_security_middleware == "true",
            allowed_hosts: (!hosts.iter().any(|h| h == "*")).then_some(hosts),
            allowed_origins: split_list(self.cors_allowed_origins.as_deref()).unwrap_or_default(),
            x_frame_options: if x_frame.is_empty() || x_frame == "NONE" {
                None
            } else {
                Some(HeaderValue::from_str(&x_frame).map_err(|_| {
                    format!("MLFLOW_SERVER_X_FRAME_OPTIONS={x_frame:?} is not a header value")
                })?)
            },
        })
    }
}

impl Default for Security {
    /// MLflow's defaults.
    fn default() -> Self {
        SecurityArgs {
            allowed_hosts: None,
            cors_allowed_origins: None,
            x_frame_options: "SAMEORIGIN".into(),
            disable_security_middleware: "false".into(),
        }
        .build()
        .expect("the defaults are valid")
    }
}

/// What of the request the answer depends on, kept before the request is consumed.
pub struct RequestFacts {
    origin: Option<String>,
}

impl Security {
    fn allow_all_origins(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }

    /// MLflow's answer to a request without a Host header (HTTP/1.0) while it checks hosts: its
    /// host check refuses an empty host (`/health` and `/version` are exempt). Passed through,
    /// the request would get MLflow's own address as its Host from the proxy's client, and be
    /// allowed.
    pub fn reject_hostless<B>(&self, request: &Request<B>) -> Option<Response<ProxyBody>> {
        let exempt = matches!(request.uri().path(), "/health" | "/version");
        (!self.disabled
            && self.allowed_hosts.is_some()
            && !exempt
            && !request.headers().contains_key(header::HOST))
        .then(|| plain(StatusCode::FORBIDDEN, INVALID_HOST))
    }

    /// The answer MLflow would give instead of serving the request, if any: a foreign Host (403),
    /// or a state-changing request from a foreign origin (403).
    pub fn reject<B>(&self, request: &Request<B>) -> Option<Response<ProxyBody>> {
        if self.disabled {
            return None;
        }
        if let Some(allowed) = &self.allowed_hosts {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !is_allowed_host(allowed, host) {
                tracing::warn!("rejected request with invalid Host header: {host}");
                // The outermost middleware: nothing else is added to this answer.
                return Some(plain(StatusCode::FORBIDDEN, INVALID_HOST));
            }
        }
        let origin = origin_of(request.headers());
        if !self.allow_all_origins()
            && let Some(origin) = &origin
            && self.blocks(origin, request.method())
        {
            tracing::warn!("blocked cross-origin request from {origin}");
            let mut answer = plain(StatusCode::FORBIDDEN, CORS_BLOCKED);
            self.add_cors_headers(Some(origin), answer.headers_mut());
            return Some(answer);
        }
        None
    }

    pub fn facts<B>(&self, request: &Request<B>) -> RequestFacts {
        RequestFacts {
            origin: origin_of(request.headers()),
        }
    }

    /// The headers MLflow's middleware adds to every answer of its API routes.
    pub fn decorate(&self, facts: &RequestFacts, response: &mut Response<ProxyBody>) {
        if self.disabled {
            return;
        }
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Some(value) = &self.x_frame_options {
            headers.insert(header::X_FRAME_OPTIONS, value.clone());
        }
        self.add_cors_headers(facts.origin.as_deref(), headers);
    }

    /// `should_block_cors_request`.
    fn blocks(&self, origin: &str, method: &Method) -> bool {
        let state_changing = matches!(
            *method,
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH
        );
        if origin.is_empty() || !state_changing || is_localhost_origin(origin) {
            return false;
        }
        !self.allowed_origins.iter().any(|allowed| {
            if allowed.contains('*') {
                fnmatch(origin, allowed)
            } else {
                origin == allowed
            }
        })
    }

    /// Starlette's `CORSMiddleware` on a simple (non-preflight) request, as MLflow configures it.
    fn add_cors_headers(&self, origin: Option<&str>, headers: &mut HeaderMap) {
        let all = self.allow_all_origins();
        if origin.is_some() {
            if all {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            } else {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("*"),
            );
        }
        if let Some(origin) = origin
            && !all
            && (is_localhost_origin_pattern(origin)
                || self.allowed_origins.iter().any(|o| o == origin))
            && let Ok(value) = HeaderValue::from_str(origin)
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned())
}

fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// `is_allowed_host_header`: exact, or fnmatch when the pattern has a `*`.
fn is_allowed_host(allowed: &[String], host: &str) -> bool {
    !host.is_empty()
        && allowed.iter().any(|pattern| {
            if pattern.contains('*') {
                fnmatch(host, pattern)
            } else {
                host == pattern
            }
        })
}

/// `is_localhost_origin`: the origin's host name is a loopback name.
fn is_localhost_origin(origin: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let netloc = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = netloc.rsplit_once('@').map_or(netloc, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    matches!(
        host.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    )
}

/// MLflow's `LOCALHOST_ORIGIN_PATTERNS` (`http://localhost(:port)?` and the loopback addresses).
fn is_localhost_origin_pattern(origin: &str) -> bool {
    ["http://localhost", "http://127.0.0.1", "http://[::1]"]
        .iter()
        .any(|base| {
            origin.strip_prefix(base).is_some_and(|rest| {
                rest.is_empty()
                    || rest.strip_prefix(':').is_some_and(|port| {
                        !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                    })
            })
        })
}

/// Python's `fnmatch.fnmatch` on POSIX (case-sensitive): `*`, `?`, `[seq]`, `[!seq]`.
pub fn fnmatch(name: &str, pattern: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    matches_from(&name, &pattern)
}

fn matches_from(name: &[char], pattern: &[char]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|skip| matches_from(&name[skip..], &pattern[1..])),
        Some('?') => !name.is_empty() && matches_from(&name[1..], &pattern[1..]),
        Some('[') => match parse_class(&pattern[1..]) {
            Some((negated, items, consumed)) => {
                let Some(&c) = name.first() else { return false };
                let inside = items.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                inside != negated && matches_from(&name[1..], &pattern[1 + consumed..])
            }
            // An unclosed `[` is a literal.
            None => name.first() == Some(&'[') && matches_from(&name[1..], &pattern[1..]),
        },
        Some(&literal) => name.first() == Some(&literal) && matches_from(&name[1..], &pattern[1..]),
    }
}

/// A parsed `[...]` class: (negated, inclusive ranges, characters consumed including `]`).
type CharClass = (bool, Vec<(char, char)>, usize);

/// A `[...]` class after its `[`.
fn parse_class(rest: &[char]) -> Option<CharClass> {
    let mut i = 0;
    let negated = rest.first() == Some(&'!');
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    while i < rest.len() {
        let c = rest[i];
        if c == ']' && !first {
            return Some((negated, items, i + 1));
        }
        first = false;
        if rest.get(i + 1) == Some(&'-') && rest.get(i + 2).is_some_and(|&e| e != ']') {
            items.push((c, rest[i + 2]));
            i += 3;
        } else {
            items.push((c, c));
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_like_python() {
        assert!(fnmatch("localhost:5000", "localhost:*"));
        assert!(fnmatch("[::1]:5000", "[[]::1]:*"));
        assert!(fnmatch("192.168.1.7:5000", "192.168.*"));
        assert!(!fnmatch("evil.example.com", "192.168.*"));
        assert!(fnmatch("a1", "a[0-9]"));
        assert!(!fnmatch("a1", "a[!0-9]"));
        assert!(fnmatch("ab", "a?"));
    }

    #[test]
    fn default_hosts_are_mlflows() {
        let allowed = default_allowed_hosts();
        for ok in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "10.1.2.3:5000",
            "172.20.0.5",
        ] {
            assert!(is_allowed_host(&allowed, ok), "{ok}");
        }
        for bad in ["", "evil.example.com", "172.32.0.1", "mlflow:5000"] {
            assert!(!is_allowed_host(&allowed, bad), "{bad}");
        }
    }

    #[test]
    fn localhost_origins() {
        assert!(is_localhost_origin("http://localhost:3000"));
        assert!(is_localhost_origin("https://[::1]"));
        assert!(!is_localhost_origin("http://evil.example.com"));
        assert!(!is_localhost_origin("null"));
        assert!(is_localhost_origin_pattern("http://127.0.0.1:5000"));
        assert!(!is_localhost_origin_pattern("https://localhost"));
    }

    #[test]
    fn cross_origin_writes_are_blocked() {
        let security = Security::default();
        let put = |origin: &str| {
            Request::put("/api/2.0/mlflow-artifacts/artifacts/x")
                .header("host", "localhost:5000")
                .header("origin", origin)
                .body(())
                .unwrap()
        };
        let blocked = security
            .reject(&put("http://evil.example.com"))
            .expect("blocked");
        assert_eq!(blocked.status(), 403);
        assert!(security.reject(&put("http://localhost:3000")).is_none());
        let foreign_host = Request::get("/x")
            .header("host", "evil.example.com")
            .body(())
            .unwrap();
        assert_eq!(security.reject(&foreign_host).unwrap().status(), 403);
    }
}
