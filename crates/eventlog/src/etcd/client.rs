//! Reaching the etcd cluster: where it is (`EtcdConfig`), the auth token on
//! every request, watches, and what a failed call means (retry elsewhere, or
//! a refusal to explain).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use super::api;
use super::api::kv_client::KvClient;
use super::api::RangeRequest;
use super::head_of;

/// Where the etcd cluster is and how to reach it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the cluster's members (`http://` or `https://`).
    pub endpoints: Vec<String>,
    /// Every key of this log starts with it (`/cassette/v1`).
    pub prefix: String,
    /// TLS for `https://` endpoints.
    pub tls: Option<ClientTlsConfig>,
    /// How long one request may take before it is retried elsewhere.
    pub request_timeout: Duration,
    /// How long an append keeps retrying (leader elections take about a
    /// second) before it gives up as unavailable.
    pub append_deadline: Duration,
    /// User and password for a cluster with authentication enabled: the
    /// token etcd gives for them goes with every request, renewed when etcd
    /// says it expired.
    pub credentials: Option<(String, String)>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/cassette/v1".to_owned(),
            tls: None,
            request_timeout: Duration::from_secs(2),
            append_deadline: Duration::from_secs(10),
            credentials: None,
        }
    }
}

/// A channel to one member that carries the auth token, if any.
pub(crate) type Member = InterceptedService<Channel, TokenInterceptor>;

/// etcd's auth token for our credentials, shared by every client of a log.
#[derive(Clone)]
pub(crate) struct Auth {
    pub(crate) token: Arc<RwLock<Option<MetadataValue<Ascii>>>>,
    pub(crate) credentials: Option<Arc<(String, String)>>,
}

/// Puts the current token (if any) on each request.
#[derive(Clone)]
pub(crate) struct TokenInterceptor(Arc<RwLock<Option<MetadataValue<Ascii>>>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = self.0.read().unwrap_or_else(|p| p.into_inner()).clone() {
            request.metadata_mut().insert("token", token);
        }
        Ok(request)
    }
}

impl Auth {
    pub(crate) fn member(&self, channel: &Channel) -> Member {
        InterceptedService::new(channel.clone(), TokenInterceptor(self.token.clone()))
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Asks `channel`'s member for a token for our credentials (nothing to
    /// do without credentials).
    pub(crate) async fn refresh(&self, channel: &Channel) -> Result<(), tonic::Status> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        let answer = api::auth_client::AuthClient::new(channel.clone())
            .authenticate(api::AuthenticateRequest {
                name: credentials.0.clone(),
                password: credentials.1.clone(),
            })
            .await?
            .into_inner();
        let token = answer
            .token
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| tonic::Status::internal("etcd gave a token that is not ASCII"))?;
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
        tracing::info!(user = %credentials.0, "authenticated to etcd");
        Ok(())
    }
}

/// Whether etcd refused a request for its token (none, or expired).
pub(crate) fn needs_token(status: &tonic::Status) -> bool {
    let message = status.message();
    status.code() == tonic::Code::Unauthenticated
        || message.contains("invalid auth token")
        || message.contains("user name is empty")
}

/// The head's sequence as `channel`'s member reads it, linearizably (a
/// member without a leader cannot answer).
pub(crate) async fn read_head_sequence(
    auth: &Auth,
    channel: &Channel,
    key: &[u8],
) -> Result<u64, tonic::Status> {
    let answer = KvClient::new(auth.member(channel))
        .range(RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let value = answer.kvs.into_iter().next().map(|kv| kv.value);
    head_of(value)
        .map(|h| h.sequence)
        .map_err(|e| tonic::Status::data_loss(e.to_string()))
}

/// Opens a watch on `channel`'s member. etcd answers the stream (headers
/// included) only once it has the create request, so that goes in before the
/// call is awaited; the stream lasts as long as the returned sender.
pub(crate) async fn open_watch(
    auth: &Auth,
    channel: &Channel,
    create: api::WatchCreateRequest,
) -> Result<
    (
        tokio::sync::mpsc::Sender<api::WatchRequest>,
        tonic::Streaming<api::WatchResponse>,
    ),
    tonic::Status,
> {
    let (requests, outbound) = tokio::sync::mpsc::channel(1);
    let create = api::WatchRequest {
        request_union: Some(api::watch_request::RequestUnion::CreateRequest(create)),
    };
    // The receiver is alive until the call below takes it.
    let _ = requests.send(create).await;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbound));
    // etcd's "require leader": a member cut off from the cluster's majority
    // ends the watch (instead of keeping it open and silent).
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let responses = api::watch_client::WatchClient::new(auth.member(channel))
        .watch(request)
        .await?
        .into_inner();
    Ok((requests, responses))
}

/// What etcd's refusal means, for whoever runs the cluster.
pub(crate) fn refusal(status: &tonic::Status) -> String {
    let message = status.message();
    if message.contains("database space exceeded") {
        format!(
            "{message}: etcd's database reached its quota (--quota-backend-bytes); \
             compact its history, defragment each member and disarm the NOSPACE alarm"
        )
    } else {
        format!("etcd refused the request: {message}")
    }
}

/// Whether a failed etcd call may succeed on another try or member.
pub(crate) fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Aborted => true,
        // "etcdserver: leader changed", "no leader", "request timed out"
        Code::Internal | Code::Cancelled => true,
        _ => false,
    }
}
