//! Credentials in, a [`Caller`] out.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use cassette_model::{ActorId, ValidationError};
use sha2::{Digest, Sha256};

use crate::caller::{AuthError, Caller};
use crate::identity::{Identity, TrustDomain};
use crate::policy::{Policy, PolicyError};

/// Metadata naming who asks in development mode (ignored otherwise).
pub const ACTOR_HEADER: &str = cassette_model::ActorId::FIELD;
/// Metadata a delegate principal uses to name the end user it acts for.
pub const ON_BEHALF_OF_HEADER: &str = "x-on-behalf-of";

/// What a request presented. The certificate's chain has already been
/// verified by TLS against the configured client CA.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// DER of the client's leaf certificate.
    pub certificate: Option<&'a [u8]>,
    /// The `authorization` header's value.
    pub authorization: Option<&'a str>,
    /// `x-actor`.
    pub actor: Option<&'a str>,
    /// `x-on-behalf-of`.
    pub on_behalf_of: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// No credentials exist: every caller is `anonymous` (or its `x-actor`) with role admin.
    Development,
    /// Client certificates (SPIFFE URI SANs in this trust domain) and bearer tokens.
    Secure { trust_domain: TrustDomain },
}

/// Authenticates requests against the current policy, which can be replaced
/// while serving (SIGHUP).
pub struct Authenticator {
    mode: Mode,
    policy: RwLock<Arc<Policy>>,
    policy_path: Option<PathBuf>,
}

impl Authenticator {
    pub fn development() -> Self {
        Self {
            mode: Mode::Development,
            policy: RwLock::default(),
            policy_path: None,
        }
    }

    /// Secure mode with `policy`, reloadable from `policy_path` if given.
    pub fn secure(trust_domain: TrustDomain, policy: Policy, policy_path: Option<PathBuf>) -> Self {
        Self {
            mode: Mode::Secure { trust_domain },
            policy: RwLock::new(Arc::new(policy)),
            policy_path,
        }
    }

    pub fn is_development(&self) -> bool {
        matches!(self.mode, Mode::Development)
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the policy file. On error the previous policy stays in force.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        let Some(path) = &self.policy_path else {
            return Ok(self.policy().grants().len());
        };
        let policy = Policy::load(path)?;
        let principals = policy.grants().len();
        self.replace(policy);
        Ok(principals)
    }

    pub fn replace(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }

    pub fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Caller, AuthError> {
        let on_behalf_of = credentials
            .on_behalf_of
            .map(|value| parse_header(ON_BEHALF_OF_HEADER, value))
            .transpose()?;
        let caller = match &self.mode {
            Mode::Development => {
                let actor = match credentials.actor {
                    Some(value) => parse_header(ACTOR_HEADER, value)?,
                    None => ActorId::anonymous(),
                };
                return Ok(Caller::anonymous(actor, on_behalf_of));
            }
            Mode::Secure { trust_domain } => self.secure_caller(credentials, trust_domain)?,
        };
        match on_behalf_of {
            Some(user) => caller.acting_for(user),
            None => Ok(caller),
        }
    }

    fn secure_caller(
        &self,
        credentials: &Credentials<'_>,
        domain: &TrustDomain,
    ) -> Result<Caller, AuthError> {
        let policy = self.policy();
        if let Some(der) = credentials.certificate {
            return Ok(match Identity::from_certificate(der, domain)? {
                Identity::Enforcer(instance) => Caller::enforcer(instance, domain),
                Identity::Principal(name) => match policy.grant(&name) {
                    Some(grant) => Caller::principal(Arc::new(grant.clone())),
                    None => Caller::stranger(name),
                },
            });
        }
        let Some(authorization) = credentials.authorization else {
            return Err(AuthError::Unauthenticated(
                "no credentials: present a client certificate or an `authorization: Bearer <token>` header"
                    .into(),
            ));
        };
        let token = bearer_token(authorization).ok_or_else(|| {
            AuthError::Unauthenticated("the authorization header must be `Bearer <token>`".into())
        })?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        policy
            .grant_for_token_digest(&digest)
            .map(|grant| Caller::principal(Arc::new(grant.clone())))
            .ok_or_else(|| AuthError::Unauthenticated("unknown bearer token".into()))
    }
}

