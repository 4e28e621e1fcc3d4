//! History from the event log, by replay, with the same fold and renderer
//! the system runs on: filtered reads of the log, an instance's firewall at
//! a revision or a time, and what changed between two revisions. The store
//! (idempotent retries, ack checks), `AuditService` and the offline
//! `cassette-rules audit` commands all ask here, so they give one answer.

use std::collections::BTreeMap;
use std::time::SystemTime;

use cassette_eventlog::{Log, Record};
use cassette_model::{replay, DomainError, Event, Firewall, InstanceId, Rule, ValidationError};
use cassette_ruleset::{Ruleset, TableName};

use crate::error::StoreError;
use crate::projection::Projection;

/// Records read per request when replaying or catching up.
pub(crate) const PAGE: usize = 1000;

/// Which events to return.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub instance: Option<InstanceId>,
    pub after_sequence: u64,
    /// 0: no limit.
    pub until_sequence: u64,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub actor: Option<String>,
}

impl EventFilter {
    fn matches(&self, event: &Event) -> bool {
        event.sequence > self.after_sequence
            && (self.until_sequence == 0 || event.sequence <= self.until_sequence)
            && self.since.is_none_or(|t| event.commit_time >= t)
            && self.until.is_none_or(|t| event.commit_time <= t)
            && self
                .actor
                .as_deref()
                .is_none_or(|a| event.actor.as_str() == a)
            && self
                .instance
                .as_ref()
                .is_none_or(|i| &event.instance_id == i)
    }

    /// Whether nothing after `sequence` can match.
    pub fn exhausted(&self, sequence: u64) -> bool {
        self.until_sequence != 0 && sequence >= self.until_sequence
    }
}

/// Where a reader of the log has got to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor {
    pub sequence: u64,
    /// With an instance filter: the instance's revision read so far.
    pub revision: u64,
}

/// The next matching records after `cursor`, reading at most `limit`
/// records; the cursor moves past everything read. An empty answer with an
/// unmoved cursor means the reader has caught up with the log.
pub async fn next_events(
    log: &Log,
    filter: &EventFilter,
    cursor: &mut Cursor,
    limit: usize,
) -> Result<Vec<Record>, StoreError> {
    let read: Vec<Record> = match &filter.instance {
        // An index lookup: only this instance's records are read.
        Some(instance) => {
            let until = cursor.revision.saturating_add(limit as u64);
            log.read_instance_records(instance, cursor.revision, until)
                .await?
        }
        None => {
            log.read_after(cursor.sequence.max(filter.after_sequence), limit)
                .await?
        }
    };
    if let Some(last) = read.last() {
        cursor.sequence = cursor.sequence.max(last.event.sequence);
        cursor.revision = last.event.revision;
    }
    Ok(read
        .into_iter()
        .filter(|r| filter.matches(&r.event))
        .collect())
}

/// A point in an instance's history.
#[derive(Debug, Clone, Copy)]
pub enum At {
    Revision(u64),
    /// The last revision committed at or before this time.
    Time(SystemTime),
}

/// An instance's firewall as it was, with the event that made it so.
#[derive(Debug, Clone)]
pub struct FirewallAt {
    pub firewall: Firewall,
    pub event: Event,
}

impl FirewallAt {
    /// The nftables table this state renders to (what the enforcer applies).
    pub fn ruleset(&self) -> String {
        Ruleset::of(Some(&self.firewall)).render(&TableName::default())
    }
}

fn not_found(instance: &InstanceId) -> StoreError {
    DomainError::FirewallNotFound {
        instance_id: instance.to_string(),
    }
    .into()
}

fn invalid(field: &'static str, message: String) -> StoreError {
    DomainError::Invalid(ValidationError::new(field, message)).into()
}

/// The firewall of `instance` at `at`, by replaying its events up to there.
pub async fn firewall_at(
    log: &Log,
    instance: &InstanceId,
    at: At,
) -> Result<FirewallAt, StoreError> {
    let latest = log.last_revision(instance).await?;
    if latest == 0 {
        return Err(not_found(instance));
    }
    let events = match at {
        At::Revision(0) => {
            return Err(invalid(
                "revision",
                format!("must be between 1 and {latest}"),
            ))
        }
        At::Revision(r) if r > latest => {
            return Err(invalid(
                "revision",
                format!("must be between 1 and {latest}, got {r}"),
            ))
        }
        At::Revision(r) => log.read_instance(instance, 0, r).await?,
        At::Time(t) => {
            let mut events = log.read_instance(instance, 0, latest).await?;
            events.retain(|e| e.commit_time <= t);
            if events.is_empty() {
                return Err(invalid(
                    "at_time",
                    format!("is before instance {instance}'s firewall was created"),
                ));
            }
            events
        }
    };
    let firewall = replay(&events)?.ok_or_else(|| not_found(instance))?;
    let event = events.last().cloned().ok_or_else(|| not_found(instance))?;
    Ok(FirewallAt { firewall, event })
}

