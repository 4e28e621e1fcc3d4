//! A history test of the project's own, in the manner of Jepsen: three etcd
//! members and two rules replicas, each in a network namespace of its own
//! (`cassette_e2e::cluster`), clients adding rules on unique ports and
//! deleting rules they added through both replicas (often the rule just
//! acknowledged, at once, through the other replica: where a refusal on a
//! stale view would show), every call with its own request id, while nftables inside the namespaces cut links for a few
//! seconds at a time. The recorded history and the log read back afterwards
//! go through [`check`]: every acknowledged change is in the log once at the
//! revision it returned, real-time order holds, no refusal is contradicted by
//! an earlier acknowledged change, nothing is invented, every "not stored" is
//! true, and the replicas agree. The checker is shown to fail on doctored
//! histories (`the_checker_finds_each_kind_of_anomaly`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cassette_e2e::cluster::Cluster;
use cassette_e2e::{pb, AuditClient, Client};
use tonic::Code;

const INSTANCE: &str = "ph-1";

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Add { port: u32 },
    Delete { rule: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Acknowledged at `revision`; for an add, the rule it made.
    Ok { revision: u64, rule: String },
    /// A definite answer that nothing was stored (a domain refusal, or a
    /// failure that says "not stored").
    NotStored { code: Code, message: String },
    /// No answer, or one that leaves it open.
    Unknown(String),
}

#[derive(Debug, Clone)]
struct Op {
    request_id: String,
    replica: usize,
    kind: Kind,
    /// Seconds since the run started.
    invoke: f64,
    complete: f64,
    outcome: Outcome,
}

/// What the log holds for one request.
#[derive(Debug, Clone, PartialEq)]
struct Logged {
    revision: u64,
    request_id: String,
    what: Kind,
    /// For an add, the rule's id.
    rule: String,
}

fn classify(status: &tonic::Status) -> Outcome {
    let message = status.message().to_owned();
    match status.code() {
        code @ (Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted) => Outcome::NotStored { code, message },
        code if message.contains("was not stored") || message.contains("change was not stored") => {
            Outcome::NotStored { code, message }
        }
        _ => Outcome::Unknown(format!("{:?}: {message}", status.code())),
    }
}

