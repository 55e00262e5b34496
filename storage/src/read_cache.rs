//! A shard's cache of recently read records, in front of fjall's point reads.
//!
//! A GET by id spent about a quarter of the server's CPU in fjall (the memtables' skiplists, the
//! disk tables' filters, block index and block cache), against a hash lookup here. Reads fill
//! the cache with what fjall returned, and every committed batch that writes records puts their
//! new bytes in (or takes a removed record out) before the batch is answered: the next write of
//! a record finds the old one here (to update its index entries) and so does the next read.
//!
//! A read that misses may race a write: it can read the old record from fjall, then the write
//! commits and caches the new one, then the read would put the old record back. `writes` closes
//! that gap: the read notes it before reading fjall and fills the cache only if it is unchanged,
//! checked under the same lock under which a writer bumps it and writes its keys. So a fill
//! either happens before the writer's (which then replaces it) or sees the bump.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::Slice;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

/// Bytes an entry costs besides its key and value (the cache's slot and the value's header).
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct Bytes;

impl Weighter<Vec<u8>, Slice> for Bytes {
    fn weight(&self, key: &Vec<u8>, value: &Slice) -> u64 {
        (key.len() + value.len()) as u64 + ENTRY_OVERHEAD
    }
}

/// Recently read records of one shard: key -> stored bytes.
pub struct ReadCache {
    entries: Cache<Vec<u8>, Slice, Bytes>,
    /// Committed record-writing batches so far.
    writes: AtomicU64,
    /// Held to fill an entry after checking `writes`, and to bump `writes` and remove keys.
    fill: Mutex<()>,
}

/// What a read that missed must hand back to [`ReadCache::fill`].
#[derive(Clone, Copy)]
pub struct Miss(u64);

impl ReadCache {
    /// A cache of about `bytes`.
    pub fn new(bytes: u64) -> ReadCache {
        let items = (bytes / 256).max(1) as usize;
        ReadCache {
            entries: Cache::with_weighter(items, bytes.max(1), Bytes),
            writes: AtomicU64::new(0),
            fill: Mutex::new(()),
        }
    }

    /// The cached bytes of `key`, or the ticket to fill it with what fjall holds now.
    pub fn get(&self, key: &[u8]) -> Result<Slice, Miss> {
        let miss = Miss(self.writes.load(Ordering::Acquire));
        self.entries.get(key).ok_or(miss)
    }

    /// Caches `value`, read from fjall after `miss`, unless a batch has written since.
    pub fn fill(&self, miss: Miss, key: &[u8], value: &Slice) {
        let _held = self.fill.lock().unwrap_or_else(|p| p.into_inner());
        if self.writes.load(Ordering::Acquire) == miss.0 {
            self.entries.insert(key.to_vec(), value.clone());
        }
    }

    /// After a committed batch that wrote `records` (key, new bytes or `None` when removed): the
    /// cache holds what the batch left.
    pub fn written<'k>(&self, records: impl IntoIterator<Item = (&'k [u8], Option<&'k [u8]>)>) {
        let mut records = records.into_iter().peekable();
        if records.peek().is_none() {
            // A group of messages only: nothing a fill could race.
            return;
        }
        let _held = self.bump();
        for (k, v) in records {
            match v {
                Some(v) => self.entries.insert(k.to_vec(), Slice::from(v)),
                None => {
                    self.entries.remove(k);
                }
            }
        }
    }

    /// After a committed batch that may have written any record: nothing stays.
    pub fn written_any(&self) {
        let _held = self.bump();
        self.entries.clear();
    }

    /// Counts a committed batch; fills wait while the guard is held.
    fn bump(&self) -> std::sync::MutexGuard<'_, ()> {
        let held = self.fill.lock().unwrap_or_else(|p| p.into_inner());
        self.writes.fetch_add(1, Ordering::AcqRel);
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_between_a_miss_and_its_fill_keeps_the_old_record_out() {
        let cache = ReadCache::new(1 << 20);
        let old = Slice::from(b"old".as_slice());
        let new = b"new".as_slice();
        let miss = cache.get(b"k").unwrap_err();
        // The write commits and caches the new bytes after the read got the old ones from fjall.
        cache.written([(b"k".as_slice(), Some(new))]);
        cache.fill(miss, b"k", &old);
        assert_eq!(
            cache.get(b"k").ok().as_deref(),
            Some(new),
            "the old record was cached"
        );
        // A removal takes it out, and a fill that raced the removal stays out.
        let miss = cache.get(b"j").unwrap_err();
        cache.written([(b"k".as_slice(), None)]);
        assert!(cache.get(b"k").is_err());
        cache.fill(miss, b"k", &old);
        assert!(cache.get(b"k").is_err(), "the removed record was cached");
        // A read after the write fills it.
        let miss = cache.get(b"k").unwrap_err();
        cache.fill(miss, b"k", &Slice::from(new));
        assert_eq!(cache.get(b"k").ok().as_deref(), Some(new));
        cache.written_any();
        assert!(cache.get(b"k").is_err(), "clear keeps nothing");
    }
}
