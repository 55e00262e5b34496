//! The per-shard writer thread and its group commit.
//!
//! Every write to a shard is queued to that shard's writer thread. The thread takes everything
//! queued (up to [`MAX_GROUP`] commands), applies it in order, persists once for the whole group,
//! and only then answers each writer: one fsync is shared by every write in flight, and no
//! executor thread ever blocks in fjall or in fsync.
//!
//! The thread is also each shard's participant in cross-shard transactions (see [`crate::txn`]):
//! it prepares a transaction's part (an intent, persisted with the group) and locks its keys, then
//! applies or drops it. Plain writes to a locked key wait, in arrival order, until the
//! transaction that holds it is resolved. A prepare that finds a key locked either fails at once
//! with a conflict (handing its ops back) or, when it is asked to wait (a transaction preparing
//! its parts one by one in shard order, see [`crate::txn`]), waits like a plain write.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use futures::channel::mpsc::UnboundedSender;
use futures::channel::oneshot;
use tessera_storage::shard::{
    Change, Clock, Durability, Mutations, ShardStore, StoreError, WriteKind, WriteOp, WriteOutcome,
};

use crate::{Committed, failpoint};

/// Most commands committed in one group.
pub const MAX_GROUP: usize = 2048;
/// How long a writer with a resolved transaction part not yet persisted waits for more work
/// before it persists on its own.
const IDLE_PERSIST: std::time::Duration = std::time::Duration::from_millis(1);

pub(crate) type StoreResult<T> = Result<T, Arc<StoreError>>;
pub(crate) type WriteReply = oneshot::Sender<StoreResult<WriteOutcome>>;
pub(crate) type BatchReply = oneshot::Sender<StoreResult<Vec<WriteOutcome>>>;

/// What a participant answers to a prepare.
pub(crate) enum Prepared {
    /// The part is durable and its keys are locked: one outcome per op.
    Ready(Vec<WriteOutcome>),
    /// A key is locked by another transaction: nothing was written. The ops come back, to be
    /// prepared again.
    Conflict(Vec<WriteOp>),
}

pub(crate) enum Command {
    Write(WriteOp, WriteReply),
    /// Writes committed together, in order (a single-shard transaction).
    Batch(Vec<WriteOp>, BatchReply),
    /// Phase one of a cross-shard transaction: plan the ops against the shard as it is, persist
    /// the plan as an intent naming every participant shard, lock its keys. A key locked by
    /// another transaction answers [`Prepared::Conflict`], or with `wait` defers the prepare
    /// until that transaction is resolved.
    Prepare {
        txid: u64,
        participants: Arc<[u32]>,
        ops: Vec<WriteOp>,
        wait: bool,
        reply: oneshot::Sender<StoreResult<Prepared>>,
    },
    /// Applies the prepared part of `txid` (leaving a commit marker) and unlocks its keys;
    /// answers `visible` as soon as readers see it and `durable` once a later group's persist
    /// has covered it. It needs no fsync of its own: until it is persisted, the intents redo it
    /// after a crash.
    Commit {
        txid: u64,
        visible: oneshot::Sender<StoreResult<()>>,
        durable: oneshot::Sender<()>,
    },
    /// Drops the prepared part of `txid` (if this shard holds one), unlocks its keys and gives
    /// back its ops, to be prepared again.
    Abort {
        txid: u64,
        ops: oneshot::Sender<Vec<WriteOp>>,
    },
    /// Drops the commit marker of a transaction every participant has durably resolved.
    Forget(u64),
    /// Persist everything queued before this and answer, then write the memtables out as disk
    /// tables (so that the next start has no sealed journal to replay) and answer again (used at
    /// shutdown, which waits for the first answer and, for a bounded time, the second).
    Flush(mpsc::Sender<StoreResult<()>>),
}

/// The queue of one shard's writer thread.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    pub(crate) tx: mpsc::Sender<Command>,
}

/// Where a writer sends the changes it commits, whether anyone listens, and how far it has
/// applied.
pub(crate) struct Feed {
    pub(crate) tx: UnboundedSender<Committed>,
    pub(crate) watchers: Arc<AtomicUsize>,
    /// The number of the last group applied to the store, set before the group is persisted
    /// and sent.
    pub(crate) applied: Arc<AtomicU64>,
}

