//! One shard's store: a fjall database with a `records` keyspace, an `index` keyspace and an
//! `audit` keyspace.
//!
//! Keys: `records` = `table id (u32 BE) ++ key(primary key)`; `index` = `table id ++ attribute id
//! (u16 BE) ++ key(value) ++ key(primary key)` with an empty value; `audit` = `commit sequence
//! (u64 BE)` with the [`Change`]s one write group made and their origins (`audit.rs`). The audit log is keyed
//! in commit order, not by version: a cross-shard transaction's part is versioned when prepared
//! and committed later, and FIFO compaction needs keys that only grow. A write group
//! ([`ShardStore::apply`]) reads the old records, builds the new ones with their timestamps, and
//! commits records, index changes and the group's audit entry in one fjall batch, so a record,
//! its index entries and its audit entry are never seen apart. The audit keyspace keeps only
//! recent changes: FIFO compaction drops its oldest tables beyond [`AUDIT_BYTES`].
//! [`ShardStore::persist`] makes committed groups durable; the caller (the shard's writer
//! thread) decides when, which is what makes group commit possible. Point reads of records go
//! through the shard's [`ReadCache`]; a commit that writes records takes their keys out of it.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::config::{CompressionPolicy, HashRatioPolicy};
use fjall::{
    CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Slice,
};
use hashbrown::HashMap;

use crate::audit::{AuditEntry, Audited, Provenance};
use crate::history::{Delta, DeltaRef, History, Partial, Verdict};
use crate::key::{self, KeyError};
use crate::read_cache::ReadCache;
use crate::record::{self, RecordRef};
use crate::schema::Table;
use crate::value::{self, DecodeError, Value};

/// Disk kept for one shard's audit log; older changes are dropped a table at a time.
pub const AUDIT_BYTES: u64 = 32 << 20;

/// Audit entries read to find the last version a shard gave out.
const LAST_VERSION_SCAN: usize = 4096;

/// Memtable of the audit keyspace: small, because its entries are only read back after a
/// restart.
const AUDIT_MEMTABLE: u64 = 2 << 20;
/// The journals a shard keeps before it flushes the memtables that hold the oldest (fjall's
/// least, as a journal is sealed at 64 MiB).
const JOURNAL_BYTES: u64 = 128 << 20;

/// Hash index slots per key in the records keyspace's data blocks (fjall's
/// `data_block_hash_ratio_policy`; 0 builds none).
const RECORDS_HASH_RATIO: f32 = 0.75;

/// Size budget of one shard's store.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// fjall's block cache.
    pub cache_bytes: u64,
    pub memtable_bytes: u64,
    /// Recently read records ([`ReadCache`]).
    pub read_cache_bytes: u64,
    /// Whether each record's history (`history.rs`: its last full write, a delete's as a
    /// tombstone, and the partial writes since) is kept, by key: replication needs them, so
    /// that a change older than a delete does not bring the record back, a late change is
    /// applied under newer patches, and an `addTo` delivered twice is counted once.
    pub tombstones: bool,
    /// This node's name, for Harper's tie rule between two nodes' writes of one version (the
    /// greater name wins): the last full write of a record made here is kept without one.
    pub node: Box<str>,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            cache_bytes: 16 << 20,
            memtable_bytes: 8 << 20,
            read_cache_bytes: 16 << 20,
            tombstones: false,
            node: "".into(),
        }
    }
}

/// When a committed write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the journal is fsynced (fdatasync).
    Durable,
    /// After the journal is written to the OS (survives a process crash, not a power loss).
    Buffered,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Fjall(#[from] fjall::Error),
    #[error("stored record {0} is corrupt")]
    Corrupt(String),
    #[error("stored record: {0}")]
    Decode(#[from] DecodeError),
    #[error("prepared transaction {0} is corrupt")]
    CorruptIntent(u64),
}

/// What a write does to its record.
#[derive(Debug, Clone)]
pub enum WriteKind {
    /// Create or fully replace with this (validated) record; `@createdTime` survives.
    Put(Value),
    /// Merge these top-level properties into the record, creating it if missing.
    Patch(Value),
    /// Create the record only if it does not exist (else nothing: the outcome says it existed).
    Insert(Value),
    /// Merge these top-level properties into the record only if it exists.
    Update(Value),
    /// Add each number to its property (a missing or non-numeric property counts as 0),
    /// creating the record if missing: the Resource API's `addTo` (and, negated,
    /// `subtractFrom`). Computed from the stored record inside the write, so concurrent
    /// increments never lose one another.
    Add(Vec<(String, Value)>),
    Delete,
    /// Create or fully replace with this (validated) record as a caching table's source gave
    /// it, expiring at `expires_at` (ms since the epoch) when the source said when, else after
    /// the table's expiration: otherwise a [`WriteKind::Put`].
    Loaded {
        record: Value,
        expires_at: Option<u64>,
    },
    /// Delete the record if it expired at or before this instant (ms), else leave it: eviction,
    /// which must not remove a record rewritten since it was found expired.
    Evict(u64),
    /// A change another node committed (replication): the record as that node stored it
    /// (`None`: deleted) at its version, applied by Harper's rules (last writer wins, a late
    /// change applied under newer patches: see `history.rs`); the shard's clock moves past its
    /// version (a hybrid logical clock). Its audit entry names the node, so that it is not sent
    /// on again.
    Replicated {
        record: Option<Value>,
        version: u64,
        expires_at: Option<u64>,
        /// For another node's partial write (a patch or an `addTo`): what it changed, made here
        /// to the record as it is here (concurrent increments on several nodes sum up;
        /// concurrent patches of different properties both stay). `record` is then not used.
        delta: Option<Delta>,
    },
    /// Nothing is stored: a message to the record's subscribers (a non-retained MQTT publish),
    /// ordered with the record's writes, undeliverable after `expires_at` (ms) when given.
    Message {
        payload: Vec<u8>,
        expires_at: Option<u64>,
        /// What the front that published it keeps with it for its subscribers (MQTT: the
        /// publish's QoS and MQTT 5 properties); opaque here.
        meta: Vec<u8>,
    },
}

/// What a committed write tells the record's subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The record as stored now (header + MessagePack).
    Put(Vec<u8>),
    Delete,
    Message {
        payload: Vec<u8>,
        /// When the message may no longer be delivered (ms since the epoch).
        expires_at: Option<u64>,
        /// What the publishing front keeps with it ([`WriteKind::Message`]).
        meta: Vec<u8>,
    },
}

/// One committed change, in write order within its shard.
#[derive(Debug, Clone)]
pub struct Change {
    pub table: u32,
    /// The record key (table prefix + primary key).
    pub key: Vec<u8>,
    pub event: Event,
    /// The version of the write (µs).
    pub version: u64,
}

impl Change {
    /// `version (u64 BE) ++ table (u32 BE) ++ key len (u32 BE) ++ key ++ event`, the event being
    /// `0 ++ stored record`, `1` (delete), `2 ++ expires at (u64 BE ms, 0: never) ++ payload` (a
    /// message without meta) or `3 ++ expires at ++ meta len (u32 BE) ++ meta ++ payload`.
    pub fn encode(&self) -> Vec<u8> {
        let body = match &self.event {
            Event::Put(stored) => stored.len(),
            Event::Delete => 0,
            Event::Message { payload, meta, .. } => 12 + meta.len() + payload.len(),
        };
        let mut out = Vec::with_capacity(17 + self.key.len() + body);
        match &self.event {
            Event::Message {
                payload,
                expires_at,
                meta,
            } => {
                Self::encode_head(&mut out, self.version, self.table, &self.key);
                out.push(if meta.is_empty() { 2 } else { 3 });
                out.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
                if !meta.is_empty() {
                    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
                    out.extend_from_slice(meta);
                }
                out.extend_from_slice(payload);
            }
            Event::Put(stored) => {
                Self::encode_stored(&mut out, self.version, self.table, &self.key, Some(stored))
            }
            Event::Delete => {
                Self::encode_stored(&mut out, self.version, self.table, &self.key, None)
            }
        }
        out
    }

    /// Appends the encoding of a put of `stored` (`None`: a delete) without building the
    /// [`Change`] (which would copy the key and the record).
    pub(crate) fn encode_stored(
        out: &mut Vec<u8>,
        version: u64,
        table: u32,
        key: &[u8],
        stored: Option<&[u8]>,
    ) {
        Self::encode_head(out, version, table, key);
        match stored {
            Some(stored) => {
                out.push(0);
                out.extend_from_slice(stored);
            }
            None => out.push(1),
        }
    }

    fn encode_head(out: &mut Vec<u8>, version: u64, table: u32, key: &[u8]) {
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&table.to_be_bytes());
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
    }

    /// The version of the change [`Self::encode`] wrote, read without decoding the rest.
    pub(crate) fn version_of(b: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
    }

    /// The table of the change [`Self::encode`] wrote, read without decoding the rest.
    pub(crate) fn table_of(b: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(b.get(8..12)?.try_into().ok()?))
    }

    /// The change [`Self::encode`] wrote; `None` for anything else.
    pub fn decode(b: &[u8]) -> Option<Change> {
        let u32_at = |at: usize| Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?));
        let version = Self::version_of(b)?;
        let table = u32_at(8)?;
        let key_end = 16usize.checked_add(u32_at(12)? as usize)?;
        let key = b.get(16..key_end)?.to_vec();
        let rest = b.get(key_end + 1..)?;
        let event = match b.get(key_end)? {
            0 => Event::Put(rest.to_vec()),
            1 if rest.is_empty() => Event::Delete,
            tag @ (2 | 3) => {
                let expires = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
                let (meta, payload) = if *tag == 3 {
                    let len = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
                    let end = 12usize.checked_add(len)?;
                    (rest.get(12..end)?.to_vec(), rest.get(end..)?.to_vec())
                } else {
                    (Vec::new(), rest[8..].to_vec())
                };
                Event::Message {
                    payload,
                    expires_at: (expires != 0).then_some(expires),
                    meta,
                }
            }
            _ => return None,
        };
        Some(Change {
            table,
            key,
            event,
            version,
        })
    }
}

