//! The enforcer's memory across restarts: what it last put in force, saved
//! before every ack, so that an instance that reboots while the rules service
//! is away comes back with its own firewall instead of the defaults
//! (fail-static across a reboot).
//!
//! Two files per table: the snapshot `<dir>/<table>.state`, the whole folded
//! firewall written atomically (`snapshot.rs`), and the journal
//! `<dir>/<table>.journal`, what each save changed since, one record and one
//! fdatasync a save (`journal.rs`). A save appends the events it folded to
//! the journal; when there is no journal to continue (the first save of a
//! process, a history that started over, a failed save) or it is full, the
//! state is compacted: a new journal, then a snapshot naming it, then the
//! journal put in place, each made durable before the next. What loads is the
//! snapshot with its journal's records folded on (the one fold), and only if
//! every part checks out.

mod journal;
mod snapshot;

use std::path::{Path, PathBuf};

use cassette_model::{fold, Firewall, InstanceId};
use cassette_proto::{event_from_pb, pb};
use cassette_ruleset::{Ruleset, TableName};
use prost::Message as _;

/// A file larger than this is not read (not one this code wrote).
const MAX_FILE_BYTES: u64 = journal::MAX_JOURNAL_BYTES;

/// Why a state file was not trusted, or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the saved state {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the saved state {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the saved state {path} belongs to instance {found:?}, not {expected}")]
    OtherInstance {
        path: PathBuf,
        found: String,
        expected: InstanceId,
    },
    #[error("cannot save the state to {path}: {source}")]
    Save {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an enforcer saves: the folded firewall, and the unconfirmed changes
/// it reverted itself while cut off from the rules service (the kernel holds
/// the firewall with those undone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub firewall: Firewall,
    pub locally_reverted: Vec<u64>,
}

/// How a save was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saving {
    /// One journal record.
    Appended,
    /// A new snapshot and an empty journal.
    Compacted,
}

/// Where one enforcer keeps its state: a directory, and the table it owns.
#[derive(Debug, Clone)]
pub struct StatePaths {
    dir: PathBuf,
    snapshot: PathBuf,
    journal: PathBuf,
}

impl StatePaths {
    pub fn new(dir: impl Into<PathBuf>, table: &TableName) -> Self {
        let dir = dir.into();
        Self {
            snapshot: dir.join(format!("{}.state", table.as_str())),
            journal: dir.join(format!("{}.journal", table.as_str())),
            dir,
        }
    }
}

/// One enforcer's saved state: loads it, and saves each new state (appending
/// to the journal it opened, or compacting).
#[derive(Debug)]
pub struct StateFile {
    paths: StatePaths,
    /// The journal this process appends to, once a compaction opened one.
    journal: Option<journal::Writer>,
    /// The revision the last save left, which the next record continues.
    base: u64,
}

impl StateFile {
    pub fn new(dir: impl Into<PathBuf>, table: &TableName) -> Self {
        Self {
            paths: StatePaths::new(dir, table),
            journal: None,
            base: 0,
        }
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        &self.paths.snapshot
    }

    pub fn journal_path(&self) -> &Path {
        &self.paths.journal
    }

    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    /// The state saved for `instance`; `None` when nothing was ever saved
    /// (the instance never synced here).
    pub fn load(&self, instance: &InstanceId) -> Result<Option<Saved>, StateError> {
        load(&self.paths, instance)
    }

    /// A snapshot's bytes alone (no journal) as `instance`'s state, if they
    /// check out in every respect.
    pub fn parse(&self, bytes: &[u8], instance: &InstanceId) -> Result<Saved, StateError> {
        self.parse_with_journal(bytes, None, instance)
    }

    /// A snapshot's bytes and its journal's as `instance`'s state, if they
    /// check out in every respect: the snapshot's magic, checksum, encoding,
    /// instance, the fold's invariants, revision and ruleset hash; the
    /// journal's header and records' checksums; each record continuing the
    /// state before it and folding to the revision and ruleset it names.
    pub fn parse_with_journal(
        &self,
        snapshot_bytes: &[u8],
        journal_bytes: Option<&[u8]>,
        instance: &InstanceId,
    ) -> Result<Saved, StateError> {
        parse(&self.paths, snapshot_bytes, journal_bytes, instance)
    }

