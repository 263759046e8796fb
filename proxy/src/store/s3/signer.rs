//! SigV4 for the S3 requests that name a key or a key prefix, with the key in the URL exactly as
//! MLflow names it.
//!
//! rust-s3 builds its URLs with `url::Url`, which resolves "." segments (`a/./b` becomes `a/b`):
//! another object on a store that keeps keys opaque (Garage, S3). Here the URL is written by hand,
//! each byte outside RFC 3986's unreserved set percent-encoded (`/` kept in keys), carried in an
//! `http::Uri` (which keeps the path as written), and signed by `aws-sigv4` as S3 wants it: no
//! path normalisation, no second encoding.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::store::StoreConfig;

/// S3's `UriEncode` for query names and values: all but `A-Z a-z 0-9 - . _ ~` is encoded.
const QUERY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same for an object key, with `/` kept.
const KEY_SET: &AsciiSet = &QUERY_SET.remove(b'/');

/// What the signature covers of the body.
pub enum Payload<'a> {
    /// `UNSIGNED-PAYLOAD`: streamed bodies pass through unhashed.
    Unsigned,
    /// A small body we hold (the CompleteMultipartUpload XML), hashed into the signature.
    Bytes(&'a [u8]),
    /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: a streamed aws-chunked body whose checksum comes
    /// as its trailer (`integrity::with_trailer`), for the store to verify.
    Trailer,
}

pub struct Signer {
    /// `scheme://host[:port][/endpoint path]/<bucket>`: what every request's URL starts with.
    bucket_url: String,
    /// `/<bucket>`, encoded: how `x-amz-copy-source` names an object of the bucket.
    bucket_path: String,
    /// The `Host` header, sent as it is signed.
    host: HeaderValue,
    region: String,
    credentials: Credentials,
}

impl Signer {
    pub fn new(config: &StoreConfig) -> Result<Self, String> {
        let endpoint = &config.endpoint;
        let host = endpoint
            .host_str()
            .ok_or_else(|| format!("S3 endpoint {endpoint} has no host"))?;
        // `Url::port` leaves out the scheme's default port, as the Host header does.
        let host = match endpoint.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let host = HeaderValue::from_str(&host)
            .map_err(|_| format!("S3 endpoint {endpoint}: {host:?} is not a host"))?;
        let base = format!(
            "{}://{}{}",
            endpoint.scheme(),
            host.to_str().unwrap_or_default(),
            endpoint.path().trim_end_matches('/')
        );
        let bucket_path = format!("/{}", utf8_percent_encode(&config.bucket, QUERY_SET));
        Ok(Signer {
            bucket_url: format!("{base}{bucket_path}"),
            bucket_path,
            host,
            region: config.region.clone(),
            credentials: Credentials::new(
                &config.access_key,
                &config.secret_key,
                None,
                None,
                "mlflow-artifact-proxy",
            ),
        })
    }

    /// A signed request for `key` (`""`: the bucket itself, as `/<bucket>/`) with `query` pairs
    /// (a `None` value writes the bare name, as in `?uploads`) and the given `headers`, of which
    /// the `x-amz-*` ones are signed (Garage refuses any that is not).
    pub fn request<B>(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, Option<&str>)],
        headers: HeaderMap,
        payload: Payload<'_>,
        body: B,
    ) -> Result<Request<B>, String> {
        let url = self.url(key, query);
        let host = self.host.to_str().unwrap_or_default();
        let signable_body = match payload {
            Payload::Unsigned => SignableBody::UnsignedPayload,
            Payload::Bytes(bytes) => SignableBody::Bytes(bytes),
            Payload::Trailer => SignableBody::StreamingUnsignedPayloadTrailer,
        };
        let amz = headers.iter().filter_map(|(name, value)| {
            let name = name.as_str();
            name.starts_with("x-amz-")
                .then_some(())
                .and(value.to_str().ok())
                .map(|value| (name, value))
        });
        let signable = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            std::iter::once(("host", host)).chain(amz),
            signable_body,
        )
        .map_err(|e| format!("signing {method} {url}: {e}"))?;
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings())
            .build()
            .map_err(|e| format!("signing {method} {url}: {e}"))?
            .into();
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing {method} {url}: {e}"))?
            .into_parts();
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .body(body)
            .map_err(|e| format!("S3 request: {e}"))?;
        *request.headers_mut() = headers;
        request
            .headers_mut()
            .insert(header::HOST, self.host.clone());
        instructions.apply_to_request_http1x(&mut request);
        Ok(request)
    }

    /// The `x-amz-copy-source` of `key` in this bucket.
    pub fn copy_source(&self, key: &str) -> String {
        format!("{}/{}", self.bucket_path, utf8_percent_encode(key, KEY_SET))
    }

    fn url(&self, key: &str, query: &[(&str, Option<&str>)]) -> String {
        let mut url = format!("{}/", self.bucket_url);
        url.extend(utf8_percent_encode(key, KEY_SET));
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.extend(utf8_percent_encode(name, QUERY_SET));
            if let Some(value) = value {
                url.push('=');
                url.extend(utf8_percent_encode(value, QUERY_SET));
            }
        }
        url
    }
}

