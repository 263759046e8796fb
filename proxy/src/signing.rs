//! Tokens for the URLs the proxy hands out (multipart part uploads, presigned downloads):
//! HMAC-SHA256 over what the URL may do (one part of one upload, or one object) and until when.
//!
//! The key comes from configuration so that every replica accepts every other replica's URLs; a
//! previous key is still accepted while keys are rotated. Verification is constant-time.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A key shorter than this is refused: it would be guessable.
const MIN_KEY_BYTES: usize = 32;
const VERSION: u8 = 1;
/// Keeps tokens of this proxy from being valid for anything else signed with the same key.
const DOMAIN: &[u8] = b"mlflow-artifact-proxy/url-token\0";
/// A token longer than this is refused before it is decoded (keys are at most 1 KiB in S3).
const MAX_TOKEN_CHARS: usize = 4096;

#[derive(Clone, Debug, Args)]
pub struct SigningArgs {
    /// Key that signs upload and download URLs (at least 32 bytes). Every replica must have the
    /// same key. Unset (and no file): a random key for this process only, fit for one instance.
    #[arg(long, env = "PROXY_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
    /// File holding the signing key (a mounted secret); surrounding whitespace is ignored.
    #[arg(long, env = "PROXY_SIGNING_KEY_FILE", conflicts_with = "signing_key")]
    pub signing_key_file: Option<String>,
    /// The key before the current one, still accepted (not used to sign) while keys rotate.
    #[arg(long, env = "PROXY_SIGNING_KEY_PREVIOUS", hide_env_values = true)]
    pub signing_key_previous: Option<String>,
    /// File holding the previous signing key.
    #[arg(
        long,
        env = "PROXY_SIGNING_KEY_PREVIOUS_FILE",
        conflicts_with = "signing_key_previous"
    )]
    pub signing_key_previous_file: Option<String>,
}

/// Signs with the current key; accepts the current and the previous one.
#[derive(Clone)]
pub struct Signer {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
    /// The key was made up at start: URLs die with this process and no other replica takes them.
    pub generated: bool,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("previous", &self.previous.is_some())
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

fn read_key(
    value: Option<&str>,
    file: Option<&str>,
    name: &str,
) -> Result<Option<Vec<u8>>, String> {
    let key = match (value, file) {
        (Some(value), _) => value.trim().as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("{name}_FILE={path:?}: {e}"))?
            .trim_ascii()
            .to_vec(),
        (None, None) => return Ok(None),
    };
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "{name} must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(Some(key))
}

impl SigningArgs {
    pub fn build(&self) -> Result<Signer, String> {
        let current = read_key(
            self.signing_key.as_deref(),
            self.signing_key_file.as_deref(),
            "PROXY_SIGNING_KEY",
        )?;
        let previous = read_key(
            self.signing_key_previous.as_deref(),
            self.signing_key_previous_file.as_deref(),
            "PROXY_SIGNING_KEY_PREVIOUS",
        )?;
        match current {
            Some(current) => Ok(Signer {
                current,
                previous,
                generated: false,
            }),
            None if previous.is_some() => {
                Err("PROXY_SIGNING_KEY_PREVIOUS is set but PROXY_SIGNING_KEY is not".to_owned())
            }
            None => {
                let mut key = vec![0u8; MIN_KEY_BYTES];
                getrandom::fill(&mut key).map_err(|e| format!("no random signing key: {e}"))?;
                Ok(Signer {
                    current: key,
                    previous: None,
                    generated: true,
                })
            }
        }
    }
}

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// PUT one part of one multipart upload.
    Part = 1,
    /// GET (with Range) one object.
    Object = 2,
}

/// The facts a token binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub grant: Grant,
    /// Unix seconds after which the token is refused.
    pub expires: u64,
    /// The part's number (0 for an object).
    pub part_number: u32,
    /// The multipart upload's id (empty for an object).
    pub upload_id: String,
    /// For a part: the S3 key. For an object: the artifact path, as validated.
    pub target: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the URL's token is malformed")]
    Malformed,
    #[error("the URL's signature is not valid")]
    BadSignature,
    #[error("the URL has expired")]
    Expired,
    #[error("the URL is not for this kind of request")]
    WrongGrant,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn encode_claims(claims: &Claims) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(24 + claims.upload_id.len() + claims.target.len());
    out.push(VERSION);
    out.push(claims.grant as u8);
    out.extend_from_slice(&claims.expires.to_be_bytes());
    out.extend_from_slice(&claims.part_number.to_be_bytes());
    for field in [&claims.upload_id, &claims.target] {
        // Length-prefixed: no field can be made to run into the next.
        let len = u16::try_from(field.len()).ok()?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    Some(out)
}

