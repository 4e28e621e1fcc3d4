use super::*;
use crate::instance_index::InstanceIndex;
use crate::sled_records as records;
use crate::test_events::*;
use crate::{Log, SignedHead, Signing, SigningKey, TrustedKeys};

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
    // A refused append leaves the revisions appends continue from as they were.
    rt.block_on(log.append(&[disabled(2, "a", 2)])).unwrap();
    let err = rt.block_on(log.append(&[disabled(3, "a", 2)])).unwrap_err();
    assert!(matches!(err, LogError::OutOfOrder(_)), "{err}");
}

#[test]
fn after_remove_after_appends_continue_each_instance_from_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let rt = runtime();
    let batch = [created(1, "a"), disabled(2, "a", 2), disabled(3, "a", 3)];
    rt.block_on(log.append(&batch)).unwrap();
    assert_eq!(log.remove_after(1).unwrap(), 2);
    // Revision 2 again, not 4: the removed records' revisions are gone too.
    let err = rt.block_on(log.append(&[disabled(2, "a", 4)])).unwrap_err();
    assert!(matches!(err, LogError::OutOfOrder(_)), "{err}");
    rt.block_on(log.append(&[disabled(2, "a", 2)])).unwrap();
    assert_eq!(log.last_revision(&instance("a")).unwrap(), 2);
    drop(log);
    // And after a reopen, read from the index.
    let log = EventLog::open(dir.path()).unwrap();
    rt.block_on(log.append(&[disabled(3, "a", 3)])).unwrap();
    let err = rt.block_on(log.append(&[disabled(4, "a", 3)])).unwrap_err();
    assert!(matches!(err, LogError::OutOfOrder(_)), "{err}");
}

#[test]
fn a_corrupt_record_is_an_error_naming_its_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    runtime()
        .block_on(log.append(&[created(1, "a"), disabled(2, "a", 2)]))
        .unwrap();
    records::replace(&log.tree, 2, Some(&b"\xff\xff not protobuf"[..])).unwrap();
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
    runtime().block_on(log.append(&five_events())).unwrap();
}

fn five_events() -> Vec<Event> {
    (1..=5)
        .map(|r| {
            if r == 1 {
                created(1, "a")
            } else {
                disabled(r, "a", r)
            }
        })
        .collect()
}

/// Appends `events` as a writer before packs did: a key per record.
fn append_unpacked(log: &EventLog, events: &[Event]) {
    let head = log.head();
    let (encoded, next) = chain::encode_batch(head, events, log.encoding, |i| {
        log.last_written_revision(i).map(Some)
    })
    .unwrap();
    let mut batch = sled::Batch::default();
    for record in &encoded {
        let key = records::event_key(record.event.sequence);
        batch.insert(&key[..], record.bytes.as_slice());
    }
    batch.insert(HEAD, chain::anchor_value(next));
    log.tree.apply_batch(batch).unwrap();
    log.db.flush().unwrap();
}

/// [`history`], as a writer before packs wrote it.
fn history_unpacked(dir: &std::path::Path) {
    append_unpacked(&EventLog::open(dir).unwrap(), &five_events());
    crate::instance_index::CHECKPOINT.remove(dir).unwrap();
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
    type Layout = (&'static str, fn(&std::path::Path));
    let layouts: [Layout; 2] = [("packed", history), ("a key per record", history_unpacked)];
    for ((layout, write), (what, damage, first_bad)) in layouts
        .into_iter()
        .flat_map(|l| cases.iter().map(move |c| (l, *c)))
    {
        let what = format!("{what} ({layout})");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path());
        assert!(EventLog::open(dir.path()).unwrap().verify().unwrap().ok());
        damage(dir.path());
        let verification = EventLog::open(dir.path()).unwrap().verify().unwrap();
        let (sequence, reason) = verification.first_bad.clone().expect(&what);
        assert_eq!(sequence, first_bad, "{what}: {reason}");
        assert_eq!(verification.events_checked, first_bad - 1, "{what}");
    }
}

fn key() -> SigningKey {
    SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap()
}

