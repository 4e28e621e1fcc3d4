//! The gRPC adapter for `cassette.firewall.v1.FirewallService`: validates
//! requests into model commands (every invalid field is named), hands them to
//! the store, converts answers back. No firewall semantics live here.

use std::future::Future;
use std::sync::Arc;

use std::time::{Duration, SystemTime};

use cassette_auth::{Action, Authenticator, Caller};
use cassette_model::{Command, Firewall, InstanceId, ValidationError};
use cassette_proto::pb::firewall_service_server::FirewallService;
use cassette_proto::{pb, protocol_to_pb, warning_to_pb};
use tonic::{Request, Response, Status};
use tracing::{field, Instrument, Span};

use crate::grpc::caller::{caller, Reauthorized};
use crate::grpc::diagnose::diagnose;
use crate::grpc::present::{present, rule_change, sync_status};
use crate::grpc::requests;
use crate::grpc::status::{self, invalid, refused, Violations};
use crate::grpc::waiting::{not_yet_acknowledged, Waited, Waiting};
use cassette_service::limits::{Limits, Slots};
use cassette_service::sync::{Observed, Snapshot};
use cassette_service::{Mutation, Store, StoreError};

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

pub struct FirewallApi {
    store: Arc<Store>,
    waiters: Arc<Slots>,
    max_page_bytes: usize,
    /// WaitForSync checks its caller again after each policy reload.
    authenticator: Arc<Authenticator>,
}

impl FirewallApi {
    pub fn new(store: Arc<Store>, limits: &Limits, authenticator: Arc<Authenticator>) -> Self {
        Self {
            store,
            authenticator,
            waiters: Slots::new("WaitForSync waiters", limits.max_waiters_per_principal),
            max_page_bytes: limits.max_list_page_bytes,
        }
    }

    /// A firewall as the API shows it: with its enforcer's sync state.
    fn present(&self, firewall: &Firewall) -> pb::Firewall {
        present(firewall, &self.store.snapshot(&firewall.instance_id))
    }

    /// Validates and applies one mutation inside a span naming the method,
    /// the instance, the request id and (once known) the revision.
    async fn mutate<T: requests::Keyed + requests::Confirmable + requests::Awaited>(
        &self,
        method: &'static str,
        request: Request<T>,
        fields: impl FnOnce(&T) -> (&str, &str, Option<u64>),
        command: impl FnOnce(&T, &mut Violations) -> Option<Command>,
    ) -> Result<Response<pb::Firewall>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let (instance_id, request_id, expected_revision) = fields(&request);
        let span = request_span(method, instance_id, request_id, &caller);
        let answer = async {
            let (mutation, wait) = validated(
                method,
                &caller,
                &request,
                (instance_id, request_id, expected_revision),
                command,
            )?;
            let waiting = self.before_waiting(wait, &caller)?;
            let advised = mutation.command.clone();
            let instance = mutation.instance_id.clone();
            let firewall = self.store.mutate(mutation).await.map_err(status::store)?;
            Span::current().record("revision", firewall.revision);
            let late = self
                .after_waiting(waiting, method, &instance, firewall.revision)
                .await?;
            let mut answer = self.present(&firewall);
            answer.warnings = cassette_model::warnings(&advised, &firewall)
                .iter()
                .map(warning_to_pb)
                .chain(late)
                .collect();
            Ok(answer)
        };
        in_span(span, answer).await
    }

    /// Before a change that waits for its acknowledgement (`wait_for_sync`):
    /// the caller's waiter slot, taken first so that a caller at its limit
    /// changes nothing.
    fn before_waiting(
        &self,
        wait: Option<Duration>,
        caller: &Caller,
    ) -> Result<Option<Waiting>, Status> {
        let Some(timeout) = wait else {
            return Ok(None);
        };
        let slot = self
            .waiters
            .acquire(caller.actor().as_str())
            .map_err(status::limit)?;
        let reauthorized = Reauthorized::new(self.authenticator.clone(), caller.clone());
        Ok(Some(Waiting::new(timeout, reauthorized, slot)))
    }

    /// After the change: waits for its revision's acknowledgement if asked
    /// to; the warning for an answer that could not wait long enough.
    async fn after_waiting(
        &self,
        waiting: Option<Waiting>,
        method: &'static str,
        instance: &InstanceId,
        revision: u64,
    ) -> Result<Option<pb::Warning>, Status> {
        let Some(mut waiting) = waiting else {
            return Ok(None);
        };
        let waited = waiting
            .acknowledged(&self.store, instance, revision, method)
            .await?;
        Ok(match waited {
            Waited::Acknowledged(_) => None,
            Waited::TimedOut(sync) => {
                Some(not_yet_acknowledged(revision, waiting.timeout(), &sync))
            }
        })
    }
}

