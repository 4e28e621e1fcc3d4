//! Credentials in, a [`Caller`] out.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use cassette_model::{ActorId, ValidationError};
use sha2::{Digest, Sha256};

use crate::caller::{AuthError, Caller, Proof};
use crate::identity::{Identity, PrincipalName, TrustDomain};
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
    /// Counts policy replacements: what long-lived streams watch to check
    /// their caller again.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Authenticator {
    pub fn development() -> Self {
        Self {
            mode: Mode::Development,
            policy: RwLock::default(),
            policy_path: None,
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Secure mode with `policy`, reloadable from `policy_path` if given.
    pub fn secure(trust_domain: TrustDomain, policy: Policy, policy_path: Option<PathBuf>) -> Self {
        Self {
            mode: Mode::Secure { trust_domain },
            policy: RwLock::new(Arc::new(policy)),
            policy_path,
            generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Wakes after each policy replacement: a stream checks its caller
    /// again with [`Authenticator::recheck`].
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
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
        self.generation.send_modify(|g| *g += 1);
    }

    /// `caller` as the current policy sees it, from the proof it presented
    /// when it was authenticated: refused if its certificate identity was
    /// revoked or its token removed since; a principal's grant as it is now.
    pub fn recheck(&self, caller: &Caller) -> Result<Caller, AuthError> {
        if self.is_development() {
            return Ok(caller.clone());
        }
        let fresh = match &caller.proof {
            Proof::None => return Ok(caller.clone()),
            Proof::Certificate { spiffe_id } => {
                let policy = self.policy();
                if policy.is_revoked(spiffe_id) {
                    return Err(revoked(spiffe_id));
                }
                match caller.principal_name() {
                    Some(name) => self.by_name(&policy, name, spiffe_id.clone()),
                    None => caller.clone(),
                }
            }
            Proof::Token { digest } => self.by_token(&self.policy(), digest)?,
        };
        match caller.on_behalf_of() {
            Some(user) => fresh.acting_for(user.clone()),
            None => Ok(fresh),
        }
    }

    fn by_name(&self, policy: &Policy, name: &PrincipalName, spiffe_id: String) -> Caller {
        let proof = Proof::Certificate { spiffe_id };
        match policy.grant(name) {
            Some(grant) => Caller::principal(Arc::new(grant.clone()), proof),
            None => Caller::stranger(name.clone(), proof),
        }
    }

    fn by_token(&self, policy: &Policy, digest: &[u8; 32]) -> Result<Caller, AuthError> {
        let grant = policy
            .grant_for_token_digest(digest)
            .ok_or_else(|| AuthError::Unauthenticated("unknown bearer token".into()))?;
        if let Some(expires) = grant.token_expires {
            if expires <= std::time::SystemTime::now() {
                let at = time::OffsetDateTime::from(expires)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                return Err(AuthError::Unauthenticated(format!(
                    "principal {}'s bearer token expired at {at}",
                    grant.name
                )));
            }
        }
        let proof = Proof::Token { digest: *digest };
        Ok(Caller::principal(Arc::new(grant.clone()), proof))
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
            let identity = Identity::from_certificate(der, domain)?;
            let spiffe_id = match &identity {
                Identity::Enforcer(instance) => domain.enforcer_uri(instance.as_str()),
                Identity::Principal(name) => domain.principal_uri(name.as_str()),
                Identity::Replica(name) => domain.replica_uri(name.as_str()),
            };
            if policy.is_revoked(&spiffe_id) {
                return Err(revoked(&spiffe_id));
            }
            return Ok(match identity {
                Identity::Enforcer(instance) => Caller::enforcer(instance, domain),
                Identity::Principal(name) => self.by_name(&policy, &name, spiffe_id),
                Identity::Replica(name) => Caller::replica(&name, domain),
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
        self.by_token(&policy, &digest)
    }
}

fn revoked(spiffe_id: &str) -> AuthError {
    AuthError::Unauthenticated(format!(
        "the identity {spiffe_id} is revoked by the policy ([revoked] spiffe_ids)"
    ))
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

    /// A caller authenticated under one policy, checked again under the
    /// next: a narrowed grant, a removed token and a revoked certificate
    /// identity all show, and each replacement wakes the watchers.
    #[test]
    fn a_new_policy_applies_to_callers_authenticated_before_it() {
        let auth = secure();
        let mut changes = auth.changes();
        let web = auth
            .authenticate(&Credentials {
                authorization: Some(&token("web-token")),
                ..Default::default()
            })
            .unwrap();
        let narrowed = format!(
            "[[principal]]\nname = \"web-team\"\nrole = \"viewer\"\ninstances = [\"web-2\"]\ntoken_sha256 = \"{}\"\n",
            hex(b"web-token")
        );
        auth.replace(Policy::parse(&narrowed).unwrap());
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        let again = auth.recheck(&web).unwrap();
        assert!(again
            .authorize(Action::Read, "GetFirewall", "web-2")
            .is_ok());
        assert!(again.authorize(Action::Mutate, "AddRule", "web-2").is_err());
        assert!(again
            .authorize(Action::Read, "GetFirewall", "web-1")
            .is_err());
        auth.replace(Policy::default());
        assert!(changes.has_changed().unwrap());
        assert!(matches!(
            auth.recheck(&web),
            Err(AuthError::Unauthenticated(_))
        ));

        // Certificates: an enforcer identity, then revoked.
        let dir = tempfile::tempdir().unwrap();
        let pki = cassette_pki::Pki::init(dir.path(), "cassette.local", &[]).unwrap();
        let uri = TrustDomain::default().enforcer_uri("web-1");
        let issued = pki.issue(&uri, "enforcer-web-1").unwrap();
        let der = cassette_pki::first_certificate_der(&issued.cert_pem).unwrap();
        let credentials = Credentials {
            certificate: Some(&der),
            ..Default::default()
        };
        let enforcer = auth.authenticate(&credentials).unwrap();
        enforcer.authorize_sync("web-1").unwrap();
        let revoked = format!("[revoked]\nspiffe_ids = [\"{uri}\"]\n");
        auth.replace(Policy::parse(&revoked).unwrap());
        for refused in [auth.recheck(&enforcer), auth.authenticate(&credentials)] {
            let error = refused.unwrap_err();
            assert!(
                matches!(&error, AuthError::Unauthenticated(m) if m.contains(&uri)),
                "{error}"
            );
        }
    }

    /// The server certificate `pki init` makes is a replica identity: it may
    /// follow another replica's shared values and nothing else; nobody else
    /// may follow them; revoked, it is refused.
    #[test]
    fn a_replica_identity_may_only_follow_replicas() {
        let auth = secure();
        let dir = tempfile::tempdir().unwrap();
        let pki = cassette_pki::Pki::init(dir.path(), "cassette.local", &[]).unwrap();
        let der = cassette_pki::first_certificate_der(&pki.server_cert_pem().unwrap()).unwrap();
        let credentials = Credentials {
            certificate: Some(&der),
            ..Default::default()
        };
        let replica = auth.authenticate(&credentials).unwrap();
        assert_eq!(
            replica.actor().as_str(),
            "spiffe://cassette.local/replica/rules"
        );
        replica.authorize_replica("FollowShared").unwrap();
        for refused in [
            replica.authorize(Action::Read, "GetFirewall", "web-1"),
            replica.authorize_any(Action::Audit, "ListEvents"),
            replica.authorize_sync("web-1"),
        ] {
            assert!(matches!(refused, Err(AuthError::PermissionDenied(_))));
        }
        let enforcer_der = cassette_pki::first_certificate_der(
            &pki.issue(&TrustDomain::default().enforcer_uri("web-1"), "e")
                .unwrap()
                .cert_pem,
        )
        .unwrap();
        let enforcer = auth
            .authenticate(&Credentials {
                certificate: Some(&enforcer_der),
                ..Default::default()
            })
            .unwrap();
        let admin = auth
            .authenticate(&Credentials {
                authorization: Some(&token("console-token")),
                ..Default::default()
            })
            .unwrap();
        for caller in [enforcer, admin] {
            let error = caller.authorize_replica("FollowShared").unwrap_err();
            assert!(
                error.to_string().contains("only a replica identity"),
                "{error}"
            );
        }
        auth.replace(
            Policy::parse("[revoked]\nspiffe_ids = [\"spiffe://cassette.local/replica/rules\"]\n")
                .unwrap(),
        );
        assert!(auth.recheck(&replica).is_err());
        assert!(auth.authenticate(&credentials).is_err());
    }

    #[test]
    fn revoked_ids_must_be_spiffe_ids() {
        for bad in [
            "web-1",
            "spiffe://cassette.local/enforcer",
            "https://x/enforcer/web-1",
        ] {
            let text = format!("[revoked]\nspiffe_ids = [\"{bad}\"]\n");
            let error = Policy::parse(&text).unwrap_err().to_string();
            assert!(
                error.contains("revoked.spiffe_ids[0]") && error.contains(bad),
                "{error}"
            );
        }
    }

    #[test]
    fn a_token_works_until_it_expires() {
        let policy = |expires: &str| {
            format!(
                "[[principal]]\nname = \"bot\"\nrole = \"viewer\"\ninstances = [\"*\"]\ntoken_sha256 = \"{}\"\nexpires = \"{expires}\"\n",
                hex(b"bot-token")
            )
        };
        let credentials = Credentials {
            authorization: Some("Bearer bot-token"),
            ..Default::default()
        };
        let auth = Authenticator::secure(
            TrustDomain::default(),
            Policy::parse(&policy("2999-01-01T00:00:00Z")).unwrap(),
            None,
        );
        let bot = auth.authenticate(&credentials).unwrap();
        assert!(bot.expires().is_some());
        auth.replace(Policy::parse(&policy("2020-01-01T00:00:00+01:00")).unwrap());
        for refused in [auth.authenticate(&credentials), auth.recheck(&bot)] {
            let error = refused.unwrap_err().to_string();
            assert!(error.contains("expired at 2019-12-31T23:00:00Z"), "{error}");
        }
        let bad = Policy::parse(&policy("next tuesday"))
            .unwrap_err()
            .to_string();
        assert!(bad.contains("expires must be an RFC 3339 time"), "{bad}");
        let without_token = "[[principal]]\nname = \"x\"\nrole = \"viewer\"\ninstances = [\"*\"]\nexpires = \"2999-01-01T00:00:00Z\"\n";
        let bad = Policy::parse(without_token).unwrap_err().to_string();
        assert!(bad.contains("give token_sha256 too"), "{bad}");
    }
}
