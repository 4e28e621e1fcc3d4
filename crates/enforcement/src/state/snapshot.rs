//! The state file's format, `<table>.state`: the magic `CSTATE01`, the
//! SHA-256 of the payload, then the payload (protobuf `EnforcerState`, which
//! carries the folded firewall so that later events fold onto it). Written
//! to a temporary file that is fsynced, renamed over the old one, and the
//! directory fsynced: a crash leaves the old snapshot or the new one, never
//! half of one.

use std::io::Write as _;
use std::path::Path;
use std::time::SystemTime;

use cassette_model::{Firewall, InstanceId};
use cassette_proto::{firewall_from_saved, firewall_to_pb, pb, unconfirmed_to_saved};
use cassette_ruleset::Ruleset;
use prost::Message as _;
use sha2::{Digest, Sha256};

use super::journal::JournalId;
use super::Saved;

const MAGIC: &[u8; 8] = b"CSTATE01";
const CHECKSUM_LEN: usize = 32;

/// Why a snapshot's bytes are not trusted.
pub(crate) enum Refused {
    Corrupt(String),
    OtherInstance(String),
}

/// A snapshot that checks out, and the journal that continues it.
pub(crate) struct Snapshot {
    pub(crate) saved: Saved,
    pub(crate) journal: Option<JournalId>,
}

/// A snapshot's bytes as `instance`'s state, if they check out in every
/// respect: magic, checksum, encoding, instance, the fold's invariants,
/// revision and ruleset hash.
pub(crate) fn parse(bytes: &[u8], instance: &InstanceId) -> Result<Snapshot, Refused> {
    let state = decode(bytes).map_err(Refused::Corrupt)?;
    if state.instance_id != instance.as_str() {
        return Err(Refused::OtherInstance(state.instance_id));
    }
    let corrupt = Refused::Corrupt;
    let wire = state
        .firewall
        .as_ref()
        .ok_or_else(|| corrupt("no firewall".into()))?;
    let firewall = firewall_from_saved(wire, state.firewall_deleted, &state.unconfirmed)
        .map_err(|e| corrupt(format!("firewall.{e}")))?;
    check_local_reverts(&firewall, &state.locally_reverted).map_err(corrupt)?;
    if firewall.instance_id != *instance || firewall.revision != state.revision {
        return Err(corrupt(format!(
            "the firewall is {} revision {}, the state says {} revision {}",
            firewall.instance_id, firewall.revision, state.instance_id, state.revision
        )));
    }
    check_ruleset(&firewall, &state.ruleset_hash).map_err(corrupt)?;
    let journal = match state.journal_id.len() {
        0 => None,
        _ => Some(state.journal_id.as_slice().try_into().map_err(|_| {
            corrupt(format!(
                "journal_id has {} bytes, not 16",
                state.journal_id.len()
            ))
        })?),
    };
    Ok(Snapshot {
        saved: Saved {
            firewall,
            locally_reverted: state.locally_reverted,
        },
        journal,
    })
}

/// Every locally reverted revision is one of the firewall's unconfirmed changes.
pub(crate) fn check_local_reverts(firewall: &Firewall, reverted: &[u64]) -> Result<(), String> {
    match reverted
        .iter()
        .find(|r| firewall.unconfirmed().iter().all(|c| c.revision != **r))
    {
        Some(revision) => Err(format!(
            "locally_reverted names revision {revision}, which is not an unconfirmed change"
        )),
        None => Ok(()),
    }
}

/// The firewall renders to `hash` (by this renderer or an earlier one).
pub(crate) fn check_ruleset(firewall: &Firewall, hash: &str) -> Result<(), String> {
    let ruleset = Ruleset::of(Some(firewall));
    if ruleset.hash_matches(hash) {
        return Ok(());
    }
    Err(format!(
        "the firewall renders to ruleset {}, the state says {hash:?}",
        ruleset.hash()
    ))
}

/// Writes the snapshot of `firewall` atomically and durably.
pub(crate) fn write(
    dir: &Path,
    path: &Path,
    firewall: &Firewall,
    locally_reverted: &[u64],
    journal: Option<JournalId>,
) -> std::io::Result<()> {
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
        journal_id: journal.map(Vec::from).unwrap_or_default(),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".state-")
        .tempfile_in(dir)?;
    temp.write_all(&encode(&state))?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    // The rename itself must survive a power cut.
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) fn encode(state: &pb::EnforcerState) -> Vec<u8> {
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
