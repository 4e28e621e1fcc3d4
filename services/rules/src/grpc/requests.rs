//! Wire requests to model values: every field of every request is validated
//! here, once, each invalid field recorded in [`Violations`] so one answer
//! names them all. The gRPC handlers call these; `fuzz/` feeds them arbitrary
//! decoded messages.

use std::time::{Duration, SystemTime};

use cassette_model::{
    check_confirm_within, Command, Description, DesiredRule, InstanceId, Port, PortRange, Protocol,
    RequestDigest, RequestId, RuleId, Sources, ValidationError, MAX_RULES, MAX_UNCONFIRMED,
};
use cassette_proto::{pb, protocol_from_pb};
use sha2::{Digest, Sha256};

use crate::grpc::status::Violations;
use cassette_service::replay::EventPage;
use cassette_service::ConfirmWithin;

const DEFAULT_WAIT: Duration = Duration::from_secs(10);
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest `enforcer_id` and `version` a Hello may carry.
const MAX_HELLO_FIELD: usize = 128;
/// DiffFirewall's events per page, by default and at most.
const DIFF_PAGE_DEFAULT: usize = 100;
const DIFF_PAGE_MAX: usize = 1000;
/// How far ahead an expiring rule's end may be.
const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// The instance and idempotency key every mutation carries.
pub fn target(
    instance_id: &str,
    request_id: &str,
    v: &mut Violations,
) -> Option<(InstanceId, Option<RequestId>)> {
    let instance = v.check(InstanceId::parse(instance_id));
    let request = v.check(RequestId::parse_optional(request_id));
    Some((instance?, request?))
}

/// Whether a read must be linearizable (`consistency`).
pub fn linearizable(consistency: i32, v: &mut Violations) -> Option<bool> {
    match pb::ReadConsistency::try_from(consistency) {
        Ok(pb::ReadConsistency::Linearizable) => Some(true),
        Ok(pb::ReadConsistency::Unspecified | pb::ReadConsistency::Replica) => Some(false),
        Err(_) => v.check(Err(ValidationError::new(
            "consistency",
            format!(
                "must be READ_CONSISTENCY_REPLICA (1) or READ_CONSISTENCY_LINEARIZABLE (2), got {consistency}"
            ),
        ))),
    }
}

/// A change request that may carry an idempotency key (`request_id`).
pub trait Keyed: prost::Message + Clone {
    fn request_id_mut(&mut self) -> &mut String;

    /// What the request asks for: SHA-256 of `method` and the message
    /// without its `request_id` (prost encodes fields in number order, and
    /// whichever door it came through, JSON or gRPC, it is this message).
    fn digest(&self, method: &str) -> RequestDigest {
        let mut unkeyed = self.clone();
        unkeyed.request_id_mut().clear();
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        hash.update([0]);
        hash.update(unkeyed.encode_to_vec());
        RequestDigest(hash.finalize().into())
    }
}

macro_rules! keyed {
    ($($request:ty),*) => {
        $(impl Keyed for $request {
            fn request_id_mut(&mut self) -> &mut String {
                &mut self.request_id
            }
        })*
    };
}

keyed!(
    pb::CreateFirewallRequest,
    pb::AddRuleRequest,
    pb::UpdateRuleRequest,
    pb::DeleteRuleRequest,
    pb::DeleteFirewallRequest,
    pb::ConfirmChangeRequest,
    pb::ApplyFirewallRequest
);

/// A change request that may ask to be undone unless confirmed.
pub trait Confirmable {
    /// `confirm_within` and `confirm_on_traffic`, where the request has them.
    fn window(&self) -> (Option<prost_types::Duration>, bool) {
        (None, false)
    }
}

impl Confirmable for pb::CreateFirewallRequest {}
impl Confirmable for pb::DeleteFirewallRequest {}
impl Confirmable for pb::ConfirmChangeRequest {}

macro_rules! confirmable {
    ($($request:ty),*) => {
        $(impl Confirmable for $request {
            fn window(&self) -> (Option<prost_types::Duration>, bool) {
                (self.confirm_within, self.confirm_on_traffic)
            }
        })*
    };
}

