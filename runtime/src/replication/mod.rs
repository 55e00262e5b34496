//! Replication between nodes over NATS JetStream: each node publishes the changes its shards
//! commit and applies those the other nodes publish, last writer wins per record.
//!
//! It runs on a thread of its own with a tokio runtime for the `async-nats` client: no executor
//! core ever waits on it. It reads the shards' audit logs (the outbox: a change committed is in
//! the log before anyone is answered) and writes through the shards' writer threads.
//!
//! - **Out.** For each shard, the audit entries after a cursor kept on disk are published to the
//!   stream [`STREAM`] under `tessera.<database>.<node>.<shard>`, in batches: the changes of up
//!   to [`BATCH_ENTRIES`] entries, per database, as many to a message as NATS takes. A batch's
//!   range is on disk before it goes, so after a crash it goes again as it was, under the same
//!   message ids (`<node>.<epoch>.<shard>.<first>-<last>.<database>.<part>`), and JetStream
//!   drops the duplicates within its window. The cursor moves once JetStream has acknowledged
//!   the batch.
//! - **In.** A durable consumer per node reads every node's subjects (its own it skips) and
//!   applies each change on its shard as [`WriteKind::Replicated`]: kept only if its version is
//!   newer than the record's, the shard's clock moved past it. A message is acknowledged after
//!   its write is durable, so a crash before that has it delivered again.
//!
//! Changes applied here carry their node in the audit log and are not published again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt, StreamExt};
use tessera_shards::ShardSet;
use tessera_storage::audit::{Audited, Operation, Origin, Provenance};
use tessera_storage::history::{Delta, decode_delta};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Event, WriteKind, WriteOp, table_prefix};
use tessera_storage::{Table, Value};

mod copy;
mod cursor;

use crate::app::App;
use crate::app::cluster::{Message, Waiter};
use crate::app::settings::Replication;
use crate::app::tables::Made;
use crate::auth::users::Users;

/// The JetStream stream every node's changes go to.
pub const STREAM: &str = "tessera";
/// How long JetStream remembers a message id to drop a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Audit entries published per shard at a time.
const BATCH_ENTRIES: usize = 256;
/// Messages applied together (one group commit per shard for all of them), each of up to
/// [`BATCH_ENTRIES`] entries' changes.
const BATCH_MESSAGES: usize = 16;
/// How often a shard with nothing new is looked at again.
const IDLE: Duration = Duration::from_millis(20);
/// How long the parts of another node's cross-shard transaction are waited for, at most.
const TXN_WAIT: Duration = Duration::from_secs(10);
/// How often held transactions are looked at while no message comes.
const TXN_POLL: Duration = Duration::from_millis(100);
/// How often writes waiting for confirmation are looked at.
const CONFIRM_POLL: Duration = Duration::from_millis(5);
/// The wait after a failure (NATS unreachable, say) before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// How long JetStream waits for this node to acknowledge a change before it delivers it again:
/// what a node that was killed mid-batch waits, when it comes back, for the changes it had been
/// handed (JetStream's default is 30 s; a batch here is applied in milliseconds).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// The subject token, in place of a database's, of what is not a table's change: the schema
/// ([`META_SCHEMA`]) and the users ([`META_USERS`]).
const META: &str = "_meta";
const META_SCHEMA: &str = "schema";
const META_USERS: &str = "users";
/// The subjects (`<MESSAGES>.<node>`) of messages: plain NATS, outside the stream.
const MESSAGES: &str = "tessera-msg";
/// The format of a published change (its first byte): with what a partial write changed.
const FORMAT: u8 = 4;
/// The format before: with what an `addTo` added only (read still).
const FORMAT_ADDED: u8 = 2;
/// The format of a message: this byte, then changes, each a u32 BE length and the change.
const BATCH: u8 = 3;

/// Starts replicating: the thread returns at once; it connects (and reconnects) in the
/// background.
pub fn start(
    config: Replication,
    shards: Arc<ShardSet>,
    app: Arc<App>,
    users: Arc<Users>,
) -> anyhow::Result<()> {
    let dir = app.settings.root.join("data").join("replication");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let node = subject_token(&config.node);
    let (epoch, fresh) = epoch(&dir)?;
    let messages = app.cluster.take_messages();
    tracing::info!("replication: node {node}, through NATS at {}", config.nats);
    std::thread::Builder::new()
        .name("tessera-replication".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("replication: cannot start its runtime: {e}");
                    return;
                }
            };
            let node = Node {
                name: node,
                epoch,
                config,
                shards,
                app,
                users,
                dir,
                cursors: Default::default(),
                published: Default::default(),
                live: Default::default(),
                client: Default::default(),
                fresh: std::cell::Cell::new(fresh),
            };
            runtime.block_on(node.run(messages));
        })
        .context("starting the replication thread")?;
    Ok(())
}

/// One node's side of replication.
struct Node {
    /// Its name as a subject token.
    name: String,
    /// When its data directory began (see [`epoch`]).
    epoch: u64,
    config: Replication,
    shards: Arc<ShardSet>,
    app: Arc<App>,
    users: Arc<Users>,
    /// Where the cursors are kept.
    dir: PathBuf,
    /// Each shard's cursor file, once opened.
    cursors: RefCell<HashMap<usize, cursor::CursorFile>>,
    /// How far publishing got, for confirmations.
    published: RefCell<Published>,
    /// The stream, while connected, for confirmations to read the other nodes' progress.
    live: RefCell<Option<stream::Stream>>,
    /// The connection, while connected, for messages.
    client: RefCell<Option<async_nats::Client>>,
    /// Whether its data directory is new (until it has joined the stream): a consumer the
    /// stream has under its name is an old one's.
    fresh: std::cell::Cell<bool>,
}

