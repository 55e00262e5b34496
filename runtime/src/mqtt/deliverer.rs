//! The deliverer of a connection: changes for its subscriptions become PUBLISH packets, first
//! those a resumed session queued, then the inbox's, each as the connection's user may see it
//! now (`events::as_seen_by`: only the attributes its role may read, nothing once it may no
//! longer read the table; the connection ends once the user is dropped). A QoS 0 PUBLISH is
//! encoded once per change and shared by every subscriber who sees the whole record; QoS 1 and 2
//! ones are numbered, limited by the client's Receive Maximum and remembered until completed.

use std::borrow::Cow;

use futures::FutureExt;
use futures::channel::oneshot;
use glommio::channels::local_channel::LocalReceiver;
use tessera_protocol::mqtt::{Ack, Packet, QoS};
use tessera_storage::shard::{Change, Event};

use super::backlog::Backlog;
use super::backlog::{Pending, Redelivery};
use super::inflight::next_packet_id;
use super::publish::{publish_for, published_by, published_qos};
use super::subscribe::{NO_LOCAL, RETAIN_AS_PUBLISHED};
use super::writer::{BATCH_BYTES, Outbox};
use super::{Flow, qos_of};
use crate::app::events::{self, View};
use crate::auth::LiveUser;
use crate::realtime::{Delivery, Guarantee};
use crate::worker::Worker;

/// The inbox and what was not delivered, handed back when the session parks.
pub type HandedBack = Option<(LocalReceiver<Delivery>, Backlog)>;

/// Delivers until the inbox closes (`None`), or hands the inbox and what it has not sent back
/// when `park` fires.
pub async fn run(
    worker: &Worker,
    (live, conn): (&LiveUser, u64),
    out: &Outbox,
    inbox: LocalReceiver<Delivery>,
    mut backlog: Backlog,
    park: oneshot::Receiver<()>,
    flow: &Flow,
) -> HandedBack {
    // New packet ids follow those of the deliveries that go again.
    let mut next_id: u16 = backlog
        .head()
        .iter()
        .filter_map(|p| p.redelivery.map(|r| r.id))
        .max()
        .unwrap_or(0);
    let mut park = park.fuse();
    loop {
        let pending = match backlog.pop_front().await {
            Some(p) => p,
            None => futures::select_biased! {
                _ = park => return Some((inbox, backlog)),
                d = inbox.recv().fuse() => Pending::new(d?),
            },
        };
        let deliver = async {
            if pending.delivery.guarantee == Guarantee::AtMostOnce {
                let who = (live, conn);
                send_qos0(worker, who, out, &pending.delivery, &inbox, &mut backlog).await
            } else {
                send_acknowledged(worker, (live, conn), out, &pending, &mut next_id, flow).await
            }
        };
        // A session that parks keeps what this was delivering.
        let sent = futures::select_biased! {
            _ = park => None,
            r = deliver.fuse() => Some(r),
        };
        match sent {
            Some(Ok(())) => {}
            None => {
                backlog.push_front(pending);
                return Some((inbox, backlog));
            }
            // The connection is gone: park if the session is kept.
            Some(Err(())) => {
                backlog.push_front(pending);
                return match park.await {
                    Ok(()) => Some((inbox, backlog)),
                    Err(_) => None,
                };
            }
        }
    }
}

