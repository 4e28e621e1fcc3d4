//! The console's HTTP server: plaintext in development mode (loopback only),
//! HTTPS with the service's own certificate when the service has TLS, so a
//! bearer token never crosses the network in the clear.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

use crate::tls::TlsConnection;

/// Serves `router` on `listener` until `shutdown` resolves, then lets open
/// requests finish (live streams end on the store's own stop signal).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let listener = TlsListener::spawn(listener, tls)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The console's TLS connections, made by `tls::incoming` (handshakes off
/// the accept loop, with a deadline), as axum takes them.
struct TlsListener {
    connections: Pin<Box<dyn Stream<Item = std::io::Result<TlsConnection<TcpStream>>> + Send>>,
    local_addr: SocketAddr,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let accepted = TcpListenerStream::new(listener).map(|stream| {
            let stream = stream?;
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        Ok(Self {
            connections: Box::pin(crate::tls::incoming(accepted, acceptor)),
            local_addr,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.next().await {
                Some(Ok(connection)) => match connection.tcp_peer_addr() {
                    Ok(peer) => return (connection, peer),
                    // Gone before it was served.
                    Err(_) => continue,
                },
                Some(Err(_)) => continue,
                // The accept loop only ends when this listener is dropped.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
