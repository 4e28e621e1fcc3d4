//! The one place that maps the domain's errors to gRPC statuses with
//! google.rpc rich details, so a generated client can tell which field or
//! which resource was wrong. Handlers never build a `Status` by hand.

use std::collections::HashMap;

use cassette_model::{DomainError, ValidationError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::store::StoreError;
use cassette_auth::AuthError;

const DOMAIN: &str = "cassette.firewall.v1";

/// Collects every invalid field of a request, so one answer names them all.
#[derive(Default)]
pub struct Violations(Vec<ValidationError>);

impl Violations {
    /// The value, or `None` with the violation recorded.
    pub fn check<T>(&mut self, result: Result<T, ValidationError>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
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

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        let message = error.to_string();
        match error {
            StoreError::Domain(domain) => domain_status(domain, message),
            StoreError::ShuttingDown | StoreError::WriteFailed(_) => Status::unavailable(message),
            StoreError::ReadOnly { .. } => Status::failed_precondition(message),
            StoreError::Log(_) | StoreError::Fold(_) | StoreError::Unverified { .. } => {
                Status::internal(message)
            }
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
#[derive(Debug, thiserror::Error)]
#[error("{principal} already has {limit} open {what}: close one first (RESOURCE_EXHAUSTED)")]
pub struct LimitReached {
    pub what: &'static str,
    pub limit: usize,
    pub principal: String,
}

impl From<LimitReached> for Status {
    fn from(error: LimitReached) -> Self {
        Status::with_error_details(
            Code::ResourceExhausted,
            error.to_string(),
            ErrorDetails::with_quota_failure_violation(
                format!("principal/{}", error.principal),
                format!("at most {} {} per principal", error.limit, error.what),
            ),
        )
    }
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
                "each port+protocol combination can only have one rule",
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
    };
    Status::with_error_details(code, message, details)
}
