//! Projection snapshots: the rules service's projection (every firewall
//! folded from the log, and the idempotency keys its events carry) at one
//! record of the log, its anchor, in `<data-dir>/projection.snapshot`, so
//! that start-up loads it and replays only the records after the anchor.
//!
//! The format is in `proto/cassette/firewall/v1/snapshot.proto`: the magic
//! `CPROJ001`, the SHA-256 of the payload, the seal (the log's signing key
//! over the anchor and that SHA-256; empty on an unsigned log), then the
//! payload. A snapshot is only ever a shortcut: [`decode`] refuses anything
//! that does not check out in every respect (and, with trusted keys, one no
//! trusted key sealed), its anchor must be the log's record, and the service
//! walks and folds the records up to the anchor again in the background.
//! Here: the format and the file; the store decides when to write and what
//! to trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use cassette_model::{ActorId, Firewall, RequestDigest, RequestId};
use cassette_proto::{firewall_from_saved, firewall_to_pb, pb, unconfirmed_to_saved};
use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::files::Kept;
use crate::signing::{SigningKey, TrustedKeys};
use crate::{Hash, Head};

/// The snapshot's file in the log's directory.
pub const FILE: &str = "projection.snapshot";
/// Where a snapshot the service stopped trusting is moved, for a look.
pub const REFUSED_FILE: &str = "projection.snapshot.refused";

/// How the temporary file of a snapshot being written is named.
const TEMP_PREFIX: &str = ".projection-";
const MAGIC: &[u8; 8] = b"CPROJ001";
const CHECKSUM_LEN: usize = 32;
/// The magic, the checksum and the seal's length.
const HEADER_LEN: usize = MAGIC.len() + CHECKSUM_LEN + 4;

/// A request whose events carry an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRequest {
    pub actor: ActorId,
    pub on_behalf_of: Option<ActorId>,
    pub request_id: RequestId,
    /// The revision its last event made.
    pub revision: u64,
    pub digest: Option<RequestDigest>,
}

/// One instance's firewall and its applied requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFirewall {
    pub firewall: Arc<Firewall>,
    pub requests: Vec<AppliedRequest>,
}

/// A projection folded from every record up to `anchor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionSnapshot {
    pub anchor: Head,
    /// The latest commit time folded.
    pub last_time: SystemTime,
    /// In instance id order.
    pub firewalls: Vec<SnapshotFirewall>,
}

fn applied_to_pb(request: &AppliedRequest) -> pb::AppliedRequest {
    pb::AppliedRequest {
        actor: request.actor.as_str().to_owned(),
        on_behalf_of: request
            .on_behalf_of
            .as_ref()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default(),
        request_id: request.request_id.as_str().to_owned(),
        revision: request.revision,
        request_digest: request.digest.map(|d| d.0.to_vec()).unwrap_or_default(),
    }
}

fn applied_from_pb(request: &pb::AppliedRequest) -> Result<AppliedRequest, String> {
    let field = |e: cassette_model::ValidationError| e.to_string();
    Ok(AppliedRequest {
        actor: ActorId::parse(&request.actor).map_err(field)?,
        on_behalf_of: match request.on_behalf_of.as_str() {
            "" => None,
            actor => Some(ActorId::parse(actor).map_err(field)?),
        },
        request_id: RequestId::parse_optional(&request.request_id)
            .map_err(field)?
            .ok_or("an applied request has no request_id")?,
        revision: request.revision,
        digest: RequestDigest::parse_optional(&request.request_digest).map_err(field)?,
    })
}

