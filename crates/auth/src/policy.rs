//! The policy file: which principal has which role over which instances.
//!
//! ```toml
//! [[principal]]
//! name = "web-team"
//! role = "editor"            # viewer | editor | auditor | admin
//! instances = ["web-*"]      # globs over instance ids
//! delegate = false           # may send x-on-behalf-of
//! token_sha256 = "<hex>"     # optional bearer token, stored only as its SHA-256
//! expires = "2027-01-31T00:00:00Z"  # optional: the token works until then (RFC 3339)
//!
//! [revoked]
//! # client certificate identities refused even though their certificate
//! # chains to the CA (a stolen enforcer key, a decommissioned instance)
//! spiffe_ids = ["spiffe://cassette.local/enforcer/web-9"]
//! ```
//!
//! A file that does not parse or validate is refused whole, with an error
//! naming the entry and the field.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::glob::InstanceGlob;
use crate::identity::PrincipalName;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// GetFirewall, ListFirewalls, WaitForSync.
    Viewer,
    /// A viewer that may also change firewalls.
    Editor,
    /// A viewer that may also read the audit log.
    Auditor,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

/// One principal's entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub name: PrincipalName,
    pub role: Role,
    pub instances: Vec<InstanceGlob>,
    /// May name the end user it acts for (`x-on-behalf-of`).
    pub delegate: bool,
    pub token_sha256: Option<[u8; 32]>,
    /// When the bearer token stops working (calls and open streams alike).
    pub token_expires: Option<std::time::SystemTime>,
}

impl Grant {
    /// Whether `instance` is in this principal's scope.
    pub fn covers(&self, instance: &str) -> bool {
        self.instances.iter().any(|g| g.matches(instance))
    }

