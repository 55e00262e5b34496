//! Kept sessions between connections: parked on the core their connection ended on, holding
//! their subscriptions and queueing their QoS 1 and 2 deliveries until a new connection with the
//! client id takes them, or they expire. Sessions kept on disk are parked again at start-up.

use std::rc::Rc;
use std::time::Duration;

use futures::FutureExt;
use glommio::channels::local_channel::LocalReceiver;
use tessera_protocol::mqtt::QoS;
use tessera_shards::Router;
use tessera_storage::shard::now_micros;

use super::backlog::{Backlog, Pending};
use super::inflight::Unacked;
use super::sessions::{self, Handover, Owner, Saved};
use super::subscribe::resubscribe;
use crate::realtime::{self, Delivery, Guarantee, Subscriptions};
use crate::worker::Worker;

/// A session whose connection has ended and that is kept: its subscriptions and its queue.
pub struct ParkedSession {
    router: Router,
    owner: Owner,
    filters: Vec<(String, QoS)>,
    conn: u64,
    inbox: LocalReceiver<Delivery>,
    subscriptions: Subscriptions,
    /// Deliveries for the next connection: unacknowledged ones first.
    queue: Backlog,
    /// When the connection ended, as saved on disk: after a restart, the audit logs give back
    /// the changes committed since, so only an earlier one still arriving is saved again.
    cut: Option<u64>,
}

/// How a connection's session ends: what the connection leaves behind.
pub struct Ended {
    pub client_id: String,
    pub conn: u64,
    /// Whose session it is, when it is kept.
    pub kept: Option<Owner>,
    pub subscriptions: Subscriptions,
    pub filters: Vec<(String, QoS)>,
    /// Deliveries sent and not completed.
    pub unacked: Unacked,
    /// The inbox and the deliveries the deliverer had not sent, when it stopped to park.
    pub parked_inbox: Option<(LocalReceiver<Delivery>, Backlog)>,
}

/// Parks the session of a connection that has ended, if it is kept (and the deliverer handed
/// back its inbox); otherwise releases its subscriptions and client id.
pub async fn end(worker: &Worker, ended: Ended) {
    let Ended {
        client_id,
        conn,
        kept,
        mut subscriptions,
        filters,
        unacked,
        parked_inbox,
    } = ended;
    match (parked_inbox, kept) {
        (Some((inbox, backlog)), Some(owner)) => {
            // Unacknowledged deliveries go again first, then what was never sent, then what
            // reached the inbox meanwhile. Parked without waiting on anything: a new
            // connection for the session waits for it.
            let mut queue = backlog;
            for d in unacked.in_order().into_iter().rev() {
                queue.push_front(d);
            }
            drain(&inbox, &mut queue);
            let parked_at = now_micros();
            sessions::save(Saved::parked(&owner, &filters, parked_at, &queue));
            let handover = sessions::park(
                &client_id,
                conn,
                &owner.user,
                filters.clone(),
                Some(parked_at),
            );
            let expiry = owner.expiry.map(|s| Duration::from_secs(u64::from(s)));
            let parked = ParkedSession {
                router: worker.router.clone(),
                owner,
                filters,
                conn,
                inbox,
                subscriptions,
                queue,
                cut: Some(parked_at),
            };
            glommio::spawn_local(parked.run(handover, expiry)).detach();
        }
        (handed_back, kept) => {
            subscriptions.release(&worker.router, conn, None).await;
            // What a share group gave this member and it will not complete goes to another
            // member (MQTT 5, 4.8.2), now that this one has left the group.
            // (A QoS 2 one the client has received, PUBREC, is its.)
            let mut owed: Vec<Delivery> = unacked
                .in_order()
                .into_iter()
                .filter(|p| !p.redelivery.is_some_and(|r| r.received))
                .map(|p| p.delivery)
                .collect();
            if let Some((inbox, mut backlog)) = handed_back {
                while let Some(p) = backlog.pop_front().await {
                    owed.push(p.delivery);
                }
                while let Some(Some(d)) = inbox.recv().now_or_never() {
                    owed.push(d);
                }
            }
            realtime::redeliver_shared(&worker.router, owed);
            realtime::close_inbox(conn);
            sessions::release(&client_id, conn);
            // A kept session that could not be parked ends here (one that was never kept was
            // taken off the disk when it connected).
            if kept.is_some() {
                sessions::forget(&client_id);
            }
        }
    }
}

