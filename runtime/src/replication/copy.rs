//! A node that joins without the history it needs copies the current data from a peer, then
//! tails the stream from where that copy stands: a new node (it has no consumer yet), a node
//! whose data directory is new (wiped), and one whose consumer is behind the stream's retention.
//!
//! The copy asks a peer over plain NATS request and reply (`tessera-copy.<peer>`): first its
//! plan (its shards, the tables that replicate, the schema its Operations API made, its users),
//! then, for each table and each of the peer's shards, batches of records in key order after a
//! cursor, each applied here as a replicated write (so last writer wins against anything newer
//! already here). The cursor is on disk after each batch is durable (`<root>/data/replication/
//! copy`): a copy cut short by a crash goes on from there, with bounded memory. The stream is
//! then tailed from the first message the peer had not applied when the copy began, so nothing
//! committed anywhere falls between the copy and the tail.

use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tessera_storage::audit::{Operation, Origin, Provenance};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{WriteKind, WriteOp, table_prefix};

use super::{ACK_WAIT, Node, STREAM};
use crate::app::tables::Made;

/// The subjects (`<COPY>.<node>`) a node answers copy requests on.
pub(super) const COPY: &str = "tessera-copy";
/// Records per batch, at most (and no more bytes than a message takes).
const BATCH_RECORDS: usize = 1000;
/// How long a peer has to answer one request.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// A request to a peer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
enum Ask {
    /// Its [`Plan`].
    Plan,
    /// Records of `database.table` on its shard `shard` after key `after` (the key without its
    /// table prefix; from the first when `None`).
    Records {
        database: String,
        table: String,
        shard: usize,
        after: Option<Vec<u8>>,
    },
}

/// What a peer holds, for a copy.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    shards: usize,
    /// The tables that replicate, (database, name).
    tables: Vec<(String, String)>,
    made: Made,
    /// [`crate::auth::users::Users::snapshot`], as text.
    users: String,
}

/// A copy under way, as kept on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    peer: String,
    /// The stream sequence the tail starts at.
    start: u64,
    /// Tables done, in the plan's order, and, in the current one, shards done.
    tables_done: usize,
    shards_done: usize,
    /// The last key copied of the current table and shard.
    after: Option<Vec<u8>>,
    records: u64,
}

