//! What the stock MLflow server does that clients can observe, reproduced: path rules,
//! content labels, JSON shapes.

pub mod content;
pub mod json;
pub mod path;
