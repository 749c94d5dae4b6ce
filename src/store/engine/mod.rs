//! The storage engine: the one interface the store writes and reads through, and its
//! implementations. Nothing outside this module names an engine's types.
//!
//! ```text
//!  Store (mod.rs), writer, migrate ──▶ dyn Engine ──▶ redb   (default: one file, copy-on-write B-tree)
//!                                                 ├─▶ sled   (the store before issue 13; kept to read old stores)
//!                                                 └─▶ fjall  (LSM; `engine-fjall` build feature, for comparison)
//! ```
//!
//! The interface is what the store needs and no more: tables of byte keys and values, point
//! reads, ordered range scans, and atomic batches that are visible at once and durable either at
//! once or at the next [`Engine::persist`] (the writer's flush interval). README "Storage" has
//! the measured comparison that chose redb.
//!
//! # Layout
//! - [`redb`](self::redb): `DATA_DIR/callbridge.redb`.
//! - [`sled`](self::sled): sled's files at the root of `DATA_DIR`, as the store kept them before.
//! - `fjall` (feature `engine-fjall`): `DATA_DIR/fjall/`.

#[cfg(feature = "engine-fjall")]
pub mod fjall;
pub mod redb;
pub mod sled;

use std::ops::Bound;
use std::path::Path;

/// The tables of the store (design.md "Storage"; the store's module docs give the key layouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Agent id → agent JSON.
    Agents,
    /// Number → agent id.
    Numbers,
    /// callSid → call record JSON.
    Calls,
    /// callSid ‖ 0x00 ‖ seq → conversation item JSON.
    Items,
    /// startedAtMs ‖ callSid → nothing: calls in time order.
    ByTime,
    /// callSid → nothing: the calls in progress (what recovery reads).
    Open,
    /// Store-wide values (the logical byte count).
    Meta,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 7] = [
        Table::Agents,
        Table::Numbers,
        Table::Calls,
        Table::Items,
        Table::ByTime,
        Table::Open,
        Table::Meta,
    ];

    /// Its name in the engine (sled's tree names of the store before issue 13).
    pub fn name(self) -> &'static str {
        match self {
            Table::Agents => "agents",
            Table::Numbers => "numbers",
            Table::Calls => "calls",
            Table::Items => "items",
            Table::ByTime => "calls_by_time",
            Table::Open => "calls_open",
            Table::Meta => "meta",
        }
    }

    /// Position in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which engine (`STORE_ENGINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// redb: the default.
    #[default]
    Redb,
    /// sled 0.34: the store before issue 13.
    Sled,
    /// fjall 3: only with the `engine-fjall` build feature.
    Fjall,
}

impl EngineKind {
    /// Its `STORE_ENGINE` name.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Redb => "redb",
            EngineKind::Sled => "sled",
            EngineKind::Fjall => "fjall",
        }
    }

    /// Parses a `STORE_ENGINE` value.
    pub fn parse(s: &str) -> Result<EngineKind, String> {
        match s {
            "redb" => Ok(EngineKind::Redb),
            "sled" => Ok(EngineKind::Sled),
            "fjall" if cfg!(feature = "engine-fjall") => Ok(EngineKind::Fjall),
            "fjall" => {
                Err("fjall is not in this build (cargo build --features engine-fjall)".into())
            }
            other => Err(format!(
                "unknown engine {other:?}: use redb (the default) or sled"
            )),
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set `key` to `value`.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Remove `key` (nothing if absent).
    Delete(Table, Vec<u8>),
}

/// Writes applied together: all or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// In order; a later write of a key wins.
    pub writes: Vec<Write>,
}

impl Batch {
    /// Adds a put.
    pub fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push(Write::Put(table, key, value));
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.writes.push(Write::Delete(table, key));
    }

    /// Whether it holds no write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Another process (or handle) holds the files.
    #[error("locked by another process")]
    Locked,
    /// The disk (or the filesystem's quota) is full: the write did not happen.
    #[error("the disk is full: {0}")]
    DiskFull(std::io::Error),
    /// Another i/o error.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// An earlier i/o error left the handle refusing every operation until [`Engine::reopen`].
    #[error("an earlier write failed; the store must be reopened")]
    NeedsReopen,
    /// The files are damaged or not what this engine wrote.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// Anything else the engine reported.
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// Classifies an i/o error: ENOSPC and EDQUOT are a full disk.
    pub fn from_io(e: std::io::Error) -> EngineError {
        let full = e.kind() == std::io::ErrorKind::StorageFull
            || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
        if full {
            EngineError::DiskFull(e)
        } else {
            EngineError::Io(e)
        }
    }

    /// Whether the disk being full caused it.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, EngineError::DiskFull(_))
    }
}

