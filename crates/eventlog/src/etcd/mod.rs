//! The event log on etcd, for several rules replicas over one replicated log.
//!
//! The records are the sled log's, byte for byte (the `Event` with the
//! previous record's hash), under a key prefix (`/cassette/v1` by default):
//! - `<prefix>/e/<sequence, 20 digits>` -> the record;
//! - `<prefix>/i/<instance>/<revision, 20 digits>` -> sequence (u64 big-endian)
//!   + the record's hash (instance ids are `[a-z0-9-]`, so `/` ends one);
//! - `<prefix>/head` -> the last sequence (u64 big-endian) + its record's hash;
//! - `<prefix>/s/<sequence, 20 digits>` -> the signature over the head a signed
//!   append left (`cassette.firewall.v1.SignedHead`), for its last record.
//!
//! An append is one etcd transaction: *if the head is still the one the
//! writer decided against* (and none of the index keys exists yet), put the
//! records, their index entries, the new head and its signature. etcd commits it on a quorum
//! before it answers, so an append that returns is durable, and of two
//! writers that decided against the same head exactly one wins: the other
//! gets [`LogError::Conflict`], catches up and decides again. That is the
//! whole concurrency control: no lease, no leader of our own.
//!
//! etcd's limits shape the batches: at most 128 operations per transaction by
//! default (two puts per event, one for the head and one for its signature:
//! [`MAX_BATCH_EVENTS`]) and
//! 1.5 MiB per request ([`MAX_BATCH_BYTES`]). A transaction whose answer is
//! lost (a leader change, a timeout) has an unknown outcome: the append tries
//! again, on the next endpoint, and a transaction refused because the head moved
//! is checked against the head it would have written, so a retry never writes
//! twice and never reports a write that did not happen. One that still has no
//! answer at the deadline is reported as unavailable, its outcome unknown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cassette_model::{Event, InstanceId};
use tonic::transport::{Channel, Endpoint};

use crate::chain::{self, Next, Verifier};
use crate::signing::{SignedHead, SigningKey, TrustedKeys};
use crate::{decode, u64_prefix, Hash, Head, LogError, Record, Verification, GENESIS_HASH};

mod client;
mod recent;
mod shared;
#[doc(hidden)]
pub mod tamper;
mod watch;

pub use client::EtcdConfig;
pub(crate) use client::{needs_token, open_watch, Auth, Member};
use client::{refusal, retryable};
pub use shared::{SharedChange, SharedWriter};

#[allow(clippy::all, clippy::pedantic)]
pub(crate) mod api {
    tonic::include_proto!("etcdserverpb");
}

use api::compare::{CompareResult, CompareTarget, TargetUnion};
use api::kv_client::KvClient;
use api::request_op::Request as Op;
use api::response_op::Response as OpResponse;
use api::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

/// Most events one append carries: two puts each, the head and its
/// signature, within etcd's default `--max-txn-ops` of 128.
pub const MAX_BATCH_EVENTS: usize = 63;
/// Most bytes of records one append carries, under etcd's default 1.5 MiB
/// request limit with room for keys and index entries.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Records read per request when verifying.
const VERIFY_PAGE: usize = 1000;

/// How often a replica reads the log's head beside its watch (see
/// [`EtcdLog::head_changes`]).
pub const HEAD_CHECK: Duration = Duration::from_secs(1);

/// The event log in an etcd cluster.
pub struct EtcdLog {
    members: Vec<KvClient<Member>>,
    channels: Vec<Channel>,
    auth: Auth,
    /// The member requests go to; moves on when one fails.
    current: AtomicUsize,
    prefix: String,
    append_deadline: Duration,
    /// The records appended or read at the head last, for reads of an
    /// instance's latest changes.
    recent: recent::Recent,
    /// How appends spell their records (reads take either).
    encoding: crate::RecordEncoding,
}