/// How far this node's publishing got.
#[derive(Debug, Default)]
struct Published {
    /// The last audit entry of each shard JetStream stored (see [`Cursor::done`]).
    done: Vec<Option<u64>>,
    /// The stream's sequence number of the last message JetStream stored.
    stream_seq: u64,
}

/// A write waiting for confirmation, with what it waits for.
struct Pending {
    waiter: Waiter,
    /// Each shard's persisted audit entries when it began waiting (every entry below these
    /// must be published).
    marks: Vec<u64>,
    /// Once they are: the stream sequence that other nodes must have applied up to.
    stream_seq: Option<u64>,
}

impl Node {
    /// Connects, then publishes and applies until the process ends; starts again after an
    /// error.
    async fn run(self, messages: futures::channel::mpsc::Receiver<Message>) {
        let sessions = async {
            loop {
                if let Err(e) = self.session().await {
                    tracing::warn!("replication: {e:#}; trying again");
                }
                tokio::time::sleep(RETRY).await;
            }
        };
        futures::join!(sessions, self.confirm(), self.send_messages(messages));
    }

    /// Sends the messages published here (MQTT's non-retained: nothing stored) to the other
    /// nodes, on plain NATS subjects (not the stream): like the message itself, at most once,
    /// and only to nodes connected now.
    async fn send_messages(&self, mut messages: futures::channel::mpsc::Receiver<Message>) {
        let subject = format!("{MESSAGES}.{}", self.name);
        while let Some(m) = messages.next().await {
            let Some(client) = self.client.borrow().clone() else {
                continue;
            };
            if let Err(e) = client
                .publish(subject.clone(), encode_message(&m).into())
                .await
            {
                tracing::debug!("replication: a message not sent: {e}");
            }
        }
    }

    /// Delivers the other nodes' messages to subscribers here, through the shards' writers
    /// as a message published here would be.
    async fn receive_messages(&self, mut sub: async_nats::Subscriber) -> anyhow::Result<()> {
        while let Some(m) = sub.next().await {
            let origin = m.subject.as_str().split('.').nth(1).unwrap_or_default();
            if origin == self.name {
                continue;
            }
            let Some(message) = decode_message(&m.payload) else {
                tracing::warn!("replication: a message from {origin} this node cannot read");
                continue;
            };
            let Some(table) = self.app.tables.table(&message.database, &message.table) else {
                continue;
            };
            let mut key = table_prefix(table.id).to_vec();
            key.extend_from_slice(&message.key);
            let op = WriteOp {
                table,
                key,
                kind: WriteKind::Message {
                    payload: message.payload,
                    expires_at: message.expires_at,
                    meta: message.meta,
                },
                from: None,
            };
            if let Err(e) = self.shards.write(op).await {
                tracing::warn!("replication: a message from {origin} not delivered: {e}");
            }
        }
        Ok(())
    }

