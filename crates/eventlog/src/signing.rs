//! Signed heads: what makes the log unforgeable, where the hash chain alone
//! only makes it tamper-evident. Whoever can write the store can write a
//! correctly linked record; nobody without the signing key can sign it.
//!
//! The writer signs the head each append leaves (its last record's sequence
//! and hash) with an Ed25519 key and stores the signature in the same atomic
//! write as the records. The chain makes a signature cover its record and
//! every record before it, so each record is covered when its append
//! returns, and a reader takes a record only once a signature by a trusted
//! key covers it (see `chain::Verifier`). Every append's head stays signed,
//! so after a key rotation old records keep verifying with the key that
//! signed them. Keys are files in the formats OpenSSL writes:
//! `openssl genpkey -algorithm ed25519` (PKCS#8 PEM) for the signing key,
//! `openssl pkey -pubout` (SubjectPublicKeyInfo PEM) for each trusted key.

use std::path::Path;

use cassette_proto::pb;
use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use crate::{Hash, Head};

/// How every reason about signatures starts.
pub const REASON: &str = "signature:";

/// What a signature signs, before the sequence and the hash: the signature
/// means nothing for any other use of the key.
const CONTEXT: &[u8; 30] = b"cassette-firewall signed head\n";

/// What a projection snapshot's seal signs, before the anchor and the
/// snapshot's digest.
const SNAPSHOT_CONTEXT: &[u8] = b"cassette-firewall projection snapshot\n";

/// DER before the 32-byte key of an Ed25519 SubjectPublicKeyInfo (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER before the 32-byte seed of an Ed25519 PKCS#8 v1 private key, as
/// OpenSSL writes it (RFC 8410).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A signature over a head, as stored and as VerifyLog returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub head: Head,
    /// Which key signed (see [`key_id`]).
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl SignedHead {
    /// The stored bytes: `cassette.firewall.v1.SignedHead`.
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    pub fn to_pb(&self) -> pb::SignedHead {
        pb::SignedHead {
            sequence: self.head.sequence,
            hash: self.head.hash.to_vec(),
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }

    /// Decodes the signature stored for record `sequence`; what is wrong
    /// with it otherwise (a reason, as verification reports it).
    pub fn decode(sequence: u64, bytes: &[u8]) -> Result<Self, String> {
        let stored = pb::SignedHead::decode(bytes)
            .map_err(|e| format!("signature: the stored signature is undecodable: {e}"))?;
        if stored.sequence != sequence {
            return Err(format!(
                "signature: the signature stored for record {sequence} signs record {}",
                stored.sequence
            ));
        }
        let hash = Hash::try_from(stored.hash.as_slice()).map_err(|_| {
            format!(
                "signature: the signed hash is {} bytes, not 32",
                stored.hash.len()
            )
        })?;
        Ok(Self {
            head: Head { sequence, hash },
            key_id: stored.key_id,
            signature: stored.signature,
        })
    }
}

/// The bytes a head's signature signs.
fn message(head: Head) -> [u8; 70] {
    let mut message = [0; 70];
    message[..30].copy_from_slice(CONTEXT);
    message[30..38].copy_from_slice(&head.sequence.to_be_bytes());
    message[38..].copy_from_slice(&head.hash);
    message
}

/// The bytes a projection snapshot's seal signs: the context, the anchor
/// (sequence big-endian, hash) and the SHA-256 of the snapshot's payload.
fn snapshot_message(anchor: Head, digest: &Hash) -> Vec<u8> {
    let mut message = SNAPSHOT_CONTEXT.to_vec();
    message.extend_from_slice(&anchor.sequence.to_be_bytes());
    message.extend_from_slice(&anchor.hash);
    message.extend_from_slice(digest);
    message
}

/// A key's id: the first 16 hex digits of the SHA-256 of its
/// SubjectPublicKeyInfo DER.
pub fn key_id(public_key: &[u8; 32]) -> String {
    let mut spki = SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public_key);
    crate::hex(&Sha256::digest(&spki)[..8])
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The log's signing key: Ed25519.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: [u8; 32],
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// A PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let blocks =
            pem::parse_many(text).map_err(|e| KeyError::Format(format!("not PEM: {e}")))?;
        let [block] = blocks.as_slice() else {
            return Err(KeyError::Format(format!(
                "expected one PRIVATE KEY block, found {}",
                blocks.len()
            )));
        };
        if block.tag() != "PRIVATE KEY" {
            return Err(KeyError::Format(format!(
                "expected a PKCS#8 PRIVATE KEY (openssl genpkey -algorithm ed25519), found {}",
                block.tag()
            )));
        }
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(block.contents()).map_err(|e| {
            KeyError::Format(format!("not an Ed25519 private key ({e}): the log signs with Ed25519 (openssl genpkey -algorithm ed25519)"))
        })?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::Format("an Ed25519 public key is 32 bytes".to_owned()))?;
        Ok(Self {
            id: key_id(&public),
            pair,
            public,
        })
    }

    /// [`SigningKey::from_pem`] from a file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_pem(&read(path)?).map_err(|e| match e {
            KeyError::Format(m) => KeyError::Format(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// A new key, as PKCS#8 PEM in the form OpenSSL writes.
    pub fn generate_pem() -> Result<String, KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| KeyError::Format("no randomness for a new key".to_owned()))?;
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok(pem_text("PRIVATE KEY", der))
    }

    /// The public key as SubjectPublicKeyInfo PEM (`openssl pkey -pubout`),
    /// for the trusted keys file.
    pub fn public_key_pem(&self) -> String {
        public_key_pem(&self.public)
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Signs `head`.
    pub fn sign(&self, head: Head) -> SignedHead {
        SignedHead {
            head,
            key_id: self.id.clone(),
            signature: self.pair.sign(&message(head)).as_ref().to_vec(),
        }
    }

    /// Seals a projection snapshot anchored at `anchor` whose payload has
    /// SHA-256 `digest`.
    pub fn seal(&self, anchor: Head, digest: &Hash) -> pb::SnapshotSeal {
        pb::SnapshotSeal {
            key_id: self.id.clone(),
            signature: self
                .pair
                .sign(&snapshot_message(anchor, digest))
                .as_ref()
                .to_vec(),
        }
    }
}