/// One record write, addressed by its full `records` key.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub table: Arc<Table>,
    pub key: Vec<u8>,
    pub kind: WriteKind,
    /// The operation it is part of, for the audit log (`None`: not recorded).
    pub from: Option<Provenance>,
}

impl WriteOp {
    /// A write with no origin recorded.
    pub fn new(table: Arc<Table>, key: Vec<u8>, kind: WriteKind) -> WriteOp {
        WriteOp {
            table,
            key,
            kind,
            from: None,
        }
    }
}

/// The result of one write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The new version (µs); for a delete, the version of the deletion.
    pub version: u64,
    /// Whether a live record existed before (for [`WriteKind::Evict`]: whether it was removed).
    pub existed: bool,
}

/// A per-shard source of versions: microseconds since the epoch, strictly increasing.
#[derive(Debug, Default)]
pub struct Clock {
    last: u64,
}

impl Clock {
    /// A clock whose versions all come after `version` (the last one a shard stored), so that
    /// versions keep increasing across restarts whatever the system clock does.
    pub fn after(version: u64) -> Clock {
        Clock { last: version }
    }

    /// Notes a version made elsewhere (another node's): the versions after it come later.
    pub fn observe(&mut self, version: u64) {
        self.last = self.last.max(version);
    }

    pub fn tick(&mut self) -> u64 {
        let now = now_micros();
        self.last = now.max(self.last + 1);
        self.last
    }
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The `records` key prefix of a table.
pub fn table_prefix(table_id: u32) -> [u8; 4] {
    table_id.to_be_bytes()
}

/// The `records` key of a record.
pub fn record_key(table_id: u32, pk: &Value) -> Result<Vec<u8>, KeyError> {
    let mut k = Vec::with_capacity(24);
    k.extend_from_slice(&table_prefix(table_id));
    key::encode(pk, &mut k)?;
    Ok(k)
}

/// The `index` key prefix of one attribute's index.
pub fn index_prefix(table_id: u32, attribute_id: u16) -> [u8; 6] {
    let mut p = [0u8; 6];
    p[..4].copy_from_slice(&table_id.to_be_bytes());
    p[4..].copy_from_slice(&attribute_id.to_be_bytes());
    p
}

/// A shard's fjall database.
pub struct ShardStore {
    db: Database,
    records: Keyspace,
    index: Keyspace,
    /// Prepared parts of cross-shard transactions: `txid (u64 BE)` -> [`Intent`] bytes.
    intents: Keyspace,
    /// Commit markers: `txid` -> empty, written with the resolve that applies this shard's part
    /// of a committed cross-shard transaction, kept until every part is durably resolved.
    markers: Keyspace,
    /// Recent changes: `commit sequence (u64 BE)` -> the group's [`AuditEntry`].
    audit: Keyspace,
    /// The key of the next audit entry.
    audit_seq: AtomicU64,
    /// The audit entries numbered below this are persisted (as the durability mode promises):
    /// replication publishes no change its own node could still lose.
    persisted_seq: AtomicU64,
    /// Point reads of `records`; every batch that writes records takes its keys out.
    cache: ReadCache,
    /// The version of each record's last full write (put or delete; a delete's is its
    /// tombstone), by key, when [`ShardOptions::tombstones`] keeps them.
    tombstones: Option<Keyspace>,
    /// [`ShardOptions::node`].
    node: Box<str>,
}

/// The record a write leaves (`None`: removed), from the old one as `full` (read when the write
/// merges into it) and its creation time, stamped at `stamp` (ms).
fn new_record<'v>(
    table: &Table,
    kind: &'v WriteKind,
    full: Option<Value>,
    created: Option<Value>,
    stamp: f64,
) -> Option<Cow<'v, Value>> {
    match kind {
        WriteKind::Delete | WriteKind::Evict(_) | WriteKind::Message { .. } => None,
        // As its node stored it, stamps included (its partial writes: `replicated_record`).
        WriteKind::Replicated { record, .. } => record.as_ref().map(Cow::Borrowed),
        WriteKind::Put(v) | WriteKind::Insert(v) | WriteKind::Loaded { record: v, .. } => {
            Some(stamped(table, Cow::Borrowed(v), created, stamp))
        }
        WriteKind::Patch(props) | WriteKind::Update(props) => {
            let merged = match (full, props) {
                // A new record made of the properties as sent: no merge to do.
                (None, Value::Object(ps)) if !has_repeated_names(ps) => Cow::Borrowed(props),
                (full, props) => {
                    let mut v = full.unwrap_or_else(|| Value::Object(Vec::new()));
                    if let Value::Object(ps) = props {
                        v.merge(ps.clone());
                    }
                    Cow::Owned(v)
                }
            };
            Some(stamped(table, merged, created, stamp))
        }
        WriteKind::Add(deltas) => Some(stamped(
            table,
            Cow::Owned(DeltaRef::Add(deltas).apply(full)),
            created,
            stamp,
        )),
    }
}

/// The record another node's change leaves here, and its version: a full write as that node
/// stored it, a partial write made to the record here (`old`); either, when partial writes
/// newer than it are kept (`rebuild`), with those applied again on top.
#[allow(clippy::too_many_arguments)]
fn replicated_record<'v>(
    table: &Table,
    record: &'v Option<Value>,
    delta: Option<DeltaRef<'_>>,
    (old_full, old_created): (Option<Value>, Option<Value>),
    h: &History,
    version: u64,
    rebuild: bool,
    old_version: u64,
) -> (Option<Cow<'v, Value>>, u64) {
    let newest = h.newest().unwrap_or(version).max(version);
    let stamp = |at: u64| at as f64 / 1000.0;
    match (delta, rebuild) {
        (None, false) => (record.as_ref().map(Cow::Borrowed), version),
        (None, true) => {
            let created = table
                .created_time()
                .and_then(|c| record.as_ref()?.get(c).cloned());
            let v = h.rebuild(version, record.clone(), None);
            let v = stamped(table, Cow::Owned(v), created, stamp(newest));
            (Some(v), newest)
        }
        (Some(d), _) => {
            let base = d.apply(old_full);
            let (v, at) = match d {
                _ if !rebuild => (base, version),
                DeltaRef::Set(props) => {
                    let reset = props.iter().map(|(k, _)| k.clone()).collect();
                    (h.rebuild(version, Some(base), Some(reset)), newest)
                }
                DeltaRef::Add(_) => (h.rebuild(version, Some(base), Some(Vec::new())), newest),
            };
            // An increment older than the record keeps the record's version.
            let at = at.max(old_version);
            (
                Some(stamped(table, Cow::Owned(v), old_created, stamp(at))),
                at,
            )
        }
    }
}

/// Notes in `changes` the index entries a write removes (`false`) and adds (`true`); both lists
/// are sorted.
fn diff_index(old: &[Vec<u8>], new: Vec<Vec<u8>>, changes: &mut HashMap<Vec<u8>, bool>) {
    for e in old {
        if new.binary_search(e).is_err() {
            changes.insert(e.clone(), false);
        }
    }
    for e in new {
        if old.binary_search(&e).is_err() {
            changes.insert(e, true);
        }
    }
}

/// The fjall mutations of a write group, computed but not yet committed: the new bytes of each
/// record (`None`: removed), each index entry to insert (`true`) or remove, and the group's
/// audit entry.
#[derive(Debug, Default)]
pub struct Mutations {
    records: HashMap<Vec<u8>, Option<Vec<u8>>>,
    index: HashMap<Vec<u8>, bool>,
    audit: AuditEntry,
    /// What replication keeps of each record written (`history.rs`), for the tombstones
    /// keyspace (not part of a cross-shard intent: a part redone after a crash leaves none).
    histories: Vec<(Vec<u8>, History)>,
}

impl Mutations {
    /// Marks the plan's changes as this shard's part of a cross-shard transaction, for
    /// replication (see [`crate::audit::Txn`]).
    pub fn mark_transaction(&mut self, txn: crate::audit::Txn) {
        self.audit.mark_transaction(txn);
    }