confirmable!(
    pb::AddRuleRequest,
    pb::UpdateRuleRequest,
    pb::DeleteRuleRequest,
    pb::ApplyFirewallRequest
);

/// A change request that may ask to be answered only once the instance's
/// enforcer has acknowledged it.
pub trait Awaited {
    /// `wait_for_sync`, where the request has it.
    fn wait_for_sync(&self) -> Option<prost_types::Duration> {
        None
    }
}

impl Awaited for pb::DeleteFirewallRequest {}

macro_rules! awaited {
    ($($request:ty),*) => {
        $(impl Awaited for $request {
            fn wait_for_sync(&self) -> Option<prost_types::Duration> {
                self.wait_for_sync
            }
        })*
    };
}

awaited!(
    pb::CreateFirewallRequest,
    pb::AddRuleRequest,
    pb::UpdateRuleRequest,
    pb::DeleteRuleRequest,
    pb::ConfirmChangeRequest,
    pb::ApplyFirewallRequest
);

/// A change's `wait_for_sync`: how long to wait for its acknowledgement
/// before answering, at most 300 s; absent or zero, no wait.
pub fn wait_for_sync(r: &impl Awaited, v: &mut Violations) -> Option<Option<Duration>> {
    let Some(wait) = r.wait_for_sync() else {
        return Some(None);
    };
    let wait = Duration::try_from(wait)
        .ok()
        .filter(|wait| *wait <= MAX_WAIT)
        .ok_or_else(|| {
            ValidationError::new(
                "wait_for_sync",
                "must be between 0 and 300 seconds (0: answer at once, without waiting)",
            )
        });
    v.check(wait).map(|wait| (!wait.is_zero()).then_some(wait))
}

/// The request's confirmation window: absent, or 1 s to 24 h;
/// `confirm_on_traffic` only with one.
pub fn confirm(r: &impl Confirmable, v: &mut Violations) -> Option<Option<ConfirmWithin>> {
    let (within, on_traffic) = r.window();
    match within {
        None if on_traffic => {
            v.check::<()>(Err(ValidationError::new(
                "confirm_on_traffic",
                "needs confirm_within: the window in which traffic confirms the change",
            )));
            None
        }
        None => Some(None),
        Some(within) => {
            let within = Duration::try_from(within)
                .map_err(|_| ValidationError::new("confirm_within", "must be between 1s and 24h"));
            let within = v.check(within.and_then(check_confirm_within))?;
            Some(Some(ConfirmWithin { within, on_traffic }))
        }
    }
}

/// ConfirmChange's revision, as a command.
pub fn confirm_change(r: &pb::ConfirmChangeRequest, v: &mut Violations) -> Option<Command> {
    if r.revision == 0 {
        v.check::<()>(Err(ValidationError::new(
            "revision",
            "must be the revision of an unconfirmed change (at least 1)",
        )));
        return None;
    }
    Some(Command::ConfirmChange {
        revision: r.revision,
        now: SystemTime::now(),
    })
}

pub fn add_rule(r: &pb::AddRuleRequest, v: &mut Violations) -> Option<Command> {
    add_rule_at(r, SystemTime::now(), v)
}

/// [`add_rule`] with the service's clock reading `now`.
pub fn add_rule_at(r: &pb::AddRuleRequest, now: SystemTime, v: &mut Violations) -> Option<Command> {
    let ports = v.check(rule_ports(r.port, r.port_range.as_ref()));
    let protocol = v.check(protocol_from_pb(r.protocol));
    let description = v.check(Description::parse(&r.description));
    let expire_time = v.check(expire_time(r.expire_time, r.ttl, now));
    let sources = v.check(Sources::parse("sources", &r.sources));
    Some(Command::AddRule {
        ports: ports?,
        protocol: protocol?,
        description: description?,
        enabled: r.enabled.unwrap_or(true),
        expire_time: expire_time?,
        sources: sources?,
    })
}

