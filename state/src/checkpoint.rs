//! The checkpoint file: per store of a task, the changelog offset its RocksDB copy has applied.
//!
//! Lives at `<task dir>/.checkpoint`. Format (text, one store per line, sorted):
//!
//! ```text
//! keel-checkpoint 1
//! counts 41
//! holds 1007
//! ```
//!
//! An offset `o` means "every changelog record up to and including offset `o` is in RocksDB";
//! restore resumes at `o + 1`. A store missing from the file has no trustworthy local copy and is
//! restored from the beginning.
//!
//! Writes are atomic: the new content goes to `.checkpoint.tmp`, is fsynced, renamed over
//! `.checkpoint`, and the directory is fsynced, so a crash leaves the old file or the new one,
//! never a torn one. When the file is written and removed is the task's business; see
//! [`TaskState`](crate::TaskState).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::changelog::validate_name;
use crate::error::{Error, Result};

/// File name of a task's checkpoint.
pub const CHECKPOINT_FILE: &str = ".checkpoint";
const TMP_SUFFIX: &str = ".tmp";
const HEADER: &str = "keel-checkpoint 1";

/// Changelog offsets applied to local state, per store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    offsets: BTreeMap<String, i64>,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Self {
        Checkpoint::default()
    }

    /// The offset recorded for `store`.
    pub fn get(&self, store: &str) -> Option<i64> {
        self.offsets.get(store).copied()
    }

    /// Records `offset` for `store`.
    pub fn set(&mut self, store: impl Into<String>, offset: i64) {
        self.offsets.insert(store.into(), offset);
    }

    /// Forgets `store`, returning its offset.
    pub fn remove(&mut self, store: &str) -> Option<i64> {
        self.offsets.remove(store)
    }

    /// Stores and offsets, by store name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        self.offsets.iter().map(|(s, o)| (s.as_str(), *o))
    }

    /// Whether no store is recorded.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Reads the checkpoint at `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Checkpoint>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read checkpoint", path, e)),
        };
        Checkpoint::parse(path, &text).map(Some)
    }

    fn parse(path: &Path, text: &str) -> Result<Checkpoint> {
        let corrupt = |line: usize, reason: String| Error::CorruptCheckpoint {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
        match lines.next() {
            Some((_, HEADER)) => {}
            Some((n, other)) => {
                return Err(corrupt(n, format!("expected `{HEADER}`, found {other:?}")));
            }
            None => return Err(corrupt(1, "empty file".to_owned())),
        }
        let mut checkpoint = Checkpoint::new();
        for (n, line) in lines {
            let mut fields = line.split(' ');
            let (Some(store), Some(offset), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(corrupt(
                    n,
                    format!("expected `<store> <offset>`, found {line:?}"),
                ));
            };
            validate_name("store name", store).map_err(|e| corrupt(n, e.to_string()))?;
            let offset: i64 = offset
                .parse()
                .map_err(|_| corrupt(n, format!("offset {offset:?} is not an integer")))?;
            if offset < 0 {
                return Err(corrupt(n, format!("offset {offset} is negative")));
            }
            if checkpoint
                .offsets
                .insert(store.to_owned(), offset)
                .is_some()
            {
                return Err(corrupt(n, format!("store `{store}` appears twice")));
            }
        }
        Ok(checkpoint)
    }

    /// Writes the checkpoint to `path` atomically and durably (temp file, fsync, rename, fsync
    /// of the directory).
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        let mut text = String::with_capacity(32 + self.offsets.len() * 24);
        text.push_str(HEADER);
        text.push('\n');
        for (store, offset) in &self.offsets {
            text.push_str(&format!("{store} {offset}\n"));
        }
        let tmp = tmp_path(path);
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| Error::io("write checkpoint", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename checkpoint into", path, e))?;
        sync_parent(path)
    }

    /// Removes the checkpoint at `path` durably; `Ok(false)` when there was none.
    pub fn delete(path: &Path) -> Result<bool> {
        match fs::remove_file(path) {
            Ok(()) => {
                sync_parent(path)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove checkpoint", path, e)),
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Makes a rename or removal in `path`'s directory durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_through_its_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let path = dir.path().join(CHECKPOINT_FILE);
        assert_eq!(Checkpoint::read(&path)?, None);

        let mut cp = Checkpoint::new();
        cp.set("counts", 41);
        cp.set("holds", 0);
        cp.write_atomic(&path)?;
        assert!(!tmp_path(&path).exists(), "temp file left behind");
        assert_eq!(
            fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?,
            "keel-checkpoint 1\ncounts 41\nholds 0\n"
        );
        assert_eq!(Checkpoint::read(&path)?, Some(cp.clone()));

        cp.set("counts", 99);
        cp.write_atomic(&path)?;
        assert_eq!(
            Checkpoint::read(&path)?.and_then(|c| c.get("counts")),
            Some(99)
        );

        assert!(Checkpoint::delete(&path)?);
        assert!(!Checkpoint::delete(&path)?);
        assert_eq!(Checkpoint::read(&path)?, None);
        Ok(())
    }

    #[test]
    fn corrupt_checkpoints_are_reported_with_their_line() {
        let path = Path::new("/t/.checkpoint");
        for (text, line) in [
            ("", 1),
            ("kafka 0\n", 1),
            ("keel-checkpoint 1\ncounts\n", 2),
            ("keel-checkpoint 1\ncounts 1\ncounts 2\n", 3),
            ("keel-checkpoint 1\ncounts x\n", 2),
            ("keel-checkpoint 1\ncounts -5\n", 2),
            ("keel-checkpoint 1\na/b 5\n", 2),
        ] {
            match Checkpoint::parse(path, text) {
                Err(Error::CorruptCheckpoint { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?} parsed as {other:?}"),
            }
        }
    }
}
