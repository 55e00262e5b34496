//! Transactions whose writes span shards: two-phase commit over the shards' writer threads with
//! one persist round (the transaction commits when every part's intent is durable), redo of
//! prepared parts on recovery, and a gate that gives multi-shard readers a consistent cut.
//! `docs/adr/0001-cross-shard-transactions.md` says why this shape and what it costs.
//!
//! 1. **Prepare** (in parallel): each participant plans its ops against its current state,
//!    persists the plan as an intent naming every participant with its group commit, and locks
//!    the keys. A key already locked by another transaction makes the prepare fail at once; the
//!    parts are then dropped and prepared again one at a time in shard order, each waiting for
//!    its keys (a global lock order: no deadlock, no starvation). Once every part is durable the
//!    transaction is committed: that is the commit point, and nothing more is persisted first.
//! 2. **Resolve** (in parallel): each participant applies its plan, drops the intent and leaves
//!    a commit marker in one batch, unlocks, and answers as soon as readers see it. The caller is
//!    answered when every participant has. The markers are dropped once every participant has
//!    persisted its resolve.
//!
//! Recovery ([`recover`]): an intent is applied if every participant it names still holds its
//! intent or a marker (every part was durably prepared, so the transaction had committed), and
//! dropped otherwise (a part was never prepared: nobody was answered).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use tessera_storage::shard::{
    Durability, Intent, ShardStore, StoreError, View, WriteOp, WriteOutcome,
};

use crate::writer::{Command, Prepared, StoreResult};
use crate::{ShardError, ShardSet, failpoint};

/// How long a transaction about to resolve holds back for readers waiting for a quiet instant.
const READER_GRACE: Duration = Duration::from_millis(1);

/// Orders multi-shard readers with the resolve phase of cross-shard transactions: a reader takes
/// its per-shard views at an instant when no transaction is applied on some shards and not yet
/// on others.
#[derive(Default)]
pub(crate) struct Gate {
    /// Transactions that entered their resolve phase, and those that left it.
    started: AtomicU64,
    finished: AtomicU64,
    /// Readers waiting for a quiet instant: new resolve phases hold back briefly for them.
    readers: AtomicUsize,
    /// The last transaction id handed out.
    txid: AtomicU64,
}

impl Gate {
    pub(crate) fn new() -> Gate {
        let g = Gate::default();
        g.txid
            .store(tessera_storage::shard::now_micros(), Ordering::Relaxed);
        g
    }

    /// Views of every shard forming a consistent cut, or `None` if a resolve phase overlapped.
    fn try_views(&self, set: &ShardSet) -> Option<Vec<View>> {
        let started = self.started.load(Ordering::SeqCst);
        if self.finished.load(Ordering::SeqCst) != started {
            return None;
        }
        let views = set.stores.iter().map(|st| st.view()).collect();
        (self.started.load(Ordering::SeqCst) == started).then_some(views)
    }
}

/// Consistent views of every shard for one multi-shard read.
pub(crate) async fn views(set: &ShardSet) -> Vec<View> {
    if let Some(v) = set.gate.try_views(set) {
        return v;
    }
    set.gate.readers.fetch_add(1, Ordering::SeqCst);
    let views = loop {
        glommio::timer::sleep(Duration::from_micros(20)).await;
        if let Some(v) = set.gate.try_views(set) {
            break v;
        }
    };
    set.gate.readers.fetch_sub(1, Ordering::SeqCst);
    views
}

/// Sends `cmd` to `shard`'s writer.
fn send(set: &ShardSet, shard: usize, cmd: Command) -> Result<(), ShardError> {
    set.writers
        .get(shard)
        .ok_or(ShardError::Unavailable(shard))?
        .tx
        .send(cmd)
        .map_err(|_| ShardError::Unavailable(shard))
}