fn trusting(keys: &[&SigningKey]) -> TrustedKeys {
    let pem: String = keys.iter().map(|k| k.public_key_pem()).collect();
    TrustedKeys::from_pem(&pem).unwrap()
}

/// A signed log, whose store someone else then writes: every kind of
/// forgery that links correctly is found by its signature, named at the
/// first record no trusted signature covers, and nothing after the last
/// good signature is read; removing what follows it recovers the log.
#[test]
fn only_what_a_trusted_signature_covers_is_verified_and_served() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let signer = key();
    let trusted = trusting(&[&signer]);
    {
        let log = EventLog::open(dir.path()).unwrap();
        // Two appends: the first's records wait for its signature at 2.
        rt.block_on(log.append_signed(&[created(1, "a"), created(2, "b")], Some(&signer)))
            .unwrap();
        rt.block_on(log.append_signed(&[disabled(3, "a", 2)], Some(&signer)))
            .unwrap();
        let good = log
            .verify_from(Head::default(), Some(&trusted), |_| Ok(()))
            .unwrap();
        assert!(good.ok(), "{good:?}");
        assert_eq!(good.events_checked, 3);
        let signed = good.signed.expect("a signed head");
        assert_eq!(
            (signed.head, signed.key_id.as_str()),
            (good.head, signer.key_id())
        );
        assert_eq!(log.signature(3).unwrap(), Some(signed.clone()));
        assert_eq!(log.signature(1).unwrap(), None);
    }
    let stranger = key();
    let reused = {
        let log = EventLog::open(dir.path()).unwrap();
        log.signature(3).unwrap().unwrap()
    };
    let forgeries: [(&str, Option<SignedHead>, &str); 4] = [
        (
            "unsigned",
            None,
            "signature: no signature covers records 4 to 4: the log ends without one",
        ),
        (
            "another key",
            Some(stranger.sign(Head {
                sequence: 4,
                hash: [0; 32],
            })),
            "which is not a trusted key",
        ),
        ("a re-used signature", Some(reused), "signs record 3"),
        (
            "the trusted key's id on another key's signature",
            None,
            "does not verify",
        ),
    ];
    for (what, signed, reason) in forgeries {
        let copy = tempfile::tempdir().unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir.path().join("."))
            .arg(copy.path())
            .status()
            .unwrap();
        assert!(copied.success());
        // Correctly linked: the next sequence and revision, after the head.
        let forged = created(4, "c");
        let head = EventLog::open(copy.path()).unwrap().head();
        let signed = match (what, signed) {
            // A signature over the forged head itself, by a stranger.
            ("another key", _) | ("the trusted key's id on another key's signature", _) => {
                let (_, next) = chain::encode_batch(
                    head,
                    std::slice::from_ref(&forged),
                    RecordEncoding::Compact,
                    |_| Ok(Some(0)),
                )
                .unwrap();
                let mut s = stranger.sign(next);
                if what != "another key" {
                    s.key_id = signer.key_id().to_owned();
                }
                Some(s)
            }
            (_, signed) => signed,
        };
        tamper::append_forged(copy.path(), &forged, signed.as_ref()).unwrap();
        let log = EventLog::open(copy.path()).unwrap();
        // The chain alone takes it.
        assert!(log.verify().unwrap().ok(), "{what}: the hash chain holds");
        let log = Log::sled(log, Signing::verify_only(trusted.clone()));
        // Nothing is served before a verification vouched for it.
        assert!(rt.block_on(log.read_after(0, 10)).unwrap().is_empty());
        let found = rt.block_on(log.verify()).unwrap();
        let (sequence, why) = found.first_bad.clone().unwrap_or_default();
        assert_eq!(sequence, 4, "{what}: {why}");
        assert!(
            why.starts_with("signature:") && why.contains(reason),
            "{what}: {why}"
        );
        assert!(found.signature_failed());
        assert_eq!(
            (found.head.sequence, found.events_checked),
            (3, 3),
            "{what}"
        );
        // The verified prefix is served, the forged record is not.
        let served = rt.block_on(log.read_after(0, 10)).unwrap();
        assert_eq!(served.len(), 3, "{what}");
        assert_eq!(rt.block_on(log.last_revision(&instance("c"))).unwrap(), 0);
        assert!(rt
            .block_on(log.read_instance_records(&instance("c"), 0, 10))
            .unwrap()
            .is_empty());
        // The operator's way out.
        assert_eq!(rt.block_on(log.remove_after(3)).unwrap(), 1);
        assert!(rt.block_on(log.verify()).unwrap().ok(), "{what}: recovered");
    }
}

