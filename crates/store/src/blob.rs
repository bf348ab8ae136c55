//! Content-addressed message bodies on disk: `blobs/ab/cdef…` named by SHA-256.
//!
//! Invariant: a blob is complete and durable before any index row refers to it.
//! The group-commit writer hands each batch's bodies to [`BlobStore::write_batch`], which
//! writes them (temporary file, rename into place) and makes them durable with one
//! filesystem sync, before the batch's transaction commits.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// The key of a message body: for a body stored as a file, its SHA-256 (the file's name);
/// for a small body stored in the database, a unique key in time order
/// ([`BlobHash::unique`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(Sha256::digest(bytes).into())
    }

    /// A new key for a body stored in the database: nanoseconds since the epoch, then a
    /// random number drawn once per process, then a per-process counter. Keys in time order
    /// put each new body at the end of the key index, where one page takes a whole batch
    /// of deliveries; a SHA-256 key put each one on a random page of that index, one more
    /// page written per message, and cost hashing every body. Small bodies are not worth
    /// sharing by content.
    pub fn unique() -> BlobHash {
        static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let process = *PROCESS.get_or_init(rand::random::<u64>);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&nanos.to_be_bytes());
        key[8..16].copy_from_slice(&process.to_be_bytes());
        key[16..24].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        BlobHash(key)
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

/// A body waiting to be stored: its content and content address.
#[derive(Debug, Clone)]
pub struct PendingBlob {
    /// The blob's hash.
    pub hash: BlobHash,
    /// The bytes.
    pub bytes: Arc<Vec<u8>>,
}

impl PendingBlob {
    /// Hashes `bytes` (CPU work proportional to the size): a body to store as a file.
    pub fn new(bytes: Arc<Vec<u8>>) -> PendingBlob {
        PendingBlob {
            hash: BlobHash::of(&bytes),
            bytes,
        }
    }

    /// A body to store in the database, under a new key ([`BlobHash::unique`]).
    pub fn unique(bytes: Arc<Vec<u8>>) -> PendingBlob {
        PendingBlob {
            hash: BlobHash::unique(),
            bytes,
        }
    }
}

/// The blob directory of a data directory.
#[derive(Debug)]
pub struct BlobStore {
    root: PathBuf,
    counter: AtomicU64,
}

impl BlobStore {
    /// Opens (creating if needed) `root`.
    pub fn open(root: &Path) -> Result<BlobStore, StoreError> {
        fs::create_dir_all(root).map_err(|e| blob_err(root, e))?;
        Ok(BlobStore {
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
        })
    }

