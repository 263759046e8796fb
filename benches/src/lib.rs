//! Load benchmarks for mlflow-artifact-proxy. The drivers are `benches/load.rs` and
//! `benches/stores.rs` (the main scenarios on each S3 store) (`cargo bench`);
//! this library holds its parts: the loopback HTTP client, the servers the bench runs itself
//! (null store, MLflow stand-in, embedded s3s-fs), /proc sampling and statistics.

pub mod client;
pub mod garage;
pub mod procs;
pub mod s3store;
pub mod servers;
pub mod stack;
pub mod stats;
