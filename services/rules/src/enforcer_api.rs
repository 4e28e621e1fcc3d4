//! The gRPC adapter for `cassette.firewall.v1.EnforcerService`: one
//! bidirectional stream per enforcer. Down: the instance's events after the
//! enforcer's revision, then each new one once durable. Up: acks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cassette_model::{InstanceId, ValidationError};
use cassette_proto::pb::enforcer_service_server::EnforcerService;
use cassette_proto::pb::sync_request::Message;
use cassette_proto::{event_to_pb, pb};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::status::invalid;
use crate::store::Store;
use crate::sync::Connection;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Events per message when an enforcer catches up on a long history.
const MAX_EVENTS_PER_MESSAGE: usize = 512;
/// Messages buffered per stream: a slow enforcer backs up only its own stream.
const STREAM_BUFFER: usize = 2;

pub struct EnforcerApi {
    store: Arc<Store>,
}

impl EnforcerApi {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

type Outbound = Result<pb::SyncResponse, Status>;

#[tonic::async_trait]
impl EnforcerService for EnforcerApi {
    type SyncStream = ReceiverStream<Outbound>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))??;
        let Some(pb::SyncRequest {
            message: Some(Message::Hello(hello)),
        }) = first
        else {
            return Err(invalid(ValidationError::new(
                "hello",
                "the first message of a sync stream must be a Hello",
            )));
        };
        let instance = InstanceId::parse(&hello.instance_id).map_err(invalid)?;
        let span = tracing::info_span!(
            "sync",
            instance_id = %instance,
            enforcer_id = %hello.enforcer_id,
            version = %hello.version,
        );
        span.in_scope(|| {
            tracing::info!(
                applied_revision = hello.applied_revision,
                "enforcer connected"
            );
        });
        let (outbound, stream) = mpsc::channel(STREAM_BUFFER);
        let connection = self.store.board().connect(&instance);
        let sender = tokio::spawn(
            send_events(
                self.store.clone(),
                instance.clone(),
                hello.applied_revision,
                outbound,
            )
            .instrument(span.clone()),
        );
        tokio::spawn(
            receive_acks(self.store.clone(), instance, inbound, connection, sender)
                .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Sends every durable event after `position`, then waits for the next commit.
async fn send_events(
    store: Arc<Store>,
    instance: InstanceId,
    mut position: u64,
    outbound: mpsc::Sender<Outbound>,
) {
    let mut committed = store.board().watch_committed(&instance);
    let mut closing = store.closing();
    loop {
        let durable = *committed.borrow_and_update();
        if durable > position {
            let events = match store.read_events(&instance, position, durable) {
                Ok(events) => events,
                Err(error) => {
                    tracing::error!(%error, "cannot read events for a sync stream");
                    let _ = outbound
                        .send(Err(Status::internal(error.to_string())))
                        .await;
                    return;
                }
            };
            for chunk in events.chunks(MAX_EVENTS_PER_MESSAGE) {
                let message = pb::SyncResponse {
                    events: chunk.iter().map(|e| event_to_pb(e, &[])).collect(),
                };
                if outbound.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            if let Some(last) = events.last() {
                position = last.revision;
            }
            continue;
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            _ = outbound.closed() => return,
            _ = wait_true(&mut closing) => return,
        }
    }
}

/// Records acks until the enforcer goes away or the service stops.
async fn receive_acks(
    store: Arc<Store>,
    instance: InstanceId,
    mut inbound: Streaming<pb::SyncRequest>,
    connection: Connection,
    sender: tokio::task::JoinHandle<()>,
) {
    let connected_at = SystemTime::now();
    let mut closing = store.closing();
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = wait_true(&mut closing) => break,
        };
        match message {
            Ok(Some(pb::SyncRequest {
                message: Some(Message::Ack(ack)),
            })) => record_ack(&store, &instance, &ack, connected_at),
            Ok(Some(_)) => tracing::warn!("ignoring a message that is not an ack"),
            Ok(None) => break,
            Err(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "sync stream broke");
                break;
            }
        }
    }
    sender.abort();
    drop(connection);
    tracing::info!("enforcer disconnected");
}

fn record_ack(store: &Store, instance: &InstanceId, ack: &pb::Ack, connected_at: SystemTime) {
    let committed = store.revision(instance).unwrap_or(0);
    if ack.revision > committed {
        tracing::warn!(
            revision = ack.revision,
            committed,
            "ignoring an ack of a revision never sent"
        );
        return;
    }
    // Latency is commit -> ack on this service's clock, for events committed
    // while the stream was open (a replayed history would count its age).
    let latency = store
        .commit_time(instance, ack.revision)
        .filter(|committed| *committed >= connected_at)
        .and_then(|committed| SystemTime::now().duration_since(committed).ok());
    let result = if ack.ok {
        Ok(())
    } else {
        Err(ack.error.clone())
    };
    tracing::info!(
        revision = ack.revision,
        ok = ack.ok,
        error = (!ack.ok).then_some(ack.error.as_str()),
        latency_us = latency.map(|l| l.as_micros() as u64),
        "ack"
    );
    store
        .board()
        .record_ack(instance, ack.revision, result, latency);
}

async fn wait_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}
