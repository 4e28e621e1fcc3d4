//! How this replica follows the other replicas of its shared log directly
//! (`cassette_service::peers`): a `FollowShared` stream to each, over TLS with
//! this replica's own certificate when the service has TLS, and the address
//! the others reach this one at (`--replica-address`, or its loopback
//! listener's).

use std::net::SocketAddr;
use std::time::Duration;

use cassette_proto::pb::replica_service_client::ReplicaServiceClient;
use cassette_proto::{pb, Target};
use cassette_service::peers::{Dialer, SharedBatch};
use tokio::sync::mpsc;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// How long a follow may take to connect, and how quickly a silent peer is
/// given up (HTTP/2 pings).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const OPEN_TIMEOUT: Duration = Duration::from_secs(4);

/// Follows replicas over gRPC as the replica `id`.
pub struct GrpcDialer {
    id: String,
    /// TLS to the other replicas (`None`: plaintext, development mode).
    tls: Box<dyn Fn() -> Option<ClientTlsConfig> + Send + Sync>,
    /// Follow in plaintext beyond loopback (`--insecure-plaintext`).
    insecure_plaintext: bool,
}

impl GrpcDialer {
    pub fn new(
        id: &str,
        tls: Box<dyn Fn() -> Option<ClientTlsConfig> + Send + Sync>,
        insecure_plaintext: bool,
    ) -> Self {
        Self {
            id: id.to_owned(),
            tls,
            insecure_plaintext,
        }
    }
}

impl Dialer for GrpcDialer {
    fn follow(&self, address: &str) -> mpsc::Receiver<SharedBatch> {
        let (batches, received) = mpsc::channel(16);
        let request = pb::FollowSharedRequest {
            replica: self.id.clone(),
        };
        let tls = (self.tls)();
        let address = address.to_owned();
        let plaintext_allowed = self.insecure_plaintext;
        tokio::spawn(async move {
            if tls.is_none() && !plaintext_allowed && !Target::Http(address.clone()).stays_private()
            {
                // What etcd lists is not trusted to send this replica
                // anywhere in plaintext (the rule every plaintext door has).
                tracing::warn!(%address, "not following a replica in plaintext beyond loopback (--insecure-plaintext allows it)");
                return;
            }
            if let Err(error) = follow(&address, tls, request, &batches).await {
                tracing::info!(%address, %error, "following a replica's shared values failed; trying again");
            }
        });
        received
    }
}

async fn follow(
    address: &str,
    tls: Option<ClientTlsConfig>,
    request: pb::FollowSharedRequest,
    batches: &mpsc::Sender<SharedBatch>,
) -> Result<(), String> {
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| format!("not a URL: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    // The connection and the call's answer, bounded: a frozen replica
    // accepts TCP (its kernel does) and then says nothing.
    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        ReplicaServiceClient::new(channel)
            .follow_shared(request)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })
    .await
    .map_err(|_| format!("no answer within {OPEN_TIMEOUT:?}"))??;
    let mut stream = opened.into_inner();
    loop {
        let Some(message) = stream
            .message()
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        else {
            return Err("the stream ended".into());
        };
        let batch = SharedBatch {
            complete: message.complete,
            values: message
                .values
                .into_iter()
                .map(|v| (v.name, v.value))
                .collect(),
        };
        if batches.send(batch).await.is_err() {
            return Ok(());
        }
    }
}

/// The address other replicas reach this one at when none is given: its
/// first TCP listener's, when that is a specific address (a wildcard
/// listener's address reaches nothing from elsewhere).
pub fn default_address(listening: Option<SocketAddr>, tls: bool) -> Option<String> {
    let addr = listening?;
    if addr.ip().is_unspecified() {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{addr}"))
}

/// `--replica-address`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaAddress {
    /// Where the other replicas reach this one.
    Url(String),
    /// Share through etcd.
    Off,
}

/// `--replica-address`: an http:// or https:// URL of a host and port, or off.
pub fn parse_address(text: &str) -> Result<ReplicaAddress, String> {
    if text == "off" {
        return Ok(ReplicaAddress::Off);
    }
    let shape = || {
        format!(
            "{text:?} is not a replica address: give a URL such as https://rules-a:50051, or off"
        )
    };
    let uri: axum::http::Uri = text.parse().map_err(|_| shape())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let authority = uri.authority().ok_or_else(shape)?;
    if !scheme_ok || authority.port_u16().is_none() || !matches!(uri.path(), "" | "/") {
        return Err(shape());
    }
    Ok(ReplicaAddress::Url(format!(
        "{}://{authority}",
        uri.scheme_str().unwrap_or("https")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_addresses_are_urls_of_a_host_and_port() {
        let url = |u: &str| ReplicaAddress::Url(u.into());
        assert_eq!(
            parse_address("https://rules-a:50051").unwrap(),
            url("https://rules-a:50051")
        );
        assert_eq!(
            parse_address("http://127.0.0.1:7/").unwrap(),
            url("http://127.0.0.1:7")
        );
        assert_eq!(parse_address("off").unwrap(), ReplicaAddress::Off);
        for bad in [
            "rules-a:50051",
            "https://rules-a",
            "ftp://a:1",
            "https://a:1/x",
            "",
        ] {
            let error = parse_address(bad).unwrap_err();
            assert!(error.contains("replica address"), "{bad}: {error}");
        }
        assert_eq!(
            default_address(Some("127.0.0.1:50051".parse().unwrap()), true).as_deref(),
            Some("https://127.0.0.1:50051")
        );
        assert_eq!(
            default_address(Some("0.0.0.0:50051".parse().unwrap()), false),
            None
        );
        assert_eq!(default_address(None, false), None);
        // Plaintext replica addresses follow the rule of every door.
        let private = |a: &str| Target::Http(a.into()).stays_private();
        assert!(private("http://127.0.0.1:7") && private("http://[::1]:7"));
        assert!(private("https://rules-a:50051"));
        assert!(!private("http://10.0.0.2:50051") && !private("http://rules-a:1"));
    }
}