impl EtcdLog {
    /// Connects lazily to every endpoint (a member that is down now may
    /// answer later); fails only on a malformed endpoint or TLS setup.
    pub fn connect(config: &EtcdConfig) -> Result<Self, LogError> {
        if config.endpoints.is_empty() {
            return Err(LogError::Unavailable("no etcd endpoints given".to_owned()));
        }
        let mut channels = Vec::with_capacity(config.endpoints.len());
        for url in &config.endpoints {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| LogError::Unavailable(format!("etcd endpoint {url:?}: {e}")))?;
            if let Some((user, _)) = &config.credentials {
                // A password goes over TLS, or to a loopback address.
                if !cassette_proto::stays_private(endpoint.uri()) {
                    return Err(LogError::Config(format!(
                        "refusing to send etcd user {user}'s password in plaintext to {url}: \
                         give https:// endpoints (with --etcd-ca), or reach etcd on a loopback address"
                    )));
                }
            }
            let mut endpoint = endpoint
                .connect_timeout(config.request_timeout)
                .timeout(config.request_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5));
            if let Some(tls) = &config.tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| LogError::Unavailable(format!("etcd TLS for {url}: {e}")))?;
            }
            channels.push(endpoint.connect_lazy());
        }
        let auth = Auth {
            token: Arc::default(),
            credentials: config.credentials.clone().map(Arc::new),
        };
        Ok(Self {
            members: channels
                .iter()
                .map(|c| KvClient::new(auth.member(c)))
                .collect(),
            channels,
            auth,
            current: AtomicUsize::new(0),
            prefix: config.prefix.trim_end_matches('/').to_owned(),
            append_deadline: config.append_deadline,
            recent: recent::Recent::default(),
            encoding: crate::RecordEncoding::Compact,
        })
    }

    /// Appends from now on store their records in `encoding` (compact
    /// unless told); reads take records in either. A replica of this
    /// version among older ones writes `Full` until none of those is left:
    /// an older replica cannot read a compact record.
    pub fn with_record_encoding(mut self, encoding: crate::RecordEncoding) -> Self {
        self.encoding = encoding;
        self
    }

    pub(crate) fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    fn channel(&self) -> &Channel {
        &self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()]
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn client(&self) -> KvClient<Member> {
        let i = self.current.load(Ordering::Relaxed) % self.members.len();
        self.members[i].clone()
    }

    /// After a failed request: the next member takes the following ones.
    fn next_member(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    fn head_key(&self) -> Vec<u8> {
        format!("{}/head", self.prefix).into_bytes()
    }

    fn record_key(&self, sequence: u64) -> Vec<u8> {
        format!("{}/e/{sequence:020}", self.prefix).into_bytes()
    }

    fn signature_key(&self, sequence: u64) -> Vec<u8> {
        format!("{}/s/{sequence:020}", self.prefix).into_bytes()
    }

    /// The end of a range over every record key: `e0` sorts right after
    /// `e/` and everything under it.
    fn records_end(&self) -> Vec<u8> {
        format!("{}/e0", self.prefix).into_bytes()
    }

    /// The end of a range over every signature key.
    fn signatures_end(&self) -> Vec<u8> {
        format!("{}/s0", self.prefix).into_bytes()
    }

    fn index_prefix(&self, instance: &InstanceId) -> Vec<u8> {
        format!("{}/i/{}/", self.prefix, instance.as_str()).into_bytes()
    }

    fn index_key(&self, instance: &InstanceId, revision: u64) -> Vec<u8> {
        format!("{}/i/{}/{revision:020}", self.prefix, instance.as_str()).into_bytes()
    }

    /// A read-only transaction (one linearizable round trip), on the next
    /// member if this one fails, for at most the append deadline.
    async fn read(&self, ranges: Vec<RangeRequest>) -> Result<Vec<api::RangeResponse>, LogError> {
        let request = TxnRequest {
            compare: vec![],
            success: ranges
                .into_iter()
                .map(|r| RequestOp {
                    request: Some(Op::RequestRange(r)),
                })
                .collect(),
            failure: vec![],
        };
        let response = self.txn(request).await?;
        Ok(response
            .responses
            .into_iter()
            .filter_map(|r| match r.response {
                Some(OpResponse::ResponseRange(range)) => Some(range),
                _ => None,
            })
            .collect())
    }

    /// One transaction, retried on other members while the cluster cannot
    /// answer, up to the append deadline. A refusal is
    /// [`LogError::Refused`] (nothing written) only while no earlier attempt
    /// went unanswered: that one may have committed.
    async fn txn(&self, request: TxnRequest) -> Result<api::TxnResponse, LogError> {
        let deadline = Instant::now() + self.append_deadline;
        let mut pause = Duration::from_millis(25);
        let mut unanswered = false;
        let refused = |unanswered: bool, why: String| {
            if unanswered {
                LogError::Unavailable(format!("{why} (after an attempt that got no answer)"))
            } else {
                LogError::Refused(why)
            }
        };
        loop {
            if self.auth.credentials.is_some() && !self.auth.has_token() {
                if let Err(status) = self.auth.refresh(self.channel()).await {
                    if status.code() == tonic::Code::InvalidArgument
                        || status.message().contains("authentication failed")
                    {
                        let why = format!("etcd refused our credentials: {}", status.message());
                        return Err(refused(unanswered, why));
                    }
                }
            }
            match self.client().txn(request.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if needs_token(&status) && self.auth.credentials.is_some() => {
                    // Expired: the next attempt authenticates again.
                    *self.auth.token.write().unwrap_or_else(|p| p.into_inner()) = None;
                    if Instant::now() >= deadline {
                        let why = format!("etcd refused our token: {}", status.message());
                        return Err(refused(unanswered, why));
                    }
                }
                Err(status) if !retryable(&status) => {
                    return Err(refused(unanswered, refusal(&status)));
                }
                Err(status) => {
                    unanswered = true;
                    self.next_member();
                    if Instant::now() + pause >= deadline {
                        return Err(LogError::Unavailable(format!(
                            "etcd did not answer within {:?}: {}",
                            self.append_deadline,
                            status.message()
                        )));
                    }
                    tracing::debug!(error = %status.message(), "etcd request failed; trying the next member");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// The last record, as the cluster agrees on it now.
    pub async fn head(&self) -> Result<Head, LogError> {
        let mut ranges = self
            .read(vec![RangeRequest {
                key: self.head_key(),
                ..Default::default()
            }])
            .await?;
        head_of(
            ranges
                .pop()
                .and_then(|r| r.kvs.into_iter().next())
                .map(|kv| kv.value),
        )
    }

    /// The instance's last revision in the log (0 if it has none).
    pub async fn last_revision(&self, instance: &InstanceId) -> Result<u64, LogError> {
        let mut ranges = self.read(vec![self.last_index(instance, None)]).await?;
        Ok(ranges
            .pop()
            .and_then(|r| r.kvs.into_iter().next())
            .map_or(0, |kv| revision_of(&kv.key)))
    }

    /// The instance's last revision whose record is at most `sequence` (0
    /// if it has none): its index read backwards from the end.
    pub async fn last_revision_through(
        &self,
        instance: &InstanceId,
        sequence: u64,
    ) -> Result<u64, LogError> {
        const PAGE: i64 = 64;
        let mut before = None;
        loop {
            let mut range = self.last_index(instance, before);
            range.limit = PAGE;
            range.keys_only = false;
            let kvs = self
                .read(vec![range])
                .await?
                .pop()
                .map(|r| r.kvs)
                .unwrap_or_default();
            for kv in &kvs {
                if u64_prefix(&kv.value) <= sequence {
                    return Ok(revision_of(&kv.key));
                }
            }
            match kvs.last() {
                Some(last) if kvs.len() as i64 == PAGE => before = Some(last.key.clone()),
                _ => return Ok(0),
            }
        }
    }

    /// The instance's last index entry (before the key `before`, if given).
    fn last_index(&self, instance: &InstanceId, before: Option<Vec<u8>>) -> RangeRequest {
        let key = self.index_prefix(instance);
        RangeRequest {
            range_end: before.unwrap_or_else(|| prefix_end(&key)),
            key,
            limit: 1,
            sort_order: api::range_request::SortOrder::Descend as i32,
            sort_target: api::range_request::SortTarget::Key as i32,
            keys_only: true,
            ..Default::default()
        }
    }

    /// Appends `events` after `expected` (the head the writer decided
    /// against) in one transaction, durable on a quorum when it returns.
    ///
    /// [`LogError::Conflict`] if another writer appended since (nothing is
    /// written; catch up and decide again), [`LogError::OutOfOrder`] if the
    /// events do not continue the log, [`LogError::TooLarge`] above etcd's
    /// limits, [`LogError::Unavailable`] if the cluster did not answer
    /// within the deadline: then the outcome is unknown (an attempt still in
    /// flight may commit), never a success that did not happen. A write whose
    /// answer was lost and that a retry finds in the head is a success.
    pub async fn append(&self, expected: Head, events: &[Event]) -> Result<Head, LogError> {
        self.append_signed(expected, events, None).await
    }

    /// [`EtcdLog::append`], with `signer`'s signature over the head it
    /// leaves put in the same transaction.
    pub async fn append_signed(
        &self,
        expected: Head,
        events: &[Event],
        signer: Option<&SigningKey>,
    ) -> Result<Head, LogError> {
        if events.is_empty() {
            return Ok(expected);
        }
        if events.len() > MAX_BATCH_EVENTS {
            return Err(LogError::TooLarge(format!(
                "{} events in one append; etcd takes at most {MAX_BATCH_EVENTS} per transaction",
                events.len()
            )));
        }
        // One round trip: what the log must hold for these events to
        // continue it (the head, and each instance's previous revision but
        // not this one) is compared inside the transaction itself.
        let (records, next) = chain::encode_batch(expected, events, self.encoding, |_| Ok(None))?;
        let mut compare = vec![self.head_is(expected)];
        let mut puts = Vec::with_capacity(records.len() * 2 + 1);
        let mut seen = std::collections::HashSet::new();
        let mut bytes_total = 0;
        let mut kept = Vec::with_capacity(records.len());
        for record in records {
            let event = record.event;
            // The instance's first event here: the log holds the revision
            // before it (unless it is the first).
            if seen.insert(&event.instance_id) && event.revision > 1 {
                compare.push(Compare {
                    result: CompareResult::Greater as i32,
                    target: CompareTarget::Create as i32,
                    key: self.index_key(&event.instance_id, event.revision - 1),
                    target_union: Some(TargetUnion::CreateRevision(0)),
                    range_end: vec![],
                });
            }
            let index_key = self.index_key(&event.instance_id, event.revision);
            compare.push(Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: index_key.clone(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: vec![],
            });
            bytes_total += record.bytes.len();
            let indexed = record.index_value();
            // As a read of it would find it.
            kept.push((decode(event.sequence, &record.bytes)?, record.bytes.len()));
            puts.push(put(self.record_key(event.sequence), record.bytes));
            puts.push(put(index_key, indexed));
        }
        if bytes_total > MAX_BATCH_BYTES {
            return Err(LogError::TooLarge(format!(
                "{bytes_total} bytes of records in one append; etcd takes at most {MAX_BATCH_BYTES}"
            )));
        }
        puts.push(put(self.head_key(), chain::anchor_value(next)));
        if let Some(signer) = signer {
            puts.push(put(
                self.signature_key(next.sequence),
                signer.sign(next).encode(),
            ));
        }
        let range = |key| RequestOp {
            request: Some(Op::RequestRange(RangeRequest {
                key,
                ..Default::default()
            })),
        };
        let request = TxnRequest {
            compare,
            success: puts,
            // Refused: what the head is, and what record holds the place
            // this append's last record would have.
            failure: vec![
                range(self.head_key()),
                range(self.record_key(next.sequence)),
            ],
        };
        let response = self.txn(request).await?;
        if response.succeeded {
            self.recent.remember(kept);
            return Ok(next);
        }
        let mut found = response.responses.into_iter().map(|r| match r.response {
            Some(OpResponse::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        });
        let now = head_of(found.next().flatten().map(|kv| kv.value))?;
        let in_place = found.next().flatten().map(|kv| chain::hash(&kv.value));
        // An earlier attempt whose answer was lost committed this append if
        // its last record is in place (the hash covers everything before
        // it): the head is then this append's, or another writer's after it.
        // Otherwise nothing of it is stored, nor ever will be: every attempt
        // compared the head with `expected`, which it no longer is.
        if now == next || in_place == Some(next.hash) {
            return Ok(next);
        }
        if now != expected {
            return Err(LogError::Conflict {
                expected: expected.sequence,
                found: now.sequence,
            });
        }
        // The head held: an instance's revisions do not continue the log.
        // Say which (a rare path: read the instances' last revisions).
        let mut checked = std::collections::HashSet::new();
        for event in events {
            if !checked.insert(&event.instance_id) {
                continue;
            }
            let last = self.last_revision(&event.instance_id).await?;
            if event.revision != last + 1 {
                return Err(LogError::OutOfOrder(format!(
                    "instance {} revision {} does not follow {}",
                    event.instance_id, event.revision, last
                )));
            }
        }
        Err(LogError::OutOfOrder(
            "the log refused the events' revisions".to_owned(),
        ))
    }

    fn head_is(&self, head: Head) -> Compare {
        if head.sequence == 0 {
            // An empty log has no head key: its creation revision is 0.
            Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: self.head_key(),
                target_union: Some(TargetUnion::CreateRevision(0)),
                range_end: vec![],
            }
        } else {
            Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: self.head_key(),
                target_union: Some(TargetUnion::Value(chain::anchor_value(head))),
                range_end: vec![],
            }
        }
    }

    /// Up to `limit` records after `after_sequence`, in sequence order, each
    /// with the signature stored with it (read in the same transaction).
    pub async fn read_after(
        &self,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<Record>, LogError> {
        // The keys of records after+1 ..= after+limit, not every key to the
        // end of the log with a limit: etcd 3.4 walks its whole index range
        // before it applies a limit, which made a replay from the start
        // quadratic (a page near the start of a 1,000,000-record log cost
        // as much as reading all of it).
        let end = u64::try_from(limit)
            .ok()
            .and_then(|limit| after_sequence.checked_add(limit)?.checked_add(1));
        let (records_end, signatures_end) = match end {
            Some(end) => (self.record_key(end), self.signature_key(end)),
            None => (self.records_end(), self.signatures_end()),
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut ranges = self
            .read(vec![
                RangeRequest {
                    key: self.record_key(after_sequence + 1),
                    range_end: records_end,
                    limit,
                    ..Default::default()
                },
                RangeRequest {
                    key: self.signature_key(after_sequence + 1),
                    range_end: signatures_end,
                    ..Default::default()
                },
            ])
            .await?
            .into_iter();
        let kvs = ranges.next().map(|r| r.kvs).unwrap_or_default();
        let mut signatures = ranges
            .next()
            .map(|r| r.kvs)
            .unwrap_or_default()
            .into_iter()
            .peekable();
        let mut records = Vec::with_capacity(kvs.len());
        let mut sizes = Vec::with_capacity(kvs.len());
        for (expected, kv) in (after_sequence + 1..).zip(kvs) {
            sizes.push(kv.value.len());
            let sequence = sequence_of(&kv.key)?;
            if sequence != expected {
                return Err(LogError::Corrupt {
                    sequence: expected,
                    reason: format!("missing: the next record is {sequence}"),
                });
            }
            let mut record = decode(sequence, &kv.value)?;
            while let Some(signature) = signatures.next_if(|s| revision_of(&s.key) <= sequence) {
                if revision_of(&signature.key) == sequence {
                    record.signed = Some(SignedHead::decode(sequence, &signature.value));
                }
            }
            records.push(record);
        }
        // A page that ends before its limit reached the head: what streams
        // woken for these changes will read next.
        if records.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
            self.recent
                .remember(records.iter().cloned().zip(sizes.iter().copied()));
        }
        Ok(records)
    }

    /// A page of [`EtcdLog::read_after`] for a walk: a record that is missing
    /// or does not decode ends the page before it, so the walk takes the good
    /// records before it (as the sled log's walk does) and its next page,
    /// starting there, names it.
    async fn walk_page(&self, after: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        match self.read_after(after, limit).await {
            Err(LogError::Corrupt { sequence, .. }) if sequence > after.saturating_add(1) => {
                let good = usize::try_from(sequence - after - 1).unwrap_or(usize::MAX);
                self.read_after(after, good).await
            }
            page => page,
        }
    }

    /// Checks the hash chain record by record (pages of [`VERIFY_PAGE`]) and
    /// the head anchor against the last record.
    pub async fn verify(&self) -> Result<Verification, LogError> {
        self.verify_from(Head::default(), None, |_| Ok(())).await
    }

    /// [`EtcdLog::verify`] of the records after `head` (which an earlier
    /// verification vouched for), of their signatures too with `trust`,
    /// handing each good record to `visit` in order (so one pass both checks
    /// and replays the log, as the sled log's `verify_from`). A record
    /// `visit` refuses is reported as the first bad one. Other replicas may
    /// append meanwhile: the walk ends at a head anchor it has reached, not
    /// at the first empty page.
    pub async fn verify_from(
        &self,
        head: Head,
        trust: Option<&TrustedKeys>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.walk_newest_first(head, None, trust, visit).await
    }

    /// [`EtcdLog::verify`] of the records up to `until` (which must end the
    /// walk, with `until`'s hash) rather than to the head: what a projection
    /// snapshot anchored at `until` stands on, checked while other replicas
    /// append after it. Vouches for nothing (reads are bounded by the
    /// caller's [`crate::Log`]).
    pub async fn verify_until(
        &self,
        until: Head,
        trust: Option<&TrustedKeys>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.walk_newest_first(Head::default(), Some(until), trust, visit)
            .await
    }

    /// [`EtcdLog::walk`] from `head` to `until` (or to the end), with the
    /// newest trusted signature up to there checked first.
    async fn walk_newest_first(
        &self,
        head: Head,
        until: Option<Head>,
        trust: Option<&TrustedKeys>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let through = until.map_or(u64::MAX, |u| u.sequence);
        let vouched = match trust {
            Some(trust) => self.newest_trusted(head.sequence, through, trust).await?,
            None => None,
        };
        self.walk(head, until, trust, vouched, visit).await
    }

    /// The hash of record `sequence` as stored, if it is there.
    pub async fn record_hash(&self, sequence: u64) -> Result<Option<Hash>, LogError> {
        let mut ranges = self
            .read(vec![RangeRequest {
                key: self.record_key(sequence),
                ..Default::default()
            }])
            .await?;
        Ok(ranges
            .pop()
            .and_then(|r| r.kvs.into_iter().next())
            .map(|kv| chain::hash(&kv.value)))
    }

    /// [`EtcdLog::verify_from`] with the newest signature already checked
    /// (`vouched`, if any): each signature after it is checked on the walk.
    pub async fn verify_vouched(
        &self,
        head: Head,
        trust: Option<&TrustedKeys>,
        vouched: Option<SignedHead>,
        visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        self.walk(head, None, trust, vouched, visit).await
    }

    /// The walk of the verifications above: from `head` to `until` (its
    /// anchor) or to the end (the head anchor), page by page.
    async fn walk(
        &self,
        head: Head,
        until: Option<Head>,
        trust: Option<&TrustedKeys>,
        vouched: Option<SignedHead>,
        mut visit: impl FnMut(&Record) -> Result<(), String>,
    ) -> Result<Verification, LogError> {
        let mut verifier = Verifier::from(head, trust).vouched(vouched);
        loop {
            let after = verifier.expected() - 1;
            let limit = match until {
                Some(until) if after >= until.sequence => break,
                Some(until) => usize::try_from(until.sequence - after)
                    .unwrap_or(usize::MAX)
                    .min(VERIFY_PAGE),
                None => VERIFY_PAGE,
            };
            let page = match self.walk_page(after, limit).await {
                Ok(page) => page,
                Err(LogError::Corrupt { sequence, reason }) => {
                    return Ok(verifier.bad_record(sequence, reason))
                }
                Err(e) => return Err(e),
            };
            if page.is_empty() {
                if until.is_some() {
                    // Missing records: the anchor check names where it ended.
                    break;
                }
                let anchor = self.head().await?;
                if anchor.sequence > after && !self.read_after(after, 1).await?.is_empty() {
                    // Appended since the page was read: read on.
                    continue;
                }
                return Ok(verifier.finish(Some(anchor)));
            }
            for record in page {
                match verifier.next(record, &mut visit) {
                    Next::Accepted => {}
                    Next::Done(verification) => return Ok(verification),
                    Next::Unlinked(unlinked) => {
                        let intact = match unlinked.previous() {
                            Some(previous) => self.intact(previous).await?,
                            None => true,
                        };
                        return Ok(verifier.blame(unlinked, intact));
                    }
                }
            }
        }
        Ok(verifier.finish(until))
    }

    /// The newest signature after record `after` and up to record `through`
    /// that `trust` accepts for the record it is stored with (checking at
    /// most [`chain::NEWEST_SIGNATURES_CHECKED`], newest first).
    async fn newest_trusted(
        &self,
        after: u64,
        through: u64,
        trust: &TrustedKeys,
    ) -> Result<Option<SignedHead>, LogError> {
        let range_end = match through.checked_add(1) {
            Some(next) => self.signature_key(next),
            None => self.signatures_end(),
        };
        let newest = self
            .read(vec![RangeRequest {
                key: self.signature_key(after + 1),
                range_end,
                limit: chain::NEWEST_SIGNATURES_CHECKED as i64,
                sort_order: api::range_request::SortOrder::Descend as i32,
                sort_target: api::range_request::SortTarget::Key as i32,
                ..Default::default()
            }])
            .await?
            .pop()
            .map(|r| r.kvs)
            .unwrap_or_default();
        let signatures: Vec<SignedHead> = newest
            .iter()
            .filter_map(|kv| SignedHead::decode(revision_of(&kv.key), &kv.value).ok())
            .collect();
        if signatures.is_empty() {
            return Ok(None);
        }
        // The records they sign, in one read.
        let records = self
            .read(
                signatures
                    .iter()
                    .map(|s| RangeRequest {
                        key: self.record_key(s.head.sequence),
                        ..Default::default()
                    })
                    .collect(),
            )
            .await?;
        for (signed, range) in signatures.into_iter().zip(records) {
            let Some(record) = range.kvs.into_iter().next() else {
                continue;
            };
            let head = Head {
                sequence: signed.head.sequence,
                hash: chain::hash(&record.value),
            };
            if trust.check(&signed, head).is_ok() {
                return Ok(Some(signed));
            }
        }
        Ok(None)
    }

    /// Removes every record after `sequence` (their index entries and
    /// signatures too) and makes `sequence` the head: how an operator
    /// recovers a log whose verification fails after `sequence`, with every
    /// replica stopped or halted. Returns how many records it removed.
    /// Refused when record `sequence` is missing (0 empties the log), or
    /// when another writer moves the head meanwhile.
    pub async fn remove_after(&self, sequence: u64) -> Result<u64, LogError> {
        self.recent.clear();
        let head_now = self.read(vec![RangeRequest {
            key: self.head_key(),
            ..Default::default()
        }]);
        let head_value = head_now
            .await?
            .pop()
            .and_then(|r| r.kvs.into_iter().next())
            .map(|kv| kv.value);
        let hash = match sequence {
            0 => GENESIS_HASH,
            _ => {
                let value = self
                    .read(vec![RangeRequest {
                        key: self.record_key(sequence),
                        ..Default::default()
                    }])
                    .await?
                    .pop()
                    .and_then(|r| r.kvs.into_iter().next())
                    .ok_or_else(|| LogError::Corrupt {
                        sequence,
                        reason: "missing: cannot end the log there".to_owned(),
                    })?
                    .value;
                chain::hash(&value)
            }
        };
        // The records after it, for their index entries (one that does not
        // decode names none: its entry, if any, stays).
        let records = self
            .read(vec![RangeRequest {
                key: self.record_key(sequence + 1),
                range_end: self.records_end(),
                ..Default::default()
            }])
            .await?
            .pop()
            .map(|r| r.kvs)
            .unwrap_or_default();
        let removed = records.len() as u64;
        let mut deletes: Vec<RequestOp> = records
            .iter()
            .filter_map(|kv| decode(sequence_of(&kv.key).ok()?, &kv.value).ok())
            .map(|r| {
                delete(
                    self.index_key(&r.event.instance_id, r.event.revision),
                    vec![],
                )
            })
            .collect();
        deletes.push(delete(self.record_key(sequence + 1), self.records_end()));
        deletes.push(delete(
            self.signature_key(sequence + 1),
            self.signatures_end(),
        ));
        deletes.push(match sequence {
            0 => delete(self.head_key(), vec![]),
            _ => put(
                self.head_key(),
                chain::anchor_value(Head { sequence, hash }),
            ),
        });
        // The head and the ranges go last, in the last transaction: until it
        // commits, the log is only missing index entries of records that go.
        let compare = vec![match head_value {
            None => self.head_is(Head::default()),
            Some(value) => Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: self.head_key(),
                target_union: Some(TargetUnion::Value(value)),
                range_end: vec![],
            },
        }];
        // Each transaction only if no writer moved the head meanwhile.
        for chunk in deletes.chunks(100) {
            let response = self
                .txn(TxnRequest {
                    compare: compare.clone(),
                    success: chunk.to_vec(),
                    failure: vec![],
                })
                .await?;
            if !response.succeeded {
                return Err(LogError::OutOfOrder(
                    "another writer appended meanwhile: stop every replica and try again"
                        .to_owned(),
                ));
            }
        }
        self.recent.clear();
        Ok(removed)
    }

    /// Whether record `sequence` still has the hash its index entry recorded
    /// (false when it is missing or does not decode: then it changed).
    pub async fn intact(&self, sequence: u64) -> Result<bool, LogError> {
        let mut ranges = self
            .read(vec![RangeRequest {
                key: self.record_key(sequence),
                ..Default::default()
            }])
            .await?;
        let Some(kv) = ranges.pop().and_then(|r| r.kvs.into_iter().next()) else {
            return Ok(false);
        };
        let Ok(record) = decode(sequence, &kv.value) else {
            return Ok(false);
        };
        let mut ranges = self
            .read(vec![RangeRequest {
                key: self.index_key(&record.event.instance_id, record.event.revision),
                ..Default::default()
            }])
            .await?;
        let recorded = ranges
            .pop()
            .and_then(|r| r.kvs.into_iter().next())
            .and_then(|kv| kv.value.get(8..40).and_then(|h| Hash::try_from(h).ok()));
        Ok(recorded == Some(record.hash))
    }

    /// The instance's records with `after_revision < revision <= until_revision`.
    pub async fn read_instance_records(
        &self,
        instance: &InstanceId,
        after_revision: u64,
        until_revision: u64,
    ) -> Result<Vec<Record>, LogError> {
        if until_revision <= after_revision {
            return Ok(vec![]);
        }
        if let Some(records) = self.recent.range(instance, after_revision, until_revision) {
            return Ok(records);
        }
        let mut ranges = self
            .read(vec![RangeRequest {
                key: self.index_key(instance, after_revision + 1),
                range_end: self.index_key(instance, until_revision.saturating_add(1)),
                ..Default::default()
            }])
            .await?;
        let index = ranges.pop().map(|r| r.kvs).unwrap_or_default();
        let keys: Vec<RangeRequest> = index
            .iter()
            .map(|kv| RangeRequest {
                key: self.record_key(u64_prefix(&kv.value)),
                ..Default::default()
            })
            .collect();
        let mut records = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_EVENTS) {
            for range in self.read(chunk.to_vec()).await? {
                let Some(kv) = range.kvs.into_iter().next() else {
                    return Err(LogError::Corrupt {
                        sequence: 0,
                        reason: format!(
                            "instance {instance}: an index entry names a missing record"
                        ),
                    });
                };
                records.push(decode(sequence_of(&kv.key)?, &kv.value)?);
            }
        }
        Ok(records)
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            ..Default::default()
        })),
    }
}