/// Authorizes a change and validates its request into a [`Mutation`]
/// (every invalid field named), with how long to wait for its
/// acknowledgement: the first steps of every change.
fn validated<T: requests::Keyed + requests::Confirmable + requests::Awaited>(
    method: &'static str,
    caller: &Caller,
    request: &T,
    (instance_id, request_id, expected_revision): (&str, &str, Option<u64>),
    command: impl FnOnce(&T, &mut Violations) -> Option<Command>,
) -> Result<(Mutation, Option<Duration>), Status> {
    caller
        .authorize(Action::Mutate, method, instance_id)
        .map_err(refused)?;
    let mut v = Violations::default();
    let target = requests::target(instance_id, request_id, &mut v);
    let command = command(request, &mut v);
    let confirm = requests::confirm(request, &mut v);
    let wait = requests::wait_for_sync(request, &mut v);
    let (((instance_id, request_id), (command, confirm)), wait) =
        v.finish_with(target.zip(command.zip(confirm)).zip(wait))?;
    let request_digest = request_id.as_ref().map(|_| request.digest(method));
    let mutation = Mutation {
        instance_id,
        command,
        request_id,
        request_digest,
        expected_revision,
        actor: caller.actor(),
        on_behalf_of: caller.on_behalf_of().cloned(),
        confirm,
    };
    Ok((mutation, wait))
}

impl FirewallApi {
    /// ApplyFirewall: the dry run's preview, or the one apply, and what
    /// changed with its impact. Without an expected revision of the
    /// caller's, the apply is guarded by the revision its changes are
    /// computed from (and computed again if another change came first), so
    /// the changes answered are exactly what the revision did.
    async fn apply(
        &self,
        caller: &Caller,
        request: &pb::ApplyFirewallRequest,
    ) -> Result<pb::ApplyFirewallResponse, Status> {
        const METHOD: &str = "ApplyFirewall";
        let fields = (
            request.instance_id.as_str(),
            request.request_id.as_str(),
            request.expected_revision,
        );
        let (mut mutation, wait) =
            validated(METHOD, caller, request, fields, requests::apply_firewall)?;
        if request.dry_run && wait.is_some() {
            return Err(invalid(ValidationError::new(
                "wait_for_sync",
                "must be absent with dry_run: a dry run changes nothing to wait for",
            )));
        }
        let waiting = self.before_waiting(wait, caller)?;
        let instance = mutation.instance_id.clone();
        let (before, after) = if request.dry_run {
            let (before, after) = self
                .store
                .preview(
                    &instance,
                    &mutation.command,
                    mutation.expected_revision,
                    &mutation.actor,
                )
                .map_err(status::store)?;
            (before, Arc::new(after))
        } else {
            let guarded = mutation.expected_revision.is_none();
            let mut attempts = 0;
            loop {
                attempts += 1;
                let before = self.store.get(&instance).map_err(status::store)?;
                if guarded {
                    mutation.expected_revision = Some(before.revision);
                }
                match self.store.mutate(mutation.clone()).await {
                    Ok(after)
                        if after.revision == before.revision
                            || after.revision == before.revision + 1 =>
                    {
                        break (before, after);
                    }
                    // A retry answered with its first outcome, from history.
                    Ok(after) => {
                        let then = self
                            .store
                            .firewall_at(&instance, after.revision.saturating_sub(1))
                            .await
                            .map_err(status::store)?;
                        break (then, after);
                    }
                    Err(StoreError::Domain(cassette_model::DomainError::RevisionMismatch {
                        ..
                    })) if guarded && attempts < 5 => {}
                    Err(error) => return Err(status::store(error)),
                }
            }
        };
        Span::current().record("revision", after.revision);
        // The impact from the enforcer's report before the change.
        let snapshot = self.store.snapshot(&instance);
        let changes = cassette_model::rule_changes(&before, &after)
            .iter()
            .map(|change| rule_change(change, snapshot.observed.as_deref()))
            .collect();
        let waited = waiting.is_some();
        let late = self
            .after_waiting(waiting, METHOD, &instance, after.revision)
            .await?;
        // The sync state after the wait, if the answer waited.
        let mut firewall = if waited {
            self.present(&after)
        } else {
            present(&after, &snapshot)
        };
        firewall.warnings = cassette_model::warnings(&mutation.command, &after)
            .iter()
            .map(warning_to_pb)
            .chain(late)
            .collect();
        Ok(pb::ApplyFirewallResponse {
            firewall: Some(firewall),
            changes,
            dry_run: request.dry_run,
        })
    }

