//! A stored log record, as arbitrary bytes: decoded or named as corrupt,
//! never a panic; what decodes, stored again in either record encoding,
//! decodes to the same event; and the bytes a record gives back (ListEvents'
//! `with_records`) are its own.
#![no_main]

use cassette_proto::{event_to_record, RecordEncoding};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = cassette_eventlog::decode(1, data) {
        assert_eq!(record.event.sequence, 1);
        // What ListEvents' `with_records` sends is the stored bytes or nothing.
        if let Ok(bytes) = record.stored_bytes() {
            assert_eq!(bytes, data);
        }
        for encoding in [RecordEncoding::Full, RecordEncoding::Compact] {
            let bytes = event_to_record(&record.event, &record.prev_hash, encoding).encode_to_vec();
            let again = cassette_eventlog::decode(1, &bytes).expect("a record it wrote decodes");
            assert_eq!(again.event, record.event);
            assert_eq!(again.prev_hash, record.prev_hash);
        }
    }
});
