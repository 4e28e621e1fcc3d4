//! An enforcer's state file, as arbitrary bytes (a damaged disk, another
//! tool's file): trusted only if it checks out, never a panic. Half the inputs
//! are framed with a valid magic and checksum, so that the payload's decoding
//! and checks are explored, not only the checksum.
#![no_main]

use cassette_enforcement::StateFile;
use cassette_model::InstanceId;
use cassette_ruleset::{Ruleset, TableName};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let state = StateFile::new("/nonexistent", &TableName::default());
    let Ok(instance) = InstanceId::parse("web-1") else {
        return;
    };
    let Some((&mode, payload)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        payload.to_vec()
    } else {
        let mut framed = b"CSTATE01".to_vec();
        framed.extend_from_slice(&Sha256::digest(payload));
        framed.extend_from_slice(payload);
        framed
    };
    if let Ok(saved) = state.parse(&bytes, &instance) {
        assert_eq!(saved.firewall.instance_id, instance);
        // What is trusted renders: the fold's invariants held, and so does
        // the firewall with its local reverts undone.
        let _ = Ruleset::of(Some(&saved.firewall)).hash();
        let reverted = saved
            .firewall
            .reverted_locally(&saved.locally_reverted, std::time::SystemTime::now());
        let _ = Ruleset::of(Some(&reverted)).hash();
    }
});