/// One shard's part of a transaction: its ops, and where each one's outcome goes in the caller's
/// list. The ops travel to the writer and back (after a conflict or an abort) rather than being
/// copied: a bulk write's records are not duplicated on the coordinating core.
pub(crate) struct Part {
    pub(crate) shard: usize,
    pub(crate) positions: Vec<usize>,
    pub(crate) ops: Vec<WriteOp>,
}

/// Asks the part's writer to prepare it as its share of `txid`; the ops go with the command.
fn prepare(
    set: &ShardSet,
    part: &mut Part,
    txid: u64,
    participants: &Arc<[u32]>,
    wait: bool,
) -> Result<oneshot::Receiver<StoreResult<Prepared>>, ShardError> {
    let (reply, rx) = oneshot::channel();
    send(
        set,
        part.shard,
        Command::Prepare {
            txid,
            participants: participants.clone(),
            ops: std::mem::take(&mut part.ops),
            wait,
            reply,
        },
    )?;
    Ok(rx)
}

/// How the prepare of every part went. Which parts a writer holds needs no list: those whose
/// ops did not come back.
#[derive(Default)]
struct Preparation {
    /// A part met a key locked by another transaction.
    conflict: bool,
    failure: Option<ShardError>,
}

impl Preparation {
    /// Records a part's answer: a ready part's outcomes go to their places in the caller's list,
    /// a conflicting part gets its ops back. Returns whether the part is prepared.
    fn record(
        &mut self,
        part: &mut Part,
        answer: Result<StoreResult<Prepared>, oneshot::Canceled>,
        outcomes: &mut [Option<WriteOutcome>],
    ) -> bool {
        match answer {
            Ok(Ok(Prepared::Ready(out))) => {
                for (at, o) in part.positions.iter().zip(out) {
                    outcomes[*at] = Some(o);
                }
                return true;
            }
            Ok(Ok(Prepared::Conflict(ops))) => {
                part.ops = ops;
                self.conflict = true;
            }
            Ok(Err(e)) => self.failure = Some(ShardError::Store(e)),
            Err(_) => self.failure = Some(ShardError::Unavailable(part.shard)),
        }
        false
    }
}

/// Commits `parts` atomically and returns the outcomes in the caller's order. Runs detached from
/// the caller's future by [`crate::Router::transact`], so a dropped request never leaves keys
/// locked.
///
/// The first attempt prepares every part in parallel, and a part whose keys another transaction
/// holds fails at once. If one did, the parts are dropped and the second attempt prepares them one
/// at a time in shard order, each waiting for its keys: a transaction then only waits for keys on
/// shards above those it holds, so no two ever wait for each other, and it cannot be starved by
/// transactions that keep taking turns at the keys (retrying with back-offs could, and under
/// contention answered "try again").
pub(crate) async fn commit(
    set: Arc<ShardSet>,
    mut parts: Vec<Part>,
    total: usize,
) -> Result<Vec<WriteOutcome>, ShardError> {
    parts.sort_unstable_by_key(|p| p.shard);
    let participants: Arc<[u32]> = parts.iter().map(|p| p.shard as u32).collect();
    for ordered in [false, true] {
        let txid = set.gate.txid.fetch_add(1, Ordering::Relaxed) + 1;
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; total];
        let mut p = Preparation::default();
        // Phase 1: prepare everywhere.
        if ordered {
            for part in &mut parts {
                let answer = prepare(&set, part, txid, &participants, true)?.await;
                if !p.record(part, answer, &mut outcomes) {
                    break;
                }
            }
        } else {
            let mut waits = Vec::with_capacity(parts.len());
            for part in &mut parts {
                waits.push(prepare(&set, part, txid, &participants, false)?);
            }
            for (rx, part) in waits.into_iter().zip(&mut parts) {
                p.record(part, rx.await, &mut outcomes);
            }
        }
        // Every part durable: committed.
        if !p.conflict && p.failure.is_none() {
            failpoint("decided");
            resolve_committed(&set, txid, &participants).await?;
            return Ok(outcomes.into_iter().flatten().collect());
        }
        // Abort: every writer still holding a part's ops (prepared, or failed after storing it)
        // drops the part and hands the ops back. No persist needed: a part that was never
        // prepared makes recovery drop the others.
        let mut back = Vec::new();
        for part in parts.iter_mut().filter(|part| part.ops.is_empty()) {
            let (tx, rx) = oneshot::channel();
            send(&set, part.shard, Command::Abort { txid, ops: tx })?;
            back.push((part, rx));
        }
        if let Some(e) = p.failure {
            return Err(e);
        }
        for (part, rx) in back {
            part.ops = rx.await.map_err(|_| ShardError::Unavailable(part.shard))?;
        }
    }
    // A waiting prepare never answers a conflict.
    Err(ShardError::Contended)
}