    /// The scope as the policy wrote it, for error messages.
    pub fn scope(&self) -> String {
        self.instances
            .iter()
            .map(InstanceGlob::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every principal's grant, and the revoked identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    grants: Vec<Grant>,
    revoked: HashSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("policy file is not valid TOML for a policy: {0}")]
    Syntax(String),
    #[error("policy principal[{index}] ({name:?}): {message}")]
    Invalid {
        index: usize,
        name: String,
        message: String,
    },
    #[error("policy revoked.spiffe_ids[{index}] ({id:?}): {message}")]
    Revoked {
        index: usize,
        id: String,
        message: &'static str,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
    #[serde(default)]
    revoked: Revoked,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Revoked {
    #[serde(default)]
    spiffe_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    instances: Vec<String>,
    #[serde(default)]
    delegate: bool,
    token_sha256: Option<String>,
    expires: Option<String>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: File = toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        let mut names = HashSet::new();
        let mut tokens = HashSet::new();
        let mut grants = Vec::with_capacity(file.principal.len());
        for (index, entry) in file.principal.into_iter().enumerate() {
            let invalid = |message: String| PolicyError::Invalid {
                index,
                name: entry.name.clone(),
                message,
            };
            let name = PrincipalName::parse(&entry.name).map_err(|e| invalid(e.to_string()))?;
            if !names.insert(name.clone()) {
                return Err(invalid("another principal has this name".into()));
            }
            if entry.instances.is_empty() {
                return Err(invalid(
                    "instances is empty: list globs such as \"web-*\", or \"*\" for all".into(),
                ));
            }
            let instances = entry
                .instances
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    InstanceGlob::parse(g).map_err(|e| invalid(format!("instances[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let token_sha256 = entry
                .token_sha256
                .as_deref()
                .map(|hex| {
                    parse_sha256(hex).ok_or_else(|| {
                        invalid(
                            "token_sha256 must be 64 hex digits (sha256sum of the token)".into(),
                        )
                    })
                })
                .transpose()?;
            if let Some(token) = token_sha256 {
                if !tokens.insert(token) {
                    return Err(invalid(
                        "another principal has the same token_sha256".into(),
                    ));
                }
            }
            let token_expires = match (&entry.expires, token_sha256) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(invalid(
                        "expires applies to a token: give token_sha256 too".into(),
                    ))
                }
                (Some(text), Some(_)) => Some(parse_rfc3339(text).ok_or_else(|| {
                    invalid(format!(
                        "expires must be an RFC 3339 time such as \"2027-01-31T00:00:00Z\", got {text:?}"
                    ))
                })?),
            };
            grants.push(Grant {
                name,
                role: entry.role,
                instances,
                delegate: entry.delegate,
                token_sha256,
                token_expires,
            });
        }
        let mut revoked = HashSet::new();
        for (index, id) in file.revoked.spiffe_ids.into_iter().enumerate() {
            let bad = |message| PolicyError::Revoked {
                index,
                id: id.clone(),
                message,
            };
            let Some(path) = id.strip_prefix("spiffe://") else {
                return Err(bad("must be a SPIFFE ID: spiffe://<trust-domain>/enforcer/<instance>, .../principal/<name> or .../replica/<name>"));
            };
            if path.split('/').count() != 3 || path.chars().any(char::is_whitespace) {
                return Err(bad(
                    "must be spiffe://<trust-domain>/enforcer/<instance>, .../principal/<name> or .../replica/<name>",
                ));
            }
            revoked.insert(id);
        }
        Ok(Self { grants, revoked })
    }

    /// Whether the client certificate identity `spiffe_id` is revoked.
    pub fn is_revoked(&self, spiffe_id: &str) -> bool {
        self.revoked.contains(spiffe_id)
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    pub fn grant(&self, name: &PrincipalName) -> Option<&Grant> {
        self.grants.iter().find(|g| &g.name == name)
    }

    /// The principal whose token hashes to `digest`. Every stored hash is
    /// compared, each in constant time, so timing tells nothing about which
    /// (or whether one) matched.
    pub fn grant_for_token_digest(&self, digest: &[u8; 32]) -> Option<&Grant> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for grant in &self.grants {
            if let Some(stored) = &grant.token_sha256 {
                if bool::from(stored.ct_eq(digest)) {
                    found = Some(grant);
                }
            }
        }
        found
    }
}

fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(time.into())
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[[principal]]
name = "console"
role = "admin"
instances = ["*"]
delegate = true
[[principal]]
name = "web-team"
role = "editor"
instances = ["web-*"]
[[principal]]
name = "ops-bot"
role = "viewer"
instances = ["*"]
token_sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
"#;

    #[test]
    fn the_issues_example_parses() {
        let policy = Policy::parse(SAMPLE).unwrap();
        assert_eq!(policy.grants().len(), 3);
        let web = policy
            .grant(&PrincipalName::parse("web-team").unwrap())
            .unwrap();
        assert_eq!(web.role, Role::Editor);
        assert!(web.covers("web-1") && !web.covers("db-1"));
        assert!(!web.delegate);
        // sha256("foo")
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(b"foo").into();
        assert_eq!(
            policy
                .grant_for_token_digest(&digest)
                .map(|g| g.name.as_str()),
            Some("ops-bot")
        );
        let other: [u8; 32] = sha2::Sha256::digest(b"bar").into();
        assert!(policy.grant_for_token_digest(&other).is_none());
    }

    #[test]
    fn a_bad_file_is_refused_naming_the_entry_and_field() {
        let cases = [
            ("[[principal]]\nname = \"x\"\nrole = \"root\"\ninstances = [\"*\"]\n", "root"),
            ("[[principal]]\nname = \"x y\"\nrole = \"viewer\"\ninstances = [\"*\"]\n", "principal name"),
            ("[[principal]]\nname = \"x\"\nrole = \"viewer\"\ninstances = []\n", "instances is empty"),
            ("[[principal]]\nname = \"x\"\nrole = \"viewer\"\ninstances = [\"*\", \"Web\"]\n", "instances[1]"),
            ("[[principal]]\nname = \"x\"\nrole = \"viewer\"\ninstances = [\"*\"]\ntoken_sha256 = \"abc\"\n", "token_sha256"),
            ("[[principal]]\nname = \"x\"\nrole = \"viewer\"\ninstances = [\"*\"]\nrolle = \"admin\"\n", "rolle"),
            ("[[principal]]\nname = \"x\"\nrole = \"viewer\"\ninstances = [\"*\"]\n[[principal]]\nname = \"x\"\nrole = \"admin\"\ninstances = [\"*\"]\n", "principal[1]"),
            ("not toml at all = = =", "TOML"),
        ];
        for (text, expected) in cases {
            let error = Policy::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
