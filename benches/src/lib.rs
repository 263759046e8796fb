//! Load benchmarks for mlflow-artifact-proxy. The driver is `benches/load.rs` (`cargo bench`);
//! this library holds its parts: the loopback HTTP client, the servers the bench runs itself
//! (null store, MLflow stand-in, embedded s3s-fs), /proc sampling and statistics.

pub mod client;
pub mod procs;
pub mod servers;
pub mod stats;