    /// Answers the writes that wait for other nodes to confirm them (see
    /// [`crate::app::cluster::Cluster::confirm`]): once everything the node had committed
    /// when one began waiting is published, it waits until the other nodes' consumers have
    /// acknowledged (so applied) the stream that far, or until its deadline; connected or not.
    async fn confirm(&self) {
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            tokio::time::sleep(CONFIRM_POLL).await;
            self.remove_nodes().await;
            for waiter in self.app.cluster.take_waiting() {
                let marks = (0..self.shards.count())
                    .map(|s| self.shards.store(s).map_or(0, |st| st.persisted()))
                    .collect();
                pending.push(Pending {
                    waiter,
                    marks,
                    stream_seq: None,
                });
            }
            if pending.is_empty() {
                continue;
            }
            {
                let published = self.published.borrow();
                for p in pending.iter_mut().filter(|p| p.stream_seq.is_none()) {
                    let sent = p.marks.iter().enumerate().all(|(shard, &mark)| {
                        mark == 0
                            || published
                                .done
                                .get(shard)
                                .copied()
                                .flatten()
                                .is_some_and(|d| d + 1 >= mark)
                    });
                    if sent {
                        p.stream_seq = Some(published.stream_seq);
                    }
                }
            }
            let floors = match self.other_floors().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("replication: reading the other nodes' progress: {e:#}");
                    Vec::new()
                }
            };
            let now = std::time::Instant::now();
            pending.retain_mut(|p| {
                let confirmed = p
                    .stream_seq
                    .map_or(0, |seq| floors.iter().filter(|f| **f >= seq).count());
                if confirmed < p.waiter.need && now < p.waiter.deadline {
                    return true;
                }
                let (spent, _) = futures::channel::oneshot::channel();
                let answer = std::mem::replace(&mut p.waiter.answer, spent);
                let _ = answer.send(confirmed);
                false
            });
        }
    }

    /// Deletes the consumers of the nodes `remove_node` named: JetStream keeps nothing more
    /// for them, and they no longer count for confirmations. Tried again while not connected.
    async fn remove_nodes(&self) {
        let Some(stream) = self.live.borrow().clone() else {
            return;
        };
        for node in self.app.cluster.take_removed() {
            let durable = format!("node-{}", subject_token(&node));
            match stream.delete_consumer(&durable).await {
                Ok(_) => tracing::info!("replication: node {node} removed from the stream"),
                Err(e) => tracing::warn!("replication: removing node {node}'s consumer: {e}"),
            }
        }
    }

    /// How far each other node's consumer has acknowledged the stream.
    async fn other_floors(&self) -> anyhow::Result<Vec<u64>> {
        let Some(stream) = self.live.borrow().clone() else {
            return Ok(Vec::new());
        };
        let own = format!("node-{}", self.name);
        let mut floors = Vec::new();
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| anyhow::anyhow!("{e}"))?;
            if info.name != own && info.name.starts_with("node-") {
                floors.push(info.ack_floor.stream_sequence);
            }
        }
        Ok(floors)
    }

    async fn session(&self) -> anyhow::Result<()> {
        // This node's NATS server first, then the routes to fail over to.
        let servers: Vec<async_nats::ServerAddr> = std::iter::once(&self.config.nats)
            .chain(&self.config.routes)
            .filter_map(|url| match url.parse() {
                Ok(addr) => Some(addr),
                Err(e) => {
                    tracing::warn!("replication: {url} is not a NATS server address: {e}");
                    None
                }
            })
            .collect();
        let client = nats_options(&self.config.access)
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .context("connecting to NATS")?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{STREAM}.>")],
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                num_replicas: self.config.stream_replicas,
                ..Default::default()
            })
            .await
            .context("creating the stream")?;
        // Room for the headers and the subject under the server's limit.
        let max_payload = max_payload.saturating_sub(1024).max(64 * 1024);
        // Other nodes' copies are served from the start, this node's own join included.
        let copies = client
            .subscribe(format!("{}.{}", copy::COPY, self.name))
            .await
            .context("subscribing to copy requests")?;
        let serving = self.serve_copies(&client, copies, max_payload);
        let replicating = async {
            let consumer = self.join(&client, &mut stream).await?;
            tracing::info!(
                "replication: connected; stream {STREAM}, consumer node-{}",
                self.name
            );
            self.app.cluster.connected(&self.name, true);
            *self.live.borrow_mut() = Some(stream.clone());
            *self.client.borrow_mut() = Some(client.clone());
            let messages = client
                .subscribe(format!("{MESSAGES}.*"))
                .await
                .context("subscribing to messages")?;
            futures::try_join!(
                self.publish(&js, max_payload),
                self.apply(&consumer),
                self.receive_messages(messages)
            )
        };
        let served = futures::try_join!(serving, replicating);
        self.app.cluster.connected(&self.name, false);
        *self.live.borrow_mut() = None;
        *self.client.borrow_mut() = None;
        served?;
        Ok(())
    }

    /// Publishes what every shard commits, for as long as the connection lasts.
    async fn publish(&self, js: &jetstream::Context, max_payload: usize) -> anyhow::Result<()> {
        let shards = self.shards.count();
        let mut cursors = (0..shards)
            .map(|s| self.cursor(s))
            .collect::<anyhow::Result<Vec<Cursor>>>()?;
        let mut sent = Generations::default();
        loop {
            self.publish_meta(js, &mut sent).await?;
            // Worked out when a shard has something to send, not on every idle look.
            let mut tables: Option<HashMap<u32, Arc<Table>>> = None;
            let mut idle = true;
            for (shard, cursor) in cursors.iter_mut().enumerate() {
                let Some(store) = self.shards.store(shard) else {
                    continue;
                };
                let mut entries = store
                    .audit_after(cursor.done, BATCH_ENTRIES)
                    .context("reading the audit log")?;
                // A batch begun before a crash goes again as it was, under the same ids.
                if cursor.sending != cursor.done
                    && let Some(sending) = cursor.sending
                {
                    entries.retain(|(seq, _)| *seq <= sending);
                }
                let Some(&(last, _)) = entries.last() else {
                    if cursor.sending != cursor.done || cursor.on_disk != cursor.done {
                        // Nothing left of the batch on disk (or it was sent): it is done.
                        cursor.done = cursor.sending.max(cursor.done);
                        cursor.sending = cursor.done;
                        self.keep_cursor(shard, cursor)?;
                    }
                    continue;
                };
                idle = false;
                if cursor.sending != Some(last) || cursor.on_disk != cursor.done {
                    cursor.sending = Some(last);
                    self.keep_cursor(shard, cursor)?;
                }
                // A table these entries write was made before they were read: its schema
                // goes first.
                self.publish_meta(js, &mut sent).await?;
                let tables = tables.get_or_insert_with(|| self.tables_by_id());
                let mut acks = Vec::new();
                for (subject, id, payload) in self.outgoing(tables, shard, &entries, max_payload) {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                    let ack = js
                        .publish_with_headers(subject, headers, payload.into())
                        .await
                        .context("publishing")?;
                    acks.push(ack);
                }
                let mut stream_seq = 0;
                for ack in acks {
                    let ack = ack.await.context("JetStream did not store a change")?;
                    stream_seq = stream_seq.max(ack.sequence);
                }
                // Kept on disk with the next batch, or once there is none.
                cursor.done = Some(last);
                let mut published = self.published.borrow_mut();
                published.done.resize(shards, None);
                published.done[shard] = Some(last);
                published.stream_seq = published.stream_seq.max(stream_seq);
            }
            if idle {
                tokio::time::sleep(IDLE).await;
            }
        }
    }

    /// Publishes the schema the Operations API made here, and the users and roles, each when
    /// it changed since it was last sent (and once per connection): whole, as other nodes
    /// merge them.
    async fn publish_meta(
        &self,
        js: &jetstream::Context,
        sent: &mut Generations,
    ) -> anyhow::Result<()> {
        let schema = self.app.tables.generation();
        if sent.schema != Some(schema) {
            let made = self
                .app
                .tables
                .made(|d| d != "system" && self.replicates(d));
            let payload = serde_json::to_vec(&made)?;
            self.publish_and_wait(js, META_SCHEMA, payload).await?;
            sent.schema = Some(schema);
        }
        let users = self.users.generation();
        if sent.users != Some(users) {
            let payload = self.users.snapshot();
            self.publish_and_wait(js, META_USERS, payload).await?;
            sent.users = Some(users);
        }
        Ok(())
    }

    async fn publish_and_wait(
        &self,
        js: &jetstream::Context,
        what: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        let subject = format!("{STREAM}.{META}.{}.{what}", self.name);
        js.publish(subject, payload.into())
            .await
            .context("publishing")?
            .await
            .with_context(|| format!("JetStream did not store the {what}"))?;
        Ok(())
    }

    /// Takes in another node's schema or users (see [`Self::publish_meta`]).
    fn apply_meta(&self, origin: &str, what: &str, payload: &[u8]) -> Result<(), Apply> {
        let unreadable = |e: serde_json::Error| Apply::Skip(format!("unreadable {what}: {e}"));
        match what {
            META_SCHEMA => {
                let made: Made = serde_json::from_slice(payload).map_err(unreadable)?;
                let done = self
                    .app
                    .tables
                    .adopt(&made)
                    .map_err(|e| Apply::Retry(e.message))?;
                for d in done {
                    tracing::info!("replication: made {d}, as node {origin} did");
                }
            }
            META_USERS => {
                if self
                    .users
                    .merge(payload)
                    .map_err(|e| Apply::Retry(e.to_string()))?
                {
                    tracing::info!("replication: took users and roles from node {origin}");
                }
            }
            _ => return Err(Apply::Skip(format!("unknown {what}"))),
        }
        Ok(())
    }

    /// The messages a batch of a shard's audit entries goes out as: per database, its changes
    /// in commit order, as many to a message as fit in `max_payload`. What a batch sends, and
    /// under which ids, depends only on its entries: sent again after a crash, JetStream drops
    /// it as a duplicate.
    fn outgoing(
        &self,
        tables: &HashMap<u32, Arc<Table>>,
        shard: usize,
        entries: &[(u64, Vec<Audited>)],
        max_payload: usize,
    ) -> Vec<(String, String, Vec<u8>)> {
        let (Some((first, _)), Some((last, _))) = (entries.first(), entries.last()) else {
            return Vec::new();
        };
        // Per entry, the changes that go out: a transaction's part says how many it has.
        let outbound: Vec<Vec<(&Table, &Audited)>> = entries
            .iter()
            .map(|(_, changes)| {
                changes
                    .iter()
                    .filter_map(|a| Some((self.outbound_table(tables, a)?, a)))
                    .collect()
            })
            .collect();
        let changes = outbound
            .iter()
            .flat_map(|entry| entry.iter().map(move |c| (c, entry.len())))
            .filter_map(|(&(table, audited), count)| {
                let txn = audited.txn.map(|t| TxnMark {
                    id: t.id,
                    parts: t.parts,
                    changes: count as u32,
                });
                let change = encode(table, &audited.change, audited.delta.as_ref(), txn);
                if change.len() + 5 > max_payload {
                    tracing::error!(
                        "replication: a change to {}.{} of {} bytes is larger than NATS takes \
                         ({max_payload}); not sent",
                        table.database,
                        table.name,
                        change.len()
                    );
                    return None;
                }
                Some((table.database.as_str(), change))
            });
        pack(changes, max_payload)
            .into_iter()
            .map(|(database, part, payload)| {
                let database = subject_token(database);
                let subject = format!("{STREAM}.{database}.{}.{shard}", self.name);
                let id = format!(
                    "{}.{}.{shard}.{first}-{last}.{database}.{part}",
                    self.name, self.epoch
                );
                (subject, id, payload)
            })
            .collect()
    }

    /// The table of a change that goes out; `None` for one that does not (applied from another
    /// node, of a dropped table, of a table or database that does not replicate).
    fn outbound_table<'t>(
        &self,
        tables: &'t HashMap<u32, Arc<Table>>,
        audited: &Audited,
    ) -> Option<&'t Table> {
        if audited
            .origin
            .as_ref()
            .is_some_and(|(o, _)| o.operation == Operation::Replicated)
        {
            return None;
        }
        let table = tables.get(&audited.change.table)?;
        (table.replicate && self.replicates(&table.database)).then_some(&**table)
    }

    fn replicates(&self, database: &str) -> bool {
        self.config
            .databases
            .as_ref()
            .is_none_or(|dbs| dbs.iter().any(|d| d == database))
    }

    /// Applies every other node's changes, for as long as the connection lasts. The changes of
    /// another node's cross-shard transaction are held until every part of it is here, then
    /// committed together; the messages that carried them are acknowledged after that.
    async fn apply(&self, consumer: &consumer::PullConsumer) -> anyhow::Result<()> {
        let mut messages = consumer.messages().await.context("consuming")?;
        let mut held = Held::default();
        loop {
            let next = if held.txns.is_empty() {
                messages.next().await
            } else {
                match tokio::time::timeout(TXN_POLL, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.commit_held(&mut held).await?;
                        continue;
                    }
                }
            };
            let Some(first) = next else {
                return Ok(());
            };
            let mut batch = vec![first.map_err(|e| anyhow::anyhow!("consuming: {e}"))?];
            while batch.len() < BATCH_MESSAGES {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    _ => break,
                }
            }
            // Every write of the batch queued at once: each shard's writer commits those it
            // gets together, in the order they came.
            let writes = batch
                .iter()
                .map(|m| self.apply_message(m.subject.as_str(), &m.payload));
            let results = futures::future::join_all(writes).await;
            for (m, result) in batch.into_iter().zip(results) {
                match result {
                    Ok(parts) if parts.is_empty() => {}
                    // Acknowledged once its transactions are committed.
                    Ok(parts) => {
                        held.hold(m, parts);
                        continue;
                    }
                    // Not stored: it comes again (after JetStream's acknowledgement wait).
                    Err(Apply::Retry(e)) => {
                        tracing::warn!("replication: applying {}: {e}", m.subject);
                        continue;
                    }
                    Err(Apply::Skip(why)) => {
                        tracing::warn!("replication: {} skipped: {why}", m.subject);
                    }
                }
                m.ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
            }
            self.commit_held(&mut held).await?;
        }
    }

    /// Commits the held transactions that are whole, and those waited for longer than
    /// [`TXN_WAIT`] as they are (a part with nothing this node replicates never comes), then
    /// acknowledges the messages no longer waiting for any.
    async fn commit_held(&self, held: &mut Held) -> anyhow::Result<()> {
        let ready: Vec<TxnKey> = held
            .txns
            .iter()
            .filter(|(_, t)| t.whole() || t.since.elapsed() > TXN_WAIT)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            let Some(txn) = held.txns.remove(&key) else {
                continue;
            };
            if !txn.whole() {
                tracing::warn!(
                    "replication: transaction {} of node {} committed without the parts not \
                     received in {TXN_WAIT:?}",
                    key.1,
                    key.0
                );
            }
            let (database, newest) = (txn.database.clone(), txn.newest);
            let ops: Vec<WriteOp> = txn.ops().collect();
            match tokio::time::timeout(TXN_WAIT, self.app.cluster.transact(ops)).await {
                Ok(Ok(())) => {
                    let now_ms = tessera_storage::shard::now_micros() / 1000;
                    self.app.cluster.received(&key.0, &database, newest, now_ms);
                    held.committed(&key);
                }
                // Its messages come again, and it is gathered again.
                Ok(Err(e)) => {
                    tracing::warn!("replication: transaction {} of node {}: {e}", key.1, key.0);
                    held.dropped(&key);
                }
                Err(_) => {
                    tracing::warn!(
                        "replication: transaction {} of node {} not committed in {TXN_WAIT:?}",
                        key.1,
                        key.0
                    );
                    held.dropped(&key);
                }
            }
        }
        for m in held.acknowledgeable() {
            m.ack()
                .await
                .map_err(|e| anyhow::anyhow!("acknowledging: {e}"))?;
        }
        Ok(())
    }

    /// Applies the changes of one message (this node's own are left alone), all queued at
    /// once, but for those of cross-shard transactions, which it returns to be committed with
    /// their other parts. A change that cannot be applied here is logged and passed over; one
    /// that failed to be stored has the whole message come again.
    async fn apply_message(&self, subject: &str, payload: &[u8]) -> Result<Vec<TxnPart>, Apply> {
        let mut parts = subject.splitn(4, '.');
        let database = parts.nth(1).unwrap_or_default();
        let origin = parts.next().unwrap_or_default();
        if origin == self.name {
            return Ok(Vec::new());
        }
        let origin_shard = parts.next().unwrap_or_default();
        // Done before any change of the batch is queued: a table is made before its records.
        if database == META {
            return self
                .apply_meta(origin, origin_shard, payload)
                .map(|()| Vec::new());
        }
        let changes =
            split(payload).ok_or_else(|| Apply::Skip("not a message this node can read".into()))?;
        let applied = changes
            .into_iter()
            .map(|c| self.apply_one(origin, origin_shard, c));
        let mut outcome = Ok(Vec::new());
        for result in futures::future::join_all(applied).await {
            match (result, &mut outcome) {
                (Ok(Some(part)), Ok(held)) => held.push(part),
                (Ok(_), _) => {}
                (Err(Apply::Skip(why)), _) => tracing::warn!("replication: {subject}: {why}"),
                (Err(retry), _) => outcome = Err(retry),
            }
        }
        outcome
    }

    /// Applies one change from `origin`, or, when it is part of a cross-shard transaction,
    /// returns it to be held.
    async fn apply_one(
        &self,
        origin: &str,
        origin_shard: &str,
        change: &[u8],
    ) -> Result<Option<TxnPart>, Apply> {
        let Decoded {
            database,
            table: name,
            change,
            delta,
            txn,
        } = decode(change).ok_or_else(|| Apply::Skip("not a change this node can read".into()))?;
        if !self.replicates(&database) {
            return Ok(None);
        }
        let table = self
            .app
            .tables
            .table(&database, &name)
            .ok_or_else(|| Apply::Skip(format!("no table {database}.{name} here")))?;
        let (record, expires_at) = match &change.event {
            Event::Put(stored) => {
                let r = RecordRef::parse(stored)
                    .ok_or_else(|| Apply::Skip("a record of an unknown format".into()))?;
                let v = tessera_storage::value::from_msgpack(r.body)
                    .map_err(|e| Apply::Skip(format!("a record that does not decode: {e}")))?;
                (Some(v), r.expires_at)
            }
            Event::Delete => (None, None),
            Event::Message { .. } => return Ok(None),
        };
        let mut key = table_prefix(table.id).to_vec();
        key.extend_from_slice(change.key.get(4..).unwrap_or_default());
        let op = WriteOp {
            table,
            key,
            kind: WriteKind::Replicated {
                record,
                version: change.version,
                expires_at,
                delta,
            },
            from: Some(Provenance {
                origin: Arc::new(Origin {
                    at: change.version,
                    operation: Operation::Replicated,
                    user: origin.into(),
                }),
                index: 0,
            }),
        };
        let version = change.version;
        if let Some(txn) = txn {
            return Ok(Some(TxnPart {
                key: (origin.to_owned(), txn.id),
                mark: txn,
                origin_shard: origin_shard.to_owned(),
                database,
                version,
                op,
            }));
        }
        self.shards
            .write(op)
            .await
            .map_err(|e| Apply::Retry(e.to_string()))?;
        let now_ms = tessera_storage::shard::now_micros() / 1000;
        self.app
            .cluster
            .received(origin, &database, version, now_ms);
        Ok(None)
    }

    /// Every table by its id here.
    fn tables_by_id(&self) -> HashMap<u32, Arc<Table>> {
        self.app
            .tables
            .tables(None)
            .into_iter()
            .map(|t| (t.id, t))
            .collect()
    }

    /// Where `shard`'s publishing stands, as kept on disk (its file kept open to write).
    fn cursor(&self, shard: usize) -> anyhow::Result<Cursor> {
        let path = self.dir.join(format!("shard-{shard}.cursor"));
        let (file, at) = cursor::CursorFile::open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        self.cursors.borrow_mut().insert(shard, file);
        Ok(Cursor {
            done: at.done,
            sending: at.sending,
            on_disk: at.done,
        })
    }

    fn keep_cursor(&self, shard: usize, cursor: &mut Cursor) -> anyhow::Result<()> {
        let position = cursor::Position {
            done: cursor.done,
            sending: cursor.sending,
        };
        self.cursors
            .borrow_mut()
            .get_mut(&shard)
            .context("a cursor not opened")?
            .keep(position)
            .context("keeping the replication cursor")?;
        cursor.on_disk = cursor.done;
        Ok(())
    }
}

