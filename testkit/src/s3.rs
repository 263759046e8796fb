//! The S3 server both the tests and the benches run: s3s 0.14.1 + s3s-fs 0.14.1 (the code the
//! s3s-fs binary runs), one key, SigV4 checked, HTTP/1.1 and HTTP/2.

use std::path::Path;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serve S3 from `root` (a bucket is a folder in it) on `listener`, accepting `access_key` and
/// `secret_key` only, until this future is dropped (aborting its task closes every connection).
/// `on_request` sees each request's head first (the tests note what the proxy sent). `down`
/// turning true ends every connection at its next poll, before it serves another request.
/// Returns only when s3s-fs cannot use `root`.
pub async fn serve_s3s_fs(
    listener: TcpListener,
    root: &Path,
    access_key: &str,
    secret_key: &str,
    on_request: impl Fn(&Request<Incoming>) + Clone + Send + Sync + 'static,
    down: watch::Receiver<bool>,
) -> Result<(), String> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| format!("{}: {e:?}", root.display()))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
    let s3 = builder.build();
    let service = service_fn(move |request: Request<Incoming>| {
        on_request(&request);
        hyper::service::Service::call(&s3, request)
    });
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let service = service.clone();
        let mut down = down.clone();
        connections.spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let serve = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                biased;
                _ = down.wait_for(|down| *down) => {}
                _ = serve => {}
            }
        });
    }
}
