//! The harness the proxy's integration tests (`proxy/tests/common`) and its benches
//! (`benches/src`) share, where they need the same thing: a real S3 server (`s3`: s3s 0.14.1 +
//! s3s-fs 0.14.1, SigV4 checked), the accept loop of an HTTP/1.1 stand-in server whose answers
//! the caller gives (`stand_in`: MLflow stand-ins, the benches' null store), and the proxy binary
//! as a process in front of a store and an upstream (`proxy`). What each side needs alone stays
//! with it: the tests' store inspection, fault injection and raw-socket client, the benches'
//! timed client and /proc bookkeeping.

pub mod proxy;
pub mod s3;
pub mod stand_in;