    /// The instance's sync state after asking its connected enforcer for a
    /// fresh report, waiting up to [`REPORT_WAIT`] for it (else the last one).
    async fn fresh_report(&self, instance: &InstanceId) -> Snapshot {
        let board = self.store.board();
        let mut status = board.watch_status(instance);
        let asked = SystemTime::now();
        if !status.borrow_and_update().is_connected() {
            return status.borrow().clone();
        }
        board.request_report(instance);
        let fresh = async {
            status
                .wait_for(|s| s.observed.as_ref().is_some_and(|o| o.received >= asked))
                .await
                .map(|snapshot| snapshot.clone())
        };
        match tokio::time::timeout(REPORT_WAIT, fresh).await {
            Ok(Ok(snapshot)) => snapshot,
            _ => board.snapshot(instance),
        }
    }
}

/// How long WaitForSync on a replica waits for a revision written through
/// another replica to arrive, before calling it beyond the log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// How long Diagnose waits for the enforcer's fresh report.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Keeps only the firewall's enabled rules that accepted no packet for at
/// least `unused_for` (no hit since, and applied before, that time) by its
/// enforcer's last report. False when none is left, or nothing was reported.
fn keep_unused(view: &mut pb::Firewall, observed: Option<&Observed>, unused_for: Duration) -> bool {
    let Some(since) = observed
        .filter(|o| o.counted)
        .and_then(|o| o.observed)
        .and_then(|observed| observed.checked_sub(unused_for))
    else {
        return false;
    };
    let before = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .is_none_or(|t| t < since)
    };
    view.rules.retain(|rule| {
        let applied = rule.status == pb::RuleStatus::Applied as i32;
        // Hits counted before the enforcer's first report have no time: not
        // known to be unused.
        let when_known = rule.hits == 0 || rule.last_hit_time.is_some();
        rule.enabled
            && applied
            && when_known
            && before(rule.update_time)
            && before(rule.last_hit_time)
    });
    !view.rules.is_empty()
}

fn request_span(
    method: &'static str,
    instance_id: &str,
    request_id: &str,
    caller: &Caller,
) -> Span {
    tracing::info_span!(
        "request",
        method,
        instance_id,
        principal = %caller,
        on_behalf_of = caller.on_behalf_of().map(|u| u.as_str()),
        request_id = (!request_id.is_empty()).then_some(request_id),
        revision = field::Empty,
    )
}

/// Runs a request's answer inside its span, logging a refusal there.
async fn in_span<T>(
    span: Span,
    answer: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    async {
        answer.await.map(Response::new).inspect_err(|status| {
            tracing::info!(code = ?status.code(), message = status.message(), "request refused");
        })
    }
    .instrument(span)
    .await
}

#[tonic::async_trait]
impl FirewallService for FirewallApi {
    async fn create_firewall(
        &self,
        request: Request<pb::CreateFirewallRequest>,
    ) -> Result<Response<pb::Firewall>, Status> {
        self.mutate(
            "CreateFirewall",
            request,
            |r| (&r.instance_id, &r.request_id, None),
            |_, _| Some(Command::CreateFirewall),
        )
        .await
    }

