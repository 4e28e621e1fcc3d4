//! Validated values. Each type can only hold what the product allows, so code
//! past the API edge never re-checks a port range or an instance id.

use std::fmt;

use crate::error::ValidationError;

/// An instance id: 1-63 characters of `a-z 0-9 -`, not starting or ending with `-`
/// (a DNS label, so it can name hosts and nftables objects alike).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    pub const FIELD: &'static str = "instance_id";
    pub const MAX_LEN: usize = 63;

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let err = |why: &str| {
            ValidationError::new(
                Self::FIELD,
                format!(
                    "{why}; an instance id is 1-63 characters of a-z, 0-9 and '-', \
                     not starting or ending with '-'"
                ),
            )
        };
        if value.is_empty() {
            return Err(err("must not be empty"));
        }
        if value.len() > Self::MAX_LEN {
            return Err(err(&format!("is {} characters long", value.len())));
        }
        if let Some(bad) = value
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(err(&format!("contains {bad:?}")));
        }
        if value.starts_with('-') || value.ends_with('-') {
            return Err(err("starts or ends with '-'"));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A TCP or UDP port, 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    pub const FIELD: &'static str = "port";

    pub fn new(value: u32) -> Result<Self, ValidationError> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(Self(port)),
            _ => Err(ValidationError::new(
                Self::FIELD,
                format!("must be between 1 and 65535, got {value}"),
            )),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The ports a rule covers: one, or a range (`27015-27030`), both ends
/// included. Ordered by first port, then last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    first: Port,
    last: Port,
}

impl PortRange {
    pub const FIELD: &'static str = "port_range";

    /// `first` to `last`, each 1-65535, `first <= last`; errors name
    /// `port_range.first`, `port_range.last` or `port_range`.
    pub fn new(first: u32, last: u32) -> Result<Self, ValidationError> {
        let end = |field: &str, value: u32| {
            Port::new(value).map_err(|_| {
                ValidationError::new(
                    format!("{}.{field}", Self::FIELD),
                    format!("must be between 1 and 65535, got {value}"),
                )
            })
        };
        let (first, last) = (end("first", first)?, end("last", last)?);
        if first > last {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("first ({first}) must not be greater than last ({last})"),
            ));
        }
        Ok(Self { first, last })
    }

    /// One port.
    pub fn single(port: Port) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn first(self) -> Port {
        self.first
    }

    pub fn last(self) -> Port {
        self.last
    }

    pub fn is_single(self) -> bool {
        self.first == self.last
    }

    pub fn contains(self, port: Port) -> bool {
        self.first <= port && port <= self.last
    }

    pub fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Parses `22` or `27015-27030` (the command line's and the page's form).
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let number = |part: &str, field: &'static str| {
            part.trim().parse::<u32>().map_err(|_| {
                ValidationError::new(
                    field,
                    format!("{text:?} is not a port (1-65535) or a range like 27015-27030"),
                )
            })
        };
        match text.split_once('-') {
            None => Ok(Self::single(Port::new(number(text, Port::FIELD)?)?)),
            Some((first, last)) => {
                Self::new(number(first, Self::FIELD)?, number(last, Self::FIELD)?)
            }
        }
    }
}