impl Node {
    /// The consumer this node tails the stream with, made after a copy when it needs one.
    pub(super) async fn join(
        &self,
        client: &async_nats::Client,
        stream: &mut stream::Stream,
    ) -> anyhow::Result<consumer::PullConsumer> {
        let durable = format!("node-{}", self.name);
        // Only a consumer JetStream says it does not have is missing: any other failure (a
        // JetStream cluster electing a leader answers 503) is tried again, not taken for a new
        // node's start (a copy, without the deletes made meanwhile).
        let existing = match stream.consumer_info(&durable).await {
            Ok(info) => Some(info),
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
            {
                None
            }
            Err(e) => return Err(anyhow::anyhow!("reading this node's consumer: {e}")),
        };
        let first = stream
            .info()
            .await
            .context("reading the stream")?
            .state
            .first_sequence;
        let progress = self.progress();
        let needs_copy = progress.is_some()
            || match &existing {
                // A new data directory under a known name: its consumer's place means nothing.
                Some(_) if self.fresh.get() => true,
                // Behind what the stream still holds.
                Some(c) => c.delivered.stream_sequence + 1 < first,
                None => true,
            };
        let mut start = None;
        if needs_copy {
            if existing.is_some() {
                stream
                    .delete_consumer(&durable)
                    .await
                    .context("dropping this node's old consumer")?;
            }
            start = self.copy(client, stream, progress).await?;
        }
        let deliver_policy = match start {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::All,
        };
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                consumer::pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: format!("{STREAM}.>"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .context("creating this node's consumer")?;
        let _ = std::fs::remove_file(self.dir.join("copy"));
        self.fresh.set(false);
        Ok(consumer)
    }

    /// Copies from the peer furthest along (or the one a copy cut short was using) and returns
    /// the stream sequence to tail from; `None` when there is no peer (the first node).
    async fn copy(
        &self,
        client: &async_nats::Client,
        stream: &mut stream::Stream,
        progress: Option<Progress>,
    ) -> anyhow::Result<Option<u64>> {
        let mut p = match progress {
            Some(p) => p,
            None => {
                let own = format!("node-{}", self.name);
                let mut best: Option<(String, u64)> = None;
                let mut consumers = stream.consumers();
                while let Some(info) = consumers.next().await {
                    let info = info.map_err(|e| anyhow::anyhow!("listing consumers: {e}"))?;
                    let Some(peer) = info.name.strip_prefix("node-") else {
                        continue;
                    };
                    let floor = info.ack_floor.stream_sequence;
                    if info.name != own && best.as_ref().is_none_or(|(_, f)| floor > *f) {
                        best = Some((peer.to_owned(), floor));
                    }
                }
                let Some((peer, floor)) = best else {
                    return Ok(None);
                };
                Progress {
                    peer,
                    start: floor + 1,
                    ..Default::default()
                }
            }
        };
        if p.records > 0 {
            tracing::info!(
                "replication: resuming the copy from node {} after {} records",
                p.peer,
                p.records
            );
        } else {
            tracing::info!("replication: copying the data of node {} ...", p.peer);
        }
        let began = std::time::Instant::now();
        let plan: Plan = serde_json::from_slice(&self.ask(client, &p.peer, &Ask::Plan).await?)
            .context("the peer's plan")?;
        for d in self
            .app
            .tables
            .adopt(&plan.made)
            .map_err(|e| anyhow::anyhow!(e.message))?
        {
            tracing::info!("replication: made {d}, as node {} has it", p.peer);
        }
        self.users
            .merge(plan.users.as_bytes())
            .context("taking the peer's users")?;
        self.keep_progress(&p)?;
        while p.tables_done < plan.tables.len() {
            let (database, table) = &plan.tables[p.tables_done];
            while p.shards_done < plan.shards {
                let ask = Ask::Records {
                    database: database.clone(),
                    table: table.clone(),
                    shard: p.shards_done,
                    after: p.after.clone(),
                };
                let batch = self.ask(client, &p.peer, &ask).await?;
                let (records, done) = decode_batch(&batch).context("a batch of records")?;
                if let Some(last) = records.last() {
                    p.after = Some(last.0.to_vec());
                }
                p.records += records.len() as u64;
                self.apply_copied(database, table, &p.peer, records).await?;
                if done {
                    p.shards_done += 1;
                    p.after = None;
                }
                self.keep_progress(&p)?;
            }
            p.tables_done += 1;
            p.shards_done = 0;
        }
        let secs = began.elapsed().as_secs_f64();
        tracing::info!(
            "replication: copied {} records from node {} in {secs:.1} s; tailing the stream from {}",
            p.records,
            p.peer,
            p.start
        );
        Ok(Some(p.start))
    }

    /// Writes copied records here, each as a replicated write, and returns once all are durable.
    async fn apply_copied(
        &self,
        database: &str,
        table: &str,
        peer: &str,
        records: Vec<Copied<'_>>,
    ) -> anyhow::Result<()> {
        let Some(table) = self.app.tables.table(database, table) else {
            tracing::warn!("replication: no table {database}.{table} here to copy into");
            return Ok(());
        };
        let origin = Arc::new(Origin {
            at: 0,
            operation: Operation::Replicated,
            user: peer.into(),
        });
        let mut writes = Vec::with_capacity(records.len());
        for (key, stored) in records {
            let Some(r) = RecordRef::parse(stored) else {
                continue;
            };
            let record = tessera_storage::value::from_msgpack(r.body)
                .map_err(|e| anyhow::anyhow!("a copied record that does not decode: {e}"))?;
            let mut full = table_prefix(table.id).to_vec();
            full.extend_from_slice(key);
            writes.push(self.shards.write(WriteOp {
                table: table.clone(),
                key: full,
                kind: WriteKind::Replicated {
                    record: Some(record),
                    version: r.version,
                    expires_at: r.expires_at,
                    delta: None,
                },
                from: Some(Provenance {
                    origin: origin.clone(),
                    index: 0,
                }),
            }));
        }
        for result in futures::future::join_all(writes).await {
            result.context("storing a copied record")?;
        }
        Ok(())
    }

    /// Asks `peer` and waits for its answer.
    async fn ask(
        &self,
        client: &async_nats::Client,
        peer: &str,
        ask: &Ask,
    ) -> anyhow::Result<Vec<u8>> {
        let subject = format!("{COPY}.{peer}");
        let request = client.request(subject, serde_json::to_vec(ask)?.into());
        let answer = tokio::time::timeout(ANSWER_WITHIN, request)
            .await
            .with_context(|| format!("node {peer} did not answer in time"))?
            .with_context(|| format!("asking node {peer}"))?;
        if let Some(error) = answer.payload.strip_prefix(b"error: ") {
            anyhow::bail!("node {peer}: {}", String::from_utf8_lossy(error));
        }
        Ok(answer.payload.to_vec())
    }

    /// Answers the other nodes' copy requests, for as long as the connection lasts.
    pub(super) async fn serve_copies(
        &self,
        client: &async_nats::Client,
        mut requests: async_nats::Subscriber,
        max_payload: usize,
    ) -> anyhow::Result<()> {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply else {
                continue;
            };
            let answer = match serde_json::from_slice::<Ask>(&request.payload) {
                Ok(ask) => self
                    .answer(&ask, max_payload)
                    .unwrap_or_else(|e| format!("error: {e:#}").into_bytes()),
                Err(e) => format!("error: not a request: {e}").into_bytes(),
            };
            client
                .publish(reply, answer.into())
                .await
                .context("answering a copy request")?;
        }
        Ok(())
    }