/// The snapshot's bytes, sealed with `key` when the log is signed.
pub fn encode(snapshot: &ProjectionSnapshot, key: Option<&SigningKey>) -> Vec<u8> {
    let payload = pb::ProjectionSnapshot {
        head_sequence: snapshot.anchor.sequence,
        head_hash: snapshot.anchor.hash.to_vec(),
        last_commit_time: Some(snapshot.last_time.into()),
        firewalls: snapshot
            .firewalls
            .iter()
            .map(|f| pb::SnapshotFirewall {
                firewall: Some(firewall_to_pb(&f.firewall)),
                deleted: !f.firewall.is_live(),
                unconfirmed: unconfirmed_to_saved(&f.firewall),
                requests: f.requests.iter().map(applied_to_pb).collect(),
            })
            .collect(),
        snapshot_time: Some(SystemTime::now().into()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
    .encode_to_vec();
    let digest: Hash = Sha256::digest(&payload).into();
    let seal = key
        .map(|key| key.seal(snapshot.anchor, &digest).encode_to_vec())
        .unwrap_or_default();
    let mut bytes = Vec::with_capacity(HEADER_LEN + seal.len() + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&digest);
    // A seal is a key id and a 64-byte signature: far below 4 GiB.
    bytes.extend_from_slice(&(seal.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&seal);
    bytes.extend_from_slice(&payload);
    bytes
}

/// The snapshot in `bytes`, if it checks out in every respect: magic,
/// checksum, seal (with `trusted`: a trusted key's, over this anchor and
/// payload), encoding, and every firewall as strictly as a fold builds one.
/// Why not, otherwise.
pub fn decode(bytes: &[u8], trusted: Option<&TrustedKeys>) -> Result<ProjectionSnapshot, String> {
    if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a projection snapshot (no CPROJ001 header)".to_owned());
    }
    let (checksum, rest) = bytes[MAGIC.len()..].split_at(CHECKSUM_LEN);
    let (seal_len, rest) = rest.split_at(4);
    let seal_len = u32::from_le_bytes(seal_len.try_into().map_err(|_| "short header")?) as usize;
    if seal_len > rest.len() {
        return Err(format!(
            "the seal's length ({seal_len} bytes) runs past the file"
        ));
    }
    let (seal, payload) = rest.split_at(seal_len);
    let digest: Hash = Sha256::digest(payload).into();
    if digest.as_slice() != checksum {
        return Err("its checksum does not match its payload".to_owned());
    }
    let snapshot =
        pb::ProjectionSnapshot::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
    let anchor = Head {
        sequence: snapshot.head_sequence,
        hash: Hash::try_from(snapshot.head_hash.as_slice())
            .map_err(|_| format!("head_hash has {} bytes, not 32", snapshot.head_hash.len()))?,
    };
    if let Some(trusted) = trusted {
        if seal.is_empty() {
            return Err("it is not sealed, and the log is signed".to_owned());
        }
        let seal = pb::SnapshotSeal::decode(seal).map_err(|e| format!("undecodable seal: {e}"))?;
        trusted.check_seal(&seal, anchor, &digest)?;
    }
    let last_time = snapshot
        .last_commit_time
        .ok_or("last_commit_time is missing")
        .and_then(|t| SystemTime::try_from(t).map_err(|_| "last_commit_time is out of range"))?;
    let mut firewalls: Vec<SnapshotFirewall> = Vec::with_capacity(snapshot.firewalls.len());
    for (n, saved) in snapshot.firewalls.iter().enumerate() {
        let wire = saved
            .firewall
            .as_ref()
            .ok_or_else(|| format!("firewalls[{n}] has no firewall"))?;
        let firewall = firewall_from_saved(wire, saved.deleted, &saved.unconfirmed)
            .map_err(|e| format!("firewalls[{n}].{e}"))?;
        if firewall.revision > anchor.sequence {
            return Err(format!(
                "firewall {} is at revision {}, beyond the anchor's record {}",
                firewall.instance_id, firewall.revision, anchor.sequence
            ));
        }
        if let Some(before) = firewalls.last() {
            if before.firewall.instance_id >= firewall.instance_id {
                return Err(format!(
                    "firewalls are not in instance id order ({} before {})",
                    before.firewall.instance_id, firewall.instance_id
                ));
            }
        }
        let requests = saved
            .requests
            .iter()
            .map(applied_from_pb)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("firewall {}'s requests: {e}", firewall.instance_id))?;
        if let Some(r) = requests.iter().find(|r| r.revision > firewall.revision) {
            return Err(format!(
                "firewall {} is at revision {}, but a request appended revision {}",
                firewall.instance_id, firewall.revision, r.revision
            ));
        }
        firewalls.push(SnapshotFirewall {
            firewall: Arc::new(firewall),
            requests,
        });
    }
    Ok(ProjectionSnapshot {
        anchor,
        last_time,
        firewalls,
    })
}

const SNAPSHOT: Kept = Kept {
    name: FILE,
    temp_prefix: TEMP_PREFIX,
};

/// The snapshot file of the log in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    SNAPSHOT.path(dir)
}

/// The bytes of the snapshot in `dir`, if there is one.
pub fn read(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    SNAPSHOT.read(dir)
}