/// The schema and users generations last published.
#[derive(Debug, Default)]
struct Generations {
    schema: Option<u64>,
    users: Option<u64>,
}

/// Where a shard's publishing stands in its audit log. On disk before a batch goes out, so
/// that after a crash the same batch goes again, under the same message ids.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The last entry JetStream has stored (`None`: none yet).
    done: Option<u64>,
    /// The last entry of the batch being sent (`done` when none is).
    sending: Option<u64>,
    /// `done` as the file says it.
    on_disk: Option<u64>,
}

/// When this node's data began (µs since the epoch), kept in `dir`: part of every message id,
/// whose audit entry numbers start again with a new data directory. A node wiped and started
/// again under the same name would otherwise have its first changes taken by JetStream for
/// duplicates of its old ones.
/// Also says whether it begins now.
fn epoch(dir: &std::path::Path) -> anyhow::Result<(u64, bool)> {
    let path = dir.join("epoch");
    if let Ok(b) = std::fs::read(&path)
        && let Ok(b) = <[u8; 8]>::try_from(b.as_slice())
    {
        return Ok((u64::from_be_bytes(b), false));
    }
    let now = tessera_storage::shard::now_micros();
    tessera_storage::layout::write_atomically(&path, &now.to_be_bytes(), 0o600)
        .context("keeping the replication epoch")?;
    Ok((now, true))
}

