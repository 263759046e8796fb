//! Which S3 checksums the store verifies: asked of the store itself, once, at first need, by its
//! answers (never by its name). A store that refuses a wrong checksum and takes the right one is
//! sent the checksum of every upload (`integrity::with_trailer`), so it refuses a transfer that
//! was corrupted on the way in; elsewhere nothing is sent that it could mistake for data.
//!
//! The probe's requests are not counted in the metrics (`mlflow_proxy_s3_requests_total` counts
//! the work the proxy does for its clients).
//!
//! Measured (docs/integrity.md): Garage 2.5 verifies PutObject, UploadPart and the whole-object
//! CRC of a `FULL_OBJECT` completion; s3s-fs 0.14.1 verifies PutObject only (it accepts a part
//! or a completion with a wrong checksum).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;

use super::{Store, StoreError};
use crate::integrity::{Algorithm, Digest};
use crate::wire::body::full;

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
    /// Multipart uploads of S3's `FULL_OBJECT` type: parts with their CRC64NVME, the whole
    /// object's given at completion, refused when wrong, kept as the object's checksum.
    pub full_object: bool,
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
        self.probe_delete(&[]).await;
        let put = put?.is_some();
        // A store that does not know FULL_OBJECT may refuse it: then a plain upload.
        let octets = "application/octet-stream";
        let (upload_id, full) = match self.initiate(PROBE_KEY, octets, true).await {
            Ok(id) => (id, true),
            Err(StoreError::Status {
                status: 400..500, ..
            }) => (self.initiate(PROBE_KEY, octets, false).await?, false),
            Err(e) => return Err(e),
        };
        let query = [
            ("partNumber", Some("1")),
            ("uploadId", Some(upload_id.as_str())),
        ];
        let part = self.verifies(&query).await;
        // Completed with a wrong whole-object CRC: a store that checks it refuses (and keeps
        // nothing); one that does not stores the probe, deleted below.
        let full_object = match &part {
            Ok(Some(Some(etag))) if full => {
                let mut headers = HeaderMap::new();
                let wrong = Digest::Crc64Nvme(0).to_base64();
                headers.insert("x-amz-checksum-crc64nvme", super::header_value(&wrong));
                headers.insert(
                    "x-amz-checksum-type",
                    HeaderValue::from_static("FULL_OBJECT"),
                );
                let xml = super::complete_multipart_xml(&[(1, etag.clone())]);
                let query = [("uploadId", Some(upload_id.as_str()))];
                let answer = self
                    .call(
                        Method::POST,
                        PROBE_KEY,
                        &query,
                        headers,
                        xml.into(),
                        self.timeout,
                    )
                    .await;
                matches!(
                    answer,
                    Err(StoreError::Status {
                        status: 400..500,
                        ..
                    })
                )
            }
            _ => false,
        };
        let query = [("uploadId", Some(upload_id.as_str()))];
        self.probe_delete(&query).await;
        self.probe_delete(&[]).await;
        let native = Native {
            put,
            parts: part?.is_some(),
            full_object,
        };
        tracing::info!(
            put = native.put,
            parts = native.parts,
            full_object = native.full_object,
            "integrity: the store verifies S3 checksums"
        );
        Ok(native)
    }

    /// DELETE the probe key (with `query`: its upload), whatever comes of it (cleaning up).
    async fn probe_delete(&self, query: &[(&str, Option<&str>)]) {
        let _ = self
            .call(
                Method::DELETE,
                PROBE_KEY,
                query,
                HeaderMap::new(),
                Bytes::new(),
                self.timeout,
            )
            .await;
    }

    /// Whether a PUT to the probe key (with `query`: a part) is refused with a wrong CRC64NVME
    /// trailer and taken with the right one: `Some` (with the ETag of the one taken) if so.
    async fn verifies(
        &self,
        query: &[(&str, Option<&str>)],
    ) -> Result<Option<Option<String>>, StoreError> {
        let (wrong, _) = self.send_probe(query, "AAAAAAAAAAA=").await?;
        let (right, etag) = self.send_probe(query, &probe_crc()).await?;
        Ok((wrong.is_client_error() && right.is_success()).then_some(etag))
    }

    async fn send_probe(
        &self,
        query: &[(&str, Option<&str>)],
        crc: &str,
    ) -> Result<(StatusCode, Option<String>), StoreError> {
        let name = Algorithm::Crc64Nvme.s3_header();
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
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let _ = response.into_body().collect().await;
        Ok((status, etag))
    }
}

fn probe_crc() -> String {
    let mut hasher = crate::integrity::Hasher::new(Algorithm::Crc64Nvme);
    hasher.update(PROBE);
    hasher.finish().to_base64()
}