fn public_key_pem(public: &[u8; 32]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    pem_text("PUBLIC KEY", der)
}

/// PEM with Unix line endings, as OpenSSL writes it.
fn pem_text(tag: &str, der: Vec<u8>) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der), config)
}

/// The public keys whose signatures the log accepts: several during a
/// rotation.
#[derive(Debug, Clone)]
pub struct TrustedKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl TrustedKeys {
    /// One or more SubjectPublicKeyInfo PEM Ed25519 public keys
    /// (`openssl pkey -pubout`), concatenated.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let blocks =
            pem::parse_many(text).map_err(|e| KeyError::Format(format!("not PEM: {e}")))?;
        let mut keys = Vec::with_capacity(blocks.len());
        for (n, block) in blocks.iter().enumerate() {
            let n = n + 1;
            if block.tag() != "PUBLIC KEY" {
                return Err(KeyError::Format(format!(
                    "block {n} is a {}, not a PUBLIC KEY (openssl pkey -pubout writes one)",
                    block.tag()
                )));
            }
            let der = block.contents();
            let public = der
                .strip_prefix(SPKI_PREFIX.as_slice())
                .and_then(|key| <[u8; 32]>::try_from(key).ok())
                .ok_or_else(|| {
                    KeyError::Format(format!(
                        "block {n} is not an Ed25519 public key: the log signs with Ed25519"
                    ))
                })?;
            keys.push((key_id(&public), public));
        }
        if keys.is_empty() {
            return Err(KeyError::Format(
                "no PUBLIC KEY block: give at least the signing key's public key".to_owned(),
            ));
        }
        Ok(Self { keys })
    }

    /// [`TrustedKeys::from_pem`] from a file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::from_pem(&read(path)?).map_err(|e| match e {
            KeyError::Format(m) => KeyError::Format(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// The ids of the trusted keys, in the file's order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Whether `key`'s signatures are accepted.
    pub fn trusts(&self, key: &SigningKey) -> bool {
        self.keys.iter().any(|(_, public)| *public == key.public)
    }

    /// Checks that `signed` is a trusted key's signature over `head`: the
    /// record it is stored with, as the chain walked it. The reason starts
    /// with "signature:" when it is not.
    pub fn check(&self, signed: &SignedHead, head: Head) -> Result<(), String> {
        if signed.head != head {
            return Err(format!(
                "signature: record {}'s signature signs {} (another record's, or this record before it changed)",
                head.sequence,
                if signed.head.sequence == head.sequence {
                    "another hash".to_owned()
                } else {
                    format!("record {}", signed.head.sequence)
                }
            ));
        }
        let Some((_, public)) = self.keys.iter().find(|(id, _)| *id == signed.key_id) else {
            return Err(format!(
                "signature: record {} is signed by key {:?}, which is not a trusted key",
                head.sequence, signed.key_id
            ));
        };
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&message(head), &signed.signature)
            .map_err(|_| {
                format!(
                    "signature: record {}'s signature by key {} does not verify",
                    head.sequence, signed.key_id
                )
            })
    }
}

