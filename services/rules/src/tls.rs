//! The service's TLS, one for the gRPC and console listeners, reloadable
//! without a restart: on SIGHUP the certificate and key it presents and the
//! CA that client certificates must chain to are read from their files again
//! and serve every handshake from then on, while open connections (sync
//! streams among them) go on with what they were made with. A file that does
//! not load leaves the previous one in force.
//!
//! We terminate TLS ourselves (tokio-rustls) rather than through tonic's
//! `ServerTlsConfig`, which is fixed once the server starts: the certificate
//! comes from a resolver and the client check from a verifier that can both
//! be swapped, handshakes run off the accept loop with a deadline, and each
//! connection carries its client's certificates to the `caller` interceptor
//! ([`PeerInfo`]).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use crate::connections::{Activity, PeerInfo, Tracked};
use cassette_auth::CERTIFICATE_WARNING;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
    #[error("nothing to reload: the service's TLS was not given as files")]
    NotFromFiles,
}

fn invalid(what: &'static str) -> impl FnOnce(String) -> TlsError {
    move |message| TlsError::Invalid { what, message }
}

/// Where the service's TLS comes from, to read again on reload.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// One certificate the service holds, and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// "server certificate" or "client CA".
    pub what: &'static str,
    pub subject: String,
    pub not_after: SystemTime,
}

/// What one load of the files made.
struct Loaded {
    key: Arc<CertifiedKey>,
    clients: Arc<dyn ClientCertVerifier>,
    expiries: Vec<Expiry>,
    /// With a client CA: how this replica reaches the others (see
    /// [`ServerTls::replica_client`]).
    replica_client: Option<tonic::transport::ClientTlsConfig>,
}

