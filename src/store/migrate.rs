//! `callbridge store migrate --from-sled DIR`: copies a sled store (callbridge before issue 13)
//! into the current engine.
//!
//! Agents, numbers, call records and items are copied as they are (the documents did not
//! change); the time index and the open-calls index are rebuilt from the records (a crash of
//! the old writer could leave a record without its index entry), and the logical byte count
//! is counted once at the end. The destination must be empty; it may be the sled directory
//! itself (the engine's file sits beside sled's, which can be deleted afterwards).

use std::ops::Bound;
use std::path::Path;

use super::engine::{
    self, sled::SledEngine, Batch, Engine, EngineKind, EngineOptions, Scan, Table,
};
use super::model::{CallRecord, CallStatus};
use super::{count_logical_bytes, open_error, time_key, StoreError, META_LOGICAL};

/// Writes per batch while copying: large enough that the per-batch cost vanishes, small enough
/// to hold in memory (a few MB of items).
pub const COPY_BATCH: usize = 4096;

/// What a migration copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Agents.
    pub agents: u64,
    /// Number routes.
    pub numbers: u64,
    /// Call records.
    pub calls: u64,
    /// Of them, still `in-progress` (listed for recovery at the next start).
    pub in_progress: u64,
    /// Conversation items.
    pub items: u64,
    /// The logical bytes of the new store (a full export's size).
    pub logical_bytes: u64,
}

/// Copies the sled store in `from` into a new store of engine `kind` in `to`.
pub fn from_sled(
    from: &Path,
    to: &Path,
    kind: EngineKind,
    cache_bytes: u64,
) -> Result<Migrated, StoreError> {
    if !engine::holds_sled_store(from) {
        return Err(StoreError::Open {
            dir: from.to_owned(),
            why: "no sled store here (sled keeps a `conf` and a `db` file)".into(),
        });
    }
    if kind == EngineKind::Sled {
        return Err(StoreError::Open {
            dir: to.to_owned(),
            why: "the destination engine is sled itself: nothing to migrate".into(),
        });
    }
    let src = SledEngine::open(from, cache_bytes).map_err(|e| open_error(from, e))?;
    let dst =
        engine::open(to, EngineOptions { kind, cache_bytes }).map_err(|e| open_error(to, e))?;
    for t in [Table::Agents, Table::Numbers, Table::Calls, Table::Items] {
        let mut any = false;
        dst.scan(t, Scan::all(), &mut |_, _| {
            any = true;
            false
        })?;
        if any {
            return Err(StoreError::Open {
                dir: to.to_owned(),
                why: format!(
                    "it already holds a {} store with {}: migrate into an empty directory",
                    kind.name(),
                    t.name()
                ),
            });
        }
    }
    let mut m = Migrated {
        agents: copy(&src, dst.as_ref(), Table::Agents, &mut |_, _, _| Ok(()))?,
        numbers: copy(&src, dst.as_ref(), Table::Numbers, &mut |_, _, _| Ok(()))?,
        ..Migrated::default()
    };
    let mut in_progress = 0;
    m.calls = copy(&src, dst.as_ref(), Table::Calls, &mut |k, v, b| {
        let r: CallRecord = serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
            what: "call",
            key: String::from_utf8_lossy(k).into_owned(),
            why: e.to_string(),
        })?;
        b.put(
            Table::ByTime,
            time_key(r.started_at_ms, &r.call_sid),
            Vec::new(),
        );
        if r.status == CallStatus::InProgress {
            b.put(Table::Open, k.to_vec(), Vec::new());
            in_progress += 1;
        }
        Ok(())
    })?;
    m.in_progress = in_progress;
    m.items = copy(&src, dst.as_ref(), Table::Items, &mut |_, _, _| Ok(()))?;
    m.logical_bytes = count_logical_bytes(dst.as_ref())?;
    let mut b = Batch::default();
    b.put(
        Table::Meta,
        META_LOGICAL.to_vec(),
        m.logical_bytes.to_be_bytes().to_vec(),
    );
    dst.apply(&b, true)?;
    Ok(m)
}

/// What [`copy`] calls for each entry: may add writes to the batch.
type Extra<'a> = dyn FnMut(&[u8], &[u8], &mut Batch) -> Result<(), StoreError> + 'a;

/// Copies `table` from `src` to `dst` in batches of [`COPY_BATCH`]; returns the entries copied.
fn copy(
    src: &dyn Engine,
    dst: &dyn Engine,
    table: Table,
    extra: &mut Extra<'_>,
) -> Result<u64, StoreError> {
    let mut after: Option<Vec<u8>> = None;
    let mut copied = 0;
    loop {
        let mut chunk: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(COPY_BATCH);
        let scan = Scan {
            lo: after.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            hi: Bound::Unbounded,
            rev: false,
        };
        src.scan(table, scan, &mut |k, v| {
            chunk.push((k.to_vec(), v.to_vec()));
            chunk.len() < COPY_BATCH
        })?;
        if chunk.is_empty() {
            return Ok(copied);
        }
        let mut b = Batch::default();
        for (k, v) in &chunk {
            extra(k, v, &mut b)?;
        }
        copied += chunk.len() as u64;
        after = chunk.last().map(|(k, _)| k.clone());
        for (k, v) in chunk {
            b.put(table, k, v);
        }
        dst.apply(&b, false)?;
    }
}
