//! Pinned executors, the channel mesh between them, and the per-core router.
//!
//! Shard `s` is owned by core `s % cores`, where a core's number is its id in the mesh. The owner
//! runs reads of its shards inline; other cores send it a job over the mesh and await the reply.
//! Writes go straight to the shard's writer thread from whichever core has the request: the writer
//! serialises them, and a detour through the owner core would add a hop without adding order.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::txn::Part;
use futures::SinkExt;
use futures::channel::{mpsc, oneshot};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares, TaskQueueHandle};
use tessera_storage::query::{Row, ShardQuery, ShardWalk};
use tessera_storage::shard::{ShardStore, StoreError, View, WriteOp, WriteOutcome};

use crate::watchdog::Pulse;
use crate::writer::Command;
use crate::{ShardError, ShardSet};

/// Work sent to another core: runs there with the shard set.
type Job = Box<dyn FnOnce(&ShardSet) + Send>;

/// Capacity of each core-to-core channel.
const MESH_CHANNEL: usize = 1024;

/// How the executors run.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub threads: usize,
    /// glommio's `preempt_timer`: how long a task runs before the executor polls its other queues
    /// (5-10 ms keeps latency low without preempting constantly; 1 ms lost wake-ups here).
    pub preempt_timer: Duration,
}

/// What each core's initial task receives.
pub struct CoreContext {
    /// This core's number (its mesh id), `0..cores`.
    pub core: usize,
    pub cores: usize,
    pub router: Router,
}

/// Raises `RLIMIT_MEMLOCK` as far as the process may and sizes glommio's registered I/O memory
/// to fit it. Returns `(memlock bytes, io_memory bytes per executor)`.
fn size_io_memory(threads: usize) -> (u64, usize) {
    use rlimit::Resource;
    let (_, hard) = Resource::MEMLOCK.get().unwrap_or((0, 0));
    let wanted = rlimit::INFINITY;
    let limit = if Resource::MEMLOCK.set(wanted, wanted).is_ok() {
        wanted
    } else {
        let _ = Resource::MEMLOCK.set(hard, hard);
        Resource::MEMLOCK.get().map_or(0, |(soft, _)| soft)
    };
    const DEFAULT: u64 = 10 << 20;
    // Leave a quarter of the limit for everything else that locks memory.
    let per = if limit == rlimit::INFINITY {
        DEFAULT
    } else {
        (limit / 4 * 3 / threads.max(1) as u64).clamp(64 << 10, DEFAULT)
    };
    (limit, per as usize)
}

/// Starts one pinned executor per thread; each joins the mesh, serves jobs from the other cores,
/// and runs `init`. Returns the join handles (they end when `init`'s futures end).
pub fn start_executors<F, Fut>(
    settings: &ExecutorSettings,
    shards: Arc<ShardSet>,
    init: F,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>>
where
    F: Fn(CoreContext) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let threads = settings.threads.max(1);
    let cpus: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let (memlock, io_memory) = size_io_memory(threads);
    let shown = |b: u64| {
        if b == rlimit::INFINITY {
            "unlimited".to_owned()
        } else {
            format!("{} KiB", b >> 10)
        }
    };
    tracing::info!(
        "executors: {threads} pinned to cpus {cpus:?}; memlock {}, io_memory {} KiB each",
        shown(memlock),
        io_memory >> 10
    );
    let mesh: MeshBuilder<Job, Full> = MeshBuilder::full(threads, MESH_CHANNEL);
    let mut handles = Vec::with_capacity(threads);
    let pulses: Vec<Arc<Pulse>> = (0..threads).map(|_| Arc::default()).collect();
    crate::watchdog::watch(pulses.clone())?;
    for (i, pulse) in pulses.into_iter().enumerate() {
        let placement = match cpus.get(i % cpus.len().max(1)) {
            Some(&cpu) => Placement::Fixed(cpu),
            None => Placement::Unbound,
        };
        let (mesh, shards, init) = (mesh.clone(), shards.clone(), init.clone());
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("tessera-core-{i}"))
            .preempt_timer(settings.preempt_timer)
            .io_memory(io_memory);
        let h = builder
            .spawn(move || async move {
                let _watched = pulse.enter();
                glommio::spawn_local(heartbeat(pulse)).detach();
                let (core, senders) = if threads > 1 {
                    let Ok((senders, mut receivers)) = mesh.join().await else {
                        tracing::error!("core {i}: could not join the mesh");
                        return;
                    };
                    for (_, rx) in receivers.streams() {
                        let shards = shards.clone();
                        glommio::spawn_local(async move {
                            while let Some(job) = rx.recv().await {
                                job(&shards);
                            }
                        })
                        .detach();
                    }
                    (senders.peer_id(), Some(Rc::new(senders)))
                } else {
                    (0, None)
                };
                let router = Router {
                    core,
                    cores: threads,
                    shards,
                    mesh: senders,
                };
                LOCAL.with(|l| *l.borrow_mut() = Some(router.clone()));
                init(CoreContext {
                    core,
                    cores: threads,
                    router,
                })
                .await;
            })
            .map_err(|e| std::io::Error::other(format!("executor {i}: {e}")))?;
        handles.push(std::thread::spawn(move || {
            let _ = h.join();
        }));
    }
    Ok(handles)
}

