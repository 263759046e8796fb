//! What operators watch: Prometheus metrics and the operations listener (/metrics, /healthz,
//! /readyz), apart from MLflow's URL space on the main port.

pub mod metrics;