    /// The records the plan writes: key, and the new bytes (`None`: removed).
    pub fn records(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.records
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    fn add_to(&self, batch: &mut fjall::OwnedWriteBatch, store: &ShardStore) {
        for (k, v) in &self.records {
            match v {
                Some(v) => batch.insert(&store.records, k.as_slice(), v.as_slice()),
                None => batch.remove(&store.records, k.as_slice()),
            }
        }
        for (k, insert) in &self.index {
            if *insert {
                batch.insert(&store.index, k.as_slice(), []);
            } else {
                batch.remove(&store.index, k.as_slice());
            }
        }
        if let Some(ks) = &store.tombstones {
            for (k, history) in &self.histories {
                batch.insert(ks, k.as_slice(), history.encode());
            }
        }
        if !self.audit.is_empty() {
            let seq = store.audit_seq.fetch_add(1, Ordering::Relaxed);
            batch.insert(&store.audit, seq.to_be_bytes(), self.audit.0.as_slice());
        }
    }

    /// `participant count (u32 BE) ++ participant shards (u32 BE each) ++ records ++ index`,
    /// records and index each a count (u32 BE) of entries
    /// `key len (u32 BE) ++ key ++ tag (0 absent / 1 present) [++ value len ++ value]`, then,
    /// when its changes have origins, the part's audit entry; without them a part redone after
    /// a crash is audited from its records (see [`Self::decode_intent`]).
    fn encode_intent(&self, participants: &[u32]) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, b: &[u8]) {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        // Sized up front: a large batch's intent is hundreds of KB, and growing it by doubling
        // would copy it and fault fresh pages in several times.
        let size = 12
            + 4 * participants.len()
            + self
                .records
                .iter()
                .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
            + self.index.keys().map(|k| 5 + k.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&(participants.len() as u32).to_be_bytes());
        for p in participants {
            out.extend_from_slice(&p.to_be_bytes());
        }
        out.extend_from_slice(&(self.records.len() as u32).to_be_bytes());
        for (k, v) in &self.records {
            put(&mut out, k);
            match v {
                Some(v) => {
                    out.push(1);
                    put(&mut out, v);
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&(self.index.len() as u32).to_be_bytes());
        for (k, insert) in &self.index {
            put(&mut out, k);
            out.push(u8::from(*insert));
        }
        // Changes that say who made them keep saying it after a crash: their audit entry goes
        // along (the others' is made again from the records).
        if self.audit.has_origins() {
            out.extend_from_slice(&self.audit.0);
        }
        out
    }

    fn decode_intent(mut b: &[u8]) -> Option<(Vec<u32>, Mutations)> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (b.get(..n)?, b.get(n..)?);
            *b = rest;
            Some(head)
        }
        fn u32_of(b: &mut &[u8]) -> Option<u32> {
            Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?))
        }
        fn bytes(b: &mut &[u8]) -> Option<Vec<u8>> {
            let n = u32_of(b)? as usize;
            Some(take(b, n)?.to_vec())
        }
        let participants = (0..u32_of(&mut b)?)
            .map(|_| u32_of(&mut b))
            .collect::<Option<Vec<u32>>>()?;
        let mut plan = Mutations::default();
        for _ in 0..u32_of(&mut b)? {
            let k = bytes(&mut b)?;
            let v = match take(&mut b, 1)?[0] {
                0 => None,
                _ => Some(bytes(&mut b)?),
            };
            plan.records.insert(k, v);
        }
        for _ in 0..u32_of(&mut b)? {
            let k = bytes(&mut b)?;
            let insert = take(&mut b, 1)?[0] != 0;
            plan.index.insert(k, insert);
        }
        if !b.is_empty() {
            plan.audit = AuditEntry(b.to_vec());
            return Some((participants, plan));
        }
        // The records written carry their versions; a removal's version is not kept, so a part
        // redone after a crash audits its puts only.
        let mut puts: Vec<(u64, u32, &[u8], &[u8])> = plan
            .records
            .iter()
            .filter_map(|(k, v)| {
                let stored = v.as_deref()?;
                let table = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
                Some((
                    RecordRef::parse(stored)?.version,
                    table,
                    k.as_slice(),
                    stored,
                ))
            })
            .collect();
        puts.sort_unstable_by_key(|&(version, ..)| version);
        let mut audit = AuditEntry::default();
        for (version, table, key, stored) in puts {
            audit.push(version, table, key, Some(stored), None, None);
        }
        plan.audit = audit;
        Some((participants, plan))
    }
}

/// A prepared part of a cross-shard transaction, found in a shard at start-up.
#[derive(Debug)]
pub struct Intent {
    pub txid: u64,
    /// Every shard with a part in the transaction (this one included).
    pub participants: Vec<u32>,
    pub plan: Mutations,
}

/// A consistent read view of one shard (a fjall snapshot): every read through it sees the
/// shard as it was when the view was taken, whatever commits meanwhile.
#[derive(Clone)]
pub struct View {
    snap: fjall::Snapshot,
    records: Keyspace,
    index: Keyspace,
}

impl View {
    /// The stored bytes of a record (header + MessagePack), expired or not.
    pub fn get(&self, key: &[u8]) -> Result<Option<Slice>, StoreError> {
        Ok(self.snap.get(&self.records, key)?)
    }

    /// Records with keys in `[lo, hi)`, in key order.
    pub fn scan_range(
        &self,
        lo: Vec<u8>,
        hi: Vec<u8>,
    ) -> impl Iterator<Item = Result<(Slice, Slice), StoreError>> + use<> {
        self.snap
            .range(&self.records, lo..hi)
            .map(|g| g.into_inner().map_err(StoreError::from))
    }

    /// Index keys in `[lo, hi)`, in key order (reversible).
    pub fn index_range(
        &self,
        lo: Vec<u8>,
        hi: Vec<u8>,
    ) -> impl DoubleEndedIterator<Item = Result<Slice, StoreError>> + use<> {
        self.snap
            .range(&self.index, lo..hi)
            .map(|g| g.key().map_err(StoreError::from))
    }
}

