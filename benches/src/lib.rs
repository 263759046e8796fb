//! Load benchmarks live in benches/load.rs.
