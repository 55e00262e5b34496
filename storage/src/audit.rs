//! The audit entry of one write group, as the `audit` keyspace keeps it, and who made each
//! change ([`Origin`]: the operation, its user and its time), for `read_audit_log`.
//!
//! An entry is `highest version (u64 BE)`, then items in commit order, each `length (u32 BE) ++
//! bytes`: a change ([`Change::encode`]), or, with the length's top bit set, the origin of the
//! change after it (`at (u64 BE) ++ index (u32 BE) ++ operation (u8) ++ user`). A change
//! without an origin item before it has none (an eviction, a wasm resource's write, or one
//! written before origins were kept). One entry per group rather than per change: the audit
//! keyspace's memtable and journal take one insert per batch, not one per record written.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::history::{Delta, DeltaRef, decode_delta};
use crate::shard::{Change, now_micros};

/// The top bit of an item's length: the item is an origin, not a change.
const ORIGIN_ITEM: u32 = 1 << 31;
/// The next bit: the item is what an `addTo` added (a MessagePack map of attribute to amount)
/// to make the change after it, as entries were written before [`DELTA_ITEM`].
const ADDED_ITEM: u32 = 1 << 30;
/// The next: the item is what a partial write changed to make the change after it (a patch's
/// properties or an `addTo`'s amounts, [`DeltaRef::encode`]), which replication sends so that
/// other nodes make the same change to their record rather than take the whole of this one.
const DELTA_ITEM: u32 = 1 << 29;
/// The next: the entry is one shard's part of a cross-shard transaction (`txid (u64 BE) ++
/// parts (u32 BE)`, right after the header), which replication sends so that other nodes apply
/// the transaction's parts together.
const TXN_ITEM: u32 = 1 << 28;
/// The bits of an item's length that say what it is.
const KINDS: u32 = ORIGIN_ITEM | ADDED_ITEM | DELTA_ITEM | TXN_ITEM;

/// The cross-shard transaction a change was part of: its id (unique on its node) and how many
/// shards' parts it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Txn {
    pub id: u64,
    pub parts: u32,
}

/// The operation a write was part of, as `read_audit_log` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert = 1,
    Update = 2,
    Upsert = 3,
    Delete = 4,
    Patch = 5,
    /// A change another node made, applied here (its origin's `user` names the node).
    Replicated = 6,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
            Operation::Patch => "patch",
            Operation::Replicated => "replicated",
        }
    }

    fn from_u8(b: u8) -> Option<Operation> {
        Some(match b {
            1 => Operation::Insert,
            2 => Operation::Update,
            3 => Operation::Upsert,
            4 => Operation::Delete,
            5 => Operation::Patch,
            6 => Operation::Replicated,
            _ => return None,
        })
    }
}

/// Who made a write and as part of what: one per operation, shared by its writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    /// When the operation started (µs since the epoch), distinct for every operation this
    /// process runs, so that it names the operation's changes together across shards.
    pub at: u64,
    pub operation: Operation,
    pub user: Box<str>,
}

impl Origin {
    pub fn new(operation: Operation, user: &str) -> Arc<Origin> {
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = now_micros();
        let prev = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        Arc::new(Origin {
            at: now.max(prev + 1),
            operation,
            user: user.into(),
        })
    }
}

/// What one write carries into the audit log: its operation's origin and its place in it.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub origin: Arc<Origin>,
    /// The write's position among its operation's writes (the order of its records).
    pub index: u32,
}

/// A change read back from the audit log with its origin, when it had one.
#[derive(Debug, Clone)]
pub struct Audited {
    pub change: Change,
    pub origin: Option<(Origin, u32)>,
    /// What a partial write (a patch or an `addTo`) changed to make the change, when it was
    /// one and it was kept (patches' are kept only by a replicating shard).
    pub delta: Option<Delta>,
    /// The cross-shard transaction it was part of.
    pub txn: Option<Txn>,
}

/// The audit entry of one write group, being built.
#[derive(Debug)]
pub(crate) struct AuditEntry(pub(crate) Vec<u8>);

impl Default for AuditEntry {
    fn default() -> Self {
        AuditEntry::with_capacity(0)
    }
}