    /// Saves `firewall` (folded) with the changes reverted locally (what the
    /// kernel now holds is that firewall with them undone), durably, before
    /// it returns. `events` are the events folded since the last save: when
    /// they continue it, they are one journal record; otherwise (or when the
    /// journal is full) the state is compacted.
    pub fn save(
        &mut self,
        firewall: &Firewall,
        locally_reverted: &[u64],
        events: Vec<pb::Event>,
    ) -> Result<Saving, StateError> {
        let saved = self.try_save(firewall, locally_reverted, events);
        match &saved {
            Ok(_) => self.base = firewall.revision,
            // What the failure left on disk is not continued: the next save compacts.
            Err(_) => self.journal = None,
        }
        saved
    }

    fn try_save(
        &mut self,
        firewall: &Firewall,
        locally_reverted: &[u64],
        events: Vec<pb::Event>,
    ) -> Result<Saving, StateError> {
        let fail = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Save { path, source }
        };
        if let Some(writer) = self.journal.as_mut() {
            if continues(self.base, firewall.revision, &events) {
                let payload = pb::JournalRecord {
                    base_revision: self.base,
                    events,
                    locally_reverted: locally_reverted.to_vec(),
                    revision: firewall.revision,
                    ruleset_hash: Ruleset::of(Some(firewall)).hash(),
                }
                .encode_to_vec();
                if writer.fits(payload.len()) {
                    writer.append(&payload).map_err(fail(&self.paths.journal))?;
                    return Ok(Saving::Appended);
                }
            }
        }
        self.journal = None;
        let paths = &self.paths;
        std::fs::create_dir_all(&paths.dir).map_err(fail(&paths.dir))?;
        let pending =
            journal::Writer::create(&paths.dir, journal::new_id()).map_err(fail(&paths.journal))?;
        snapshot::write(
            &paths.dir,
            &paths.snapshot,
            firewall,
            locally_reverted,
            Some(pending.id()),
        )
        .map_err(fail(&paths.snapshot))?;
        // Only now that the snapshot naming it is durable: until then, the old
        // journal continues the old snapshot.
        self.journal = Some(
            pending
                .persist(&paths.journal, &paths.dir)
                .map_err(fail(&paths.journal))?,
        );
        Ok(Saving::Compacted)
    }
}

/// `events` take the state from revision `base` to `revision`, one at a time.
fn continues(base: u64, revision: u64, events: &[pb::Event]) -> bool {
    let consecutive = events
        .iter()
        .zip(base + 1..)
        .all(|(event, expected)| event.revision == expected);
    consecutive && base + events.len() as u64 == revision
}

fn load(paths: &StatePaths, instance: &InstanceId) -> Result<Option<Saved>, StateError> {
    let unreadable = |path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Unreadable { path, source }
    };
    let snapshot = match read_bounded(&paths.snapshot) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(unreadable(&paths.snapshot)(source)),
    };
    let journal = match read_bounded(&paths.journal) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(unreadable(&paths.journal)(source)),
    };
    parse(paths, &snapshot, journal.as_deref(), instance).map(Some)
}

fn parse(
    paths: &StatePaths,
    snapshot_bytes: &[u8],
    journal_bytes: Option<&[u8]>,
    instance: &InstanceId,
) -> Result<Saved, StateError> {
    let snapshot = snapshot::parse(snapshot_bytes, instance).map_err(|refused| match refused {
        snapshot::Refused::Corrupt(reason) => StateError::Corrupt {
            path: paths.snapshot.clone(),
            reason,
        },
        snapshot::Refused::OtherInstance(found) => StateError::OtherInstance {
            path: paths.snapshot.clone(),
            found,
            expected: instance.clone(),
        },
    })?;
    let (Some(id), Some(bytes)) = (snapshot.journal, journal_bytes) else {
        return Ok(snapshot.saved);
    };
    let corrupt = |reason: String| StateError::Corrupt {
        path: paths.journal.clone(),
        reason,
    };
    match journal::parse(bytes, &id).map_err(corrupt)? {
        journal::Records::Stale => Ok(snapshot.saved),
        journal::Records::Valid(records) => {
            replay(snapshot.saved, &records, instance).map_err(corrupt)
        }
    }
}

