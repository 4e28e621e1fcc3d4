//! A development PKI in a directory: a CA, a server certificate for the
//! rules service, and client certificates whose URI SAN carries a SPIFFE
//! identity. For development, tests and compose; production operators bring
//! their own PKI (the service only reads PEM files).
//!
//! ```text
//! DIR/ca.pem ca.key trust-domain server.pem server.key
//!      <stem>.pem <stem>.key   (one pair per issued client certificate)
//! ```
//!
//! This crate only makes certificates for the identities it is given; which
//! identities are valid is `cassette-auth`'s business.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already holds a CA (ca.pem): refusing to replace it")]
    Exists(String),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A CA on disk, able to issue certificates.
pub struct Pki {
    dir: PathBuf,
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and where they were written.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long a certificate is valid unless told otherwise: short enough that
/// a stolen key stops working, long enough to rotate comfortably.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long the CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const TRUST_DOMAIN: &str = "trust-domain";
const SERVER: &str = "server";
/// The replica identity the server certificate carries.
pub const REPLICA_NAME: &str = "rules";
const LOG_SIGNING_KEY: &str = "log-signing.key";
const LOG_TRUSTED_KEYS: &str = "log-trusted-keys.pem";

impl Pki {
    /// Makes a CA for `trust_domain` (valid for [`CA_VALIDITY`]) and a server
    /// certificate for localhost, 127.0.0.1, ::1 and `server_names` (DNS names
    /// or IP addresses), valid for [`DEFAULT_VALIDITY`].
    pub fn init(dir: &Path, trust_domain: &str, server_names: &[String]) -> Result<Self, PkiError> {
        Self::init_for(dir, trust_domain, server_names, DEFAULT_VALIDITY)
    }

    /// [`Pki::init`] with a server certificate valid for `valid_for`.
    pub fn init_for(
        dir: &Path,
        trust_domain: &str,
        server_names: &[String],
        valid_for: Duration,
    ) -> Result<Self, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if dir.join(CA_CERT).exists() {
            return Err(PkiError::Exists(dir.display().to_string()));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("cassette-firewall CA ({trust_domain})"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        valid(&mut params, CA_VALIDITY)?;
        let cert = params.self_signed(&key)?;
        write(&dir.join(CA_CERT), &cert.pem(), false)?;
        write(&dir.join(CA_KEY), &key.serialize_pem(), true)?;
        write(&dir.join(TRUST_DOMAIN), trust_domain, false)?;
        let pki = Self {
            dir: dir.to_owned(),
            trust_domain: trust_domain.to_owned(),
            issuer: Issuer::new(params, key),
        };
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        names.extend(server_names.iter().cloned());
        pki.issue_server(&names, valid_for)?;
        // The event log's signing key (Ed25519, PKCS#8) and the file of
        // public keys the service trusts, which starts with its own.
        let signing = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        write(&pki.log_signing_key_path(), &signing.serialize_pem(), true)?;
        write(
            &pki.log_trusted_keys_path(),
            &signing.public_key_pem(),
            false,
        )?;
        Ok(pki)
    }

    /// Opens a directory made by [`Pki::init`].
    pub fn open(dir: &Path) -> Result<Self, PkiError> {
        let cert = read(&dir.join(CA_CERT))?;
        let key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?)?;
        let trust_domain = read(&dir.join(TRUST_DOMAIN))?.trim().to_owned();
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain,
            issuer: Issuer::from_ca_cert_pem(&cert, key)?,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA bundle clients and the service trust.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT)
    }

    pub fn server_cert_path(&self) -> PathBuf {
        self.dir.join(format!("{SERVER}.pem"))
    }

    pub fn server_key_path(&self) -> PathBuf {
        self.dir.join(format!("{SERVER}.key"))
    }

    /// The key the rules service signs its event log with (`--log-signing-key`).
    pub fn log_signing_key_path(&self) -> PathBuf {
        self.dir.join(LOG_SIGNING_KEY)
    }

    /// The public keys whose log signatures the service trusts
    /// (`--log-trusted-keys`): the signing key's.
    pub fn log_trusted_keys_path(&self) -> PathBuf {
        self.dir.join(LOG_TRUSTED_KEYS)
    }

    pub fn server_cert_pem(&self) -> Result<String, PkiError> {
        read(&self.server_cert_path())
    }