fn parse_header(name: &'static str, value: &str) -> Result<ActorId, AuthError> {
    ActorId::parse(value).map_err(|e| AuthError::Invalid(ValidationError::new(name, e.message)))
}

fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::Action;

    fn secure() -> Authenticator {
        let policy = Policy::parse(&format!(
            r#"
[[principal]]
name = "console"
role = "admin"
instances = ["*"]
delegate = true
token_sha256 = "{}"
[[principal]]
name = "web-team"
role = "editor"
instances = ["web-*"]
token_sha256 = "{}"
"#,
            hex(b"console-token"),
            hex(b"web-token")
        ))
        .unwrap();
        Authenticator::secure(TrustDomain::default(), policy, None)
    }

    fn hex(token: &[u8]) -> String {
        Sha256::digest(token)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn token(t: &str) -> String {
        format!("Bearer {t}")
    }

    #[test]
    fn development_mode_is_an_anonymous_admin_named_by_x_actor() {
        let auth = Authenticator::development();
        let caller = auth.authenticate(&Credentials::default()).unwrap();
        assert_eq!(caller.actor().as_str(), "anonymous");
        caller.authorize(Action::Mutate, "AddRule", "db-1").unwrap();
        caller.authorize_sync("db-1").unwrap();
        let caller = auth
            .authenticate(&Credentials {
                actor: Some("alice"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(caller.actor().as_str(), "alice");
    }

    #[test]
    fn tokens_name_principals_and_roles_and_scopes_are_checked() {
        let auth = secure();
        let missing = auth.authenticate(&Credentials::default()).unwrap_err();
        assert!(matches!(missing, AuthError::Unauthenticated(_)));
        let wrong = auth
            .authenticate(&Credentials {
                authorization: Some(&token("nope")),
                ..Default::default()
            })
            .unwrap_err();
        assert!(matches!(wrong, AuthError::Unauthenticated(_)));

        let web = auth
            .authenticate(&Credentials {
                authorization: Some(&token("web-token")),
                actor: Some("mallory"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(web.actor().as_str(), "web-team", "x-actor is ignored");
        web.authorize(Action::Mutate, "AddRule", "web-1").unwrap();
        let denied = web
            .authorize(Action::Mutate, "AddRule", "db-1")
            .unwrap_err();
        let message = denied.to_string();
        assert!(
            message.contains("web-team") && message.contains("AddRule") && message.contains("db-1"),
            "{message}"
        );
        assert!(web.authorize(Action::Audit, "ListEvents", "web-1").is_err());
        assert!(web.authorize_sync("web-1").is_err());
        assert!(web.may_see("web-2") && !web.may_see("db-1"));
    }

    #[test]
    fn only_a_delegate_may_act_on_behalf_of_someone() {
        let auth = secure();
        let console = auth
            .authenticate(&Credentials {
                authorization: Some(&token("console-token")),
                on_behalf_of: Some("alice@example.com"),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(console.actor().as_str(), "console");
        assert_eq!(
            console.on_behalf_of().unwrap().as_str(),
            "alice@example.com"
        );
        let refused = auth
            .authenticate(&Credentials {
                authorization: Some(&token("web-token")),
                on_behalf_of: Some("alice@example.com"),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            matches!(refused, AuthError::PermissionDenied(_)),
            "{refused}"
        );
    }

    #[test]
    fn a_replaced_policy_revokes_a_token() {
        let auth = secure();
        let credentials = Credentials {
            authorization: Some("bearer web-token"),
            ..Default::default()
        };
        auth.authenticate(&credentials).unwrap();
        auth.replace(Policy::default());
        assert!(matches!(
            auth.authenticate(&credentials).unwrap_err(),
            AuthError::Unauthenticated(_)
        ));
    }
}
