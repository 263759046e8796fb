//! The address clients reach the proxy at, for the URLs it hands out: configured, or taken from
//! the request (its Host; X-Forwarded-Proto/-Host only when a trusted front proxy sent them).

use std::net::SocketAddr;
use std::str::FromStr;

use clap::Args;
use http::HeaderMap;
use http::uri::Authority;

use crate::upstream::forwarding::TrustedProxies;

/// The TCP peer of a request, put into its extensions by the listener.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

#[derive(Clone, Debug, Args)]
pub struct PublicUrlArgs {
    /// The URL clients reach this proxy at (scheme, host and any path prefix), used in the
    /// multipart-upload and download URLs the proxy hands out. Unset: taken from each request.
    #[arg(long, env = "PROXY_PUBLIC_URL")]
    pub public_url: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct PublicUrl {
    /// `scheme://host[:port][/prefix]`, no trailing slash.
    fixed: Option<String>,
    /// Whose X-Forwarded-Proto/-Host are believed (PROXY_TRUSTED_PROXIES, `forwarding`).
    trusted: TrustedProxies,
}

impl PublicUrlArgs {
    pub fn build(&self, trusted: TrustedProxies) -> Result<PublicUrl, String> {
        let fixed = match self.public_url.as_deref().filter(|u| !u.is_empty()) {
            None => None,
            Some(raw) => {
                let url = url::Url::parse(raw)
                    .map_err(|e| format!("PROXY_PUBLIC_URL={raw:?} is not a URL: {e}"))?;
                if !matches!(url.scheme(), "http" | "https")
                    || url.host_str().is_none()
                    || url.query().is_some()
                {
                    return Err(format!(
                        "PROXY_PUBLIC_URL={raw:?} must be http(s)://host[:port][/prefix]"
                    ));
                }
                Some(url.as_str().trim_end_matches('/').to_owned())
            }
        };
        Ok(PublicUrl { fixed, trusted })
    }
}

impl PublicUrl {
    /// Configured base URL (tests, benches).
    pub fn fixed(url: &str) -> PublicUrl {
        PublicUrl {
            fixed: Some(url.trim_end_matches('/').to_owned()),
            trusted: TrustedProxies::default(),
        }
    }

    /// `scheme://authority[/prefix]` for a request, or None when it names no usable host.
    pub fn base(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
        if let Some(fixed) = &self.fixed {
            return Some(fixed.clone());
        }
        // Forwarding headers count only from a trusted front proxy: `forwarding`'s one rule.
        let (scheme, host) = self.trusted.external_origin(headers, peer);
        // Only a plain host[:port] goes into a URL: no user info, path or spaces.
        let authority = Authority::from_str(host?.trim()).ok()?;
        if authority.as_str().contains('@') {
            return None;
        }
        Some(format!("{scheme}://{authority}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let public = PublicUrlArgs { public_url: None }
            .build("10.0.0.0/8, ::1".parse().unwrap())
            .unwrap();
        let h = headers(&[
            ("host", "internal:5000"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "mlflow.example.com, other"),
        ]);
        let front = Some("10.2.3.4:1234".parse().unwrap());
        let stranger = Some("192.168.1.1:1234".parse().unwrap());
        assert_eq!(
            public.base(&h, front).as_deref(),
            Some("https://mlflow.example.com")
        );
        assert_eq!(
            public.base(&h, stranger).as_deref(),
            Some("http://internal:5000")
        );
        assert_eq!(
            public.base(&h, Some("[::1]:9".parse().unwrap())).as_deref(),
            Some("https://mlflow.example.com")
        );
        assert_eq!(public.base(&headers(&[("host", "a b")]), None), None);
        assert_eq!(public.base(&headers(&[("host", "u@h")]), None), None);
        assert_eq!(public.base(&HeaderMap::new(), None), None);
    }

    #[test]
    fn configured_url_wins() {
        let public = PublicUrlArgs {
            public_url: Some("https://ml.example.com/mlflow/".into()),
        }
        .build(TrustedProxies::default())
        .unwrap();
        assert_eq!(
            public.base(&headers(&[("host", "x")]), None).as_deref(),
            Some("https://ml.example.com/mlflow")
        );
        assert!(
            PublicUrlArgs {
                public_url: Some("ftp://x".into()),
            }
            .build(TrustedProxies::default())
            .is_err()
        );
    }
}
