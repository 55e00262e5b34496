//! Replication between nodes over NATS JetStream: each node publishes the changes its shards
//! commit and applies those the other nodes publish, last writer wins per record.
//!
//! It runs on a thread of its own with a tokio runtime for the `async-nats` client: no executor
//! core ever waits on it. It reads the shards' audit logs (the outbox: a change committed is in
//! the log before anyone is answered) and writes through the shards' writer threads.
//!
//! - **Out.** For each shard, the audit entries after a cursor kept on disk are published to the
//!   stream [`STREAM`] under `tessera.<database>.<node>.<shard>`, each change with a message id
//!   (`<node>.<epoch>.<shard>.<entry>.<change>`) that makes publishing it again after a crash
//!   harmless (JetStream drops a duplicate within its window; applying one twice changes
//!   nothing). The cursor moves once JetStream has acknowledged everything before it.
//! - **In.** A durable consumer per node reads every node's subjects (its own it skips) and
//!   applies each change on its shard as [`WriteKind::Replicated`]: kept only if its version is
//!   newer than the record's, the shard's clock moved past it. A message is acknowledged after
//!   its write is durable, so a crash before that has it delivered again.
//!
//! Changes applied here carry their node in the audit log and are not published again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, stream};
use futures::{FutureExt, StreamExt};
use tessera_shards::ShardSet;
use tessera_storage::audit::{Audited, Operation, Origin, Provenance};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Event, WriteKind, WriteOp, table_prefix};
use tessera_storage::{Table, Value};

use crate::app::App;
use crate::app::settings::Replication;

/// The JetStream stream every node's changes go to.
pub const STREAM: &str = "tessera";
/// How long JetStream remembers a message id to drop a duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Audit entries published per shard at a time.
const BATCH_ENTRIES: usize = 256;
/// Messages applied together (one group commit per shard for all of them).
const BATCH_MESSAGES: usize = 512;
/// How often a shard with nothing new is looked at again.
const IDLE: Duration = Duration::from_millis(20);
/// The wait after a failure (NATS unreachable, say) before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// How long JetStream waits for this node to acknowledge a change before it delivers it again:
/// what a node that was killed mid-batch waits, when it comes back, for the changes it had been
/// handed (JetStream's default is 30 s; a batch here is applied in milliseconds).
const ACK_WAIT: Duration = Duration::from_secs(5);
/// The format of a published change (its first byte).
const FORMAT: u8 = 2;

/// Starts replicating: the thread returns at once; it connects (and reconnects) in the
/// background.
pub fn start(config: Replication, shards: Arc<ShardSet>, app: Arc<App>) -> anyhow::Result<()> {
    let dir = app.settings.root.join("data").join("replication");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let node = subject_token(&config.node);
    let epoch = epoch(&dir)?;
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
                dir,
            };
            runtime.block_on(node.run());
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
    /// Where the cursors are kept.
    dir: PathBuf,
}