/// Rotation: the newest trusted signature vouches for everything before
/// it, whichever key signed the older records; a key no longer trusted
/// vouches for nothing it signed after the last trusted signature.
#[test]
fn a_rotated_key_vouches_for_the_history_and_an_untrusted_one_for_nothing() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (key(), key());
    let log = EventLog::open(dir.path()).unwrap();
    rt.block_on(log.append_signed(&[created(1, "a")], Some(&old)))
        .unwrap();
    rt.block_on(log.append_signed(&[created(2, "b")], Some(&new)))
        .unwrap();
    for trusted in [trusting(&[&new, &old]), trusting(&[&new])] {
        let verified = log
            .verify_from(Head::default(), Some(&trusted), |_| Ok(()))
            .unwrap();
        assert!(verified.ok(), "{verified:?}");
        assert_eq!(verified.signed.unwrap().key_id, new.key_id());
    }
    // The new key revoked: what only it signed is refused.
    let only_old = log
        .verify_from(Head::default(), Some(&trusting(&[&old])), |_| Ok(()))
        .unwrap();
    let (bad, reason) = only_old.first_bad.clone().unwrap();
    assert_eq!(bad, 2);
    assert!(reason.contains("not a trusted key"), "{reason}");
    assert_eq!(only_old.head.sequence, 1);
    assert_eq!(only_old.signed.unwrap().key_id, old.key_id());
    // Unsigned appends in a signed log are as bad as forged ones.
    rt.block_on(log.append(&[created(3, "c")])).unwrap();
    let unsigned = log
        .verify_from(Head::default(), Some(&trusting(&[&new, &old])), |_| Ok(()))
        .unwrap();
    assert_eq!(unsigned.first_bad.map(|b| b.0), Some(3));
    assert_eq!(unsigned.head.sequence, 2);
    // Past the newest signatures checked up front (here all a stranger's),
    // the walk checks each append's signature, with the same answer.
    let stranger = key();
    for n in 4..=(4 + chain::NEWEST_SIGNATURES_CHECKED as u64) {
        rt.block_on(log.append_signed(&[created(n, &format!("d{n}"))], Some(&stranger)))
            .unwrap();
    }
    let walked = log
        .verify_from(Head::default(), Some(&trusting(&[&new, &old])), |_| Ok(()))
        .unwrap();
    let (bad, reason) = walked.first_bad.clone().unwrap();
    assert_eq!((bad, walked.head.sequence), (3, 2), "{walked:?}");
    assert!(
        reason.contains("record 4") && reason.contains("not a trusted key"),
        "{reason}"
    );
    // A trusted signature after an unsigned record vouches for it: its
    // signer appended after it (a writer that meets a record it cannot
    // verify stops instead).
    log.remove_after(3).unwrap();
    rt.block_on(log.append_signed(&[created(4, "e")], Some(&new)))
        .unwrap();
    let vouched = log
        .verify_from(Head::default(), Some(&trusting(&[&new])), |_| Ok(()))
        .unwrap();
    assert!(vouched.ok(), "{vouched:?}");
}

fn revisions(log: &EventLog, name: &str) -> Vec<u64> {
    log.read_instance(&instance(name), 0, u64::MAX)
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect()
}

