//! What the stock MLflow server does that clients can observe, reproduced: path rules,
//! content labels, JSON shapes, the multipart request bodies.

pub mod content;
pub mod json;
pub mod mpu_body;
pub mod path;
pub mod skills;