/// One item of an entry, undecoded.
enum Item<'a> {
    Origin(&'a [u8]),
    Added(&'a [u8]),
    Delta(&'a [u8]),
    Txn(&'a [u8]),
    Change(&'a [u8]),
}

impl AuditEntry {
    /// An entry with no change yet, with room for `bytes` of changes.
    pub(crate) fn with_capacity(bytes: usize) -> AuditEntry {
        let mut b = Vec::with_capacity(8 + bytes);
        b.extend_from_slice(&0u64.to_be_bytes());
        AuditEntry(b)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.len() <= 8
    }

    /// Marks the entry as one shard's part of cross-shard transaction `txn` (an entry with no
    /// change is left alone).
    pub(crate) fn mark_transaction(&mut self, txn: Txn) {
        if self.is_empty() {
            return;
        }
        let mut item = Vec::with_capacity(16);
        item.extend_from_slice(&(12 | TXN_ITEM).to_be_bytes());
        item.extend_from_slice(&txn.id.to_be_bytes());
        item.extend_from_slice(&txn.parts.to_be_bytes());
        self.0.splice(8..8, item);
    }

    /// Whether any change of the entry has its origin.
    pub(crate) fn has_origins(&self) -> bool {
        Self::items(&self.0).any(|(item, _)| matches!(item, Item::Origin(_)))
    }

    /// The highest version of the changes of an entry, read without decoding them.
    pub(crate) fn highest(b: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
    }

    /// Adds a put of `stored` (`None`: a delete), after its origin when it has one, and what
    /// an `addTo` added to make it.
    pub(crate) fn push(
        &mut self,
        version: u64,
        table: u32,
        key: &[u8],
        stored: Option<&[u8]>,
        from: Option<&Provenance>,
        delta: Option<DeltaRef<'_>>,
    ) {
        if let Some(p) = from {
            let user = p.origin.user.as_bytes();
            let len = (13 + user.len()) as u32 | ORIGIN_ITEM;
            self.0.extend_from_slice(&len.to_be_bytes());
            self.0.extend_from_slice(&p.origin.at.to_be_bytes());
            self.0.extend_from_slice(&p.index.to_be_bytes());
            self.0.push(p.origin.operation as u8);
            self.0.extend_from_slice(user);
        }
        if let Some(delta) = delta {
            let at = self.0.len();
            self.0.extend_from_slice(&[0; 4]);
            delta.encode(&mut self.0);
            let len = (self.0.len() - at - 4) as u32 | DELTA_ITEM;
            self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        Change::encode_stored(&mut self.0, version, table, key, stored);
        let len = (self.0.len() - at - 4) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
        let highest = Self::highest(&self.0).unwrap_or(0).max(version);
        self.0[..8].copy_from_slice(&highest.to_be_bytes());
    }

    /// The items of an entry, with each one's bytes as stored (length included); stops at
    /// the first it cannot read.
    fn items(b: &[u8]) -> impl Iterator<Item = (Item<'_>, &[u8])> {
        let mut rest = b.get(8..).unwrap_or_default();
        std::iter::from_fn(move || {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            let n = (len & !KINDS) as usize;
            let body = rest.get(4..4 + n)?;
            let whole = &rest[..4 + n];
            rest = &rest[4 + n..];
            let item = if len & ORIGIN_ITEM != 0 {
                Item::Origin(body)
            } else if len & ADDED_ITEM != 0 {
                Item::Added(body)
            } else if len & DELTA_ITEM != 0 {
                Item::Delta(body)
            } else if len & TXN_ITEM != 0 {
                Item::Txn(body)
            } else {
                Item::Change(body)
            };
            Some((item, whole))
        })
    }

    /// The changes of an entry, in commit order.
    pub(crate) fn changes(b: &[u8]) -> impl Iterator<Item = Change> + '_ {
        Self::items(b).filter_map(|(item, _)| match item {
            Item::Change(c) => Change::decode(c),
            Item::Origin(_) | Item::Added(_) | Item::Delta(_) | Item::Txn(_) => None,
        })
    }

    /// The changes of table `table` (`None`: of every table) in an entry, in commit order,
    /// each with its origin.
    pub(crate) fn audited(b: &[u8], table: Option<u32>) -> Vec<Audited> {
        let mut out = Vec::new();
        let (mut origin, mut delta, mut txn) = (None, None, None);
        for (item, _) in Self::items(b) {
            match item {
                Item::Txn(t) => txn = decode_txn(t),
                Item::Origin(o) => origin = decode_origin(o),
                Item::Added(a) => delta = decode_added(a).map(Delta::Add),
                Item::Delta(d) => delta = decode_delta(d),
                Item::Change(c) => {
                    let (from, delta) = (origin.take(), delta.take());
                    if table.is_none_or(|t| Change::table_of(c) == Some(t))
                        && let Some(change) = Change::decode(c)
                    {
                        out.push(Audited {
                            change,
                            origin: from,
                            delta,
                            txn,
                        });
                    }
                }
            }
        }
        out
    }

    /// The entry without the changes of `table` older than `before` (and their origins), or
    /// `None` when it has none of them; with the number left out.
    pub(crate) fn without(b: &[u8], table: u32, before: u64) -> Option<(Vec<u8>, usize)> {
        let mut out = Vec::with_capacity(b.len());
        out.extend_from_slice(b.get(..8)?);
        // The items before a change (its origin, what it added) go or stay with it.
        let mut pending: Vec<&[u8]> = Vec::new();
        let mut dropped = 0;
        for (item, whole) in Self::items(b) {
            match item {
                // The entry's, not a change's: it stays.
                Item::Txn(_) => out.extend_from_slice(whole),
                Item::Origin(_) | Item::Added(_) | Item::Delta(_) => pending.push(whole),
                Item::Change(c) => {
                    let old = Change::table_of(c) == Some(table)
                        && Change::version_of(c).is_some_and(|v| v < before);
                    if old {
                        dropped += 1;
                    } else {
                        for p in &pending {
                            out.extend_from_slice(p);
                        }
                        out.extend_from_slice(whole);
                    }
                    pending.clear();
                }
            }
        }
        (dropped > 0).then_some((out, dropped))
    }
}

fn decode_added(b: &[u8]) -> Option<Vec<(String, crate::Value)>> {
    match crate::value::from_msgpack(b).ok()? {
        crate::Value::Object(pairs) => Some(pairs),
        _ => None,
    }
}

fn decode_txn(b: &[u8]) -> Option<Txn> {
    Some(Txn {
        id: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
        parts: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
    })
}

fn decode_origin(b: &[u8]) -> Option<(Origin, u32)> {
    let at = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let index = u32::from_be_bytes(b.get(8..12)?.try_into().ok()?);
    let operation = Operation::from_u8(*b.get(12)?)?;
    let user = std::str::from_utf8(b.get(13..)?).ok()?.into();
    Some((
        Origin {
            at,
            operation,
            user,
        },
        index,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Event;

    #[test]
    fn origins_travel_with_their_changes_and_old_ones_can_be_left_out() {
        let admin = Origin::new(Operation::Insert, "admin");
        let later = Origin::new(Operation::Delete, "rita");
        assert!(later.at > admin.at);
        let mut e = AuditEntry::default();
        let p = |origin: &Arc<Origin>, index| Provenance {
            origin: origin.clone(),
            index,
        };
        let three = [("n".to_owned(), crate::Value::Int(3))];
        e.push(10, 7, b"k1", Some(b"r1"), Some(&p(&admin, 0)), None);
        e.push(11, 8, b"k2", Some(b"r2"), None, Some(DeltaRef::Add(&three)));
        e.push(12, 7, b"k3", None, Some(&p(&later, 1)), None);
        assert_eq!(AuditEntry::highest(&e.0), Some(12));
        assert_eq!(AuditEntry::changes(&e.0).count(), 3);
        let of7 = AuditEntry::audited(&e.0, Some(7));
        assert_eq!(of7.len(), 2);
        assert_eq!(of7[0].change.event, Event::Put(b"r1".to_vec()));
        assert_eq!(of7[0].origin, Some(((*admin).clone(), 0)));
        assert_eq!(of7[1].change.event, Event::Delete);
        assert_eq!(of7[1].origin.as_ref().map(|o| &*o.0.user), Some("rita"));
        // Table 8's change had no origin; it was an addTo of 3.
        assert_eq!(AuditEntry::audited(&e.0, Some(8))[0].origin, None);
        assert_eq!(
            AuditEntry::audited(&e.0, Some(8))[0].delta,
            Some(Delta::Add(three.to_vec()))
        );
        assert_eq!(of7[0].delta, None);
        assert_eq!(of7[0].txn, None);

        let (kept, dropped) = AuditEntry::without(&e.0, 7, 12).unwrap();
        assert_eq!(dropped, 1);
        let left = AuditEntry::audited(&kept, Some(7));
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].change.version, 12);
        assert_eq!(left[0].origin.as_ref().map(|o| o.1), Some(1));
        assert_eq!(AuditEntry::audited(&kept, Some(8)).len(), 1);
        assert_eq!(
            AuditEntry::audited(&kept, Some(8))[0].delta,
            Some(Delta::Add(three.to_vec()))
        );
        assert!(AuditEntry::without(&kept, 7, 12).is_none());

        // A transaction's part: every change of the entry says so, after leaving some out too.
        let txn = Txn { id: 77, parts: 3 };
        e.mark_transaction(txn);
        assert!(
            AuditEntry::audited(&e.0, None)
                .iter()
                .all(|a| a.txn == Some(txn))
        );
        assert_eq!(AuditEntry::highest(&e.0), Some(12));
        let (kept, _) = AuditEntry::without(&e.0, 7, 12).unwrap();
        assert_eq!(AuditEntry::audited(&kept, None)[0].txn, Some(txn));
        let mut empty = AuditEntry::default();
        empty.mark_transaction(txn);
        assert!(empty.is_empty());
    }
}