fn decode_claims(bytes: &[u8]) -> Option<Claims> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&grant, rest) = rest.split_first()?;
    let grant = match grant {
        1 => Grant::Part,
        2 => Grant::Object,
        _ => return None,
    };
    let (expires, rest) = rest.split_first_chunk::<8>()?;
    let (part_number, mut rest) = rest.split_first_chunk::<4>()?;
    let mut fields = Vec::with_capacity(2);
    for _ in 0..2 {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return None;
        }
        let (field, tail) = tail.split_at(len);
        fields.push(String::from_utf8(field.to_vec()).ok()?);
        rest = tail;
    }
    if !rest.is_empty() {
        return None;
    }
    let target = fields.pop()?;
    let upload_id = fields.pop()?;
    Some(Claims {
        grant,
        expires: u64::from_be_bytes(*expires),
        part_number: u32::from_be_bytes(*part_number),
        upload_id,
        target,
    })
}

fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(DOMAIN);
    mac.update(payload);
    mac
}

/// Keeps upload-id tags apart from URL tokens signed with the same key.
const UPLOAD_DOMAIN: &[u8] = b"mlflow-artifact-proxy/upload-id\0";

fn upload_hmac(key: &[u8], upload_id: &str, s3_key: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(UPLOAD_DOMAIN);
    // Length-prefixed: the id cannot run into the key.
    mac.update(&(upload_id.len() as u64).to_be_bytes());
    mac.update(upload_id.as_bytes());
    mac.update(s3_key.as_bytes());
    mac
}

