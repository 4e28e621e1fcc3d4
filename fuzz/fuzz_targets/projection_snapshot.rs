//! The rules service's projection snapshot, as arbitrary bytes (a damaged
//! disk, a file someone else wrote): refused or decoded, never a panic, and
//! what decodes encodes and decodes again to the same. Half the inputs are
//! framed with a valid header and checksum (and no seal), so that the
//! payload's decoding and every firewall's checks are explored, not only the
//! checksum.
#![no_main]

use cassette_eventlog::snapshot::{decode, encode};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let framed;
    let bytes = match data.split_first() {
        Some((selector, payload)) if selector % 2 == 0 => {
            let mut file = b"CPROJ001".to_vec();
            file.extend_from_slice(&Sha256::digest(payload));
            file.extend_from_slice(&0u32.to_le_bytes());
            file.extend_from_slice(payload);
            framed = file;
            &framed[..]
        }
        _ => data,
    };
    if let Ok(snapshot) = decode(bytes, None) {
        let again = decode(&encode(&snapshot, None), None).expect("what decoded, encoded, decodes");
        assert_eq!(again, snapshot);
    }
});
