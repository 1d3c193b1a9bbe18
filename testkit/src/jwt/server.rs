//! A tiny JWKS endpoint: serves a body with a status, both replaceable at any time
//! ([`JwksServer::set`]), and counts the requests, to test when keys are fetched.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    status: u16,
    body: String,
}

#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    hits: Arc<AtomicUsize>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl JwksServer {
    pub async fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State { status: 200, body }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (Arc::clone(&state), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, h) = (Arc::clone(&s), Arc::clone(&h));
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = {
                            let st = s.lock().expect("state");
                            (st.status, st.body.clone())
                        };
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            state,
            hits,
            task: Arc::new(task),
        }
    }

    pub fn uri(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set(&self, status: u16, body: String) {
        let mut st = self.state.lock().expect("state");
        st.status = status;
        st.body = body;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}