fn upload_mac(key: &[u8], upload_id: &str, s3_key: &str) -> Vec<u8> {
    upload_hmac(key, upload_id, s3_key)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// Constant-time comparison, as for URL tokens.
fn upload_mac_check(key: &[u8], upload_id: &str, s3_key: &str, tag: &[u8]) -> bool {
    upload_hmac(key, upload_id, s3_key)
        .verify_slice(tag)
        .is_ok()
}

/// Keeps part seals (`integrity::parts`) apart from the other things signed with the same key.
const PART_DOMAIN: &[u8] = b"mlflow-artifact-proxy/part-seal\0";
/// A part seal's tag: HMAC-SHA256 truncated, as a client holds it for minutes at most.
pub const PART_TAG_BYTES: usize = 16;

fn part_hmac(key: &[u8], message: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(PART_DOMAIN);
    mac.update(message);
    mac
}

impl Signer {
    /// The tag of a part seal's `message` (`PART_TAG_BYTES`), by the current key.
    pub fn part_tag(&self, message: &[u8]) -> Vec<u8> {
        let tag = part_hmac(&self.current, message).finalize().into_bytes();
        tag[..PART_TAG_BYTES].to_vec()
    }

    /// Whether `tag` is `message`'s, by the current or the previous key (constant time).
    pub fn check_part_tag(&self, message: &[u8], tag: &[u8]) -> bool {
        tag.len() == PART_TAG_BYTES
            && std::iter::once(&self.current)
                .chain(self.previous.as_ref())
                .any(|k| part_hmac(k, message).verify_truncated_left(tag).is_ok())
    }
}

impl Signer {
    /// A signer with a fixed key (tests, benches).
    pub fn with_key(key: &[u8]) -> Signer {
        Signer {
            current: key.to_vec(),
            previous: None,
            generated: false,
        }
    }

    /// `<payload>.<signature>`, both base64url: safe in a query string as it is. A field too
    /// long to encode (far beyond S3's 1 KiB keys) gives `Malformed`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let payload = encode_claims(claims).ok_or(TokenError::Malformed)?;
        let signature = mac(&self.current, &payload).finalize().into_bytes();
        Ok(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    /// An S3 upload id bound to its key, as handed to the client (`mpu/create`): `<id>.<mac>`.
    /// S3 stores do not all check that a complete or abort names the key its upload was made for
    /// (s3s-fs completes one key's upload into another's path); `open_upload_id` does.
    pub fn seal_upload_id(&self, upload_id: &str, key: &str) -> String {
        let tag = upload_mac(&self.current, upload_id, key);
        format!("{upload_id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The S3 upload id of `sealed`, if it was sealed (by the current or previous key) for `key`.
    pub fn open_upload_id(&self, sealed: &str, key: &str) -> Result<String, TokenError> {
        let (upload_id, tag) = sealed.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let valid = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|k| upload_mac_check(k, upload_id, key, &tag));
        if valid {
            Ok(upload_id.to_owned())
        } else {
            Err(TokenError::BadSignature)
        }
    }

    /// The claims of a token signed by the current or the previous key, for `grant`, not expired
    /// at `now`. Nothing in the payload is believed before the signature is checked.
    pub fn verify(&self, token: &str, grant: Grant, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let valid = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            // `verify_slice` compares in constant time.
            .any(|key| mac(key, &payload).verify_slice(&signature).is_ok());
        if !valid {
            return Err(TokenError::BadSignature);
        }
        let claims = decode_claims(&payload).ok_or(TokenError::Malformed)?;
        if claims.grant != grant {
            return Err(TokenError::WrongGrant);
        }
        if now > claims.expires {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            grant: Grant::Part,
            expires: 1_000,
            part_number: 3,
            upload_id: "upload-1".into(),
            target: "1/r/artifacts/big.bin".into(),
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let signer = Signer::with_key(&[7; 32]);
        let token = signer.sign(&claims()).unwrap();
        assert_eq!(signer.verify(&token, Grant::Part, 1_000), Ok(claims()));
        assert_eq!(
            signer.verify(&token, Grant::Part, 1_001),
            Err(TokenError::Expired)
        );
        assert_eq!(
            signer.verify(&token, Grant::Object, 10),
            Err(TokenError::WrongGrant)
        );
    }

    #[test]
    fn altered_or_foreign_tokens_are_refused() {
        let signer = Signer::with_key(&[7; 32]);
        let token = signer.sign(&claims()).unwrap();
        let mut other = claims();
        other.part_number = 4;
        let (_, signature) = token.split_once('.').unwrap();
        let forged = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(encode_claims(&other).unwrap())
        );
        assert_eq!(
            signer.verify(&forged, Grant::Part, 10),
            Err(TokenError::BadSignature)
        );
        let stranger = Signer::with_key(&[8; 32]);
        assert_eq!(
            stranger.verify(&token, Grant::Part, 10),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer.verify("nonsense", Grant::Part, 10),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn previous_key_is_accepted_during_rotation() {
        let old = Signer::with_key(&[1; 32]);
        let token = old.sign(&claims()).unwrap();
        let rotated = Signer {
            current: vec![2; 32],
            previous: Some(vec![1; 32]),
            generated: false,
        };
        assert!(rotated.verify(&token, Grant::Part, 10).is_ok());
    }

    #[test]
    fn upload_ids_are_bound_to_their_key() {
        let signer = Signer::with_key(&[7; 32]);
        let sealed = signer.seal_upload_id("a.b-c", "1/r/artifacts/x.bin");
        assert_eq!(
            signer.open_upload_id(&sealed, "1/r/artifacts/x.bin"),
            Ok("a.b-c".to_owned())
        );
        assert_eq!(
            signer.open_upload_id(&sealed, "2/r/artifacts/x.bin"),
            Err(TokenError::BadSignature)
        );
        assert!(
            signer
                .open_upload_id("a.b-c", "1/r/artifacts/x.bin")
                .is_err()
        );
        assert!(
            Signer::with_key(&[8; 32])
                .open_upload_id(&sealed, "1/r/artifacts/x.bin")
                .is_err()
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(read_key(Some("short"), None, "K").is_err());
        assert_eq!(
            read_key(Some(&"k".repeat(32)), None, "K").unwrap(),
            Some(vec![b'k'; 32])
        );
    }
}
