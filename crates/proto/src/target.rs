//! Where a client finds the rules service: `http://HOST:PORT` over TCP, or
//! `unix:/PATH` over a Unix socket (a sidecar reaching the service through a
//! mounted socket, or a test crossing network namespaces).

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Http(String),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not a rules service address: use http://HOST:PORT or unix:/PATH")]
    Invalid(String),
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
        if s.starts_with("http://") && Endpoint::from_shared(s.to_owned()).is_ok() {
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

impl Target {
    /// Connects one HTTP/2 channel.
    pub async fn connect(&self) -> Result<Channel, TargetError> {
        let failed = |source| TargetError::Connect {
            target: self.to_string(),
            source,
        };
        match self {
            Target::Http(url) => Endpoint::from_shared(url.clone())
                .map_err(failed)?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(failed),
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is required but unused: the connector dials the socket.
                Endpoint::from_static("http://rules.invalid")
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
