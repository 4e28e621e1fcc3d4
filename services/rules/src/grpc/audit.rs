//! The gRPC adapter for `cassette.firewall.v1.AuditService`.

use std::sync::Arc;
use std::time::SystemTime;

use cassette_model::{ActorId, InstanceId, ValidationError};
use cassette_proto::pb::audit_service_server::AuditService;
use cassette_proto::pb::get_firewall_at_request::At as PbAt;
use cassette_proto::{event_to_pb, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{field, Instrument, Span};

use crate::grpc::caller::{caller, Reauthorized};
use crate::grpc::present;
use crate::grpc::requests;
use crate::grpc::status::{self, refused, Violations};
use cassette_auth::{Action, AuthError, Authenticator, Caller};
use cassette_service::limits::{Limits, Slot, Slots};
use cassette_service::replay::{self, At, Cursor, EventFilter};
use cassette_service::{Store, StoreError};

/// Records read per step of a ListEvents stream.
const PAGE: usize = 1000;

pub struct AuditApi {
    store: Arc<Store>,
    follows: Arc<Slots>,
    /// Follow streams check their caller again after each policy reload.
    authenticator: Arc<Authenticator>,
}

impl AuditApi {
    pub fn new(store: Arc<Store>, limits: &Limits, authenticator: Arc<Authenticator>) -> Self {
        Self {
            store,
            follows: Slots::new("follow streams", limits.max_follow_streams_per_principal),
            authenticator,
        }
    }
}

fn time(
    field: &'static str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<SystemTime>, ValidationError> {
    t.map(|t| {
        SystemTime::try_from(t).map_err(|_| ValidationError::new(field, "is not a valid timestamp"))
    })
    .transpose()
}

fn optional_instance(value: &str) -> Result<Option<InstanceId>, ValidationError> {
    (!value.is_empty())
        .then(|| InstanceId::parse(value))
        .transpose()
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    type ListEventsStream = ReceiverStream<Result<pb::Event, Status>>;

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<Self::ListEventsStream>, Status> {
        let caller = caller(&request)?;
        let reauthorized = Reauthorized::new(self.authenticator.clone(), caller.clone());
        let request = request.into_inner();
        may_list_events(&caller, &request.instance_id).map_err(refused)?;
        let slot = match request.follow {
            true => Some(
                self.follows
                    .acquire(caller.actor().as_str())
                    .map_err(status::limit)?,
            ),
            false => None,
        };
        let mut v = Violations::default();
        let instance = v.check(optional_instance(&request.instance_id));
        let since = v.check(time("since", request.since));
        let until = v.check(time("until", request.until));
        let actor = match request.actor.as_str() {
            "" => Some(None),
            a => v.check(ActorId::parse(a).map(|_| Some(a.to_owned()))),
        };
        let (((instance, since), until), actor) =
            v.finish_with(instance.zip(since).zip(until).zip(actor))?;
        let filter = EventFilter {
            instance,
            after_sequence: request.after_sequence,
            until_sequence: request.until_sequence,
            since,
            until,
            actor,
        };
        let span = tracing::info_span!("request", method = "ListEvents", instance_id = ?filter.instance, follow = request.follow, principal = %caller);
        let (outbound, stream) = mpsc::channel(16);
        let reader = Reader {
            store: self.store.clone(),
            caller: reauthorized,
            instance_id: request.instance_id.clone(),
            _slot: slot,
        };
        let shape = Shape {
            follow: request.follow,
            with_records: request.with_records,
        };
        tokio::spawn(stream_events(reader, filter, shape, outbound).instrument(span));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    #[tracing::instrument(name = "request", skip_all, fields(method = "GetFirewallAt", instance_id = %request.get_ref().instance_id, principal = field::Empty))]
    async fn get_firewall_at(
        &self,
        request: Request<pb::GetFirewallAtRequest>,
    ) -> Result<Response<pb::FirewallAt>, Status> {
        let request = authorized(request, "GetFirewallAt", |r| &r.instance_id)?;
        let mut v = Violations::default();
        let instance = v.check(InstanceId::parse(&request.instance_id));
        let at = match request.at {
            Some(PbAt::Revision(r)) => Some(At::Revision(r)),
            Some(PbAt::AtTime(t)) => v.check(time("at_time", Some(t))).flatten().map(At::Time),
            None => {
                v.check::<()>(Err(ValidationError::new("at", "set revision or at_time")));
                None
            }
        };
        let (instance, at) = v.finish_with(instance.zip(at))?;
        let found = replay::firewall_at(self.store.log(), &instance, at)
            .await
            .map_err(status::store)?;
        Ok(Response::new(present::firewall_at(&found)))
    }

    #[tracing::instrument(name = "request", skip_all, fields(method = "DiffFirewall", instance_id = %request.get_ref().instance_id, principal = field::Empty))]
    async fn diff_firewall(
        &self,
        request: Request<pb::DiffFirewallRequest>,
    ) -> Result<Response<pb::FirewallDiff>, Status> {
        let request = authorized(request, "DiffFirewall", |r| &r.instance_id)?;
        let mut v = Violations::default();
        let instance = v.check(InstanceId::parse(&request.instance_id));
        let page = requests::diff_page(&request, &mut v);
        let (instance, page) = v.finish_with(instance.zip(page))?;
        let diff = replay::diff(
            self.store.log(),
            &instance,
            request.from_revision,
            request.to_revision,
            page,
        )
        .await
        .map_err(status::store)?;
        Ok(Response::new(present::diff(&diff)))
    }

    #[tracing::instrument(name = "request", skip_all, fields(method = "VerifyLog", principal = field::Empty))]
    async fn verify_log(
        &self,
        request: Request<pb::VerifyLogRequest>,
    ) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let caller = caller(&request)?;
        Span::current().record("principal", field::display(&caller));
        caller
            .authorize_all(Action::Audit, "VerifyLog")
            .map_err(refused)?;
        let store = self.store.clone();
        // It reads the whole log: off the async workers.
        let runtime = tokio::runtime::Handle::current();
        let verification =
            tokio::task::spawn_blocking(move || runtime.block_on(store.log().verify()))
                .await
                .map_err(status::internal)?
                .map_err(status::internal)?;
        Ok(Response::new(present::verification(&verification)))
    }
}

/// The request's body, once its caller may audit `instance` (recorded on the span).
fn authorized<T>(
    request: Request<T>,
    method: &str,
    instance: impl FnOnce(&T) -> &str,
) -> Result<T, Status> {
    let caller = caller(&request)?;
    Span::current().record("principal", field::display(&caller));
    caller
        .authorize(Action::Audit, method, instance(request.get_ref()))
        .map_err(refused)?;
    Ok(request.into_inner())
}

/// What a ListEvents stream reads with, for as long as it runs.
/// Whether `caller` may list the events of `instance_id` (empty: all it may see).
fn may_list_events(caller: &Caller, instance_id: &str) -> Result<(), AuthError> {
    match instance_id {
        "" => caller.authorize_any(Action::Audit, "ListEvents"),
        instance => caller.authorize(Action::Audit, "ListEvents", instance),
    }
}

struct Reader {
    store: Arc<Store>,
    /// Events of instances outside the caller's scope are skipped; checked
    /// again after each policy reload.
    caller: Reauthorized,
    /// The request's instance filter, as given (for the checks).
    instance_id: String,
    /// The follow-stream slot, released when the stream ends.
    _slot: Option<Slot>,
}

/// What a ListEvents stream sends besides the matching events.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Then wait for commits and send them too.
    follow: bool,
    /// Each event with its record as stored.
    with_records: bool,
}

