//! A local HTTP server that keeps every request it gets: the stand-in for
//! an OTLP/HTTP receiver and a Prometheus Pushgateway in the tests of what
//! the jobs push. Paths under `/refuse` are answered with 500.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What the sink got so far.
pub type Received = Arc<Mutex<Vec<Request>>>;

/// Serve on a free local port; every request is kept and answered 200 (500 under `/refuse`).
pub async fn start() -> (Received, SocketAddr) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let path = uri.path().to_owned();
                let refuse = path.starts_with("/refuse");
                sink.lock().unwrap().push(Request {
                    method,
                    path,
                    content_type,
                    body: body.to_vec(),
                });
                if refuse {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (received, addr)
}
