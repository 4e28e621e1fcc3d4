//! A stored log record, as arbitrary bytes: decoded or named as corrupt,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = cassette_eventlog::decode(1, data) {
        assert_eq!(record.event.sequence, 1);
    }
});