/// Sends matching events page by page; with `follow`, then waits for commits.
async fn stream_events(
    mut reader: Reader,
    filter: EventFilter,
    Shape {
        follow,
        with_records,
    }: Shape,
    outbound: mpsc::Sender<Result<pb::Event, Status>>,
) {
    let store = &reader.store;
    // Subscribe before reading, so no commit between the read and the wait is missed.
    // An instance's own wake-ups only if it exists: a filter naming an unknown
    // id creates no per-instance state (it wakes with the whole log instead).
    let mut wake: watch::Receiver<u64> = match &filter.instance {
        Some(instance) if store.revision(instance).is_ok() => {
            store.board().watch_committed(instance)
        }
        _ => store.watch_head(),
    };
    let stopping = store.stopping();
    tokio::pin!(stopping);
    let mut cursor = Cursor {
        sequence: filter.after_sequence,
        revision: 0,
    };
    loop {
        wake.borrow_and_update();
        let before = cursor;
        let page = match replay::next_events(store.log(), &filter, &mut cursor, PAGE).await {
            Ok(page) => page,
            Err(error) => {
                let _ = outbound.send(Err(status::store(error))).await;
                return;
            }
        };
        // Nothing read after a policy reload goes out before the caller
        // passes the new policy.
        let instance_id = &reader.instance_id;
        if let Err(status) = reader.caller.recheck(|c| may_list_events(c, instance_id)) {
            let _ = outbound.send(Err(status)).await;
            return;
        }
        for record in page {
            if !reader
                .caller
                .caller()
                .may_see(record.event.instance_id.as_str())
            {
                continue;
            }
            let mut event = event_to_pb(&record.event, &record.prev_hash);
            if with_records {
                match record.stored_bytes() {
                    Ok(bytes) => event.record = bytes,
                    Err(error) => {
                        let _ = outbound.send(Err(status::store(error.into()))).await;
                        return;
                    }
                }
            }
            if outbound.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if filter.exhausted(cursor.sequence) {
            return;
        }
        let caught_up = cursor.sequence == before.sequence && cursor.revision == before.revision;
        if !caught_up {
            continue;
        }
        if !follow {
            return;
        }
        tokio::select! {
            changed = wake.changed() => if changed.is_err() { return },
            () = reader.caller.changed() => {}
            _ = outbound.closed() => return,
            () = &mut stopping => {
                // A live tail ends with a status that says why, not as if complete.
                let _ = outbound.send(Err(status::store(StoreError::ShuttingDown))).await;
                return;
            }
        }
    }
}
