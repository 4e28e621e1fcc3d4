//! `ReplicaService`: what this replica shares with the other replicas of its
//! shared log (its enforcers' sync state, the reports others asked for),
//! streamed to the replicas that follow it. Replica identities only.

use std::sync::Arc;

use cassette_auth::Authenticator;
use cassette_proto::pb;
use cassette_proto::pb::replica_service_server::ReplicaService;
use cassette_service::peers::SharedBatch;
use cassette_service::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::grpc::caller::{caller, Reauthorized};
use crate::grpc::status::{self, refused};

const METHOD: &str = "FollowShared";

#[derive(Clone)]
pub struct ReplicaApi {
    store: Arc<Store>,
    authenticator: Arc<Authenticator>,
}

impl ReplicaApi {
    pub fn new(store: Arc<Store>, authenticator: Arc<Authenticator>) -> Self {
        Self {
            store,
            authenticator,
        }
    }
}

fn batch_to_pb(replica: &str, batch: SharedBatch) -> pb::SharedValues {
    pb::SharedValues {
        replica: replica.to_owned(),
        complete: batch.complete,
        values: batch
            .values
            .into_iter()
            .map(|(name, value)| pb::SharedValue { name, value })
            .collect(),
    }
}

#[tonic::async_trait]
impl ReplicaService for ReplicaApi {
    type FollowSharedStream = ReceiverStream<Result<pb::SharedValues, Status>>;

    async fn follow_shared(
        &self,
        request: Request<pb::FollowSharedRequest>,
    ) -> Result<Response<Self::FollowSharedStream>, Status> {
        let caller = caller(&request)?;
        let mut reauthorized = Reauthorized::new(self.authenticator.clone(), caller.clone());
        caller.authorize_replica(METHOD).map_err(refused)?;
        let replicas = self.store.replicas().ok_or_else(status::not_a_replica)?;
        let follower = request.into_inner().replica;
        let span = tracing::info_span!("request", method = METHOD, follower = %follower, principal = %caller);
        let id = replicas.id().to_owned();
        let (first, mut following) = replicas.published().follow();
        let (outbound, stream) = mpsc::channel(4);
        let stopping = self.store.stopping();
        tokio::spawn(
            async move {
                tracing::info!(values = first.values.len(), "a replica follows this one's shared values");
                tokio::pin!(stopping);
                let mut batch = Some(first);
                loop {
                    if let Some(batch) = batch.take() {
                        if outbound.send(Ok(batch_to_pb(&id, batch))).await.is_err() {
                            return;
                        }
                    }
                    tokio::select! {
                        next = following.next() => batch = Some(next),
                        () = reauthorized.changed() => {
                            if let Err(refused) = reauthorized.recheck(|c| c.authorize_replica(METHOD)) {
                                let _ = outbound.send(Err(refused)).await;
                                return;
                            }
                        }
                        () = outbound.closed() => return,
                        () = &mut stopping => {
                            let _ = outbound.send(Err(status::stopping())).await;
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
