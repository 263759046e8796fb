//! The artifact store: the S3 client (its signer, its TLS roots), deleting a prefix a page at a
//! time, and the one sweeper of abandoned multipart uploads.

pub mod purge;
pub mod s3;
pub mod stale_uploads;
pub mod tls;
