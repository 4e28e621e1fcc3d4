//! The policy file, as arbitrary text: parsed or refused with an error, never
//! a panic; a parsed policy's globs match without blowing up.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = cassette_auth::Policy::parse(text) {
        for grant in policy.grants() {
            let _ = grant.covers("web-1");
            let _ = grant.covers(&"a-".repeat(30));
        }
    }
});
