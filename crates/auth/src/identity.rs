//! SPIFFE-style identities in client certificates' URI SANs:
//! `spiffe://<trust-domain>/enforcer/<instance_id>` for an instance's enforcer,
//! `spiffe://<trust-domain>/principal/<name>` for an API caller,
//! `spiffe://<trust-domain>/replica/<name>` for a rules replica following
//! another's shared values (its server certificate names it).

use cassette_model::InstanceId;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::AuthError;

/// The trust domain every identity must belong to (`cassette.local` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomain(String);

impl Default for TrustDomain {
    fn default() -> Self {
        Self("cassette.local".to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a trust domain: 1-255 characters of a-z, 0-9, '.', '-' and '_'")]
pub struct InvalidTrustDomain(String);

impl TrustDomain {
    pub fn parse(value: &str) -> Result<Self, InvalidTrustDomain> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-_".contains(c);
        if value.is_empty() || value.len() > 255 || !value.chars().all(allowed) {
            return Err(InvalidTrustDomain(value.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<domain>/enforcer/<instance>`.
    pub fn enforcer_uri(&self, instance: &str) -> String {
        format!("spiffe://{}/enforcer/{instance}", self.0)
    }

    /// `spiffe://<domain>/principal/<name>`.
    pub fn principal_uri(&self, name: &str) -> String {
        format!("spiffe://{}/principal/{name}", self.0)
    }

    /// `spiffe://<domain>/replica/<name>`.
    pub fn replica_uri(&self, name: &str) -> String {
        format!("spiffe://{}/replica/{name}", self.0)
    }
}

impl std::str::FromStr for TrustDomain {
    type Err = InvalidTrustDomain;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An API caller's name: 1-128 characters of A-Z, a-z, 0-9, '.', '-' and '_'
/// (a SPIFFE path segment, and what the event log records as the actor).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrincipalName(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a principal name: 1-128 characters of A-Z, a-z, 0-9, '.', '-' and '_'")]
pub struct InvalidPrincipalName(pub String);

impl PrincipalName {
    pub const MAX_LEN: usize = 128;

    pub fn parse(value: &str) -> Result<Self, InvalidPrincipalName> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
        if value.is_empty() || value.len() > Self::MAX_LEN || !value.chars().all(allowed) {
            return Err(InvalidPrincipalName(value.to_owned()));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for PrincipalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who a verified client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Enforcer(InstanceId),
    Principal(PrincipalName),
    /// A rules replica (named like a principal).
    Replica(PrincipalName),
}

/// How long before a certificate ends the service and the enforcer warn
/// about it (renew it, then SIGHUP).
pub const CERTIFICATE_WARNING: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// A certificate's subject and the end of its validity, from its DER: what
/// the service and the enforcer warn about before it ends.
pub fn certificate_end(der: &[u8]) -> Result<(String, std::time::SystemTime), String> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let seconds = certificate.validity().not_after.timestamp();
    let end =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    Ok((certificate.subject().to_string(), end))
}

/// [`certificate_end`] of the first certificate in a PEM file.
pub fn certificate_end_pem(pem: &[u8]) -> Result<(String, std::time::SystemTime), String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    certificate_end(&block.contents)
}

impl Identity {
    /// Reads the one `spiffe://` URI SAN of a DER certificate whose chain TLS
    /// has already verified, and checks its trust domain and shape.
    pub fn from_certificate(der: &[u8], domain: &TrustDomain) -> Result<Self, AuthError> {
        let unauthenticated = |why: String| AuthError::Unauthenticated(why);
        let (_, certificate) = X509Certificate::from_der(der)
            .map_err(|e| unauthenticated(format!("client certificate does not parse: {e}")))?;
        let names = certificate.subject_alternative_name().map_err(|e| {
            unauthenticated(format!("client certificate's SAN does not parse: {e}"))
        })?;
        let uris: Vec<&str> = names
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [uri] => Self::from_uri(uri, domain),
            [] => Err(unauthenticated(
                "client certificate has no spiffe:// URI SAN".to_owned(),
            )),
            _ => Err(unauthenticated(
                "client certificate has more than one spiffe:// URI SAN".to_owned(),
            )),
        }
    }

    /// Parses `spiffe://<domain>/enforcer/<instance>`, `.../principal/<name>`
    /// or `.../replica/<name>`.
    pub fn from_uri(uri: &str, domain: &TrustDomain) -> Result<Self, AuthError> {
        let unauthenticated = |why: String| AuthError::Unauthenticated(why);
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| unauthenticated(format!("{uri:?} is not a spiffe:// URI")))?;
        let (uri_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if uri_domain != domain.as_str() {
            return Err(unauthenticated(format!(
                "identity {uri} is in trust domain {uri_domain:?}, not {:?}",
                domain.as_str()
            )));
        }
        let shape = || {
            unauthenticated(format!(
                "identity {uri} is none of spiffe://{domain}/enforcer/<instance_id>, \
                 spiffe://{domain}/principal/<name> and spiffe://{domain}/replica/<name>"
            ))
        };
        match path.split_once('/') {
            Some(("enforcer", instance)) => InstanceId::parse(instance)
                .map(Identity::Enforcer)
                .map_err(|_| shape()),
            Some(("principal", name)) => PrincipalName::parse(name)
                .map(Identity::Principal)
                .map_err(|_| shape()),
            Some(("replica", name)) => PrincipalName::parse(name)
                .map(Identity::Replica)
                .map_err(|_| shape()),
            _ => Err(shape()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_an_enforcer_a_principal_or_a_replica_of_the_trust_domain() {
        let domain = TrustDomain::default();
        assert_eq!(
            Identity::from_uri("spiffe://cassette.local/replica/rules-a", &domain).unwrap(),
            Identity::Replica(PrincipalName::parse("rules-a").unwrap())
        );
        assert_eq!(
            Identity::from_uri("spiffe://cassette.local/enforcer/web-1", &domain).unwrap(),
            Identity::Enforcer(InstanceId::parse("web-1").unwrap())
        );
        assert_eq!(
            Identity::from_uri("spiffe://cassette.local/principal/ops-bot", &domain).unwrap(),
            Identity::Principal(PrincipalName::parse("ops-bot").unwrap())
        );
        for bad in [
            "spiffe://other.domain/principal/ops-bot",
            "spiffe://cassette.local/enforcer/Web_1",
            "spiffe://cassette.local/enforcer/web-1/extra",
            "spiffe://cassette.local/replica/a/b",
            "spiffe://cassette.local/replica/",
            "spiffe://cassette.local/admin/root",
            "spiffe://cassette.local",
            "https://cassette.local/principal/x",
        ] {
            let error = Identity::from_uri(bad, &domain).unwrap_err();
            assert!(
                matches!(error, AuthError::Unauthenticated(_)),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_certificate_carries_its_identity_in_the_uri_san() {
        let dir = tempfile::tempdir().unwrap();
        let pki = cassette_pki::Pki::init(dir.path(), "cassette.local", &[]).unwrap();
        let uri = TrustDomain::default().enforcer_uri("db-1");
        let issued = pki.issue(&uri, "enforcer-db-1").unwrap();
        let der = cassette_pki::first_certificate_der(&issued.cert_pem).unwrap();
        assert_eq!(
            Identity::from_certificate(&der, &TrustDomain::default()).unwrap(),
            Identity::Enforcer(InstanceId::parse("db-1").unwrap())
        );
        let other = TrustDomain::parse("example.org").unwrap();
        assert!(Identity::from_certificate(&der, &other).is_err());
        let server = cassette_pki::first_certificate_der(&pki.server_cert_pem().unwrap()).unwrap();
        // The server certificate is the replicas' identity.
        assert_eq!(
            Identity::from_certificate(&server, &TrustDomain::default()).unwrap(),
            Identity::Replica(PrincipalName::parse(cassette_pki::REPLICA_NAME).unwrap())
        );
    }
}
