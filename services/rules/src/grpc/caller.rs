//! Every request to the cassette services is authenticated here, once, by a
//! tonic interceptor: the verified client certificate (if TLS asked for one),
//! the bearer token and the identity headers become a [`Caller`] in the
//! request's extensions. Handlers read that `Caller` and ask it
//! [`Caller::authorize`]; they never look at credentials themselves.

use std::sync::Arc;

use crate::connections::PeerInfo;
use cassette_auth::{
    AuthError, Authenticator, Caller, Credentials, ACTOR_HEADER, ON_BEHALF_OF_HEADER,
};
use tokio::sync::watch;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The interceptor in front of FirewallService, EnforcerService, AuditService
/// and ReplicaService.
#[derive(Clone)]
pub struct Authenticate(pub Arc<Authenticator>);

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let certificates = peer_certificates(&request);
        let certificate = certificates
            .as_ref()
            .and_then(|c| c.first())
            .map(|c| c.as_ref());
        let caller = authenticate(&self.0, request.metadata().as_ref(), certificate)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller from a request's headers (the bearer token, and the identity
/// headers) and its verified client certificate, if TLS asked for one: what
/// the gRPC interceptor and the console's JSON API both use.
pub fn authenticate(
    authenticator: &Authenticator,
    headers: &axum::http::HeaderMap,
    certificate: Option<&[u8]>,
) -> Result<Caller, Status> {
    let header = |name: &'static str| -> Result<Option<&str>, Status> {
        headers
            .get(name)
            .map(|v| v.to_str())
            .transpose()
            .map_err(|_| {
                crate::grpc::status::invalid(cassette_model::ValidationError::new(
                    name,
                    "must be printable ASCII",
                ))
            })
    };
    let credentials = Credentials {
        certificate,
        authorization: header("authorization")?,
        actor: header(ACTOR_HEADER)?,
        on_behalf_of: header(ON_BEHALF_OF_HEADER)?,
    };
    authenticator
        .authenticate(&credentials)
        .inspect_err(|error| tracing::info!(%error, "request refused by authentication"))
        .map_err(crate::grpc::status::refused)
}

/// The client's certificate chain, over TCP or a Unix socket (see `tls.rs`).
fn peer_certificates<T>(
    request: &Request<T>,
) -> Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.certificates.clone())
}

/// The request's authenticated caller.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(crate::grpc::status::unauthenticated_handler)
}

/// A long-lived call's caller (a sync stream, a ListEvents follow stream,
/// WaitForSync, the console's live view), checked again against each new
/// policy: the call ends with UNAUTHENTICATED or PERMISSION_DENIED once its
/// caller may no longer do what it does, and a narrowed scope filters from
/// that moment.
#[derive(Clone)]
pub struct Reauthorized {
    authenticator: Arc<Authenticator>,
    changes: watch::Receiver<u64>,
    caller: Caller,
}

impl Reauthorized {
    /// `caller`, authenticated under the policy in force now.
    pub fn new(authenticator: Arc<Authenticator>, caller: Caller) -> Self {
        let mut changes = authenticator.changes();
        changes.borrow_and_update();
        Self {
            authenticator,
            changes,
            caller,
        }
    }

    /// The caller as the latest check saw it.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// If the policy changed since the last check: the caller as the new
    /// policy sees it, if `allowed` still holds for it; the status that ends
    /// the call if not. Call it before handing out anything new.
    pub fn recheck(
        &mut self,
        allowed: impl Fn(&Caller) -> Result<(), AuthError>,
    ) -> Result<(), Status> {
        if !self.changes.has_changed().unwrap_or(false) {
            return Ok(());
        }
        self.changes.borrow_and_update();
        let fresh = self
            .authenticator
            .recheck(&self.caller)
            .and_then(|fresh| allowed(&fresh).map(|()| fresh))
            .inspect_err(|error| tracing::info!(%error, "a long-lived call's caller no longer passes the policy"))
            .map_err(crate::grpc::status::refused)?;
        self.caller = fresh;
        Ok(())
    }

    /// Resolves at the next policy change, or when the caller's credential
    /// expires (never, without either).
    pub async fn changed(&mut self) {
        let expires = self.caller.expires();
        let expiry = async {
            match expires {
                Some(at) => {
                    let left = at
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = self.changes.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            () = expiry => {}
        }
        // Seen again by the next `recheck`.
        self.changes.mark_changed();
    }
}
