//! Durable before acknowledged: the real binary is killed with SIGKILL while
//! mutations are in flight; after a restart every mutation that was answered
//! OK is there and the log's sequences and revisions have no gaps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cassette_e2e::{pb, RulesProcess, PATIENCE};
use cassette_eventlog::EventLog;
use tonic::Request;

const INSTANCES: [&str; 4] = ["kill-1", "kill-2", "kill-3", "kill-4"];
const WRITERS: u32 = 16;
const ADDS_PER_WRITER: u32 = 400;
const ACTOR: &str = "durability-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_write_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    for instance in INSTANCES {
        cassette_e2e::create_firewall(&mut client, instance).await;
    }

    // (instance, port) -> the revision the OK answer reported.
    let acked: Arc<Mutex<Vec<(String, u32, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = client.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let instance = INSTANCES[w as usize % INSTANCES.len()];
            for k in 0..ADDS_PER_WRITER {
                let port = 1024 + w * ADDS_PER_WRITER + k;
                let mut request = Request::new(pb::AddRuleRequest {
                    instance_id: instance.into(),
                    port,
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("x-actor", ACTOR.parse().unwrap());
                match client.add_rule(request).await {
                    Ok(answer) => acked.lock().unwrap().push((
                        instance.to_owned(),
                        port,
                        answer.into_inner().revision,
                    )),
                    Err(_) => return,
                }
            }
        }));
    }

    let deadline = Instant::now() + PATIENCE;
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rules.kill_9();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} adds answered before the deadline",
        acked.len()
    );
    assert!(
        acked.len() < (WRITERS * ADDS_PER_WRITER) as usize,
        "the kill came after every write finished; the test proved nothing"
    );

    let mut rules = RulesProcess::start(&data).await;
    let mut client = rules.client().await;
    let mut firewalls = BTreeMap::new();
    for instance in INSTANCES {
        let firewall = client
            .get_firewall(pb::GetFirewallRequest {
                instance_id: instance.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        firewalls.insert(instance.to_owned(), firewall);
    }
    for (instance, port, revision) in &acked {
        let firewall = &firewalls[instance];
        assert!(
            firewall.rules.iter().any(|r| r.port == *port),
            "{instance} port {port} was acknowledged at revision {revision} but is gone"
        );
        assert!(firewall.revision >= *revision);
    }
    let status = rules.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    // The log itself: gapless sequences, gapless per-instance revisions,
    // every add recorded with its actor.
    let log = EventLog::open(&data).unwrap();
    let mut revisions: BTreeMap<String, u64> = BTreeMap::new();
    let mut sequence = 0;
    for record in log.scan(0) {
        let event = record.unwrap().event;
        sequence += 1;
        assert_eq!(event.sequence, sequence, "sequence gap");
        let last = revisions.entry(event.instance_id.to_string()).or_default();
        assert_eq!(
            event.revision,
            *last + 1,
            "revision gap on {}",
            event.instance_id
        );
        *last = event.revision;
        if event.revision > 1 {
            assert_eq!(event.actor.as_str(), ACTOR);
        }
    }
    assert_eq!(log.head().sequence, sequence);
    for (instance, firewall) in &firewalls {
        assert_eq!(revisions[instance], firewall.revision, "{instance}");
    }
}