impl ShardStore {
    /// Opens (or creates) the shard at `path`.
    pub fn open(path: &Path, opts: ShardOptions) -> Result<ShardStore, StoreError> {
        let db = Database::builder(path)
            .cache_size(opts.cache_bytes)
            .worker_threads(1)
            .manual_journal_persist(true)
            // The journal would compress every value over 4 KiB: the intents and audit entries
            // of large write groups. That was 6% of the CPU of a bulk load, to save writing
            // bytes the page cache takes at memory speed.
            .journal_compression(CompressionType::None)
            // Journals are kept until every keyspace flushed what they hold: the bound on what a
            // start after `kill -9` replays (fjall's default, 512 MiB, took 10 s here).
            .max_journaling_size(JOURNAL_BYTES)
            .open()?;
        // Records and index entries are compressed at every level, not only from the third
        // (fjall's default): at 1 M records the first two levels held most of the data, stored
        // at 1.8x the records' MessagePack size. The read cache holds blocks decompressed, so
        // only a miss pays for it.
        let ks = || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(opts.memtable_bytes)
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        };
        // Records are read by key on every GET: a hash index in each data block finds the key
        // without the binary search over restart points and the scan after it.
        let records = db.keyspace("records", || {
            ks().data_block_hash_ratio_policy(HashRatioPolicy::all(RECORDS_HASH_RATIO))
        })?;
        let index = db.keyspace("index", ks)?;
        let intents = db.keyspace("intents", KeyspaceCreateOptions::default)?;
        let markers = db.keyspace("markers", KeyspaceCreateOptions::default)?;
        let audit = db.keyspace("audit", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(AUDIT_MEMTABLE)
                .compaction_strategy(Arc::new(fjall::compaction::Fifo::new(AUDIT_BYTES, None)))
        })?;
        let tombstones = if opts.tombstones {
            Some(db.keyspace("tombstones", KeyspaceCreateOptions::default)?)
        } else {
            None
        };
        // Audit keys continue after the last one kept.
        let next_seq = audit
            .last_key_value()
            .map(|kv| kv.key())
            .transpose()?
            .and_then(|k| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, |k| u64::from_be_bytes(k) + 1);
        Ok(ShardStore {
            db,
            records,
            index,
            intents,
            markers,
            audit,
            audit_seq: AtomicU64::new(next_seq),
            persisted_seq: AtomicU64::new(next_seq),
            cache: ReadCache::new(opts.read_cache_bytes),
            tombstones,
            node: opts.node,
        })
    }

    /// A read view of the shard as it is now.
    pub fn view(&self) -> View {
        View {
            snap: self.db.snapshot(),
            records: self.records.clone(),
            index: self.index.clone(),
        }
    }

    /// The stored bytes of a record (header + MessagePack), expired or not: from the read
    /// cache, else from fjall (and then cached).
    pub fn get(&self, key: &[u8]) -> Result<Option<Slice>, StoreError> {
        let miss = match self.cache.get(key) {
            Ok(hit) => return Ok(Some(hit)),
            Err(miss) => miss,
        };
        let stored = self.records.get(key)?;
        if let Some(bytes) = &stored {
            self.cache.fill(miss, key, bytes);
        }
        Ok(stored)
    }

    /// Records whose key starts with `prefix`, in key order.
    pub fn scan(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Slice, Slice), StoreError>> + use<> {
        self.records
            .prefix(prefix)
            .map(|g| g.into_inner().map_err(StoreError::from))
    }

    /// Index keys that start with `prefix`, in key order.
    pub fn scan_index(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Slice, StoreError>> + use<> {
        self.index
            .prefix(prefix)
            .map(|g| g.key().map_err(StoreError::from))
    }

    /// The largest numeric primary key of a table on this shard (for auto-increment).
    pub fn max_number_key(&self, table_id: u32) -> Result<Option<f64>, StoreError> {
        let (lo, hi) = key::number_range();
        let p = table_prefix(table_id);
        let start = [p.as_slice(), lo.as_slice()].concat();
        let end = [p.as_slice(), hi.as_slice()].concat();
        match self.records.range(start..end).next_back() {
            None => Ok(None),
            Some(g) => {
                let k = g.key()?;
                let (v, _) = key::decode(k.get(4..).unwrap_or_default())
                    .map_err(|_| StoreError::Corrupt(format!("{k:?}")))?;
                Ok(v.as_f64())
            }
        }
    }

    /// Applies a group of writes as one atomic batch (not yet durable: see [`Self::persist`]).
    /// Later writes in the group see earlier ones. Returns one outcome per op, in order.
    /// With `changes`, also records what each write changed, for subscribers.
    pub fn apply(
        &self,
        ops: Vec<WriteOp>,
        clock: &mut Clock,
        changes: Option<&mut Vec<Change>>,
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let (plan, outcomes) = self.plan(&ops, clock, changes)?;
        let mut batch = self.db.batch();
        plan.add_to(&mut batch, self);
        batch.commit()?;
        self.cache.written(plan.records());
        Ok(outcomes)
    }

    /// Computes what a group of writes does to the shard as it is now, without writing. The ops
    /// are only read (a cross-shard transaction keeps them to prepare again after a conflict):
    /// a record written as sent is encoded from the op itself, without a copy.
    pub fn plan(
        &self,
        ops: &[WriteOp],
        clock: &mut Clock,
        mut changes: Option<&mut Vec<Change>>,
    ) -> Result<(Mutations, Vec<WriteOutcome>), StoreError> {
        let mut m = Mutations {
            records: HashMap::with_capacity(ops.len()),
            index: HashMap::with_capacity(ops.len() * 2),
            // Room for a small record's change per op (the entry grows for larger ones).
            audit: AuditEntry::with_capacity(ops.len() * 128),
            histories: Vec::new(),
        };
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let version = match &op.kind {
                WriteKind::Replicated { version, .. } => {
                    clock.observe(*version);
                    *version
                }
                _ => clock.tick(),
            };
            let (outcome, event) = match &op.kind {
                // A message stores nothing: it needs neither the record nor its index entries.
                WriteKind::Message {
                    payload,
                    expires_at,
                    meta,
                } => {
                    let event = Event::Message {
                        payload: payload.clone(),
                        expires_at: *expires_at,
                        meta: meta.clone(),
                    };
                    let outcome = WriteOutcome {
                        version,
                        existed: false,
                    };
                    (outcome, Some(event))
                }
                _ => self.plan_write(op, version, &mut m, changes.is_some())?,
            };
            if let (Some(c), Some(event)) = (changes.as_deref_mut(), event) {
                c.push(Change {
                    table: op.table.id,
                    key: op.key.clone(),
                    event,
                    version,
                });
            }
            outcomes.push(outcome);
        }
        Ok((m, outcomes))
    }

    /// Adds one record write at `version` to `m`: the record as stored before (as `m` already
    /// changes it), whether the write applies, the new record, its index entries and its audit
    /// entry. Returns the outcome and, when `want_event` and the record changed, its change.
    fn plan_write(
        &self,
        op: &WriteOp,
        version: u64,
        m: &mut Mutations,
        want_event: bool,
    ) -> Result<(WriteOutcome, Option<Event>), StoreError> {
        let WriteOp {
            table,
            key,
            kind,
            from,
        } = op;
        let now_ms = version / 1000;
        let pk = key.get(4..).unwrap_or_default();
        let fetched;
        let old_bytes = match m.records.get(key) {
            Some(v) => v.as_deref(),
            None => {
                fetched = self.get(key)?;
                fetched.as_deref()
            }
        };
        // An expired record counts as absent, but its index entries still go.
        let (old_body, live, expires_at) = match old_bytes {
            Some(b) => {
                let r =
                    RecordRef::parse(b).ok_or_else(|| StoreError::Corrupt(format!("{key:?}")))?;
                (Some(r.body), !r.is_expired(now_ms), r.expires_at)
            }
            None => (None, false, None),
        };
        let unchanged = |existed| Ok((WriteOutcome { version, existed }, None));
        let record_version = old_bytes.and_then(RecordRef::parse).map(|r| r.version);
        // Replication's rules (history.rs): a change from another node is dropped when a newer
        // write overtook it or it was applied before; applied under the partial writes newer
        // than it when there are some.
        let mut history = None;
        let mut rebuild = false;
        if let WriteKind::Replicated { delta, .. } = kind {
            let node = from.as_ref().map_or("", |p| &*p.origin.user);
            let h = match self.history(key, m)? {
                Some(h) => h,
                // Not written since histories were kept: its version stands for a full write.
                None => History {
                    full: record_version.map(|v| (v, None)),
                    ..History::default()
                },
            };
            let wins_tie = |by: Option<&str>| *node > *by.unwrap_or(&self.node);
            if h.judge(version, node, delta.as_ref().map(Delta::as_ref), wins_tie) == Verdict::Drop
            {
                return unchanged(live);
            }
            rebuild = h.has_newer(version);
            history = Some(h);
        }
        // Conditional writes that do not apply leave the record as it is.
        match kind {
            WriteKind::Insert(_) if live => return unchanged(true),
            WriteKind::Update(_) if !live => return unchanged(false),
            // Rewritten (or gone) since it was found expired: nothing to evict.
            WriteKind::Evict(deadline) if expires_at.is_none_or(|e| e > *deadline) => {
                return unchanged(false);
            }
            _ => {}
        }
        let delta = match kind {
            WriteKind::Patch(Value::Object(props)) | WriteKind::Update(Value::Object(props)) => {
                Some(DeltaRef::Set(props))
            }
            WriteKind::Add(deltas) => Some(DeltaRef::Add(deltas)),
            WriteKind::Replicated { delta, .. } => delta.as_ref().map(Delta::as_ref),
            _ => None,
        };
        let patch = delta.is_some() || matches!(kind, WriteKind::Patch(_) | WriteKind::Update(_));
        let old = OldRecord::read(table, old_body, patch, pk, live)?;
        let existed = old.existed;
        // The record's version: the write's, or, for another node's change applied under newer
        // ones, the newest of them.
        let (new, stored_version) = match (kind, &history) {
            (WriteKind::Replicated { record, .. }, Some(h)) => {
                let old_version = record_version.unwrap_or(0);
                let old = (old.full, old.created);
                replicated_record(table, record, delta, old, h, version, rebuild, old_version)
            }
            _ => (
                new_record(table, kind, old.full, old.created, version as f64 / 1000.0),
                version,
            ),
        };
        let new_entries = match &new {
            Some(v) => index_entries(table, |name| v.get(name), pk),
            None => Vec::new(),
        };
        diff_index(&old.entries, new_entries, &mut m.index);
        let expires = match kind {
            WriteKind::Replicated { expires_at, .. } => *expires_at,
            WriteKind::Loaded {
                expires_at: Some(at),
                ..
            } => Some(*at),
            _ => table.expiration.map(|s| now_ms + (s * 1000.0) as u64),
        };
        let stored = new.map(|v| record::encode_value(stored_version, expires, &v));
        // Another node's partial write is not sent on: its audit entry needs no delta.
        let replicated = matches!(kind, WriteKind::Replicated { .. });
        let audited_delta = match delta {
            Some(DeltaRef::Set(_)) if self.tombstones.is_none() => None,
            _ if replicated => None,
            d => d,
        };
        m.audit.push(
            stored_version,
            table.id,
            key,
            stored.as_deref(),
            from.as_ref(),
            audited_delta,
        );
        let event = want_event.then(|| match &stored {
            Some(s) => Event::Put(s.clone()),
            None => Event::Delete,
        });
        if self.tombstones.is_some() {
            let h =
                self.next_history(key, m, kind, from, delta, history, record_version, version)?;
            m.histories.push((key.clone(), h));
        }
        m.records.insert(key.clone(), stored);
        // For an eviction: whether it removed the record.
        let existed = existed || matches!(kind, WriteKind::Evict(_));
        let version = stored_version;
        Ok((WriteOutcome { version, existed }, event))
    }

    /// What is kept of the record at `key` after a write of `kind` at its version: a full
    /// write starts its history again; a partial write joins it.
    #[allow(clippy::too_many_arguments)]
    fn next_history(
        &self,
        key: &[u8],
        m: &Mutations,
        kind: &WriteKind,
        from: &Option<Provenance>,
        delta: Option<DeltaRef<'_>>,
        history: Option<History>,
        record_version: Option<u64>,
        version: u64,
    ) -> Result<History, StoreError> {
        let node = match (kind, from) {
            (WriteKind::Replicated { .. }, Some(p)) => Some(p.origin.user.clone()),
            _ => None,
        };
        let Some(delta) = delta else {
            let mut h = history.unwrap_or_default();
            h.full_write(version, node);
            return Ok(h);
        };
        let mut h = match history {
            Some(h) => h,
            None => self.history(key, m)?.unwrap_or_else(|| History {
                full: record_version.map(|v| (v, None)),
                ..History::default()
            }),
        };
        h.add(Partial {
            version,
            node,
            delta: delta.to_owned(),
        });
        Ok(h)
    }

    /// What is kept of the record at `key` for replication (in `m`, this group's, first), when
    /// histories are kept and it has one.
    fn history(&self, key: &[u8], m: &Mutations) -> Result<Option<History>, StoreError> {
        let Some(ks) = &self.tombstones else {
            return Ok(None);
        };
        if let Some((_, last)) = m.histories.iter().rev().find(|(k, _)| k == key) {
            return Ok(Some(last.clone()));
        }
        Ok(ks.get(key)?.and_then(|b| History::decode(&b)))
    }

    /// Records `plan` as this shard's prepared part of cross-shard transaction `txid`, whose
    /// parts are on `participants`: nothing becomes visible; once persisted, [`Self::intents`]
    /// returns it after a crash until [`Self::resolve`] commits or drops it.
    pub fn prepare(
        &self,
        txid: u64,
        participants: &[u32],
        plan: &Mutations,
    ) -> Result<(), StoreError> {
        Ok(self
            .intents
            .insert(txid.to_be_bytes(), plan.encode_intent(participants))?)
    }

    /// Ends the prepared part of `txid`, in one atomic batch: with `plan`, applies it and leaves
    /// a commit marker; either way drops the intent. So after a crash an intent still present
    /// was never applied, and a marker says the part was applied.
    pub fn resolve(&self, txid: u64, plan: Option<&Mutations>) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        if let Some(plan) = plan {
            plan.add_to(&mut batch, self);
            batch.insert(&self.markers, txid.to_be_bytes(), []);
        }
        batch.remove(&self.intents, txid.to_be_bytes());
        batch.commit()?;
        if let Some(plan) = plan {
            self.cache.written(plan.records());
        }
        Ok(())
    }

    /// Whether this shard still holds its prepared part of `txid`.
    pub fn has_intent(&self, txid: u64) -> Result<bool, StoreError> {
        Ok(self.intents.contains_key(txid.to_be_bytes())?)
    }

    /// The prepared transaction parts stored in this shard, in txid order.
    pub fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        let mut out = Vec::new();
        for kv in self.intents.iter() {
            let (k, v) = kv.into_inner()?;
            let txid = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt(format!("intent key {k:?}")))?,
            );
            let (participants, plan) =
                Mutations::decode_intent(&v).ok_or(StoreError::CorruptIntent(txid))?;
            out.push(Intent {
                txid,
                participants,
                plan,
            });
        }
        Ok(out)
    }

    /// Whether this shard applied its part of `txid` (and still keeps the marker).
    pub fn applied(&self, txid: u64) -> Result<bool, StoreError> {
        Ok(self.markers.contains_key(txid.to_be_bytes())?)
    }

    /// Drops commit markers no intent can need any more (`None`: all of them).
    pub fn forget(&self, txids: Option<&[u64]>) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        match txids {
            Some(ids) => {
                for id in ids {
                    batch.remove(&self.markers, id.to_be_bytes());
                }
            }
            None => {
                for k in self.markers.iter() {
                    batch.remove(&self.markers, k.key()?);
                }
            }
        }
        Ok(batch.commit()?)
    }

    /// Makes every committed batch survive a crash (`Durable`: also a power loss).
    pub fn persist(&self, durability: Durability) -> Result<(), StoreError> {
        let mode = match durability {
            Durability::Durable => PersistMode::SyncData,
            Durability::Buffered => PersistMode::Buffer,
        };
        // Everything applied so far is covered (the shard's writer thread is the one caller
        // that applies and persists).
        let applied = self.audit_seq.load(Ordering::Relaxed);
        self.db.persist(mode)?;
        self.persisted_seq.fetch_max(applied, Ordering::Release);
        Ok(())
    }

    /// Writes the memtables out as disk tables so that the next start has no sealed journal to
    /// replay (used at shutdown, after a durable [`Self::persist`]: start-up time after a clean
    /// stop does not depend on past writes). Every keyspace: a journal is dropped only once no
    /// memtable holds a write of it, and the few bytes of transaction intents and markers in a
    /// memtable would keep every journal since the first cross-shard transaction (a bulk load's)
    /// to be read again at start-up. Waits for the flushes, which may queue behind a compaction.
    pub fn flush_memtables(&self) -> Result<(), StoreError> {
        let keyspaces = [
            &self.records,
            &self.index,
            &self.audit,
            &self.intents,
            &self.markers,
        ];
        let keyspaces: Vec<&Keyspace> = keyspaces.into_iter().chain(&self.tombstones).collect();
        for ks in &keyspaces {
            ks.rotate_memtable_and_wait()?;
        }
        // A keyspace whose memtable was sealed before (by its size) has nothing to rotate, but
        // its flush may still run; the sealed journals go once the last flush is done.
        while keyspaces.iter().any(|ks| ks.sealed_memtable_count() > 0) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.db.journal_count() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// The last `n` changes of the audit log, oldest first (what an entry holds past a change
    /// it cannot read is skipped).
    pub fn audit_tail(&self, n: usize) -> Result<Vec<Change>, StoreError> {
        let mut out = Vec::with_capacity(n.min(1024));
        for kv in self.audit.iter().rev() {
            if out.len() >= n {
                break;
            }
            let (_, v) = kv.into_inner()?;
            let group: Vec<Change> = AuditEntry::changes(&v).collect();
            out.extend(group.into_iter().rev().take(n - out.len()));
        }
        out.reverse();
        Ok(out)
    }

    /// The highest version among the audit log's last [`LAST_VERSION_SCAN`] entries (0 when
    /// empty): the last one committed may be older than some before it (a cross-shard part).
    pub fn last_version(&self) -> Result<u64, StoreError> {
        let mut last = 0;
        for kv in self.audit.iter().rev().take(LAST_VERSION_SCAN) {
            let (_, v) = kv.into_inner()?;
            last = last.max(AuditEntry::highest(&v).unwrap_or(0));
        }
        Ok(last)
    }

    /// Every change of table `table` the audit log still holds on this shard, oldest first,
    /// with its origin (`read_audit_log`). Reads the whole log: for an operator, not a hot path.
    pub fn audit_of(&self, table: u32) -> Result<Vec<Audited>, StoreError> {
        let mut out = Vec::new();
        for kv in self.audit.iter() {
            let (_, v) = kv.into_inner()?;
            out.extend(AuditEntry::audited(&v, Some(table)));
        }
        Ok(out)
    }

    /// The number of the audit entry the next persisted group begins with: every entry below
    /// it survives a crash.
    pub fn persisted(&self) -> u64 {
        self.persisted_seq.load(Ordering::Acquire)
    }

    /// The audit log's persisted entries after the one numbered `after` (all: `None`), at most
    /// `limit`, each with its number and its changes with their origins, in commit order: what
    /// replication sends to other nodes.
    pub fn audit_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<Audited>)>, StoreError> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let to = self.persisted_seq.load(Ordering::Acquire);
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for kv in self
            .audit
            .range(from.to_be_bytes()..to.to_be_bytes())
            .take(limit)
        {
            let (k, v) = kv.into_inner()?;
            let seq = <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt(format!("audit key {k:?}")))?;
            out.push((seq, AuditEntry::audited(&v, None)));
        }
        Ok(out)
    }

    /// Removes from the audit log the changes of table `table` at versions before `before`
    /// (µs) (`delete_audit_logs_before`), and returns how many went. Entries are rewritten in
    /// place, so the log's keys still only grow.
    pub fn forget_audit_before(&self, table: u32, before: u64) -> Result<usize, StoreError> {
        let mut batch = self.db.batch();
        let mut n = 0;
        for kv in self.audit.iter() {
            let (k, v) = kv.into_inner()?;
            if let Some((kept, dropped)) = AuditEntry::without(&v, table, before) {
                batch.insert(&self.audit, k, kept);
                n += dropped;
            }
        }
        batch.commit()?;
        Ok(n)
    }

    /// Writes the index entries of one attribute for every record of a table on this shard
    /// (used when an attribute becomes `@indexed` on a table that already has records).
    pub fn build_index(&self, table: &Table, attribute: &str) -> Result<usize, StoreError> {
        let Some(attr) = table.attribute(attribute) else {
            return Ok(0);
        };
        let prefix = index_prefix(table.id, attr.id);
        let mut batch = self.db.batch();
        for old in self.index.prefix(prefix) {
            batch.remove(&self.index, old.key()?);
        }
        let mut n = 0;
        for kv in self.scan(&table_prefix(table.id)) {
            let (k, v) = kv?;
            let r = RecordRef::parse(&v).ok_or_else(|| StoreError::Corrupt(format!("{k:?}")))?;
            let rec = value::from_msgpack(r.body)?;
            let computed = attr.expr.as_ref().map(|e| e.eval(&|n| rec.get(n)));
            let v = computed.as_ref().or_else(|| rec.get(attribute));
            for e in attribute_entries(&prefix, v, k.get(4..).unwrap_or_default()) {
                batch.insert(&self.index, e, []);
                n += 1;
            }
        }
        batch.commit()?;
        self.persist(Durability::Durable)?;
        Ok(n)
    }

    /// Removes every record and index entry of table `table_id` on this shard (after
    /// `drop_table`), durably. Returns how many records went.
    pub fn drop_table(&self, table_id: u32) -> Result<usize, StoreError> {
        let prefix = table_prefix(table_id);
        let mut batch = self.db.batch();
        let mut n = 0;
        for kv in self.records.prefix(prefix) {
            batch.remove(&self.records, kv.key()?);
            n += 1;
        }
        for kv in self.index.prefix(prefix) {
            batch.remove(&self.index, kv.key()?);
        }
        batch.commit()?;
        self.cache.written_any();
        self.persist(Durability::Durable)?;
        Ok(n)
    }

    /// Removes attribute `name` (id `attribute_id`) from every record of `table` on this shard,
    /// and its index entries, durably (after `drop_attribute`). Records keep their version.
    /// Returns how many records changed.
    pub fn drop_attribute(
        &self,
        table: &Table,
        name: &str,
        attribute_id: u16,
    ) -> Result<usize, StoreError> {
        let mut batch = self.db.batch();
        for old in self.index.prefix(index_prefix(table.id, attribute_id)) {
            batch.remove(&self.index, old.key()?);
        }
        let mut n = 0;
        for kv in self.scan(&table_prefix(table.id)) {
            let (k, v) = kv?;
            let r = RecordRef::parse(&v).ok_or_else(|| StoreError::Corrupt(format!("{k:?}")))?;
            let mut rec = value::from_msgpack(r.body)?;
            let Value::Object(props) = &mut rec else {
                continue;
            };
            let before = props.len();
            props.retain(|(p, _)| p != name);
            if props.len() != before {
                batch.insert(
                    &self.records,
                    k,
                    record::encode_value(r.version, r.expires_at, &rec),
                );
                n += 1;
            }
        }
        batch.commit()?;
        self.cache.written_any();
        self.persist(Durability::Durable)?;
        Ok(n)
    }
}