#[test]
fn the_instance_index_is_rebuilt_from_its_checkpoint_and_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let log = EventLog::open(dir.path()).unwrap();
        rt.block_on(log.append(&[created(1, "a"), created(2, "b")]))
            .unwrap();
        log.flush().unwrap();
    }
    let (anchor, _) = InstanceIndex::decode(
        &crate::instance_index::CHECKPOINT
            .read(dir.path())
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(anchor.sequence, 2);
    {
        // Appended after the checkpoint, closed without one (a crash).
        let log = EventLog::open(dir.path()).unwrap();
        rt.block_on(log.append(&[disabled(3, "a", 2), disabled(4, "b", 2)]))
            .unwrap();
    }
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(revisions(&log, "a"), [1, 3]);
    assert_eq!(revisions(&log, "b"), [2, 4]);
    assert_eq!(log.last_revision_through(&instance("b"), 3).unwrap(), 1);
    // Appends continue each instance from the records after the checkpoint.
    let err = rt.block_on(log.append(&[disabled(5, "a", 2)])).unwrap_err();
    assert!(matches!(err, LogError::OutOfOrder(_)), "{err}");
    rt.block_on(log.append(&[disabled(5, "a", 3)])).unwrap();
    assert_eq!(revisions(&log, "a"), [1, 3, 5]);
}

#[test]
fn a_checkpoint_that_does_not_check_out_is_ignored_and_one_that_lies_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let head = {
        let log = EventLog::open(dir.path()).unwrap();
        rt.block_on(log.append(&[created(1, "a"), created(2, "b"), disabled(3, "a", 2)]))
            .unwrap()
    };
    let lying = || {
        // a's first revision and b's swapped.
        let mut index = InstanceIndex::default();
        index.insert(&instance("a"), 1, 2);
        index.insert(&instance("b"), 1, 1);
        index.insert(&instance("a"), 2, 3);
        index
    };
    let omitting = {
        // a's second revision left out.
        let mut index = InstanceIndex::default();
        index.insert(&instance("a"), 1, 1);
        index.insert(&instance("b"), 1, 2);
        index.encode(head)
    };
    // Damaged, anchored at another record than the log's, or not indexing
    // each record once: ignored.
    let mut damaged = lying().encode(head);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let elsewhere = lying().encode(Head {
        sequence: 3,
        hash: [7; 32],
    });
    for bytes in [damaged, elsewhere, omitting] {
        crate::instance_index::CHECKPOINT
            .replace(dir.path(), &bytes)
            .unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        assert_eq!(revisions(&log, "a"), [1, 3]);
        assert_eq!(revisions(&log, "b"), [2]);
    }
    // Intact and anchored at the log's record but wrong: the records read
    // are checked against it, and nothing wrong is served.
    crate::instance_index::CHECKPOINT
        .replace(dir.path(), &lying().encode(head))
        .unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let err = log.read_instance(&instance("a"), 0, u64::MAX).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { sequence: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("indexed as instance a's revision 1"),
        "{err}"
    );
    // A walk of the log (every start makes one) corrects it from the records.
    assert!(log.verify().unwrap().ok());
    assert_eq!(revisions(&log, "a"), [1, 3]);
    assert_eq!(revisions(&log, "b"), [2]);
}

#[test]
fn opening_a_log_that_kept_its_index_in_sled_removes_those_keys() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let log = EventLog::open(dir.path()).unwrap();
        rt.block_on(log.append(&[created(1, "a"), created(2, "b"), disabled(3, "a", 2)]))
            .unwrap();
        // As the earlier layout kept them: `i` + instance + 0 + revision.
        for (name, revision, sequence) in [("a", 1u64, 1u64), ("b", 1, 2), ("a", 2, 3)] {
            let mut key = vec![OLD_INDEX];
            key.extend_from_slice(name.as_bytes());
            key.push(0);
            key.extend_from_slice(&revision.to_be_bytes());
            log.tree
                .insert(key, &chain::index_value(sequence, &[0; 32])[..])
                .unwrap();
        }
        log.db.flush().unwrap();
    }
    crate::instance_index::CHECKPOINT
        .remove(dir.path())
        .unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    log.end_old_index_removal(false);
    assert_eq!(log.tree.scan_prefix([OLD_INDEX]).count(), 0);
    assert_eq!(revisions(&log, "a"), [1, 3]);
    assert!(log.verify().unwrap().ok());
    log.flush().unwrap();
    assert!(crate::instance_index::CHECKPOINT.path(dir.path()).exists());
}