/// AddRule's ports: `port`, or `port_range` (not both).
fn rule_ports(port: u32, range: Option<&pb::PortRange>) -> Result<PortRange, ValidationError> {
    match (port, range) {
        (_, None) => Ok(PortRange::single(Port::new(port)?)),
        (0, Some(range)) => PortRange::new(range.first, range.last),
        (_, Some(_)) => Err(ValidationError::new(
            PortRange::FIELD,
            "give port or port_range, not both",
        )),
    }
}

/// ApplyFirewall's desired rules, each field checked as AddRule checks it
/// and named `rules[i].<field>`.
pub fn apply_firewall(r: &pb::ApplyFirewallRequest, v: &mut Violations) -> Option<Command> {
    if r.rules.len() > MAX_RULES {
        v.check::<()>(Err(ValidationError::new(
            "rules",
            format!("at most {MAX_RULES} rules, got {}", r.rules.len()),
        )));
        return None;
    }
    let mut rules = Some(Vec::with_capacity(r.rules.len()));
    for (i, want) in r.rules.iter().enumerate() {
        let at = |e: ValidationError| {
            let field = format!("rules[{i}].{}", e.field);
            e.at(field)
        };
        let rule_id = v.check(
            (!want.rule_id.is_empty())
                .then(|| RuleId::parse(&want.rule_id))
                .transpose()
                .map_err(at),
        );
        let ports = v.check(rule_ports(want.port, want.port_range.as_ref()).map_err(at));
        let protocol = v.check(protocol_from_pb(want.protocol).map_err(at));
        let description = v.check(Description::parse(&want.description).map_err(at));
        let sources = v.check(Sources::parse(
            &format!("rules[{i}].sources"),
            &want.sources,
        ));
        let expire_time = v.check(
            want.expire_time
                .map(|t| {
                    SystemTime::try_from(t).map_err(|_| {
                        ValidationError::new(format!("rules[{i}].expire_time"), "not a valid time")
                    })
                })
                .transpose(),
        );
        let desired = (|| {
            Some(DesiredRule {
                rule_id: rule_id?,
                ports: ports?,
                protocol: protocol?,
                description: description?,
                enabled: want.enabled.unwrap_or(true),
                expire_time: expire_time?,
                sources: sources?,
            })
        })();
        match (rules.as_mut(), desired) {
            (Some(rules), Some(desired)) => rules.push(desired),
            _ => rules = None,
        }
    }
    Some(Command::ApplyFirewall {
        rules: rules?,
        now: SystemTime::now(),
    })
}

/// Diagnose's port and protocol.
pub fn diagnose(r: &pb::DiagnoseRequest, v: &mut Violations) -> Option<(Port, Protocol)> {
    let port = v.check(Port::new(r.port));
    let protocol = v.check(protocol_from_pb(r.protocol));
    Some((port?, protocol?))
}

/// ListFirewalls' `unused_for`: absent, or 1 second to 366 days.
pub fn unused_for(d: Option<prost_types::Duration>) -> Result<Option<Duration>, ValidationError> {
    let Some(d) = d else {
        return Ok(None);
    };
    match Duration::try_from(d) {
        Ok(d) if (MIN_TTL..=MAX_TTL).contains(&d) => Ok(Some(d)),
        _ => Err(ValidationError::new(
            "unused_for",
            "must be between 1 second and 366 days",
        )),
    }
}

/// AddRule's `expire_time` or `ttl` (not both) as an absolute time between 1 s
/// and 366 days after `now`.
fn expire_time(
    at: Option<prost_types::Timestamp>,
    ttl: Option<prost_types::Duration>,
    now: SystemTime,
) -> Result<Option<SystemTime>, ValidationError> {
    let in_range = |field: &'static str, after: Option<Duration>| match after {
        Some(after) if (MIN_TTL..=MAX_TTL).contains(&after) => Ok(()),
        _ => Err(ValidationError::new(
            field,
            "must be between 1 second and 366 days from now",
        )),
    };
    match (at, ttl) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ValidationError::new(
            "ttl",
            "give expire_time or ttl, not both",
        )),
        (None, Some(ttl)) => {
            let ttl = Duration::try_from(ttl).ok();
            in_range("ttl", ttl)?;
            Ok(ttl.and_then(|ttl| now.checked_add(ttl)))
        }
        (Some(at), None) => {
            let at = SystemTime::try_from(at).ok();
            in_range("expire_time", at.and_then(|at| at.duration_since(now).ok()))?;
            Ok(at)
        }
    }
}