/// `v` with the table's `@createdTime` (kept from the old record when there is one) and
/// `@updatedTime` set; copied first only if the table has either.
fn stamped<'v>(
    table: &Table,
    v: Cow<'v, Value>,
    old_created: Option<Value>,
    stamp: f64,
) -> Cow<'v, Value> {
    let (created, updated) = (table.created_time(), table.updated_time());
    if created.is_none() && updated.is_none() {
        return v;
    }
    let mut v = v.into_owned();
    if let Some(c) = created {
        v.set(c, old_created.unwrap_or(Value::Float(stamp)));
    }
    if let Some(u) = updated {
        v.set(u, Value::Float(stamp));
    }
    Cow::Owned(v)
}

/// Whether an object's properties name one attribute twice (JSON allows it; the last wins).
fn has_repeated_names(props: &[(String, Value)]) -> bool {
    props
        .iter()
        .enumerate()
        .any(|(i, (k, _))| props[..i].iter().any(|(seen, _)| seen == k))
}

/// What a write needs of the record it replaces.
#[derive(Default)]
struct OldRecord {
    existed: bool,
    /// Its index keys, sorted.
    entries: Vec<Vec<u8>>,
    created: Option<Value>,
    /// The whole record, decoded only when a PATCH merges into it.
    full: Option<Value>,
}