#[test]
fn a_log_of_full_and_compact_records_reads_and_verifies_as_one() {
    use cassette_proto::pb;
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    // Committed at a clock's time, not a whole second.
    let at_now = |mut event: Event| {
        event.commit_time += std::time::Duration::from_nanos(123_456_789);
        event
    };
    let full = [created(1, "a"), disabled(2, "a", 2), created(3, "b")].map(at_now);
    let compact = [
        disabled(4, "a", 3),
        disabled(5, "b", 2),
        disabled(6, "a", 4),
    ]
    .map(at_now);
    {
        // Written as a version before the compact encoding wrote them.
        let log = EventLog::open(dir.path())
            .unwrap()
            .with_record_encoding(RecordEncoding::Full);
        rt.block_on(log.append(&full)).unwrap();
    }
    let log = EventLog::open(dir.path()).unwrap();
    rt.block_on(log.append(&compact)).unwrap();
    let stored = |sequence| {
        let bytes = log.stored_record(sequence).unwrap().unwrap();
        (bytes.len(), pb::Event::decode(bytes.as_slice()).unwrap())
    };
    let (full_len, old) = stored(2);
    assert!(!old.event_id.is_empty() && old.commit_time.is_some());
    assert!(old.event_uuid.is_empty() && old.commit_unix_nanos == 0);
    let (compact_len, new) = stored(4);
    assert!(new.event_id.is_empty() && new.commit_time.is_none());
    assert_eq!(new.event_uuid, compact[0].event_id.as_bytes());
    assert!(new.commit_unix_nanos > 0);
    // The same event but for its id and time: 38 bytes (36 characters and
    // their tag and length) become 18, a Timestamp's 13 one fixed64's 9.
    assert_eq!(compact_len + 24, full_len);

    // Every read gives back the events as appended, whichever encoding.
    let all: Vec<Event> = full.iter().chain(&compact).cloned().collect();
    let scanned: Vec<Event> = log.scan(0).map(|r| r.unwrap().event).collect();
    assert_eq!(scanned, all);
    assert_eq!(
        log.read_instance(&instance("a"), 0, u64::MAX).unwrap(),
        [&all[0], &all[1], &all[3], &all[5]].map(Clone::clone)
    );
    // What each record holds gives back its stored bytes (ListEvents'
    // `with_records`), and nothing else does.
    for record in log.scan(0) {
        let record = record.unwrap();
        let stored = log.stored_record(record.event.sequence).unwrap();
        assert_eq!(Some(record.stored_bytes().unwrap()), stored);
        let mut other = record.clone();
        other.encoding = match record.encoding {
            RecordEncoding::Full => RecordEncoding::Compact,
            RecordEncoding::Compact => RecordEncoding::Full,
        };
        assert!(matches!(
            other.stored_bytes(),
            Err(LogError::Corrupt { .. })
        ));
    }
    // A stored record never carries a record field (only answers do).
    let (_, mut holding) = stored(1);
    holding.record = vec![1, 2, 3];
    let err = crate::decode(1, &holding.encode_to_vec()).unwrap_err();
    assert!(err.to_string().contains("record field"), "{err}");

    // One chain across both: each record hashed as stored.
    let verification = log.verify().unwrap();
    assert!(verification.ok(), "{verification:?}");
    assert_eq!(verification.head, log.head());
    drop(log);
    // A changed compact record is named like any other.
    tamper::flip_bit(dir.path(), 5).unwrap();
    let verification = EventLog::open(dir.path()).unwrap().verify().unwrap();
    assert_eq!(
        verification.first_bad.map(|(sequence, _)| sequence),
        Some(5)
    );
}

