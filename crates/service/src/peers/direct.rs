//! Shared values replica to replica, without etcd: a replica started with an
//! address keeps its own values here ([`Published`]) for the replicas that
//! follow it (the doors' `FollowShared`), and follows each other replica
//! whose address it learns through etcd ([`follow`], over the doors'
//! [`Dialer`]).
//!
//! What a replica learned from another lapses as it would with an etcd
//! lease: when the other's address leaves etcd (its lease ended), or when
//! it could not be followed for [`SHARED_TTL`](super::SHARED_TTL).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cassette_eventlog::etcd::SharedChange;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::sync::lock;

/// A batch of a replica's values, as its follower receives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedBatch {
    /// These values replace every value received from the replica before.
    pub complete: bool,
    pub values: Vec<(String, Vec<u8>)>,
}

/// Opens follows of other replicas (the doors' gRPC client).
pub trait Dialer: Send + Sync + 'static {
    /// Follows the replica reached at `address`: each batch it sends arrives
    /// on the receiver, which closes when the follow ends or fails (the
    /// dialer says why in the log).
    fn follow(&self, address: &str) -> mpsc::Receiver<SharedBatch>;
}

/// Changes a follower may fall behind by before it is sent every value again.
const BACKLOG: usize = 4096;

/// This replica's own values, for the replicas that follow it.
pub struct Published {
    values: Mutex<HashMap<String, Vec<u8>>>,
    changes: broadcast::Sender<(String, Vec<u8>)>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            values: Mutex::default(),
            changes: broadcast::channel(BACKLOG).0,
        }
    }
}

/// A follower's view of [`Published`]: every value, then the changes.
pub struct Following {
    changes: broadcast::Receiver<(String, Vec<u8>)>,
    published: Arc<Published>,
}

impl Published {
    pub(crate) fn set(&self, name: &str, value: Vec<u8>) {
        let mut values = lock(&self.values);
        values.insert(name.to_owned(), value.clone());
        // Sent under the lock: a follower subscribing now lists this value
        // or receives it, never neither.
        let _ = self.changes.send((name.to_owned(), value));
    }

    /// Every value now, and from then on each change.
    pub fn follow(self: &Arc<Self>) -> (SharedBatch, Following) {
        let values = lock(&self.values);
        let following = Following {
            changes: self.changes.subscribe(),
            published: self.clone(),
        };
        let batch = SharedBatch {
            complete: true,
            values: values.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
        };
        (batch, following)
    }
}

