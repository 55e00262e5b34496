//! Each core's subscriptions (to single records of the shards it owns, and to whole tables) and
//! the inboxes of the connections on it.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use futures::channel::mpsc::UnboundedReceiver;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use hashbrown::HashMap;
use tessera_shards::{Committed, ShardSet};
use tessera_storage::key;

use super::audit::AuditLog;
use super::{Delivery, Guarantee, Pattern, Subscriber};

/// Changes waiting for one connection before further ones at most once (QoS 0) are dropped.
pub const INBOX: usize = 1024;

/// Changes waiting for one connection before it is overrun: the subscriber acknowledges what
/// it receives (QoS 1 and 2), so its deliveries are never dropped; past this many it is told to
/// go (MQTT 5 reason 0x97, quota exceeded), and a kept session takes what waits (and what comes)
/// into its backlog, which spills to disk.
pub const ACKNOWLEDGED_INBOX: usize = 65_536;

/// A table subscription on one core.
pub(super) struct PatternSub {
    pub(super) table: u32,
    pub(super) pattern: Pattern,
    pub(super) sub: Subscriber,
    /// Shards of this core with the feed group the subscription starts after (none: from the
    /// next group of each).
    pub(super) from: Vec<(usize, u64)>,
}

impl PatternSub {
    /// Whether a group of `shard`'s feed is one the subscription's starting read already saw.
    pub(super) fn saw(&self, shard: usize, group: u64) -> bool {
        self.from.iter().any(|&(s, g)| s == shard && group <= g)
    }
}

#[derive(Default)]
pub(super) struct Registry {
    /// Subscriptions to single records of the shards this core owns, by record key, each with
    /// the feed group of the record's shard it starts after.
    pub(super) exact: HashMap<Vec<u8>, Vec<(Subscriber, u64)>>,
    /// Table subscriptions, for the shards this core owns.
    pub(super) patterns: Vec<PatternSub>,
    /// The inboxes of the connections on this core.
    pub(super) inboxes: HashMap<u64, LocalSender<Delivery>>,
    /// Changes dropped because an inbox was full.
    pub(super) dropped: u64,
    /// Connections whose inbox overran [`ACKNOWLEDGED_INBOX`] (see [`overrun`]).
    pub(super) overrun: hashbrown::HashSet<u64>,
    /// Changes dispatched to each share group so far, which picks the member for the next.
    pub(super) shares: HashMap<u32, u64>,
    /// The audit log of each shard this core owns.
    pub(super) audit: HashMap<usize, AuditLog>,
}

thread_local! {
    pub(super) static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
    static NEXT_CONN: RefCell<u64> = const { RefCell::new(0) };
    /// The feeds of the shards this core owns (see [`follow`]).
    pub(super) static FEEDS: RefCell<HashMap<usize, UnboundedReceiver<Committed>>> = RefCell::default();
}

/// A new connection id, unique in the process (the core is in the top bits).
pub fn new_conn(core: usize) -> u64 {
    NEXT_CONN.with(|n| {
        let mut n = n.borrow_mut();
        *n += 1;
        ((core as u64) << 48) | *n
    })
}

/// Opens the inbox of a connection on this core. Unbounded as a channel (so an idle
/// connection holds no preallocated queue); [`deliver`] enforces [`INBOX`].
pub fn open_inbox(conn: u64) -> LocalReceiver<Delivery> {
    let (tx, rx) = local_channel::new_unbounded();
    REGISTRY.with(|r| r.borrow_mut().inboxes.insert(conn, tx));
    rx
}

pub fn close_inbox(conn: u64) {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        r.inboxes.remove(&conn);
        r.overrun.remove(&conn);
    });
}

/// Whether the connection's inbox overran [`ACKNOWLEDGED_INBOX`]: its front should end it (the
/// deliveries past the limit were not queued).
pub fn overrun(conn: u64) -> bool {
    REGISTRY.with(|r| r.borrow().overrun.contains(&conn))
}

/// Adds a subscription to one record that gets the groups of its shard's feed after `from`;
/// runs on the owner core of the record's shard.
pub(super) fn add_exact(set: &ShardSet, key: Vec<u8>, s: Subscriber, from: u64) {
    REGISTRY.with(|r| r.borrow_mut().exact.entry(key).or_default().push((s, from)));
    set.watchers().fetch_add(1, Ordering::Relaxed);
}

/// Adds a table subscription for the shards of this core; `from` gives, for some of them, the
/// feed group it starts after.
pub(super) fn add_pattern(
    set: &ShardSet,
    table: u32,
    pattern: Pattern,
    sub: Subscriber,
    from: Vec<(usize, u64)>,
) {
    REGISTRY.with(|r| {
        r.borrow_mut().patterns.push(PatternSub {
            table,
            pattern,
            sub,
            from,
        })
    });
    set.watchers().fetch_add(1, Ordering::Relaxed);
}

/// Removes a connection's subscriptions held on this core (`sub`: only that one).
pub fn remove(set: &ShardSet, conn: u64, sub: Option<u32>) {
    let hit = |s: &Subscriber| s.conn == conn && sub.is_none_or(|n| n == s.sub);
    let removed = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let mut removed = 0;
        r.exact.retain(|_, subs| {
            let before = subs.len();
            subs.retain(|(s, _)| !hit(s));
            removed += before - subs.len();
            !subs.is_empty()
        });
        let before = r.patterns.len();
        r.patterns.retain(|p| !hit(&p.sub));
        removed + before - r.patterns.len()
    });
    set.watchers().fetch_sub(removed, Ordering::Relaxed);
}

/// The id of a record key as a topic level string (`42`, `zone/a`).
pub fn id_text(record_key: &[u8]) -> Option<String> {
    let (v, _) = key::decode(record_key.get(4..)?).ok()?;
    Some(match v {
        tessera_storage::Value::String(s) => s,
        other => other.to_json(),
    })
}

/// Delivers changes to connections on this core.
pub(super) fn deliver(items: Vec<(u64, Delivery)>) {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        for (conn, d) in items {
            let acknowledged = d.guarantee != Guarantee::AtMostOnce;
            let limit = if acknowledged {
                ACKNOWLEDGED_INBOX
            } else {
                INBOX
            };
            let Some(tx) = r.inboxes.get(&conn) else {
                continue;
            };
            let over = tx.len() >= limit;
            if acknowledged {
                // Queued even past the limit: its front ends the connection (within a second)
                // and a kept session takes the inbox over.
                let _ = tx.try_send(d);
                if over && r.overrun.insert(conn) {
                    tracing::warn!(
                        "realtime: connection {conn:x} has {ACKNOWLEDGED_INBOX} acknowledged deliveries waiting; it is ended (quota exceeded)"
                    );
                }
                continue;
            }
            let full = over || tx.try_send(d).is_err();
            if full {
                r.dropped += 1;
                if r.dropped % 1000 == 1 {
                    tracing::warn!(
                        "realtime: a subscriber's queue is full: {} changes dropped on this core so far",
                        r.dropped
                    );
                }
            }
        }
    });
}
