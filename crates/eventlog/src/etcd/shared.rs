//! Small values replicas share beside the log, in the same etcd cluster:
//! each replica publishes under `<prefix>/<space>/<name>/<replica>`, on an
//! etcd lease of its own, so what a replica published disappears soon after
//! the replica does (a kill -9 included), and every replica follows the
//! others' values as they change. The rules service shares its enforcers'
//! sync state this way (an ack received by one replica shows on all).
//!
//! Never part of the log: these values are what is happening now, not history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use tokio::sync::{mpsc, Notify};
use tonic::transport::Channel;

use super::api;
use super::{needs_token, open_watch, prefix_end, Auth, EtcdLog};

/// A change of another replica's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedChange {
    pub name: String,
    pub replica: String,
    /// `None`: removed (the replica said so, or its lease expired).
    pub value: Option<Vec<u8>>,
}

/// Publishes this replica's values (latest wins, written in the background).
#[derive(Clone)]
pub struct SharedWriter {
    pending: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    wake: Arc<Notify>,
}

impl SharedWriter {
    /// Sets this replica's value of `name` (coalesced: only the latest is
    /// written). Never blocks on etcd; calls are kept in order.
    pub fn publish(&self, name: &str, value: Vec<u8>) {
        self.pending().insert(name.to_owned(), value);
        self.wake.notify_one();
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Space {
    channels: Vec<Channel>,
    auth: Auth,
    /// `<prefix>/<space>/`
    root: String,
    replica: String,
    ttl: Duration,
}

impl EtcdLog {
    /// Shares values in `space` as `replica` (its values live as long as it
    /// renews a lease of `ttl`), and follows every other replica's.
    pub fn share(
        &self,
        space: &str,
        replica: &str,
        ttl: Duration,
    ) -> (SharedWriter, mpsc::Receiver<SharedChange>) {
        let space = Arc::new(Space {
            channels: self.channels().to_vec(),
            auth: self.auth().clone(),
            root: format!("{}/{space}/", self.prefix()),
            replica: replica.to_owned(),
            ttl,
        });
        let writer = SharedWriter {
            pending: Arc::default(),
            wake: Arc::default(),
        };
        let (changes, followed) = mpsc::channel(1024);
        tokio::spawn(write(space.clone(), writer.clone()));
        tokio::spawn(follow(space, changes));
        (writer, followed)
    }
}

/// Writes what is published, on a lease kept alive in the background; a new
/// lease (after a partition made etcd expire the old) gets every value again.
async fn write(space: Arc<Space>, writer: SharedWriter) {
    let mut member = 0usize;
    let mut written: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        let channel = space.channels[member % space.channels.len()].clone();
        member += 1;
        let mut leases = api::lease_client::LeaseClient::new(space.auth.member(&channel));
        let mut kv = api::kv_client::KvClient::new(space.auth.member(&channel));
        let ttl = i64::try_from(space.ttl.as_secs().max(1)).unwrap_or(10);
        let lease = match leases
            .lease_grant(api::LeaseGrantRequest { ttl, id: 0 })
            .await
        {
            Ok(granted) => granted.into_inner().id,
            Err(status) => {
                tracing::debug!(error = %status.message(), "etcd lease grant failed");
                if needs_token(&status) {
                    let _ = space.auth.refresh(&channel).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Everything this replica published goes on the new lease.
        {
            let mut pending = writer.pending();
            for (name, value) in written.drain() {
                pending.entry(name).or_insert(value);
            }
        }
        // The lease is kept alive on its own, however long the writes take
        // (thousands of instances' states can be waiting after a start).
        let lost = Arc::new(Notify::new());
        let keeper = tokio::spawn(keep_alive(leases, lease, space.ttl, lost.clone()));
        'lease: loop {
            tokio::select! {
                () = lost.notified() => break 'lease,
                () = writer.wake.notified() => {
                    let batch: Vec<(String, Vec<u8>)> = writer.pending().drain().collect();
                    // Up to PUTS_PER_TXN values per round trip.
                    let mut rest = batch.as_slice();
                    while !rest.is_empty() {
                        let (chunk, after) = rest.split_at(rest.len().min(PUTS_PER_TXN));
                        rest = after;
                        let puts = chunk
                            .iter()
                            .map(|(name, value)| api::RequestOp {
                                request: Some(api::request_op::Request::RequestPut(api::PutRequest {
                                    key: format!("{}{name}/{}", space.root, space.replica).into_bytes(),
                                    value: value.clone(),
                                    lease,
                                    prev_kv: false,
                                })),
                            })
                            .collect();
                        let txn = api::TxnRequest { compare: vec![], success: puts, failure: vec![] };
                        if kv.txn(txn).await.is_err() {
                            // Not written: back in the queue, unless newer values came.
                            let mut pending = writer.pending();
                            for (name, value) in chunk.iter().chain(rest) {
                                pending.entry(name.clone()).or_insert_with(|| value.clone());
                            }
                            drop(pending);
                            writer.wake.notify_one();
                            break 'lease;
                        }
                        written.extend(chunk.iter().cloned());
                    }
                }
            }
        }
        keeper.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often a follower's watch is asked for its progress.
const PROGRESS_CHECK: Duration = Duration::from_secs(1);
/// A watch that answered nothing, progress included, for this long is silent.
const SILENT_AFTER: Duration = Duration::from_millis(2500);

/// Values written per transaction (etcd takes 128 operations by default).
const PUTS_PER_TXN: usize = 100;

/// Renews `lease` every third of its time to live; says so on `lost` when
/// etcd no longer does (expired, or the member is gone).
async fn keep_alive(
    mut leases: api::lease_client::LeaseClient<super::Member>,
    lease: i64,
    ttl: Duration,
    lost: Arc<Notify>,
) {
    let (beats, outbound) = mpsc::channel(1);
    // etcd answers the stream (headers included) only once it has a
    // request: the first beat goes before the call is awaited.
    if beats
        .send(api::LeaseKeepAliveRequest { id: lease })
        .await
        .is_err()
    {
        lost.notify_one();
        return;
    }
    let Ok(stream) = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(outbound))
        .await
    else {
        lost.notify_one();
        return;
    };
    let mut alive = stream.into_inner();
    let mut beat = tokio::time::interval(ttl / 3);
    loop {
        beat.tick().await;
        if beats
            .send(api::LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            break;
        }
        match alive.message().await {
            Ok(Some(answer)) if answer.ttl > 0 => {}
            _ => break,
        }
    }
    lost.notify_one();
}

/// Lists the space, then watches it from the revision listed; again from a
/// fresh list whenever the watch ends (a compaction, a member lost, a member
/// cut off from the majority: the watch asks for a leader) or falls silent:
/// the watch is asked for its progress every [`PROGRESS_CHECK`], and one
/// that has not answered anything for [`SILENT_AFTER`] (its member frozen,
/// before keepalive gives up on it) is given up for one on another member.
async fn follow(space: Arc<Space>, changes: mpsc::Sender<SharedChange>) {
    let mut member = 0usize;
    let root = space.root.clone().into_bytes();
    let end = prefix_end(&root);
    while !changes.is_closed() {
        let channel = space.channels[member % space.channels.len()].clone();
        member += 1;
        let mut kv = api::kv_client::KvClient::new(space.auth.member(&channel));
        let listed = kv
            .range(api::RangeRequest {
                key: root.clone(),
                range_end: end.clone(),
                ..Default::default()
            })
            .await;
        let listed = match listed {
            Ok(listed) => listed.into_inner(),
            Err(status) => {
                if needs_token(&status) {
                    let _ = space.auth.refresh(&channel).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let revision = listed.header.map_or(0, |h| h.revision);
        for kv in listed.kvs {
            if let Some(change) = change_of(&space, &kv.key, Some(kv.value)) {
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        }
        let create = api::WatchCreateRequest {
            key: root.clone(),
            range_end: end.clone(),
            start_revision: revision + 1,
            ..Default::default()
        };
        let (requests, mut stream) = match open_watch(&space.auth, &channel, create).await {
            Ok(opened) => opened,
            Err(status) => {
                if needs_token(&status) {
                    let _ = space.auth.refresh(&channel).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut progress = tokio::time::interval(PROGRESS_CHECK);
        let mut answered = tokio::time::Instant::now();
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = progress.tick() => {
                    if answered.elapsed() > SILENT_AFTER {
                        tracing::warn!(
                            space = %space.root,
                            "the etcd watch of shared values fell silent; watching through another member"
                        );
                        break;
                    }
                    let ask = api::WatchRequest {
                        request_union: Some(api::watch_request::RequestUnion::ProgressRequest(
                            api::WatchProgressRequest {},
                        )),
                    };
                    // Never wait on a stalled stream: a full queue is an
                    // unanswered ask already.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = requests.try_send(ask) {
                        break;
                    }
                    continue;
                }
            };
            answered = tokio::time::Instant::now();
            match message {
                Ok(Some(answer)) if !answer.canceled => {
                    for event in answer.events {
                        let Some(kv) = event.kv else { continue };
                        let deleted = event.r#type == api::watch_event::EventType::Delete as i32;
                        let value = (!deleted).then_some(kv.value);
                        if let Some(change) = change_of(&space, &kv.key, value) {
                            if changes.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `<root><name>/<replica>` as a change of another replica's value.
fn change_of(space: &Space, key: &[u8], value: Option<Vec<u8>>) -> Option<SharedChange> {
    let key = std::str::from_utf8(key).ok()?;
    let (name, replica) = key.strip_prefix(&space.root)?.rsplit_once('/')?;
    if replica == space.replica {
        return None;
    }
    Some(SharedChange {
        name: name.to_owned(),
        replica: replica.to_owned(),
        value,
    })
}