/// How often an idle executor wakes up anyway (see [`heartbeat`]).
const HEARTBEAT: Duration = Duration::from_millis(10);

/// Wakes the executor every [`HEARTBEAT`] for as long as it runs. glommio wakes a sleeping
/// executor for a message from another thread (the mesh, shared channels) through an eventfd, and
/// on this machine such a wake-up is sometimes lost under CPU contention: the executor then
/// sleeps in `io_uring_enter` until something else wakes it, and at start-up nothing else does
/// (the mesh join hung for good, about once in twenty starts of eight servers at once on two
/// busy cores). Each wake-up also polls the cross-thread channels, so a lost one now costs at
/// most this long. A lost timer wake-up stops the heartbeat itself; the watchdog
/// ([`crate::watchdog`]) sees that in its count.
async fn heartbeat(pulse: Arc<Pulse>) {
    loop {
        glommio::timer::sleep(HEARTBEAT).await;
        pulse.beat();
    }
}

/// Candidates a query examines between two chances for other work on its core.
pub const WALK_BUDGET: usize = 512;

/// How often a running query lets the core poll its sockets and run requests.
const WALK_SLICE: Duration = Duration::from_micros(500);

thread_local! {
    /// This core's task queue for shard walks (see [`walk_queue`]).
    static WALK_QUEUE: std::cell::Cell<Option<TaskQueueHandle>> = const { std::cell::Cell::new(None) };
    /// This executor's router (see [`Router::with_local`]).
    static LOCAL: std::cell::RefCell<Option<Router>> = const { std::cell::RefCell::new(None) };
}

/// The task queue shard walks run in: fewer shares than request handling, and a latency
/// requirement of [`WALK_SLICE`], which makes the executor preempt a long walk every millisecond
/// (and poll I/O) while one is running, instead of every `preempt_timer`. Created on first use.
fn walk_queue() -> TaskQueueHandle {
    WALK_QUEUE.with(|q| match q.get() {
        Some(h) => h,
        None => {
            let h = glommio::executor().create_task_queue(
                Shares::Static(100),
                Latency::Matters(WALK_SLICE),
                "shard-walks",
            );
            q.set(Some(h));
            h
        }
    })
}

