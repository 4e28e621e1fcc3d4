//! The one place that maps the domain's errors to gRPC statuses with
//! google.rpc rich details, so a generated client can tell which field or
//! which resource was wrong. Handlers never build a `Status` by hand:
//! `clippy.toml` refuses `tonic::Status` constructors anywhere else, and
//! this module allows them with `#![allow(clippy::disallowed_methods)]`.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;

use cassette_eventlog::LogError;
use cassette_model::{DomainError, ValidationError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use cassette_auth::AuthError;
use cassette_service::{LimitReached, StoreError};

const DOMAIN: &str = "cassette.firewall.v1";

/// Collects every invalid field of a request, so one answer names them all.
#[derive(Default)]
pub struct Violations(Vec<ValidationError>);

impl Violations {
    /// The value, or `None` with the violation recorded.
    pub fn check<T>(&mut self, result: Result<T, ValidationError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }

    /// The validated `value` if no field was invalid, else INVALID_ARGUMENT
    /// naming each. `value` is every checked field together (`a.zip(b)`):
    /// with no violation recorded, each of them is there.
    pub fn finish_with<T>(self, value: Option<T>) -> Result<T, Status> {
        self.finish()?;
        value.ok_or_else(|| Status::internal("a validated field is missing"))
    }

    /// `Ok(())` if no field was invalid, else INVALID_ARGUMENT naming each.
    pub fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let message = self
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let violations: Vec<FieldViolation> = self
            .0
            .into_iter()
            .map(|v| FieldViolation::new(v.field, v.message))
            .collect();
        Err(Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(violations),
        ))
    }
}

pub fn invalid(error: ValidationError) -> Status {
    let mut v = Violations::default();
    v.0.push(error);
    v.finish()
        .err()
        .unwrap_or_else(|| Status::internal("unreachable"))
}

/// The status of a store error: the domain's refusals with their details,
/// UNAVAILABLE for what a retry may fix, INTERNAL for a log that is broken.
pub fn store(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::Domain(domain) => domain_status(domain, message),
        StoreError::ShuttingDown
        | StoreError::WriteFailed(_)
        | StoreError::Halted { .. }
        | StoreError::SnapshotRefused { .. }
        | StoreError::Log(LogError::Unavailable(_) | LogError::Refused(_)) => {
            Status::unavailable(message)
        }
        StoreError::ReadOnly { .. } => Status::failed_precondition(message),
        StoreError::Log(_) | StoreError::Fold(_) | StoreError::Unverified { .. } => {
            Status::internal(message)
        }
    }
}

/// UNAUTHENTICATED for missing or unknown credentials, PERMISSION_DENIED for
/// a known caller asking for what it may not do.
pub fn refused(error: AuthError) -> Status {
    match error {
        AuthError::Unauthenticated(message) => Status::unauthenticated(message),
        AuthError::PermissionDenied(message) => Status::permission_denied(message),
        AuthError::Invalid(violation) => invalid(violation),
    }
}

/// A per-principal cap (follow streams, WaitForSync waiters) is reached.
pub fn limit(error: LimitReached) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        error.to_string(),
        ErrorDetails::with_quota_failure_violation(
            format!("principal/{}", error.principal),
            format!("at most {} {} per principal", error.limit, error.what),
        ),
    )
}

/// A request that reached a handler without the interceptor's `Caller`.
pub fn unauthenticated_handler() -> Status {
    Status::internal("request reached a handler unauthenticated")
}

/// A sync stream that said no Hello within `wait`.
pub fn no_hello(wait: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!("no hello within {} seconds", wait.as_secs()))
}

/// WaitForSync's timeout passed before the revision was acknowledged.
pub fn not_synced_in_time(message: String) -> Status {
    Status::deadline_exceeded(message)
}

/// FollowShared on a service whose log no other replica shares.
pub fn not_a_replica() -> Status {
    Status::failed_precondition(
        "this rules service keeps its log alone (sled): it has no replicas to share values with",
    )
}

/// The console's live stream ends because the service stops.
pub fn stopping() -> Status {
    Status::unavailable("the rules service is stopping")
}

/// A failure that is this service's own fault (an answer that cannot be
/// encoded, a task that panicked): INTERNAL with what happened.
pub fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(error.to_string())
}

/// Ends a sync stream that a newer stream for the same instance replaced.
pub fn stream_replaced(instance: &str) -> Status {
    Status::aborted(format!(
        "a newer sync stream for instance {instance} replaced this one"
    ))
}