pub fn update_rule(r: &pb::UpdateRuleRequest, v: &mut Violations) -> Option<Command> {
    let rule_id = v.check(RuleId::parse(&r.rule_id));
    let description = match &r.description {
        None => Some(None),
        Some(d) => v.check(Description::parse(d)).map(Some),
    };
    let sources = match &r.sources {
        None => Some(None),
        Some(list) => v
            .check(Sources::parse("sources.cidrs", &list.cidrs))
            .map(Some),
    };
    Some(Command::UpdateRule {
        rule_id: rule_id?,
        enabled: r.enabled,
        description: description?,
        sources: sources?,
    })
}

pub fn delete_rule(r: &pb::DeleteRuleRequest, v: &mut Violations) -> Option<Command> {
    let rule_id = v.check(RuleId::parse(&r.rule_id))?;
    Some(Command::DeleteRule { rule_id })
}

/// A sync stream's Hello: its instance, and bounded `enforcer_id` and `version`.
pub fn hello(hello: &pb::Hello, v: &mut Violations) -> Option<InstanceId> {
    let instance = v.check(InstanceId::parse(&hello.instance_id));
    v.check(bounded("enforcer_id", &hello.enforcer_id));
    v.check(bounded("version", &hello.version));
    v.check(bounded("applied_ruleset_hash", &hello.applied_ruleset_hash));
    if hello.locally_reverted.len() > MAX_UNCONFIRMED {
        v.check::<()>(Err(ValidationError::new(
            "locally_reverted",
            format!("at most {MAX_UNCONFIRMED} revisions"),
        )));
    }
    instance
}

fn bounded(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.chars().count() > MAX_HELLO_FIELD {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_HELLO_FIELD} characters"),
        ));
    }
    Ok(())
}

/// WaitForSync's `timeout`: absent or zero means 10 s; at most 300 s.
pub fn wait_timeout(timeout: Option<prost_types::Duration>) -> Result<Duration, ValidationError> {
    let invalid = || {
        ValidationError::new(
            "timeout",
            "must be between 0 and 300 seconds (0 means 10 seconds)",
        )
    };
    let Some(timeout) = timeout else {
        return Ok(DEFAULT_WAIT);
    };
    let timeout = Duration::try_from(timeout).map_err(|_| invalid())?;
    match timeout {
        t if t.is_zero() => Ok(DEFAULT_WAIT),
        t if t > MAX_WAIT => Err(invalid()),
        t => Ok(t),
    }
}

/// DiffFirewall's page of events: `page_size` 1-1000 (0: 100), `page_token`
/// a revision it returned.
pub fn diff_page(request: &pb::DiffFirewallRequest, v: &mut Violations) -> Option<EventPage> {
    let size = v.check(match request.page_size {
        0 => Ok(DIFF_PAGE_DEFAULT),
        n if n as usize <= DIFF_PAGE_MAX => Ok(n as usize),
        n => Err(ValidationError::new(
            "page_size",
            format!("must be between 1 and {DIFF_PAGE_MAX} (0 means {DIFF_PAGE_DEFAULT}), got {n}"),
        )),
    });
    let after = v.check(match request.page_token.as_str() {
        "" => Ok(request.from_revision),
        token => token
            .parse::<u64>()
            .ok()
            .filter(|r| *r > request.from_revision && *r < request.to_revision)
            .ok_or_else(|| {
                ValidationError::new(
                    "page_token",
                    "is not a next_page_token returned by DiffFirewall for these revisions",
                )
            }),
    });
    Some(EventPage {
        after: after?,
        size: size?,
    })
}
