//! Tools that damage a log in etcd on purpose, to test that verification
//! and a replica's catch-up notice (the sled log's `tamper`, for etcd).
//! Never used by the services.

use super::{delete as delete_op, put, EtcdLog, TxnRequest};
use crate::{chain, Hash, LogError};

/// Record `sequence`'s stored bytes.
async fn stored(log: &EtcdLog, sequence: u64) -> Result<Vec<u8>, LogError> {
    let mut ranges = log
        .read(vec![super::RangeRequest {
            key: log.record_key(sequence),
            ..Default::default()
        }])
        .await?;
    ranges
        .pop()
        .and_then(|r| r.kvs.into_iter().next())
        .map(|kv| kv.value)
        .ok_or(LogError::Corrupt {
            sequence,
            reason: "absent".into(),
        })
}

async fn write(log: &EtcdLog, puts: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), LogError> {
    log.txn(TxnRequest {
        compare: vec![],
        success: puts.into_iter().map(|(k, v)| put(k, v)).collect(),
        failure: vec![],
    })
    .await
    .map(|_| ())
}

/// Flips the lowest bit of record `sequence`'s last stored byte: a change
/// of the event's payload, which protobuf writes last (its index entry
/// keeps the hash it had).
pub async fn flip_bit(log: &EtcdLog, sequence: u64) -> Result<(), LogError> {
    let mut bytes = stored(log, sequence).await?;
    if let Some(last) = bytes.last_mut() {
        *last ^= 0x01;
    }
    write(log, vec![(log.record_key(sequence), bytes)]).await
}

/// Rewrites record `sequence` to link to `prev_hash` instead, with its
/// index entry updated to its new hash: the record itself is consistent,
/// only its link is wrong.
pub async fn relink(log: &EtcdLog, sequence: u64, prev_hash: Hash) -> Result<(), LogError> {
    let stored = stored(log, sequence).await?;
    let (bytes, record) = chain::relinked(sequence, &stored, prev_hash)?;
    let index_key = log.index_key(&record.event.instance_id, record.event.revision);
    let indexed = chain::index_value(sequence, &record.hash);
    write(
        log,
        vec![(log.record_key(sequence), bytes), (index_key, indexed)],
    )
    .await
}

/// Appends `event` as another writer with access to etcd would, linked to
/// `prev_hash` (the last record's hash: correctly linked, so only a
/// signature can tell it from a real append; any other: a bad link): the
/// record, its index entry, the head anchor and `signed` (if any) in one
/// transaction.
pub async fn append_forged(
    log: &EtcdLog,
    event: &cassette_model::Event,
    prev_hash: Hash,
    signed: Option<&crate::SignedHead>,
) -> Result<(), LogError> {
    // Encoded as any append is, after a head whose hash is `prev_hash`.
    let forged_head = crate::Head {
        sequence: event.sequence - 1,
        hash: prev_hash,
    };
    let events = std::slice::from_ref(event);
    let (mut records, next) = chain::encode_batch(forged_head, events, log.encoding, |_| Ok(None))?;
    let record = records.remove(0);
    let mut puts = vec![
        (
            log.index_key(&event.instance_id, event.revision),
            record.index_value(),
        ),
        (log.record_key(event.sequence), record.bytes),
        (log.head_key(), chain::anchor_value(next)),
    ];
    if let Some(signed) = signed {
        puts.push((log.signature_key(event.sequence), signed.encode()));
    }
    write(log, puts).await
}

/// Removes record `sequence` (its index entry stays, dangling).
pub async fn delete(log: &EtcdLog, sequence: u64) -> Result<(), LogError> {
    log.txn(TxnRequest {
        compare: vec![],
        success: vec![delete_op(log.record_key(sequence), vec![])],
        failure: vec![],
    })
    .await
    .map(|_| ())
}
