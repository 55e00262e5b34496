//! Transactions whose writes span shards: two-phase commit over the shards' writer threads, with
//! the decision in one participant's journal, redo of prepared parts on recovery, and a gate that
//! gives multi-shard readers a consistent cut. `docs/adr/0001-cross-shard-transactions.md` says
//! why this shape and what it costs.
//!
//! 1. **Prepare** (in parallel): each participant plans its ops against its current state,
//!    persists the plan as an intent with its group commit, and locks the keys. A key already
//!    locked by another transaction makes the prepare fail at once; the coordinator aborts every
//!    part and prepares them again one at a time in shard order, each waiting for its keys (a
//!    global lock order: no deadlock, no starvation).
//! 2. **Decide**: the coordinator shard (the lowest participant) persists the commit decision.
//!    This is the commit point.
//! 3. **Resolve** (in parallel): each participant applies its plan and drops the intent in one
//!    batch, unlocks, and answers as soon as readers see it. The caller is answered when every
//!    participant has. The decision is dropped once every participant has persisted its resolve.
//!
//! Recovery ([`recover`]): an intent whose coordinator holds the decision is applied, any other is
//! dropped (presumed abort: nobody was answered before the decision was durable).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use tessera_storage::shard::{Durability, ShardStore, StoreError, View, WriteOp, WriteOutcome};

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

/// Asks `shard`'s writer to prepare its part of `txid`.
fn prepare(
    set: &ShardSet,
    shard: usize,
    txid: u64,
    coordinator: usize,
    ops: &[(usize, WriteOp)],
    wait: bool,
) -> Result<oneshot::Receiver<StoreResult<Prepared>>, ShardError> {
    let (reply, rx) = oneshot::channel();
    let ops = ops.iter().map(|(_, op)| op.clone()).collect();
    let coordinator = coordinator as u32;
    send(
        set,
        shard,
        Command::Prepare {
            txid,
            coordinator,
            ops,
            wait,
            reply,
        },
    )?;
    Ok(rx)
}

/// How the prepare of every part went.
#[derive(Default)]
struct Preparation {
    /// Shards whose part is prepared (durable, keys locked).
    prepared: Vec<usize>,
    /// A part met a key locked by another transaction.
    conflict: bool,
    failure: Option<ShardError>,
}

