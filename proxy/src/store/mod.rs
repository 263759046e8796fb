//! The artifact store: the S3 client (its signer, its TLS roots), deleting a prefix a page at a
//! time, the one sweeper of abandoned multipart uploads, and how a store failure is answered.

pub mod answer;
pub mod purge;
pub mod s3;
pub mod stale_uploads;
pub mod tls;

/// Where and how to reach the artifact store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub endpoint: url::Url,
    pub bucket: String,
    /// Key prefix inside the bucket, as MLflow's `parse_s3_compliant_uri` gives it.
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// AWS_CA_BUNDLE (`tls`).
    pub ca_bundle: Option<std::path::PathBuf>,
}
