//! Digests of the client's own multipart flow (`mpu/create`, `signed/part`, `mpu/complete`).
//! Its parts arrive as separate requests, in any order, at any replica, so no place sees the
//! object's bytes in order. CRC-64/NVME can still be had: each part's CRC is computed while the
//! part streams, handed to the client inside the part's ETag (sealed with the transfer key, so
//! the proxy stays stateless and a client cannot choose it), and the parts' CRCs are combined in
//! part order at complete: the same value a single PUT of the same bytes gets. SHA-256 cannot be
//! combined: in `sha256` mode such objects get a CRC64NVME digest.
//!
//! A sealed ETag is S3's ETag with `~<base64url(crc ‖ length ‖ tag)>` added inside its quotes
//! (80 characters for a 34-character S3 ETag; `mpu/complete` takes ETags of up to 130).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Digest;
use crate::signing::{PART_TAG_BYTES, Signer};

const MARK: char = '~';
const SEAL_BYTES: usize = 16 + PART_TAG_BYTES;

/// What the seal binds: the part (key, upload, number), S3's ETag for it, and its CRC and length.
fn message(
    key: &str,
    upload_id: &str,
    part_number: u32,
    etag: &str,
    crc: u64,
    len: u64,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(key.len() + upload_id.len() + etag.len() + 44);
    for field in [key.as_bytes(), upload_id.as_bytes(), etag.as_bytes()] {
        message.extend_from_slice(&(field.len() as u64).to_be_bytes());
        message.extend_from_slice(field);
    }
    message.extend_from_slice(&part_number.to_be_bytes());
    message.extend_from_slice(&crc.to_be_bytes());
    message.extend_from_slice(&len.to_be_bytes());
    message
}

/// S3's ETag of a part without its quotes.
fn unquoted(etag: &str) -> &str {
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
}

/// The ETag handed to the client for a part S3 stored as `etag`, of `len` bytes with CRC `crc`.
pub fn seal(
    signer: &Signer,
    key: &str,
    upload_id: &str,
    part_number: u32,
    etag: &str,
    crc: u64,
    len: u64,
) -> String {
    let inner = unquoted(etag);
    let canonical = format!("\"{inner}\"");
    let mut seal = Vec::with_capacity(SEAL_BYTES);
    seal.extend_from_slice(&crc.to_be_bytes());
    seal.extend_from_slice(&len.to_be_bytes());
    seal.extend(signer.part_tag(&message(key, upload_id, part_number, &canonical, crc, len)));
    format!("\"{inner}{MARK}{}\"", URL_SAFE_NO_PAD.encode(seal))
}

/// A part of a complete, as the client sent it.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// S3's ETag, and the part's CRC and length.
    Sealed { etag: String, crc: u64, len: u64 },
    /// No seal (a part stored by a proxy without this feature, or with integrity off).
    Plain(String),
    /// A seal this proxy did not make for this part (forged, altered, or another part's).
    Refused,
}

/// Open the ETag a client sends back for a part.
pub fn open(signer: &Signer, key: &str, upload_id: &str, part_number: u32, etag: &str) -> Opened {
    let Some((inner, seal)) = unquoted(etag).rsplit_once(MARK) else {
        return Opened::Plain(etag.to_owned());
    };
    let Some(seal) = URL_SAFE_NO_PAD
        .decode(seal)
        .ok()
        .filter(|seal| seal.len() == SEAL_BYTES)
    else {
        return Opened::Refused;
    };
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&seal[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    let (crc, len) = (word(0), word(8));
    let canonical = format!("\"{inner}\"");
    let message = message(key, upload_id, part_number, &canonical, crc, len);
    if !signer.check_part_tag(&message, &seal[16..]) {
        return Opened::Refused;
    }
    Opened::Sealed {
        etag: canonical,
        crc,
        len,
    }
}

/// The whole object's CRC from its parts' (CRC, length), in part order. crc-fast's combine
/// builds its operator anew per call (0.3–0.5 ms here): run it off the async threads.
pub fn combine(parts: &[(u64, u64)]) -> Digest {
    let mut parts = parts.iter();
    let first = parts.next().map_or(0, |(crc, _)| *crc);
    Digest::Crc64Nvme(parts.fold(first, |whole, (crc, len)| {
        crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64Nvme, whole, *crc, *len)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(data: &[u8]) -> u64 {
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
    }

    #[test]
    fn seals_open_only_for_their_part() {
        let signer = Signer::with_key(&[7; 32]);
        let sealed = seal(&signer, "k", "u", 3, "\"abc\"", 42, 1000);
        assert!(
            sealed.starts_with("\"abc~") && sealed.ends_with('"'),
            "{sealed}"
        );
        assert!(sealed.len() <= 5 + 2 + 43, "{sealed}");
        assert_eq!(
            open(&signer, "k", "u", 3, &sealed),
            Opened::Sealed {
                etag: "\"abc\"".into(),
                crc: 42,
                len: 1000
            }
        );
        // Another part, upload, key or proxy key: refused.
        assert_eq!(open(&signer, "k", "u", 4, &sealed), Opened::Refused);
        assert_eq!(open(&signer, "k", "v", 3, &sealed), Opened::Refused);
        assert_eq!(open(&signer, "j", "u", 3, &sealed), Opened::Refused);
        assert_eq!(
            open(&Signer::with_key(&[8; 32]), "k", "u", 3, &sealed),
            Opened::Refused
        );
        // A seal altered by the client (here its CRC): refused.
        let (head, _) = sealed.rsplit_once('~').unwrap();
        let mut bytes = URL_SAFE_NO_PAD
            .decode(sealed.rsplit_once('~').unwrap().1.trim_end_matches('"'))
            .unwrap();
        bytes[0] ^= 1;
        let altered = format!("{head}~{}\"", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(open(&signer, "k", "u", 3, &altered), Opened::Refused);
        assert_eq!(open(&signer, "k", "u", 3, "\"abc~x\""), Opened::Refused);
        // S3's own ETag, as a proxy without the feature handed it out.
        assert_eq!(
            open(&signer, "k", "u", 3, "\"abc\""),
            Opened::Plain("\"abc\"".into())
        );
    }

    #[test]
    fn parts_combine_to_the_whole_object_s_crc() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let parts: Vec<(u64, u64)> = [1_000_000, 1, 999_999, 1_000_000]
            .iter()
            .scan(0usize, |at, len| {
                let part = &data[*at..*at + len];
                *at += len;
                Some((crc(part), *len as u64))
            })
            .collect();
        assert_eq!(combine(&parts), Digest::Crc64Nvme(crc(&data)));
        assert_eq!(combine(&parts[..1]), Digest::Crc64Nvme(parts[0].0));
    }
}