impl Preparation {
    /// Records one participant's answer; a ready part's outcomes go to their places in the
    /// caller's list. Returns whether the part is prepared.
    fn record(
        &mut self,
        shard: usize,
        answer: Result<StoreResult<Prepared>, oneshot::Canceled>,
        ops: &[(usize, WriteOp)],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> bool {
        match answer {
            Ok(Ok(Prepared::Ready(out))) => {
                self.prepared.push(shard);
                for ((at, _), o) in ops.iter().zip(out) {
                    outcomes[*at] = Some(o);
                }
                return true;
            }
            Ok(Ok(Prepared::Conflict)) => self.conflict = true,
            Ok(Err(e)) => self.failure = Some(ShardError::Store(e)),
            Err(_) => self.failure = Some(ShardError::Unavailable(shard)),
        }
        false
    }
}

/// Commits `parts` (each shard's ops with their positions in the caller's list) atomically and
/// returns the outcomes in the caller's order. Runs detached from the caller's future by
/// [`crate::Router::transact`], so a dropped request never leaves keys locked.
///
/// The first attempt prepares every part in parallel, and a part whose keys another transaction
/// holds fails at once. If one did, the parts are dropped and the second attempt prepares them one
/// at a time in shard order, each waiting for its keys: a transaction then only waits for keys on
/// shards above those it holds, so no two ever wait for each other, and it cannot be starved by
/// transactions that keep taking turns at the keys (retrying with back-offs could, and under
/// contention answered "try again").
pub(crate) async fn commit(
    set: Arc<ShardSet>,
    mut parts: Vec<(usize, Vec<(usize, WriteOp)>)>,
    total: usize,
) -> Result<Vec<WriteOutcome>, ShardError> {
    parts.sort_unstable_by_key(|(shard, _)| *shard);
    let coordinator = parts.first().map_or(0, |(shard, _)| *shard);
    for ordered in [false, true] {
        let txid = set.gate.txid.fetch_add(1, Ordering::Relaxed) + 1;
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; total];
        let mut p = Preparation::default();
        // Phase 1: prepare everywhere.
        if ordered {
            for (shard, ops) in &parts {
                let answer = prepare(&set, *shard, txid, coordinator, ops, true)?.await;
                if !p.record(*shard, answer, ops, &mut outcomes) {
                    break;
                }
            }
        } else {
            let mut waits = Vec::with_capacity(parts.len());
            for (shard, ops) in &parts {
                waits.push(prepare(&set, *shard, txid, coordinator, ops, false)?);
            }
            for (rx, (shard, ops)) in waits.into_iter().zip(&parts) {
                p.record(*shard, rx.await, ops, &mut outcomes);
            }
        }
        // Phase 2: the decision, unless a part could not be prepared.
        if !p.conflict && p.failure.is_none() {
            let (tx, rx) = oneshot::channel();
            send(&set, coordinator, Command::Decide { txid, reply: tx })?;
            match rx.await {
                Ok(Ok(())) => {
                    failpoint("decided");
                    resolve_committed(&set, txid, coordinator, &p.prepared).await?;
                    return Ok(outcomes.into_iter().flatten().collect());
                }
                Ok(Err(e)) => p.failure = Some(ShardError::Store(e)),
                Err(_) => p.failure = Some(ShardError::Unavailable(coordinator)),
            }
        }
        // Abort: drop every prepared part (no persist needed: presumed abort).
        for shard in &p.prepared {
            let (visible, _) = oneshot::channel();
            let (durable, _) = oneshot::channel();
            send(
                &set,
                *shard,
                Command::Resolve {
                    txid,
                    commit: false,
                    visible,
                    durable,
                },
            )?;
        }
        if let Some(e) = p.failure {
            return Err(e);
        }
    }
    // A waiting prepare never answers a conflict.
    Err(ShardError::Contended)
}

/// Phase 3: applies every prepared part inside the reader gate, then forgets the decision once
/// every part is durable.
async fn resolve_committed(
    set: &Arc<ShardSet>,
    txid: u64,
    coordinator: usize,
    prepared: &[usize],
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
    let mut visible = Vec::with_capacity(prepared.len());
    let mut durable = Vec::with_capacity(prepared.len());
    let mut sent = Ok(());
    for shard in prepared {
        let (vtx, vrx) = oneshot::channel();
        let (dtx, drx) = oneshot::channel();
        let cmd = Command::Resolve {
            txid,
            commit: true,
            visible: vtx,
            durable: dtx,
        };
        if let Err(e) = send(set, *shard, cmd) {
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
    // The decision goes once every part is durable; until then recovery would redo them.
    let set2 = set.clone();
    glommio::spawn_local(async move {
        for rx in durable {
            if rx.await.is_err() {
                return;
            }
        }
        let _ = send(&set2, coordinator, Command::Forget(txid));
    })
    .detach();
    result
}

/// Resolves the prepared parts a crash left behind (before any writer starts): applies those whose
/// coordinator holds the decision, drops the rest, then drops every decision.
pub(crate) fn recover(stores: &[Arc<ShardStore>]) -> Result<(usize, usize), StoreError> {
    let (mut applied, mut dropped) = (0, 0);
    for store in stores {
        for intent in store.intents()? {
            let coordinator = stores
                .get(intent.coordinator as usize)
                .ok_or(StoreError::CorruptIntent(intent.txid))?;
            let commit = coordinator.decided(intent.txid)?;
            store.resolve(intent.txid, commit.then_some(&intent.plan))?;
            if commit {
                applied += 1;
            } else {
                dropped += 1;
            }
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
