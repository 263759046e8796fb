//! Which S3 checksums the store verifies: asked of the store itself, once, at first need, by its
//! answers (never by its name). A store that refuses a wrong checksum and takes the right one is
//! sent the checksum of every upload (`integrity::with_trailer`), so it refuses a transfer that
//! was corrupted on the way in; elsewhere nothing is sent that it could mistake for data.
//!
//! Measured (docs/integrity.md): Garage 2.5 verifies PutObject and UploadPart; s3s-fs 0.14.1
//! verifies PutObject only (it accepts a part with a wrong checksum).

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;

use super::{Store, StoreError};
use crate::body::full;
use crate::integrity::Algorithm;

/// Where the probe writes, at the bucket's root (outside MLflow's prefix when there is one); it
/// is deleted at once, and a part upload there is aborted.
const PROBE_KEY: &str = ".mlflow-artifact-proxy/checksum-probe";
/// The probe's bytes, and their CRC64NVME.
const PROBE: &[u8] = b"probe";

/// The S3 checksums a store verifies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Native {
    /// PutObject with an `x-amz-checksum-*` trailer.
    pub put: bool,
    /// UploadPart with an `x-amz-checksum-*` trailer.
    pub parts: bool,
}

impl Store {
    /// What the store verifies, probed once (a store that cannot be asked now is asked again
    /// next time; meanwhile nothing is sent).
    pub async fn native(&self) -> Native {
        match self.native.get_or_try_init(|| self.probe()).await {
            Ok(native) => *native,
            Err(e) => {
                tracing::warn!(
                    "integrity: could not ask the store which checksums it verifies: {e}"
                );
                Native::default()
            }
        }
    }

    async fn probe(&self) -> Result<Native, StoreError> {
        let put = self.verifies(&[]).await;
        // A store may keep a body it refused (s3s-fs does): nothing may stay.
        let _ = self.delete_keys(vec![PROBE_KEY.to_owned()]).await;
        let put = put?;
        let upload_id = self
            .create_multipart(PROBE_KEY, "application/octet-stream")
            .await?;
        let query = [
            ("partNumber", Some("1")),
            ("uploadId", Some(upload_id.as_str())),
        ];
        let parts = self.verifies(&query).await;
        let _ = self.abort_multipart(PROBE_KEY, &upload_id).await;
        let native = Native { put, parts: parts? };
        tracing::info!(
            put = native.put,
            parts = native.parts,
            "integrity: the store verifies S3 checksums"
        );
        Ok(native)
    }

    /// Whether a PUT to the probe key (with `query`: a part) is refused with a wrong CRC64NVME
    /// trailer and taken with the right one.
    async fn verifies(&self, query: &[(&str, Option<&str>)]) -> Result<bool, StoreError> {
        let wrong = self.send_probe(query, "AAAAAAAAAAA=").await?;
        let right = self.send_probe(query, &probe_crc()).await?;
        Ok(wrong.is_client_error() && right.is_success())
    }

    async fn send_probe(
        &self,
        query: &[(&str, Option<&str>)],
        crc: &str,
    ) -> Result<StatusCode, StoreError> {
        let name = crate::integrity::chunked::trailer_name(Algorithm::Crc64Nvme);
        let mut body = format!("{:x}\r\n", PROBE.len()).into_bytes();
        body.extend_from_slice(PROBE);
        body.extend_from_slice(format!("\r\n0\r\n{name}:{crc}\r\n\r\n").as_bytes());
        // Framed as `integrity::with_trailer` frames it (one chunk, a CRC of the same length).
        let response = self
            .send_sized(
                PROBE_KEY,
                query,
                HeaderMap::new(),
                PROBE.len() as u64,
                Some(Algorithm::Crc64Nvme),
                full(Bytes::from(body)),
            )
            .await?;
        let status = response.status();
        let _ = response.into_body().collect().await;
        Ok(status)
    }
}

fn probe_crc() -> String {
    let mut hasher = crate::integrity::Hasher::new(Algorithm::Crc64Nvme);
    hasher.update(PROBE);
    hasher.finish().to_base64()
}