/// Runs one shard's part of a query, sending batches of rows until it is over or nobody listens.
async fn walk(mut walk: ShardWalk, mut tx: mpsc::Sender<Result<Vec<Row>, StoreError>>) {
    loop {
        glommio::yield_if_needed().await;
        let (rows, done) = match walk.next_batch(WALK_BUDGET) {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if !rows.is_empty() && tx.send(Ok(rows)).await.is_err() {
            return;
        }
        if done {
            return;
        }
    }
}

/// Runs by-key work on the core that owns the shard. One per core; cheap to clone.
#[derive(Clone)]
pub struct Router {
    core: usize,
    cores: usize,
    shards: Arc<ShardSet>,
    mesh: Option<Rc<Senders<Job>>>,
}

impl Router {
    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.count()
    }

    /// The shard of a stored key.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        crate::shard_of(key, self.shards.count())
    }

    /// This core's number.
    pub fn core(&self) -> usize {
        self.core
    }

    /// The number of cores.
    pub fn cores(&self) -> usize {
        self.cores
    }

    /// The shard set (change feeds and the subscription count).
    pub fn shard_set(&self) -> &Arc<ShardSet> {
        &self.shards
    }

    /// Runs `f` with the router of the executor this runs on; `None` on any other thread.
    pub fn with_local<T>(f: impl FnOnce(&Router) -> T) -> Option<T> {
        LOCAL.with(|l| l.borrow().as_ref().map(f))
    }

    /// Runs `f` on core `core` (inline when it is this one) and returns its result.
    pub async fn on_core<R, F>(&self, core: usize, f: F) -> Result<R, ShardError>
    where
        R: Send + 'static,
        F: FnOnce(&ShardSet) -> R + Send + 'static,
    {
        if self.mesh.is_none() || core == self.core {
            return Ok(f(&self.shards));
        }
        let (tx, rx) = oneshot::channel();
        self.post(core, move |set| {
            let _ = tx.send(f(set));
        })
        .await?;
        rx.await.map_err(|_| ShardError::Unavailable(core))
    }

    /// Runs `f` on core `core` (inline when it is this one) without waiting for it to run
    /// there: returns once it is queued. What one core posts to another runs in posting order.
    pub async fn post<F>(&self, core: usize, f: F) -> Result<(), ShardError>
    where
        F: FnOnce(&ShardSet) + Send + 'static,
    {
        match &self.mesh {
            Some(mesh) if core != self.core => mesh
                .send_to(core, Box::new(f))
                .await
                .map_err(|_| ShardError::Unavailable(core)),
            _ => {
                f(&self.shards);
                Ok(())
            }
        }
    }

    /// Whether this core owns `shard`.
    pub fn owns(&self, shard: usize) -> bool {
        self.owner(shard) == self.core
    }

    /// The core that owns `shard`.
    pub fn owner(&self, shard: usize) -> usize {
        shard % self.cores
    }

    /// Runs `f` on `shard`'s store on its owner core: inline when that is this core, otherwise
    /// over the mesh.
    pub async fn on_shard<R, F>(&self, shard: usize, f: F) -> Result<R, ShardError>
    where
        R: Send + 'static,
        F: FnOnce(&ShardStore) -> R + Send + 'static,
    {
        match self.here(shard) {
            Some(store) => Ok(f(store?)),
            None => {
                let mesh = self.mesh.as_ref().ok_or(ShardError::Unavailable(shard))?;
                let (tx, rx) = oneshot::channel();
                let job: Job = Box::new(move |set: &ShardSet| {
                    if let Some(store) = set.store(shard) {
                        let _ = tx.send(f(store));
                    }
                });
                mesh.send_to(self.owner(shard), job)
                    .await
                    .map_err(|_| ShardError::Unavailable(shard))?;
                rx.await.map_err(|_| ShardError::Unavailable(shard))
            }
        }
    }

    /// `shard`'s store when this core owns it (every shard, with one core); `None` when another
    /// core does.
    fn here(&self, shard: usize) -> Option<Result<&ShardStore, ShardError>> {
        (self.mesh.is_none() || self.owner(shard) == self.core).then(|| {
            self.shards
                .store(shard)
                .map(|s| &**s)
                .ok_or(ShardError::Unavailable(shard))
        })
    }

    /// The stored record under `key`, read in place on this core whichever core owns its shard
    /// (docs/adr/0002): a shard's store is safe to read from any thread, and sending a
    /// single-key read to the owner core only added a round trip over the mesh.
    pub fn get(&self, key: &[u8]) -> Result<Option<tessera_storage::Slice>, ShardError> {
        let shard = self.shard_of(key);
        let store = self
            .shards
            .store(shard)
            .ok_or(ShardError::Unavailable(shard))?;
        store.get(key).map_err(|e| ShardError::Store(Arc::new(e)))
    }

    /// Runs `f` on every shard (in parallel across cores); results in shard order.
    pub async fn on_all_shards<R, F>(&self, f: F) -> Result<Vec<R>, ShardError>
    where
        R: Send + 'static,
        F: Fn(&ShardStore) -> R + Send + Sync + Clone + 'static,
    {
        let runs = (0..self.shards.count()).map(|s| self.on_shard(s, f.clone()));
        futures::future::join_all(runs).await.into_iter().collect()
    }

    /// Read views of every shard (index = shard) that form a consistent cut: no cross-shard
    /// transaction is visible in some of them and not in others. For reads that span shards.
    pub async fn views(&self) -> Vec<View> {
        crate::txn::views(&self.shards).await
    }

    /// Starts `query` on `shard`'s owner core, reading `view` (one of [`Self::views`]), and
    /// returns its rows as they are found, in batches.
    /// The walk yields to other work on that core between batches of [`WALK_BUDGET`] candidates
    /// and stops early when the receiver is dropped; the channel's small bound is the
    /// back-pressure that keeps a slow client from making a shard buffer a whole table.
    pub fn query(
        &self,
        shard: usize,
        query: Arc<ShardQuery>,
        view: View,
    ) -> mpsc::Receiver<Result<Vec<Row>, StoreError>> {
        let (mut tx, rx) = mpsc::channel(1);
        let job = move |_: &ShardSet| {
            // The first batch runs right here: most queries (limited, or selective) end in it
            // and need no task. A longer walk continues in the walk queue.
            let mut first = query.start(view);
            match first.next_batch(WALK_BUDGET) {
                Ok((rows, done)) => {
                    let gone = !rows.is_empty() && tx.try_send(Ok(rows)).is_err();
                    if gone || done {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.try_send(Err(e));
                    return;
                }
            }
            match glommio::spawn_local_into(walk(first, tx), walk_queue()) {
                Ok(task) => {
                    task.detach();
                }
                Err(e) => tracing::error!("shard {shard}: cannot continue a query: {e}"),
            }
        };
        match &self.mesh {
            Some(mesh) if self.owner(shard) != self.core => {
                let mesh = mesh.clone();
                let owner = self.owner(shard);
                glommio::spawn_local(async move {
                    let _ = mesh.send_to(owner, Box::new(job)).await;
                })
                .detach();
            }
            _ => job(&self.shards),
        }
        rx
    }

    /// Commits one write through the shard's writer thread (group commit) and returns once it is
    /// as durable as the configured mode promises.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, ShardError> {
        if self.shards.is_closing() {
            return Err(ShardError::Closing);
        }
        let shard = self.shard_of(&op.key);
        self.ask_writer(shard, |tx| Command::Write(op, tx)).await
    }

    /// Sends `shard`'s writer the command `make` builds around a reply channel, and awaits the
    /// reply.
    async fn ask_writer<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<crate::writer::StoreResult<T>>) -> Command,
    ) -> Result<T, ShardError> {
        let writer = self
            .shards
            .writers
            .get(shard)
            .ok_or(ShardError::Unavailable(shard))?;
        let (tx, rx) = oneshot::channel();
        writer
            .tx
            .send(make(tx))
            .map_err(|_| ShardError::Unavailable(shard))?;
        rx.await
            .map_err(|_| ShardError::Unavailable(shard))?
            .map_err(ShardError::Store)
    }

    /// Commits `ops` as one transaction: all of them or none, whichever shards they fall on.
    /// On one shard they are one batch of its group commit; across shards, the two-phase commit
    /// of [`crate::txn`]. Returns one outcome per op, in order.
    pub async fn transact(&self, ops: Vec<WriteOp>) -> Result<Vec<WriteOutcome>, ShardError> {
        if self.shards.is_closing() {
            return Err(ShardError::Closing);
        }
        let total = ops.len();
        let mut parts: Vec<Part> = Vec::new();
        for (at, op) in ops.into_iter().enumerate() {
            let shard = self.shard_of(&op.key);
            match parts.iter_mut().find(|p| p.shard == shard) {
                Some(part) => {
                    part.positions.push(at);
                    part.ops.push(op);
                }
                None => parts.push(Part {
                    shard,
                    positions: vec![at],
                    ops: vec![op],
                }),
            }
        }
        match parts.len() {
            0 => Ok(Vec::new()),
            1 => {
                let Part { shard, ops, .. } = parts.remove(0);
                self.ask_writer(shard, |tx| Command::Batch(ops, tx)).await
            }
            _ => {
                // Detached: the protocol runs to its end even if the caller goes away.
                let task =
                    glommio::spawn_local(crate::txn::commit(self.shards.clone(), parts, total));
                task.await
            }
        }
    }
}