    /// Where the blob with `hash` lives.
    pub fn path(&self, hash: &BlobHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    /// Writes a batch of blobs and makes them durable with one filesystem sync: this is
    /// the file half of group commit. Blocking: call from a blocking thread.
    ///
    /// Each body goes to a temporary file in its final directory and is renamed into place,
    /// so a name always holds complete content while the system runs. After a power loss a
    /// file renamed before the sync may be empty or short; it has no row (rows commit only
    /// after this returns), and [`BlobStore::exists_intact`] refuses to reuse it, so the next
    /// identical body overwrites it.
    pub fn write_batch(&self, blobs: &[PendingBlob]) -> Result<(), StoreError> {
        if blobs.is_empty() {
            return Ok(());
        }
        let mut written = Vec::new();
        // Held while files are kept or written: garbage collection never removes a file
        // between the check that it exists and the refresh of its mtime below.
        let guard = self.collection_lock()?;
        for blob in blobs {
            let path = self.path(&blob.hash);
            if self.exists_intact(blob, &path) {
                // Refresh the mtime so garbage collection sees it as young while rows are added.
                let _ = File::options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                continue;
            }
            let dir = path.parent().unwrap_or(&self.root);
            fs::create_dir_all(dir).map_err(|e| blob_err(dir, e))?;
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
            let result = (|| {
                let mut file = File::create(&tmp)?;
                file.write_all(&blob.bytes)?;
                fs::rename(&tmp, &path)
            })();
            if let Err(e) = result {
                let _ = fs::remove_file(&tmp);
                return Err(blob_err(&path, e));
            }
            written.push(path);
        }
        drop(guard);
        if written.is_empty() {
            return Ok(());
        }
        self.sync(&written)
    }

    /// An exclusive lock on `blobs.lock` beside the root (`<data_dir>/blobs.lock`), released
    /// when the file is dropped. It
    /// serialises keeping an existing file for a new message (which refreshes its mtime)
    /// with garbage collection's age check and removal, across processes too (`tessera gc`
    /// beside `tessera serve`).
    fn collection_lock(&self) -> Result<File, StoreError> {
        let path = self.root.with_extension("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| blob_err(&path, e))?;
        file.lock().map_err(|e| blob_err(&path, e))?;
        Ok(file)
    }

    /// Removes the file of `hash` if it was last modified at least `min_age` ago (garbage
    /// collection); true when removed.
    pub fn remove_if_older(&self, hash: &BlobHash, min_age: Duration) -> Result<bool, StoreError> {
        let _guard = self.collection_lock()?;
        let age = fs::metadata(self.path(hash))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .unwrap_or_default();
        if age < min_age {
            return Ok(false);
        }
        self.remove(hash)?;
        Ok(true)
    }

    /// Whether the file at `path` holds exactly `blob` (a dedup hit must never trust a file
    /// that a power loss cut short).
    fn exists_intact(&self, blob: &PendingBlob, path: &Path) -> bool {
        match fs::metadata(path) {
            Ok(m) if m.len() == blob.bytes.len() as u64 => {
                fs::read(path).is_ok_and(|content| BlobHash::of(&content) == blob.hash)
            }
            _ => false,
        }
    }

    /// Makes the files just written (content and directory entries) durable.
    #[cfg(target_os = "linux")]
    fn sync(&self, _written: &[PathBuf]) -> Result<(), StoreError> {
        // syncfs(2): one flush and one journal commit for the whole batch, where an fsync
        // per file and per directory would cost one journal commit each.
        File::open(&self.root)
            .and_then(|root| rustix::fs::syncfs(&root).map_err(std::io::Error::from))
            .map_err(|e| blob_err(&self.root, e))
    }

    /// Makes the files just written (content and directory entries) durable.
    #[cfg(not(target_os = "linux"))]
    fn sync(&self, written: &[PathBuf]) -> Result<(), StoreError> {
        let mut dirs = std::collections::BTreeSet::new();
        for path in written {
            File::open(path)
                .and_then(|f| f.sync_all())
                .map_err(|e| blob_err(path, e))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| blob_err(&dir, e))?;
        }
        Ok(())
    }

    /// Reads a blob whole. Blocking.
    pub fn read(&self, hash: &BlobHash) -> Result<Vec<u8>, StoreError> {
        let path = self.path(hash);
        fs::read(&path).map_err(|e| blob_err(&path, e))
    }

    /// Reads at most `max` bytes from the start of a blob (its header, usually). Blocking.
    pub fn read_prefix(&self, hash: &BlobHash, max: usize) -> Result<Vec<u8>, StoreError> {
        use std::io::Read as _;
        let path = self.path(hash);
        let file = fs::File::open(&path).map_err(|e| blob_err(&path, e))?;
        let mut out = Vec::with_capacity(max.min(64 * 1024));
        file.take(u64::try_from(max).unwrap_or(u64::MAX))
            .read_to_end(&mut out)
            .map_err(|e| blob_err(&path, e))?;
        Ok(out)
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

    /// Keys for bodies kept in the database are all different and ascend in their hex form
    /// (the form the index stores), also across threads, so new bodies go to the end of the
    /// index.
    #[test]
    fn unique_keys_differ_and_ascend() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..2000).map(|_| BlobHash::unique()).collect()))
            .collect();
        let mut all: Vec<BlobHash> = Vec::new();
        for t in threads {
            let keys: Vec<BlobHash> = t.join().expect("thread");
            let hex: Vec<String> = keys.iter().map(BlobHash::to_hex).collect();
            assert!(
                hex.windows(2).all(|w| w[0] < w[1]),
                "one thread's keys ascend"
            );
            all.extend(keys);
        }
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "no key repeats");
        assert_ne!(BlobHash::unique(), BlobHash::of(b""), "not a content hash");
    }

    /// Garbage collection's removal waits while the lock is held (as a delivery keeping the
    /// same file holds it), removes only files old enough, and a young file stays.
    #[test]
    fn removal_waits_for_the_lock_and_respects_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = Arc::new(BlobStore::open(&dir.path().join("blobs")).expect("open"));
        let old = PendingBlob::new(Arc::new(b"old body".to_vec()));
        let young = PendingBlob::new(Arc::new(b"young body".to_vec()));
        blobs
            .write_batch(&[old.clone(), young.clone()])
            .expect("write");
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(blobs.path(&old.hash))
            .and_then(|f| f.set_modified(two_hours_ago))
            .expect("age the file");
        let guard = blobs.collection_lock().expect("lock");
        let remover = {
            let blobs = blobs.clone();
            let hash = old.hash;
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let removed = blobs.remove_if_older(&hash, Duration::from_secs(3600));
                (removed.expect("remove"), started.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        assert!(blobs.path(&old.hash).exists(), "removed while locked");
        drop(guard);
        let (removed, waited) = remover.join().expect("join");
        assert!(
            removed && waited >= Duration::from_millis(150),
            "{waited:?}"
        );
        assert!(!blobs.path(&old.hash).exists());
        assert!(
            !blobs
                .remove_if_older(&young.hash, Duration::from_secs(3600))
                .expect("young")
        );
        assert!(blobs.path(&young.hash).exists());
    }

    #[test]
    fn write_is_content_addressed_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(&dir.path().join("blobs")).expect("open");
        let a = PendingBlob::new(Arc::new(b"hello".to_vec()));
        blobs
            .write_batch(&[a.clone(), a.clone()])
            .expect("write twice in one batch");
        blobs
            .write_batch(std::slice::from_ref(&a))
            .expect("write again");
        assert_eq!(
            a.hash.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(blobs.read(&a.hash).expect("read"), b"hello");
        assert_eq!(blobs.list().expect("list"), vec![a.hash]);
        blobs.remove(&a.hash).expect("remove");
        assert!(blobs.read(&a.hash).is_err());
        assert!(blobs.list().expect("list").is_empty());
    }

    #[test]
    fn a_short_file_left_by_a_power_loss_is_rewritten_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(&dir.path().join("blobs")).expect("open");
        let a = PendingBlob::new(Arc::new(b"complete message body".to_vec()));
        let path = blobs.path(&a.hash);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, b"").expect("empty file as after a crash");
        blobs.write_batch(std::slice::from_ref(&a)).expect("write");
        assert_eq!(blobs.read(&a.hash).expect("read"), b"complete message body");
        // Same length, wrong content: also rewritten.
        fs::write(&path, b"XXXXXXXXXXXXXXXXXXXXX").expect("garbage");
        blobs.write_batch(std::slice::from_ref(&a)).expect("write");
        assert_eq!(blobs.read(&a.hash).expect("read"), b"complete message body");
    }
}
