//! Content-addressed message bodies on disk: `blobs/ab/cdef…` named by SHA-256.
//!
//! Invariant: a blob is complete and durable before any index row refers to it.
//! [`BlobStore::write`] writes to a temporary file, fsyncs it and renames it into place;
//! the directory entries are made durable by [`BlobStore::sync_dirs`], which the
//! group-commit writer calls once per batch, before the batch's transaction commits.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// SHA-256 of a message body, the blob's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(Sha256::digest(bytes).into())
    }

    /// Lower-case hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the hex form.
    pub fn from_hex(s: &str) -> Option<BlobHash> {
        let bytes = hex::decode(s).ok()?;
        Some(BlobHash(bytes.try_into().ok()?))
    }
}

/// A blob written by [`BlobStore::write`] whose directory entry may still need a sync.
#[derive(Debug, Clone)]
pub struct WrittenBlob {
    /// The blob's hash.
    pub hash: BlobHash,
    /// The directory holding it (to fsync before committing index rows).
    pub dir: PathBuf,
}

/// The blob directory of a data directory.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl BlobStore {
    /// Opens (creating if needed) `root` with its `tmp/` directory; stale temporary
    /// files from a crash are removed.
    pub fn open(root: &Path) -> Result<BlobStore, StoreError> {
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(|e| blob_err(&tmp, e))?;
        if let Ok(entries) = fs::read_dir(&tmp) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
            tmp,
            counter: AtomicU64::new(0),
        })
    }

    /// Where the blob with `hash` lives.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Writes `bytes` durably (file content fsynced, then renamed into place) unless a
    /// blob with the same content exists. Blocking: call from a blocking thread.
    pub fn write(&self, bytes: &[u8]) -> Result<WrittenBlob, StoreError> {
        let hash = BlobHash::of(bytes);
        let path = self.path(&hash);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        if path.exists() {
            // Renamed into place only after its content was fsynced: complete. Its mtime
            // is refreshed so garbage collection sees it as young while rows are added.
            let _ = File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(WrittenBlob { hash, dir });
        }
        fs::create_dir_all(&dir).map_err(|e| blob_err(&dir, e))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!(
            "{}-{}-{n}",
            std::process::id(),
            &hash.to_hex()[..16]
        ));
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(blob_err(&path, e));
        }
        Ok(WrittenBlob { hash, dir })
    }

    /// Fsyncs each directory once, making the renames of a batch durable. Blocking.
    pub fn sync_dirs<'a>(
        &self,
        dirs: impl IntoIterator<Item = &'a Path>,
    ) -> Result<(), StoreError> {
        let unique: BTreeSet<&Path> = dirs.into_iter().collect();
        for dir in unique {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| blob_err(dir, e))?;
        }
        Ok(())
    }

    /// Reads a blob whole. Blocking.
    pub fn read(&self, hash: &BlobHash) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash);
        fs::read(&path).map_err(|e| blob_err(&path, e))
    }

    /// Every blob hash present on disk (for consistency checks and garbage collection). Blocking.
    pub fn list(&self) -> Result<Vec<BlobHash>, StoreError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(|e| blob_err(&self.root, e))?;
        for dir in entries.flatten() {
            let name = dir.file_name();
            let Some(prefix) = name.to_str().filter(|n| n.len() == 2) else {
                continue;
            };
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                if let Some(rest) = file.file_name().to_str()
                    && let Some(hash) = BlobHash::from_hex(&format!("{prefix}{rest}"))
                {
                    out.push(hash);
                }
            }
        }
        Ok(out)
    }

    /// Removes a blob (garbage collection of unreferenced bodies). Blocking.
    pub fn remove(&self, hash: &BlobHash) -> Result<(), StoreError> {
        let path = self.path(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(blob_err(&path, e)),
        }
    }
}

fn blob_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Blob {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(&dir.path().join("blobs")).expect("open");
        let a = blobs.write(b"hello").expect("write");
        let b = blobs.write(b"hello").expect("write again");
        assert_eq!(a.hash, b.hash);
        assert_eq!(
            a.hash.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        blobs
            .sync_dirs([a.dir.as_path(), b.dir.as_path()])
            .expect("sync");
        assert_eq!(blobs.read(&a.hash).expect("read"), b"hello");
        assert_eq!(blobs.list().expect("list"), vec![a.hash]);
        blobs.remove(&a.hash).expect("remove");
        assert!(blobs.read(&a.hash).is_err());
        assert!(blobs.list().expect("list").is_empty());
    }
}