/// Every anomaly of `ops` against `log` (the instance's events after its
/// creation) and `finals` (each replica's linearizable read at the end:
/// revision and custom rule ids).
fn check(ops: &[Op], log: &[Logged], finals: &[(u64, Vec<String>)]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut by_request: HashMap<&str, Vec<&Logged>> = HashMap::new();
    for entry in log {
        by_request.entry(&entry.request_id).or_default().push(entry);
    }
    let known: HashSet<&str> = ops.iter().map(|o| o.request_id.as_str()).collect();
    for entry in log {
        if !known.contains(entry.request_id.as_str()) {
            anomalies.push(format!("invented: {entry:?} answers no request"));
        }
    }
    for op in ops {
        let logged = by_request
            .get(op.request_id.as_str())
            .cloned()
            .unwrap_or_default();
        match &op.outcome {
            Outcome::Ok { revision, rule } => {
                if logged.len() != 1 {
                    anomalies.push(format!(
                        "{}: acknowledged at revision {revision}, in the log {} times",
                        op.request_id,
                        logged.len()
                    ));
                    continue;
                }
                let entry = logged[0];
                if entry.revision != *revision {
                    anomalies.push(format!(
                        "{}: acknowledged at revision {revision}, logged at {}",
                        op.request_id, entry.revision
                    ));
                }
                let same = match (&op.kind, &entry.what) {
                    (Kind::Add { port }, Kind::Add { port: logged }) => {
                        port == logged && &entry.rule == rule
                    }
                    (Kind::Delete { rule }, Kind::Delete { rule: logged }) => rule == logged,
                    _ => false,
                };
                if !same {
                    anomalies.push(format!(
                        "{}: acknowledged {:?}, logged {:?}",
                        op.request_id, op.kind, entry.what
                    ));
                }
            }
            Outcome::NotStored { code, message } => {
                if let Some(entry) = logged.first() {
                    anomalies.push(format!(
                        "{}: answered {code:?} ({message}) but logged at revision {}",
                        op.request_id, entry.revision
                    ));
                }
            }
            Outcome::Unknown(_) => {
                if logged.len() > 1 {
                    anomalies.push(format!("{}: logged {} times", op.request_id, logged.len()));
                }
            }
        }
    }
    // Real-time order among acknowledged changes.
    let mut acked: Vec<(&Op, u64)> = ops
        .iter()
        .filter_map(|o| match o.outcome {
            Outcome::Ok { revision, .. } => Some((o, revision)),
            _ => None,
        })
        .collect();
    acked.sort_by(|a, b| a.0.complete.total_cmp(&b.0.complete));
    for (i, (a, ra)) in acked.iter().enumerate() {
        for (b, rb) in &acked[i + 1..] {
            if a.complete < b.invoke && ra >= rb {
                anomalies.push(format!(
                    "{} (revision {ra}) completed before {} (revision {rb}) began",
                    a.request_id, b.request_id
                ));
            }
        }
    }
    // Refusals an earlier acknowledged change contradicts.
    let deletions: HashMap<&str, &Logged> = log
        .iter()
        .filter_map(|e| match &e.what {
            Kind::Delete { rule } => Some((rule.as_str(), e)),
            Kind::Add { .. } => None,
        })
        .collect();
    let adds: HashMap<&str, &Op> = ops
        .iter()
        .filter_map(|o| match &o.outcome {
            Outcome::Ok { rule, .. } if matches!(o.kind, Kind::Add { .. }) => {
                Some((rule.as_str(), o))
            }
            _ => None,
        })
        .collect();
    for op in ops {
        let Outcome::NotStored { code, message } = &op.outcome else {
            continue;
        };
        match (&op.kind, code) {
            (Kind::Delete { rule }, Code::NotFound) => {
                let added_before = adds
                    .get(rule.as_str())
                    .is_some_and(|a| a.complete < op.invoke);
                let deleted_by_another = deletions
                    .get(rule.as_str())
                    .is_some_and(|d| d.request_id != op.request_id);
                if added_before && !deleted_by_another {
                    anomalies.push(format!(
                        "{}: NOT_FOUND ({message}) for a rule acknowledged before it and never deleted",
                        op.request_id
                    ));
                }
            }
            (Kind::Add { port }, Code::AlreadyExists) => anomalies.push(format!(
                "{}: ALREADY_EXISTS for port {port}, which no other request added",
                op.request_id
            )),
            _ => {}
        }
    }
    // The replicas agree with each other and with the log.
    let mut present: Vec<String> = Vec::new();
    for entry in log {
        match &entry.what {
            Kind::Add { .. } => present.push(entry.rule.clone()),
            Kind::Delete { rule } => present.retain(|r| r != rule),
        }
    }
    present.sort();
    for (i, (revision, rules)) in finals.iter().enumerate() {
        let mut rules = rules.clone();
        rules.sort();
        if rules != present {
            anomalies.push(format!(
                "replica {i} at revision {revision} holds {} custom rules, the log {}",
                rules.len(),
                present.len()
            ));
        }
        if Some(revision) != finals.first().map(|f| &f.0) {
            anomalies.push(format!(
                "replica {i} is at revision {revision}, replica 0 at {:?}",
                finals.first().map(|f| f.0)
            ));
        }
    }
    anomalies
}

/// The log's entries for the instance after its creation.
fn logged(events: &[pb::Event]) -> Vec<Logged> {
    use pb::event::Payload;
    events
        .iter()
        .filter_map(|e| {
            let (what, rule) = match e.payload.as_ref()? {
                Payload::RuleAdded(added) => {
                    let rule = added.rule.as_ref()?;
                    (Kind::Add { port: rule.port }, rule.rule_id.clone())
                }
                Payload::RuleDeleted(deleted) => (
                    Kind::Delete {
                        rule: deleted.rule_id.clone(),
                    },
                    deleted.rule_id.clone(),
                ),
                _ => return None,
            };
            Some(Logged {
                revision: e.revision,
                request_id: e.request_id.clone(),
                what,
                rule,
            })
        })
        .collect()
}

