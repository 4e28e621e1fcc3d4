//! The gRPC adapter for `cassette.firewall.v1.EnforcerService`: one
//! bidirectional stream per enforcer. Down: the instance's events after the
//! enforcer's revision, then each new one once durable. Up: acks.
//!
//! The channel cannot lie: only the instance's own enforcer identity may open
//! it, an ack counts only for a revision this stream was sent, an ok ack must
//! carry the ruleset hash of what was sent up to that revision (the stream
//! folds what it sends, so checking an ack costs a lookup), a newer
//! stream for the instance closes the older one, and a policy reload that
//! revokes the enforcer's identity closes its stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cassette_auth::Authenticator;
use cassette_model::{fold, Firewall, InstanceId, ValidationError};
use cassette_proto::pb::enforcer_service_server::EnforcerService;
use cassette_proto::pb::sync_request::Message;
use cassette_proto::{event_to_pb, pb};
use cassette_ruleset::Ruleset;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{oneshot, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::grpc::caller::{caller, Reauthorized};
use crate::grpc::present;
use crate::grpc::requests;
use crate::grpc::status::{self, invalid, refused, stream_replaced, Violations};
use cassette_service::sync::{Connection, Hello};
use cassette_service::{RulesMetrics, Store};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Events per message when an enforcer catches up on a long history.
const MAX_EVENTS_PER_MESSAGE: usize = 512;
/// How much of an ack's error message is kept.
const MAX_ACK_ERROR_BYTES: usize = 4096;
/// How many of a stream's last messages an ack may name. An enforcer acks
/// the revision it folded to after reading what had arrived (the end of a
/// message), and it cannot be far behind: a stream builds its next message
/// only when its HTTP/2 window takes more, from all that is durable by then,
/// so an enforcer that falls behind gets fewer, larger messages.
const ACKABLE_MESSAGES: usize = 64;

/// What a stream sent that its enforcer may ack: the highest revision, and
/// the ruleset hash at the end of each of its last [`ACKABLE_MESSAGES`]
/// messages, computed by folding what it sent as it sent it.
#[derive(Default)]
struct Sent {
    highest: AtomicU64,
    hashes: Mutex<VecDeque<(u64, String, SystemTime)>>,
}

impl Sent {
    /// A message ending at `revision`, whose state renders to `hash`, is
    /// about to be sent.
    fn record(&self, revision: u64, hash: String) {
        let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if hashes.len() == ACKABLE_MESSAGES {
            hashes.pop_front();
        }
        hashes.push_back((revision, hash, SystemTime::now()));
        self.highest.fetch_max(revision, Ordering::AcqRel);
    }

    fn highest(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }

    /// The ruleset hash of the recent message that ended at `revision`, and
    /// when it was sent.
    fn hash_at(&self, revision: u64) -> Option<(String, SystemTime)> {
        let hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        hashes
            .iter()
            .rev()
            .find(|(r, _, _)| *r == revision)
            .map(|(_, hash, sent)| (hash.clone(), *sent))
    }
}

pub struct EnforcerApi {
    store: Arc<Store>,
    authenticator: Arc<Authenticator>,
}

impl EnforcerApi {
    pub fn new(store: Arc<Store>, authenticator: Arc<Authenticator>) -> Self {
        Self {
            store,
            authenticator,
        }
    }
}

/// Why an open stream ends before its enforcer or the service goes away.
enum Ending {
    /// A newer stream for the instance opened.
    Replaced,
    /// The policy no longer lets its caller sync the instance.
    Refused(Status),
}

/// Resolves when the stream must end: `replaced`, or a policy reload after
/// which its caller may no longer sync `instance` (its identity revoked).
async fn ending(
    replaced: impl std::future::Future<Output = ()>,
    mut caller: Reauthorized,
    instance: InstanceId,
) -> Ending {
    let refused = async {
        loop {
            caller.changed().await;
            if let Err(status) = caller.recheck(|c| c.authorize_sync(instance.as_str())) {
                return status;
            }
        }
    };
    tokio::select! {
        () = replaced => Ending::Replaced,
        status = refused => Ending::Refused(status),
    }
}

type Outbound = Result<pb::SyncResponse, Status>;
type SyncStream = Pin<Box<dyn Stream<Item = Outbound> + Send>>;

#[tonic::async_trait]
impl EnforcerService for EnforcerApi {
    type SyncStream = SyncStream;

    async fn sync(
        &self,
        request: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let caller = caller(&request)?;
        // From the start: a reload while the stream waits for its Hello or
        // its firewall counts too.
        let reauthorized = Reauthorized::new(self.authenticator.clone(), caller.clone());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| status::no_hello(HELLO_TIMEOUT))??;
        let Some(pb::SyncRequest {
            message: Some(Message::Hello(hello)),
        }) = first
        else {
            return Err(invalid(ValidationError::new(
                "hello",
                "the first message of a sync stream must be a Hello",
            )));
        };
        caller.authorize_sync(&hello.instance_id).map_err(refused)?;
        // From a log that failed verification, enforcers keep what they have.
        self.store.read_only().map_err(status::store)?;
        let mut v = Violations::default();
        let instance = requests::hello(&hello, &mut v);
        let instance = v.finish_with(instance)?;
        let span = tracing::info_span!(
            "sync",
            instance_id = %instance,
            principal = %caller,
            enforcer_id = %hello.enforcer_id,
            version = %hello.version,
        );
        span.in_scope(|| {
            tracing::info!(
                applied_revision = hello.applied_revision,
                "enforcer connected"
            );
            if !hello.locally_reverted.is_empty() {
                // The service's own revert (or a confirmation it took in
                // time) settles each in the log; the stream brings it.
                tracing::warn!(
                    reverted_revisions = ?hello.locally_reverted,
                    "the enforcer reverted unconfirmed changes itself while it could reach no rules service"
                );
            }
        });
        // The response is polled by the stream's own task in the HTTP/2
        // server: what it sends is built there, with no task or channel of
        // ours between (one fewer wake-up per event, one fewer task per
        // connected enforcer). It starts once the firewall exists and the
        // stream's place in the log is settled below.
        let (start, started) = oneshot::channel();
        let store = self.store.clone();
        let serve = async move {
            let mut start = start;
            // Sync state exists only for instances that exist: a Hello for an
            // unknown id waits for the firewall without creating anything.
            if !wait_until_exists(&store, &instance, &mut start).await {
                return;
            }
            let connection = store.board().connect(&instance);
            // Boxed, here and below: a future awaited once (or now and then)
            // would otherwise be part of the stream's task, which lives as long
            // as the enforcer is connected (kilobytes each, times every enforcer).
            let (position, verified) = Box::pin(resume_position(&store, &instance, &hello)).await;
            store.board().record_hello(
                &instance,
                Hello {
                    revision: position,
                    verified,
                    state_error: (!hello.state_error.is_empty())
                        .then(|| truncate(&hello.state_error, MAX_ACK_ERROR_BYTES).to_owned()),
                },
            );
            let sent = Arc::new(Sent::default());
            let end = || {
                ending(
                    connection.replaced(),
                    reauthorized.clone(),
                    instance.clone(),
                )
            };
            let (acks_open, acks_ended) = oneshot::channel();
            let (sender_alive, sender_done) = oneshot::channel();
            let sender = Sender::start(
                store.clone(),
                instance.clone(),
                position,
                sent.clone(),
                Box::pin(end()),
                acks_ended,
                sender_alive,
            )
            .await;
            if start.send(sender.map(Box::new)).is_err() {
                return; // the enforcer went away
            }
            let ended = Box::pin(end());
            let state = StreamState {
                store,
                instance,
                _connection: connection,
                sent,
                connected_at: SystemTime::now(),
            };
            receive_acks(state, inbound, sender_done, ended).await;
            // The stream's response ends with its acks.
            drop(acks_open);
        };
        tokio::spawn(serve.instrument(span.clone()));
        Ok(Response::new(outbound(started, span)))
    }
}