/// Why a change was not applied.
/// Another node's cross-shard transaction: its node and its id there.
type TxnKey = (String, u64);

/// A change of another node's cross-shard transaction, held until the rest is here.
struct TxnPart {
    key: TxnKey,
    mark: TxnMark,
    origin_shard: String,
    database: String,
    version: u64,
    op: WriteOp,
}

/// A held part's changes, by record key and version (a message delivered again adds nothing).
type HeldChanges = HashMap<(Vec<u8>, u64), WriteOp>;

/// The changes of one held transaction.
struct HeldTxn {
    since: std::time::Instant,
    parts: u32,
    /// Per shard of the origin: how many changes its part sent, and those here.
    shards: HashMap<String, (u32, HeldChanges)>,
    database: String,
    newest: u64,
}

impl HeldTxn {
    fn whole(&self) -> bool {
        self.shards.len() as u32 >= self.parts
            && self.shards.values().all(|(n, ops)| ops.len() as u32 >= *n)
    }

    fn ops(self) -> impl Iterator<Item = WriteOp> {
        self.shards
            .into_values()
            .flat_map(|(_, ops)| ops.into_values())
    }
}

/// The transactions being gathered, and the messages that wait for them to be acknowledged.
#[derive(Default)]
struct Held {
    txns: HashMap<TxnKey, HeldTxn>,
    /// Each message (once: a message delivered again takes the place of the one before) with
    /// the transactions it carries parts of that are not committed yet.
    messages: Vec<(jetstream::Message, Vec<TxnKey>)>,
}

