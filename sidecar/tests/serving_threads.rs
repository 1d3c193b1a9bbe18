//! `grpc::serve_on_threads` with real gRPC clients on loopback: which thread serves each
//! connection, and how serving ends.
//!
//! Each serving thread's server is a gRPC health service (served through tonic's routes) that knows one service name,
//! `thread-N`, N counting the threads in the order they built their servers; a connection
//! learns which thread serves it by asking each name.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tollgate_sidecar::grpc::{serve_on_threads, GrpcServer, ServingThreadsError};
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const THREADS: usize = 2;
/// For a loaded machine: the threads start and answer well within this.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server naming the thread that builds it.
fn thread_named_server() -> impl Fn() -> Result<GrpcServer, Infallible> + Send + Sync + 'static {
    let built = Arc::new(AtomicUsize::new(0));
    move || {
        let index = built.fetch_add(1, Ordering::SeqCst);
        let (reporter, service) = tonic_health::server::health_reporter();
        // On this thread's runtime; the status is set before long, and the client asks
        // until it is.
        tokio::spawn(async move {
            reporter
                .set_service_status(
                    format!("thread-{index}"),
                    tonic_health::ServingStatus::Serving,
                )
                .await;
        });
        Ok(GrpcServer::new(Routes::new(service)))
    }
}

/// A client on a connection of its own.
async fn connect(addr: std::net::SocketAddr) -> HealthClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("an address")
        .connect()
        .await
        .expect("connects");
    HealthClient::new(channel)
}

/// The thread serving `client`'s connection, polled until that thread's status is set.
async fn serving_thread(client: &mut HealthClient<Channel>) -> usize {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        for index in 0..THREADS {
            let asked = client
                .check(HealthCheckRequest {
                    service: format!("thread-{index}"),
                })
                .await;
            if asked.is_ok() {
                return index;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no thread claims this connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_go_to_the_thread_with_the_fewest_open() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("an address");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve_on_threads(
        listener,
        NonZeroUsize::new(THREADS).expect("non-zero"),
        thread_named_server(),
        async {
            let _ = stopped.await;
        },
    ));

    let mut clients = Vec::new();
    let mut per_thread = [0; THREADS];
    for _ in 0..4 {
        let mut client = connect(addr).await;
        per_thread[serving_thread(&mut client).await] += 1;
        clients.push(client);
    }
    assert_eq!(per_thread, [2, 2], "four connections over two threads");

    // With thread 0's two connections closed, it is the emptier thread: two new
    // connections in a row both go there, which handing out in turn never does. The
    // thread counts a connection until the server drops it, after the client's close, so
    // the pair is tried until the closes have been counted.
    let mut kept = Vec::new();
    for mut client in clients {
        if serving_thread(&mut client).await == 1 {
            kept.push(client);
        }
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut first = connect(addr).await;
        let mut second = connect(addr).await;
        if serving_thread(&mut first).await == 0 && serving_thread(&mut second).await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "closed connections were never uncounted, or connections go round in turn"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let _ = stop.send(());
    drop(kept);
    let result = tokio::time::timeout(PATIENCE, served)
        .await
        .expect("serving stops when asked")
        .expect("the serving task did not panic");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_thread_that_cannot_set_up_stops_serving_with_its_error() {
    #[derive(Debug, thiserror::Error)]
    #[error("no store here")]
    struct NoStore;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let built = Arc::new(AtomicUsize::new(0));
    let server = move || {
        // The second thread fails; the first serves.
        if built.fetch_add(1, Ordering::SeqCst) == 1 {
            return Err(NoStore);
        }
        let (_, service) = tonic_health::server::health_reporter();
        Ok(GrpcServer::new(Routes::new(service)))
    };
    let result = tokio::time::timeout(
        PATIENCE,
        serve_on_threads(
            listener,
            NonZeroUsize::new(THREADS).expect("non-zero"),
            server,
            std::future::pending(),
        ),
    )
    .await
    .expect("a failed thread ends serving without a shutdown");
    assert!(
        matches!(result, Err(ServingThreadsError::Setup(NoStore))),
        "{result:?}"
    );
}