impl OldRecord {
    /// Reads what a write needs of the stored `body`; of an expired one (`live` false), only
    /// its index entries.
    fn read(
        table: &Table,
        body: Option<&[u8]>,
        full: bool,
        pk: &[u8],
        live: bool,
    ) -> Result<OldRecord, StoreError> {
        let Some(body) = body else {
            return Ok(OldRecord::default());
        };
        if !live {
            let v = value::from_msgpack(body)?;
            return Ok(OldRecord {
                entries: index_entries(table, |name| v.get(name), pk),
                ..OldRecord::default()
            });
        }
        let created_name = table.created_time();
        if full {
            let v = value::from_msgpack(body)?;
            let created = created_name.and_then(|c| v.get(c).cloned());
            let entries = index_entries(table, |name| v.get(name), pk);
            return Ok(OldRecord {
                existed: true,
                entries,
                created,
                full: Some(v),
            });
        }
        // Decode only the indexed attributes (the inputs of computed ones) and @createdTime.
        let mut reads: Vec<String> = Vec::new();
        for a in table.indexed() {
            match &a.expr {
                Some(e) => e.reads(&mut reads),
                None => reads.push(a.name.clone()),
            }
        }
        let mut names: Vec<&str> = reads.iter().map(String::as_str).collect();
        names.extend(created_name);
        let values = value::extract_fields(body, &names)?;
        let get = |name: &str| {
            let at = names.iter().position(|n| *n == name)?;
            values.get(at)?.as_ref()
        };
        let created = created_name.and_then(|c| get(c).cloned());
        let entries = index_entries(table, get, pk);
        Ok(OldRecord {
            existed: true,
            entries,
            created,
            full: None,
        })
    }
}