/// Phase 2: applies every prepared part inside the reader gate, then drops the commit markers
/// once every part is durable.
async fn resolve_committed(
    set: &Arc<ShardSet>,
    txid: u64,
    participants: &Arc<[u32]>,
) -> Result<(), ShardError> {
    let gate = &set.gate;
    // Let waiting multi-shard readers take their views first (briefly: they only need an
    // instant). Bounded in time, not in turns: on a core kept busy, each sleep lasts until the
    // busy task yields (up to the preempt timer), and 50 turns held the keys locked for 250 ms.
    let since = Instant::now();
    while gate.readers.load(Ordering::SeqCst) != 0 && since.elapsed() < READER_GRACE {
        glommio::timer::sleep(Duration::from_micros(20)).await;
    }
    gate.started.fetch_add(1, Ordering::SeqCst);
    let mut visible = Vec::with_capacity(participants.len());
    let mut durable = Vec::with_capacity(participants.len());
    let mut sent = Ok(());
    for &shard in participants.iter() {
        let (vtx, vrx) = oneshot::channel();
        let (dtx, drx) = oneshot::channel();
        let cmd = Command::Commit {
            txid,
            visible: vtx,
            durable: dtx,
        };
        if let Err(e) = send(set, shard as usize, cmd) {
            sent = Err(e);
            break;
        }
        visible.push(vrx);
        durable.push(drx);
    }
    let mut result = sent;
    for rx in visible {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(ShardError::Store(e)),
            Err(_) => result = Err(ShardError::Closing),
        }
    }
    gate.finished.fetch_add(1, Ordering::SeqCst);
    // The markers go once every part is durable: until then an intent left on one shard needs
    // the others' markers to be redone.
    let (set2, shards) = (set.clone(), participants.clone());
    glommio::spawn_local(async move {
        for rx in durable {
            if rx.await.is_err() {
                return;
            }
        }
        for &shard in shards.iter() {
            let _ = send(&set2, shard as usize, Command::Forget(txid));
        }
    })
    .detach();
    result
}

/// Resolves the prepared parts a crash left behind (before any writer starts): applies those of
/// transactions whose every part was durably prepared (each participant still holds its intent
/// or a commit marker), drops the rest, then drops every marker.
pub(crate) fn recover(stores: &[Arc<ShardStore>]) -> Result<(usize, usize), StoreError> {
    // Every intent is judged on the state the crash left, before any is resolved.
    let mut found = Vec::new();
    for (shard, store) in stores.iter().enumerate() {
        for intent in store.intents()? {
            let commit = every_part_prepared(stores, &intent)?;
            found.push((shard, intent, commit));
        }
    }
    let (mut applied, mut dropped) = (0, 0);
    for (shard, intent, commit) in found {
        stores[shard].resolve(intent.txid, commit.then_some(&intent.plan))?;
        if commit {
            applied += 1;
        } else {
            dropped += 1;
        }
    }
    for store in stores {
        store.persist(Durability::Durable)?;
    }
    for store in stores {
        store.forget(None)?;
        store.persist(Durability::Durable)?;
    }
    Ok((applied, dropped))
}