/// Sends a QoS 0 delivery and the QoS 0 deliveries waiting behind it to the writer as one
/// frame: one queue entry and one wake-up for all of them. Others met on the way go to
/// `backlog`.
async fn send_qos0(
    worker: &Worker,
    who: (&LiveUser, u64),
    out: &Outbox,
    first: &Delivery,
    inbox: &LocalReceiver<Delivery>,
    backlog: &mut Backlog,
) -> Result<(), ()> {
    let mut batch = Vec::new();
    push_qos0(worker, who, out, first, &mut batch)?;
    while batch.len() < BATCH_BYTES && backlog.is_empty() {
        match inbox.recv().now_or_never().flatten() {
            Some(d) if d.guarantee == Guarantee::AtMostOnce => {
                push_qos0(worker, who, out, &d, &mut batch)?
            }
            Some(other) => backlog.push_back(Pending::new(other)),
            None => break,
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    out.queue(batch).await
}

/// How this subscriber gets `d` now: what its user's role lets it see of the change's table,
/// with the RETAIN flag it goes with (set on a record's change under MQTT 5's Retain As
/// Published; a record is retained state). `Ok(None)`: nothing (its own message under No Local,
/// or a table its role may no longer read); `Err` once the user is gone. Small and by value:
/// a fan-out asks for every delivery, and most go whole.
fn seen(
    worker: &Worker,
    live: &LiveUser,
    conn: u64,
    d: &Delivery,
) -> Result<Option<(View, bool)>, ()> {
    let change: &Change = &d.change;
    let tables = &worker.app.tables;
    // Worked out once per table while the role stays as it is.
    let view = live
        .view(change.table, |user| {
            match tables.export_by_id(change.table) {
                Some(table) => events::view_of(table, user),
                None => View::Whole,
            }
        })
        .ok_or(())?;
    if view == View::Nothing || (d.options & NO_LOCAL != 0 && published_by(change, conn)) {
        return Ok(None);
    }
    let retain = d.options & RETAIN_AS_PUBLISHED != 0
        && matches!(change.event, Event::Put(_) | Event::Delete);
    Ok(Some((view, retain)))
}

/// The change as a user of a [`View::Limited`] sees it (`None`: nothing of it).
fn cut<'d>(
    worker: &Worker,
    live: &LiveUser,
    change: &'d Change,
) -> Result<Option<Cow<'d, Change>>, ()> {
    let user = live.current().ok_or(())?;
    Ok(match worker.app.tables.export_by_id(change.table) {
        Some(table) => events::as_seen_by(change, table, &user),
        None => Some(Cow::Borrowed(change)),
    })
}

/// Adds a QoS 0 PUBLISH of `change` to `batch`: the encoding shared by every subscriber when
/// this one sees the whole record, its own otherwise.
fn push_qos0(
    worker: &Worker,
    (live, conn): (&LiveUser, u64),
    out: &Outbox,
    d: &Delivery,
    batch: &mut Vec<u8>,
) -> Result<(), ()> {
    match seen(worker, live, conn, d)? {
        None => {}
        Some((View::Whole, false)) => out.push_qos0(worker, &d.change, batch),
        Some((View::Whole, retain)) => out.push_qos0_of(worker, &d.change, retain, batch),
        Some((_, retain)) => {
            if let Some(own) = cut(worker, live, &d.change)? {
                out.push_qos0_of(worker, &own, retain, batch);
            }
        }
    }
    Ok(())
}

/// Sends a QoS 1 or 2 delivery (again, for one never completed) once the client's Receive
/// Maximum allows, and remembers it until the client completes it.
async fn send_acknowledged(
    worker: &Worker,
    (live, conn): (&LiveUser, u64),
    out: &Outbox,
    pending: &Pending,
    next_id: &mut u16,
    flow: &Flow,
) -> Result<(), ()> {
    let qos = qos_of(pending.delivery.guarantee);
    let Some((view, retain)) = seen(worker, live, conn, &pending.delivery)? else {
        return Ok(());
    };
    let change = match view {
        View::Whole => Cow::Borrowed(pending.delivery.change.change()),
        _ => match cut(worker, live, &pending.delivery.change)? {
            Some(c) => c,
            None => return Ok(()),
        },
    };
    let change = change.as_ref();
    // A message published at QoS 0 goes at QoS 0 (the lower of the publish's and the
    // subscription's): nothing to number or remember.
    if published_qos(change) == Some(QoS::AtMostOnce) {
        let mut batch = Vec::new();
        out.push_qos0_of(worker, change, retain, &mut batch);
        return if batch.is_empty() {
            Ok(())
        } else {
            out.queue(batch).await
        };
    }
    let (id, packet) = match pending.redelivery {
        // The client has the message: only the release goes again.
        Some(Redelivery { id, received: true }) => (id, Packet::PubRel(Ack::new(id))),
        // Sent before and never completed: its original id, with DUP.
        Some(Redelivery { id, .. }) => {
            let Some(mut p) = publish_for(worker, change, qos, retain, Some(id)) else {
                return Ok(());
            };
            p.dup = true;
            (id, Packet::Publish(p))
        }
        None => {
            let id = next_packet_id(*next_id);
            let Some(p) = publish_for(worker, change, qos, retain, Some(id)) else {
                return Ok(());
            };
            *next_id = id;
            (id, Packet::Publish(p))
        }
    };
    flow.inflight.acquire(1).await.map_err(drop)?;
    out.send(packet).await?;
    // Recorded once queued for the writer (no await in between), so that a delivery cut short
    // by parking is kept once: in the backlog, not here.
    let received = pending.redelivery.is_some_and(|r| r.received);
    flow.unacked
        .borrow_mut()
        .sent(id, pending.delivery.clone(), received);
    Ok(())
}