/// Folds the journal's records onto the snapshot's state.
fn replay(mut saved: Saved, records: &[&[u8]], instance: &InstanceId) -> Result<Saved, String> {
    let mut last_hash = None;
    for (index, payload) in records.iter().enumerate() {
        let record = pb::JournalRecord::decode(*payload)
            .map_err(|e| format!("record {index} is undecodable: {e}"))?;
        if record.base_revision != saved.firewall.revision {
            return Err(format!(
                "record {index} continues revision {}, the state before it is at revision {}",
                record.base_revision, saved.firewall.revision
            ));
        }
        let mut firewall = saved.firewall;
        for wire in &record.events {
            let event = event_from_pb(wire)
                .map_err(|e| format!("record {index}, event {}: {e}", wire.revision))?;
            if event.instance_id != *instance {
                return Err(format!(
                    "record {index} holds an event of instance {}",
                    event.instance_id
                ));
            }
            firewall = fold(Some(firewall), &event).map_err(|e| format!("record {index}: {e}"))?;
        }
        if firewall.revision != record.revision {
            return Err(format!(
                "record {index} folds to revision {}, it says {}",
                firewall.revision, record.revision
            ));
        }
        snapshot::check_local_reverts(&firewall, &record.locally_reverted)
            .map_err(|e| format!("record {index}: {e}"))?;
        saved = Saved {
            firewall,
            locally_reverted: record.locally_reverted,
        };
        last_hash = Some(record.ruleset_hash);
    }
    // Rendering every record's state would make a long journal slow to load;
    // the checksums cover each record, the last hash the fold of them all.
    if let Some(hash) = last_hash {
        snapshot::check_ruleset(&saved.firewall, &hash)?;
    }
    Ok(saved)
}

// Loading and saving off the async runtime (file I/O and fsync block).
impl StatePaths {
    pub async fn load_off_runtime(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<Saved>, StateError> {
        let (paths, instance) = (self.clone(), instance.clone());
        tokio::task::spawn_blocking(move || load(&paths, &instance))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Unreadable {
                    path: self.snapshot.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    pub fn snapshot(&self) -> &Path {
        &self.snapshot
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use cassette_model::{default_rules, ActorId, Event, EventPayload};
    use cassette_proto::firewall_to_pb;

    use super::*;

    fn created(instance: &str) -> Firewall {
        let event = Event {
            sequence: 1,
            instance_id: InstanceId::parse(instance).unwrap(),
            revision: 1,
            event_id: uuid::Uuid::nil(),
            commit_time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            actor: ActorId::anonymous(),
            on_behalf_of: None,
            request_id: None,
            request_digest: None,
            unconfirmed: None,
            payload: EventPayload::FirewallCreated {
                default_rules: default_rules(),
            },
        };
        fold(None, &event).unwrap()
    }

    fn instance(id: &str) -> InstanceId {
        InstanceId::parse(id).unwrap()
    }

    /// `web-1` with SSH turned off by a change that undoes itself at t=100.
    fn ssh_off_unconfirmed() -> Firewall {
        let firewall = created("web-1");
        let event = Event {
            sequence: 2,
            revision: 2,
            commit_time: firewall.create_time + Duration::from_secs(1),
            unconfirmed: Some(cassette_model::Unconfirmed {
                revert_time: firewall.create_time + Duration::from_secs(100),
                first_revision: 2,
                confirm_on_traffic: false,
            }),
            payload: EventPayload::RuleDisabled {
                rule_id: cassette_model::RuleId::parse("default-ssh").unwrap(),
            },
            ..event_of(&firewall)
        };
        fold(Some(firewall), &event).unwrap()
    }

    fn event_of(firewall: &Firewall) -> Event {
        Event {
            sequence: 1,
            instance_id: firewall.instance_id.clone(),
            revision: 1,
            event_id: uuid::Uuid::nil(),
            commit_time: firewall.create_time,
            actor: ActorId::anonymous(),
            on_behalf_of: None,
            request_id: None,
            request_digest: None,
            unconfirmed: None,
            payload: EventPayload::FirewallDeleted,
        }
    }

    #[test]
    fn unconfirmed_changes_and_local_reverts_are_saved_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        let firewall = ssh_off_unconfirmed();
        assert_eq!(firewall.unconfirmed().len(), 1);
        state.save(&firewall, &[2], Vec::new()).unwrap();
        let saved = state.load(&instance("web-1")).unwrap().unwrap();
        assert_eq!(saved.firewall, firewall, "with what a revert needs");
        assert_eq!(saved.locally_reverted, [2]);
        // A local revert of a change the firewall does not hold is refused.
        state.save(&firewall, &[7], Vec::new()).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err().to_string();
        assert!(
            error.contains("locally_reverted names revision 7"),
            "{error}"
        );
    }

    #[test]
    fn saves_and_loads_the_folded_firewall() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path().join("sub"), &TableName::default());
        assert!(state.load(&instance("web-1")).unwrap().is_none());
        let firewall = created("web-1");
        state.save(&firewall, &[], Vec::new()).unwrap();
        assert_eq!(state.path(), dir.path().join("sub/cassette.state"));
        assert_eq!(
            state.load(&instance("web-1")).unwrap().map(|s| s.firewall),
            Some(firewall)
        );
        state.save(&created("web-1"), &[], Vec::new()).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut names: Vec<_> = names.iter().filter_map(|n| n.to_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["cassette.journal", "cassette.state"],
            "no temporary files left"
        );
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        state.save(&created("web-1"), &[], Vec::new()).unwrap();
        let good = std::fs::read(state.path()).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(state.path(), &bad).unwrap();
            let error = state.load(&instance("web-1")).unwrap_err();
            assert!(
                matches!(error, StateError::Corrupt { .. }),
                "byte {at}: {error}"
            );
        }
        std::fs::write(state.path(), &good[..good.len() - 1]).unwrap();
        assert!(state.load(&instance("web-1")).is_err(), "truncated");
        std::fs::write(state.path(), b"").unwrap();
        assert!(state.load(&instance("web-1")).is_err(), "empty");
    }

