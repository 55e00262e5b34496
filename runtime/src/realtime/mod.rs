//! Subscriptions and the fan-out of committed changes .
//!
//! A subscription to one record lives on the core that owns the record's shard; a subscription to
//! a whole table (or a wildcard inside it) lives on every core, for the shards each owns. Each
//! shard's writer sends its committed changes to the owner core ([`follow`]; an MQTT message
//! goes there directly, [`publish_message`]), which finds the subscribers of each change and
//! hands the changes to the subscribers' cores over the mesh, grouped per core. There, each
//! connection has a bounded inbox, so a slow subscriber never holds up its core or anyone else:
//! past 1,024 waiting changes, those promised at most once are dropped and counted; those a
//! subscriber acknowledges are never dropped: past 65,536 the connection is marked overrun and
//! its front ends it (an MQTT kept session takes what waits into its backlog). Deliveries for
//! another core are posted to it in the order they were dispatched, by one task per core.
//!
//! The layer knows no protocol: a front subscribes a connection, reads its inbox, and encodes
//! what it gets for its own wire ([`Broadcast::wire`] keeps an encoding a front wants to share
//! between its subscribers).
//!
//! Files: `registry.rs` (each core's subscriptions and inboxes), `fanout.rs` (following the
//! shards' change feeds, dispatching to subscribers' cores, messages that store nothing),
//! `audit.rs` (recent changes per shard), `past.rs` (subscriptions that start in the past).

mod audit;
mod fanout;
mod past;
mod registry;

use std::sync::Arc;

// foldhash rather than SipHash: a fan-out looks up an inbox for each subscriber of each change.
use hashbrown::HashMap;
use tessera_shards::Router;
use tessera_storage::Table;
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Event, now_micros, record_key};

use crate::app::keys::id_value;
use crate::data::query;

pub use fanout::{InFlight, follow, publish_message, redeliver_shared};
use past::shards_of;
pub use past::subscribe_since;
use registry::{add_exact, add_pattern, remove};
pub use registry::{close_inbox, id_text, new_conn, open_inbox, overrun};

/// Where a subscription starts in the past (the Resource API's `previousCount` and `startTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The last N changes.
    Count(usize),
    /// Changes at or after this time (ms since the epoch).
    Time(u64),
    /// Changes with a version above this one (µs since the epoch).
    After(u64),
}

/// `previousCount=N` or `startTime=MS` in a query string (WebSocket and SSE subscriptions).
pub fn since_of(query: Option<&str>) -> Option<Since> {
    for pair in query?.split('&') {
        match pair.split_once('=') {
            Some(("previousCount", n)) => return n.parse().ok().map(Since::Count),
            Some(("startTime", t)) => return t.parse::<f64>().ok().map(|t| Since::Time(t as u64)),
            _ => {}
        }
    }
    None
}

/// Who gets a change: a connection on a core, for one of its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber {
    pub core: usize,
    pub conn: u64,
    /// The connection's number for the subscription (to remove it).
    pub sub: u32,
    pub guarantee: Guarantee,
    /// The front's own options for the subscription's deliveries (MQTT 5's No Local and Retain
    /// As Published), carried to each [`Delivery`] untouched.
    pub options: u8,
    /// The share group it belongs to (0: none): each change goes to one member of a group.
    pub share: u32,
}

/// The record ids a table subscription covers: MQTT filter levels after the table's (`#`, `+`
/// or literal levels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub Vec<String>);

