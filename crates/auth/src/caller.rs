//! The authenticated caller and the one authorization check.

use std::sync::Arc;

use cassette_model::{ActorId, InstanceId, ValidationError};

use crate::identity::{PrincipalName, TrustDomain};
use crate::policy::{Grant, Role};

/// What a method does, for the role check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// GetFirewall, ListFirewalls, WaitForSync.
    Read,
    /// Every FirewallService mutation.
    Mutate,
    /// AuditService.
    Audit,
}

impl Role {
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Mutate => matches!(self, Role::Editor | Role::Admin),
            Action::Audit => matches!(self, Role::Auditor | Role::Admin),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Missing, unknown or unverifiable credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller asking for something it may not do.
    #[error("{0}")]
    PermissionDenied(String),
    /// A malformed identity header (`x-actor`, `x-on-behalf-of`).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

#[derive(Debug, Clone)]
enum Who {
    /// Development mode: no credentials exist; everyone is an admin.
    Anonymous { actor: ActorId },
    /// An API caller the policy knows.
    Principal(Arc<Grant>),
    /// A verified principal identity with no entry in the policy.
    Stranger(PrincipalName),
    /// An instance's enforcer.
    Enforcer { instance: InstanceId, uri: String },
    /// Another rules replica (its server certificate's identity).
    Replica { uri: String },
}

/// How a caller proved who it is: what a new policy is applied to again
/// (see `Authenticator::recheck`).
#[derive(Debug, Clone)]
pub(crate) enum Proof {
    /// Development mode: nothing to prove.
    None,
    /// A client certificate with this SPIFFE ID.
    Certificate { spiffe_id: String },
    /// A bearer token with this SHA-256.
    Token { digest: [u8; 32] },
}

/// Who is calling, as authenticated for one request or stream.
#[derive(Debug, Clone)]
pub struct Caller {
    who: Who,
    on_behalf_of: Option<ActorId>,
    pub(crate) proof: Proof,
}

impl Caller {
    pub(crate) fn anonymous(actor: ActorId, on_behalf_of: Option<ActorId>) -> Self {
        Self {
            who: Who::Anonymous { actor },
            on_behalf_of,
            proof: Proof::None,
        }
    }

    pub(crate) fn principal(grant: Arc<Grant>, proof: Proof) -> Self {
        Self {
            who: Who::Principal(grant),
            on_behalf_of: None,
            proof,
        }
    }

    pub(crate) fn stranger(name: PrincipalName, proof: Proof) -> Self {
        Self {
            who: Who::Stranger(name),
            on_behalf_of: None,
            proof,
        }
    }

    pub(crate) fn enforcer(instance: InstanceId, domain: &TrustDomain) -> Self {
        let uri = domain.enforcer_uri(instance.as_str());
        Self {
            proof: Proof::Certificate {
                spiffe_id: uri.clone(),
            },
            who: Who::Enforcer { instance, uri },
            on_behalf_of: None,
        }
    }

    pub(crate) fn replica(name: &PrincipalName, domain: &TrustDomain) -> Self {
        let uri = domain.replica_uri(name.as_str());
        Self {
            proof: Proof::Certificate {
                spiffe_id: uri.clone(),
            },
            who: Who::Replica { uri },
            on_behalf_of: None,
        }
    }

    /// When the credential this caller presented stops working (a bearer
    /// token with `expires`): a long-lived call ends then.
    pub fn expires(&self) -> Option<std::time::SystemTime> {
        match (&self.who, &self.proof) {
            (Who::Principal(grant), Proof::Token { .. }) => grant.token_expires,
            _ => None,
        }
    }

    /// The principal's name, for one authenticated by name (a certificate).
    pub(crate) fn principal_name(&self) -> Option<&PrincipalName> {
        match &self.who {
            Who::Principal(grant) => Some(&grant.name),
            Who::Stranger(name) => Some(name),
            _ => None,
        }
    }

    /// Records the end user a delegate acts for; refused for anyone else.
    pub(crate) fn acting_for(mut self, user: ActorId) -> Result<Self, AuthError> {
        match &self.who {
            Who::Anonymous { .. } => {}
            Who::Principal(grant) if grant.delegate => {}
            _ => {
                return Err(AuthError::PermissionDenied(format!(
                    "{} may not act on behalf of others (x-on-behalf-of needs delegate = true in the policy)",
                    self.describe()
                )))
            }
        }
        self.on_behalf_of = Some(user);
        Ok(self)
    }

    /// The name the event log records as the actor, and spans show as the principal.
    pub fn actor(&self) -> ActorId {
        let name = match &self.who {
            Who::Anonymous { actor } => return actor.clone(),
            Who::Principal(grant) => grant.name.as_str(),
            Who::Stranger(name) => name.as_str(),
            Who::Enforcer { uri, .. } | Who::Replica { uri } => uri,
        };
        ActorId::parse(name).unwrap_or_else(|_| ActorId::anonymous())
    }