impl TrustedKeys {
    /// Checks that `seal` is a trusted key's seal over a projection snapshot
    /// anchored at `anchor` whose payload has SHA-256 `digest`.
    pub fn check_seal(
        &self,
        seal: &pb::SnapshotSeal,
        anchor: Head,
        digest: &Hash,
    ) -> Result<(), String> {
        let Some((_, public)) = self.keys.iter().find(|(id, _)| *id == seal.key_id) else {
            return Err(format!(
                "sealed by key {:?}, which is not a trusted key",
                seal.key_id
            ));
        };
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&snapshot_message(anchor, digest), &seal.signature)
            .map_err(|_| format!("its seal by key {} does not verify", seal.key_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(sequence: u64, byte: u8) -> Head {
        Head {
            sequence,
            hash: [byte; 32],
        }
    }

    #[test]
    fn a_trusted_key_verifies_its_heads_and_nothing_else_does() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let other = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();
        let trusted = TrustedKeys::from_pem(&key.public_key_pem()).unwrap();
        assert!(trusted.trusts(&key) && !trusted.trusts(&other));
        assert_eq!(trusted.ids().collect::<Vec<_>>(), vec![key.key_id()]);

        let signed = key.sign(head(7, 1));
        trusted.check(&signed, head(7, 1)).unwrap();
        // Stored and read back.
        assert_eq!(SignedHead::decode(7, &signed.encode()).unwrap(), signed);
        assert!(SignedHead::decode(8, &signed.encode())
            .unwrap_err()
            .contains("signs record 7"));

        // Re-used for another record, or for this record changed.
        let reused = trusted.check(&signed, head(8, 1)).unwrap_err();
        assert!(
            reused.starts_with("signature:") && reused.contains("record 7"),
            "{reused}"
        );
        assert!(trusted.check(&signed, head(7, 2)).is_err());
        // Its head rewritten to match: the signature does not verify.
        let mut moved = signed.clone();
        moved.head = head(8, 1);
        let bad = trusted.check(&moved, head(8, 1)).unwrap_err();
        assert!(bad.contains("does not verify"), "{bad}");
        // Another key's signature, even under the trusted key's id.
        let foreign = other.sign(head(7, 1));
        assert!(trusted
            .check(&foreign, head(7, 1))
            .unwrap_err()
            .contains("not a trusted key"));
        let mut disguised = foreign;
        disguised.key_id = key.key_id().to_owned();
        assert!(trusted
            .check(&disguised, head(7, 1))
            .unwrap_err()
            .contains("does not verify"));

        // Rotation: both keys trusted, each verifies its own.
        let both =
            TrustedKeys::from_pem(&(key.public_key_pem() + &other.public_key_pem())).unwrap();
        both.check(&other.sign(head(9, 3)), head(9, 3)).unwrap();
        both.check(&key.sign(head(9, 3)), head(9, 3)).unwrap();
    }

    #[test]
    fn keys_in_other_formats_are_refused_by_name() {
        let key_pem = SigningKey::generate_pem().unwrap();
        let key = SigningKey::from_pem(&key_pem).unwrap();
        // The private key is not a public key, and the reverse.
        let e = TrustedKeys::from_pem(&key_pem).unwrap_err().to_string();
        assert!(e.contains("PRIVATE KEY, not a PUBLIC KEY"), "{e}");
        let e = SigningKey::from_pem(&key.public_key_pem())
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a PKCS#8 PRIVATE KEY"), "{e}");
        assert!(TrustedKeys::from_pem("")
            .unwrap_err()
            .to_string()
            .contains("no PUBLIC KEY"));
        // An EC P-256 public key.
        let p256 = pem_text(
            "PUBLIC KEY",
            vec![0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48],
        );
        let e = TrustedKeys::from_pem(&p256).unwrap_err().to_string();
        assert!(e.contains("not an Ed25519 public key"), "{e}");
    }

    /// The formats are OpenSSL's: a key it generated signs, and the public
    /// key and id it prints are ours. Skipped where openssl is missing.
    #[test]
    fn openssl_keys_and_ours_are_the_same_files() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("signing.key");
        let openssl = |args: &[&str]| {
            std::process::Command::new("openssl")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
        };
        if openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            private.to_str().unwrap(),
        ])
        .is_none()
        {
            eprintln!("skipped: no openssl with ed25519");
            return;
        }
        let key = SigningKey::load(&private).unwrap();
        let public = openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout"]).unwrap();
        let public = String::from_utf8(public.stdout).unwrap();
        let trusted = TrustedKeys::from_pem(&public).unwrap();
        assert!(trusted.trusts(&key));
        assert_eq!(public, key.public_key_pem());
        // The key id, as the proto documents computing it.
        let public_path = dir.path().join("public.pem");
        std::fs::write(&public_path, &public).unwrap();
        let id = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl pkey -pubin -in {} -outform DER | sha256sum | cut -c1-16",
                public_path.display()
            ))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(id.stdout).unwrap().trim(), key.key_id());
        // And openssl reads the keys we generate.
        let ours = dir.path().join("ours.key");
        std::fs::write(&ours, SigningKey::generate_pem().unwrap()).unwrap();
        let printed = openssl(&["pkey", "-in", ours.to_str().unwrap(), "-pubout"]).unwrap();
        let ours = SigningKey::load(&ours).unwrap();
        assert_eq!(
            String::from_utf8(printed.stdout).unwrap(),
            ours.public_key_pem()
        );
    }
}
