//! The digests: CRC64NVME (S3's default checksum) and SHA-256, computed over bytes as they pass,
//! written in S3's form (base64 of the big-endian value) and kept as user metadata.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::Digest as _;

/// Where each algorithm's digest is kept on the object (S3 user metadata).
const CRC64NVME_METADATA: &str = "x-amz-meta-mlflow-proxy-crc64nvme";
const SHA256_METADATA: &str = "x-amz-meta-mlflow-proxy-sha256";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Crc64Nvme,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc64Nvme => "crc64nvme",
            Algorithm::Sha256 => "sha256",
        }
    }

    /// S3's own header (and aws-chunked trailer) for this algorithm's checksum.
    pub fn s3_header(self) -> &'static str {
        match self {
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    /// The user-metadata header that holds this algorithm's digest.
    pub fn metadata_name(self) -> HeaderName {
        HeaderName::from_static(match self {
            Algorithm::Crc64Nvme => CRC64NVME_METADATA,
            Algorithm::Sha256 => SHA256_METADATA,
        })
    }

    fn other(self) -> Algorithm {
        match self {
            Algorithm::Crc64Nvme => Algorithm::Sha256,
            Algorithm::Sha256 => Algorithm::Crc64Nvme,
        }
    }
}

/// One object's digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Crc64Nvme(u64),
    Sha256([u8; 32]),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Digest::Crc64Nvme(_) => Algorithm::Crc64Nvme,
            Digest::Sha256(_) => Algorithm::Sha256,
        }
    }

    /// S3's form: base64 of the big-endian bytes (`8yAib9M+Tl8=` for a CRC).
    pub fn to_base64(&self) -> String {
        match self {
            Digest::Crc64Nvme(crc) => STANDARD.encode(crc.to_be_bytes()),
            Digest::Sha256(hash) => STANDARD.encode(hash),
        }
    }

    pub fn from_base64(algorithm: Algorithm, text: &str) -> Option<Digest> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        match algorithm {
            Algorithm::Crc64Nvme => Some(Digest::Crc64Nvme(u64::from_be_bytes(
                bytes.try_into().ok()?,
            ))),
            Algorithm::Sha256 => Some(Digest::Sha256(bytes.try_into().ok()?)),
        }
    }

    /// The digest an object's metadata holds, `preferred`'s first; else the store's own
    /// whole-object checksum (`x-amz-checksum-*` with `x-amz-checksum-type: FULL_OBJECT`, which
    /// the store computed and verified: how a `FULL_OBJECT` multipart upload keeps its digest,
    /// since recording metadata would make a store such as Garage copy all its bytes again).
    /// A value that does not parse counts as none (a composite checksum, `…-3`, is not the
    /// object's). A checksum without its type is not trusted: s3s-fs sends such checksums, and
    /// keeps a stale one when a multipart upload replaces an object.
    pub fn from_metadata(metadata: &HeaderMap, preferred: Algorithm) -> Option<Digest> {
        let whole = metadata
            .get("x-amz-checksum-type")
            .is_some_and(|t| t == "FULL_OBJECT");
        let stored = |name: &str| metadata.get(name)?.to_str().ok();
        let algorithms = [preferred, preferred.other()];
        algorithms
            .into_iter()
            .find_map(|algorithm| {
                Digest::from_base64(algorithm, stored(algorithm.metadata_name().as_str())?)
            })
            .or_else(|| {
                algorithms
                    .into_iter()
                    .filter(|_| whole)
                    .find_map(|algorithm| {
                        let name = algorithm.s3_header();
                        Digest::from_base64(algorithm, stored(name)?)
                    })
            })
    }

    /// The metadata header that keeps this digest.
    pub fn metadata(&self) -> (HeaderName, HeaderValue) {
        (
            self.algorithm().metadata_name(),
            HeaderValue::from_str(&self.to_base64()).expect("base64 is a header value"),
        )
    }

    /// The headers an answer carries. A CRC goes in S3's own header, on whole-object answers
    /// only (clients such as boto3 check it against the bytes they get); SHA-256 in RFC 9530's
    /// `Repr-Digest`, which names the whole representation, so ranges carry it too.
    pub fn response_headers(&self, whole: bool) -> Vec<(HeaderName, HeaderValue)> {
        let value = |text: String| HeaderValue::from_str(&text).expect("base64 is a header value");
        match self {
            Digest::Crc64Nvme(_) if whole => vec![
                (
                    HeaderName::from_static("x-amz-checksum-crc64nvme"),
                    value(self.to_base64()),
                ),
                (
                    HeaderName::from_static("x-amz-checksum-type"),
                    HeaderValue::from_static("FULL_OBJECT"),
                ),
            ],
            Digest::Crc64Nvme(_) => Vec::new(),
            Digest::Sha256(_) => vec![(
                HeaderName::from_static("repr-digest"),
                value(format!("sha-256=:{}:", self.to_base64())),
            )],
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm().name(), self.to_base64())
    }
}