/// Moves the QoS 1 and 2 deliveries already in `inbox` to `queue` (its spill's buffer holds
/// what goes to disk until [`Backlog::settle`]).
fn drain(inbox: &LocalReceiver<Delivery>, queue: &mut Backlog) {
    while let Some(Some(d)) = inbox.recv().now_or_never() {
        if d.guarantee != Guarantee::AtMostOnce {
            queue.push_back(Pending::new(d));
        }
    }
}

impl ParkedSession {
    /// Holds a parked session on the core it ended on: keeps its subscriptions registered and
    /// queues its QoS 1 deliveries until a new connection takes them, or the session expires.
    pub async fn run(self, handover: Handover, expiry: Option<Duration>) {
        let ParkedSession {
            router,
            owner,
            filters,
            conn,
            inbox,
            mut subscriptions,
            mut queue,
            cut,
        } = self;
        let mut handover = handover.fuse();
        let expired = async {
            match expiry {
                Some(d) => glommio::timer::sleep(d).await,
                None => futures::future::pending::<()>().await,
            }
        }
        .fuse();
        futures::pin_mut!(expired);
        // What parking left in memory beyond the backlog's head goes to disk now.
        queue.settle().await;
        loop {
            futures::select_biased! {
                reply = handover => {
                    subscriptions.release(&router, conn, None).await;
                    // What reached the inbox meanwhile goes with the queue.
                    drain(&inbox, &mut queue);
                    realtime::close_inbox(conn);
                    if let Ok(reply) = reply {
                        let _ = reply.send(queue);
                    }
                    return;
                }
                d = inbox.recv().fuse() => {
                    let Some(d) = d else {
                        return;
                    };
                    // This and whatever else has arrived; the session is saved again once for
                    // them if any was committed before it parked (after it is in the logs),
                    // and is in the part of the queue saved with it (see `Saved::parked`).
                    let mut resave = false;
                    let mut next = Some(d);
                    while let Some(d) = next {
                        if d.guarantee != Guarantee::AtMostOnce {
                            let before_cut = cut.is_some_and(|c| d.change.version <= c);
                            queue.push_back(Pending::new(d));
                            resave |= before_cut && !queue.spilled();
                        }
                        next = inbox.recv().now_or_never().flatten();
                    }
                    queue.settle().await;
                    if let (Some(at), true) = (cut, resave) {
                        sessions::save(Saved::parked(&owner, &filters, at, &queue));
                    }
                }
                () = expired => {
                    subscriptions.release(&router, conn, None).await;
                    realtime::close_inbox(conn);
                    sessions::expire(&owner.client_id);
                    return;
                }
            }
        }
    }
}

/// Parks a session kept on disk again at start-up, on this core: its filters are subscribed,
/// and it is owed what it was owed when its connection ended, then the changes its filters
/// cover that were committed since (from the audit logs), then what comes.
pub async fn restore(worker: Rc<Worker>, saved: Saved, handover: Handover) {
    let Ok(expiry) = saved.remaining() else {
        sessions::expire(&saved.owner.client_id);
        return;
    };
    let conn = realtime::new_conn(worker.router.core());
    let inbox = realtime::open_inbox(conn);
    let mut subscriptions = Subscriptions::default();
    let filters = saved.filters();
    let mut queue = Backlog::from(saved.queued());
    let (_, logged) = resubscribe(
        &worker,
        conn,
        1,
        &filters,
        saved.parked_at,
        &mut subscriptions,
    )
    .await;
    sessions::append_new(&mut queue, logged).await;
    let parked = ParkedSession {
        router: worker.router.clone(),
        owner: saved.owner,
        filters,
        conn,
        inbox,
        subscriptions,
        queue,
        cut: saved.parked_at,
    };
    parked.run(handover, expiry).await;
}
