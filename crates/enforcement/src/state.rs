//! The enforcer's memory across restarts: what it last put in force, saved
//! after every apply, so that an instance that reboots while the rules service
//! is away comes back with its own firewall instead of the defaults
//! (fail-static across a reboot).
//!
//! One file per table, `<dir>/<table>.state`: the magic `CSTATE01`, the
//! SHA-256 of the payload, then the payload (protobuf `EnforcerState`, which
//! carries the folded firewall so that later events fold onto it). Written to
//! a temporary file that is fsynced, renamed over the old one, and the
//! directory fsynced: a crash leaves the old state or the new one, never half
//! of one. A file that does not check out in every respect is never trusted.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cassette_model::{Firewall, InstanceId};
use cassette_proto::{firewall_from_saved, firewall_to_pb, pb, unconfirmed_to_saved};
use cassette_ruleset::{Ruleset, TableName};
use prost::Message as _;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CSTATE01";
const CHECKSUM_LEN: usize = 32;
/// A firewall of 1024 rules with long descriptions is well under this.
const MAX_FILE_BYTES: u64 = 4 << 20;

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

/// Where one enforcer keeps its state: a directory, and the table it owns.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
    path: PathBuf,
}

impl StateFile {
    pub fn new(dir: impl Into<PathBuf>, table: &TableName) -> Self {
        let dir = dir.into();
        let path = dir.join(format!("{}.state", table.as_str()));
        Self { dir, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The firewall saved for `instance`; `None` when nothing was ever saved
    /// (the instance never synced here).
    pub fn load(&self, instance: &InstanceId) -> Result<Option<Saved>, StateError> {
        let bytes = match read_bounded(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Unreadable {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        self.parse(&bytes, instance).map(Some)
    }

    /// A state file's bytes as `instance`'s firewall, if they check out in
    /// every respect: magic, checksum, encoding, instance, the fold's
    /// invariants, revision and ruleset hash.
    pub fn parse(&self, bytes: &[u8], instance: &InstanceId) -> Result<Saved, StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let state = decode(bytes).map_err(corrupt)?;
        if state.instance_id != instance.as_str() {
            return Err(StateError::OtherInstance {
                path: self.path.clone(),
                found: state.instance_id,
                expected: instance.clone(),
            });
        }
        let wire = state
            .firewall
            .as_ref()
            .ok_or_else(|| corrupt("no firewall".into()))?;
        let firewall = firewall_from_saved(wire, state.firewall_deleted, &state.unconfirmed)
            .map_err(|e| corrupt(format!("firewall.{e}")))?;
        if let Some(revision) = state
            .locally_reverted
            .iter()
            .find(|r| firewall.unconfirmed().iter().all(|c| c.revision != **r))
        {
            return Err(corrupt(format!(
                "locally_reverted names revision {revision}, which is not an unconfirmed change"
            )));
        }
        if firewall.instance_id != *instance || firewall.revision != state.revision {
            return Err(corrupt(format!(
                "the firewall is {} revision {}, the state says {} revision {}",
                firewall.instance_id, firewall.revision, state.instance_id, state.revision
            )));
        }
        let ruleset = Ruleset::of(Some(&firewall));
        if !ruleset.hash_matches(&state.ruleset_hash) {
            let hash = ruleset.hash();
            return Err(corrupt(format!(
                "the firewall renders to ruleset {hash}, the state says {:?}",
                state.ruleset_hash
            )));
        }
        Ok(Saved {
            firewall,
            locally_reverted: state.locally_reverted,
        })
    }

    /// Saves `firewall` (folded) with the changes reverted locally (what the
    /// kernel now holds is that firewall with them undone), atomically and
    /// durably.
    pub fn save(&self, firewall: &Firewall, locally_reverted: &[u64]) -> Result<(), StateError> {
        let state = pb::EnforcerState {
            instance_id: firewall.instance_id.to_string(),
            revision: firewall.revision,
            firewall: Some(firewall_to_pb(firewall)),
            firewall_deleted: !firewall.is_live(),
            ruleset_hash: Ruleset::of(Some(firewall)).hash(),
            save_time: Some(SystemTime::now().into()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            unconfirmed: unconfirmed_to_saved(firewall),
            locally_reverted: locally_reverted.to_vec(),
        };
        let fail = |source| StateError::Save {
            path: self.path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(fail)?;
        let mut temp = tempfile::Builder::new()
            .prefix(".state-")
            .tempfile_in(&self.dir)
            .map_err(fail)?;
        temp.write_all(&encode(&state))
            .and_then(|()| temp.as_file().sync_all())
            .map_err(fail)?;
        temp.persist(&self.path).map_err(|e| fail(e.error))?;
        // The rename itself must survive a power cut.
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(fail)
    }
}

// Loading and saving off the async runtime (file I/O and fsync block).
impl StateFile {
    pub async fn load_off_runtime(
        &self,
        instance: &InstanceId,
    ) -> Result<Option<Saved>, StateError> {
        let (state, instance) = (self.clone(), instance.clone());
        tokio::task::spawn_blocking(move || state.load(&instance))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Unreadable {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    pub async fn save_off_runtime(
        &self,
        firewall: Firewall,
        locally_reverted: Vec<u64>,
    ) -> Result<(), StateError> {
        let state = self.clone();
        tokio::task::spawn_blocking(move || state.save(&firewall, &locally_reverted))
            .await
            .unwrap_or_else(|e| {
                Err(StateError::Save {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            })
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

fn encode(state: &pb::EnforcerState) -> Vec<u8> {
    let payload = state.encode_to_vec();
    let mut bytes = Vec::with_capacity(MAGIC.len() + CHECKSUM_LEN + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(&payload));
    bytes.extend_from_slice(&payload);
    bytes
}

fn decode(bytes: &[u8]) -> Result<pb::EnforcerState, String> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err("not an enforcer state file (bad magic)".into());
    };
    if rest.len() < CHECKSUM_LEN {
        return Err(format!("truncated at {} bytes", bytes.len()));
    }
    let (checksum, payload) = rest.split_at(CHECKSUM_LEN);
    if Sha256::digest(payload).as_slice() != checksum {
        return Err("checksum mismatch".into());
    }
    pb::EnforcerState::decode(payload).map_err(|e| format!("undecodable: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cassette_model::{default_rules, fold, ActorId, Event, EventPayload};

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
        let state = StateFile::new(dir.path(), &TableName::default());
        let firewall = ssh_off_unconfirmed();
        assert_eq!(firewall.unconfirmed().len(), 1);
        state.save(&firewall, &[2]).unwrap();
        let saved = state.load(&instance("web-1")).unwrap().unwrap();
        assert_eq!(saved.firewall, firewall, "with what a revert needs");
        assert_eq!(saved.locally_reverted, [2]);
        // A local revert of a change the firewall does not hold is refused.
        state.save(&firewall, &[7]).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err().to_string();
        assert!(
            error.contains("locally_reverted names revision 7"),
            "{error}"
        );
    }

    #[test]
    fn saves_and_loads_the_folded_firewall() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path().join("sub"), &TableName::default());
        assert!(state.load(&instance("web-1")).unwrap().is_none());
        let firewall = created("web-1");
        state.save(&firewall, &[]).unwrap();
        assert_eq!(state.path(), dir.path().join("sub/cassette.state"));
        assert_eq!(
            state.load(&instance("web-1")).unwrap().map(|s| s.firewall),
            Some(firewall)
        );
        state.save(&created("web-1"), &[]).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cassette.state"], "no temporary files left");
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateFile::new(dir.path(), &TableName::default());
        state.save(&created("web-1"), &[]).unwrap();
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
        let state = StateFile::new(dir.path(), &TableName::default());
        state.save(&created("db-1"), &[]).unwrap();
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
        };
        std::fs::write(state.path(), encode(&wire)).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err().to_string();
        assert!(error.contains("renders to ruleset"), "{error}");
        wire.ruleset_hash = Ruleset::of(Some(&firewall)).hash();
        wire.revision = 2;
        std::fs::write(state.path(), encode(&wire)).unwrap();
        let error = state.load(&instance("web-1")).unwrap_err().to_string();
        assert!(error.contains("the state says web-1 revision 2"), "{error}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"").unwrap();
        let state = StateFile::new(&file, &TableName::default());
        let error = state.save(&created("web-1"), &[]).unwrap_err();
        assert!(matches!(error, StateError::Save { .. }), "{error}");
        assert!(matches!(
            state.load(&instance("web-1")),
            Err(StateError::Unreadable { .. })
        ));
    }
}
