//! Subscriptions and the fan-out of committed changes (DESIGN.md, "Real-time").
//!
//! A subscription to one record lives on the core that owns the record's shard; a subscription to
//! a whole table (or a wildcard inside it) lives on every core, for the shards each owns. Each
//! shard's writer sends its committed changes to the owner core ([`follow`]; an MQTT message
//! goes there directly, [`publish_message`]), which finds the subscribers of each change and
//! hands the changes to the subscribers' cores over the mesh, grouped per core. There, each
//! connection has a bounded inbox; when it is full, changes are dropped for that connection and
//! counted, so a slow subscriber never holds up its core or anyone else.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
// foldhash rather than SipHash: a fan-out looks up an inbox for each subscriber of each change.
use hashbrown::HashMap;
use tessera_protocol::mqtt::QoS;
use tessera_shards::{Committed, Router, ShardSet};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Clock, Event, now_micros, record_key};
use tessera_storage::{Table, key};

use crate::query;
use crate::rest::id_value;

/// Recent changes each owner core keeps in memory per shard, for subscriptions that start in the
/// past. The shard's store keeps them too (its `audit` keyspace), so they outlive a restart.
pub const AUDIT: usize = 10_000;

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

/// The changes of a table a subscription covers: one record's, or those of the ids a pattern
/// matches.
#[derive(Clone)]
enum Covered {
    Key(Vec<u8>),
    Ids(Pattern),
}

impl Covered {
    fn covers(&self, c: &Change) -> bool {
        match self {
            Covered::Key(k) => *k == c.key,
            Covered::Ids(p) => id_text(&c.key).is_some_and(|id| p.matches(&id)),
        }
    }
}

/// Where the changes `scope` covers are dispatched (the owner core of a record's shard, or every
/// core for a pattern), and which they are. `None` when the id cannot be a key.
fn placement(router: &Router, table: &Table, scope: &Scope) -> Option<(Vec<usize>, Covered)> {
    Some(match scope {
        Scope::Record(id) => {
            let key = record_key(table.id, &id_value(table, id)).ok()?;
            (vec![router.owner(router.shard_of(&key))], Covered::Key(key))
        }
        Scope::Pattern(p) => ((0..router.cores()).collect(), Covered::Ids(p.clone())),
    })
}

/// The shards `core` owns.
fn shards_of(router: &Router, core: usize) -> Vec<usize> {
    (0..router.shard_count())
        .filter(|s| router.owner(*s) == core)
        .collect()
}

/// The logged changes of table `tid` on this core (its `shards`) that `covered` covers.
fn logged_here(set: &ShardSet, shards: &[usize], tid: u32, covered: &Covered) -> Vec<Arc<Fanned>> {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        for &shard in shards {
            AuditLog::of(&mut r.audit, set, shard);
        }
        r.audit
            .values()
            .flat_map(|log| &log.changes)
            .filter(|c| c.table == tid && covered.covers(c))
            .cloned()
            .collect()
    })
}

/// The changes of `found` from `since` on, in commit order.
fn from_since(mut found: Vec<Arc<Fanned>>, since: Since) -> Vec<Arc<Fanned>> {
    found.sort_by_key(|c| c.version);
    match since {
        Since::Count(n) => {
            let skip = found.len().saturating_sub(n);
            found.split_off(skip)
        }
        Since::Time(ms) => found
            .into_iter()
            .filter(|c| c.version / 1000 >= ms)
            .collect(),
        Since::After(v) => found.into_iter().filter(|c| c.version > v).collect(),
    }
}

/// Registers `sub` for `scope` like [`subscribe`], for a subscription that starts in the past
/// (or picks up where an earlier one stopped): instead of the current records, returns the
/// logged changes it covers from `since` on, in commit order. Each core reads its log in the same
/// step as it registers, so every change is either in the result or reaches the subscriber's
/// inbox, never both and never neither.
pub async fn subscribe_since(
    router: &Router,
    table: &Table,
    scope: &Scope,
    sub: Subscriber,
    held: &mut Held,
    since: Since,
) -> Option<Vec<Arc<Fanned>>> {
    let (cores, covered) = placement(router, table, scope)?;
    let mut found = Vec::new();
    for &core in &cores {
        let (covered, tid) = (covered.clone(), table.id);
        let shards = shards_of(router, core);
        let part = router
            .on_core(core, move |set| {
                // The log holds every change dispatched so far, and the subscription gets every
                // change dispatched from now on: it skips none.
                match &covered {
                    Covered::Key(k) => add_exact(set, k.clone(), sub, 0),
                    Covered::Ids(p) => add_pattern(set, tid, p.clone(), sub, Vec::new()),
                }
                logged_here(set, &shards, tid, &covered)
            })
            .await
            .ok()?;
        found.extend(part);
    }
    held.subs.insert(sub.sub, cores);
    Some(from_since(found, since))
}