/// A digest being computed over bytes in order.
#[derive(Clone)]
pub enum Hasher {
    // Boxed: crc-fast's state is about 300 bytes.
    Crc64Nvme(Box<crc_fast::Digest>),
    Sha256(Box<sha2::Sha256>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Crc64Nvme => Hasher::Crc64Nvme(Box::new(crc_fast::Digest::new(
                crc_fast::CrcAlgorithm::Crc64Nvme,
            ))),
            Algorithm::Sha256 => Hasher::Sha256(Box::default()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc64Nvme(crc) => crc.update(data),
            Hasher::Sha256(sha) => sha.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Crc64Nvme(crc) => Digest::Crc64Nvme(crc.finalize()),
            Hasher::Sha256(sha) => Digest::Sha256(sha.finalize().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(algorithm: Algorithm, pieces: &[&[u8]]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        pieces.iter().for_each(|p| hasher.update(p));
        hasher.finish()
    }

    /// The check values of both algorithms, and S3's form of them.
    #[test]
    fn check_values() {
        let crc = digest_of(Algorithm::Crc64Nvme, &[b"1234", b"56789"]);
        assert_eq!(crc, Digest::Crc64Nvme(0xae8b_1486_0a79_9888));
        assert_eq!(crc.to_base64(), "rosUhgp5mIg=");
        // S3's CRC64NVME of no bytes.
        assert_eq!(
            digest_of(Algorithm::Crc64Nvme, &[]).to_base64(),
            "AAAAAAAAAAA="
        );
        let sha = digest_of(Algorithm::Sha256, &[b"", b"abc"]);
        assert_eq!(
            sha.to_base64(),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        for digest in [crc, sha] {
            assert_eq!(
                Digest::from_base64(digest.algorithm(), &digest.to_base64()),
                Some(digest)
            );
        }
    }

    #[test]
    fn metadata_is_read_back_preferred_first() {
        let crc = digest_of(Algorithm::Crc64Nvme, &[b"x"]);
        let sha = digest_of(Algorithm::Sha256, &[b"x"]);
        let mut metadata = HeaderMap::new();
        assert_eq!(Digest::from_metadata(&metadata, Algorithm::Sha256), None);
        let (name, value) = crc.metadata();
        metadata.insert(name, value);
        assert_eq!(
            Digest::from_metadata(&metadata, Algorithm::Sha256),
            Some(crc)
        );
        let (name, value) = sha.metadata();
        metadata.insert(name, value);
        assert_eq!(
            Digest::from_metadata(&metadata, Algorithm::Sha256),
            Some(sha)
        );
        assert_eq!(
            Digest::from_metadata(&metadata, Algorithm::Crc64Nvme),
            Some(crc)
        );
        // A value of the wrong length is not a digest.
        metadata.insert(
            Algorithm::Crc64Nvme.metadata_name(),
            HeaderValue::from_static("AAAA"),
        );
        assert_eq!(
            Digest::from_metadata(&metadata, Algorithm::Crc64Nvme),
            Some(sha)
        );
    }

    #[test]
    fn the_stores_whole_object_checksum_counts_only_with_its_type() {
        let crc = digest_of(Algorithm::Crc64Nvme, &[b"x"]);
        let mut metadata = HeaderMap::new();
        metadata.insert(
            "x-amz-checksum-crc64nvme",
            HeaderValue::from_str(&crc.to_base64()).unwrap(),
        );
        assert_eq!(Digest::from_metadata(&metadata, Algorithm::Sha256), None);
        metadata.insert("x-amz-checksum-type", HeaderValue::from_static("COMPOSITE"));
        assert_eq!(Digest::from_metadata(&metadata, Algorithm::Sha256), None);
        metadata.insert(
            "x-amz-checksum-type",
            HeaderValue::from_static("FULL_OBJECT"),
        );
        assert_eq!(
            Digest::from_metadata(&metadata, Algorithm::Sha256),
            Some(crc)
        );
        // The proxy's own metadata comes first.
        let other = digest_of(Algorithm::Crc64Nvme, &[b"y"]);
        let (name, value) = other.metadata();
        metadata.insert(name, value);
        assert_eq!(
            Digest::from_metadata(&metadata, Algorithm::Crc64Nvme),
            Some(other)
        );
    }

    #[test]
    fn answers_carry_the_digest_in_the_right_header() {
        let crc = Digest::Crc64Nvme(0xae8b_1486_0a79_9888);
        let names = |headers: Vec<(HeaderName, HeaderValue)>| {
            headers
                .into_iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(crc.response_headers(true)),
            [
                "x-amz-checksum-crc64nvme: rosUhgp5mIg=",
                "x-amz-checksum-type: FULL_OBJECT"
            ]
        );
        assert!(crc.response_headers(false).is_empty());
        let sha = digest_of(Algorithm::Sha256, &[b"abc"]);
        let header = ["repr-digest: sha-256=:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=:"];
        assert_eq!(names(sha.response_headers(true)), header);
        assert_eq!(names(sha.response_headers(false)), header);
    }
}