impl Held {
    fn hold(&mut self, message: jetstream::Message, parts: Vec<TxnPart>) {
        let mut keys: Vec<TxnKey> = Vec::new();
        for part in parts {
            let txn = self
                .txns
                .entry(part.key.clone())
                .or_insert_with(|| HeldTxn {
                    since: std::time::Instant::now(),
                    parts: part.mark.parts,
                    shards: HashMap::new(),
                    database: part.database.clone(),
                    newest: 0,
                });
            txn.newest = txn.newest.max(part.version);
            let (_, ops) = txn
                .shards
                .entry(part.origin_shard)
                .or_insert_with(|| (part.mark.changes, HashMap::new()));
            ops.insert((part.op.key.clone(), part.version), part.op);
            if !keys.contains(&part.key) {
                keys.push(part.key);
            }
        }
        let seq = |m: &jetstream::Message| m.info().map(|i| i.stream_sequence).ok();
        let again = seq(&message);
        self.messages
            .retain(|(m, _)| again.is_none() || seq(m) != again);
        self.messages.push((message, keys));
    }

    /// `key` was committed: its messages no longer wait for it.
    fn committed(&mut self, key: &TxnKey) {
        for (_, keys) in &mut self.messages {
            keys.retain(|k| k != key);
        }
    }

