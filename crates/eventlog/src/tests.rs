use super::*;
use crate::test_events::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn appended_events_survive_reopen_with_their_index_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let batch = vec![created(1, "a"), created(2, "b"), disabled(3, "a", 2)];
    {
        let log = EventLog::open(dir.path()).unwrap();
        runtime().block_on(log.append(&batch)).unwrap();
    }
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.head().sequence, 3);
    assert_eq!(
        log.read_instance(&instance("a"), 0, u64::MAX).unwrap(),
        [batch[0].clone(), batch[2].clone()]
    );
    assert_eq!(
        log.read_instance(&instance("a"), 1, u64::MAX).unwrap(),
        [batch[2].clone()]
    );
    assert_eq!(
        log.read_instance(&instance("b"), 0, u64::MAX).unwrap(),
        [batch[1].clone()]
    );
    assert!(log
        .read_instance(&instance("c"), 0, u64::MAX)
        .unwrap()
        .is_empty());
    assert_eq!(
        log.read_instance(&instance("a"), 0, 1).unwrap(),
        [batch[0].clone()]
    );
    assert!(log.read_instance(&instance("a"), 2, 1).unwrap().is_empty());
    assert_eq!(log.last_revision(&instance("a")).unwrap(), 2);

    let records: Vec<Record> = log.scan(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].prev_hash, GENESIS_HASH);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[2].prev_hash, records[1].hash);
    assert_eq!(log.head().hash, records[2].hash);
    assert_eq!(log.scan(2).count(), 1);
}

#[test]
fn out_of_order_appends_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let rt = runtime();
    rt.block_on(log.append(&[created(1, "a")])).unwrap();
    for bad in [
        vec![created(3, "b")],                  // sequence gap
        vec![disabled(2, "a", 3)],              // revision gap
        vec![created(2, "b"), created(3, "b")], // revision repeated within a batch
    ] {
        let err = rt.block_on(log.append(&bad)).unwrap_err();
        assert!(matches!(err, LogError::OutOfOrder(_)), "{err}");
    }
    assert_eq!(log.head().sequence, 1);
    assert_eq!(log.scan(0).count(), 1);
}

#[test]
fn a_corrupt_record_is_an_error_naming_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    runtime()
        .block_on(log.append(&[created(1, "a"), disabled(2, "a", 2)]))
        .unwrap();
    log.tree
        .insert(event_key(2), &b"\xff\xff not protobuf"[..])
        .unwrap();
    let err = log.scan(0).nth(1).unwrap().unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { sequence: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("record 2"), "{err}");
    let err = log.read_instance(&instance("a"), 0, u64::MAX).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { sequence: 2, .. }),
        "{err}"
    );
}

fn history(dir: &std::path::Path) {
    let log = EventLog::open(dir).unwrap();
    let events: Vec<Event> = (1..=5)
        .map(|r| {
            if r == 1 {
                created(1, "a")
            } else {
                disabled(r, "a", r)
            }
        })
        .collect();
    runtime().block_on(log.append(&events)).unwrap();
}

#[test]
fn verify_accepts_an_untouched_log() {
    let dir = tempfile::tempdir().unwrap();
    history(dir.path());
    let log = EventLog::open(dir.path()).unwrap();
    let verification = log.verify().unwrap();
    assert!(verification.ok(), "{verification:?}");
    assert_eq!(verification.events_checked, 5);
    assert_eq!(verification.head, log.head());
}

#[test]
fn verify_names_the_first_bad_record_for_each_kind_of_tampering() {
    type Tampering = (&'static str, fn(&std::path::Path), u64);
    let cases: [Tampering; 6] = [
        ("a flipped bit", |d| tamper::flip_bit(d, 3).unwrap(), 3),
        (
            "a flipped bit in the first record",
            |d| tamper::flip_bit(d, 1).unwrap(),
            1,
        ),
        (
            "a flipped bit in the last record",
            |d| tamper::flip_bit(d, 5).unwrap(),
            5,
        ),
        ("a deleted record", |d| tamper::delete(d, 2).unwrap(), 2),
        (
            "a deleted last record",
            |d| tamper::delete(d, 5).unwrap(),
            5,
        ),
        ("two swapped records", |d| tamper::swap(d, 2, 4).unwrap(), 2),
    ];
    for (what, damage, first_bad) in cases {
        let dir = tempfile::tempdir().unwrap();
        history(dir.path());
        damage(dir.path());
        let verification = EventLog::open(dir.path()).unwrap().verify().unwrap();
        let (sequence, reason) = verification.first_bad.clone().expect(what);
        assert_eq!(sequence, first_bad, "{what}: {reason}");
        assert_eq!(verification.events_checked, first_bad - 1, "{what}");
    }
}
