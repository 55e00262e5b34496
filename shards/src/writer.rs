//! The per-shard writer thread and its group commit.
//!
//! Every write to a shard is queued to that shard's writer thread. The thread takes everything
//! queued (up to [`MAX_GROUP`]), applies it as one fjall batch, persists once for the whole group,
//! and only then answers each writer: one fsync is shared by every write in flight, and no
//! executor thread ever blocks in fjall or in fsync.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

use futures::channel::mpsc::UnboundedSender;
use futures::channel::oneshot;
use tessera_storage::shard::{
    Change, Clock, Durability, ShardStore, StoreError, WriteKind, WriteOp, WriteOutcome,
};

/// Most writes committed in one group.
pub const MAX_GROUP: usize = 2048;

pub(crate) type WriteReply = oneshot::Sender<Result<WriteOutcome, Arc<StoreError>>>;

pub(crate) enum Command {
    Write(WriteOp, WriteReply),
    /// Persist everything queued before this and answer (used at shutdown).
    Flush(mpsc::Sender<Result<(), Arc<StoreError>>>),
}

/// The queue of one shard's writer thread.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    pub(crate) tx: mpsc::Sender<Command>,
}

/// Starts the writer thread of `shard`.
/// Where a writer sends the changes it commits, and whether anyone listens.
struct Feed {
    tx: UnboundedSender<Vec<Change>>,
    watchers: Arc<AtomicUsize>,
}

pub(crate) fn spawn(
    shard: usize,
    store: Arc<ShardStore>,
    durability: Durability,
    feed: UnboundedSender<Vec<Change>>,
    watchers: Arc<AtomicUsize>,
) -> std::io::Result<WriterHandle> {
    let (tx, rx) = mpsc::channel();
    let feed = Feed { tx: feed, watchers };
    // Detached: it ends with the process; `ShardSet::close` is what makes its work durable.
    std::thread::Builder::new()
        .name(format!("tessera-writer-{shard}"))
        .spawn(move || run(shard, &store, &rx, durability, &feed))?;
    Ok(WriterHandle { tx })
}

fn run(
    shard: usize,
    store: &ShardStore,
    rx: &mpsc::Receiver<Command>,
    durability: Durability,
    feed: &Feed,
) {
    let mut clock = Clock::default();
    // Writes and groups committed, reported at shutdown: their ratio is the group-commit factor.
    let (mut writes, mut groups) = (0u64, 0u64);
    let mut ops = Vec::with_capacity(64);
    let mut replies = Vec::with_capacity(64);
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Write(op, reply) => {
                    ops.push(op);
                    replies.push(reply);
                }
                Command::Flush(done) => flushes.push(done),
            }
            if ops.len() < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        let mut changes = Vec::new();
        let watched = feed.watchers.load(Ordering::Relaxed) > 0;
        let result = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            writes += ops.len() as u64;
            groups += 1;
            // A group of messages only (non-retained publishes) stores nothing: no fsync.
            let stores = ops
                .iter()
                .any(|op| !matches!(op.kind, WriteKind::Message { .. }));
            store
                .apply(
                    std::mem::take(&mut ops),
                    &mut clock,
                    watched.then_some(&mut changes),
                )
                .and_then(|outcomes| {
                    if stores {
                        store.persist(durability)?;
                    }
                    Ok(outcomes)
                })
        };
        match result {
            Ok(outcomes) => {
                if !changes.is_empty() {
                    let _ = feed.tx.unbounded_send(changes);
                }
                for (reply, outcome) in replies.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
        ops.clear();
        if !flushes.is_empty() && groups > 0 {
            eprintln!(
                "shard {shard}: {writes} writes committed in {groups} groups ({:.1} per fsync)",
                writes as f64 / groups as f64
            );
        }
        for done in flushes.drain(..) {
            let _ = done.send(store.persist(Durability::Durable).map_err(Arc::new));
        }
    }
}