/// One shard's audit log on its owner core.
struct AuditLog {
    /// Its most recent changes, oldest first.
    changes: VecDeque<Arc<Fanned>>,
    /// The highest version read back from the shard's store when the log was filled.
    read_up_to: u64,
}

impl AuditLog {
    /// The log of `shard`, filled from the shard's store the first time (the changes it
    /// committed before this process started).
    fn of<'a>(
        logs: &'a mut HashMap<usize, AuditLog>,
        set: &ShardSet,
        shard: usize,
    ) -> &'a mut AuditLog {
        logs.entry(shard).or_insert_with(|| {
            let stored = match set.store(shard).map(|s| s.audit_tail(AUDIT)) {
                Some(Ok(changes)) => changes,
                Some(Err(e)) => {
                    eprintln!("realtime: reading the audit log of shard {shard}: {e}");
                    Vec::new()
                }
                None => Vec::new(),
            };
            AuditLog {
                read_up_to: stored.iter().map(|c| c.version).max().unwrap_or(0),
                changes: stored.into_iter().map(Fanned::new).collect(),
            }
        })
    }

    /// Logs `change`, dropping the oldest beyond [`AUDIT`]. A change read back from the store
    /// (committed while the log was being filled) is not logged twice. Versions do not always
    /// arrive in order (a cross-shard transaction's part is versioned when prepared), so only
    /// those up to what was read are looked up.
    fn push(&mut self, change: &Arc<Fanned>) {
        if change.version <= self.read_up_to
            && self.changes.iter().any(|c| c.version == change.version)
        {
            return;
        }
        if self.changes.len() == AUDIT {
            self.changes.pop_front();
        }
        self.changes.push_back(change.clone());
    }
}

/// Changes waiting for one connection before further ones are dropped.
pub const INBOX: usize = 1024;

/// Who gets a change: a connection on a core, for one of its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscriber {
    pub core: usize,
    pub conn: u64,
    /// The connection's number for the subscription (to remove it).
    pub sub: u32,
    pub qos: QoS,
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

/// A change on its way to subscribers, shared by all of them (on every core), with its QoS 0
/// MQTT PUBLISH frame encoded once per protocol version by the first subscriber that needs it.
pub struct Fanned {
    pub change: Change,
    /// The QoS 0 PUBLISH for MQTT 3.1.1 and for MQTT 5 (`None`: the change has no topic).
    pub frames: [std::sync::OnceLock<Option<Arc<[u8]>>>; 2],
}

impl Fanned {
    pub fn new(change: Change) -> Arc<Fanned> {
        Arc::new(Fanned {
            change,
            frames: Default::default(),
        })
    }
}

impl std::ops::Deref for Fanned {
    type Target = Change;
    fn deref(&self) -> &Change {
        &self.change
    }
}

/// One change as delivered to one subscriber.
pub type Delivery = (Arc<Fanned>, QoS);

/// A table subscription on one core.
struct PatternSub {
    table: u32,
    pattern: Pattern,
    sub: Subscriber,
    /// Shards of this core with the feed group the subscription starts after (none: from the
    /// next group of each).
    from: Vec<(usize, u64)>,
}

impl PatternSub {
    /// Whether a group of `shard`'s feed is one the subscription's starting read already saw.
    fn saw(&self, shard: usize, group: u64) -> bool {
        self.from.iter().any(|&(s, g)| s == shard && group <= g)
    }
}