    /// `key` could not be committed: its messages are left unacknowledged, to come again.
    fn dropped(&mut self, key: &TxnKey) {
        self.messages.retain(|(_, keys)| !keys.contains(key));
    }

    /// The messages that wait for nothing any more, taken out.
    fn acknowledgeable(&mut self) -> Vec<jetstream::Message> {
        let (done, waiting) = std::mem::take(&mut self.messages)
            .into_iter()
            .partition(|(_, keys)| keys.is_empty());
        self.messages = waiting;
        done.into_iter().map(|(m, _)| m).collect()
    }
}

enum Apply {
    /// A failure here (the store): not acknowledged, so delivered again.
    Retry(String),
    /// A change this node cannot apply (no such table): acknowledged and logged.
    Skip(String),
}

/// The NATS client's options for `access`: credentials and TLS.
fn nats_options(access: &crate::app::settings::NatsAccess) -> async_nats::ConnectOptions {
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = &access.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &access.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &access.certificate_authority {
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    if let Some((certificate, key)) = &access.client_certificate {
        options = options
            .require_tls(true)
            .add_client_certificate(certificate.clone(), key.clone());
    }
    options
}

/// A name as one token of a NATS subject (no dots, wildcards or spaces).
fn subject_token(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

/// The cross-shard transaction a published change was part of: its id on its node, how many
/// shards' parts it had, and how many changes the part of the change's shard sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TxnMark {
    id: u64,
    parts: u32,
    changes: u32,
}

/// A change as published: `FORMAT`, the database and table names (each a u16 BE length and
/// the bytes: table ids are each node's own), what a partial write changed (a u32 BE length, 0
/// for none, and [`DeltaRef::encode`]), its transaction (a byte, 0 for none, else 1 and the
/// [`TxnMark`]: u64 BE, u32 BE, u32 BE), then [`Change::encode`].
fn encode(table: &Table, change: &Change, delta: Option<&Delta>, txn: Option<TxnMark>) -> Vec<u8> {
    let body = change.encode();
    let mut out = Vec::with_capacity(26 + table.database.len() + table.name.len() + body.len());
    out.push(FORMAT);
    for name in [&table.database, &table.name] {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Some(delta) = delta {
        delta.as_ref().encode(&mut out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    match txn {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.id.to_be_bytes());
            out.extend_from_slice(&t.parts.to_be_bytes());
            out.extend_from_slice(&t.changes.to_be_bytes());
        }
    }
    out.extend_from_slice(&body);
    out
}

/// A change as received.
#[derive(Debug)]
struct Decoded {
    database: String,
    table: String,
    change: Change,
    delta: Option<Delta>,
    txn: Option<TxnMark>,
}

/// Changes, each with its database, as messages of at most `max` bytes: per database, its
/// changes in order, numbered from 0 (every change must fit in one).
fn pack<'a>(
    changes: impl IntoIterator<Item = (&'a str, Vec<u8>)>,
    max: usize,
) -> Vec<(&'a str, usize, Vec<u8>)> {
    // Per database: the message being filled and its number.
    let mut open: HashMap<&str, (Vec<u8>, usize)> = HashMap::new();
    let mut out = Vec::new();
    for (database, change) in changes {
        let (payload, part) = open.entry(database).or_insert_with(|| (vec![BATCH], 0));
        if payload.len() > 1 && payload.len() + 4 + change.len() > max {
            out.push((database, *part, std::mem::replace(payload, vec![BATCH])));
            *part += 1;
        }
        payload.extend_from_slice(&(change.len() as u32).to_be_bytes());
        payload.extend_from_slice(&change);
    }
    out.extend(
        open.into_iter()
            .map(|(db, (payload, part))| (db, part, payload)),
    );
    out
}

/// The changes of a message: a [`BATCH`] of them, or one alone (as nodes sent them before).
fn split(mut b: &[u8]) -> Option<Vec<&[u8]>> {
    match *b.first()? {
        FORMAT | FORMAT_ADDED => return Some(vec![b]),
        BATCH => b = &b[1..],
        _ => return None,
    }
    let mut changes = Vec::new();
    while !b.is_empty() {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        changes.push(b.get(4..4 + n)?);
        b = &b[4 + n..];
    }
    Some(changes)
}

/// A message as sent: database, table, key and meta each a u32 BE length and the bytes, the
/// expiry (u64 BE, 0 for none), then the payload.
fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + m.key.len() + m.meta.len() + m.payload.len());
    for part in [m.database.as_bytes(), m.table.as_bytes(), &m.key, &m.meta] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&m.expires_at.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&m.payload);
    out
}