    /// The service's certificate: `names` for its listeners, and the
    /// identity `spiffe://<domain>/replica/rules` with client authentication,
    /// which a replica presents when it follows another's shared values.
    fn issue_server(&self, names: &[String], valid_for: Duration) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "cassette-rules");
        let replica = format!("spiffe://{}/replica/{REPLICA_NAME}", self.trust_domain);
        params.subject_alt_names.push(SanType::URI(
            replica
                .try_into()
                .map_err(|_| PkiError::Invalid("the trust domain is not ASCII".into()))?,
        ));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        valid(&mut params, valid_for)?;
        self.sign(params, SERVER)
    }

    /// A cluster member's certificate (an etcd member: its client and peer
    /// listeners, and its connections to the other members): the DNS name
    /// `name` and localhost, for server and client authentication, written
    /// to `<name>.pem` and `<name>.key`.
    pub fn issue_peer(&self, name: &str, valid_for: Duration) -> Result<Issued, PkiError> {
        check_stem(name)?;
        let names = vec![
            name.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        valid(&mut params, valid_for)?;
        self.sign(params, name)
    }

    /// A client certificate whose one URI SAN is `uri` (a `spiffe://` identity),
    /// written to `<stem>.pem` and `<stem>.key`, valid for [`DEFAULT_VALIDITY`].
    pub fn issue(&self, uri: &str, stem: &str) -> Result<Issued, PkiError> {
        self.issue_for(uri, stem, DEFAULT_VALIDITY)
    }

    /// [`Pki::issue`], valid for `valid_for` from now.
    pub fn issue_for(
        &self,
        uri: &str,
        stem: &str,
        valid_for: Duration,
    ) -> Result<Issued, PkiError> {
        check_stem(stem)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, uri);
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| {
                PkiError::Invalid(format!("{uri:?} is not an ASCII URI"))
            })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        valid(&mut params, valid_for)?;
        self.sign(params, stem)
    }

    fn sign(&self, params: CertificateParams, stem: &str) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert_path: self.dir.join(format!("{stem}.pem")),
            key_path: self.dir.join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write(&issued.cert_path, &issued.cert_pem, false)?;
        write(&issued.key_path, &issued.key_pem, true)?;
        Ok(issued)
    }
}

/// Valid from a few minutes ago (clocks disagree a little) for `valid_for`.
fn valid(params: &mut CertificateParams, valid_for: Duration) -> Result<(), PkiError> {
    let period = time::Duration::try_from(valid_for)
        .ok()
        .filter(|p| p.is_positive())
        .ok_or_else(|| PkiError::Invalid(format!("a validity of {valid_for:?} is out of range")))?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now
        .checked_add(period)
        .ok_or_else(|| PkiError::Invalid(format!("a validity of {valid_for:?} is out of range")))?;
    Ok(())
}

/// The DER bytes of the first certificate in a PEM text.
pub fn first_certificate_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    Ok(parsed.contents)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A file name stem for issued files: plain characters, not the CA's or the server's.
fn check_stem(stem: &str) -> Result<(), PkiError> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if stem.is_empty() || !stem.chars().all(safe) || stem == SERVER || stem == "ca" {
        return Err(PkiError::Invalid(format!(
            "{stem:?} cannot name a certificate file"
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Writes a file; keys are readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's keys are the service's formats and OpenSSL's: the signing
    /// key loads, its public key is the one trusted, and openssl prints the
    /// same public key from it (where openssl is installed).
    #[test]
    fn init_writes_a_log_signing_key_the_service_and_openssl_read() {
        use cassette_eventlog::{SigningKey, TrustedKeys};
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), "cassette.local", &[]).unwrap();
        let key = SigningKey::load(&pki.log_signing_key_path()).unwrap();
        let trusted = TrustedKeys::load(&pki.log_trusted_keys_path()).unwrap();
        assert!(trusted.trusts(&key));
        let mode = std::fs::metadata(pki.log_signing_key_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the signing key is private");
        let openssl = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(pki.log_signing_key_path())
            .output();
        match openssl {
            Ok(out) if out.status.success() => assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                key.public_key_pem(),
                "openssl reads the key and derives the same public key"
            ),
            _ => eprintln!("skipped the openssl check: no openssl"),
        }
    }

    #[test]
    fn init_then_open_issues_client_certificates_from_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), "cassette.local", &["rules".into()]).unwrap();
        assert!(matches!(
            Pki::init(dir.path(), "cassette.local", &[]),
            Err(PkiError::Exists(_))
        ));
        let reopened = Pki::open(dir.path()).unwrap();
        assert_eq!(reopened.trust_domain(), "cassette.local");
        let issued = reopened
            .issue("spiffe://cassette.local/enforcer/web-1", "enforcer-web-1")
            .unwrap();
        assert!(issued.cert_path.exists());
        let der = first_certificate_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = first_certificate_der(&read(&pki.ca_cert_path()).unwrap()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca.subject());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issued.key_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
        assert!(pki.issue("spiffe://x/y", "../escape").is_err());
    }

    #[test]
    fn certificates_end_ninety_days_from_now_unless_told_and_the_ca_in_ten_years() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::init(dir.path(), "cassette.local", &[]).unwrap();
        let lifetime = |pem: &str| {
            let der = first_certificate_der(pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            let validity = cert.validity();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert!(validity.not_before.timestamp() <= now, "valid now");
            (validity.not_after.timestamp() - now) / (24 * 3600)
        };
        // Whole days left, give or take the second it took to issue.
        let about = |got: i64, want: i64| assert!(got == want || got == want - 1, "{got} days");
        let client = pki.issue("spiffe://cassette.local/principal/alice", "principal-alice");
        about(lifetime(&client.unwrap().cert_pem), 90);
        let week = Duration::from_secs(7 * 24 * 3600);
        about(lifetime(&client_pem(&pki, "b", week)), 7);
        about(lifetime(&pki.server_cert_pem().unwrap()), 90);
        about(lifetime(&read(&pki.ca_cert_path()).unwrap()), 3650);
        assert!(pki
            .issue_for("spiffe://cassette.local/principal/c", "c", Duration::ZERO)
            .is_err());
    }

    fn client_pem(pki: &Pki, stem: &str, valid_for: Duration) -> String {
        pki.issue_for(
            &format!("spiffe://cassette.local/principal/{stem}"),
            stem,
            valid_for,
        )
        .unwrap()
        .cert_pem
    }
}
