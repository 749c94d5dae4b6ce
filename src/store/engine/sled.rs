//! sled 0.34: the store's engine before issue 13, kept for two jobs: reading an old store
//! (`callbridge store migrate --from-sled DIR`) and the side-by-side measurements
//! (`STORE_ENGINE=sled`). Its files sit at the root of the directory, as they always did.
//!
//! Measured under the soak (README "Storage"): RSS grows with the data written, whatever the
//! cache size (sled keeps an in-memory record of every page it ever wrote), and the directory
//! holds ~10× the data. Batches are not atomic across trees here (sled's cross-tree
//! transactions cost more than its plain inserts); a crash can leave a record without its time
//! index entry, which only the default engine's atomic batches rule out.

use std::path::Path;

use super::{Batch, Engine, EngineError, EngineKind, Scan, Table, Visit, Write};

/// The sled engine.
pub struct SledEngine {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

fn err(e: sled::Error) -> EngineError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            EngineError::Locked
        }
        sled::Error::Io(io) => EngineError::from_io(io),
        sled::Error::Corruption { .. } => EngineError::Corrupt(e.to_string()),
        other => EngineError::Other(other.to_string()),
    }
}

impl SledEngine {
    /// Opens (or creates) a sled store in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledEngine, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            // The writer persists on its own interval (the crash-loss bound); sled's background
            // flusher would only add fsyncs.
            .flush_every_ms(None)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(err)?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(SledEngine { db, trees })
    }

    fn tree(&self, t: Table) -> &sled::Tree {
        &self.trees[t.index()]
    }
}

impl Engine for SledEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sled
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tree(table).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, table: Table, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), EngineError> {
        let range = self.tree(table).range::<&[u8], _>((scan.lo, scan.hi));
        super::drive(range, scan.rev, |entry| {
            entry.map(|(k, v)| visit(&k, &v)).map_err(err)
        })
    }

    fn apply(&self, batch: &Batch, durable: bool) -> Result<(), EngineError> {
        // Plain inserts, not `sled::Batch`: sled 0.34's `apply_batch` pins the log for atomicity,
        // which rolls the io buffer twice and writes it out with a `sync_file_range` even for an
        // empty batch (profiled: ~18% of the proxy's CPU under 300 calls).
        for w in &batch.writes {
            match w {
                Write::Put(t, k, v) => {
                    self.tree(*t)
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(err)?;
                }
                Write::Delete(t, k) => {
                    self.tree(*t).remove(k.as_slice()).map_err(err)?;
                }
            }
        }
        if durable {
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), EngineError> {
        self.db.flush().map(|_| ()).map_err(err)
    }

    fn reopen(&self) -> Result<(), EngineError> {
        // sled does not latch i/o errors: the next write simply tries again.
        Ok(())
    }
}