/// The index keys of a record, sorted: one per indexed attribute value (each element of an
/// array, and explicit nulls); records that lack the attribute have none for it.
fn index_entries<'v>(
    table: &Table,
    get: impl Fn(&str) -> Option<&'v Value>,
    pk: &[u8],
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for a in table.indexed() {
        let prefix = index_prefix(table.id, a.id);
        match &a.expr {
            Some(e) => {
                let v = e.eval(&get);
                out.extend(attribute_entries(&prefix, Some(&v), pk));
            }
            None => out.extend(attribute_entries(&prefix, get(&a.name), pk)),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn attribute_entries(prefix: &[u8], v: Option<&Value>, pk: &[u8]) -> Vec<Vec<u8>> {
    let one = |v: &Value| {
        let mut k = prefix.to_vec();
        key::encode(v, &mut k).ok()?;
        k.extend_from_slice(pk);
        Some(k)
    };
    match v {
        None => vec![],
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Catalog;

    fn setup() -> (tempfile::TempDir, ShardStore, Arc<Table>) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
        let mut c = Catalog::default();
        c.load_schema("s", "type T @table { id: ID @primaryKey tag: [String] @indexed n: Int @indexed c: Float @createdTime u: Float @updatedTime }").unwrap();
        (dir, store, Arc::new(c.tables.remove(0).numbered(7)))
    }

    /// A replicating store, its table, the key of record "a" and a version a minute ahead
    /// (another node's, with a clock ahead of this one's).
    fn replicating_record() -> (tempfile::TempDir, ShardStore, Arc<Table>, Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = replicating(dir.path());
        let (_, _, t) = setup();
        let key = record_key(t.id, &Value::String("a".into())).unwrap();
        (dir, store, t, key, now_micros() + 60_000_000)
    }

    /// A store that keeps records' histories, as a replicating node's shards do.
    fn replicating(dir: &std::path::Path) -> ShardStore {
        let opts = ShardOptions {
            tombstones: true,
            ..ShardOptions::default()
        };
        ShardStore::open(dir, opts).unwrap()
    }

    fn obj(pairs: &[(&str, Value)]) -> Value {
        Value::Object(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    fn index_keys(store: &ShardStore) -> Vec<Vec<u8>> {
        store.scan_index(&[]).map(|k| k.unwrap().to_vec()).collect()
    }

    /// Harper's tie rule: two nodes' full writes of one record at the same version end the
    /// same on every node, the greater node name winning, whichever arrives first; a write
    /// made on a node counts as that node's.
    #[test]
    fn the_same_version_from_two_nodes_goes_to_the_greater_node_name() {
        let (_, _, t) = setup();
        let key = record_key(t.id, &Value::String("a".into())).unwrap();
        let version = now_micros() + 60_000_000;
        // `n` written at `version` by each of `writes` (`None`: here) on a node named `node`;
        // what the record's `n` is after them.
        let n_on = |node: &str, writes: &[(i64, Option<&str>)]| {
            let dir = tempfile::tempdir().unwrap();
            let opts = ShardOptions {
                tombstones: true,
                node: node.into(),
                ..ShardOptions::default()
            };
            let store = ShardStore::open(dir.path(), opts).unwrap();
            let mut clock = Clock::after(version - 1);
            for (n, origin) in writes {
                let record = obj(&[("id", Value::String("a".into())), ("n", Value::Int(*n))]);
                let op = match origin {
                    None => WriteOp::new(t.clone(), key.clone(), WriteKind::Put(record)),
                    Some(origin) => WriteOp {
                        table: t.clone(),
                        key: key.clone(),
                        kind: WriteKind::Replicated {
                            record: Some(record),
                            version,
                            expires_at: None,
                            delta: None,
                        },
                        from: Some(Provenance {
                            origin: Arc::new(crate::audit::Origin {
                                at: 0,
                                operation: crate::audit::Operation::Replicated,
                                user: (*origin).into(),
                            }),
                            index: 0,
                        }),
                    },
                };
                let done = store.apply(vec![op], &mut clock, None).unwrap();
                assert!(origin.is_some() || done[0].version == version);
            }
            let b = store.get(&key).unwrap().unwrap();
            let r = RecordRef::parse(&b).unwrap();
            crate::value::from_msgpack(r.body)
                .unwrap()
                .get("n")
                .cloned()
        };
        let (alpha, beta) = (Some("alpha"), Some("beta"));
        assert_eq!(n_on("gamma", &[(1, alpha), (2, beta)]), Some(Value::Int(2)));
        assert_eq!(
            n_on("gamma", &[(2, beta), (1, alpha), (1, alpha)]),
            Some(Value::Int(2))
        );
        assert_eq!(n_on("alpha", &[(7, None), (9, beta)]), Some(Value::Int(9)));
        assert_eq!(n_on("zulu", &[(7, None), (9, beta)]), Some(Value::Int(7)));
    }

    #[test]
    fn replicated_changes_keep_the_last_writer_and_a_delete_stays_deleted() {
        let (_dir, store, t, key, far) = replicating_record();
        let mut clock = Clock::default();
        let mut apply = |kind| {
            let op = WriteOp::new(t.clone(), key.clone(), kind);
            store.apply(vec![op], &mut clock, None).unwrap()[0].clone()
        };
        let remote = |n: i64, version: u64| WriteKind::Replicated {
            record: Some(obj(&[
                ("id", Value::String("a".into())),
                ("n", Value::Int(n)),
            ])),
            version,
            expires_at: None,
            delta: None,
        };
        let remote_add = |n: i64, version: u64| WriteKind::Replicated {
            record: None,
            version,
            expires_at: None,
            delta: Some(Delta::Add(vec![("n".into(), Value::Int(n))])),
        };
        let n_here = |store: &ShardStore| {
            store.get(&key).unwrap().map(|b| {
                let r = RecordRef::parse(&b).unwrap();
                (
                    crate::value::from_msgpack(r.body)
                        .unwrap()
                        .get("n")
                        .cloned(),
                    r.version,
                )
            })
        };
        // Newer than nothing: kept, at its own version; the clock moves past it.
        apply(remote(1, far));
        assert_eq!(n_here(&store), Some((Some(Value::Int(1)), far)));
        // Older, or the same again: dropped.
        apply(remote(2, far - 1));
        apply(remote(3, far));
        assert_eq!(n_here(&store), Some((Some(Value::Int(1)), far)));
        // A local write comes after what was seen, though the wall clock is behind it.
        let local = apply(WriteKind::Put(obj(&[("id", Value::String("a".into()))])));
        assert!(local.version > far);
        // A delete leaves a tombstone: a change older than it does not bring the record back,
        // a newer one does.
        let deleted = apply(WriteKind::Delete).version;
        apply(remote(4, deleted - 1));
        assert_eq!(n_here(&store), None);
        apply(remote(5, deleted + 1));
        assert_eq!(n_here(&store), Some((Some(Value::Int(5)), deleted + 1)));
        // A replicated delete older than the record is dropped too.
        apply(WriteKind::Replicated {
            record: None,
            version: deleted,
            expires_at: None,
            delta: None,
        });
        assert_eq!(n_here(&store).map(|(n, _)| n), Some(Some(Value::Int(5))));
        // Another node's addTo: added, whether older or newer than the record, as long as no
        // newer full write is here; the record keeps the later version.
        let local_add = apply(WriteKind::Add(vec![("n".into(), Value::Int(10))])).version;
        apply(remote_add(100, local_add + 5));
        assert_eq!(n_here(&store), Some((Some(Value::Int(115)), local_add + 5)));
        apply(remote_add(1000, local_add + 3));
        assert_eq!(
            n_here(&store),
            Some((Some(Value::Int(1115)), local_add + 5))
        );
        // Not newer than the last full write (the put at `deleted + 1`): dropped.
        apply(remote_add(7, deleted + 1));
        assert_eq!(n_here(&store).map(|(n, _)| n), Some(Some(Value::Int(1115))));
    }

    #[test]
    fn a_late_change_is_applied_under_newer_patches_and_an_increment_counts_once() {
        let (dir, store, t, key, far) = replicating_record();
        let mut clock = Clock::default();
        let ints = |pairs: &[(&str, i64)]| -> Vec<(String, Value)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Int(*v)))
                .collect()
        };
        let mut from = |node: &str, at: u64, record: Option<&[(&str, i64)]>, delta| {
            let record = record.map(|r| {
                let mut v = Value::Object(ints(r));
                v.set("id", Value::String("a".into()));
                v
            });
            let op = WriteOp {
                table: t.clone(),
                key: key.clone(),
                kind: WriteKind::Replicated {
                    record,
                    version: far + at,
                    expires_at: None,
                    delta,
                },
                from: Some(Provenance {
                    origin: Arc::new(crate::audit::Origin {
                        at: far + at,
                        operation: crate::audit::Operation::Replicated,
                        user: node.into(),
                    }),
                    index: 0,
                }),
            };
            store.apply(vec![op], &mut clock, None).unwrap();
            store.get(&key).unwrap().map(|b| {
                let r = RecordRef::parse(&b).unwrap();
                let v = crate::value::from_msgpack(r.body).unwrap();
                let n = |k| match v.get(k) {
                    Some(Value::Int(n)) => *n,
                    _ => -1,
                };
                ([n("x"), n("y"), n("n")], r.version - far)
            })
        };
        let put = |x, y, n| Some([("x", x), ("y", y), ("n", n)]);
        assert_eq!(
            from("b", 0, put(1, 1, 0).as_ref().map(|p| &p[..]), None),
            Some(([1, 1, 0], 0))
        );
        let patch = Some(Delta::Set(ints(&[("x", 2)])));
        assert_eq!(from("b", 100, None, patch), Some(([2, 1, 0], 100)));
        // Two nodes' increments add up; the same one delivered again is not counted twice.
        let five = || Some(Delta::Add(ints(&[("n", 5)])));
        assert_eq!(from("c", 200, None, five()), Some(([2, 1, 5], 200)));
        assert_eq!(from("c", 200, None, five()), Some(([2, 1, 5], 200)));
        assert_eq!(from("d", 200, None, five()), Some(([2, 1, 10], 200)));
        // A put older than the patch and the increments: applied, and they again on top of it.
        let late = put(9, 9, 100);
        let late = late.as_ref().map(|p| &p[..]);
        assert_eq!(from("c", 50, late, None), Some(([2, 9, 110], 200)));
        // A patch older than the newer patch: only what that one did not set.
        let patch = Some(Delta::Set(ints(&[("x", 8), ("y", 7)])));
        assert_eq!(from("d", 70, None, patch), Some(([2, 7, 110], 200)));
        // One older than the late put: dropped, as is the put again.
        let patch = Some(Delta::Set(ints(&[("y", 3)])));
        assert_eq!(from("d", 40, None, patch), Some(([2, 7, 110], 200)));
        assert_eq!(from("c", 50, late, None), Some(([2, 7, 110], 200)));
        // A late increment adds to what no newer patch set.
        let one = Some(Delta::Add(ints(&[("n", 1)])));
        assert_eq!(from("d", 60, None, one), Some(([2, 7, 111], 200)));
        // Under a newer delete, nothing comes back.
        assert_eq!(from("b", 300, None, None), None);
        assert_eq!(from("c", 250, None, five()), None);
        // What is kept survives reopening.
        drop(store);
        let store = replicating(dir.path());
        let h = store.history(&key, &Mutations::default()).unwrap().unwrap();
        assert_eq!(h.full, Some((far + 300, Some("b".into()))));
        assert!(h.partials.is_empty());
    }

    #[test]
    fn stored_changes_are_audited_and_read_back_after_reopening() {
        let (dir, store, t) = setup();
        let mut clock = Clock::default();
        let key = record_key(t.id, &Value::String("a".into())).unwrap();
        let op = |kind| WriteOp {
            table: t.clone(),
            key: key.clone(),
            kind,
            from: None,
        };
        let message = WriteKind::Message {
            payload: b"hi".to_vec(),
            expires_at: Some(9),
            meta: Vec::new(),
        };
        let with_meta = WriteKind::Message {
            payload: b"ho".to_vec(),
            expires_at: None,
            meta: vec![1, 2, 3],
        };
        let put = WriteKind::Put(obj(&[("id", Value::String("a".into()))]));
        let mut changes = Vec::new();
        let out = store
            .apply(
                vec![op(put), op(message), op(with_meta), op(WriteKind::Delete)],
                &mut clock,
                Some(&mut changes),
            )
            .unwrap();
        // Every change encodes and decodes whole.
        for c in &changes {
            let back = Change::decode(&c.encode()).unwrap();
            assert_eq!(
                (back.table, &back.key, &back.event),
                (c.table, &c.key, &c.event)
            );
            assert_eq!(back.version, c.version);
        }
        assert!(Change::decode(&changes[0].encode()[..20]).is_none());
        store.persist(Durability::Durable).unwrap();
        drop(store);

        // The stored put and delete (not the message) are there after reopening, in order.
        let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
        let audited = store.audit_tail(10).unwrap();
        let versions: Vec<u64> = audited.iter().map(|c| c.version).collect();
        assert_eq!(versions, vec![out[0].version, out[3].version]);
        assert!(matches!(audited[0].event, Event::Put(_)));
        assert_eq!(audited[1].event, Event::Delete);
        assert_eq!(store.audit_tail(1).unwrap()[0].version, out[3].version);
        assert_eq!(store.last_version().unwrap(), out[3].version);
        // A part planned (and versioned) before a later write but committed after it is audited
        // in commit order: audit keys only grow, as FIFO compaction needs.
        let late = || op(WriteKind::Put(obj(&[("id", Value::String("a".into()))])));
        let (plan, planned) = store.plan(&[late()], &mut clock, None).unwrap();
        store.prepare(1, &[0, 1], &plan).unwrap();
        let newer = store.apply(vec![late()], &mut clock, None).unwrap();
        store.resolve(1, Some(&plan)).unwrap();
        let tail: Vec<u64> = store
            .audit_tail(2)
            .unwrap()
            .iter()
            .map(|c| c.version)
            .collect();
        assert_eq!(tail, vec![newer[0].version, planned[0].version]);
        assert_eq!(store.last_version().unwrap(), newer[0].version);
        // A clock that starts after it never goes back, whatever the system clock says.
        assert_eq!(Clock::after(u64::MAX - 1).tick(), u64::MAX);
    }

    #[test]
    fn a_read_never_returns_a_record_older_than_the_last_answered_write() {
        // Two threads read through the read cache while a third rewrites the same records;
        // a read must see at least the round the writer had finished when the read began.
        let (_d, store, t) = setup();
        let store = Arc::new(store);
        let keys: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..4)
                .map(|i| record_key(t.id, &Value::String(format!("k{i}"))).unwrap())
                .collect(),
        );
        let finished = Arc::new(AtomicU64::new(0));
        const ROUNDS: i64 = 3000;
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (store, keys, finished) = (store.clone(), keys.clone(), finished.clone());
                std::thread::spawn(move || {
                    let mut reads = 0u64;
                    loop {
                        let round = finished.load(Ordering::Acquire) as i64;
                        for k in keys.iter() {
                            let Some(bytes) = store.get(k).unwrap() else {
                                continue;
                            };
                            let body = RecordRef::parse(&bytes).unwrap().body;
                            let n = match value::from_msgpack(body).unwrap().get("n") {
                                Some(Value::Int(n)) => *n,
                                other => panic!("n is {other:?}"),
                            };
                            assert!(
                                n >= round,
                                "read round {n} after round {round} was answered"
                            );
                            reads += 1;
                        }
                        if round == ROUNDS {
                            return reads;
                        }
                    }
                })
            })
            .collect();
        let mut clock = Clock::default();
        for round in 1..=ROUNDS {
            let ops = keys
                .iter()
                .enumerate()
                .map(|(i, k)| WriteOp {
                    table: t.clone(),
                    key: k.clone(),
                    kind: WriteKind::Put(obj(&[
                        ("id", Value::String(format!("k{i}"))),
                        ("n", Value::Int(round)),
                    ])),
                    from: None,
                })
                .collect();
            store.apply(ops, &mut clock, None).unwrap();
            finished.store(round as u64, Ordering::Release);
        }
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
    }

    #[test]
    fn writes_keep_index_in_step() {
        let (_d, store, t) = setup();
        let mut clock = Clock::default();
        let key = record_key(t.id, &Value::String("a".into())).unwrap();
        let put = |v: Value| WriteOp {
            table: t.clone(),
            key: key.clone(),
            kind: WriteKind::Put(v),
            from: None,
        };
        let r1 = obj(&[
            ("id", Value::String("a".into())),
            (
                "tag",
                Value::Array(vec![Value::String("x".into()), Value::String("y".into())]),
            ),
            ("n", Value::Null),
        ]);
        let out = store.apply(vec![put(r1)], &mut clock, None).unwrap();
        assert!(!out[0].existed);
        assert_eq!(index_keys(&store).len(), 3);

        // Same key twice in one group: the second sees the first; createdTime survives.
        let r2 = obj(&[("id", Value::String("a".into())), ("n", Value::Int(5))]);
        let patch = WriteOp {
            table: t.clone(),
            key: key.clone(),
            kind: WriteKind::Patch(obj(&[(
                "tag",
                Value::Array(vec![Value::String("z".into())]),
            )])),
            from: None,
        };
        let out = store.apply(vec![put(r2), patch], &mut clock, None).unwrap();
        assert!(out[1].existed && out[1].version > out[0].version);
        let stored = store.get(&key).unwrap().unwrap();
        let rec = value::from_msgpack(RecordRef::parse(&stored).unwrap().body).unwrap();
        assert_eq!(rec.get("n"), Some(&Value::Int(5)));
        assert!(rec.get("c").unwrap().as_f64().unwrap() < rec.get("u").unwrap().as_f64().unwrap());
        assert_eq!(index_keys(&store).len(), 2);

        store
            .apply(
                vec![WriteOp {
                    table: t.clone(),
                    key: key.clone(),
                    kind: WriteKind::Delete,
                    from: None,
                }],
                &mut clock,
                None,
            )
            .unwrap();
        assert!(store.get(&key).unwrap().is_none());
        assert!(index_keys(&store).is_empty());
    }

    /// After the memtables are flushed no journal but the active one is left to replay, even when a
    /// cross-shard transaction left its marker (a few bytes in a memtable of its own).
    #[test]
    fn flushed_memtables_leave_no_sealed_journal_to_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (_d, _, t) = setup();
        let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
        let mut clock = Clock::default();
        let op = |i: u32, kind| {
            let key = record_key(t.id, &Value::Int(i.into())).unwrap();
            WriteOp::new(t.clone(), key, kind)
        };
        let add = WriteKind::Add(vec![("n".into(), Value::Int(1))]);
        let (plan, _) = store.plan(&[op(0, add)], &mut clock, None).unwrap();
        store.prepare(7, &[0, 1], &plan).unwrap();
        store.resolve(7, Some(&plan)).unwrap();
        // Past the 64 MiB at which fjall seals a journal (the marker in it), short of the
        // JOURNAL_BYTES at which it would flush the marker to drop that journal by itself.
        let big = Value::String("x".repeat(64 << 10));
        for i in 1..600u32 {
            let record = obj(&[("id", Value::Int(i.into())), ("blob", big.clone())]);
            store
                .apply(vec![op(i, WriteKind::Put(record))], &mut clock, None)
                .unwrap();
        }
        store.persist(Durability::Durable).unwrap();
        store.flush_memtables().unwrap();
        let journals: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".jnl"))
            .collect();
        assert_eq!(journals.len(), 1, "journals left: {journals:?}");
        assert!(store.applied(7).unwrap());
    }

    #[test]
    fn prepared_parts_survive_reopen_and_resolve_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let (_d, _, t) = setup();
        let key = |id: &str| record_key(t.id, &Value::String(id.into())).unwrap();
        let add = |id: &str, n: i64| WriteOp {
            table: t.clone(),
            key: key(id),
            kind: WriteKind::Add(vec![("n".into(), Value::Int(n))]),
            from: None,
        };
        {
            let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
            let mut clock = Clock::default();
            store.apply(vec![add("a", 5)], &mut clock, None).unwrap();
            // Two prepared transactions: nothing is visible until resolved.
            let (p1, _) = store.plan(&[add("a", 3)], &mut clock, None).unwrap();
            store.prepare(11, &[0, 2], &p1).unwrap();
            let (p2, _) = store
                .plan(
                    &[WriteOp {
                        table: t.clone(),
                        key: key("b"),
                        kind: WriteKind::Delete,
                        from: None,
                    }],
                    &mut clock,
                    None,
                )
                .unwrap();
            store.prepare(12, &[0, 1], &p2).unwrap();
            store.persist(Durability::Durable).unwrap();
        }
        let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
        let n_of = |store: &ShardStore| {
            let b = store.get(&key("a")).unwrap().unwrap();
            value::from_msgpack(RecordRef::parse(&b).unwrap().body)
                .unwrap()
                .get("n")
                .cloned()
        };
        assert_eq!(n_of(&store), Some(Value::Int(5)));
        let intents = store.intents().unwrap();
        assert_eq!(
            intents
                .iter()
                .map(|i| (i.txid, i.participants.clone()))
                .collect::<Vec<_>>(),
            vec![(11, vec![0, 2]), (12, vec![0, 1])]
        );
        assert!(store.has_intent(11).unwrap() && !store.applied(11).unwrap());
        let view = store.view();
        for i in &intents {
            store
                .resolve(i.txid, (i.txid == 11).then_some(&i.plan))
                .unwrap();
        }
        assert_eq!(n_of(&store), Some(Value::Int(8)));
        // A view taken before the resolve still sees the old value.
        let old = view.get(&key("a")).unwrap().unwrap();
        let old = value::from_msgpack(RecordRef::parse(&old).unwrap().body).unwrap();
        assert_eq!(old.get("n"), Some(&Value::Int(5)));
        assert!(store.intents().unwrap().is_empty());
        assert!(!store.has_intent(11).unwrap());
        // Only the applied part leaves a marker.
        assert!(store.applied(11).unwrap() && !store.applied(12).unwrap());
        store.forget(None).unwrap();
        assert!(!store.applied(11).unwrap());
        // The index follows the committed value.
        let n_index = index_prefix(t.id, t.attribute("n").unwrap().id);
        let entries: Vec<_> = store.scan_index(&n_index).map(|k| k.unwrap()).collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn a_patch_that_creates_a_record_keeps_the_last_of_repeated_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
        let mut c = Catalog::default();
        c.load_schema("s", "type P @table { id: ID @primaryKey n: Int @indexed }")
            .unwrap();
        let t = Arc::new(c.tables.remove(0).numbered(3));
        let patch = |id: &str, props: &[(&str, Value)]| WriteOp {
            table: t.clone(),
            key: record_key(t.id, &Value::String(id.into())).unwrap(),
            kind: WriteKind::Patch(obj(props)),
            from: None,
        };
        let id = |s: &str| ("id", Value::String(s.into()));
        let ops = [
            patch("a", &[id("a"), ("n", Value::Int(1)), ("n", Value::Int(2))]),
            patch("b", &[id("b"), ("n", Value::Int(5))]),
        ];
        store
            .apply(ops.to_vec(), &mut Clock::default(), None)
            .unwrap();
        let read = |id: &str| {
            let b = store
                .get(&record_key(t.id, &Value::String(id.into())).unwrap())
                .unwrap()
                .unwrap();
            value::from_msgpack(RecordRef::parse(&b).unwrap().body).unwrap()
        };
        assert_eq!(read("a"), obj(&[id("a"), ("n", Value::Int(2))]));
        assert_eq!(read("b"), obj(&[id("b"), ("n", Value::Int(5))]));
        // One index entry per record: n = 2 for a, n = 5 for b.
        assert_eq!(index_keys(&store).len(), 2);
    }

    #[test]
    fn add_numbers_keeps_integers() {
        assert_eq!(
            value::add_numbers(Some(&Value::Int(2)), &Value::Int(-5)),
            Value::Int(-3)
        );
        assert_eq!(value::add_numbers(None, &Value::Int(4)), Value::Int(4));
        assert_eq!(
            value::add_numbers(Some(&Value::Int(1)), &Value::Float(0.5)),
            Value::Float(1.5)
        );
        assert_eq!(
            value::add_numbers(Some(&Value::String("x".into())), &Value::Float(2.0)),
            Value::Float(2.0)
        );
        assert_eq!(
            value::add_numbers(Some(&Value::Int(i64::MAX)), &Value::Int(1)),
            Value::Float(i64::MAX as f64 + 1.0)
        );
    }

    #[test]
    fn max_number_key_and_rebuild() {
        let (_d, store, t) = setup();
        let mut clock = Clock::default();
        for id in [3i64, 11, 7] {
            let key = record_key(t.id, &Value::Int(id)).unwrap();
            let rec = obj(&[("id", Value::Int(id)), ("n", Value::Int(id))]);
            store
                .apply(
                    vec![WriteOp {
                        table: t.clone(),
                        key,
                        kind: WriteKind::Put(rec),
                        from: None,
                    }],
                    &mut clock,
                    None,
                )
                .unwrap();
        }
        assert_eq!(store.max_number_key(t.id).unwrap(), Some(11.0));
        assert_eq!(store.build_index(&t, "n").unwrap(), 3);
        assert_eq!(index_keys(&store).len(), 3);
    }
}
