//! `--tls`: the same run over TLS with client certificates, to measure what
//! security costs: a throwaway PKI (cassette-pki) and a policy making the
//! benchmark's principal an admin.

use anyhow::Context;
use cassette_auth::{Authenticator, Policy, TrustDomain};
use cassette_pki::Pki;
use cassette_rules::Security;
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

pub struct BenchTls {
    _dir: TempDir,
    pki: Pki,
}

impl BenchTls {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::init(
            &dir.path().join("pki"),
            TrustDomain::default().as_str(),
            &[],
        )?;
        Ok(Self { _dir: dir, pki })
    }

    fn read(path: std::path::PathBuf) -> anyhow::Result<Vec<u8>> {
        std::fs::read(&path).with_context(|| format!("read {}", path.display()))
    }

    /// The service's side: TLS, client certificates, `bench` an admin.
    pub fn security(&self) -> anyhow::Result<Security> {
        let policy = Policy::parse(
            "[[principal]]\nname = \"bench\"\nrole = \"admin\"\ninstances = [\"*\"]\n",
        )?;
        Ok(Security::tls(
            Self::read(self.pki.server_cert_path())?,
            Self::read(self.pki.server_key_path())?,
            Some(Self::read(self.pki.ca_cert_path())?),
            Authenticator::secure(TrustDomain::default(), policy, None),
        )?)
    }

    /// The benchmark's client: `spiffe://cassette.local/principal/bench`.
    pub fn client(&self) -> anyhow::Result<ClientTlsConfig> {
        let issued = self.pki.issue(
            &TrustDomain::default().principal_uri("bench"),
            "principal-bench",
        )?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(Self::read(self.pki.ca_cert_path())?))
            .identity(Identity::from_pem(issued.cert_pem, issued.key_pem)))
    }

    /// `--tls-ca`, `--tls-cert`, `--tls-key` for the enforcer of `instance`.
    pub fn enforcer_args(&self, instance: &str) -> anyhow::Result<Vec<String>> {
        let issued = self.pki.issue(
            &TrustDomain::default().enforcer_uri(instance),
            &format!("enforcer-{instance}"),
        )?;
        Ok([
            ("--tls-ca", self.pki.ca_cert_path()),
            ("--tls-cert", issued.cert_path),
            ("--tls-key", issued.key_path),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
        .collect())
    }
}