/// What to visit of a table: keys in `[lo, hi)`-style bounds, ascending or descending.
#[derive(Debug, Clone, Copy)]
pub struct Scan<'a> {
    /// Lower bound.
    pub lo: Bound<&'a [u8]>,
    /// Upper bound.
    pub hi: Bound<&'a [u8]>,
    /// Descending when true.
    pub rev: bool,
}

impl<'a> Scan<'a> {
    /// Every key, ascending.
    pub fn all() -> Scan<'a> {
        Scan {
            lo: Bound::Unbounded,
            hi: Bound::Unbounded,
            rev: false,
        }
    }

    /// Keys starting with `prefix`, ascending (`upper` is the first key past them, from
    /// [`prefix_end`]).
    pub fn prefix(prefix: &'a [u8], upper: &'a Option<Vec<u8>>) -> Scan<'a> {
        Scan {
            lo: Bound::Included(prefix),
            hi: upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            rev: false,
        }
    }

    /// The same keys, descending.
    pub fn rev(mut self) -> Scan<'a> {
        self.rev = !self.rev;
        self
    }
}

/// The first key after every key that starts with `prefix` (`None`: no such key, all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A visitor of a scan: gets each (key, value); returns `false` to stop.
pub type Visit<'v> = dyn FnMut(&[u8], &[u8]) -> bool + 'v;

/// Feeds an engine's range iterator to `step`, ascending or descending (`rev`), until `step`
/// says stop (`Ok(false)`) or fails: the one scan loop every engine shares.
fn drive<I: DoubleEndedIterator>(
    range: I,
    rev: bool,
    mut step: impl FnMut(I::Item) -> Result<bool, EngineError>,
) -> Result<(), EngineError> {
    if rev {
        for entry in range.rev() {
            if !step(entry)? {
                break;
            }
        }
    } else {
        for entry in range {
            if !step(entry)? {
                break;
            }
        }
    }
    Ok(())
}

/// Settings of [`open`].
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Which engine.
    pub kind: EngineKind,
    /// Memory for the engine's cache, bytes (`STORE_CACHE_MB`).
    pub cache_bytes: u64,
}

/// A storage engine. Reads may run on any thread while the writer writes.
pub trait Engine: Send + Sync {
    /// Which engine this is.
    fn kind(&self) -> EngineKind;

    /// The value of `key`.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Visits the entries of `scan` in order until `visit` returns `false`.
    fn scan(&self, table: Table, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), EngineError>;

    /// Applies `batch` atomically: visible to reads on return; durable on return when
    /// `durable`, else at the next durable apply or [`Engine::persist`] (a crash loses it).
    fn apply(&self, batch: &Batch, durable: bool) -> Result<(), EngineError>;

    /// Makes everything applied durable.
    fn persist(&self) -> Result<(), EngineError>;

    /// Closes and opens the files again. redb and fjall refuse every write after an i/o error
    /// (a full disk) until then ([`EngineError::NeedsReopen`]). Fails while a reader still
    /// holds the old handle; the writer tries again later.
    fn reopen(&self) -> Result<(), EngineError>;
}