    /// The end user a delegate said it acts for.
    pub fn on_behalf_of(&self) -> Option<&ActorId> {
        self.on_behalf_of.as_ref()
    }

    /// `principal web-team (editor of web-*)`, for messages.
    pub fn describe(&self) -> String {
        match &self.who {
            Who::Anonymous { actor } => format!("{} (development mode)", actor.as_str()),
            Who::Principal(grant) => format!(
                "principal {} ({} of {})",
                grant.name,
                grant.role.as_str(),
                grant.scope()
            ),
            Who::Stranger(name) => format!("principal {name} (not in the policy)"),
            Who::Enforcer { uri, .. } => format!("enforcer identity {uri}"),
            Who::Replica { uri } => format!("replica identity {uri}"),
        }
    }

    fn grant(&self, method: &str) -> Result<Option<&Grant>, AuthError> {
        match &self.who {
            Who::Anonymous { .. } => Ok(None),
            Who::Principal(grant) => Ok(Some(grant)),
            Who::Stranger(_) | Who::Enforcer { .. } | Who::Replica { .. } => Err(
                AuthError::PermissionDenied(format!("{} may not call {method}", self.describe())),
            ),
        }
    }

    /// The one authorization check: may this caller do `action` (the RPC
    /// `method`) on `instance`? PERMISSION_DENIED names the principal, the
    /// method and the instance.
    pub fn authorize(&self, action: Action, method: &str, instance: &str) -> Result<(), AuthError> {
        let Some(grant) = self.grant(method)? else {
            return Ok(());
        };
        if !grant.role.allows(action) {
            return Err(AuthError::PermissionDenied(format!(
                "{} may not call {method} (on instance {instance:?}): the role does not allow it",
                self.describe()
            )));
        }
        if !grant.covers(instance) {
            return Err(AuthError::PermissionDenied(format!(
                "{} may not call {method} on instance {instance:?}: it is outside the principal's instances",
                self.describe()
            )));
        }
        Ok(())
    }

    /// The role check for a call over many instances (ListFirewalls, ListEvents,
    /// VerifyLog); filter what it returns with [`Caller::may_see`].
    pub fn authorize_any(&self, action: Action, method: &str) -> Result<(), AuthError> {
        let Some(grant) = self.grant(method)? else {
            return Ok(());
        };
        if grant.role.allows(action) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied(format!(
                "{} may not call {method}: the role does not allow it",
                self.describe()
            )))
        }
    }

    /// The check for a call over the whole log whatever the caller's scope
    /// (VerifyLog reads every instance's events): the role must allow
    /// `action` and the scope must be every instance (`*`).
    pub fn authorize_all(&self, action: Action, method: &str) -> Result<(), AuthError> {
        self.authorize_any(action, method)?;
        match self.grant(method)? {
            Some(grant) if !grant.instances.iter().any(|g| g.as_str() == "*") => {
                Err(AuthError::PermissionDenied(format!(
                    "{} may not call {method}: it reads every instance's events, and the principal's instances are {}",
                    self.describe(),
                    grant.scope()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether a call allowed by [`Caller::authorize_any`] may include `instance`.
    pub fn may_see(&self, instance: &str) -> bool {
        match &self.who {
            Who::Anonymous { .. } => true,
            Who::Principal(grant) => grant.covers(instance),
            Who::Stranger(_) | Who::Enforcer { .. } | Who::Replica { .. } => false,
        }
    }

    /// Only an enforcer identity may open a sync stream, and only for its own
    /// instance (in development mode, anyone for any instance).
    pub fn authorize_sync(&self, instance: &str) -> Result<(), AuthError> {
        match &self.who {
            Who::Anonymous { .. } => Ok(()),
            Who::Enforcer { instance: own, .. } if own.as_str() == instance => Ok(()),
            Who::Enforcer { uri, .. } => Err(AuthError::PermissionDenied(format!(
                "enforcer identity {uri} may not call Sync for instance {instance:?}: an enforcer speaks only for its own instance"
            ))),
            _ => Err(AuthError::PermissionDenied(format!(
                "{} may not call Sync: only an enforcer identity (spiffe://<trust-domain>/enforcer/<instance>) may",
                self.describe()
            ))),
        }
    }
}

impl Caller {
    /// Only a replica identity may follow what a replica shares with the
    /// others (its enforcers' sync state and reports, every instance's): in
    /// development mode, anyone.
    pub fn authorize_replica(&self, method: &str) -> Result<(), AuthError> {
        match &self.who {
            Who::Anonymous { .. } | Who::Replica { .. } => Ok(()),
            _ => Err(AuthError::PermissionDenied(format!(
                "{} may not call {method}: only a replica identity (spiffe://<trust-domain>/replica/<name>) may",
                self.describe()
            ))),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.actor().as_str())
    }
}
