//! The client-driven transfers: MLflow's multipart upload (part URLs on the proxy, each part
//! straight into S3) and presigned downloads, their settings and the public address they name.

pub(super) mod multipart;
pub(super) mod presigned;
pub mod public_url;
pub mod transfers;
