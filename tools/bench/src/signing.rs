//! `--signed`: the benches' log signed and verified as a secured service's
//! is, with a key kept beside the data (so a reused `--data-dir` verifies).

use std::path::Path;

use cassette_eventlog::{Signing, SigningKey, TrustedKeys};

/// The key in `dir` (made there if missing), signing and trusted.
pub fn signing(dir: &Path) -> anyhow::Result<(Signing, SigningKey)> {
    let path = dir.join("bench-log-signing.key");
    if !path.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::write(&path, SigningKey::generate_pem()?)?;
    }
    let key = SigningKey::load(&path)?;
    let trusted = TrustedKeys::from_pem(&key.public_key_pem())?;
    Ok((Signing::new(SigningKey::load(&path)?, trusted)?, key))
}

/// `--signed`'s signing, or none.
pub fn maybe(signed: bool, dir: &Path) -> anyhow::Result<Signing> {
    Ok(if signed {
        signing(dir)?.0
    } else {
        Signing::default()
    })
}
