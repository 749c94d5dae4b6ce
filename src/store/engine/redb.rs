//! redb: the store's engine. One file, `DATA_DIR/callbridge.redb`, a copy-on-write B-tree.
//!
//! - **Batches** are write transactions. A non-durable one ([`redb::Durability::None`]) is
//!   visible at once and costs no fsync; the flush interval's durable one makes it and every
//!   earlier one durable. A crash (kill -9, power) goes back to the last durable commit.
//! - **Quick repair** is on for durable commits: each saves the allocator state, so an open
//!   after an unclean stop loads it instead of walking the whole file (README "Storage" has the
//!   measured open times).
//! - **Freed pages are reused** once no reader needs them: deleting old calls stops the file's
//!   growth; the file does not shrink.
//! - **After an i/o error** (a full disk) redb refuses everything until the file is reopened:
//!   [`RedbEngine::reopen`] drops the handle and opens it again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Engine, EngineError, EngineKind, Scan, Table, Visit, Write};

/// The file in `DATA_DIR`.
pub const FILE_NAME: &str = "callbridge.redb";

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// The redb table of each [`Table`], in [`Table::ALL`] order.
const DEFS: [Def; 7] = [
    TableDefinition::new("agents"),
    TableDefinition::new("numbers"),
    TableDefinition::new("calls"),
    TableDefinition::new("items"),
    TableDefinition::new("calls_by_time"),
    TableDefinition::new("calls_open"),
    TableDefinition::new("meta"),
];

fn def(t: Table) -> Def {
    DEFS[t.index()]
}

/// The redb engine.
pub struct RedbEngine {
    path: PathBuf,
    cache_bytes: usize,
    /// `None` only while [`RedbEngine::reopen`] runs (or after it failed).
    db: RwLock<Option<Arc<Database>>>,
}

fn err(e: impl Into<redb::Error>) -> EngineError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => EngineError::Locked,
        redb::Error::Io(io) => EngineError::from_io(io),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => EngineError::NeedsReopen,
        redb::Error::Corrupted(why) => EngineError::Corrupt(why),
        other => EngineError::Other(other.to_string()),
    }
}

impl RedbEngine {
    /// Opens or creates `dir/callbridge.redb` with a cache of `cache_bytes`, and makes sure
    /// every table exists (reads of a table never written then need no special case).
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<RedbEngine, EngineError> {
        let path = dir.join(FILE_NAME);
        let cache_bytes = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
        let db = Self::open_file(&path, cache_bytes)?;
        let mut tx = db.begin_write().map_err(err)?;
        // Like every durable commit here: a kill -9 right after the open must not cost a full
        // repair at the next one.
        tx.set_quick_repair(true);
        for d in DEFS {
            tx.open_table(d).map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(RedbEngine {
            path,
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
        })
    }

    fn open_file(path: &Path, cache_bytes: usize) -> Result<Database, EngineError> {
        Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(err)
    }

    fn db(&self) -> Result<Arc<Database>, EngineError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(EngineError::NeedsReopen)
    }
}

impl Engine for RedbEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Redb
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(err)?;
        let t = tx.open_table(def(table)).map_err(err)?;
        let v = t.get(key).map_err(err)?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn scan(&self, table: Table, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), EngineError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(err)?;
        let t = tx.open_table(def(table)).map_err(err)?;
        let range = t.range((scan.lo, scan.hi)).map_err(err)?;
        super::drive(range, scan.rev, |entry| {
            let (k, v) = entry.map_err(err)?;
            Ok(visit(k.value(), v.value()))
        })
    }

    fn apply(&self, batch: &Batch, durable: bool) -> Result<(), EngineError> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(err)?;
        if durable {
            tx.set_quick_repair(true);
        } else {
            tx.set_durability(Durability::None).map_err(err)?;
        }
        {
            let mut open: [Option<redb::Table<&[u8], &[u8]>>; 7] = Default::default();
            for w in &batch.writes {
                let table = match w {
                    Write::Put(t, ..) | Write::Delete(t, _) => *t,
                };
                let slot = &mut open[table.index()];
                if slot.is_none() {
                    *slot = Some(tx.open_table(def(table)).map_err(err)?);
                }
                let t = slot.as_mut().expect("opened above");
                match w {
                    Write::Put(_, k, v) => {
                        t.insert(k.as_slice(), v.as_slice()).map_err(err)?;
                    }
                    Write::Delete(_, k) => {
                        t.remove(k.as_slice()).map_err(err)?;
                    }
                }
            }
        }
        tx.commit().map_err(err)
    }

    fn persist(&self) -> Result<(), EngineError> {
        self.apply(&Batch::default(), true)
    }

    fn reopen(&self) -> Result<(), EngineError> {
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        // The old handle must be gone before the file can be opened again: drop ours first.
        // A reader holding a clone keeps the file open; then the open below fails (Locked) and
        // the writer tries again later.
        drop(slot.take());
        let db = Self::open_file(&self.path, self.cache_bytes)?;
        *slot = Some(Arc::new(db));
        Ok(())
    }
}