/// Where a new stream starts: after the Hello's revision, unless the log
/// disagrees. A Hello ahead of the log (the service's data was restored from
/// an older backup), or one whose ruleset hash is not what the log's revision
/// renders to (a log that diverged since), gets the log's whole history from
/// revision 0: the log's answer wins. True with a position whose ruleset hash
/// the Hello vouched for.
async fn resume_position(store: &Store, instance: &InstanceId, hello: &pb::Hello) -> (u64, bool) {
    let claimed = hello.applied_revision;
    let latest = store.revision(instance).unwrap_or(0);
    if claimed > latest {
        store.metrics().history_resends.inc();
        tracing::warn!(
            applied_revision = claimed,
            latest,
            "the enforcer claims a revision the log does not have: resyncing it from revision 0"
        );
        return (0, false);
    }
    if claimed == 0 || hello.applied_ruleset_hash.is_empty() {
        return (claimed, false);
    }
    match store
        .ruleset_hash_matches(instance, claimed, &hello.applied_ruleset_hash)
        .await
    {
        Ok((true, _)) => (claimed, true),
        Ok((false, expected)) => {
            store.metrics().history_resends.inc();
            tracing::warn!(
                applied_revision = claimed,
                enforcer_hash = %truncate(&hello.applied_ruleset_hash, 64),
                log_hash = %expected,
                "the enforcer's kernel does not hold what the log's revision renders to: resyncing it from revision 0"
            );
            (0, false)
        }
        Err(error) => {
            tracing::error!(%error, applied_revision = claimed, "cannot check the Hello's ruleset hash; resuming unverified");
            (claimed, false)
        }
    }
}

