//! Each owner core's log of the recent changes of its shards, filled from the shard's `audit`
//! keyspace the first time it is needed, for subscriptions that start in the past (`past.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashMap;
use tessera_shards::ShardSet;

use super::Broadcast;

/// Recent changes each owner core keeps in memory per shard, for subscriptions that start in the
/// past. The shard's store keeps them too (its `audit` keyspace), so they outlive a restart.
pub const AUDIT: usize = 10_000;

/// One shard's audit log on its owner core.
pub(super) struct AuditLog {
    /// Its most recent changes, oldest first.
    pub(super) changes: VecDeque<Arc<Broadcast>>,
    /// The highest version read back from the shard's store when the log was filled.
    pub(super) read_up_to: u64,
}

impl AuditLog {
    /// The log of `shard`, filled from the shard's store the first time (the changes it
    /// committed before this process started).
    pub(super) fn of<'a>(
        logs: &'a mut HashMap<usize, AuditLog>,
        set: &ShardSet,
        shard: usize,
    ) -> &'a mut AuditLog {
        logs.entry(shard).or_insert_with(|| {
            let stored = match set.store(shard).map(|s| s.audit_tail(AUDIT)) {
                Some(Ok(changes)) => changes,
                Some(Err(e)) => {
                    tracing::error!("realtime: reading the audit log of shard {shard}: {e}");
                    Vec::new()
                }
                None => Vec::new(),
            };
            AuditLog {
                read_up_to: stored.iter().map(|c| c.version).max().unwrap_or(0),
                changes: stored.into_iter().map(Broadcast::new).collect(),
            }
        })
    }

    /// Logs `change`, dropping the oldest beyond [`AUDIT`]. A change read back from the store
    /// (committed while the log was being filled) is not logged twice. Versions do not always
    /// arrive in order (a cross-shard transaction's part is versioned when prepared), so only
    /// those up to what was read are looked up.
    pub(super) fn push(&mut self, change: &Arc<Broadcast>) {
        if change.version <= self.read_up_to
            && self.changes.iter().any(|c| c.version == change.version)
        {
            return;
        }
        if self.changes.len() == AUDIT {
            self.changes.pop_front();
        }
        self.changes.push_back(change.clone());
    }
}
