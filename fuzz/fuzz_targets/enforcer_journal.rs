//! An enforcer's state journal, as arbitrary bytes after a good snapshot (a
//! damaged disk, a torn write, another journal): its records are trusted only
//! if they check out, never a panic. Half the inputs are framed as records of
//! the right journal (header, index, checksum), so that the records' decoding
//! and their fold are explored, not only the checksums.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use cassette_enforcement::StateFile;
use cassette_model::{default_rules, fold, ActorId, Event, EventPayload, InstanceId};
use cassette_ruleset::{Ruleset, TableName};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// A snapshot of `web-1` just created, and the id of the journal it names.
fn snapshot() -> &'static (Vec<u8>, Vec<u8>) {
    static SNAPSHOT: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let instance = InstanceId::parse("web-1").expect("a valid id");
        let event = Event {
            sequence: 1,
            instance_id: instance,
            revision: 1,
            event_id: Default::default(),
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
        let firewall = fold(None, &event).expect("a created firewall");
        let dir = std::env::temp_dir().join(format!("cassette-fuzz-{}", std::process::id()));
        let mut state = StateFile::new(&dir, &TableName::default());
        state.save(&firewall, &[], Vec::new()).expect("saved");
        let snapshot = std::fs::read(state.path()).expect("the snapshot");
        let journal = std::fs::read(state.journal_path()).expect("the journal");
        let _ = std::fs::remove_dir_all(&dir);
        (snapshot, journal[8..24].to_vec())
    })
}

fuzz_target!(|data: &[u8]| {
    let (snapshot, id) = snapshot();
    let state = StateFile::new("/nonexistent", &TableName::default());
    let Ok(instance) = InstanceId::parse("web-1") else {
        return;
    };
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let journal = if mode % 2 == 0 {
        input.to_vec()
    } else {
        // The right header, then each chunk (split at 0xff bytes) as a record.
        let mut bytes = b"CJOURN01".to_vec();
        bytes.extend_from_slice(id);
        let hash = Sha256::digest(&bytes);
        bytes.extend_from_slice(&hash);
        for (index, payload) in input.split(|b| *b == 0xff).enumerate() {
            let index = index as u64;
            let mut hasher = Sha256::new();
            hasher.update(id);
            hasher.update(index.to_le_bytes());
            hasher.update((payload.len() as u32).to_le_bytes());
            hasher.update(payload);
            bytes.extend_from_slice(b"CJRN");
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&index.to_le_bytes());
            bytes.extend_from_slice(&hasher.finalize());
            bytes.extend_from_slice(payload);
        }
        bytes
    };
    if let Ok(saved) = state.parse_with_journal(snapshot, Some(&journal), &instance) {
        assert_eq!(saved.firewall.instance_id, instance);
        let _ = Ruleset::of(Some(&saved.firewall)).hash();
        let reverted = saved
            .firewall
            .reverted_locally(&saved.locally_reverted, SystemTime::now());
        let _ = Ruleset::of(Some(&reverted)).hash();
    }
});