/// Waits until `instance` has a firewall (or had one: a deleted firewall's
/// enforcer still applies the deletion). False if the stream or the service
/// ended first.
async fn wait_until_exists(
    store: &Store,
    instance: &InstanceId,
    start: &mut oneshot::Sender<Started>,
) -> bool {
    let mut head = store.watch_head();
    let stopping = store.stopping();
    tokio::pin!(stopping);
    loop {
        head.borrow_and_update();
        if store.revision(instance).is_ok() {
            return true;
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return false },
            () = start.closed() => return false,
            () = &mut stopping => return false,
        }
    }
}

/// A stream's sending side, handed to its response once the firewall
/// exists and the stream's place in the log is settled, or why it cannot
/// start.
type Started = Result<Box<Sender>, Status>;

/// Where a stream's response is.
enum Sending {
    /// Waiting for the firewall to exist and the stream's position.
    Waiting(oneshot::Receiver<Started>),
    Running(Box<Sender>),
    /// It sent its last message (an error).
    Done,
}

/// A sync stream's response: every durable event after the enforcer's
/// position, then each new one once committed.
fn outbound(started: oneshot::Receiver<Started>, span: tracing::Span) -> SyncStream {
    let messages = futures_util::stream::unfold(Sending::Waiting(started), |sending| async move {
        let mut sender = match sending {
            Sending::Waiting(started) => match started.await.ok()? {
                Ok(sender) => sender,
                Err(status) => return Some((Err(status), Sending::Done)),
            },
            Sending::Running(sender) => sender,
            Sending::Done => return None,
        };
        match sender.next().await? {
            Ok(message) => Some((Ok(message), Sending::Running(sender))),
            Err(status) => Some((Err(status), Sending::Done)),
        }
    });
    Box::pin(Instrumented(Box::pin(messages), span))
}

/// A stream polled inside `span`, as a spawned task's future would be.
struct Instrumented<S>(S, tracing::Span);

impl<S: Stream + Unpin> Stream for Instrumented<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let _entered = this.1.enter();
        Pin::new(&mut this.0).poll_next(cx)
    }
}

/// The sending side of a sync stream; `sent` records each message's last
/// revision and what the instance's ruleset is then.
struct Sender {
    store: Arc<Store>,
    instance: InstanceId,
    position: u64,
    /// The firewall the enforcer folds to from what this stream sends: the
    /// projection's own (shared, not copied) whenever it is the same
    /// revision, as it is for a stream that keeps up.
    folded: Option<Arc<Firewall>>,
    committed: watch::Receiver<u64>,
    report_requests: watch::Receiver<u64>,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    ending: Pin<Box<dyn Future<Output = Ending> + Send>>,
    acks_ended: oneshot::Receiver<()>,
    sent: Arc<Sent>,
    /// Dropped when the response is done sending.
    _done: oneshot::Sender<()>,
}

impl Sender {
    /// Sends after `position`, until `ending` or `acks_ended` (the stream's
    /// acks ended: the response ends with them) resolves.
    async fn start(
        store: Arc<Store>,
        instance: InstanceId,
        position: u64,
        sent: Arc<Sent>,
        ending: Pin<Box<dyn Future<Output = Ending> + Send>>,
        acks_ended: oneshot::Receiver<()>,
        done: oneshot::Sender<()>,
    ) -> Result<Self, Status> {
        let folded = if position == 0 {
            None
        } else {
            match Box::pin(store.firewall_at(&instance, position)).await {
                Ok(firewall) => Some(firewall),
                Err(error) => {
                    tracing::error!(%error, position, "cannot read the firewall a sync stream resumes from");
                    return Err(status::store(error));
                }
            }
        };
        let committed = store.board().watch_committed(&instance);
        let mut report_requests = store.board().watch_report_requests(&instance);
        report_requests.borrow_and_update();
        Ok(Self {
            stopping: Box::pin(store.stopping()),
            store,
            instance,
            position,
            folded,
            committed,
            report_requests,
            ending,
            acks_ended,
            sent,
            _done: done,
        })
    }

