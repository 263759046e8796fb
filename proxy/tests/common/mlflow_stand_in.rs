//! Stand-ins for the MLflow server: `FakeMlflow`, which records each request and answers as
//! MLflow would for the routes the tests use, and servers whose answers a test makes
//! (`serve_stand_in`, `serve_answers`), all on `testkit::stand_in`'s accept loop.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;

/// `serve_stand_in` for answers made at once from the request (no waiting, body unread).
pub async fn serve_answers<F>(answer: F) -> SocketAddr
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    serve_stand_in(move |request: Request<Incoming>| {
        let response = answer(&request);
        async move { response }
    })
    .await
}

/// What the MLflow stand-in saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A small stand-in for the MLflow server: records each request; `/stream/<n>` answers n KiB
/// of known bytes in chunks with no Content-Length; server-info answers MLflow's JSON;
/// anything else echoes the request body.
pub struct FakeMlflow {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

pub const SERVER_INFO: &str = r#"{"store_type":"SqlStore","workspaces_enabled":false,"multipart_uploads_enabled":true,"multipart_downloads_enabled":true,"artifact_serving_enabled":true}"#;

impl FakeMlflow {
    pub async fn start() -> FakeMlflow {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_server = seen.clone();
        let task = tokio::spawn(testkit::stand_in::serve(listener, move |request| {
            fake_mlflow_answer(request, seen_by_server.clone())
        }));
        FakeMlflow { addr, seen, task }
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("MLflow saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A stand-in server on a free loopback port whose every answer is `answer(request)` (the
/// request's body unread unless `answer` reads it), a task per connection: an MLflow that answers
/// as a test needs.
pub async fn serve_stand_in<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(testkit::stand_in::serve(listener, answer));
    addr
}

/// Deterministic bytes for the streamed answer.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn fake_mlflow_answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<TestBody> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path_and_query: path_and_query.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    if let Some(kib) = path.strip_prefix("/stream/") {
        let kib: usize = kib.parse().unwrap();
        let data = Bytes::from(pattern(kib * 1024, 7));
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..kib)
            .map(|i| Ok(Frame::data(data.slice(i * 1024..(i + 1) * 1024))))
            .collect();
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed())
            .unwrap();
    }
    if path.ends_with("/mlflow/server-info") {
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(SERVER_INFO.as_bytes())).boxed())
            .unwrap();
    }
    Response::builder()
        .status(201)
        .header("x-upstream", "fake-mlflow")
        .body(Full::new(body).boxed())
        .unwrap()
}
