//! The small files a log keeps beside its records (the projection snapshot,
//! the instance index checkpoint): read whole, replaced whole.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// One such file: its name in the log's directory, and how its temporary
/// files are named while it is replaced.
pub struct Kept {
    pub name: &'static str,
    pub temp_prefix: &'static str,
}

impl Kept {
    /// Where it is in `dir`.
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.name)
    }

    /// Its bytes in `dir`, if it is there.
    pub fn read(&self, dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(dir)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces it in `dir` with `bytes`: a temporary file, fsynced, renamed
    /// over the old one, the directory fsynced (a crash leaves the old file
    /// or the new one).
    pub fn replace(&self, dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut temp = tempfile::Builder::new()
            .prefix(self.temp_prefix)
            .tempfile_in(dir)?;
        temp.write_all(bytes)?;
        temp.as_file().sync_all()?;
        temp.persist(self.path(dir)).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Removes it from `dir`, with what replacements cut short by a crash
    /// left there.
    pub fn remove(&self, dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == self.name || name.to_string_lossy().starts_with(self.temp_prefix) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}