fn delete(key: Vec<u8>, range_end: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(api::DeleteRangeRequest {
            key,
            range_end,
            ..Default::default()
        })),
    }
}

fn head_of(value: Option<Vec<u8>>) -> Result<Head, LogError> {
    let Some(value) = value else {
        return Ok(Head {
            sequence: 0,
            hash: GENESIS_HASH,
        });
    };
    if value.len() != 40 {
        return Err(LogError::Corrupt {
            sequence: 0,
            reason: format!("the head anchor is {} bytes, not 40", value.len()),
        });
    }
    let hash = Hash::try_from(&value[8..]).map_err(|_| LogError::Corrupt {
        sequence: 0,
        reason: "the head anchor's hash is malformed".to_owned(),
    })?;
    Ok(Head {
        sequence: u64_prefix(&value),
        hash,
    })
}

/// The smallest key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The number after the last `/` of a key.
fn trailing_number(key: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(key).ok()?;
    text.rsplit('/').next()?.parse().ok()
}

fn revision_of(key: &[u8]) -> u64 {
    trailing_number(key).unwrap_or(0)
}

fn sequence_of(key: &[u8]) -> Result<u64, LogError> {
    trailing_number(key).ok_or_else(|| LogError::Corrupt {
        sequence: 0,
        reason: format!("malformed record key {:?}", String::from_utf8_lossy(key)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_exact_for_instance_ids() {
        assert_eq!(prefix_end(b"/c/i/web-1/"), b"/c/i/web-10".to_vec());
        // web-1x sorts after web-1/ and after the range's end: outside it.
        assert!(b"/c/i/web-1x/".as_slice() > b"/c/i/web-10".as_slice());
        assert_eq!(prefix_end(&[0x61, 0xff]), vec![0x62]);
    }

    #[test]
    fn head_anchors_round_trip_and_a_bad_one_is_corrupt() {
        let head = Head {
            sequence: 42,
            hash: [7; 32],
        };
        assert_eq!(head_of(Some(chain::anchor_value(head))).unwrap(), head);
        assert_eq!(head_of(None).unwrap().sequence, 0);
        assert!(matches!(
            head_of(Some(vec![1, 2, 3])),
            Err(LogError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn a_password_goes_only_over_tls_or_to_a_loopback_address() {
        // connect() is lazy: none of these addresses is contacted.
        let with_password = |endpoints: &[&str]| {
            let mut config = EtcdConfig::new(endpoints.iter().map(|e| e.to_string()).collect());
            config.credentials = Some(("cassette".into(), "secret".into()));
            EtcdLog::connect(&config).map(|_| ())
        };
        for plaintext in [
            "http://etcd-1:2379",
            "http://192.0.2.7:2379",
            "http://[2001:db8::1]:2379",
        ] {
            let refused = with_password(&["http://127.0.0.1:2379", plaintext]);
            assert!(
                matches!(&refused, Err(LogError::Config(m)) if m.contains(plaintext) && m.contains("cassette")),
                "{plaintext}: {refused:?}"
            );
        }
        for allowed in [
            "http://127.0.0.1:2379",
            "http://localhost:2379",
            "http://[::1]:2379",
        ] {
            assert!(with_password(&[allowed]).is_ok(), "{allowed}");
        }
        // Without a password, plaintext is the operator's choice.
        let config = EtcdConfig::new(vec!["http://192.0.2.7:2379".into()]);
        assert!(EtcdLog::connect(&config).is_ok());
    }

    #[tokio::test]
    async fn keys_sort_by_number() {
        let config = EtcdConfig::new(vec!["http://127.0.0.1:1".into()]);
        let log = EtcdLog::connect(&config).expect("a well-formed endpoint");
        assert!(log.record_key(9) < log.record_key(10));
        assert_eq!(sequence_of(&log.record_key(1234)).unwrap(), 1234);
        let instance = InstanceId::parse("web-1").unwrap();
        assert_eq!(revision_of(&log.index_key(&instance, 77)), 77);
    }
}
