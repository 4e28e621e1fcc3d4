//! The console's HTTP server: plaintext in development mode (loopback only),
//! HTTPS with the service's own certificate when the service has TLS, so a
//! bearer token never crosses the network in the clear.
//!
//! Its connections are served one by one (as `axum::serve` would), so that
//! each passes the listener's [`Gate`] and tells it of its requests, and
//! HTTP/1 request headers have a deadline (the gate's first-request one).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tower::ServiceExt;

use crate::connections::{Activity, Gate, TrackedBody};

/// Serves `router` on `listener` through `gate` until `shutdown` resolves,
/// then lets open requests finish (live streams end on the store's own stop
/// signal).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    gate: Gate,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let headers = gate.limits().first_request;
    let accepted = TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(stream)
    });
    match tls {
        None => {
            let connections = gate
                .admit_all(accepted, false)
                .map(|c| c.map(|c| (c.activity().clone(), c)));
            serve_connections(connections, router, headers, shutdown).await
        }
        Some(tls) => {
            let connections = crate::tls::incoming(gate.admit_all(accepted, true), tls)
                .map(|c| c.map(|c| (c.activity().clone(), c)));
            serve_connections(connections, router, headers, shutdown).await
        }
    }
}

async fn serve_connections<IO>(
    connections: impl Stream<Item = io::Result<(Arc<Activity>, IO)>>,
    router: Router,
    headers: Duration,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(connections, shutdown);
    let (stopping, stop) = watch::channel(false);
    let mut serving = JoinSet::new();
    loop {
        tokio::select! {
            next = connections.next() => match next {
                Some(Ok((activity, io))) => {
                    serving.spawn(serve_connection(io, activity, router.clone(), headers, stop.clone()));
                }
                Some(Err(_)) => continue,
                None => break,
            },
            Some(_) = serving.join_next(), if !serving.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    // No new connections; the open ones finish what they serve.
    let _ = stopping.send(true);
    while serving.join_next().await.is_some() {}
    Ok(())
}

/// One connection, HTTP/1 or HTTP/2, each request counted on `activity`
/// until its response body is done, each HTTP/1 request's headers read
/// within `headers`.
async fn serve_connection<IO>(
    io: IO,
    activity: Arc<Activity>,
    router: Router,
    headers: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let open = activity.request();
        let answer = router.clone().oneshot(request.map(Body::new));
        async move {
            let response = answer
                .await
                .unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| Body::new(TrackedBody::new(body, Some(open)))))
        }
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(headers);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "console connection ended");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}