#[derive(Default)]
struct Registry {
    /// Subscriptions to single records of the shards this core owns, by record key, each with
    /// the feed group of the record's shard it starts after.
    exact: HashMap<Vec<u8>, Vec<(Subscriber, u64)>>,
    /// Table subscriptions, for the shards this core owns.
    patterns: Vec<PatternSub>,
    /// The inboxes of the connections on this core.
    inboxes: HashMap<u64, LocalSender<Delivery>>,
    /// Changes dropped because an inbox was full.
    dropped: u64,
    /// The audit log of each shard this core owns.
    audit: HashMap<usize, AuditLog>,
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
    static NEXT_CONN: RefCell<u64> = const { RefCell::new(0) };
    /// The feeds of the shards this core owns (see [`follow`]).
    static FEEDS: RefCell<HashMap<usize, UnboundedReceiver<Committed>>> = RefCell::default();
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
    REGISTRY.with(|r| r.borrow_mut().inboxes.remove(&conn));
}

/// Adds a subscription to one record that gets the groups of its shard's feed after `from`;
/// runs on the owner core of the record's shard.
fn add_exact(set: &ShardSet, key: Vec<u8>, s: Subscriber, from: u64) {
    REGISTRY.with(|r| r.borrow_mut().exact.entry(key).or_default().push((s, from)));
    set.watchers().fetch_add(1, Ordering::Relaxed);
}

/// Adds a table subscription for the shards of this core; `from` gives, for some of them, the
/// feed group it starts after.
fn add_pattern(
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
fn deliver(items: Vec<(u64, Delivery)>) {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        for (conn, d) in items {
            let full = match r.inboxes.get(&conn) {
                Some(tx) if tx.len() >= INBOX => true,
                Some(tx) => tx.try_send(d).is_err(),
                None => false,
            };
            if full {
                r.dropped += 1;
                if r.dropped % 1000 == 1 {
                    eprintln!(
                        "realtime: a subscriber's queue is full: {} changes dropped on this core so far",
                        r.dropped
                    );
                }
            }
        }
    });
}

/// Follows the change feed of every shard this core owns, for as long as the process runs.
pub fn follow(router: &Router) {
    for shard in (0..router.shard_count()).filter(|s| router.owns(*s)) {
        let Some(feed) = router.shard_set().take_feed(shard) else {
            continue;
        };
        FEEDS.with(|f| f.borrow_mut().insert(shard, feed));
        let router = router.clone();
        glommio::spawn_local(async move {
            // The feed stays in `FEEDS`, where a message also drains it (see `pump`).
            let next = || {
                futures::future::poll_fn(|cx| {
                    with_feed(shard, |feed| feed.poll_next_unpin(cx)).unwrap_or(Poll::Ready(None))
                })
            };
            while let Some(committed) = next().await {
                dispatch(&router, shard, committed);
            }
        })
        .detach();
    }
}

/// Runs `f` on `shard`'s feed, if this core follows it.
fn with_feed<T>(shard: usize, f: impl FnOnce(&mut UnboundedReceiver<Committed>) -> T) -> Option<T> {
    FEEDS.with(|feeds| feeds.borrow_mut().get_mut(&shard).map(f))
}

/// Dispatches the groups `shard`'s feed already holds.
fn pump(router: &Router, shard: usize) {
    while let Some(committed) = with_feed(shard, |feed| feed.try_recv().ok()).flatten() {
        dispatch(router, shard, committed);
    }
}

/// The feed group a message is dispatched as: after every group, so that no subscription skips
/// it (a subscription's starting read never sees a message).
const MESSAGE_GROUP: u64 = u64::MAX;

/// The messages a publisher has sent to other cores that may not be dispatched yet: for each
/// core, the newest one's signal (a core dispatches what one core posts to it in order).
#[derive(Default)]
pub struct InFlight(Vec<Option<oneshot::Receiver<()>>>);

impl InFlight {
    /// Waits until every message sent so far is dispatched: a write made after that reaches its
    /// subscribers after them.
    pub async fn settle(&mut self) {
        for dispatched in self.0.iter_mut().filter_map(Option::take) {
            let _ = dispatched.await;
        }
    }

    /// Notes the newest message sent to `core`.
    fn sent(&mut self, core: usize, dispatched: oneshot::Receiver<()>) {
        if self.0.len() <= core {
            self.0.resize_with(core + 1, || None);
        }
        self.0[core] = Some(dispatched);
    }
}