/// The service's TLS (see the module comment).
pub struct ServerTls {
    files: Option<TlsFiles>,
    identity: Arc<Identity>,
    clients: Arc<ClientRoots>,
    expiries: RwLock<Vec<Expiry>>,
    replica_client: RwLock<Option<tonic::transport::ClientTlsConfig>>,
    grpc: TlsAcceptor,
    console: TlsAcceptor,
    /// Whether client certificates are checked at all (a client CA given).
    client_auth: bool,
    /// Counts reloads.
    reloaded: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// TLS with the certificate chain `cert` and its `key` (PEM); client
    /// certificates, when presented, must chain to `client_ca` (PEM). They
    /// are optional at the TLS layer: bearer-token callers present none.
    pub fn from_pem(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Result<Self, TlsError> {
        Self::new(load(cert, key, client_ca)?, None, client_ca.is_some())
    }

    /// [`ServerTls::from_pem`] from files, which [`ServerTls::reload`] reads again.
    pub fn from_files(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = load_files(&files)?;
        let client_auth = files.client_ca.is_some();
        Self::new(loaded, Some(files), client_auth)
    }

    fn new(loaded: Loaded, files: Option<TlsFiles>, client_auth: bool) -> Result<Self, TlsError> {
        let identity = Arc::new(Identity(RwLock::new(loaded.key)));
        let clients = Arc::new(ClientRoots(RwLock::new(loaded.clients)));
        let config = |alpn: &[&[u8]], verifier: Arc<dyn ClientCertVerifier>| {
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid("TLS")(e.to_string()))?
                .with_client_cert_verifier(verifier)
                .with_cert_resolver(identity.clone());
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok::<_, TlsError>(TlsAcceptor::from(Arc::new(config)))
        };
        // gRPC is HTTP/2 only; the console, whose callers use bearer tokens,
        // asks for no client certificate.
        let grpc = config(&[b"h2"], clients.clone())?;
        let console = config(
            &[b"h2", b"http/1.1"],
            WebPkiClientVerifier::no_client_auth(),
        )?;
        Ok(Self {
            files,
            identity,
            clients,
            expiries: RwLock::new(loaded.expiries),
            replica_client: RwLock::new(loaded.replica_client),
            grpc,
            console,
            client_auth,
            reloaded: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Wakes after each reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Reads the files again; every handshake from now on uses them. On
    /// error the previous certificate, key and CA stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = self.files.as_ref().ok_or(TlsError::NotFromFiles)?;
        if files.client_ca.is_some() != self.client_auth {
            return Err(invalid("--client-ca")(
                "whether client certificates are checked does not change on reload".into(),
            ));
        }
        let loaded = load_files(files)?;
        *self.identity.0.write().unwrap_or_else(|p| p.into_inner()) = loaded.key;
        *self.clients.0.write().unwrap_or_else(|p| p.into_inner()) = loaded.clients;
        *self.expiries.write().unwrap_or_else(|p| p.into_inner()) = loaded.expiries;
        *self
            .replica_client
            .write()
            .unwrap_or_else(|p| p.into_inner()) = loaded.replica_client;
        self.reloaded.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The certificates the service holds now, and when each ends.
    pub fn expiries(&self) -> Vec<Expiry> {
        self.expiries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The certificates that end within [`CERTIFICATE_WARNING`], and the soonest
    /// end of all.
    pub fn expiring(&self) -> (Vec<Expiry>, Option<SystemTime>) {
        let expiries = self.expiries();
        let soonest = expiries.iter().map(|e| e.not_after).min();
        let soon = SystemTime::now() + CERTIFICATE_WARNING;
        let expiring = expiries
            .into_iter()
            .filter(|e| e.not_after <= soon)
            .collect();
        (expiring, soonest)
    }

    /// How this replica follows the other replicas of its shared log: it
    /// presents its own certificate (whose replica identity, as `pki init`
    /// issues it, is what they admit) and trusts servers whose certificates
    /// chain to the client CA, the deployment's own. `None` without a client
    /// CA: nobody could authenticate by certificate.
    pub fn replica_client(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.replica_client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Handshakes for the gRPC listeners (HTTP/2, client certificates checked).
    pub fn grpc(&self) -> TlsAcceptor {
        self.grpc.clone()
    }

    /// Handshakes for the console (HTTP/1.1 and HTTP/2, no client certificates).
    pub fn console(&self) -> TlsAcceptor {
        self.console.clone()
    }
}

/// Says which certificates end soon (see [`ServerTls::expiring`]).
pub fn warn_expiring(expiring: &[Expiry]) {
    let now = SystemTime::now();
    for expiry in expiring {
        let days_left = expiry
            .not_after
            .duration_since(now)
            .map_or(0, |left| left.as_secs() / 86_400);
        tracing::warn!(
            certificate = expiry.what,
            subject = %expiry.subject,
            days_left,
            not_after = %prost_types::Timestamp::from(expiry.not_after),
            "a certificate the service holds ends soon: renew it and send SIGHUP"
        );
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.display().to_string(),
        source,
    })
}

fn load_files(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let cert = read(&files.cert, "--tls-cert")?;
    let key = read(&files.key, "--tls-key")?;
    let ca = files
        .client_ca
        .as_deref()
        .map(|path| read(path, "--client-ca"))
        .transpose()?;
    load(&cert, &key, ca.as_deref())
}

fn load(cert: &[u8], key_pem: &[u8], client_ca: Option<&[u8]>) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("--tls-cert")(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(invalid("--tls-cert")("no certificate in the file".into()));
    };
    let mut expiries = vec![expiry("server certificate", leaf, "--tls-cert")?];
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("--tls-key")(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid("--tls-key")(e.to_string()))?;
    let key = CertifiedKey::new(chain, signing);
    key.keys_match()
        .map_err(|e| invalid("--tls-key")(format!("does not match --tls-cert: {e}")))?;
    let clients = match client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid("--client-ca")(e.to_string()))?;
                expiries.push(expiry("client CA", &cert, "--client-ca")?);
                roots
                    .add(cert)
                    .map_err(|e| invalid("--client-ca")(e.to_string()))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid("--client-ca")(e.to_string()))?
        }
    };
    let replica_client = client_ca.map(|ca| {
        tonic::transport::ClientTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key_pem))
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
    });
    Ok(Loaded {
        key: Arc::new(key),
        clients,
        expiries,
        replica_client,
    })
}

