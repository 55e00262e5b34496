//! Tessera's cores: the stable key->shard map, the shard set (one fjall store and one writer
//! thread per shard), pinned glommio executors joined by a channel mesh, and the router on each
//! core that runs by-key work on the shard's owner core.
//!
//! This crate owns placement and the movement of work between threads. It must not parse requests
//! or know Harper's semantics: it moves [`tessera_storage`] operations to where the data lives.

mod cores;
mod txn;
mod watchdog;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::channel::mpsc::{UnboundedReceiver, unbounded};
use tessera_storage::shard::{Change, Durability, ShardOptions, ShardStore, StoreError};

pub use cores::{CoreContext, ExecutorSettings, Router, start_executors};

/// One group of changes a shard's writer committed, as its feed carries them.
pub struct Committed {
    /// The group's number: increasing, the order the writer applied the groups in (see
    /// [`ShardSet::applied`]).
    pub group: u64,
    pub changes: Vec<Change>,
}

/// Seed of the key->shard hash. Changing it re-homes every key: never do that.
const SHARD_SEED: u64 = 0x7e55_e4a0_5a4d_0001;

/// The shard of a stored key (`table id ++ encoded primary key`).
pub fn shard_of(key: &[u8], shard_count: usize) -> usize {
    (xxhash_rust::xxh3::xxh3_64_with_seed(key, SHARD_SEED) % shard_count as u64) as usize
}

/// Why work on a shard failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the server is shutting down")]
    Closing,
    #[error("shard {0} is unavailable")]
    Unavailable(usize),
    /// A transaction preparing its parts in lock order met a conflict, which waiting prepares
    /// never answer: an internal error, never a reason to retry.
    #[error("the transaction met a lock conflict where it should have waited")]
    Contended,
}