    #[test]
    fn another_instances_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        state.save(&created("db-1"), &[], Vec::new()).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err();
        assert!(
            error.to_string().contains("belongs to instance \"db-1\""),
            "{error}"
        );
    }

    #[test]
    fn a_valid_checksum_over_an_inconsistent_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path(), &TableName::default());
        let firewall = created("web-1");
        let mut wire = pb::EnforcerState {
            instance_id: "web-1".into(),
            revision: 1,
            firewall: Some(firewall_to_pb(&firewall)),
            firewall_deleted: false,
            ruleset_hash: "0".repeat(64),
            save_time: None,
            version: String::new(),
            unconfirmed: Vec::new(),
            locally_reverted: Vec::new(),
            journal_id: Vec::new(),
        };
        std::fs::write(state.path(), snapshot::encode(&wire)).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err().to_string();
        assert!(error.contains("renders to ruleset"), "{error}");
        wire.ruleset_hash = Ruleset::of(Some(&firewall)).hash();
        wire.revision = 2;
        std::fs::write(state.path(), snapshot::encode(&wire)).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err().to_string();
        assert!(error.contains("the state says web-1 revision 2"), "{error}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let mut state = StateFile::new(&file, &TableName::default());
        let error = state.save(&created("web-1"), &[], Vec::new()).unwrap_err();
        assert!(matches!(error, StateError::Save { .. }), "{error}");
        assert!(matches!(
            state.load(&instance("web-1")),
            Err(StateError::Unreadable { .. })
        ));
    }

    /// The SSH rule turned off, then on, `n` times after `firewall`: the
    /// wire events and the firewall after each.
    fn toggles(mut firewall: Firewall, n: usize) -> Vec<(pb::Event, Firewall)> {
        let ssh = cassette_model::RuleId::parse("default-ssh").unwrap();
        (0..n)
            .map(|i| {
                let event = Event {
                    sequence: firewall.revision + 1,
                    revision: firewall.revision + 1,
                    commit_time: firewall.create_time + Duration::from_secs(i as u64 + 1),
                    payload: if i % 2 == 0 {
                        EventPayload::RuleDisabled {
                            rule_id: ssh.clone(),
                        }
                    } else {
                        EventPayload::RuleEnabled {
                            rule_id: ssh.clone(),
                        }
                    },
                    ..event_of(&firewall)
                };
                firewall = fold(Some(firewall.clone()), &event).unwrap();
                (cassette_proto::event_to_pb(&event, &[]), firewall.clone())
            })
            .collect()
    }

    #[test]
    fn each_save_after_the_first_is_one_journal_record_and_loads_folded() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        let first = created("web-1");
        assert_eq!(
            state.save(&first, &[], Vec::new()).unwrap(),
            Saving::Compacted,
            "a process's first save"
        );
        let snapshot = std::fs::read(state.path()).unwrap();
        let mut last = first.clone();
        for (event, firewall) in toggles(first, 5) {
            assert_eq!(
                state.save(&firewall, &[], vec![event]).unwrap(),
                Saving::Appended
            );
            assert_eq!(
                state.load(&instance("web-1")).unwrap().unwrap().firewall,
                firewall
            );
            last = firewall;
        }
        assert_eq!(
            std::fs::read(state.path()).unwrap(),
            snapshot,
            "the snapshot was not rewritten"
        );
        // Events that do not continue the last save (a history that started
        // over, a lost batch) compact instead.
        let (event, firewall) = toggles(last.clone(), 2).pop().unwrap();
        assert_eq!(
            state.save(&firewall, &[], vec![event]).unwrap(),
            Saving::Compacted
        );
        assert_eq!(
            state.load(&instance("web-1")).unwrap().unwrap().firewall,
            firewall
        );
        // A new process (no open journal) compacts on its first save.
        let mut again = StateFile::new(dir.path(), &TableName::default());
        assert_eq!(
            again.save(&firewall, &[], Vec::new()).unwrap(),
            Saving::Compacted
        );
    }

    #[test]
    fn a_full_journal_is_compacted_into_a_new_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        let first = created("web-1");
        state.save(&first, &[], Vec::new()).unwrap();
        let mut compactions = 0;
        let changes = toggles(first, 6000);
        let last = changes.last().unwrap().1.clone();
        for (event, firewall) in changes {
            if state.save(&firewall, &[], vec![event]).unwrap() == Saving::Compacted {
                compactions += 1;
            }
        }
        assert!((1..=3).contains(&compactions), "{compactions} compactions");
        assert_eq!(
            state.load(&instance("web-1")).unwrap().unwrap().firewall,
            last
        );
        let size = std::fs::metadata(state.journal_path()).unwrap().len();
        assert_eq!(
            size,
            journal::JOURNAL_BYTES as u64,
            "preallocated, never grown"
        );
    }

    #[test]
    fn a_damaged_journal_is_refused_and_a_torn_last_record_is_the_state_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        let first = created("web-1");
        state.save(&first, &[], Vec::new()).unwrap();
        let start = std::fs::read(state.journal_path()).unwrap();
        let mut states = vec![first.clone()];
        for (event, firewall) in toggles(first, 3) {
            state.save(&firewall, &[], vec![event]).unwrap();
            states.push(firewall);
        }
        let good = std::fs::read(state.journal_path()).unwrap();
        let used = good.iter().rposition(|b| *b != 0).unwrap() + 1;
        let last_record = good[..used].windows(4).rposition(|w| w == b"CJRN").unwrap();
        assert!(start[last_record..].iter().all(|b| *b == 0));
        let web = instance("web-1");
        for at in 0..used {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(state.journal_path(), &bad).unwrap();
            match state.load(&web) {
                Err(StateError::Corrupt { path, .. }) => {
                    assert_eq!(path, state.journal_path(), "byte {at}");
                    assert!(at < last_record, "byte {at}: the last record is a tail");
                }
                Ok(Some(saved)) => {
                    assert!(at >= last_record, "byte {at} of an earlier record taken");
                    assert_eq!(saved.firewall, states[2], "byte {at}: the state before");
                }
                other => panic!("byte {at}: {other:?}"),
            }
        }
        // Torn: the last record only partly written (the zeros after it).
        for end in last_record..used {
            let mut torn = good.clone();
            torn[end..used].fill(0);
            std::fs::write(state.journal_path(), &torn).unwrap();
            assert_eq!(state.load(&web).unwrap().unwrap().firewall, states[2]);
        }
        std::fs::write(state.journal_path(), &good[..10]).unwrap();
        assert!(state.load(&web).is_err(), "a truncated header");
    }

    #[test]
    fn a_crash_between_the_snapshot_and_its_journal_loads_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), &TableName::default());
        let first = created("web-1");
        state.save(&first, &[], Vec::new()).unwrap();
        let (event, firewall) = toggles(first, 1).pop().unwrap();
        state.save(&firewall, &[], vec![event]).unwrap();
        // A compaction wrote a snapshot naming a new journal; the crash came
        // before that journal replaced the old one.
        snapshot::write(
            dir.path(),
            state.path(),
            &firewall,
            &[],
            Some(journal::new_id()),
        )
        .unwrap();
        assert_eq!(
            state.load(&instance("web-1")).unwrap().unwrap().firewall,
            firewall
        );
        // A journal without its snapshot is not read at all.
        std::fs::remove_file(state.path()).unwrap();
        assert!(state.load(&instance("web-1")).unwrap().is_none());
    }
}
