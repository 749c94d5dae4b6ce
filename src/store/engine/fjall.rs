//! fjall 3: an LSM tree, measured beside redb and sled (README "Storage"). Built only with the
//! `engine-fjall` feature; `STORE_ENGINE=fjall` selects it. Files in `DATA_DIR/fjall/`.
//!
//! Batches are fjall write batches (atomic across keyspaces), written to its journal without a
//! sync; [`Engine::persist`] syncs the journal (`fdatasync`). Memory is bounded by the block
//! cache, the memtables and the tables' pinned filters and indexes.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{Batch, Engine, EngineError, EngineKind, Scan, Table, Visit, Write};

/// Directory under `DATA_DIR`.
pub const DIR_NAME: &str = "fjall";

/// Memtable size per keyspace before it is flushed to a table: fjall's default is 64 MiB, which
/// an edge proxy writing ~100 KB/s would hold in memory for ten minutes per keyspace.
const MEMTABLE_BYTES: u64 = 4 * 1024 * 1024;

/// Journal bytes before the oldest memtables are flushed: fjall's smallest allowed value (its
/// default is 512 MiB of journal, all of it on disk before anything is reclaimed).
const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

struct Open {
    db: Database,
    keyspaces: Vec<Keyspace>,
}

/// The fjall engine.
pub struct FjallEngine {
    path: PathBuf,
    cache_bytes: u64,
    inner: RwLock<Option<Open>>,
}

fn err(e: fjall::Error) -> EngineError {
    match e {
        fjall::Error::Locked => EngineError::Locked,
        fjall::Error::Io(io) => EngineError::from_io(io),
        fjall::Error::Poisoned => EngineError::NeedsReopen,
        other => EngineError::Other(format!("{other:?}")),
    }
}

impl FjallEngine {
    /// Opens (or creates) `dir/fjall` with a block cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<FjallEngine, EngineError> {
        let path = dir.join(DIR_NAME);
        let open = Self::open_dir(&path, cache_bytes)?;
        Ok(FjallEngine {
            path,
            cache_bytes,
            inner: RwLock::new(Some(open)),
        })
    }

    fn open_dir(path: &Path, cache_bytes: u64) -> Result<Open, EngineError> {
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            .max_journaling_size(JOURNAL_BYTES)
            .manual_journal_persist(true)
            .open()
            .map_err(err)?;
        let keyspaces = Table::ALL
            .iter()
            .map(|t| {
                db.keyspace(t.name(), || {
                    KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(Open { db, keyspaces })
    }

    fn with<T>(&self, f: impl FnOnce(&Open) -> Result<T, EngineError>) -> Result<T, EngineError> {
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(o) => f(o),
            None => Err(EngineError::NeedsReopen),
        }
    }
}

impl Engine for FjallEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Fjall
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.with(|o| {
            Ok(o.keyspaces[table.index()]
                .get(key)
                .map_err(err)?
                .map(|v| v.to_vec()))
        })
    }

    fn scan(&self, table: Table, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), EngineError> {
        self.with(|o| {
            let range = o.keyspaces[table.index()].range::<&[u8], _>((scan.lo, scan.hi));
            super::drive(range, scan.rev, |g| {
                let (k, v) = g.into_inner().map_err(err)?;
                Ok(visit(&k, &v))
            })
        })
    }

    fn apply(&self, batch: &Batch, durable: bool) -> Result<(), EngineError> {
        self.with(|o| {
            let mut b = o.db.batch();
            for w in &batch.writes {
                match w {
                    Write::Put(t, k, v) => {
                        b.insert(&o.keyspaces[t.index()], k.as_slice(), v.as_slice())
                    }
                    Write::Delete(t, k) => b.remove(&o.keyspaces[t.index()], k.as_slice()),
                }
            }
            b.commit().map_err(err)?;
            if durable {
                o.db.persist(PersistMode::SyncData).map_err(err)?;
            }
            Ok(())
        })
    }

    fn persist(&self) -> Result<(), EngineError> {
        self.with(|o| o.db.persist(PersistMode::SyncData).map_err(err))
    }

    fn reopen(&self) -> Result<(), EngineError> {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        drop(g.take());
        *g = Some(Self::open_dir(&self.path, self.cache_bytes)?);
        Ok(())
    }
}