impl Node {
    /// Connects, then publishes and applies until the process ends; starts again after an
    /// error.
    async fn run(self) {
        loop {
            if let Err(e) = self.session().await {
                tracing::warn!("replication: {e:#}; trying again");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn session(&self) -> anyhow::Result<()> {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.config.nats.as_str())
            .await
            .context("connecting to NATS")?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{STREAM}.>")],
                duplicate_window: DUPLICATE_WINDOW,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .context("creating the stream")?;
        let durable = format!("node-{}", self.name);
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: format!("{STREAM}.>"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .context("creating this node's consumer")?;
        tracing::info!("replication: connected; stream {STREAM}, consumer {durable}");
        self.app.cluster.connected(&self.name, true);
        let served = futures::try_join!(self.publish(&js), self.apply(&consumer));
        self.app.cluster.connected(&self.name, false);
        served?;
        Ok(())
    }

    /// Publishes what every shard commits, for as long as the connection lasts.
    async fn publish(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        let shards = self.shards.count();
        let mut cursors: Vec<Option<u64>> = (0..shards).map(|s| self.cursor(s)).collect();
        loop {
            // Worked out when a shard has something to send, not on every idle look.
            let mut tables: Option<HashMap<u32, Arc<Table>>> = None;
            let mut idle = true;
            for (shard, cursor) in cursors.iter_mut().enumerate() {
                let Some(store) = self.shards.store(shard) else {
                    continue;
                };
                let entries = store
                    .audit_after(*cursor, BATCH_ENTRIES)
                    .context("reading the audit log")?;
                let Some(&(last, _)) = entries.last() else {
                    continue;
                };
                idle = false;
                let tables = tables.get_or_insert_with(|| self.tables_by_id());
                let mut acks = Vec::new();
                for (seq, changes) in &entries {
                    for (i, audited) in changes.iter().enumerate() {
                        let Some((subject, payload)) = self.outgoing(tables, shard, audited) else {
                            continue;
                        };
                        let mut headers = async_nats::HeaderMap::new();
                        let id = format!("{}.{}.{shard}.{seq}.{i}", self.name, self.epoch);
                        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                        let ack = js
                            .publish_with_headers(subject, headers, payload.into())
                            .await
                            .context("publishing")?;
                        acks.push(ack);
                    }
                }
                for ack in acks {
                    ack.await.context("JetStream did not store a change")?;
                }
                *cursor = Some(last);
                self.keep_cursor(shard, last)?;
            }
            if idle {
                tokio::time::sleep(IDLE).await;
            }
        }
    }

    /// The subject and payload a change goes out as; `None` for one that does not (applied
    /// from another node, of a dropped table, or of a database that does not replicate).
    fn outgoing(
        &self,
        tables: &HashMap<u32, Arc<Table>>,
        shard: usize,
        audited: &Audited,
    ) -> Option<(String, Vec<u8>)> {
        if audited
            .origin
            .as_ref()
            .is_some_and(|(o, _)| o.operation == Operation::Replicated)
        {
            return None;
        }
        let change = &audited.change;
        let table = tables.get(&change.table)?;
        if !table.replicate || !self.replicates(&table.database) {
            return None;
        }
        let subject = format!(
            "{STREAM}.{}.{}.{shard}",
            subject_token(&table.database),
            self.name
        );
        Some((subject, encode(table, change, audited.added.as_deref())))
    }

    fn replicates(&self, database: &str) -> bool {
        self.config
            .databases
            .as_ref()
            .is_none_or(|dbs| dbs.iter().any(|d| d == database))
    }

    /// Applies every other node's changes, for as long as the connection lasts.
    async fn apply(&self, consumer: &consumer::PullConsumer) -> anyhow::Result<()> {
        let mut messages = consumer.messages().await.context("consuming")?;
        while let Some(first) = messages.next().await {
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
                .map(|m| self.apply_one(m.subject.as_str(), &m.payload));
            let results = futures::future::join_all(writes).await;
            for (m, result) in batch.iter().zip(results) {
                match result {
                    Ok(()) => {}
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
        }
        Ok(())
    }

    /// Applies one published change (one of this node's own is left alone).
    async fn apply_one(&self, subject: &str, payload: &[u8]) -> Result<(), Apply> {
        let mut parts = subject.splitn(4, '.');
        let origin = parts.nth(2).unwrap_or_default();
        if origin == self.name {
            return Ok(());
        }
        let (database, name, change, added) =
            decode(payload).ok_or_else(|| Apply::Skip("not a change this node can read".into()))?;
        if !self.replicates(&database) {
            return Ok(());
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
            Event::Message { .. } => return Ok(()),
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
                added,
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
        self.shards
            .write(op)
            .await
            .map_err(|e| Apply::Retry(e.to_string()))?;
        let now_ms = tessera_storage::shard::now_micros() / 1000;
        self.app
            .cluster
            .received(origin, &database, version, now_ms);
        Ok(())
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

    fn cursor_path(&self, shard: usize) -> PathBuf {
        self.dir.join(format!("shard-{shard}.cursor"))
    }

    /// The last audit entry of `shard` published (`None`: none yet).
    fn cursor(&self, shard: usize) -> Option<u64> {
        let b = std::fs::read(self.cursor_path(shard)).ok()?;
        Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
    }

    fn keep_cursor(&self, shard: usize, seq: u64) -> anyhow::Result<()> {
        tessera_storage::layout::write_atomically(
            &self.cursor_path(shard),
            &seq.to_be_bytes(),
            0o600,
        )
        .context("keeping the replication cursor")
    }
}

/// When this node's data began (µs since the epoch), kept in `dir`: part of every message id,
/// whose audit entry numbers start again with a new data directory. A node wiped and started
/// again under the same name would otherwise have its first changes taken by JetStream for
/// duplicates of its old ones.
fn epoch(dir: &std::path::Path) -> anyhow::Result<u64> {
    let path = dir.join("epoch");
    if let Ok(b) = std::fs::read(&path)
        && let Ok(b) = <[u8; 8]>::try_from(b.as_slice())
    {
        return Ok(u64::from_be_bytes(b));
    }
    let now = tessera_storage::shard::now_micros();
    tessera_storage::layout::write_atomically(&path, &now.to_be_bytes(), 0o600)
        .context("keeping the replication epoch")?;
    Ok(now)
}

/// Why a change was not applied.
enum Apply {
    /// A failure here (the store): not acknowledged, so delivered again.
    Retry(String),
    /// A change this node cannot apply (no such table): acknowledged and logged.
    Skip(String),
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

/// What an `addTo` added (attribute, amount).
type Added = Vec<(String, Value)>;

/// A change as published: `FORMAT`, the database and table names (each a u16 BE length and
/// the bytes: table ids are each node's own), what an `addTo` added (a u32 BE length, 0 for
/// none, and a MessagePack map), then [`Change::encode`].
fn encode(table: &Table, change: &Change, added: Option<&[(String, Value)]>) -> Vec<u8> {
    let body = change.encode();
    let mut out = Vec::with_capacity(9 + table.database.len() + table.name.len() + body.len());
    out.push(FORMAT);
    for name in [&table.database, &table.name] {
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Some(added) = added {
        Value::Object(added.to_vec()).write_msgpack(&mut out);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&body);
    out
}

/// [`encode`] undone: database, table, change and what an `addTo` added.
fn decode(b: &[u8]) -> Option<(String, String, Change, Option<Added>)> {
    if *b.first()? != FORMAT {
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
    let added = match take(4)? {
        [] => None,
        map => match tessera_storage::value::from_msgpack(map).ok()? {
            Value::Object(pairs) => Some(pairs),
            _ => return None,
        },
    };
    Some((database, table, Change::decode(rest)?, added))
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
        let (db, name, back, added) = decode(&encode(&table, &change, None)).unwrap();
        assert_eq!(
            (db.as_str(), name.as_str()),
            (table.database.as_str(), "Dog")
        );
        assert_eq!(back.version, change.version);
        assert_eq!(back.key, change.key);
        assert_eq!(back.event, Event::Delete);
        assert_eq!(added, None);
        let three = vec![("n".to_owned(), Value::Int(3))];
        let (.., added) = decode(&encode(&table, &change, Some(&three))).unwrap();
        assert_eq!(added, Some(three));
        assert!(decode(&[2, 0]).is_none());
        assert_eq!(subject_token("a.b c>*"), "a_b_c__");
    }
}