/// Replaces the snapshot in `dir` with `bytes` (a crash leaves the old
/// snapshot or the new one).
pub fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    SNAPSHOT.replace(dir, bytes)
}

/// Removes what writes cut short by a crash left in `dir` (temporary
/// files never renamed into place).
pub fn remove_leftovers(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Moves the snapshot in `dir` aside (to [`REFUSED_FILE`]), so that the
/// next start replays the whole log.
pub fn set_aside(dir: &Path) -> std::io::Result<()> {
    match std::fs::rename(path(dir), dir.join(REFUSED_FILE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => std::fs::File::open(dir)?.sync_all(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::created;

    fn snapshot() -> ProjectionSnapshot {
        let event = created(1, "web-1");
        let firewall = cassette_model::fold(None, &event).unwrap();
        ProjectionSnapshot {
            anchor: Head {
                sequence: 7,
                hash: [7; 32],
            },
            last_time: event.commit_time,
            firewalls: vec![SnapshotFirewall {
                firewall: Arc::new(firewall),
                requests: vec![AppliedRequest {
                    actor: ActorId::parse("alice").unwrap(),
                    on_behalf_of: None,
                    request_id: RequestId::parse_optional("r-1").unwrap().unwrap(),
                    revision: 1,
                    digest: Some(RequestDigest([3; 32])),
                }],
            }],
        }
    }

    fn key() -> SigningKey {
        SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap()
    }

    #[test]
    fn a_snapshot_decodes_to_what_was_encoded_and_every_flipped_byte_is_refused() {
        let snapshot = snapshot();
        let bytes = encode(&snapshot, None);
        assert_eq!(decode(&bytes, None).unwrap(), snapshot);
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            // A byte of the seal's (empty) space does not exist: every byte
            // is the header, the checksum or the payload.
            assert!(
                decode(&flipped, None).is_err(),
                "byte {i} flipped was accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], None).is_err(), "{len} bytes accepted");
        }
    }

    #[test]
    fn with_trusted_keys_only_a_trusted_keys_seal_over_this_anchor_is_accepted() {
        let (key, other) = (key(), key());
        let trusted = TrustedKeys::from_pem(&key.public_key_pem()).unwrap();
        let snapshot = snapshot();
        let sealed = encode(&snapshot, Some(&key));
        assert_eq!(decode(&sealed, Some(&trusted)).unwrap(), snapshot);
        // Unsealed, or sealed by a key the log does not trust: refused.
        assert!(decode(&encode(&snapshot, None), Some(&trusted))
            .unwrap_err()
            .contains("not sealed"));
        assert!(decode(&encode(&snapshot, Some(&other)), Some(&trusted))
            .unwrap_err()
            .contains("not a trusted key"));
        // The seal of another anchor, with a checksum that matches: refused.
        let mut moved = snapshot.clone();
        moved.anchor.sequence = 8;
        let moved_bytes = encode(&moved, None);
        let seal_len = sealed[MAGIC.len() + CHECKSUM_LEN..HEADER_LEN].to_vec();
        let seal_end =
            HEADER_LEN + u32::from_le_bytes(seal_len.clone().try_into().unwrap()) as usize;
        let mut forged = moved_bytes[..MAGIC.len() + CHECKSUM_LEN].to_vec();
        forged.extend_from_slice(&seal_len);
        forged.extend_from_slice(&sealed[HEADER_LEN..seal_end]);
        forged.extend_from_slice(&moved_bytes[HEADER_LEN..]);
        assert!(decode(&forged, Some(&trusted))
            .unwrap_err()
            .contains("does not verify"));
        // Every flipped byte of a sealed snapshot is refused too.
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] ^= 0x80;
            assert!(
                decode(&flipped, Some(&trusted)).is_err(),
                "byte {i} flipped was accepted"
            );
        }
    }

    #[test]
    fn a_snapshot_is_replaced_whole_and_set_aside_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        write(dir.path(), b"first").unwrap();
        write(dir.path(), b"second").unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap(), b"second");
        // A write a crash cut short leaves its temporary file: removed.
        std::fs::write(dir.path().join(".projection-crashed"), b"half").unwrap();
        remove_leftovers(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        set_aside(dir.path()).unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        assert_eq!(
            std::fs::read(dir.path().join(REFUSED_FILE)).unwrap(),
            b"second"
        );
        // Nothing left behind but the two files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