/// S3's flavour of SigV4: the path signed as sent (no normalisation, no double encoding), and
/// the payload hash in `x-amz-content-sha256`.
fn settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(endpoint: &str) -> Signer {
        Signer::new(&StoreConfig {
            endpoint: url::Url::parse(endpoint).unwrap(),
            bucket: "default".into(),
            prefix: String::new(),
            access_key: "AKID".into(),
            secret_key: "secret-key-1234567".into(),
            region: "us-east-1".into(),
            ca_bundle: None,
        })
        .unwrap()
    }

    fn get(signer: &Signer, key: &str, query: &[(&str, Option<&str>)]) -> Request<()> {
        signer
            .request(
                Method::GET,
                key,
                query,
                HeaderMap::new(),
                Payload::Unsigned,
                (),
            )
            .unwrap()
    }

    #[test]
    fn keys_reach_the_wire_as_written() {
        let s = signer("http://127.0.0.1:9000");
        for (key, path) in [
            ("a/./b.txt", "/default/a/./b.txt"),
            ("./a/b", "/default/./a/b"),
            ("a/.", "/default/a/."),
            ("a/./b/../c", "/default/a/./b/../c"),
            ("a//b", "/default/a//b"),
            ("a..b", "/default/a..b"),
            ("a b+c%2E~_-.txt", "/default/a%20b%2Bc%252E~_-.txt"),
            ("日本", "/default/%E6%97%A5%E6%9C%AC"),
            ("q\"?#;=&", "/default/q%22%3F%23%3B%3D%26"),
            ("", "/default/"),
        ] {
            let request = get(&s, key, &[]);
            // http's Uri keeps "." and ".." segments and empty ones as they are.
            assert_eq!(request.uri().path(), path, "{key:?}");
            assert_eq!(request.uri().host(), Some("127.0.0.1"));
        }
    }

    #[test]
    fn queries_are_encoded_for_s3() {
        let s = signer("https://s3.example.com/");
        let request = get(
            &s,
            "k",
            &[
                ("uploads", None),
                ("uploadId", Some("a+b/c=")),
                ("x y", Some("")),
            ],
        );
        assert_eq!(
            request.uri().to_string(),
            "https://s3.example.com/default/k?uploads&uploadId=a%2Bb%2Fc%3D&x%20y="
        );
    }

    #[test]
    fn requests_are_signed_for_the_host_they_go_to() {
        let request = get(&signer("http://127.0.0.1:9000/"), "a/./b", &[]);
        let headers = request.headers();
        assert_eq!(headers[header::HOST], "127.0.0.1:9000");
        assert_eq!(headers["x-amz-content-sha256"], "UNSIGNED-PAYLOAD");
        let authorization = headers[header::AUTHORIZATION].to_str().unwrap();
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKID/"),
            "{authorization}"
        );
        assert!(
            authorization.contains("/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="),
            "{authorization}"
        );
        // The x-amz-* headers given are signed (Garage refuses any that is not), others not.
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-meta-a", HeaderValue::from_static("1"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let s = signer("http://127.0.0.1:9000/");
        let request = s
            .request(Method::PUT, "k", &[], headers, Payload::Unsigned, ())
            .unwrap();
        let authorization = request.headers()[header::AUTHORIZATION].to_str().unwrap();
        assert!(
            authorization.contains(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-meta-a, Signature="
            ),
            "{authorization}"
        );
        assert_eq!(request.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(s.copy_source("a b/./c"), "/default/a%20b/./c");
        // The default port is not part of the Host header (nor of what is signed).
        let request = get(&signer("http://store:80"), "k", &[]);
        assert_eq!(request.headers()[header::HOST], "store");
    }
}