#[test]
fn a_revision_whose_record_was_removed_is_named_by_instance_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EventLog::open(dir.path()).unwrap();
        runtime()
            .block_on(log.append(&[created(1, "a"), disabled(2, "a", 2), disabled(3, "a", 3)]))
            .unwrap();
    }
    tamper::delete(dir.path(), 2).unwrap();
    crate::instance_index::CHECKPOINT
        .remove(dir.path())
        .unwrap();
    // Indexed from the records: revision 2 has none.
    let log = EventLog::open(dir.path()).unwrap();
    let err = log.read_instance(&instance("a"), 0, u64::MAX).unwrap_err();
    assert!(
        matches!(&err, LogError::MissingRevision { instance: i, revision: 2 } if i.as_str() == "a"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the event log holds no record of instance a's revision 2"
    );
    // Reads that do not reach it are served.
    assert_eq!(
        log.read_instance(&instance("a"), 2, u64::MAX)
            .unwrap()
            .len(),
        1
    );
}

/// `count` events from sequence `from` on, round-robin over three
/// instances that sequence 1..=3 created.
fn toggles(from: u64, count: u64, log: &EventLog) -> Vec<Event> {
    let mut next: std::collections::HashMap<&str, u64> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            (
                name,
                log.last_written_revision(&instance(name)).unwrap() + 1,
            )
        })
        .collect();
    (from..from + count)
        .map(|sequence| {
            let name = ["a", "b", "c"][(sequence % 3) as usize];
            let revision = next.get_mut(name).unwrap();
            *revision += 1;
            disabled(sequence, name, *revision - 1)
        })
        .collect()
}

fn keys(log: &EventLog, prefix: u8) -> Vec<u64> {
    log.tree
        .scan_prefix([prefix])
        .map(|entry| records::sequence_of(&entry.unwrap().0).unwrap())
        .collect()
}

#[test]
fn an_append_stores_packs_and_a_log_of_single_records_goes_on_in_packs() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    {
        let log = EventLog::open(dir.path()).unwrap();
        append_unpacked(&log, &[created(1, "a"), created(2, "b"), created(3, "c")]);
    }
    crate::instance_index::CHECKPOINT
        .remove(dir.path())
        .unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.head().sequence, 3);
    rt.block_on(log.append(&toggles(4, 40, &log))).unwrap();
    rt.block_on(log.append(&toggles(44, 1, &log))).unwrap();
    // Sixteen records a pack at most, and never across two appends.
    assert_eq!(keys(&log, records::EVENT), [1, 2, 3]);
    assert_eq!(keys(&log, records::PACK), [4, 20, 36, 44]);
    drop(log);

    let log = EventLog::open(dir.path()).unwrap();
    let head = log.head();
    assert_eq!(head.sequence, 44);
    let verification = log.verify().unwrap();
    assert!(verification.ok(), "{verification:?}");
    assert_eq!((verification.events_checked, verification.head), (44, head));
    let scanned: Vec<u64> = log.scan(18).map(|r| r.unwrap().event.sequence).collect();
    assert_eq!(scanned, (19..=44).collect::<Vec<_>>());
    assert_eq!(log.scan(44).count(), 0);
    assert_eq!(log.scan(u64::MAX).count(), 0);
    let a = log.read_instance(&instance("a"), 0, u64::MAX).unwrap();
    assert_eq!(a.len() as u64, log.last_revision(&instance("a")).unwrap());
    assert_eq!(a[0].sequence, 1);
    assert_eq!(
        log.record_hash(21).unwrap(),
        Some(
            log.scan(21)
                .next()
                .unwrap()
                .unwrap()
                .prev_hash
                .try_into()
                .unwrap()
        )
    );

    // Ending the log inside a pack cuts the pack there.
    assert_eq!(log.remove_after(25).unwrap(), 19);
    assert_eq!(keys(&log, records::PACK), [4, 20]);
    assert_eq!(log.scan(0).count(), 25);
    rt.block_on(log.append(&toggles(26, 3, &log))).unwrap();
    drop(log);
    let log = EventLog::open(dir.path()).unwrap();
    let verification = log.verify().unwrap();
    assert!(verification.ok(), "{verification:?}");
    assert_eq!(verification.events_checked, 28);
    assert_eq!(log.remove_after(2).unwrap(), 26);
    assert_eq!(keys(&log, records::PACK), Vec::<u64>::new());
    assert!(log.verify().unwrap().ok());
    assert_eq!(log.head().sequence, 2);
}

