//! What this node knows of its cluster, for the Operations API's `cluster_status`: the
//! replication thread notes its connection and what it receives from each node; the
//! Operations API reads it. Nothing here is on a request's hot path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};

use super::AppError;

/// How long a write that asks for confirmation waits for it, at most.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// The cluster as replication sees it.
#[derive(Debug, Default)]
pub struct Cluster {
    state: Mutex<State>,
    /// Writes waiting for other nodes to confirm them, for replication to answer.
    waiting: Mutex<Vec<Waiter>>,
    /// Nodes `remove_node` removed, for replication to forget.
    removed: Mutex<Vec<String>>,
    /// Where messages published here (not stored: MQTT's non-retained) go to reach the other
    /// nodes' subscribers, while replication runs.
    messages: Mutex<Option<mpsc::Sender<Message>>>,
    /// Other nodes' cross-shard transactions, for an executor core to commit (the two-phase
    /// commit runs on the executors).
    transactions: Transactions,
}

/// Another node's transaction to commit here, and where its outcome goes.
pub type Transaction = (
    Vec<tessera_storage::shard::WriteOp>,
    oneshot::Sender<Result<(), String>>,
);

/// The queue of [`Transaction`]s: replication sends, one executor core takes the receiver.
#[derive(Debug)]
struct Transactions {
    tx: mpsc::UnboundedSender<Transaction>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Transaction>>>,
}

impl Default for Transactions {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded();
        Transactions {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

/// A message published on this node, for the other nodes' subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub database: String,
    pub table: String,
    /// The record's key without its table prefix.
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// When it expires (ms since the epoch).
    pub expires_at: Option<u64>,
    /// What the publishing front keeps with it (MQTT: QoS, properties; no connection).
    pub meta: Vec<u8>,
}

/// Messages waiting for replication to send them, at most: past that, they are dropped (and
/// counted in the log): a message stores nothing, and its subscribers here have it.
pub const MESSAGES_WAITING: usize = 4096;

/// A write waiting for `need` other nodes to have applied it: replication answers on `answer`
/// with how many did, by `deadline` at the latest.
#[derive(Debug)]
pub struct Waiter {
    pub need: usize,
    pub deadline: Instant,
    pub answer: oneshot::Sender<usize>,
}

/// A copy of what [`Cluster`] holds.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// This node's name, once replication runs.
    pub node: Option<String>,
    /// Whether it is connected to NATS now.
    pub connected: bool,
    /// What it last applied from each other node, per database.
    pub peers: BTreeMap<String, BTreeMap<String, Received>>,
}

/// The last change applied from one node of one database.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// Its version (µs since the epoch, the other node's clock).
    pub version: u64,
    /// When it was applied here (ms since the epoch).
    pub at_ms: u64,
}

impl Cluster {
    /// The transactions other nodes made, for the one executor core that commits them (the
    /// first to ask; `None` after).
    pub fn take_transactions(&self) -> Option<mpsc::UnboundedReceiver<Transaction>> {
        self.transactions
            .rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Commits another node's transaction here, all of its writes or none, through the
    /// executor core that took [`Self::take_transactions`].
    pub async fn transact(&self, ops: Vec<tessera_storage::shard::WriteOp>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.transactions
            .tx
            .unbounded_send((ops, tx))
            .map_err(|_| "no executor commits transactions".to_owned())?;
        rx.await.map_err(|_| "the executor went away".to_owned())?
    }

    /// Waits until `need` other nodes have applied everything this node committed before the
    /// call (Harper's `X-Replicate-To: ...;confirm=N` and `replicatedConfirmation`), for
    /// [`CONFIRM_WITHIN`] at most. The write itself is committed here either way: the error
    /// says so.
    pub async fn confirm(&self, need: usize) -> Result<(), AppError> {
        if need == 0 {
            return Ok(());
        }
        if !self.replicating() {
            return Err(AppError::BadRequest(format!(
                "the write is committed here, but confirmation by {need} other node(s) was \
                 asked and this node does not replicate"
            )));
        }
        let (answer, confirmed) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiter {
                need,
                deadline: Instant::now() + CONFIRM_WITHIN,
                answer,
            });
        let confirmed = confirmed.await.unwrap_or(0);
        if confirmed >= need {
            return Ok(());
        }
        Err(AppError::Resource {
            status: 504,
            message: format!(
                "the write is committed here, but {confirmed} of the {need} other node(s) asked \
                 confirmed it within {} s",
                CONFIRM_WITHIN.as_secs()
            ),
        })
    }

    /// Forgets node `name` (`remove_node`): its last changes here, and, through replication,
    /// its place in the stream.
    pub fn remove(&self, name: &str) -> bool {
        let known = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.peers.remove(name).is_some()
        };
        self.removed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_owned());
        known
    }

    /// The nodes removed since the last call (replication's side of [`Self::remove`]).
    pub fn take_removed(&self) -> Vec<String> {
        if !self.replicating() {
            return Vec::new();
        }
        std::mem::take(&mut *self.removed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether messages published here are sent to the other nodes ([`Self::send_message`]).
    pub fn sends_messages(&self) -> bool {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Hands a message published here to replication, for the other nodes' subscribers;
    /// dropped when replication is far behind (more than [`MESSAGES_WAITING`]).
    pub fn send_message(&self, message: Message) {
        let mut sender = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sender.as_mut()
            && let Err(e) = s.try_send(message)
            && e.is_full()
        {
            tracing::warn!("replication: a message not sent to the other nodes: too many waiting");
        }
    }

    /// Replication's side of [`Self::send_message`]: the messages, from now on.
    pub fn take_messages(&self) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(MESSAGES_WAITING);
        *self.messages.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// The writes that began waiting since the last call (replication's side of
    /// [`Self::confirm`]).
    pub fn take_waiting(&self) -> Vec<Waiter> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether replication runs (it has named this node), read without copying the state.
    fn replicating(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .node
            .is_some()
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes this node's name and whether it is connected.
    pub fn connected(&self, node: &str, connected: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.node = Some(node.to_owned());
        s.connected = connected;
    }

    /// Notes a change of `database` from `node` at `version`, applied at `at_ms`.
    pub fn received(&self, node: &str, database: &str, version: u64, at_ms: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = s
            .peers
            .entry(node.to_owned())
            .or_default()
            .entry(database.to_owned())
            .or_default();
        last.version = last.version.max(version);
        last.at_ms = at_ms;
    }
}