fn domain_status(error: DomainError, message: String) -> Status {
    let (code, details) = match error {
        DomainError::Invalid(violation) => return invalid(violation),
        DomainError::FirewallNotFound { instance_id } => (
            Code::NotFound,
            ErrorDetails::with_resource_info(
                "cassette.firewall.v1.Firewall",
                instance_id,
                "",
                message.clone(),
            ),
        ),
        DomainError::RuleNotFound { rule_id, .. } => (
            Code::NotFound,
            ErrorDetails::with_resource_info(
                "cassette.firewall.v1.Rule",
                rule_id,
                "",
                message.clone(),
            ),
        ),
        DomainError::RuleExists {
            existing_rule_id, ..
        } => (
            Code::AlreadyExists,
            ErrorDetails::with_resource_info(
                "cassette.firewall.v1.Rule",
                existing_rule_id,
                "",
                "no two rules of one protocol may cover the same port",
            ),
        ),
        DomainError::DefaultRuleNotDeletable { rule_id } => (
            Code::FailedPrecondition,
            ErrorDetails::with_precondition_failure_violation(
                "DEFAULT_RULE",
                format!("rules/{rule_id}"),
                "default rules can be disabled but not deleted",
            ),
        ),
        DomainError::RevisionMismatch { expected, actual } => (
            Code::Aborted,
            ErrorDetails::with_error_info(
                "REVISION_MISMATCH",
                DOMAIN,
                HashMap::from([
                    ("expected_revision".to_owned(), expected.to_string()),
                    ("revision".to_owned(), actual.to_string()),
                ]),
            ),
        ),
        DomainError::TooManyRules { limit } => (
            Code::ResourceExhausted,
            ErrorDetails::with_quota_failure_violation(
                "rules",
                format!("a firewall holds at most {limit} rules"),
            ),
        ),
        DomainError::TooManyUnconfirmed { limit } => (
            Code::ResourceExhausted,
            ErrorDetails::with_quota_failure_violation(
                "unconfirmed",
                format!("a firewall holds at most {limit} unconfirmed changes"),
            ),
        ),
        DomainError::NotUnconfirmed { revision, .. } => (
            Code::FailedPrecondition,
            ErrorDetails::with_precondition_failure_violation(
                "NOT_UNCONFIRMED",
                format!("revisions/{revision}"),
                "only a change made with confirm_within, before its revert time, can be confirmed",
            ),
        ),
        DomainError::RevertDue { revision, .. } => (
            Code::FailedPrecondition,
            ErrorDetails::with_precondition_failure_violation(
                "REVERT_DUE",
                format!("revisions/{revision}"),
                "the change passed its revert time",
            ),
        ),
    };
    Status::with_error_details(code, message, details)
}

/// The HTTP status the JSON API answers a gRPC code with (Google's HTTP
/// mapping of the canonical codes).
pub fn http_code(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// A status as the JSON API's error body, with what its rich details name:
/// `{"error": {"code": "INVALID_ARGUMENT", "status": 400, "message": ...,
/// "fieldViolations": [{"field", "description"}], "resource": {"type", "name"}}}`.
pub fn http_error(status: &Status) -> (u16, serde_json::Value) {
    let http = http_code(status.code());
    let details = status.get_error_details();
    let mut error = serde_json::json!({
        "code": grpc_code_name(status.code()),
        "status": http,
        "message": status.message(),
    });
    if let Some(bad_request) = details.bad_request() {
        error["fieldViolations"] = bad_request
            .field_violations
            .iter()
            .map(|v| serde_json::json!({"field": v.field, "description": v.description}))
            .collect();
    }
    if let Some(resource) = details.resource_info() {
        error["resource"] = serde_json::json!({
            "type": resource.resource_type,
            "name": resource.resource_name,
            "description": resource.description,
        });
    }
    (http, serde_json::json!({ "error": error }))
}

/// The canonical name of a code, as grpcurl and Google's JSON errors spell it.
fn grpc_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use cassette_model::DomainError;

    use super::*;

    #[test]
    fn every_violation_is_named_and_nothing_missing_passes() {
        let mut v = Violations::default();
        let port = v.check::<u16>(Err(ValidationError::new("port", "must be 1-65535")));
        let id = v.check(Ok("web-1"));
        let refused = v.finish_with(port.zip(id)).unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        let fields: Vec<_> = refused
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, ["port"]);
        assert_eq!(Violations::default().finish_with(Some(3)).unwrap(), 3);
    }

    #[test]
    fn store_errors_map_to_the_code_a_client_can_act_on() {
        let cases = [
            (
                StoreError::Domain(DomainError::FirewallNotFound {
                    instance_id: "web-1".into(),
                }),
                Code::NotFound,
                404,
            ),
            (StoreError::ShuttingDown, Code::Unavailable, 503),
            (
                StoreError::ReadOnly {
                    sequence: 3,
                    reason: "changed".into(),
                },
                Code::FailedPrecondition,
                400,
            ),
            (
                StoreError::Unverified {
                    sequence: 3,
                    reason: "changed".into(),
                },
                Code::Internal,
                500,
            ),
            (
                StoreError::Halted {
                    sequence: 3,
                    reason: "signature: no signature covers records 3 to 3".into(),
                },
                Code::Unavailable,
                503,
            ),
            (
                StoreError::SnapshotRefused {
                    anchor: 3,
                    reason: "firewall web-1 differs".into(),
                },
                Code::Unavailable,
                503,
            ),
        ];
        for (error, code, http) in cases {
            let status = store(error);
            assert_eq!(status.code(), code, "{}", status.message());
            assert_eq!(http_error(&status).0, http);
        }
    }
}
