//! What every concern puts on the wire: the one body type, the one error type (MLflow's JSON
//! shape, naming the failing side), and the timeouts every wait on a peer runs under.

pub mod body;
pub mod error;
pub mod timeouts;
