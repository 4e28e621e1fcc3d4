//! The sled log's instance index checkpoint, as arbitrary bytes (a damaged
//! disk, a file someone else wrote): refused or decoded, never a panic, and
//! what decodes encodes to bytes that decode and encode back to the same.
//! Half the inputs are framed with a valid header and checksum, so that the
//! payload's decoding and checks are explored, not only the checksum.
#![no_main]

use cassette_eventlog::instance_index::InstanceIndex;
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let framed;
    let bytes = match data.split_first() {
        Some((selector, payload)) if selector % 2 == 0 => {
            let mut file = b"CIDX0001".to_vec();
            file.extend_from_slice(&Sha256::digest(payload));
            file.extend_from_slice(payload);
            framed = file;
            &framed[..]
        }
        _ => data,
    };
    if let Ok((anchor, index)) = InstanceIndex::decode(bytes) {
        let encoded = index.encode(anchor);
        let (again_anchor, again) =
            InstanceIndex::decode(&encoded).expect("what decoded, encoded, decodes");
        assert_eq!(again_anchor, anchor);
        assert_eq!(again.encode(anchor), encoded);
        // Lookups on whatever it holds stay in bounds.
        if let Ok(id) = cassette_model::InstanceId::parse("a") {
            let _ = again.sequences(&id, 0, u64::MAX, u64::MAX);
            let _ = again.last_revision_through(&id, anchor.sequence / 2);
        }
    }
});