/// [`encode_message`] undone.
fn decode_message(mut b: &[u8]) -> Option<Message> {
    let mut take = || -> Option<Vec<u8>> {
        let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let part = b.get(4..4 + n)?.to_vec();
        b = &b[4 + n..];
        Some(part)
    };
    let (database, table) = (
        String::from_utf8(take()?).ok()?,
        String::from_utf8(take()?).ok()?,
    );
    let (key, meta) = (take()?, take()?);
    let expires_at = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    Some(Message {
        database,
        table,
        key,
        meta,
        expires_at: (expires_at != 0).then_some(expires_at),
        payload: b[8..].to_vec(),
    })
}

/// [`encode`] undone.
fn decode(b: &[u8]) -> Option<Decoded> {
    let format = *b.first()?;
    if format != FORMAT && format != FORMAT_ADDED {
        return None;
    }
    let mut rest = &b[1..];
    let mut take = |len_bytes: usize| -> Option<&[u8]> {
        let n = match len_bytes {
            2 => u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize,
            _ => u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize,
        };
        let bytes = rest.get(len_bytes..len_bytes + n)?;
        rest = &rest[len_bytes + n..];
        Some(bytes)
    };
    let database = std::str::from_utf8(take(2)?).ok()?.to_owned();
    let table = std::str::from_utf8(take(2)?).ok()?.to_owned();
    let delta = match take(4)? {
        [] => None,
        d if format == FORMAT => Some(decode_delta(d)?),
        map => match tessera_storage::value::from_msgpack(map).ok()? {
            Value::Object(pairs) => Some(Delta::Add(pairs)),
            _ => return None,
        },
    };
    let mut txn = None;
    if format == FORMAT {
        let (flag, tail) = rest.split_first()?;
        rest = tail;
        if *flag == 1 {
            let n = |at: usize| -> Option<u32> {
                Some(u32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?))
            };
            txn = Some(TxnMark {
                id: u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
                parts: n(8)?,
                changes: n(12)?,
            });
            rest = &rest[16..];
        }
    }
    Some(Decoded {
        database,
        table,
        change: Change::decode(rest)?,
        delta,
        txn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_goes_out_and_comes_back_as_it_was() {
        let table = crate::app::table_of("type Dog @table { id: ID @primaryKey name: String }");
        let change = Change {
            table: table.id,
            key: vec![0, 0, 0, 9, 1, 2, 3],
            event: Event::Delete,
            version: 1_700_000_000_000_001,
        };
        let back = decode(&encode(&table, &change, None, None)).unwrap();
        assert_eq!(
            (back.database.as_str(), back.table.as_str()),
            (table.database.as_str(), "Dog")
        );
        assert_eq!(back.change.version, change.version);
        assert_eq!(back.change.key, change.key);
        assert_eq!(back.change.event, Event::Delete);
        assert_eq!((back.delta, back.txn), (None, None));
        let three = vec![("n".to_owned(), Value::Int(3))];
        let txn = TxnMark {
            id: 1 << 40,
            parts: 3,
            changes: 7,
        };
        for d in [Delta::Add(three.clone()), Delta::Set(three.clone())] {
            let back = decode(&encode(&table, &change, Some(&d), Some(txn))).unwrap();
            assert_eq!((back.delta, back.txn), (Some(d), Some(txn)));
            assert_eq!(back.change.key, change.key);
        }
        // As nodes sent an addTo before: format 2, the map alone and no transaction.
        let mut old = encode(&table, &change, None, None);
        old[0] = FORMAT_ADDED;
        let names = 1 + 4 + table.database.len() + table.name.len();
        let map = Value::Object(three.clone()).to_msgpack();
        old.splice(names..names + 5, (map.len() as u32).to_be_bytes());
        old.splice(names + 4..names + 4, map);
        let back = decode(&old).unwrap();
        assert_eq!(back.delta, Some(Delta::Add(three)));
        assert_eq!(back.change.key, change.key);
        assert!(decode(&[2, 0]).is_none());
        // Packed by database into messages that fit, and split back as they were.
        let one = encode(&table, &change, None, None);
        let changes = (0..10).map(|i| (if i % 3 == 0 { "a" } else { "b" }, one.clone()));
        let messages = pack(changes, 1 + 3 * (4 + one.len()));
        let parts = |db| {
            let mut p: Vec<_> = messages.iter().filter(|m| m.0 == db).collect();
            p.sort_by_key(|m| m.1);
            p.iter()
                .map(|m| split(&m.2).unwrap().len())
                .collect::<Vec<_>>()
        };
        assert_eq!(parts("a"), [3, 1]);
        assert_eq!(parts("b"), [3, 3]);
        for m in &messages {
            for c in split(&m.2).unwrap() {
                assert_eq!(decode(c).unwrap().change.version, change.version);
            }
        }
        assert_eq!(split(&one).unwrap(), [one.as_slice()]);
        let m = Message {
            database: "data".into(),
            table: "Dog".into(),
            key: vec![1, 2],
            payload: b"{}".to_vec(),
            expires_at: Some(9),
            meta: vec![1, 255],
        };
        assert_eq!(decode_message(&encode_message(&m)), Some(m));
        assert_eq!(decode_message(&[0, 0, 0, 9, 1]), None);
        assert!(split(&[BATCH, 0, 0, 0, 9, 1]).is_none());
        assert_eq!(subject_token("a.b c>*"), "a_b_c__");
    }
}
