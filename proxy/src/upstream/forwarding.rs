//! Which forwarding headers to believe. `X-Forwarded-For` from a client is its own say-so, so
//! it is replaced with the address the connection came from; `X-Forwarded-Proto` and
//! `X-Forwarded-Host` are kept only when that address is a configured front proxy (a TLS
//! terminator, say), so that MLflow builds `https://` redirects behind one and nobody else can
//! make it build URLs for another host or scheme. Other modules that build client-facing URLs
//! use `external_origin`, with the same rule.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use clap::Args;
use http::{HeaderMap, HeaderValue, header};
use ipnet::IpNet;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";

#[derive(Clone, Debug, Args)]
pub struct ForwardingArgs {
    /// Front proxies whose X-Forwarded-Proto, X-Forwarded-Host and X-Forwarded-For are believed:
    /// comma-separated addresses or CIDR ranges (e.g. 10.0.0.0/8,192.168.1.5). Empty: none; a
    /// client's forwarding headers are then replaced with what the connection shows.
    #[arg(long, env = "PROXY_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: String,
}

/// The front proxies whose forwarding headers are believed.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => item.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("PROXY_TRUSTED_PROXIES: {item:?} is not an address or CIDR range")
                })?,
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

impl ForwardingArgs {
    pub fn build(&self) -> Result<TrustedProxies, String> {
        self.trusted_proxies.parse()
    }
}

impl TrustedProxies {
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.0.iter().any(|net| net.contains(&peer))
    }

    /// Rewrite the forwarding headers of a request from `peer` before it goes to MLflow.
    pub fn apply(&self, headers: &mut HeaderMap, peer: SocketAddr) {
        let ip = canonical(peer.ip()).to_string();
        if self.trusts(peer.ip()) {
            // A front proxy we know: its chain stands, and it is the last hop.
            let chain = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let value = if chain.is_empty() {
                ip
            } else {
                format!("{chain}, {ip}")
            };
            set(headers, X_FORWARDED_FOR, &value);
            if forwarded_proto(headers).is_none() {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            }
        } else {
            set(headers, X_FORWARDED_FOR, &ip);
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
            headers.remove(X_FORWARDED_HOST);
            headers.remove(header::FORWARDED);
        }
    }

    /// The scheme and host a client used to reach us: from a trusted front proxy's forwarding
    /// headers, else `http` and the request's own Host (also when the peer is unknown).
    pub fn external_origin(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> (String, Option<String>) {
        let own_host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if !peer.is_some_and(|peer| self.trusts(peer.ip())) {
            return ("http".to_owned(), own_host);
        }
        let scheme = forwarded_proto(headers).unwrap_or("http").to_owned();
        let host = headers
            .get(X_FORWARDED_HOST)
            .and_then(|v| v.to_str().ok())
            // A chain of hosts: the first is the one the client used.
            .and_then(|v| v.split(',').next())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or(own_host);
        (scheme, host)
    }
}

/// `X-Forwarded-Proto` when it says `http` or `https` (the first of a chain).
fn forwarded_proto(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get(X_FORWARDED_PROTO)?.to_str().ok()?;
    match value
        .split(',')
        .next()?
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    }
}

/// An IPv4 peer seen on a dual-stack socket (`::ffff:a.b.c.d`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn lists_parse() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.5,::1".parse().unwrap();
        assert!(t.trusts("10.2.3.4".parse().unwrap()));
        assert!(t.trusts("192.168.1.5".parse().unwrap()));
        assert!(!t.trusts("192.168.1.6".parse().unwrap()));
        assert!(t.trusts("::1".parse().unwrap()));
        assert!(t.trusts("::ffff:10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nope".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().0.is_empty());
    }

    #[test]
    fn an_untrusted_client_cannot_forge() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let none = TrustedProxies::default();
        assert_eq!(
            none.external_origin(&h, Some(peer)),
            ("http".to_owned(), None)
        );
        none.apply(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn a_trusted_front_proxy_is_believed() {
        let mut h = headers(&[
            ("host", "internal:5000"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "mlflow.example.com"),
        ]);
        let peer: SocketAddr = "10.1.1.1:4000".parse().unwrap();
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            trusted.external_origin(&h, Some(peer)),
            ("https".to_owned(), Some("mlflow.example.com".to_owned()))
        );
        trusted.apply(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "mlflow.example.com");
    }
}
