//! A pack of the sled log's records, as arbitrary bytes (a damaged disk, a
//! writer with access to the store): its records are handed out in order,
//! each a non-empty range inside the pack right after the one before, until
//! its framing fails once, and never a panic; the records it gives (if
//! any: an empty pack is malformed), packed again, unpack to the same
//! records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut records = Vec::new();
    let mut end = 0;
    let mut failed = false;
    for (i, record) in cassette_eventlog::unpack(7, data).enumerate() {
        assert!(!failed, "nothing after a framing fault");
        match record {
            Ok((sequence, range)) => {
                assert_eq!(sequence, 7 + i as u64);
                assert!(range.start > end, "a length before each record");
                assert!(range.start < range.end && range.end <= data.len());
                end = range.end;
                records.push(&data[range]);
            }
            Err(cassette_eventlog::LogError::Corrupt { sequence, .. }) => {
                assert_eq!(sequence, 7 + i as u64);
                failed = true;
            }
            Err(other) => panic!("not a corrupt record: {other}"),
        }
    }
    assert!(failed || end == data.len(), "a pack is read to its end");
    if records.is_empty() {
        return;
    }
    let again = cassette_eventlog::pack(records.iter().copied());
    let reread: Vec<&[u8]> = cassette_eventlog::unpack(7, &again)
        .map(|r| &again[r.expect("a pack it wrote unpacks").1])
        .collect();
    assert_eq!(reread, records);
});
