//! The gRPC adapter for `cassette.firewall.v1.AuditService`.

use std::sync::Arc;
use std::time::SystemTime;

use cassette_eventlog::hex;
use cassette_model::{ActorId, InstanceId, ValidationError};
use cassette_proto::pb::audit_service_server::AuditService;
use cassette_proto::pb::get_firewall_at_request::At as PbAt;
use cassette_proto::{event_to_pb, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::audit::{self, At, Cursor, EventFilter};
use crate::status::{invalid, Violations};
use crate::store::Store;

/// Records read per step of a ListEvents stream.
const PAGE: usize = 1000;

pub struct AuditApi {
    store: Arc<Store>,
}

impl AuditApi {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
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
        let request = request.into_inner();
        let mut v = Violations::default();
        let instance = v.check(optional_instance(&request.instance_id));
        let since = v.check(time("since", request.since));
        let until = v.check(time("until", request.until));
        let actor = match request.actor.as_str() {
            "" => Some(None),
            a => v.check(ActorId::parse(a).map(|_| Some(a.to_owned()))),
        };
        v.finish()?;
        let (Some(instance), Some(since), Some(until), Some(actor)) =
            (instance, since, until, actor)
        else {
            return Err(Status::internal("a validated field is missing"));
        };
        let filter = EventFilter {
            instance,
            after_sequence: request.after_sequence,
            until_sequence: request.until_sequence,
            since,
            until,
            actor,
        };
        let span = tracing::info_span!("request", method = "ListEvents", instance_id = ?filter.instance, follow = request.follow);
        let (outbound, stream) = mpsc::channel(16);
        tokio::spawn(
            stream_events(self.store.clone(), filter, request.follow, outbound).instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    #[tracing::instrument(name = "request", skip_all, fields(method = "GetFirewallAt", instance_id = %request.get_ref().instance_id))]
    async fn get_firewall_at(
        &self,
        request: Request<pb::GetFirewallAtRequest>,
    ) -> Result<Response<pb::FirewallAt>, Status> {
        let request = request.into_inner();
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
        v.finish()?;
        let (Some(instance), Some(at)) = (instance, at) else {
            return Err(Status::internal("a validated field is missing"));
        };
        let found = audit::firewall_at(self.store.log(), &instance, at)?;
        Ok(Response::new(found.to_pb()))
    }

    #[tracing::instrument(name = "request", skip_all, fields(method = "DiffFirewall", instance_id = %request.get_ref().instance_id))]
    async fn diff_firewall(
        &self,
        request: Request<pb::DiffFirewallRequest>,
    ) -> Result<Response<pb::FirewallDiff>, Status> {
        let request = request.into_inner();
        let instance = InstanceId::parse(&request.instance_id).map_err(invalid)?;
        let diff = audit::diff(
            self.store.log(),
            &instance,
            request.from_revision,
            request.to_revision,
        )?;
        Ok(Response::new(diff.to_pb()))
    }

    #[tracing::instrument(name = "request", skip_all, fields(method = "VerifyLog"))]
    async fn verify_log(
        &self,
        request: Request<pb::VerifyLogRequest>,
    ) -> Result<Response<pb::VerifyLogResponse>, Status> {
        drop(request);
        let store = self.store.clone();
        let verification = tokio::task::spawn_blocking(move || store.log().verify())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(verification_to_pb(&verification)))
    }
}

pub fn verification_to_pb(v: &cassette_eventlog::Verification) -> pb::VerifyLogResponse {
    let (first_bad_sequence, reason) = v.first_bad.clone().unwrap_or_default();
    pb::VerifyLogResponse {
        ok: v.ok(),
        events_checked: v.events_checked,
        head_sequence: v.head.sequence,
        head_hash: hex(&v.head.hash),
        first_bad_sequence,
        reason,
    }
}

/// Sends matching events page by page; with `follow`, then waits for commits.
async fn stream_events(
    store: Arc<Store>,
    filter: EventFilter,
    follow: bool,
    outbound: mpsc::Sender<Result<pb::Event, Status>>,
) {
    // Subscribe before reading, so no commit between the read and the wait is missed.
    let mut wake: watch::Receiver<u64> = match &filter.instance {
        Some(instance) => store.board().watch_committed(instance),
        None => store.watch_head(),
    };
    let mut closing = store.closing();
    let mut cursor = Cursor {
        sequence: filter.after_sequence,
        revision: 0,
    };
    loop {
        wake.borrow_and_update();
        let before = cursor;
        let page = match audit::next_events(store.log(), &filter, &mut cursor, PAGE) {
            Ok(page) => page,
            Err(error) => {
                let _ = outbound.send(Err(error.into())).await;
                return;
            }
        };
        for record in page {
            let event = event_to_pb(&record.event, &record.prev_hash);
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
            _ = outbound.closed() => return,
            _ = closing.wait_for(|c| *c) => return,
        }
    }
}