#[test]
fn a_damaged_pack_and_a_record_stored_twice_are_named() {
    let rt = runtime();
    let written = |dir: &std::path::Path| {
        let log = EventLog::open(dir).unwrap();
        rt.block_on(log.append(&[created(1, "a"), created(2, "b"), created(3, "c")]))
            .unwrap();
        rt.block_on(log.append(&toggles(4, 20, &log))).unwrap();
    };

    // The pack of 4..=19 cut inside record 7: its length runs past the end.
    let dir = tempfile::tempdir().unwrap();
    written(dir.path());
    {
        let log = EventLog::open(dir.path()).unwrap();
        let pack = log.tree.get(records::pack_key(4)).unwrap().unwrap();
        let at = records::unpack(4, &pack).nth(3).unwrap().unwrap().1.start;
        log.tree
            .insert(records::pack_key(4), &pack[..at + 10])
            .unwrap();
        log.db.flush().unwrap();
    }
    let log = EventLog::open(dir.path()).unwrap();
    let verification = log.verify().unwrap();
    let (sequence, reason) = verification.first_bad.clone().unwrap();
    assert_eq!((sequence, verification.events_checked), (7, 6), "{reason}");
    assert!(reason.contains("pack"), "{reason}");
    let scanned: Vec<_> = log.scan(0).map(|r| r.map(|r| r.event.sequence)).collect();
    assert!(matches!(
        scanned[6],
        Err(LogError::Corrupt { sequence: 7, .. })
    ));
    // The packs after it still read.
    assert_eq!(scanned[7..].iter().flatten().next(), Some(&20));
    assert!(matches!(
        log.stored_record(8),
        Err(LogError::Corrupt { sequence: 7, .. })
    ));
    // Record 7 and what the cut pack lost count as one, and 20..=23.
    assert_eq!(log.remove_after(6).unwrap(), 5);
    assert!(log.verify().unwrap().ok());
    drop(log);

    // Record 5 again, under a key of its own beside its pack.
    let dir = tempfile::tempdir().unwrap();
    written(dir.path());
    {
        let log = EventLog::open(dir.path()).unwrap();
        let copy = log.stored_record(5).unwrap().unwrap();
        log.tree.insert(records::event_key(5), copy).unwrap();
        log.db.flush().unwrap();
    }
    let verification = EventLog::open(dir.path()).unwrap().verify().unwrap();
    let (sequence, reason) = verification.first_bad.clone().unwrap();
    assert_eq!((sequence, verification.events_checked), (5, 4), "{reason}");
    assert!(reason.contains("stored twice"), "{reason}");
}

/// sled's data file is as long as its segments: the small appends in one
/// segment do not lengthen it, so the fdatasync after each commits no new
/// length to the file system's journal (vendor/sled/CASSETTE.md, item 5).
#[test]
fn appends_within_a_segment_leave_the_data_file_as_long_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path()).unwrap();
    let rt = runtime();
    rt.block_on(log.append(&[created(1, "a")])).unwrap();
    let length = || std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len();
    let before = length();
    // sled's default segment size, which the log keeps.
    assert_eq!(
        before % (512 * 1024),
        0,
        "{before} bytes: not whole segments"
    );
    for revision in 2..=50 {
        rt.block_on(log.append(&[disabled(revision, "a", revision)]))
            .unwrap();
        assert_eq!(length(), before, "after revision {revision}");
    }
    drop(log);
    // And it reads back whole, the hole after the last message and all.
    let log = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.head().sequence, 50);
    assert_eq!(revisions(&log, "a"), (1..=50).collect::<Vec<_>>());
    assert!(log.verify().unwrap().first_bad.is_none());
}
