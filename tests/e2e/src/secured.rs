//! A secured rules service for tests: a development PKI in a temporary
//! directory (rcgen, the same code as `cassette-rules pki`), a policy file,
//! and TLS client configurations for each identity.

use std::path::PathBuf;

use cassette_auth::{Authenticator, Policy, TrustDomain};
use cassette_pki::Pki;
use cassette_rules::Security;
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct Secured {
    /// Holds the PKI and the policy file.
    pub dir: TempDir,
    pub pki: Pki,
    pub policy: PathBuf,
}

impl Secured {
    /// A new CA for `cassette.local`, and `policy` as the policy file.
    pub fn new(policy: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::init(&dir.path().join("pki"), "cassette.local", &[]).expect("pki init");
        let secured = Self {
            policy: dir.path().join("policy.toml"),
            dir,
            pki,
        };
        secured.write_policy(policy);
        secured
    }

    pub fn write_policy(&self, policy: &str) {
        std::fs::write(&self.policy, policy).expect("write policy");
    }

    fn domain() -> TrustDomain {
        TrustDomain::default()
    }

    /// The service's side, as `RulesService::with_security` takes it.
    pub fn security(&self) -> Security {
        let read = |p: PathBuf| std::fs::read(p).expect("read pem");
        let policy = Policy::load(&self.policy).expect("policy");
        Security::tls(
            read(self.pki.server_cert_path()),
            read(self.pki.server_key_path()),
            Some(read(self.pki.ca_cert_path())),
            Authenticator::secure(Self::domain(), policy, Some(self.policy.clone())),
        )
        .expect("the development PKI's TLS")
    }

    /// The log's signing, from the keys `pki init` wrote.
    pub fn signing(&self) -> cassette_eventlog::Signing {
        let key = cassette_eventlog::SigningKey::load(&self.pki.log_signing_key_path())
            .expect("the log signing key");
        let trusted = cassette_eventlog::TrustedKeys::load(&self.pki.log_trusted_keys_path())
            .expect("the trusted keys");
        cassette_eventlog::Signing::new(key, trusted).expect("a key it trusts")
    }

    /// The same, as the binary's flags.
    pub fn server_args(&self) -> Vec<String> {
        [
            ("--tls-cert", self.pki.server_cert_path()),
            ("--tls-key", self.pki.server_key_path()),
            ("--client-ca", self.pki.ca_cert_path()),
            ("--policy", self.policy.clone()),
            ("--log-signing-key", self.pki.log_signing_key_path()),
            ("--log-trusted-keys", self.pki.log_trusted_keys_path()),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect()
    }

    /// TLS that checks the server and presents no client certificate.
    pub fn no_identity(&self) -> ClientTlsConfig {
        let ca = std::fs::read(self.pki.ca_cert_path()).expect("read ca");
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca))
    }

    /// TLS presenting `spiffe://cassette.local/principal/<name>`.
    pub fn principal(&self, name: &str) -> ClientTlsConfig {
        self.identity(
            &Self::domain().principal_uri(name),
            &format!("principal-{name}"),
        )
    }

    /// TLS presenting `spiffe://cassette.local/enforcer/<instance>`.
    pub fn enforcer(&self, instance: &str) -> ClientTlsConfig {
        self.identity(
            &Self::domain().enforcer_uri(instance),
            &format!("enforcer-{instance}"),
        )
    }

    /// Paths of the enforcer certificate and key for `instance` (issued if new).
    pub fn enforcer_files(&self, instance: &str) -> (PathBuf, PathBuf) {
        let issued = self
            .pki
            .issue(
                &Self::domain().enforcer_uri(instance),
                &format!("enforcer-{instance}"),
            )
            .expect("issue enforcer certificate");
        (issued.cert_path, issued.key_path)
    }

    /// TLS presenting a certificate with any URI SAN, issued by this CA.
    pub fn identity(&self, uri: &str, stem: &str) -> ClientTlsConfig {
        let issued = self.pki.issue(uri, stem).expect("issue client certificate");
        self.no_identity()
            .identity(Identity::from_pem(issued.cert_pem, issued.key_pem))
    }
}

/// A client certificate from a CA the service does not trust.
pub fn foreign_identity(server_ca: &ClientTlsConfig, uri: &str) -> (ClientTlsConfig, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let other = Pki::init(dir.path(), "cassette.local", &[]).expect("foreign pki");
    let issued = other.issue(uri, "stranger").expect("issue");
    (
        server_ca
            .clone()
            .identity(Identity::from_pem(issued.cert_pem, issued.key_pem)),
        dir,
    )
}

/// `sha256sum` of a bearer token, as the policy stores it.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