impl Following {
    /// The next changes: every one waiting (the latest of each name), after
    /// waiting for the first; every value again (`complete`) if this
    /// follower fell more than [`BACKLOG`] changes behind.
    pub async fn next(&mut self) -> SharedBatch {
        let first = match self.changes.recv().await {
            Ok(change) => change,
            Err(broadcast::error::RecvError::Lagged(_)) => return self.resubscribe(),
            // The sender lives as long as `published`.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        };
        let mut latest: HashMap<String, Vec<u8>> = HashMap::from([first]);
        loop {
            match self.changes.try_recv() {
                Ok((name, value)) => {
                    latest.insert(name, value);
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => return self.resubscribe(),
                Err(_) => break,
            }
        }
        SharedBatch {
            complete: false,
            values: latest.into_iter().collect(),
        }
    }

    fn resubscribe(&mut self) -> SharedBatch {
        let (batch, fresh) = self.published.follow();
        self.changes = fresh.changes;
        batch
    }
}

/// How long a failed follow waits before the next attempt (doubling up to
/// [`RETRY_MAX`]).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Follows `replica` at `address` until aborted: what it sends goes to
/// `changes` as that replica's values (as etcd's would); `held` keeps their
/// names, for the removals when it lapses.
pub(crate) async fn follow(
    replica: String,
    address: String,
    dialer: Arc<dyn Dialer>,
    changes: mpsc::Sender<SharedChange>,
    held: Arc<Mutex<HashSet<String>>>,
    ttl: Duration,
) {
    let mut retry = RETRY_MIN;
    let mut lost_since: Option<Instant> = None;
    loop {
        let mut batches = dialer.follow(&address);
        while let Some(batch) = batches.recv().await {
            lost_since = None;
            retry = RETRY_MIN;
            let mut sent: Vec<SharedChange> = Vec::with_capacity(batch.values.len());
            {
                let mut held = lock(&held);
                if batch.complete {
                    let listed: HashSet<&str> =
                        batch.values.iter().map(|(n, _)| n.as_str()).collect();
                    let gone: Vec<String> = held
                        .iter()
                        .filter(|name| !listed.contains(name.as_str()))
                        .cloned()
                        .collect();
                    for name in gone {
                        held.remove(&name);
                        sent.push(removal(&replica, name));
                    }
                }
                for (name, value) in batch.values {
                    held.insert(name.clone());
                    sent.push(SharedChange {
                        name,
                        replica: replica.clone(),
                        value: Some(value),
                    });
                }
            }
            for change in sent {
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        }
        let since = *lost_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= ttl {
            for change in lapse(&replica, &held) {
                if changes.send(change).await.is_err() {
                    return;
                }
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Removals of every value `held` from `replica` (it lapsed).
pub(crate) fn lapse(replica: &str, held: &Mutex<HashSet<String>>) -> Vec<SharedChange> {
    lock(held)
        .drain()
        .map(|name| removal(replica, name))
        .collect()
}

fn removal(replica: &str, name: String) -> SharedChange {
    SharedChange {
        name,
        replica: replica.to_owned(),
        value: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_lists_every_value_then_gets_the_latest_of_each_change() {
        let published = Arc::new(Published::default());
        published.set("web-1", b"a".to_vec());
        let (listed, mut following) = published.follow();
        assert_eq!(
            listed,
            SharedBatch {
                complete: true,
                values: vec![("web-1".into(), b"a".to_vec())]
            }
        );
        published.set("web-1", b"b".to_vec());
        published.set("web-2", b"c".to_vec());
        published.set("web-1", b"d".to_vec());
        let mut next = following.next().await;
        next.values.sort();
        assert_eq!(
            next,
            SharedBatch {
                complete: false,
                values: vec![
                    ("web-1".into(), b"d".to_vec()),
                    ("web-2".into(), b"c".to_vec())
                ]
            }
        );
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_gets_every_value_again() {
        let published = Arc::new(Published::default());
        let (_, mut following) = published.follow();
        for i in 0..BACKLOG + 10 {
            published.set(&format!("web-{}", i % 7), i.to_string().into_bytes());
        }
        let mut batch = following.next().await;
        assert!(batch.complete);
        batch.values.sort();
        assert_eq!(batch.values.len(), 7);
        let last_of_web_0 = (0..BACKLOG + 10).rev().find(|i| i % 7 == 0).unwrap();
        assert!(batch
            .values
            .contains(&("web-0".into(), last_of_web_0.to_string().into_bytes())));
        published.set("web-9", b"x".to_vec());
        assert_eq!(
            following.next().await,
            SharedBatch {
                complete: false,
                values: vec![("web-9".into(), b"x".to_vec())]
            }
        );
    }

    /// A dialer whose follows are handed out by the test.
    struct Scripted(Mutex<Vec<mpsc::Receiver<SharedBatch>>>);

    impl Dialer for Scripted {
        fn follow(&self, _address: &str) -> mpsc::Receiver<SharedBatch> {
            lock(&self.0).pop().unwrap_or_else(|| mpsc::channel(1).1)
        }
    }

    #[tokio::test]
    async fn a_follow_replaces_on_a_complete_batch_and_lapses_after_the_ttl() {
        let (first, first_rx) = mpsc::channel(8);
        let dialer = Arc::new(Scripted(Mutex::new(vec![first_rx])));
        let (changes, mut received) = mpsc::channel(64);
        let held = Arc::new(Mutex::new(HashSet::new()));
        let task = tokio::spawn(follow(
            "b".into(),
            "http://b".into(),
            dialer,
            changes,
            held.clone(),
            Duration::from_millis(500),
        ));
        let value = |name: &str, v: &[u8]| SharedChange {
            name: name.into(),
            replica: "b".into(),
            value: Some(v.to_vec()),
        };
        first
            .send(SharedBatch {
                complete: true,
                values: vec![
                    ("web-1".into(), b"1".to_vec()),
                    ("web-2".into(), b"2".to_vec()),
                ],
            })
            .await
            .unwrap();
        let mut got = vec![
            received.recv().await.unwrap(),
            received.recv().await.unwrap(),
        ];
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got, vec![value("web-1", b"1"), value("web-2", b"2")]);
        // Every value again, without web-2: it is removed.
        first
            .send(SharedBatch {
                complete: true,
                values: vec![("web-1".into(), b"3".to_vec())],
            })
            .await
            .unwrap();
        assert_eq!(received.recv().await.unwrap(), removal("b", "web-2".into()));
        assert_eq!(received.recv().await.unwrap(), value("web-1", b"3"));
        // The follow ends and no new one answers: nothing lapses before the
        // ttl, everything after it.
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(received.try_recv().is_err());
        let lapsed = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lapsed, removal("b", "web-1".into()));
        assert!(lock(&held).is_empty());
        task.abort();
    }
}
