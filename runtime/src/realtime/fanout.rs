//! The fan-out: each owner core follows its shards' change feeds, finds the subscribers of each
//! change and hands the changes to the subscribers' cores over the mesh, grouped per core.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::Poll;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use futures::channel::oneshot;
use hashbrown::HashMap;
use tessera_shards::{Committed, Router};
use tessera_storage::shard::{Change, Clock};

use super::audit::AuditLog;
use super::registry::{FEEDS, PatternSub, REGISTRY, deliver, id_text};
use super::{Broadcast, Delivery, Subscriber};

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
            let change = Broadcast::new(change);
            log.push(&change);
            // Members of share groups wait until every subscriber is known; one per group gets it.
            let mut shared: Vec<Subscriber> = Vec::new();
            // Each core's subscribers share a handle of their own (see `Broadcast`).
            let mut handles: Vec<Option<Arc<Broadcast>>> = Vec::new();
            let mut to = |s: &Subscriber, per_core: &mut Vec<Vec<(u64, Delivery)>>| {
                if per_core.is_empty() {
                    per_core.resize_with(router.cores(), Vec::new);
                }
                if handles.is_empty() {
                    handles.resize(router.cores(), None);
                }
                let handle = handles[s.core].get_or_insert_with(|| change.for_core());
                per_core[s.core].push((
                    s.conn,
                    Delivery {
                        change: handle.clone(),
                        guarantee: s.guarantee,
                        options: s.options,
                        share: s.share,
                    },
                ));
            };
            for s in subscribers(&r.exact, &r.patterns, shard, group, &change) {
                if s.share != 0 {
                    shared.push(*s);
                    continue;
                }
                to(s, &mut per_core);
            }
            if !shared.is_empty() {
                shared.sort_unstable_by_key(|s| s.share);
                for members in shared.chunk_by(|a, b| a.share == b.share) {
                    to(&take_turn(&mut r.shares, members), &mut per_core);
                }
            }
        }
    });
    send(router, per_core);
}

/// Delivers each core's deliveries: here, or posted to it.
fn send(router: &Router, per_core: Vec<Vec<(u64, Delivery)>>) {
    for (core, items) in per_core.into_iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        if core == router.core() {
            deliver(items);
        } else {
            forward(router, core, items);
        }
    }
}

/// Deliveries waiting to be posted to one core, in dispatch order, and whether a task is
/// posting them.
type Outgoing = (Vec<(u64, Delivery)>, bool);

/// The subscribers on this core of `change`, a change of `shard` in its feed group `group`:
/// those of its record, then the table subscriptions whose pattern matches its id; those whose
/// starting read saw the group are left out.
fn subscribers<'r>(
    exact: &'r HashMap<Vec<u8>, Vec<(Subscriber, u64)>>,
    patterns: &'r [PatternSub],
    shard: usize,
    group: u64,
    change: &Change,
) -> impl Iterator<Item = &'r Subscriber> + 'r {
    let id = (!patterns.is_empty())
        .then(|| id_text(&change.key))
        .flatten();
    let table = change.table;
    let exact = exact.get(&change.key).into_iter().flatten();
    let exact = exact.filter_map(move |(s, from)| (group > *from).then_some(s));
    let by_pattern = patterns.iter().filter_map(move |p| {
        (p.table == table
            && !p.saw(shard, group)
            && id.as_deref().is_some_and(|id| p.pattern.matches(id)))
        .then_some(&p.sub)
    });
    exact.chain(by_pattern)
}

/// The member of a share group (`members`, all of one group) whose turn it is.
fn take_turn(shares: &mut HashMap<u32, u64>, members: &[Subscriber]) -> Subscriber {
    // Members in a fixed order, so that taking turns reaches each of them.
    let mut members = members.to_vec();
    members.sort_unstable_by_key(|s| (s.core, s.conn, s.sub));
    let turn = shares.entry(members[0].share).or_insert(0);
    let chosen = members[(*turn % members.len() as u64) as usize];
    *turn += 1;
    chosen
}

/// Gives each acknowledged delivery of a share group that a member took and will not complete
/// (its session ended without being kept) to another member of the group, on the owner core of
/// its record's shard, where the group's subscriptions are. The member must have left the
/// group first. Deliveries of no group, and QoS 0 ones, are dropped.
pub fn redeliver_shared(router: &Router, deliveries: Vec<Delivery>) {
    let mut per_owner: Vec<Vec<(usize, Delivery)>> = vec![Vec::new(); router.cores()];
    for d in deliveries {
        if d.share == 0 || d.guarantee == super::Guarantee::AtMostOnce {
            continue;
        }
        let shard = router.shard_of(&d.change.key);
        per_owner[router.owner(shard)].push((shard, d));
    }
    for (core, items) in per_owner.into_iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        if core == router.core() {
            regive(router, items);
        } else {
            let router = router.clone();
            glommio::spawn_local(async move {
                let _ = router
                    .post(core, move |_| {
                        Router::with_local(|router| regive(router, items));
                    })
                    .await;
            })
            .detach();
        }
    }
}

/// [`redeliver_shared`] on the owner core.
fn regive(router: &Router, items: Vec<(usize, Delivery)>) {
    let mut per_core: Vec<Vec<(u64, Delivery)>> = vec![Vec::new(); router.cores()];
    REGISTRY.with(|r| {
        let r = &mut *r.borrow_mut();
        for (shard, d) in items {
            let members: Vec<Subscriber> =
                subscribers(&r.exact, &r.patterns, shard, u64::MAX, &d.change)
                    .filter(|s| s.share == d.share)
                    .copied()
                    .collect();
            if members.is_empty() {
                tracing::warn!("realtime: a shared delivery has no member left to go to; dropped");
                continue;
            }
            let s = take_turn(&mut r.shares, &members);
            per_core[s.core].push((
                s.conn,
                Delivery {
                    guarantee: s.guarantee,
                    options: s.options,
                    ..d
                },
            ));
        }
    });
    send(router, per_core);
}

thread_local! {
    /// Each other core's [`Outgoing`].
    static OUTGOING: RefCell<Vec<Outgoing>> = const { RefCell::new(Vec::new()) };
}

/// Posts deliveries to `core` in the order they were dispatched: one task per destination
/// core posts whatever has gathered meanwhile (a task per dispatch, each waiting on a full
/// mesh channel, could be woken in any order and reorder a topic's messages).
fn forward(router: &Router, core: usize, items: Vec<(u64, Delivery)>) {
    let start = OUTGOING.with(|o| {
        let mut o = o.borrow_mut();
        if o.len() <= core {
            o.resize_with(core + 1, Default::default);
        }
        let (waiting, posting) = &mut o[core];
        waiting.extend(items);
        !std::mem::replace(posting, true)
    });
    if !start {
        return;
    }
    let router = router.clone();
    glommio::spawn_local(async move {
        loop {
            let items = OUTGOING.with(|o| std::mem::take(&mut o.borrow_mut()[core].0));
            if items.is_empty() {
                break;
            }
            let _ = router.post(core, move |_| deliver(items)).await;
        }
        OUTGOING.with(|o| o.borrow_mut()[core].1 = false);
    })
    .detach();
}