    /// The next message: the events after `position` once durable, a
    /// request for a report, or why the stream ends. None when it just ends.
    async fn next(&mut self) -> Option<Outbound> {
        loop {
            let durable = *self.committed.borrow_and_update();
            if durable > self.position {
                return self.events_until(durable).await;
            }
            tokio::select! {
                changed = self.committed.changed() => if changed.is_err() { return None },
                asked = self.report_requests.changed() => {
                    asked.ok()?;
                    return Some(Ok(pb::SyncResponse { events: Vec::new(), report_now: true }));
                }
                _ = &mut self.acks_ended => return None,
                () = &mut self.stopping => return None,
                why = &mut self.ending => {
                    return Some(Err(match why {
                        Ending::Replaced => {
                            tracing::info!("a newer sync stream for the instance opened; closing this one");
                            stream_replaced(self.instance.as_str())
                        }
                        Ending::Refused(status) => {
                            tracing::warn!(reason = status.message(), "the policy no longer lets this enforcer sync: closing its stream");
                            status
                        }
                    }));
                }
            }
        }
    }

    /// A message of the events after `position`, up to `durable` or a
    /// page's worth: a long history is never held in memory whole. None if
    /// the log lacks them: the stream just ends.
    async fn events_until(&mut self, durable: u64) -> Option<Outbound> {
        let (store, instance, position) = (&self.store, &self.instance, self.position);
        let until = durable.min(position.saturating_add(MAX_EVENTS_PER_MESSAGE as u64));
        // What the writer just committed comes with the wake-up; a stream
        // behind that reads the log.
        let events = match store
            .board()
            .take_committed_events(instance, position, until)
        {
            Some(events) => events,
            None => match Box::pin(store.read_events(instance, position, until)).await {
                Ok(events) => events,
                Err(error) => {
                    tracing::error!(%error, "cannot read events for a sync stream");
                    return Some(Err(status::store(error)));
                }
            },
        };
        let Some(last) = events.last().map(|e| e.revision) else {
            tracing::error!(
                position,
                until,
                "the log has no events where the projection has them"
            );
            return None;
        };
        match store.get(instance) {
            // The projection is the fold of the same log: nothing to fold here.
            Ok(current) if current.revision == last => self.folded = Some(current),
            _ => {
                let mut firewall = self.folded.take().map(Arc::unwrap_or_clone);
                for event in &events {
                    firewall = match fold(firewall, event) {
                        Ok(firewall) => Some(firewall),
                        Err(error) => {
                            tracing::error!(%error, revision = event.revision, "the log's events do not fold for a sync stream");
                            return Some(Err(status::store(error.into())));
                        }
                    };
                }
                self.folded = firewall.map(Arc::new);
            }
        }
        // Before the message goes: the enforcer may ack as soon as it has it.
        self.sent
            .record(last, Ruleset::of(self.folded.as_deref()).hash());
        self.position = last;
        Some(Ok(pb::SyncResponse {
            report_now: false,
            events: events.iter().map(|e| event_to_pb(e, &[])).collect(),
        }))
    }
}

/// One sync stream's side of the board.
struct StreamState {
    store: Arc<Store>,
    instance: InstanceId,
    /// Held while the stream lives: dropping it tells the board the
    /// enforcer left.
    _connection: Connection,
    /// What this stream sent.
    sent: Arc<Sent>,
    connected_at: SystemTime,
}

