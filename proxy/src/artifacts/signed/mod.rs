//! The client-driven transfers: MLflow's multipart upload (part URLs on the proxy, each part
//! straight into S3) and presigned downloads (their settings and public address: `state`).

pub(super) mod multipart;
pub(super) mod presigned;