/// What changed in an instance's firewall between two revisions.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    pub added: Vec<Rule>,
    pub removed: Vec<Rule>,
    /// (before, after)
    pub changed: Vec<(Rule, Rule)>,
    /// One page of the events between.
    pub events: Vec<Record>,
    /// The revision the next page starts after, when more events follow.
    pub next_after: Option<u64>,
}

/// Which of the events between two revisions a diff carries.
#[derive(Debug, Clone, Copy)]
pub struct EventPage {
    /// Only events with a greater revision.
    pub after: u64,
    pub size: usize,
}

impl EventPage {
    /// Every event between (for the offline command).
    pub const ALL: EventPage = EventPage {
        after: 0,
        size: usize::MAX,
    };
}

/// What changed in `instance`'s firewall from revision `from` to `to`, with
/// `page` of the events between.
pub async fn diff(
    log: &Log,
    instance: &InstanceId,
    from: u64,
    to: u64,
    page: EventPage,
) -> Result<Diff, StoreError> {
    let latest = log.last_revision(instance).await?;
    if latest == 0 {
        return Err(not_found(instance));
    }
    if to == 0 || to > latest {
        return Err(invalid(
            "to_revision",
            format!("must be between 1 and {latest}, got {to}"),
        ));
    }
    if from >= to {
        return Err(invalid(
            "from_revision",
            format!("must be less than to_revision ({to}), got {from}"),
        ));
    }
    let records = log.read_instance_records(instance, 0, to).await?;
    let (before, between) = records.split_at(from as usize);
    let rules = |records: &[Record]| -> Result<BTreeMap<String, Rule>, StoreError> {
        Ok(replay(records.iter().map(|r| &r.event))?
            .filter(|f| f.is_live())
            .map(|f| {
                f.rules()
                    .iter()
                    .map(|r| (r.spec.id.to_string(), r.clone()))
                    .collect()
            })
            .unwrap_or_default())
    };
    let old = rules(before)?;
    let new = rules(&records)?;
    let mut events = between
        .iter()
        .filter(|r| r.event.revision > page.after)
        .take(page.size.saturating_add(1))
        .cloned()
        .collect::<Vec<_>>();
    let next_after = if events.len() > page.size {
        events.truncate(page.size);
        events.last().map(|r| r.event.revision)
    } else {
        None
    };
    let mut diff = Diff {
        events,
        next_after,
        ..Diff::default()
    };
    for (id, rule) in &new {
        match old.get(id) {
            None => diff.added.push(rule.clone()),
            Some(previous) if previous.revision != rule.revision => {
                diff.changed.push((previous.clone(), rule.clone()))
            }
            Some(_) => {}
        }
    }
    diff.removed = old
        .into_iter()
        .filter(|(id, _)| !new.contains_key(id))
        .map(|(_, rule)| rule)
        .collect();
    // Listed as firewalls list rules: by port, then protocol.
    let key = |r: &Rule| (r.spec.ports, r.spec.protocol);
    diff.added.sort_by_key(key);
    diff.removed.sort_by_key(key);
    diff.changed.sort_by_key(|(before, _)| key(before));
    Ok(diff)
}

/// Folds the records before `sequence` (verified by a walk that found
/// `sequence` bad) into a new projection, with its last commit time.
pub(crate) async fn fold_before(
    log: &Log,
    sequence: u64,
) -> Result<(Projection, SystemTime), StoreError> {
    let mut projection = Projection::default();
    let mut last_time = SystemTime::UNIX_EPOCH;
    let mut after = 0;
    // Records before the bad one are good: read no further than them.
    while after + 1 < sequence {
        let want = usize::try_from(sequence - 1 - after).unwrap_or(PAGE);
        let page = log.read_after(after, want.min(PAGE)).await?;
        let Some(last) = page.last().map(|r| r.event.sequence) else {
            break;
        };
        for record in &page {
            projection.replay(&record.event)?;
            last_time = last_time.max(record.event.commit_time);
        }
        after = last;
    }
    projection.index_deadlines();
    Ok((projection, last_time))
}
