//! Every request message a client can send, decoded from arbitrary bytes and
//! validated into model values: never a panic, and what passes is in range.
#![no_main]

use cassette_proto::pb;
use cassette_rules::{requests, Violations};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let mut v = Violations::default();
    match kind % 8 {
        0 => {
            if let Ok(r) = pb::AddRuleRequest::decode(bytes) {
                requests::target(&r.instance_id, &r.request_id, &mut v);
                if let Some(cassette_model::Command::AddRule {
                    ports, description, ..
                }) = requests::add_rule(&r, &mut v)
                {
                    assert!(ports.first().get() >= 1);
                    assert!(ports.first().get() <= ports.last().get());
                    assert!(description.as_str().chars().count() <= 255);
                }
            }
        }
        1 => {
            if let Ok(r) = pb::UpdateRuleRequest::decode(bytes) {
                requests::target(&r.instance_id, &r.request_id, &mut v);
                requests::update_rule(&r, &mut v);
            }
        }
        2 => {
            if let Ok(r) = pb::DeleteRuleRequest::decode(bytes) {
                requests::target(&r.instance_id, &r.request_id, &mut v);
                requests::delete_rule(&r, &mut v);
            }
        }
        3 => {
            if let Ok(r) = pb::SyncRequest::decode(bytes) {
                if let Some(pb::sync_request::Message::Hello(hello)) = &r.message {
                    requests::hello(hello, &mut v);
                }
            }
        }
        4 => {
            if let Ok(r) = pb::WaitForSyncRequest::decode(bytes) {
                if let Ok(timeout) = requests::wait_timeout(r.timeout) {
                    assert!(timeout.as_secs() <= 300);
                }
            }
        }
        5 => {
            if let Ok(r) = pb::DiffFirewallRequest::decode(bytes) {
                if let Some(page) = requests::diff_page(&r, &mut v) {
                    assert!((1..=1000).contains(&page.size));
                }
            }
        }
        6 => {
            if let Ok(r) = pb::DeleteFirewallRequest::decode(bytes) {
                requests::target(&r.instance_id, &r.request_id, &mut v);
            }
        }
        _ => {
            if let Ok(r) = pb::CreateFirewallRequest::decode(bytes) {
                requests::target(&r.instance_id, &r.request_id, &mut v);
            }
        }
    }
    // Rendering the answer (INVALID_ARGUMENT with details) must not panic either.
    let _ = v.finish();
});
