//! Load benchmarks for mlflow-artifact-proxy (`cargo bench`). The drivers are under
//! `benches/`: `load/`, `downloads/`, `auth/` and `multipart/` (a file per scenario or part),
//! `stores.rs` (the main scenarios on each S3 store) and `ui_downloads.rs`. This library holds
//! their shared parts: what every driver sets up (`setup`), the proxy process (`proxy`), the S3
//! stores (`s3store`, `garage`), stock MLflow (`stock`; with its auth app and the proxies beside
//! it: `stack`), the loopback HTTP client, the servers the bench runs itself (null store, MLflow
//! stand-in, embedded s3s-fs), /proc sampling and statistics. What the proxy's integration tests
//! need too (the s3s-fs server, the stand-in loop, the proxy process's settings) is in `testkit`.

pub mod client;
pub mod garage;
pub mod procs;
pub mod proxy;
pub mod s3store;
pub mod servers;
pub mod setup;
pub mod stack;
pub mod stats;
pub mod stock;
