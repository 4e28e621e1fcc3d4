//! Kernel backends that need no privileges: a file and memory.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cassette_ruleset::{Ruleset, TableName};

use crate::{Kernel, KernelError};

/// Writes the rendered table to a file, atomically (temp file + rename), for
/// unprivileged runs and dry runs.
pub struct FileKernel {
    path: PathBuf,
    table: TableName,
}

impl FileKernel {
    pub fn new(path: PathBuf, table: TableName) -> Self {
        Self { path, table }
    }
}

impl Kernel for FileKernel {
    fn exists(&mut self) -> Result<bool, KernelError> {
        Ok(self.path.exists())
    }

    fn replace(&mut self, ruleset: &Ruleset) -> Result<(), KernelError> {
        let fail = |what: &str, e: std::io::Error| {
            KernelError(format!("{what} {}: {e}", self.path.display()))
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let mut temp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| fail("cannot create a temp file beside", e))?;
        temp.write_all(ruleset.render(&self.table).as_bytes())
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| fail("cannot write", e))?;
        temp.persist(&self.path)
            .map_err(|e| fail("cannot replace", e.error))?;
        Ok(())
    }

    fn holds(&mut self, ruleset: &Ruleset) -> Result<bool, KernelError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text == ruleset.render(&self.table)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(KernelError(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }
}

/// Holds the ruleset in memory; clones share it, so a test or a load generator
/// can look at what a simulated enforcer applied.
#[derive(Debug, Clone, Default)]
pub struct MemoryKernel {
    table: Arc<Mutex<Option<Ruleset>>>,
}

impl MemoryKernel {
    pub fn current(&self) -> Option<Ruleset> {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the table behind the enforcer's back, as an operator might.
    pub fn tamper(&self, ruleset: Option<Ruleset>) {
        *self.table.lock().unwrap_or_else(|p| p.into_inner()) = ruleset;
    }
}

impl Kernel for MemoryKernel {
    const BLOCKS: bool = false;

    fn exists(&mut self) -> Result<bool, KernelError> {
        Ok(self.current().is_some())
    }

    fn replace(&mut self, ruleset: &Ruleset) -> Result<(), KernelError> {
        self.tamper(Some(ruleset.clone()));
        Ok(())
    }

    fn holds(&mut self, ruleset: &Ruleset) -> Result<bool, KernelError> {
        Ok(self.current().as_ref() == Some(ruleset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_kernel_writes_the_rendered_table_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ruleset.nft");
        let mut kernel = FileKernel::new(path.clone(), TableName::default());
        assert!(!kernel.exists().unwrap());
        let defaults = Ruleset::defaults();
        kernel.replace(&defaults).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            defaults.render(&TableName::default())
        );
        assert!(kernel.holds(&defaults).unwrap());
        std::fs::write(&path, "flushed").unwrap();
        assert!(!kernel.holds(&defaults).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }
}