/// Starts the writer thread of `shard`.
pub(crate) fn spawn(
    shard: usize,
    store: Arc<ShardStore>,
    durability: Durability,
    feed: Feed,
) -> std::io::Result<WriterHandle> {
    let (tx, rx) = mpsc::channel();
    // Detached: it ends with the process; `ShardSet::close` is what makes its work durable.
    std::thread::Builder::new()
        .name(format!("tessera-writer-{shard}"))
        .spawn(move || {
            // Versions keep increasing across restarts (the audit log is keyed by them).
            let last = store.last_version().unwrap_or_else(|e| {
                tracing::error!("shard {shard}: reading the audit log's last version: {e}");
                0
            });
            let mut w = Writer {
                store: &store,
                clock: Clock::after(last),
                locks: HashMap::new(),
                prepared: HashMap::new(),
                deferred: VecDeque::new(),
                unpersisted: Vec::new(),
            };
            w.run(shard, &rx, durability, &feed);
        })?;
    Ok(WriterHandle { tx })
}

/// A prepared transaction part held in memory until it is resolved: its ops too, so that they
/// are dropped here, off the coordinating core, or given back if the transaction aborts.
struct PreparedPart {
    ops: Vec<WriteOp>,
    plan: Mutations,
    changes: Vec<Change>,
}

/// A plain write waiting in a group for its answer.
enum Waiter {
    One(WriteReply),
    Batch(BatchReply, usize),
}

/// A waiting plain write with its result, sent once the group is persisted.
enum WaiterResult {
    One(WriteReply, StoreResult<WriteOutcome>),
    Batch(BatchReply, StoreResult<Vec<WriteOutcome>>),
}

impl WaiterResult {
    fn failed(reply: Waiter, e: &Arc<StoreError>) -> WaiterResult {
        match reply {
            Waiter::One(tx) => WaiterResult::One(tx, Err(e.clone())),
            Waiter::Batch(tx, _) => WaiterResult::Batch(tx, Err(e.clone())),
        }
    }
}

/// A prepare's answer, sent once the group is persisted: the outcome of each op.
type PrepareAnswer = (oneshot::Sender<StoreResult<Prepared>>, Vec<WriteOutcome>);

/// One group in progress: plain writes collected since the last transaction command, and the
/// answers that wait for the persist.
#[derive(Default)]
struct Group {
    ops: Vec<WriteOp>,
    replies: Vec<Waiter>,
    answers: Vec<WaiterResult>,
    prepares: Vec<PrepareAnswer>,
    changes: Vec<Change>,
    /// Whether anything was stored (a group of messages only needs no fsync).
    stores: bool,
    writes: u64,
}

struct Writer<'a> {
    store: &'a ShardStore,
    clock: Clock,
    /// Keys of prepared parts, and the transaction holding each.
    locks: HashMap<Vec<u8>, u64>,
    prepared: HashMap<u64, PreparedPart>,
    /// Plain writes and waiting prepares held back by a lock, in arrival order.
    deferred: VecDeque<Command>,
    /// Resolves applied but not yet persisted: answered after the next persist.
    unpersisted: Vec<oneshot::Sender<()>>,
}