/// Records acks until the enforcer goes away, the stream must end (a newer
/// stream, a revoked identity), or the service stops.
async fn receive_acks(
    state: StreamState,
    mut inbound: Streaming<pb::SyncRequest>,
    mut sender_done: oneshot::Receiver<()>,
    ending: impl std::future::Future<Output = Ending>,
) {
    let stopping = state.store.stopping();
    tokio::pin!(stopping);
    tokio::pin!(ending);
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = &mut stopping => break,
            why = &mut ending => {
                if matches!(why, Ending::Replaced) {
                    state.store.metrics().replaced_streams.inc();
                }
                // Let the sender tell the enforcer why, unless it is stuck.
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut sender_done).await;
                break;
            }
        };
        match message {
            Ok(Some(pb::SyncRequest {
                message: Some(Message::Ack(ack)),
            })) => Box::pin(state.record_ack(&ack)).await,
            Ok(Some(pb::SyncRequest {
                message: Some(Message::Report(report)),
            })) => cassette_service::record_report(
                &state.store,
                &state.instance,
                present::observed(&report, SystemTime::now()),
            ),
            Ok(Some(_)) => tracing::warn!("ignoring a message that is not an ack"),
            Ok(None) => break,
            Err(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "sync stream broke");
                break;
            }
        }
    }
    drop(state);
    tracing::info!("enforcer disconnected");
}

impl StreamState {
    async fn record_ack(&self, ack: &pb::Ack) {
        let store = &self.store;
        let sent = self.sent.highest();
        if ack.revision == 0 || ack.revision > sent {
            store.metrics().ignored_acks.inc();
            tracing::warn!(
                revision = ack.revision,
                sent,
                "ignoring an ack of a revision this stream was never sent"
            );
            return;
        }
        let sent_message = self.sent.hash_at(ack.revision);
        let result = if ack.ok {
            match sent_message.as_ref().map(|(hash, _)| hash.as_str()) {
                Some(expected) if expected == ack.ruleset_hash => Ok(()),
                // An enforcer of an earlier version renders the same ports
                // differently (checked against the revision's ruleset).
                Some(_)
                    if store
                        .ruleset_hash_matches(&self.instance, ack.revision, &ack.ruleset_hash)
                        .await
                        .is_ok_and(|(matches, _)| matches) =>
                {
                    Ok(())
                }
                Some(expected) => {
                    store.metrics().ruleset_hash_mismatches.inc();
                    Err(format!(
                        "the kernel does not hold what was sent: the enforcer acknowledged revision {} \
                         with ruleset hash {:?}, but that revision renders to {expected}",
                        ack.revision,
                        truncate(&ack.ruleset_hash, 64),
                    ))
                }
                None => {
                    store.metrics().ignored_acks.inc();
                    tracing::warn!(
                        revision = ack.revision,
                        "ignoring an ack of a revision that ended none of this stream's last messages"
                    );
                    return;
                }
            }
        } else {
            Err(truncate(&ack.error, MAX_ACK_ERROR_BYTES).to_owned())
        };
        // Latency is commit -> ack on this service's clock, for events committed
        // while the stream was open (a replayed history would count its age).
        let committed = store
            .commit_time(&self.instance, ack.revision)
            .await
            .filter(|committed| *committed >= self.connected_at);
        let now = SystemTime::now();
        let latency = committed.and_then(|committed| now.duration_since(committed).ok());
        if let (Some(committed), Some((_, sent))) = (committed, sent_message) {
            observe_breakdown(store.metrics(), ack, committed, sent, now);
        }
        tracing::info!(
            revision = ack.revision,
            ok = result.is_ok(),
            error = result.as_ref().err().map(String::as_str),
            latency_us = latency.map(|l| l.as_micros() as u64),
            "ack"
        );
        store
            .board()
            .record_ack(&self.instance, ack.revision, result, latency);
    }
}

/// Where an ack's latency went (of an event committed while the stream was
/// open, acked for a batch the enforcer received): the service's part by
/// its clock, the enforcer's as its ack tells.
fn observe_breakdown(
    metrics: &RulesMetrics,
    ack: &pb::Ack,
    committed: SystemTime,
    sent: SystemTime,
    acked: SystemTime,
) {
    let duration = |d: Option<prost_types::Duration>| d.and_then(|d| Duration::try_from(d).ok());
    let Some(enforcer) = duration(ack.enforcer_duration) else {
        return; // an ack of a retry or a repair: no batch arrived for it
    };
    if let Ok(send) = sent.duration_since(committed) {
        metrics.sync_send.observe(send);
    }
    if let Ok(round_trip) = acked.duration_since(sent) {
        metrics
            .sync_transport
            .observe(round_trip.saturating_sub(enforcer));
    }
    for (histogram, took) in [
        (&metrics.enforcer_fold, ack.fold_duration),
        (&metrics.enforcer_apply, ack.apply_duration),
        (&metrics.enforcer_save, ack.save_duration),
    ] {
        if let Some(took) = duration(took) {
            histogram.observe(took);
        }
    }
    metrics.enforcer_total.observe(enforcer);
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
