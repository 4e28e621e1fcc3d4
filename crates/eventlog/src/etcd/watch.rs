//! Following the log's head: which appends other replicas made, as a watch
//! on the head key with a read beside it, so a frozen or cut-off member's
//! silent watch is noticed and given up for another member.

use std::time::Duration;

use super::client::{needs_token, open_watch, read_head_sequence};
use super::{api, head_of, EtcdLog, HEAD_CHECK};

impl EtcdLog {
    /// The log's head sequence as the last append by any writer left it
    /// (`u64::MAX`: unknown, after the watch was (re)opened), from a watch on
    /// the head key re-created on another member when a stream ends (after a
    /// compaction a watch would be cancelled; readers re-read by sequence, so
    /// the watch only says *when*, never *what*). Ends when the receiver is
    /// dropped.
    ///
    /// A watch can fall silent without ending: its member frozen (a paused
    /// VM, a stalled disk) until keepalive gives up on the connection, or cut
    /// off from the cluster's majority (etcd then ends watches that asked for
    /// a leader, as these do, but only after a few election timeouts). So the
    /// head is also read every [`HEAD_CHECK`] through another member: a
    /// newer head is passed on at once, and a watch that has not delivered,
    /// a check later, a head the cluster already had is given up for one on
    /// another member.
    pub fn head_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        let (tx, rx) = tokio::sync::watch::channel(u64::MAX);
        let channels = self.channels.clone();
        let auth = self.auth.clone();
        let key = self.head_key();
        tokio::spawn(async move {
            let mut member = 0usize;
            while !tx.is_closed() {
                let channel = channels[member % channels.len()].clone();
                member += 1;
                let create = api::WatchCreateRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                match open_watch(&auth, &channel, create).await {
                    Ok((_requests, mut responses)) => {
                        // Whatever happened while no watch was open is read now.
                        tx.send_replace(u64::MAX);
                        // The highest head the watch delivered (or the first
                        // check found), and a head the watch must have
                        // delivered by the next check.
                        let mut delivered: Option<u64> = None;
                        let mut expected: Option<u64> = None;
                        let mut checker = member;
                        let mut check = tokio::time::interval(HEAD_CHECK);
                        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                () = tx.closed() => return,
                                message = responses.message() => match message {
                                    Ok(Some(answer)) if answer.canceled => break,
                                    Ok(Some(answer)) => {
                                        let last = answer.events.into_iter().filter_map(|e| e.kv).next_back();
                                        if let Some(kv) = last {
                                            let sequence = head_of(Some(kv.value)).map_or(u64::MAX, |h| h.sequence);
                                            delivered = delivered.max(Some(sequence));
                                            tx.send_replace(sequence);
                                        }
                                    }
                                    _ => break,
                                },
                                _ = check.tick() => {
                                    if expected.is_some_and(|e| delivered < Some(e)) {
                                        tracing::warn!(
                                            member = (member - 1) % channels.len(),
                                            "the etcd watch on the log's head fell silent; watching through another member"
                                        );
                                        break;
                                    }
                                    let checked = channels[checker % channels.len()].clone();
                                    let read = read_head_sequence(&auth, &checked, &key);
                                    match tokio::time::timeout(HEAD_CHECK, read).await {
                                        Ok(Ok(sequence)) => {
                                            if delivered.is_none() {
                                                // The head when the watch opened.
                                                delivered = Some(sequence);
                                            } else if Some(sequence) > delivered {
                                                tx.send_replace(sequence);
                                                expected = Some(sequence);
                                            }
                                        }
                                        // That member cannot say: ask another next time.
                                        _ => checker += 1,
                                    }
                                }
                            }
                        }
                    }
                    Err(status) => {
                        tracing::debug!(error = %status.message(), "etcd watch failed; trying the next member");
                        if needs_token(&status) {
                            let _ = auth.refresh(&channel).await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        rx
    }
}