/// A named way to cut the cluster's links.
type Partition = (&'static str, Box<dyn Fn(&Cluster) + Send + Sync>);

/// Partitions, one after another: each is applied for `hold`, then healed.
fn schedule() -> Vec<Partition> {
    let (a, b) = (Cluster::replica_node(0), Cluster::replica_node(1));
    vec![
        (
            "an etcd member from its peers",
            Box::new(|c: &Cluster| c.net.cut(0, &[1, 2])),
        ),
        (
            "replica A from etcd",
            Box::new(move |c: &Cluster| c.net.cut(a, &[0, 1, 2])),
        ),
        (
            "majority and minority, a replica on each side",
            Box::new(move |c: &Cluster| c.net.split(&[&[0, 1, a], &[2, b]])),
        ),
        (
            "the etcd leader from everyone",
            Box::new(move |c: &Cluster| {
                let leader = c.leader().unwrap_or(0);
                let others: Vec<usize> =
                    (0..Cluster::MEMBERS + 2).filter(|n| *n != leader).collect();
                c.net.cut(leader, &others);
            }),
        ),
        (
            "a non-transitive split (members 0 and 1)",
            Box::new(|c: &Cluster| c.net.cut(0, &[1])),
        ),
        (
            "no quorum",
            Box::new(|c: &Cluster| c.net.split(&[&[0], &[1], &[2]])),
        ),
    ]
}

async fn call(client: &mut Client, op_kind: &Kind, request_id: &str) -> Outcome {
    let answer = match op_kind {
        Kind::Add { port } => {
            client
                .add_rule(pb::AddRuleRequest {
                    instance_id: INSTANCE.into(),
                    port: *port,
                    request_id: request_id.into(),
                    ..Default::default()
                })
                .await
        }
        Kind::Delete { rule } => {
            client
                .delete_rule(pb::DeleteRuleRequest {
                    instance_id: INSTANCE.into(),
                    rule_id: rule.clone(),
                    request_id: request_id.into(),
                    ..Default::default()
                })
                .await
        }
    };
    match answer {
        Ok(firewall) => {
            let firewall = firewall.into_inner();
            let rule = match op_kind {
                Kind::Add { port } => firewall
                    .rules
                    .iter()
                    .find(|r| r.port == *port)
                    .map(|r| r.id.clone())
                    .unwrap_or_default(),
                Kind::Delete { rule } => rule.clone(),
            };
            Outcome::Ok {
                revision: firewall.revision,
                rule,
            }
        }
        Err(status) => classify(&status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_concurrent_changes_through_partitioned_replicas_are_linearizable() {
    let test = "history_concurrent_changes_through_partitioned_replicas_are_linearizable";
    if crate::kernel::skip_unless_root(test) || cassette_e2e::etcd::skip(test) {
        return;
    }
    let cluster = Arc::new(Cluster::start(2).await);
    let mut clients = Vec::new();
    for replica in &cluster.replicas {
        clients.push(replica.client().await);
    }
    cassette_e2e::create_firewall(&mut clients[0], INSTANCE).await;

    let started = Instant::now();
    let seconds = || started.elapsed().as_secs_f64();
    let hold = Duration::from_secs(3);
    let quiet = Duration::from_secs(1);
    let partitions = schedule();
    let run_for = (hold + quiet) * partitions.len() as u32 + Duration::from_secs(2);
    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4usize {
        let clients = clients.clone();
        let history = history.clone();
        workers.push(tokio::spawn(async move {
            // The rules this worker added, with the replica that added each.
            let mut mine: Vec<(String, usize)> = Vec::new();
            let mut n = 0u32;
            while started.elapsed() < run_for {
                n += 1;
                let mut replica = (w + n as usize) % clients.len();
                let kind = match mine.len() {
                    // The rule just acknowledged, deleted at once through the
                    // other replica (where a stale view would answer NOT_FOUND).
                    len if len > 0 && n % 2 == 0 => {
                        let (rule, added_through) = mine.pop().expect("one");
                        replica = (added_through + 1) % clients.len();
                        Kind::Delete { rule }
                    }
                    len if len > 3 && n % 5 == 0 => Kind::Delete {
                        rule: mine.remove((n as usize * 7) % len).0,
                    },
                    _ => Kind::Add {
                        port: 20_000 + (w as u32) * 5_000 + n,
                    },
                };
                let request_id = format!("w{w}-{n}");
                let invoke = started.elapsed().as_secs_f64();
                let mut client = clients[replica].clone();
                let outcome = match tokio::time::timeout(
                    Duration::from_secs(5),
                    call(&mut client, &kind, &request_id),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Unknown("no answer in 5 s".into()),
                };
                if let (Kind::Add { .. }, Outcome::Ok { rule, .. }) = (&kind, &outcome) {
                    mine.push((rule.clone(), replica));
                }
                let complete = started.elapsed().as_secs_f64();
                if !matches!(outcome, Outcome::Ok { .. }) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                history.lock().unwrap().push(Op {
                    request_id,
                    replica,
                    kind,
                    invoke,
                    complete,
                    outcome,
                });
            }
        }));
    }
    let mut applied = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, partition) in &partitions {
        let c = cluster.clone();
        tokio::task::block_in_place(|| partition(&c));
        applied.push(format!("{:.1}s {name}", seconds()));
        tokio::time::sleep(hold).await;
        tokio::task::block_in_place(|| cluster.net.heal());
        tokio::time::sleep(quiet).await;
    }
    for worker in workers {
        worker.await.expect("a worker");
    }
    tokio::task::block_in_place(|| cluster.net.heal());

    // The end: what each replica holds (a linearizable read), and the log.
    let mut finals = Vec::new();
    for (i, client) in clients.iter_mut().enumerate() {
        let deadline = Instant::now() + cassette_e2e::PATIENCE;
        let firewall = loop {
            let read = client
                .get_firewall(pb::GetFirewallRequest {
                    instance_id: INSTANCE.into(),
                    consistency: pb::ReadConsistency::Linearizable as i32,
                })
                .await;
            match read {
                Ok(firewall) => break firewall.into_inner(),
                Err(status) => assert!(Instant::now() < deadline, "replica {i}: {status:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let rules = firewall
            .rules
            .iter()
            .filter(|r| !r.is_default)
            .map(|r| r.id.clone())
            .collect();
        finals.push((firewall.revision, rules));
    }
    let mut logs = Vec::new();
    for replica in &cluster.replicas {
        let mut audit = AuditClient::new(cassette_e2e::channel(&replica.target).await);
        let events = cassette_e2e::instance_events(&mut audit, INSTANCE).await;
        logs.push(logged(&events));
    }
    assert_eq!(logs[0], logs[1], "both replicas read the same log");
    let ops = history.lock().unwrap().clone();
    let count = |f: fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    eprintln!(
        "history: {} operations through {} replicas in {:.0} s: {} acknowledged, {} not stored, {} unknown; {} changes in the log; partitions: {}",
        ops.len(),
        cluster.replicas.len(),
        seconds(),
        count(|o| matches!(o, Outcome::Ok { .. })),
        count(|o| matches!(o, Outcome::NotStored { .. })),
        count(|o| matches!(o, Outcome::Unknown(_))),
        logs[0].len(),
        applied.join("; ")
    );
    let anomalies = check(&ops, &logs[0], &finals);
    assert!(
        anomalies.is_empty(),
        "{} anomalies (logs in {}):\n{}",
        anomalies.len(),
        cluster.logs_dir().display(),
        anomalies.join("\n")
    );
    assert!(
        ops.iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok { .. }))
            .count()
            > 50,
        "enough acknowledged to mean something"
    );
    assert!(
        ops.iter().filter(|o| o.replica == 1).count() > 10,
        "both replicas were used"
    );

    // The same history, doctored: the checker notices.
    let mut doctored = ops.clone();
    if let Some(op) = doctored
        .iter_mut()
        .find(|o| matches!(o.outcome, Outcome::Ok { .. }))
    {
        if let Outcome::Ok { revision, .. } = &mut op.outcome {
            *revision += 1;
        }
    }
    assert!(!check(&doctored, &logs[0], &finals).is_empty());
}

/// The checker on a small history, as recorded and doctored five ways.
#[test]
fn the_checker_finds_each_kind_of_anomaly() {
    let op = |id: &str, kind: Kind, invoke: f64, complete: f64, outcome: Outcome| Op {
        request_id: id.into(),
        replica: 0,
        kind,
        invoke,
        complete,
        outcome,
    };
    let ok = |revision, rule: &str| Outcome::Ok {
        revision,
        rule: rule.into(),
    };
    let ops = vec![
        op("a", Kind::Add { port: 1 }, 0.0, 1.0, ok(2, "r1")),
        op("b", Kind::Add { port: 2 }, 0.5, 1.5, ok(3, "r2")),
        op(
            "c",
            Kind::Delete { rule: "r1".into() },
            2.0,
            3.0,
            ok(4, "r1"),
        ),
        op(
            "d",
            Kind::Add { port: 3 },
            2.0,
            3.0,
            Outcome::Unknown("timeout".into()),
        ),
        op(
            "e",
            Kind::Add { port: 4 },
            4.0,
            5.0,
            Outcome::NotStored {
                code: Code::Unavailable,
                message: "the change was not stored".into(),
            },
        ),
    ];
    let entry = |revision, id: &str, what: Kind, rule: &str| Logged {
        revision,
        request_id: id.into(),
        what,
        rule: rule.into(),
    };
    let log = vec![
        entry(2, "a", Kind::Add { port: 1 }, "r1"),
        entry(3, "b", Kind::Add { port: 2 }, "r2"),
        entry(4, "c", Kind::Delete { rule: "r1".into() }, "r1"),
        entry(5, "d", Kind::Add { port: 3 }, "r3"),
    ];
    let finals = vec![
        (5, vec!["r2".to_owned(), "r3".to_owned()]),
        (5, vec!["r3".to_owned(), "r2".to_owned()]),
    ];
    assert_eq!(check(&ops, &log, &finals), Vec::<String>::new());

    // An acknowledged change missing from the log.
    assert!(!check(&ops, &log[1..], &finals).is_empty());
    // Something in the log nobody asked for.
    let mut invented = log.clone();
    invented.push(entry(6, "zz", Kind::Add { port: 9 }, "r9"));
    assert!(!check(&ops, &invented, &finals).is_empty());
    // "Not stored", yet stored.
    let mut stored = log.clone();
    stored.push(entry(6, "e", Kind::Add { port: 4 }, "r4"));
    assert!(!check(&ops, &stored, &finals).is_empty());
    // Real-time order broken: b began after a ended, yet comes first.
    let mut reordered = ops.clone();
    reordered[1].invoke = 1.2;
    reordered[1].outcome = ok(1, "r2");
    let mut relogged = log.clone();
    relogged[1].revision = 1;
    assert!(!check(&reordered, &relogged, &finals).is_empty());
    // A refusal contradicted by an earlier acknowledged change (the stale view).
    let mut refused = ops.clone();
    refused.push(op(
        "f",
        Kind::Delete { rule: "r2".into() },
        6.0,
        6.5,
        Outcome::NotStored {
            code: Code::NotFound,
            message: "rule r2 not found".into(),
        },
    ));
    assert!(!check(&refused, &log, &finals).is_empty());
    // Replicas that disagree.
    let split = vec![
        (5, vec!["r2".to_owned(), "r3".to_owned()]),
        (4, vec!["r2".to_owned()]),
    ];
    assert!(!check(&ops, &log, &split).is_empty());
}