/// Sends `message` (a change of the `Event::Message` kind: it stores nothing) to the subscribers
/// of its record. It skips the shard's writer thread: the owner core of the record's shard
/// dispatches it, after the groups the shard's feed already holds, so it never overtakes a write
/// its publisher was answered for before publishing it. Returns once the owner core has it
/// queued (a publisher's messages are dispatched in publishing order); `in_flight` then tells
/// when it is dispatched, which the publisher's next write waits for.
pub async fn publish_message(
    router: &Router,
    message: Change,
    in_flight: &mut InFlight,
) -> Result<(), tessera_shards::ShardError> {
    let shard = router.shard_of(&message.key);
    let owner = router.owner(shard);
    if owner == router.core() {
        dispatch_message(router, shard, message);
        return Ok(());
    }
    let (done, dispatched) = oneshot::channel();
    router
        .post(owner, move |_| {
            Router::with_local(|router| dispatch_message(router, shard, message));
            let _ = done.send(());
        })
        .await?;
    in_flight.sent(owner, dispatched);
    Ok(())
}

/// Dispatches a message on the owner core of its shard, after what the shard's feed holds,
/// numbered after every change of the shard's audit log.
fn dispatch_message(router: &Router, shard: usize, mut message: Change) {
    pump(router, shard);
    let last = REGISTRY.with(|r| {
        let r = r.borrow();
        r.audit.get(&shard)?.changes.back().map(|c| c.version)
    });
    message.version = Clock::after(last.unwrap_or(0)).tick();
    let changes = vec![message];
    dispatch(
        router,
        shard,
        Committed {
            group: MESSAGE_GROUP,
            changes,
        },
    );
}

/// Finds each change's subscribers and sends the changes to their cores, grouped per core. A
/// subscription whose starting read already saw the group gets none of it.
fn dispatch(router: &Router, shard: usize, committed: Committed) {
    let Committed { group, changes } = committed;
    // Sized at the first subscriber found: most groups (those nobody subscribed to) allocate none.
    let mut per_core: Vec<Vec<(u64, Delivery)>> = Vec::new();
    REGISTRY.with(|r| {
        let r = &mut *r.borrow_mut();
        let log = AuditLog::of(&mut r.audit, router.shard_set(), shard);
        for change in changes {
            let change = Fanned::new(change);
            log.push(&change);
            let id = (!r.patterns.is_empty())
                .then(|| id_text(&change.key))
                .flatten();
            let exact = r.exact.get(&change.key).into_iter().flatten();
            let exact = exact.filter_map(|(s, from)| (group > *from).then_some(s));
            let by_pattern = r.patterns.iter().filter_map(|p| {
                (p.table == change.table
                    && !p.saw(shard, group)
                    && id.as_deref().is_some_and(|id| p.pattern.matches(id)))
                .then_some(&p.sub)
            });
            for s in exact.chain(by_pattern) {
                if per_core.is_empty() {
                    per_core.resize_with(router.cores(), Vec::new);
                }
                per_core[s.core].push((s.conn, (change.clone(), s.qos)));
            }
        }
    });
    for (core, items) in per_core.into_iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        if core == router.core() {
            deliver(items);
        } else {
            let router = router.clone();
            glommio::spawn_local(async move {
                let _ = router.post(core, move |_| deliver(items)).await;
            })
            .detach();
        }
    }
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
    held: &mut Held,
) -> Option<Vec<Change>> {
    if let Some(since) = since {
        let logged = subscribe_since(router, table, &scope, sub, held, since).await?;
        return Some(logged.iter().map(|f| f.change.clone()).collect());
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
            held.subs.insert(sub.sub, vec![owner]);
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
    held.subs.insert(sub.sub, cores);
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

/// The cores holding each subscription of a connection, so that they can be removed when it
/// unsubscribes or goes.
#[derive(Default)]
pub struct Held {
    pub subs: HashMap<u32, Vec<usize>>,
}

impl Held {
    /// Removes every subscription of `conn` (or just `sub`) from the cores that hold them.
    pub async fn release(&mut self, router: &Router, conn: u64, sub: Option<u32>) {
        let cores: Vec<usize> = match sub {
            Some(n) => self.subs.remove(&n).unwrap_or_default(),
            None => {
                let mut all: Vec<usize> = self.subs.drain().flat_map(|(_, c)| c).collect();
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