/// Whether every participant `intent` names holds its own intent or a commit marker.
fn every_part_prepared(stores: &[Arc<ShardStore>], intent: &Intent) -> Result<bool, StoreError> {
    for &p in &intent.participants {
        let store = stores
            .get(p as usize)
            .ok_or(StoreError::CorruptIntent(intent.txid))?;
        if !(store.has_intent(intent.txid)? || store.applied(intent.txid)?) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tessera_storage::schema::{Catalog, Table};
    use tessera_storage::shard::{Clock, ShardOptions, WriteKind};
    use tessera_storage::value::Value;

    /// A table `T` with an `ID` primary key and an `Int`.
    pub(crate) fn table() -> Arc<Table> {
        let mut c = Catalog::default();
        c.load_schema("s", "type T @table { id: ID @primaryKey n: Int }")
            .unwrap();
        Arc::new(c.tables.remove(0).numbered(1))
    }

    /// A put of the record `{"id": id}` in `t`.
    pub(crate) fn put(t: &Arc<Table>, id: &str) -> WriteOp {
        let key = tessera_storage::shard::record_key(t.id, &Value::String(id.into())).unwrap();
        WriteOp {
            table: t.clone(),
            key,
            kind: WriteKind::Put(Value::Object(vec![("id".into(), Value::String(id.into()))])),
            from: None,
        }
    }

    /// Prepares a put of `id` on `store` as its part of `txid` over `participants`.
    fn prepare_put(store: &ShardStore, t: &Arc<Table>, txid: u64, participants: &[u32], id: &str) {
        let (plan, _) = store
            .plan(&[put(t, id)], &mut Clock::default(), None)
            .unwrap();
        store.prepare(txid, participants, &plan).unwrap();
    }

    fn has(store: &ShardStore, t: &Table, id: &str) -> bool {
        let key = tessera_storage::shard::record_key(t.id, &Value::String(id.into())).unwrap();
        store.get(&key).unwrap().is_some()
    }

    #[test]
    fn recovery_applies_a_transaction_only_if_every_part_was_prepared() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let open = || -> Vec<Arc<ShardStore>> {
            dirs.iter()
                .map(|d| Arc::new(ShardStore::open(d.path(), ShardOptions::default()).unwrap()))
                .collect()
        };
        let t = table();
        {
            let s = open();
            // 1: prepared on shards 0 and 1 (crash before any resolve): committed.
            prepare_put(&s[0], &t, 1, &[0, 1], "a1");
            prepare_put(&s[1], &t, 1, &[0, 1], "b1");
            // 2: shard 0 resolved (a marker), shard 1 still prepared: committed.
            prepare_put(&s[0], &t, 2, &[0, 1], "a2");
            prepare_put(&s[1], &t, 2, &[0, 1], "b2");
            let part = s[0].intents().unwrap().into_iter().find(|i| i.txid == 2);
            s[0].resolve(2, Some(&part.unwrap().plan)).unwrap();
            // 3: shard 2's part was never prepared: aborted.
            prepare_put(&s[0], &t, 3, &[0, 1, 2], "a3");
            prepare_put(&s[1], &t, 3, &[0, 1, 2], "b3");
            for st in &s {
                st.persist(Durability::Durable).unwrap();
            }
        }
        let s = open();
        assert_eq!(recover(&s).unwrap(), (3, 2));
        for (shard, id, present) in [
            (0, "a1", true),
            (1, "b1", true),
            (0, "a2", true),
            (1, "b2", true),
            (0, "a3", false),
            (1, "b3", false),
        ] {
            assert_eq!(has(&s[shard], &t, id), present, "{id}");
        }
        for st in &s {
            assert!(st.intents().unwrap().is_empty());
            assert!(!st.applied(1).unwrap() && !st.applied(2).unwrap());
        }
    }
}