    async fn get_firewall(
        &self,
        request: Request<pb::GetFirewallRequest>,
    ) -> Result<Response<pb::Firewall>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = request_span("GetFirewall", &request.instance_id, "", &caller);
        let answer = async {
            caller
                .authorize(Action::Read, "GetFirewall", &request.instance_id)
                .map_err(refused)?;
            let mut v = Violations::default();
            let instance_id = v.check(InstanceId::parse(&request.instance_id));
            let linearizable = requests::linearizable(request.consistency, &mut v);
            let (instance_id, linearizable) = v.finish_with(instance_id.zip(linearizable))?;
            if linearizable {
                self.store
                    .catch_up_with_log()
                    .await
                    .map_err(status::store)?;
            }
            let firewall = self.store.get(&instance_id).map_err(status::store)?;
            Span::current().record("revision", firewall.revision);
            // Hit counts from the enforcer, wherever it streams.
            self.store.board().want_reports(&instance_id);
            Ok(self.present(&firewall))
        };
        in_span(span, answer).await
    }

    async fn list_firewalls(
        &self,
        request: Request<pb::ListFirewallsRequest>,
    ) -> Result<Response<pb::ListFirewallsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = tracing::info_span!("request", method = "ListFirewalls", principal = %caller);
        let answer = async {
            caller
                .authorize_any(Action::Read, "ListFirewalls")
                .map_err(refused)?;
            let limit = match request.page_size {
                0 => DEFAULT_PAGE_SIZE,
                n => usize::try_from(n)
                    .unwrap_or(MAX_PAGE_SIZE)
                    .min(MAX_PAGE_SIZE),
            };
            let after = match request.page_token.as_str() {
                "" => None,
                token => Some(InstanceId::parse(token).map_err(|_| {
                    invalid(ValidationError::new(
                        "page_token",
                        "is not a next_page_token returned by ListFirewalls",
                    ))
                })?),
            };
            let unused_for = requests::unused_for(request.unused_for).map_err(invalid)?;
            let (page, mut more) = self
                .store
                .list(after.as_ref(), limit, |id| caller.may_see(id.as_str()));
            // Pages are bounded by size too (a firewall may hold 1024 rules),
            // always with at least one firewall so a reader makes progress.
            let mut firewalls = Vec::with_capacity(page.len());
            let mut bytes = 0;
            let mut last_seen = None;
            for firewall in &page {
                let sync = self.store.snapshot(&firewall.instance_id);
                let mut view = present(firewall, &sync);
                if let Some(unused_for) = unused_for {
                    if !keep_unused(&mut view, sync.observed.as_deref(), unused_for) {
                        last_seen = Some(view.instance_id);
                        continue;
                    }
                }
                bytes += prost::Message::encoded_len(&view);
                if bytes > self.max_page_bytes && !firewalls.is_empty() {
                    more = true;
                    break;
                }
                last_seen = Some(view.instance_id.clone());
                firewalls.push(view);
            }
            let next_page_token = match (more, last_seen) {
                (true, Some(last)) => last,
                _ => String::new(),
            };
            Ok(pb::ListFirewallsResponse {
                firewalls,
                next_page_token,
            })
        };
        in_span(span, answer).await
    }

    async fn add_rule(
        &self,
        request: Request<pb::AddRuleRequest>,
    ) -> Result<Response<pb::Firewall>, Status> {
        self.mutate(
            "AddRule",
            request,
            |r| (&r.instance_id, &r.request_id, r.expected_revision),
            requests::add_rule,
        )
        .await
    }

    async fn update_rule(
        &self,
        request: Request<pb::UpdateRuleRequest>,
    ) -> Result<Response<pb::Firewall>, Status> {
        self.mutate(
            "UpdateRule",
            request,
            |r| (&r.instance_id, &r.request_id, r.expected_revision),
            requests::update_rule,
        )
        .await
    }

    async fn apply_firewall(
        &self,
        request: Request<pb::ApplyFirewallRequest>,
    ) -> Result<Response<pb::ApplyFirewallResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = request_span(
            "ApplyFirewall",
            &request.instance_id,
            &request.request_id,
            &caller,
        );
        in_span(span, self.apply(&caller, &request)).await
    }

    async fn confirm_change(
        &self,
        request: Request<pb::ConfirmChangeRequest>,
    ) -> Result<Response<pb::Firewall>, Status> {
        self.mutate(
            "ConfirmChange",
            request,
            |r| (&r.instance_id, &r.request_id, None),
            requests::confirm_change,
        )
        .await
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::Firewall>, Status> {
        self.mutate(
            "DeleteRule",
            request,
            |r| (&r.instance_id, &r.request_id, r.expected_revision),
            requests::delete_rule,
        )
        .await
    }

    async fn delete_firewall(
        &self,
        request: Request<pb::DeleteFirewallRequest>,
    ) -> Result<Response<pb::DeleteFirewallResponse>, Status> {
        self.mutate(
            "DeleteFirewall",
            request,
            |r| (&r.instance_id, &r.request_id, r.expected_revision),
            |_, _| Some(Command::DeleteFirewall),
        )
        .await
        .map(|_| Response::new(pb::DeleteFirewallResponse {}))
    }

    async fn diagnose(
        &self,
        request: Request<pb::DiagnoseRequest>,
    ) -> Result<Response<pb::Diagnosis>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let span = request_span("Diagnose", &request.instance_id, "", &caller);
        let answer = async {
            caller
                .authorize(Action::Read, "Diagnose", &request.instance_id)
                .map_err(refused)?;
            let mut v = Violations::default();
            let instance_id = v.check(InstanceId::parse(&request.instance_id));
            let target = requests::diagnose(&request, &mut v);
            let (instance_id, (port, protocol)) = v.finish_with(instance_id.zip(target))?;
            let firewall = self.store.get(&instance_id).map_err(status::store)?;
            Span::current().record("revision", firewall.revision);
            let sync = self.fresh_report(&instance_id).await;
            let checks = diagnose(&firewall, port, protocol, &sync, SystemTime::now());
            Ok(pb::Diagnosis {
                instance_id: instance_id.to_string(),
                port: u32::from(port.get()),
                protocol: protocol_to_pb(protocol).into(),
                ok: checks
                    .iter()
                    .all(|c| c.result == pb::CheckResult::Pass as i32),
                checks,
            })
        };
        in_span(span, answer).await
    }

    async fn wait_for_sync(
        &self,
        request: Request<pb::WaitForSyncRequest>,
    ) -> Result<Response<pb::SyncStatus>, Status> {
        let caller = caller(&request)?;
        let reauthorized = Reauthorized::new(self.authenticator.clone(), caller.clone());
        let request = request.into_inner();
        let span = request_span("WaitForSync", &request.instance_id, "", &caller);
        let answer = async {
            caller
                .authorize(Action::Read, "WaitForSync", &request.instance_id)
                .map_err(refused)?;
            let slot = self
                .waiters
                .acquire(caller.actor().as_str())
                .map_err(status::limit)?;
            let mut v = Violations::default();
            let instance_id = v.check(InstanceId::parse(&request.instance_id));
            let timeout = v.check(requests::wait_timeout(request.timeout));
            let linearizable = requests::linearizable(request.consistency, &mut v);
            let ((instance_id, timeout), linearizable) =
                v.finish_with(instance_id.zip(timeout).zip(linearizable))?;
            if linearizable {
                self.store
                    .catch_up_with_log()
                    .await
                    .map_err(status::store)?;
            }
            let mut latest = self.store.revision(&instance_id).map_err(status::store)?;
            if request.revision > latest && self.store.log().is_shared() {
                // Written through another replica a moment ago: this one
                // follows within milliseconds.
                latest = self
                    .store
                    .await_revision(&instance_id, request.revision, timeout.min(CATCH_UP_WAIT))
                    .await;
            }
            let target = match request.revision {
                0 => latest,
                r if r > latest => {
                    return Err(invalid(ValidationError::new(
                        "revision",
                        format!("must be at most the latest revision {latest} (0 means latest)"),
                    )))
                }
                r => r,
            };
            Span::current().record("revision", target);
            let mut waiting = Waiting::new(timeout, reauthorized, slot);
            let waited = waiting
                .acknowledged(&self.store, &instance_id, target, "WaitForSync")
                .await?;
            match waited {
                Waited::Acknowledged(snapshot) => {
                    let latest = self.store.revision(&instance_id).unwrap_or(latest);
                    Ok(sync_status(&snapshot, latest))
                }
                Waited::TimedOut(snapshot) => Err(status::not_synced_in_time(format!(
                    "instance {instance_id} has not acknowledged revision {target} within {timeout:?} \
                     (applied revision {}, enforcer connected: {})",
                    snapshot.applied_revision,
                    snapshot.is_connected()
                ))),
            }
        };
        in_span(span, answer).await
    }
}