fn expiry(
    what: &'static str,
    der: &CertificateDer<'_>,
    flag: &'static str,
) -> Result<Expiry, TlsError> {
    let (subject, not_after) = cassette_auth::certificate_end(der).map_err(invalid(flag))?;
    Ok(Expiry {
        what,
        subject,
        not_after,
    })
}

/// The certificate the service presents, swapped on reload.
#[derive(Debug)]
struct Identity(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Identity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The check of client certificates, swapped on reload.
#[derive(Debug)]
struct ClientRoots(RwLock<Arc<dyn ClientCertVerifier>>);

impl ClientRoots {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ClientCertVerifier for ClientRoots {
    fn offer_client_auth(&self) -> bool {
        self.current().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a verifier a reload may replace; a
        // client picks its certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// A server-side TLS connection over any stream (TCP, a Unix socket).
pub struct TlsConnection<S>(tokio_rustls::server::TlsStream<S>);

impl TlsConnection<Tracked<tokio::net::TcpStream>> {
    /// The client's address.
    pub fn tcp_peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.get_ref().peer_addr()
    }
}

impl<S> TlsConnection<Tracked<S>> {
    pub fn activity(&self) -> &Arc<Activity> {
        self.0.get_ref().0.activity()
    }
}

impl<S> tonic::transport::server::Connected for TlsConnection<Tracked<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let certificates = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .map(|chain| Arc::new(chain.iter().map(|c| c.clone().into_owned()).collect()));
        PeerInfo {
            certificates,
            activity: Some(self.activity().clone()),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The TLS connections made from `accepted` (a listener's connections): each
/// handshake runs in a task of its own with a deadline, so a slow or silent
/// client delays nobody else. Ends when `accepted` does; stops accepting
/// (and lets the listener go) once the returned stream is dropped.
pub fn incoming<S>(
    accepted: impl Stream<Item = io::Result<Tracked<S>>> + Send + 'static,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = io::Result<TlsConnection<Tracked<S>>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        tokio::pin!(accepted);
        loop {
            let stream = tokio::select! {
                () = tx.closed() => return,
                next = accepted.next() => match next {
                    Some(stream) => stream,
                    None => return,
                },
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let connection = TlsConnection(stream);
                        connection.activity().established();
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_reads_the_files_again_and_a_bad_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pki = cassette_pki::Pki::init_for(
            dir.path(),
            "cassette.local",
            &[],
            Duration::from_secs(3 * 24 * 3600),
        )
        .unwrap();
        let files = TlsFiles {
            cert: pki.server_cert_path(),
            key: pki.server_key_path(),
            client_ca: Some(pki.ca_cert_path()),
        };
        let tls = ServerTls::from_files(files.clone()).unwrap();
        let soon = |tls: &ServerTls| {
            let (expiring, _) = tls.expiring();
            expiring.iter().map(|e| e.what).collect::<Vec<_>>()
        };
        assert_eq!(soon(&tls), vec!["server certificate"], "3 days left");
        // A renewed certificate (90 days), in place.
        let renewed = dir.path().join("renewed");
        let other = cassette_pki::Pki::init(&renewed, "cassette.local", &[]).unwrap();
        std::fs::copy(other.server_cert_path(), &files.cert).unwrap();
        std::fs::copy(other.server_key_path(), &files.key).unwrap();
        tls.reload().unwrap();
        assert!(soon(&tls).is_empty(), "{:?}", tls.expiries());
        // A key that does not match: refused, the renewed pair stays.
        std::fs::write(
            &files.key,
            std::fs::read(other.log_signing_key_path()).unwrap(),
        )
        .unwrap();
        assert!(tls.reload().is_err());
        assert!(soon(&tls).is_empty());
    }
}