impl Pattern {
    /// Whether a record id (split at `/` like a topic) matches.
    pub fn matches(&self, id: &str) -> bool {
        let levels: Vec<&str> = id.split('/').collect();
        let mut i = 0;
        for (n, p) in self.0.iter().enumerate() {
            match p.as_str() {
                "#" => return n == self.0.len() - 1,
                "+" => {
                    if i >= levels.len() {
                        return false;
                    }
                }
                lit => {
                    if levels.get(i) != Some(&lit) {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == levels.len()
    }
}

/// A change on its way to subscribers: one core's handle on what all of them share.
///
/// Each core's subscribers hold `Arc`s of their core's own handle ([`Broadcast::for_core`]),
/// not of one `Arc` for every core: with a single count, every delivery's clone and drop moved
/// the count's cache line between cores (in a QoS 0 fan-out to subscribers on two cores, the
/// largest single cost in a profile).
pub struct Broadcast(Arc<Shared>);

/// The change and its encodings, shared by every core's [`Broadcast`]. Aligned apart from the
/// `Arc`'s counts, so that reading the change never waits on a core changing them.
#[repr(align(128))]
pub struct Shared {
    change: Change,
    /// Encodings of the change that a front computes once and shares between its subscribers,
    /// in slots the front numbers (`None`: the change has no encoding there).
    wire: [std::sync::OnceLock<Option<Arc<[u8]>>>; 2],
}

impl Broadcast {
    pub fn new(change: Change) -> Arc<Broadcast> {
        Arc::new(Broadcast(Arc::new(Shared {
            change,
            wire: Default::default(),
        })))
    }

    /// A handle on the same change for the subscribers of one core.
    pub fn for_core(&self) -> Arc<Broadcast> {
        Arc::new(Broadcast(self.0.clone()))
    }

    pub fn change(&self) -> &Change {
        &self.0.change
    }

    /// The shared encodings ([`Shared::wire`]).
    pub fn wire(&self) -> &[std::sync::OnceLock<Option<Arc<[u8]>>>; 2] {
        &self.0.wire
    }
}

impl std::ops::Deref for Broadcast {
    type Target = Change;
    fn deref(&self) -> &Change {
        &self.0.change
    }
}

/// What a subscriber was promised for the changes of a subscription.
// The usual names of delivery guarantees.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guarantee {
    /// A change may be lost (dropped when the subscriber lags, not sent again).
    AtMostOnce,
    /// A change is delivered until the subscriber acknowledges it.
    AtLeastOnce,
    /// A change is delivered once, in a two-step acknowledgement.
    ExactlyOnce,
}

/// One change as delivered to one subscriber.
#[derive(Clone)]
pub struct Delivery {
    pub change: Arc<Broadcast>,
    pub guarantee: Guarantee,
    /// The subscription's [`Subscriber::options`].
    pub options: u8,
    /// The share group it was given to one member of (0: none); see [`redeliver_shared`].
    pub share: u32,
}

/// What a subscription covers.
#[derive(Debug, Clone)]
pub enum Scope {
    /// One record, by its id as written in a path or topic.
    Record(String),
    /// Records of the table whose ids match.
    Pattern(Pattern),
}

/// Registers `sub` for `scope` in `table` where changes to it are dispatched (the owner core of
/// a record's shard, or every core for a pattern), records that in `held`, and returns what the
/// subscriber starts with: the current records it covers (in primary-key order), or with
/// `since`, the logged changes from then on (see [`subscribe_since`]). `None` when the id cannot
/// be a key.
///
/// A change committed before the current records are read is not sent again, even when it is
/// still on its way through the feed: each registration notes the last feed group applied to its
/// shards before the read starts, and the subscription skips the groups up to it.
pub async fn subscribe(
    router: &Router,
    table: &Arc<Table>,
    scope: Scope,
    since: Option<Since>,
    sub: Subscriber,
    held: &mut Subscriptions,
) -> Option<Vec<Change>> {
    if let Some(since) = since {
        let logged = subscribe_since(router, table, &scope, sub, held, since).await?;
        return Some(logged.iter().map(|f| f.change().clone()).collect());
    }
    let now_ms = now_micros() / 1000;
    let live = |stored: &[u8]| RecordRef::parse(stored).is_some_and(|r| !r.is_expired(now_ms));
    let pattern = match scope {
        Scope::Record(id) => {
            let key = record_key(table.id, &id_value(table, &id)).ok()?;
            let shard = router.shard_of(&key);
            let owner = router.owner(shard);
            let k = key.clone();
            let current = router
                .on_core(owner, move |set| {
                    add_exact(set, k.clone(), sub, set.applied(shard));
                    set.store(shard).and_then(|s| s.get(&k).ok().flatten())
                })
                .await
                .ok()?;
            held.cores.insert(sub.sub, vec![owner]);
            let current = current.filter(|s| live(s)).map(|stored| Change {
                table: table.id,
                key,
                event: Event::Put(stored.to_vec()),
                version: 0,
            });
            return Some(current.into_iter().collect());
        }
        Scope::Pattern(p) => p,
    };
    let cores: Vec<usize> = (0..router.cores()).collect();
    for &c in &cores {
        let (p, tid) = (pattern.clone(), table.id);
        let shards = shards_of(router, c);
        router
            .on_core(c, move |set| {
                let from = shards.iter().map(|&s| (s, set.applied(s))).collect();
                add_pattern(set, tid, p, sub, from);
            })
            .await
            .ok()?;
    }
    held.cores.insert(sub.sub, cores);
    let mut rows = query::matching(router, table, None);
    let mut current = Vec::new();
    while let Ok(Some(row)) = rows.next().await {
        if id_text(&row.key).is_some_and(|id| pattern.matches(&id)) {
            current.push(Change {
                table: table.id,
                key: row.key.to_vec(),
                event: Event::Put(row.stored.to_vec()),
                version: 0,
            });
        }
    }
    Some(current)
}

/// A connection's subscriptions, by its number for each, with the cores holding each, so that
/// they can be removed when it unsubscribes or goes.
#[derive(Default)]
pub struct Subscriptions {
    pub cores: HashMap<u32, Vec<usize>>,
}

impl Subscriptions {
    /// Removes every subscription of `conn` (or just `sub`) from the cores that hold them.
    pub async fn release(&mut self, router: &Router, conn: u64, sub: Option<u32>) {
        let cores: Vec<usize> = match sub {
            Some(n) => self.cores.remove(&n).unwrap_or_default(),
            None => {
                let mut all: Vec<usize> = self.cores.drain().flat_map(|(_, c)| c).collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        };
        for core in cores {
            let _ = router
                .on_core(core, move |set| remove(set, conn, sub))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern(s.split('/').map(str::to_owned).collect());
        assert!(p("#").matches("42"));
        assert!(p("#").matches("zone/a/b"));
        assert!(p("zone/#").matches("zone/a"));
        assert!(!p("zone/#").matches("zonex/a"));
        assert!(p("zone/+").matches("zone/a"));
        assert!(!p("zone/+").matches("zone/a/b"));
        assert!(p("+/q").matches("x/q"));
        assert!(!p("+/q").matches("x/r"));
        assert!(p("s1").matches("s1"));
        assert!(!p("s1").matches("s2"));
    }
}
