//! Where a client finds the rules service: `http://HOST:PORT` or
//! `https://HOST:PORT` over TCP, or `unix:/PATH` over a Unix socket (a sidecar
//! reaching the service through a mounted socket, or a test crossing network
//! namespaces). With a TLS configuration every kind speaks TLS; over a Unix
//! socket the server certificate is checked for `localhost` unless the
//! configuration names another domain.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Http(String),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not a rules service address: use http://HOST:PORT, https://HOST:PORT or unix:/PATH")]
    Invalid(String),
    #[error("{0} is https:// but no TLS configuration (a CA to check the server with) was given")]
    NoTls(String),
    #[error("{0} is http:// but a TLS configuration was given: use https://")]
    NotHttps(String),
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl std::str::FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TargetError::Invalid(s.to_owned()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if (s.starts_with("http://") || s.starts_with("https://"))
            && Endpoint::from_shared(s.to_owned()).is_ok()
        {
            return Ok(Target::Http(s.to_owned()));
        }
        Err(TargetError::Invalid(s.to_owned()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Http(url) => f.write_str(url),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How a client notices a dead peer: HTTP/2 pings every `interval` (also on
/// an idle connection), the connection dropped when one is not answered within
/// `timeout`; TCP keepalive probes too, and connecting gives up after `timeout`.
/// A silent partition is then noticed within `interval + timeout`, not after
/// TCP's retransmission backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Keepalive {
    fn apply(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .http2_keep_alive_interval(self.interval)
            .keep_alive_timeout(self.timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(self.interval))
            .connect_timeout(self.timeout)
    }
}

impl Target {
    /// Connects one plaintext HTTP/2 channel.
    pub async fn connect(&self) -> Result<Channel, TargetError> {
        self.connect_with(None).await
    }

    /// Connects one HTTP/2 channel, over TLS when `tls` is given (the CA to
    /// check the server with, and a client certificate to present, if any),
    /// with the default [`Keepalive`].
    pub async fn connect_with(
        &self,
        tls: Option<&ClientTlsConfig>,
    ) -> Result<Channel, TargetError> {
        self.dial(tls, Keepalive::default()).await
    }

    /// [`Target::connect_with`] with `keepalive` to notice a dead peer.
    pub async fn dial(
        &self,
        tls: Option<&ClientTlsConfig>,
        keepalive: Keepalive,
    ) -> Result<Channel, TargetError> {
        let failed = |source| TargetError::Connect {
            target: self.to_string(),
            source,
        };
        match self {
            Target::Http(url) => {
                let mut endpoint = keepalive.apply(
                    Endpoint::from_shared(url.clone())
                        .map_err(failed)?
                        .tcp_nodelay(true),
                );
                match (url.starts_with("https://"), tls) {
                    (true, Some(tls)) => {
                        endpoint = endpoint.tls_config(tls.clone()).map_err(failed)?
                    }
                    (true, None) => return Err(TargetError::NoTls(url.clone())),
                    (false, Some(_)) => return Err(TargetError::NotHttps(url.clone())),
                    (false, None) => {}
                }
                endpoint.connect().await.map_err(failed)
            }
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is required but only names the server for TLS: the
                // connector dials the socket.
                let endpoint = keepalive.apply(match tls {
                    Some(tls) => Endpoint::from_static("https://localhost")
                        .tls_config(tls.clone())
                        .map_err(failed)?,
                    None => Endpoint::from_static("http://rules.invalid"),
                });
                endpoint
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
                    .map_err(failed)
            }
        }
    }
}

/// Whether what is sent to `uri` stays private without our own TLS: it is
/// https://, or a loopback address (which never leaves the machine). No name
/// is resolved to tell.
pub fn stays_private(uri: &tonic::codegen::http::Uri) -> bool {
    if uri.scheme_str() == Some("https") {
        return true;
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Target {
    /// Whether what goes to this target stays private without TLS: a Unix
    /// socket, https://, or a loopback address.
    pub fn stays_private(&self) -> bool {
        match self {
            Target::Unix(_) => true,
            Target::Http(url) => url
                .parse::<tonic::codegen::http::Uri>()
                .is_ok_and(|uri| stays_private(&uri)),
        }
    }
}

#[cfg(test)]
mod private_tests {
    use super::*;

    #[test]
    fn only_tls_loopback_and_unix_sockets_stay_private() {
        for private in [
            "https://rules.example:50051",
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ] {
            assert!(Target::Http(private.into()).stays_private(), "{private}");
        }
        assert!(Target::Unix("/run/rules.sock".into()).stays_private());
        for public in [
            "http://192.0.2.7:50051",
            "http://rules:50051",
            "http://[2001:db8::1]:1",
        ] {
            assert!(!Target::Http(public.into()).stays_private(), "{public}");
        }
    }
}
