//! A firewall as a document to keep in a file: `firewall get -o yaml` writes
//! it, `diff -f` and `apply -f` read it back and hand it to ApplyFirewall.
//! YAML, or JSON (which YAML reads too), including `firewall get -o json`'s
//! own output: a document written and read back unchanged changes nothing.
//! What the document means is the service's to decide (the same
//! validation as every request); this only maps fields.

use std::collections::BTreeMap;

use cassette_proto::pb;
use serde::{Deserialize, Serialize};

/// The firewall: its instance and every rule.
#[derive(Debug, Serialize, Deserialize)]
pub struct Document {
    #[serde(alias = "instanceId")]
    pub instance: String,
    /// The revision it was written at (informational; `apply
    /// --if-unchanged` sends it as the expected revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<Number>,
    #[serde(default)]
    pub rules: Vec<DocumentRule>,
    /// What an answer carries besides (sync state and the like), read and
    /// ignored; anything else is refused by name.
    #[serde(flatten, skip_serializing)]
    other: BTreeMap<String, yaml_serde::Value>,
}

/// A rule as the document says it.
#[derive(Debug, Serialize, Deserialize)]
pub struct DocumentRule {
    /// The rule this is; absent: the rule on the same protocol and port, if
    /// any, else a new one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `22`, or a range `27015-27030`.
    pub port: Ports,
    #[serde(default, rename = "portRange", alias = "port_range", skip_serializing)]
    port_range: Option<Range>,
    /// `tcp` (the default) or `udp`.
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Absent: on (off in an answer, which leaves false out).
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// When the rule removes itself (RFC 3339).
    #[serde(default, alias = "expireTime", skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(flatten, skip_serializing)]
    other: BTreeMap<String, yaml_serde::Value>,
}

/// A number that protobuf JSON writes as a string (a uint64).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Number(u64),
    Text(String),
}

/// A port as a number, or a range as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    Port(u32),
    Range(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Range {
    first: u32,
    last: u32,
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// What a firewall answer carries that a document does not set.
const ANSWER_FIELDS: [&str; 7] = [
    "createTime",
    "updateTime",
    "sync",
    "warnings",
    "unconfirmed",
    "blocked",
    "revision",
];
const ANSWER_RULE_FIELDS: [&str; 9] = [
    "isDefault",
    "revision",
    "createTime",
    "updateTime",
    "status",
    "hits",
    "lastHitTime",
    "unconfirmedRevision",
    "revertTime",
];

impl Document {
    /// The document of `firewall`, as `firewall get -o yaml` writes it.
    pub fn of(firewall: &pb::Firewall) -> Self {
        Self {
            instance: firewall.instance_id.clone(),
            revision: Some(Number::Number(firewall.revision)),
            rules: firewall
                .rules
                .iter()
                .map(|rule| DocumentRule {
                    id: rule.id.clone(),
                    port: match &rule.port_range {
                        Some(r) if r.first != r.last => {
                            Ports::Range(format!("{}-{}", r.first, r.last))
                        }
                        _ => Ports::Port(rule.port),
                    },
                    port_range: None,
                    protocol: crate::output::protocol_name(rule.protocol).to_owned(),
                    description: rule.description.clone(),
                    enabled: Some(rule.enabled),
                    sources: rule.sources.clone(),
                    expires: rule.expire_time.map(|t| t.to_string()),
                    other: BTreeMap::new(),
                })
                .collect(),
            other: BTreeMap::new(),
        }
    }

    pub fn to_yaml(&self) -> anyhow::Result<String> {
        Ok(yaml_serde::to_string(self)?)
    }

    /// Reads a document (YAML or JSON); `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Self> {
        let document: Document = yaml_serde::from_str(text)
            .map_err(|e| anyhow::anyhow!("{source}: not a firewall document: {e}"))?;
        let unknown =
            |what: &str, other: &BTreeMap<String, yaml_serde::Value>, known: &[&str]| match other
                .keys()
                .find(|k| !known.contains(&k.as_str()))
            {
                Some(key) => Err(anyhow::anyhow!("{source}: {what} has no field {key:?}")),
                None => Ok(()),
            };
        unknown("the document", &document.other, &ANSWER_FIELDS)?;
        for (i, rule) in document.rules.iter().enumerate() {
            unknown(&format!("rules[{i}]"), &rule.other, &ANSWER_RULE_FIELDS)?;
        }
        Ok(document)
    }

    /// The revision it was written at, if it says.
    pub fn written_at(&self) -> Option<u64> {
        match self.revision.as_ref()? {
            Number::Number(n) => Some(*n),
            Number::Text(text) => text.parse().ok(),
        }
    }

    /// The desired rules, for ApplyFirewall (the service checks each).
    pub fn desired(&self) -> anyhow::Result<Vec<pb::DesiredRule>> {
        self.rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let (port, port_range) = match (&rule.port, &rule.port_range) {
                    (_, Some(r)) if r.first != r.last => (
                        0,
                        Some(pb::PortRange {
                            first: r.first,
                            last: r.last,
                        }),
                    ),
                    (Ports::Port(port), _) => (*port, None),
                    (Ports::Range(text), _) => {
                        let (first, last) = crate::parse_ports(text)
                            .map_err(|e| anyhow::anyhow!("rules[{i}].port: {e}"))?;
                        if first == last {
                            (first, None)
                        } else {
                            (0, Some(pb::PortRange { first, last }))
                        }
                    }
                };
                let protocol = match rule.protocol.to_ascii_lowercase().as_str() {
                    "tcp" | "protocol_tcp" => pb::Protocol::Tcp,
                    "udp" | "protocol_udp" => pb::Protocol::Udp,
                    other => anyhow::bail!("rules[{i}].protocol: {other:?} is not tcp or udp"),
                };
                let expire_time = rule
                    .expires
                    .as_deref()
                    .map(|t| {
                        t.parse::<prost_types::Timestamp>().map_err(|_| {
                            anyhow::anyhow!("rules[{i}].expires: {t:?} is not an RFC 3339 time")
                        })
                    })
                    .transpose()?;
                // An answer leaves `enabled: false` out; a document written
                // by hand may leave out `enabled: true`.
                let from_answer = rule.other.contains_key("createTime");
                Ok(pb::DesiredRule {
                    rule_id: rule.id.clone(),
                    port,
                    port_range,
                    protocol: protocol.into(),
                    description: rule.description.clone(),
                    enabled: Some(rule.enabled.unwrap_or(!from_answer)),
                    sources: rule.sources.clone(),
                    expire_time,
                })
            })
            .collect()
    }
}