impl Writer<'_> {
    fn run(
        &mut self,
        shard: usize,
        rx: &mpsc::Receiver<Command>,
        durability: Durability,
        feed: &Feed,
    ) {
        // Writes and groups committed, reported at shutdown: their ratio is the group-commit factor.
        let (mut writes, mut groups) = (0u64, 0u64);
        // Every group's number, stored groups or not (see `Feed::applied`).
        let mut group = 0u64;
        let mut flushes = Vec::new();
        let mut queue: VecDeque<Command> = VecDeque::new();
        loop {
            // A transaction's part resolved since the last persist is durable through its
            // intents, but is persisted itself (for what waits on that: its markers' removal,
            // replication's reading of the audit log) as soon as the writer has nothing else.
            let first = if self.unpersisted.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(IDLE_PERSIST)
            };
            let first = match first {
                Ok(cmd) => cmd,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.store.persist(durability).is_ok() {
                        for tx in self.unpersisted.drain(..) {
                            let _ = tx.send(());
                        }
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            queue.push_back(first);
            while queue.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => queue.push_back(cmd),
                    Err(_) => break,
                }
            }
            let watched = feed.watchers.load(Ordering::Relaxed) > 0;
            let mut g = Group::default();
            while let Some(cmd) = queue.pop_front() {
                match cmd {
                    Command::Flush(done) => flushes.push(done),
                    cmd => self.handle(cmd, &mut g, &mut queue, watched),
                }
            }
            self.flush_ops(&mut g, watched);
            group += 1;
            feed.applied.store(group, Ordering::Release);
            if g.writes > 0 {
                writes += g.writes;
                groups += 1;
            }
            let persisted = if g.stores {
                self.store.persist(durability).map_err(Arc::new)
            } else {
                Ok(())
            };
            if !g.changes.is_empty() && watched {
                let changes = std::mem::take(&mut g.changes);
                let _ = feed.tx.unbounded_send(Committed { group, changes });
            }
            for answer in g.answers {
                match answer {
                    WaiterResult::One(tx, result) => {
                        let _ = tx.send(persisted.clone().and(result));
                    }
                    WaiterResult::Batch(tx, result) => {
                        let _ = tx.send(persisted.clone().and(result));
                    }
                }
            }
            for (tx, outcomes) in g.prepares {
                failpoint("prepared");
                let _ = tx.send(persisted.clone().map(|()| Prepared::Ready(outcomes)));
            }
            if g.stores && persisted.is_ok() {
                for tx in self.unpersisted.drain(..) {
                    let _ = tx.send(());
                }
            }
            if !flushes.is_empty() && groups > 0 {
                tracing::info!(
                    "shard {shard}: {writes} writes committed in {groups} groups ({:.1} per fsync)",
                    writes as f64 / groups as f64
                );
            }
            for done in flushes.drain(..) {
                let persisted = self.store.persist(Durability::Durable).map_err(Arc::new);
                let ok = persisted.is_ok();
                if ok {
                    for tx in self.unpersisted.drain(..) {
                        let _ = tx.send(());
                    }
                }
                let _ = done.send(persisted);
                if ok {
                    let _ = done.send(self.store.flush_memtables().map_err(Arc::new));
                }
            }
        }
    }

    fn locked(&self, key: &[u8]) -> bool {
        !self.locks.is_empty() && self.locks.contains_key(key)
    }

    /// Whether `cmd` must wait for a lock: a plain write, a batch or a prepare asked to wait that
    /// touches a key a prepared transaction holds.
    fn must_wait(&self, cmd: &Command) -> bool {
        if self.locks.is_empty() {
            return false;
        }
        match cmd {
            Command::Write(op, _) => self.locked(&op.key),
            Command::Batch(ops, _)
            | Command::Prepare {
                ops, wait: true, ..
            } => ops.iter().any(|op| self.locked(&op.key)),
            _ => false,
        }
    }

    fn handle(
        &mut self,
        cmd: Command,
        g: &mut Group,
        queue: &mut VecDeque<Command>,
        watched: bool,
    ) {
        if self.must_wait(&cmd) {
            self.deferred.push_back(cmd);
            return;
        }
        match cmd {
            Command::Write(op, reply) => {
                g.ops.push(op);
                g.replies.push(Waiter::One(reply));
            }
            Command::Batch(ops, reply) => {
                g.replies.push(Waiter::Batch(reply, ops.len()));
                g.ops.extend(ops);
            }
            Command::Prepare {
                txid,
                participants,
                ops,
                reply,
                ..
            } => {
                self.flush_ops(g, watched);
                // Only a prepare that may not wait gets here with a locked key.
                if ops.iter().any(|op| self.locked(&op.key)) {
                    let _ = reply.send(Ok(Prepared::Conflict(ops)));
                    return;
                }
                g.writes += ops.len() as u64;
                let mut changes = Vec::new();
                let planned = self
                    .store
                    .plan(&ops, &mut self.clock, Some(&mut changes))
                    .and_then(|(mut plan, outcomes)| {
                        // So that other nodes apply the transaction's parts together.
                        plan.mark_transaction(tessera_storage::audit::Txn {
                            id: txid,
                            parts: participants.len() as u32,
                        });
                        self.store.prepare(txid, &participants, &plan)?;
                        Ok((plan, outcomes))
                    });
                match planned {
                    Ok((plan, outcomes)) => {
                        for (k, _) in plan.records() {
                            self.locks.insert(k.to_vec(), txid);
                        }
                        self.prepared
                            .insert(txid, PreparedPart { ops, plan, changes });
                        g.stores = true;
                        g.prepares.push((reply, outcomes));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(Arc::new(e)));
                    }
                }
            }
            Command::Commit {
                txid,
                visible,
                durable,
            } => match self.end(txid, true, g, queue, watched) {
                Some((_, Ok(()))) => {
                    failpoint("resolved");
                    let _ = visible.send(Ok(()));
                    self.unpersisted.push(durable);
                }
                Some((_, Err(e))) => {
                    let _ = visible.send(Err(Arc::new(e)));
                }
                None => {
                    let _ = visible.send(Ok(()));
                    let _ = durable.send(());
                }
            },
            Command::Abort { txid, ops } => {
                // Dropping an intent needs no persist: recovery drops it anyway, since this
                // part never committed.
                if let Some((part, _)) = self.end(txid, false, g, queue, watched) {
                    let _ = ops.send(part.ops);
                }
            }
            Command::Forget(txid) => {
                if let Err(e) = self.store.forget(Some(&[txid])) {
                    tracing::warn!("forgetting transaction {txid}: {e}");
                }
            }
            Command::Flush(_) => unreachable!("handled by the group loop"),
        }
    }

    /// Ends the prepared part of `txid`, if this shard holds one: applies it (`commit`) or drops
    /// it, unlocks its keys and lets the commands that waited for them go next, before anything
    /// newer.
    fn end(
        &mut self,
        txid: u64,
        commit: bool,
        g: &mut Group,
        queue: &mut VecDeque<Command>,
        watched: bool,
    ) -> Option<(PreparedPart, Result<(), StoreError>)> {
        self.flush_ops(g, watched);
        let mut part = self.prepared.remove(&txid)?;
        let result = self.store.resolve(txid, commit.then_some(&part.plan));
        for (k, _) in part.plan.records() {
            self.locks.remove(k);
        }
        if commit && watched {
            g.changes.append(&mut part.changes);
        }
        for cmd in std::mem::take(&mut self.deferred).into_iter().rev() {
            queue.push_front(cmd);
        }
        Some((part, result))
    }

    /// Applies the plain writes collected so far as one batch; their answers wait for the persist.
    fn flush_ops(&mut self, g: &mut Group, watched: bool) {
        if g.ops.is_empty() {
            return;
        }
        g.writes += g.ops.len() as u64;
        if g.ops
            .iter()
            .any(|op| !matches!(op.kind, WriteKind::Message { .. }))
        {
            g.stores = true;
        }
        let ops = std::mem::take(&mut g.ops);
        let result = self
            .store
            .apply(ops, &mut self.clock, watched.then_some(&mut g.changes))
            .map_err(Arc::new);
        let mut outcomes = match result {
            Ok(o) => o.into_iter(),
            Err(e) => {
                for r in g.replies.drain(..) {
                    g.answers.push(WaiterResult::failed(r, &e));
                }
                return;
            }
        };
        for r in g.replies.drain(..) {
            g.answers.push(match r {
                Waiter::One(tx) => match outcomes.next() {
                    Some(o) => WaiterResult::One(tx, Ok(o)),
                    None => WaiterResult::One(
                        tx,
                        Err(Arc::new(StoreError::Corrupt("lost outcome".into()))),
                    ),
                },
                Waiter::Batch(tx, n) => {
                    WaiterResult::Batch(tx, Ok(outcomes.by_ref().take(n).collect()))
                }
            });
        }
    }
}
