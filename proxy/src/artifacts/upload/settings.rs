//! How uploads are cut into parts and how much memory they may hold: what `config` parses and
//! `state` holds, apart from the handler that uses them.

use std::time::Duration;

/// How uploads are cut into parts.
#[derive(Clone, Copy, Debug)]
pub struct UploadConfig {
    pub single_put_max: u64,
    pub part_size: usize,
    pub parts_in_flight: usize,
    pub budget: u64,
    /// How long a transfer's client may send (or read) nothing before the transfer is ended.
    pub body_idle_timeout: Duration,
    /// Open multipart uploads older than this are swept (aborted); None: no sweep.
    pub stale_upload_age: Option<Duration>,
}