/// Crash-injection points of the commit protocol, compiled in only with the `failpoints`
/// feature (the test build): with `TESSERA_FAILPOINT=name` (or `name:n`, the n-th time it is
/// reached), the process aborts there: like `kill -9`, no destructor, flush or fsync runs.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    use std::sync::OnceLock;
    use std::sync::atomic::AtomicU64;
    static AT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let at = AT.get_or_init(|| {
        let v = std::env::var("TESSERA_FAILPOINT").ok()?;
        let (n, count) = v.split_once(':').unwrap_or((&v, "1"));
        Some((n.to_owned(), count.parse().unwrap_or(1)))
    });
    if let Some((n, count)) = at
        && n == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= *count
    {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// Crash-injection points (see the `failpoints` feature): nothing in a normal build.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}

/// Every shard of the process: stores and writer queues. Shared by all cores.
pub struct ShardSet {
    stores: Vec<Arc<ShardStore>>,
    writers: Vec<writer::WriterHandle>,
    closing: AtomicBool,
    /// Each shard's change feed, taken once by the shard's owner core ([`Self::take_feed`]).
    feeds: Vec<Mutex<Option<UnboundedReceiver<Committed>>>>,
    /// Each shard's last group applied to its store ([`Self::applied`]).
    applied: Vec<Arc<AtomicU64>>,
    /// Subscriptions anywhere in the process; while there are none, writers record no changes.
    watchers: Arc<AtomicUsize>,
    /// Cross-shard transactions and the readers that must not see them half-applied.
    gate: txn::Gate,
}

/// How long a stop waits for the memtables to be flushed once everything is durable.
pub const FLUSH_AT_STOP: std::time::Duration = std::time::Duration::from_secs(10);

impl ShardSet {
    /// Opens `count` shards under `data_dir` (`shard-N/`), in parallel, and starts their writers.
    pub fn open(
        data_dir: &Path,
        count: usize,
        opts: ShardOptions,
        durability: Durability,
    ) -> Result<ShardSet, std::io::Error> {
        let opened: Vec<Result<ShardStore, StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..count)
                .map(|i| {
                    let path = data_dir.join(format!("shard-{i}"));
                    let opts = opts.clone();
                    s.spawn(move || ShardStore::open(&path, opts))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(StoreError::Corrupt("shard open panicked".into())))
                })
                .collect()
        });
        let mut stores = Vec::with_capacity(count);
        for (i, s) in opened.into_iter().enumerate() {
            stores.push(Arc::new(
                s.map_err(|e| std::io::Error::other(format!("shard {i}: {e}")))?,
            ));
        }
        let (applied, dropped) = txn::recover(&stores)
            .map_err(|e| std::io::Error::other(format!("recovering transactions: {e}")))?;
        if applied + dropped > 0 {
            tracing::info!(
                "recovered cross-shard transactions: {applied} prepared parts applied, {dropped} dropped"
            );
        }
        // The audit log (kept by each owner core from the change feed) always watches.
        let watchers = Arc::new(AtomicUsize::new(1));
        let mut writers = Vec::with_capacity(count);
        let mut feeds = Vec::with_capacity(count);
        let mut applied = Vec::with_capacity(count);
        for (i, store) in stores.iter().enumerate() {
            let (tx, rx) = unbounded();
            let feed = writer::Feed {
                tx,
                watchers: watchers.clone(),
                applied: Arc::new(AtomicU64::new(0)),
            };
            applied.push(feed.applied.clone());
            writers.push(writer::spawn(i, store.clone(), durability, feed)?);
            feeds.push(Mutex::new(Some(rx)));
        }
        Ok(ShardSet {
            stores,
            writers,
            closing: AtomicBool::new(false),
            feeds,
            applied,
            watchers,
            gate: txn::Gate::new(),
        })
    }

    /// The changes `shard` commits, in commit order, each group sent once durable. Only while
    /// [`Self::watchers`] is above zero. Taken once, by the owner core.
    pub fn take_feed(&self, shard: usize) -> Option<UnboundedReceiver<Committed>> {
        self.feeds.get(shard)?.lock().ok()?.take()
    }

    /// The number of the last group `shard`'s writer applied to its store. A read of the store
    /// that starts after this call sees every change of the feed's groups numbered up to it,
    /// even those still on their way through the feed: a subscription that starts with such a
    /// read skips them.
    pub fn applied(&self, shard: usize) -> u64 {
        self.applied
            .get(shard)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// The number of live subscriptions, plus one for the audit log; writers record changes
    /// while it is above zero.
    pub fn watchers(&self) -> &AtomicUsize {
        &self.watchers
    }

    pub fn count(&self) -> usize {
        self.stores.len()
    }

    /// The store of `shard`. Reads through it belong on the shard's owner core (see [`Router`]);
    /// start-up and tests may use it directly.
    pub fn store(&self, shard: usize) -> Option<&Arc<ShardStore>> {
        self.stores.get(shard)
    }

    /// Refuses new writes, waits until every queued write is committed and fsynced, then gives
    /// every shard's memtables up to [`FLUSH_AT_STOP`] to be flushed, so the next start has no
    /// sealed journal to replay. A flush queued behind a long compaction (minutes, with tens of
    /// millions of records) is left: everything is in the fsynced journal, which the next start
    /// replays. Blocking: call from a plain thread (the signal handler), never from an executor.
    pub fn close(&self) -> Result<(), ShardError> {
        self.closing.store(true, Ordering::SeqCst);
        let mut waits = Vec::new();
        for (i, w) in self.writers.iter().enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            w.tx.send(writer::Command::Flush(tx))
                .map_err(|_| ShardError::Unavailable(i))?;
            waits.push((i, rx));
        }
        for (i, rx) in &waits {
            rx.recv()
                .map_err(|_| ShardError::Unavailable(*i))?
                .map_err(ShardError::Store)?;
        }
        let deadline = std::time::Instant::now() + FLUSH_AT_STOP;
        for (i, rx) in waits {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("shard {i}: memtables not flushed at stop: {e}"),
                Err(_) => tracing::warn!(
                    "shard {i}: memtables not flushed within {FLUSH_AT_STOP:?} (behind a \
                     compaction); the next start replays the journal"
                ),
            }
        }
        Ok(())
    }

    /// Commits one write through its shard's writer (group commit), from any thread: the
    /// executors use [`Router::write`]; replication's own thread applies other nodes' changes
    /// with this. Returns once the write is as durable as the configured mode promises.
    pub async fn write(
        &self,
        op: tessera_storage::shard::WriteOp,
    ) -> Result<tessera_storage::shard::WriteOutcome, ShardError> {
        if self.is_closing() {
            return Err(ShardError::Closing);
        }
        let shard = shard_of(&op.key, self.count());
        let writer = self
            .writers
            .get(shard)
            .ok_or(ShardError::Unavailable(shard))?;
        let (tx, rx) = futures::channel::oneshot::channel();
        writer
            .tx
            .send(writer::Command::Write(op, tx))
            .map_err(|_| ShardError::Unavailable(shard))?;
        rx.await
            .map_err(|_| ShardError::Unavailable(shard))?
            .map_err(ShardError::Store)
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable() {
        // Pinned values: a change here would re-home stored keys.
        assert_eq!(shard_of(b"\0\0\0\x01\x20abc", 1), 0);
        let spread: std::collections::HashSet<_> =
            (0u32..100).map(|i| shard_of(&i.to_be_bytes(), 4)).collect();
        assert_eq!(spread.len(), 4);
        assert_eq!(shard_of(b"key", 7), shard_of(b"key", 7));
    }

    /// What a subscription relies on to skip the changes its starting read saw: once a write is
    /// answered, `applied` covers the feed group that carries its change.
    #[test]
    fn an_answered_write_is_in_a_group_up_to_applied() {
        use futures::StreamExt;
        use futures::executor::block_on;

        let dir = tempfile::tempdir().unwrap();
        let set =
            ShardSet::open(dir.path(), 1, ShardOptions::default(), Durability::Durable).unwrap();
        let table = txn::tests::table();
        let mut feed = set.take_feed(0).unwrap();
        for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
            let op = txn::tests::put(&table, id);
            let key = op.key.clone();
            let (tx, rx) = futures::channel::oneshot::channel();
            set.writers[0]
                .tx
                .send(writer::Command::Write(op, tx))
                .unwrap();
            block_on(rx).unwrap().unwrap();
            let applied = set.applied(0);
            let committed = block_on(feed.next()).unwrap();
            assert_eq!(committed.changes.len(), 1);
            assert_eq!(committed.changes[0].key, key);
            assert!(
                committed.group <= applied,
                "write {n}: group {} after {applied}",
                committed.group
            );
            assert!(committed.group > n as u64, "groups increase");
        }
        set.close().unwrap();
    }
}