impl From<Port> for PortRange {
    fn from(port: Port) -> Self {
        Self::single(port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_single() {
            self.first.fmt(f)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The transport protocol a rule opens. Ordered TCP before UDP, which is the
/// order rules of the same port are listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const FIELD: &'static str = "protocol";

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A rule's description: at most 255 characters, no control characters and no
/// Unicode bidirectional controls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Description(String);

impl Description {
    pub const FIELD: &'static str = "description";
    pub const MAX_CHARS: usize = 255;

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        let chars = value.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("must be at most 255 characters, got {chars}"),
            ));
        }
        if let Some(bad) = value.chars().find(|c| c.is_control()) {
            return Err(ValidationError::new(
                Self::FIELD,
                format!("must not contain control characters, found {bad:?}"),
            ));
        }
        // Bidi embeddings, overrides and isolates can make a description read
        // differently on the page than what is stored ("Trojan Source").
        if let Some(bad) = value
            .chars()
            .find(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        {
            return Err(ValidationError::new(
                Self::FIELD,
                format!(
                    "must not contain Unicode bidirectional controls (U+202A-U+202E, U+2066-U+2069), found U+{:04X}",
                    u32::from(bad)
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A rule's id: `default-ssh`, `default-http`, `default-https`, or a UUID v7.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(String);

impl RuleId {
    pub const FIELD: &'static str = "rule_id";
    pub const MAX_LEN: usize = 64;

    /// A rule id as a client names it. Only its shape is checked here; whether
    /// the rule exists is the firewall's question.
    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new(Self::FIELD, "must not be empty"));
        }
        if value.len() > Self::MAX_LEN
            || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ValidationError::new(
                Self::FIELD,
                "must be a rule id such as \"default-ssh\" or a UUID",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// A fresh id for a custom rule: a UUID v7, so ids sort by creation time.
    pub fn from_uuid(id: uuid::Uuid) -> Self {
        Self(id.hyphenated().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen idempotency key: 1-128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

impl RequestId {
    pub const FIELD: &'static str = "request_id";
    pub const MAX_LEN: usize = 128;

    /// `""` means the client gave no key.
    pub fn parse_optional(value: &str) -> Result<Option<Self>, ValidationError> {
        if value.is_empty() {
            return Ok(None);
        }
        if value.len() > Self::MAX_LEN || !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ValidationError::new(
                Self::FIELD,
                "must be at most 128 printable ASCII characters without spaces",
            ));
        }
        Ok(Some(Self(value.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a request with an idempotency key asked for: SHA-256 of the request
/// message without its `request_id`, so that a key reused for another
/// request is told apart from a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestDigest(pub [u8; 32]);

impl RequestDigest {
    pub const FIELD: &'static str = "request_digest";

    /// Empty means none was recorded (an event from before digests).
    pub fn parse_optional(bytes: &[u8]) -> Result<Option<Self>, ValidationError> {
        match bytes.len() {
            0 => Ok(None),
            32 => {
                let mut digest = [0; 32];
                digest.copy_from_slice(bytes);
                Ok(Some(Self(digest)))
            }
            n => Err(ValidationError::new(
                Self::FIELD,
                format!("must be 32 bytes (SHA-256) or empty, got {n}"),
            )),
        }
    }
}

/// Who asked for a change, as recorded on its events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActorId(String);

impl ActorId {
    pub const FIELD: &'static str = "x-actor";
    pub const MAX_LEN: usize = 128;
    pub const ANONYMOUS: &'static str = "anonymous";
    /// The service itself, deleting rules that reached their expire time. No
    /// principal can take this name (principal names have no ':').
    pub const EXPIRY: &'static str = "system:expiry";

    pub fn anonymous() -> Self {
        Self(Self::ANONYMOUS.to_owned())
    }

    pub fn expiry() -> Self {
        Self(Self::EXPIRY.to_owned())
    }

    /// The service itself, undoing a change nobody confirmed in time.
    pub const REVERT: &'static str = "system:revert";

    pub fn revert() -> Self {
        Self(Self::REVERT.to_owned())
    }

    /// The service itself, confirming a change that traffic proved
    /// (`confirm_on_traffic`).
    pub const TRAFFIC: &'static str = "system:traffic";

    pub fn traffic() -> Self {
        Self(Self::TRAFFIC.to_owned())
    }

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        if value.is_empty()
            || value.len() > Self::MAX_LEN
            || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(ValidationError::new(
                Self::FIELD,
                "must be 1-128 printable ASCII characters",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rules every firewall starts with: SSH, HTTP and HTTPS, enabled.
pub fn default_rules() -> Vec<crate::RuleSpec> {
    [
        ("default-ssh", 22, "SSH"),
        ("default-http", 80, "HTTP"),
        ("default-https", 443, "HTTPS"),
    ]
    .into_iter()
    .map(|(id, port, description)| crate::RuleSpec {
        id: RuleId(id.to_owned()),
        ports: PortRange::single(Port(port)),
        protocol: Protocol::Tcp,
        description: Description(description.to_owned()),
        enabled: true,
        is_default: true,
        expire_time: None,
        sources: crate::Sources::anywhere(),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_is_1_to_65535() {
        assert!(Port::new(0).is_err());
        assert_eq!(Port::new(1).map(Port::get), Ok(1));
        assert_eq!(Port::new(65535).map(Port::get), Ok(65535));
        let err = Port::new(70000).unwrap_err();
        assert_eq!(err.field, "port");
        assert!(err.message.contains("1 and 65535"), "{err}");
    }

    #[test]
    fn instance_id_is_a_dns_label() {
        for ok in ["a", "web-1", "0", &"x".repeat(63)] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", &"x".repeat(64), "é"] {
            let err = InstanceId::parse(bad).unwrap_err();
            assert_eq!(err.field, "instance_id", "{bad}");
        }
    }

    #[test]
    fn description_is_short_printable_text() {
        assert!(Description::parse("").is_ok());
        assert!(Description::parse(&"é".repeat(255)).is_ok());
        assert!(Description::parse(&"a".repeat(256)).is_err());
        assert!(Description::parse("a\nb").is_err());
        assert!(Description::parse("tab\there").is_err());
        for bidi in ['\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}'] {
            let error = Description::parse(&format!("ssh {bidi}lanigiro")).unwrap_err();
            assert!(error.message.contains("bidirectional"), "{error}");
        }
        assert!(
            Description::parse("مرحبا hello").is_ok(),
            "right-to-left text itself is fine"
        );
    }

    #[test]
    fn request_id_empty_means_none() {
        assert_eq!(RequestId::parse_optional(""), Ok(None));
        assert!(RequestId::parse_optional("abc-123").unwrap().is_some());
        assert!(RequestId::parse_optional("has space").is_err());
        assert!(RequestId::parse_optional(&"a".repeat(129)).is_err());
    }
}