/// Whether `dir` holds a sled store (the store before issue 13): sled's `conf` and `db` files.
pub fn holds_sled_store(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Whether `dir` already holds the files of engine `kind`.
pub fn holds_store(kind: EngineKind, dir: &Path) -> bool {
    match kind {
        EngineKind::Redb => dir.join(redb::FILE_NAME).is_file(),
        EngineKind::Sled => holds_sled_store(dir),
        EngineKind::Fjall => dir.join("fjall").is_dir(),
    }
}

/// Opens (or creates) the engine's files in `dir`.
pub fn open(dir: &Path, opts: EngineOptions) -> Result<Box<dyn Engine>, EngineError> {
    std::fs::create_dir_all(dir).map_err(EngineError::from_io)?;
    match opts.kind {
        EngineKind::Redb => Ok(Box::new(redb::RedbEngine::open(dir, opts.cache_bytes)?)),
        EngineKind::Sled => Ok(Box::new(sled::SledEngine::open(dir, opts.cache_bytes)?)),
        #[cfg(feature = "engine-fjall")]
        EngineKind::Fjall => Ok(Box::new(fjall::FjallEngine::open(dir, opts.cache_bytes)?)),
        #[cfg(not(feature = "engine-fjall"))]
        EngineKind::Fjall => Err(EngineError::Other(
            "fjall is not in this build (cargo build --features engine-fjall)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"CA1\0"), Some(b"CA1\x01".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn engine_names() {
        assert_eq!(EngineKind::parse("redb"), Ok(EngineKind::Redb));
        assert_eq!(EngineKind::parse("sled"), Ok(EngineKind::Sled));
        assert!(EngineKind::parse("rocksdb")
            .unwrap_err()
            .contains("unknown engine"));
        assert_eq!(
            EngineKind::parse("fjall").is_ok(),
            cfg!(feature = "engine-fjall")
        );
        assert_eq!(EngineKind::default().name(), "redb");
    }

    #[test]
    fn a_full_disk_is_told_apart() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(EngineError::from_io(full).is_disk_full());
        let other = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(!EngineError::from_io(other).is_disk_full());
    }

    /// Every engine in this build keeps the same promises (a shared conformance test).
    #[test]
    fn every_engine_reads_its_writes_in_order_and_after_a_reopen() {
        let mut kinds = vec![EngineKind::Redb, EngineKind::Sled];
        if cfg!(feature = "engine-fjall") {
            kinds.push(EngineKind::Fjall);
        }
        for kind in kinds {
            let dir = crate::store::tests::TempDir::new(kind.name());
            let opts = EngineOptions {
                kind,
                cache_bytes: 1 << 20,
            };
            {
                let e = open(&dir.0, opts).unwrap();
                let mut b = Batch::default();
                for k in [b"b".as_slice(), b"a", b"c", b"ab"] {
                    b.put(Table::Items, k.to_vec(), k.repeat(2));
                }
                b.put(Table::Calls, b"a".to_vec(), b"call".to_vec());
                b.delete(Table::Items, b"c".to_vec());
                e.apply(&b, false).unwrap();
                assert_eq!(
                    e.get(Table::Items, b"ab").unwrap().as_deref(),
                    Some(&b"abab"[..]),
                    "{kind:?}: visible before persist"
                );
                assert_eq!(e.get(Table::Items, b"c").unwrap(), None, "{kind:?}");
                e.persist().unwrap();
                let mut keys = Vec::new();
                e.scan(Table::Items, Scan::all().rev(), &mut |k, _| {
                    keys.push(k.to_vec());
                    true
                })
                .unwrap();
                assert_eq!(
                    keys,
                    [b"b".to_vec(), b"ab".to_vec(), b"a".to_vec()],
                    "{kind:?}"
                );
                let upper = prefix_end(b"a");
                let mut n = 0;
                e.scan(Table::Items, Scan::prefix(b"a", &upper), &mut |_, _| {
                    n += 1;
                    n < 1
                })
                .unwrap();
                assert_eq!(n, 1, "{kind:?}: the visitor stops the scan");
                e.reopen().unwrap();
                assert_eq!(
                    e.get(Table::Calls, b"a").unwrap().as_deref(),
                    Some(&b"call"[..])
                );
            }
            // sled's flusher thread lets go of the directory's lock shortly after the drop.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let e = loop {
                match open(&dir.0, opts) {
                    Err(EngineError::Locked) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    other => break other.unwrap(),
                }
            };
            assert_eq!(
                e.get(Table::Items, b"b").unwrap().as_deref(),
                Some(&b"bb"[..]),
                "{kind:?}: durable across a close"
            );
            assert_eq!(e.get(Table::Agents, b"x").unwrap(), None, "{kind:?}");
        }
    }
}