    fn answer(&self, ask: &Ask, max_payload: usize) -> anyhow::Result<Vec<u8>> {
        match ask {
            Ask::Plan => {
                let tables = self
                    .app
                    .tables
                    .tables(None)
                    .into_iter()
                    .filter(|t| {
                        t.replicate && t.database != "system" && self.replicates(&t.database)
                    })
                    .map(|t| (t.database.clone(), t.name.clone()))
                    .collect();
                let plan = Plan {
                    shards: self.shards.count(),
                    tables,
                    made: self
                        .app
                        .tables
                        .made(|d| d != "system" && self.replicates(d)),
                    users: String::from_utf8(self.users.snapshot()).unwrap_or_default(),
                };
                Ok(serde_json::to_vec(&plan)?)
            }
            Ask::Records {
                database,
                table,
                shard,
                after,
            } => {
                let t = self
                    .app
                    .tables
                    .table(database, table)
                    .with_context(|| format!("no table {database}.{table}"))?;
                let store = self
                    .shards
                    .store(*shard)
                    .with_context(|| format!("no shard {shard}"))?;
                let prefix = table_prefix(t.id);
                let lo = match after {
                    // The first key after `after`.
                    Some(a) => [prefix.as_slice(), a, &[0]].concat(),
                    None => prefix.to_vec(),
                };
                let hi = table_prefix(t.id.saturating_add(1)).to_vec();
                let mut out = vec![0u8];
                let mut done = true;
                for (n, kv) in store.view().scan_range(lo, hi).enumerate() {
                    let (k, v) = kv?;
                    if n == BATCH_RECORDS || out.len() + k.len() + v.len() + 8 > max_payload {
                        done = false;
                        break;
                    }
                    for part in [&k[4..], &v[..]] {
                        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        out.extend_from_slice(part);
                    }
                }
                out[0] = u8::from(done);
                Ok(out)
            }
        }
    }

    fn progress(&self) -> Option<Progress> {
        let b = std::fs::read(self.dir.join("copy")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn keep_progress(&self, p: &Progress) -> anyhow::Result<()> {
        tessera_storage::layout::write_atomically(
            &self.dir.join("copy"),
            &serde_json::to_vec(p)?,
            0o600,
        )
        .context("keeping the copy's progress")
    }
}

/// A copied record: its key without the table prefix, and its stored bytes.
type Copied<'b> = (&'b [u8], &'b [u8]);

/// A batch as [`Node::answer`] sends it: whether the shard is done (one byte), then each record's
/// key (without its table prefix) and stored bytes, each a u32 BE length and the bytes.
fn decode_batch(b: &[u8]) -> Option<(Vec<Copied<'_>>, bool)> {
    fn take<'b>(rest: &mut &'b [u8]) -> Option<&'b [u8]> {
        let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let part = rest.get(4..4 + n)?;
        *rest = &rest[4 + n..];
        Some(part)
    }
    let done = *b.first()? == 1;
    let mut rest = &b[1..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        records.push((take(&mut rest)?, take(&mut rest)?));
    }
    Some((records, done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_and_a_broken_one_does_not() {
        let mut b = vec![1];
        for part in [&b"k1"[..], b"v1", b"k2", b"value two"] {
            b.extend_from_slice(&(part.len() as u32).to_be_bytes());
            b.extend_from_slice(part);
        }
        let (records, done) = decode_batch(&b).unwrap();
        assert!(done);
        assert_eq!(records, [(&b"k1"[..], &b"v1"[..]), (b"k2", b"value two")]);
        assert!(decode_batch(&b[..b.len() - 1]).is_none());
        assert_eq!(decode_batch(&[0]).unwrap(), (Vec::new(), false));
    }
}
