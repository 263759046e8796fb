//! The one-off subcommands beside `serve` that walk the whole destination: `gc` (the artifacts
//! MLflow lost track of) and `verify` (every object against its digest).

pub mod gc;
pub mod verify;
