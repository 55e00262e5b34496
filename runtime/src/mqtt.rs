//! The MQTT broker (HARPER.md section 9) on `--mqtt-port`: MQTT 3.1.1 and 5 over TCP, topics as
//! resource paths, retained publishes as writes, subscriptions fed by the shards' change feeds.
//!
//! Each connection runs three futures on its core, each polled only when woken: the reader
//! (decodes and handles packets), the writer (the only one that writes to the socket, from a
//! bounded outbox), and the deliverer (turns changes from the connection's inbox into PUBLISH
//! packets; a QoS 0 one is encoded once per change and shared by every subscriber).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures_concurrency::future::Join;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use tessera_protocol::mqtt::{
    self, Ack, ConnAck, Connect, Disconnect, Error as MqttError, Packet, Properties, Publish, QoS,
    SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use tessera_storage::Value;
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Event, WriteKind, WriteOp, now_micros, record_key};
use tessera_storage::validate::WriteMode;
use tessera_storage::value::msgpack_to_json;

use crate::auth::User;
use crate::realtime::{self, Held, Pattern, Scope, Subscriber};
use crate::rest::{Core, id_value};
use crate::roles::Action;
use crate::sessions::{self, Again, Asked, Owner, Queued, Saved};
use crate::wasm;

/// Largest packet accepted (and announced to MQTT 5 clients).
const MAX_PACKET: usize = 1 << 20;
/// Topic aliases a client may set (announced in CONNACK).
const TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// Time a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets waiting to be written before the reader waits for the writer.
const OUTBOX: usize = 64;

/// Where the reader and the deliverer queue packets for the writer: encoded on the way in, so
/// the queue holds compact frames (an idle connection keeps little memory). A frame is one
/// packet, or several QoS 0 PUBLISH packets that were waiting together.
struct Outbox {
    tx: LocalSender<Vec<u8>>,
    version: Version,
    /// The client's MQTT 5 maximum packet size: larger packets are not sent to it.
    max: usize,
}

impl Outbox {
    async fn send(&self, p: Packet) -> Result<(), ()> {
        let mut frame = Vec::with_capacity(64);
        mqtt::encode(&p, self.version, &mut frame);
        if frame.len() > self.max {
            return Ok(());
        }
        self.queue(frame).await
    }

    /// Queues encoded packets, each already checked against [`Outbox::max`].
    async fn queue(&self, frame: Vec<u8>) -> Result<(), ()> {
        self.tx.send(frame).await.map_err(|_| ())
    }
}

/// Most bytes gathered into one frame (the deliverer's QoS 0 PUBLISH packets) or one send (the
/// writer's queued frames).
const BATCH_BYTES: usize = 64 * 1024;

/// Appends the QoS 0 PUBLISH of `change` to `batch`, if it has a topic and fits the client's
/// maximum packet size. The packet is encoded once per protocol version, by the first
/// subscriber that needs it, and copied for the others.
fn push_qos0(core: &Core, change: &realtime::Fanned, out: &Outbox, batch: &mut Vec<u8>) {
    let slot = usize::from(out.version == Version::V5);
    let frame = change.frames[slot].get_or_init(|| {
        let p = publish_for(core, change, QoS::AtMostOnce, false, None)?;
        let mut f = Vec::with_capacity(128);
        mqtt::encode(&Packet::Publish(p), out.version, &mut f);
        Some(f.into())
    });
    if let Some(f) = frame.as_deref().filter(|f| f.len() <= out.max) {
        batch.extend_from_slice(f);
    }
}

/// Serves MQTT connections from `listener` forever.
pub async fn serve(listener: TcpListener, core: Rc<Core>) {
    crate::http::accept(listener, core, "MQTT", connection).await;
}

/// Bytes read and not yet decoded.
struct Input {
    buf: Vec<u8>,
    start: usize,
}

impl Input {
    /// The next packet, reading as needed. `None` on EOF; an error for a bad packet.
    async fn next<R: futures_lite::AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        version: Option<Version>,
    ) -> Option<Result<Packet, MqttError>> {
        loop {
            match mqtt::decode(&self.buf[self.start..], version, MAX_PACKET) {
                Ok(Some((p, used))) => {
                    self.start += used;
                    if self.start == self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                        if self.buf.capacity() > 64 * 1024 {
                            self.buf = Vec::new();
                        }
                    }
                    return Some(Ok(p));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            // Read straight into the buffer's tail; an idle connection keeps one small buffer.
            let len = self.buf.len();
            let room = if len == 0 { 1024 } else { len.max(4096) };
            self.buf.resize(len + room, 0);
            let read = rd.read(&mut self.buf[len..]).await;
            match read {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.truncate(len + n),
            }
        }
    }
}

/// What the reader knows about its connection.
struct Session<'c> {
    core: &'c Core,
    /// Who connected: its role decides what it may subscribe to and publish.
    user: Arc<User>,
    conn: u64,
    version: Version,
    outbox: Rc<Outbox>,
    held: Held,
    next_sub: u32,
    /// Whose session this is, when it is kept (and so saved as its filters change).
    kept: Option<Owner>,
    /// The subscription number of each subscribed filter.
    filters: std::collections::HashMap<String, (u32, QoS)>,
    /// MQTT 5 topic aliases the client has set (alias -> topic).
    aliases: std::collections::HashMap<u16, String>,
    /// Messages published on this connection that other cores may not have dispatched yet.
    messages: realtime::InFlight,
}

async fn connection(core: Rc<Core>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = futures_lite::io::split(stream);
    session(&core, rd, wr).await;
}

/// One MQTT connection over any byte transport (TCP, or WebSocket binary frames): CONNECT, then
/// the reader, the writer and the deliverer run together until the connection ends.
pub async fn session<R, W>(core: &Core, mut rd: R, mut wr: W)
where
    R: futures_lite::AsyncRead + Unpin,
    W: futures_lite::AsyncWrite + Unpin,
{
    let mut input = Input {
        buf: Vec::with_capacity(1024),
        start: 0,
    };
    let first = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        Ok(input.next(&mut rd, None).await)
    })
    .await;
    let connect = match first {
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Err(MqttError::UnsupportedVersion(_)))) => {
            // 3.1.1 CONNACK "unacceptable protocol version", then close.
            let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            return;
        }
        _ => return,
    };
    let version = connect.version;
    let user = match check_credentials(core, &connect).await {
        Ok(user) => user,
        Err(code) => {
            let mut out = Vec::new();
            mqtt::encode(
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    properties: Properties::default(),
                }),
                version,
                &mut out,
            );
            let _ = wr.write_all(&out).await;
            return;
        }
    };
    let conn = realtime::new_conn(core.router.core());
    let client_id = match connect.client_id.as_str() {
        "" => format!("tessera-{conn:x}"),
        id => id.to_owned(),
    };
    // MQTT 3.1.1: clean session 0 keeps the session; MQTT 5: clean start 0 resumes one, and a
    // session expiry above 0 keeps it after the connection.
    let expiry = connect.properties.session_expiry_interval.unwrap_or(0);
    let keep = match version {
        Version::V311 => !connect.clean_start,
        Version::V5 => expiry > 0,
    };
    let kept = keep.then(|| Owner {
        client_id: client_id.clone(),
        user: user.username.clone(),
        expiry: match version {
            Version::V311 => None,
            Version::V5 => (expiry != u32::MAX).then_some(expiry),
        },
    });
    let (mut taken_over, resumed) =
        sessions::claim(&client_id, conn, &user.username, !connect.clean_start).await;
    match &kept {
        Some(owner) => {
            let filters = resumed.iter().flat_map(|r| r.filters.iter().cloned());
            sessions::save(Saved::live(owner, filters));
        }
        None => sessions::forget(&client_id),
    }
    let (out_tx, out_rx) = local_channel::new_bounded::<Vec<u8>>(OUTBOX);
    let out_tx = Rc::new(Outbox {
        tx: out_tx,
        version,
        max: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
    });
    let mut connack = ConnAck {
        session_present: resumed.is_some(),
        code: 0,
        properties: Properties::default(),
    };
    if version == Version::V5 {
        connack.properties.maximum_packet_size = Some(MAX_PACKET as u32);
        connack.properties.retain_available = Some(1);
        connack.properties.shared_subscription_available = Some(0);
        connack.properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
        if connect.client_id.is_empty() {
            connack.properties.assigned_client_identifier = Some(client_id.clone());
        }
    }
    let _ = out_tx.send(Packet::ConnAck(connack)).await;

    // The writer: the only one that writes to the transport. It ends when every sender of the
    // outbox is gone.
    let writer = async move {
        // The first frame is the buffer (a QoS 0 batch is sent without another copy); whatever
        // else is queued is written with it.
        while let Some(mut buf) = out_rx.recv().await {
            while buf.len() < BATCH_BYTES {
                match out_rx.recv().now_or_never() {
                    Some(Some(f)) => buf.extend_from_slice(&f),
                    _ => break,
                }
            }
            if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.close().await;
    };

    // The deliverer: changes for this connection's subscriptions become PUBLISH packets: first
    // those a resumed session queued, then the inbox's. It ends when the inbox closes, or hands
    // the inbox and what it has not sent back when the session is to be parked.
    let inbox = realtime::open_inbox(conn);
    let mut session = Session {
        core,
        user,
        conn,
        version,
        outbox: out_tx.clone(),
        held: Held::default(),
        next_sub: 0,
        kept: kept.clone(),
        filters: std::collections::HashMap::new(),
        aliases: std::collections::HashMap::new(),
        messages: realtime::InFlight::default(),
    };
    // A resumed session is subscribed again before anything is delivered: what it queued goes
    // first, then what was committed after its connection ended and never reached the queue.
    let backlog = match resumed {
        Some(r) => {
            let mut queue = r.queued;
            let logged = session.resume(&r.filters, r.parked_at).await;
            sessions::append_new(&mut queue, logged);
            queue
        }
        None => VecDeque::new(),
    };
    let (park_tx, park_rx) = futures::channel::oneshot::channel::<()>();
    // Flow control: at most the client's Receive Maximum (MQTT 5; 65,535 otherwise) QoS 1 and 2
    // deliveries not completed. While the client lags, its inbox fills and then drops.
    let receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let inflight = Rc::new(glommio::sync::Semaphore::new(u64::from(receive_maximum)));
    // Those deliveries by packet id, in sending order: acknowledgements free them, and a parked
    // session delivers again the ones never acknowledged.
    let unacked: Rc<RefCell<Unacked>> = Rc::default();
    let deliverer = {
        let out = out_tx.clone();
        let (inflight, unacked) = (inflight.clone(), unacked.clone());
        let mut backlog = backlog;
        async move {
            // New packet ids follow those of the deliveries that go again.
            let mut next_id: u16 = backlog
                .iter()
                .filter_map(|(again, _)| again.map(|a| a.id))
                .max()
                .unwrap_or(0);
            let mut park_rx = park_rx.fuse();
            loop {
                let (again, d) = match backlog.pop_front() {
                    Some(q) => q,
                    None => futures::select_biased! {
                        _ = park_rx => return Some((inbox, backlog)),
                        d = inbox.recv().fuse() => (None, d?),
                    },
                };
                let (change, qos) = d.clone();
                let deliver = async {
                    if qos == QoS::AtMostOnce {
                        // This and the QoS 0 deliveries waiting behind it go to the writer as
                        // one frame: one queue entry and one wake-up for all of them.
                        let mut batch = Vec::new();
                        push_qos0(core, &change, &out, &mut batch);
                        while batch.len() < BATCH_BYTES && backlog.is_empty() {
                            match inbox.recv().now_or_never().flatten() {
                                Some((c, QoS::AtMostOnce)) => push_qos0(core, &c, &out, &mut batch),
                                Some(other) => backlog.push_back((None, other)),
                                None => break,
                            }
                        }
                        return match batch.is_empty() {
                            true => Ok(()),
                            false => out.queue(batch).await,
                        };
                    }
                    let (id, packet) = match again {
                        // The client has the message: only the release goes again.
                        Some(Again { id, received: true }) => (id, Packet::PubRel(Ack::new(id))),
                        // Sent before and never completed: its original id, with DUP.
                        Some(Again { id, .. }) => {
                            let Some(mut p) = publish_for(core, &change, qos, false, Some(id))
                            else {
                                return Ok(());
                            };
                            p.dup = true;
                            (id, Packet::Publish(p))
                        }
                        None => {
                            let id = next_packet_id(next_id);
                            let Some(p) = publish_for(core, &change, qos, false, Some(id)) else {
                                return Ok(());
                            };
                            next_id = id;
                            (id, Packet::Publish(p))
                        }
                    };
                    inflight.acquire(1).await.map_err(drop)?;
                    out.send(packet).await?;
                    // Recorded once queued for the writer (no await in between), so that a
                    // delivery cut short by parking is kept once: in the backlog, not here.
                    let received = again.is_some_and(|a| a.received);
                    unacked.borrow_mut().sent(id, d.clone(), received);
                    Ok(())
                };
                // A session that parks keeps what this was delivering.
                let sent = futures::select_biased! {
                    _ = park_rx => None,
                    r = deliver.fuse() => Some(r),
                };
                match sent {
                    Some(Ok(())) => {}
                    None => {
                        backlog.push_front((again, d));
                        return Some((inbox, backlog));
                    }
                    // The connection is gone: park if the session is kept.
                    Some(Err(())) => {
                        backlog.push_front((again, d));
                        return match park_rx.await {
                            Ok(()) => Some((inbox, backlog)),
                            Err(_) => None,
                        };
                    }
                }
            }
        }
    };

    let acks = unacked.clone();
    drop(out_tx);
    let reader = async move {
        let keep_alive = match connect.keep_alive {
            0 => Duration::from_secs(24 * 3600),
            s => Duration::from_millis(u64::from(s) * 1500),
        };
        let mut clean_end = false;
        loop {
            let read = glommio::timer::timeout(keep_alive, async {
                Ok(input.next(&mut rd, Some(version)).await)
            });
            let next = match futures::future::select(Box::pin(read), &mut taken_over).await {
                futures::future::Either::Left((next, _)) => next,
                futures::future::Either::Right(_) => {
                    // Another connection took the client id over.
                    if version == Version::V5 {
                        let d = Disconnect {
                            reason: 0x8E,
                            properties: Properties::default(),
                        };
                        let _ = session.outbox.send(Packet::Disconnect(d)).await;
                    }
                    clean_end = true;
                    break;
                }
            };
            let packet = match next {
                Ok(Some(Ok(p))) => p,
                Ok(Some(Err(e))) => {
                    if version == Version::V5 {
                        let d = Disconnect {
                            reason: e.reason_code(),
                            properties: Properties::default(),
                        };
                        let _ = session.outbox.send(Packet::Disconnect(d)).await;
                    }
                    break;
                }
                // EOF, or silence longer than one and a half keep-alive periods.
                _ => break,
            };
            match packet {
                Packet::Publish(p) => session.publish(p).await,
                Packet::PubRel(a) => {
                    let _ = session
                        .outbox
                        .send(Packet::PubComp(Ack::new(a.packet_id)))
                        .await;
                }
                Packet::Subscribe(s) => session.subscribe(s).await,
                Packet::Unsubscribe(u) => session.unsubscribe(u).await,
                Packet::PingReq => {
                    let _ = session.outbox.send(Packet::PingResp).await;
                }
                Packet::Disconnect(_) => {
                    clean_end = true;
                    break;
                }
                // A delivery completed (QoS 1 PUBACK, QoS 2 PUBCOMP, or a QoS 2 PUBREC that
                // refuses the message with an MQTT 5 reason code): room for the next one.
                Packet::PubAck(Ack { packet_id, .. })
                | Packet::PubComp(Ack { packet_id, .. })
                | Packet::PubRec(Ack {
                    packet_id,
                    reason: 0x80..,
                    ..
                }) => {
                    if acks.borrow_mut().acked(packet_id) {
                        inflight.signal(1);
                    }
                }
                // A QoS 2 delivery received: released; it completes with the client's PUBCOMP.
                Packet::PubRec(a) => {
                    acks.borrow_mut().received(a.packet_id);
                    let _ = session
                        .outbox
                        .send(Packet::PubRel(Ack::new(a.packet_id)))
                        .await;
                }
                _ => break,
            }
        }
        if !clean_end && let Some(will) = &connect.will {
            let p = Publish {
                dup: false,
                qos: will.qos,
                retain: will.retain,
                topic: will.topic.clone(),
                packet_id: None,
                properties: Properties::default(),
                payload: will.payload.clone(),
            };
            let _ = session.apply_publish(&p).await;
        }
        // Parking keeps the inbox (the deliverer hands it back); otherwise closing it ends the
        // deliverer. Dropping the session's outbox then ends the writer.
        if keep {
            let _ = park_tx.send(());
        } else {
            realtime::close_inbox(conn);
        }
        let filters: Vec<(String, QoS)> = session
            .filters
            .iter()
            .map(|(f, (_, q))| (f.clone(), *q))
            .collect();
        (std::mem::take(&mut session.held), filters)
    };
    // Each of the three is polled only when it was woken (`futures::join!` polls all of them on
    // every wake: each delivery to a subscriber would poll its reader's keep-alive timer and
    // socket again, about a tenth of the broker's CPU in a fan-out).
    let ((mut held, filters), (), parked_inbox) = (reader, writer, deliverer).join().await;
    match (parked_inbox, kept) {
        (Some((inbox, backlog)), Some(owner)) => {
            // Unacknowledged deliveries go again first, then what was never sent, then what
            // reached the inbox meanwhile.
            let mut queue = unacked.take().in_order();
            for d in backlog {
                sessions::push_bounded(&mut queue, d);
            }
            drain(&inbox, &mut queue);
            let parked_at = now_micros();
            sessions::save(Saved::parked(&owner, &filters, parked_at, &queue));
            let asked = sessions::park(
                &client_id,
                conn,
                &owner.user,
                filters.clone(),
                Some(parked_at),
            );
            let expiry = owner.expiry.map(|s| Duration::from_secs(u64::from(s)));
            let parked = Parked {
                router: core.router.clone(),
                owner,
                filters,
                conn,
                inbox,
                held,
                queue,
                cut: Some(parked_at),
            };
            glommio::spawn_local(parked.run(asked, expiry)).detach();
        }
        (_, kept) => {
            held.release(&core.router, conn, None).await;
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

/// Parks a session kept on disk again at start-up, on this core: its filters are subscribed,
/// and it is owed what it was owed when its connection ended, then the changes its filters
/// cover that were committed since (from the audit logs), then what comes.
pub async fn restore(core: Rc<Core>, saved: Saved, asked: Asked) {
    let Ok(expiry) = saved.remaining() else {
        sessions::expire(&saved.owner.client_id);
        return;
    };
    let conn = realtime::new_conn(core.router.core());
    let inbox = realtime::open_inbox(conn);
    let mut held = Held::default();
    let filters = saved.filters();
    let mut queue = saved.queued();
    let (_, logged) = resubscribe(&core, conn, 1, &filters, saved.parked_at, &mut held).await;
    sessions::append_new(&mut queue, logged);
    let parked = Parked {
        router: core.router.clone(),
        owner: saved.owner,
        filters,
        conn,
        inbox,
        held,
        queue,
        cut: saved.parked_at,
    };
    parked.run(asked, expiry).await;
}

/// QoS 1 and 2 deliveries sent and not yet completed, by packet id, with their sending order
/// and whether the client has received them (QoS 2 PUBREC).
#[derive(Default)]
struct Unacked {
    next: u64,
    by_id: std::collections::HashMap<u16, (u64, realtime::Delivery, bool)>,
}

impl Unacked {
    fn sent(&mut self, id: u16, d: realtime::Delivery, received: bool) {
        self.next += 1;
        self.by_id.insert(id, (self.next, d, received));
    }

    /// Notes that the client has received QoS 2 delivery `id` (it answered PUBREC).
    fn received(&mut self, id: u16) {
        if let Some((_, _, received)) = self.by_id.get_mut(&id) {
            *received = true;
        }
    }

    /// Whether `id` was an uncompleted delivery (now completed).
    fn acked(&mut self, id: u16) -> bool {
        self.by_id.remove(&id).is_some()
    }

    /// The uncompleted deliveries in the order they were sent, to go again.
    fn in_order(self) -> std::collections::VecDeque<sessions::Queued> {
        let mut all: Vec<_> = self.by_id.into_iter().collect();
        all.sort_by_key(|(_, (n, _, _))| *n);
        all.into_iter()
            .map(|(id, (_, d, received))| (Some(Again { id, received }), d))
            .collect()
    }
}

/// Moves the QoS 1 and 2 deliveries already in `inbox` to `queue`.
fn drain(
    inbox: &glommio::channels::local_channel::LocalReceiver<realtime::Delivery>,
    queue: &mut VecDeque<Queued>,
) {
    while let Some(Some(d)) = inbox.recv().now_or_never() {
        if d.1 != QoS::AtMostOnce {
            sessions::push_bounded(queue, (None, d));
        }
    }
}

/// A session whose connection has ended and that is kept: its subscriptions and its queue.
struct Parked {
    router: tessera_shards::Router,
    owner: Owner,
    filters: Vec<(String, QoS)>,
    conn: u64,
    inbox: glommio::channels::local_channel::LocalReceiver<realtime::Delivery>,
    held: Held,
    /// Deliveries for the next connection: unacknowledged ones first.
    queue: VecDeque<Queued>,
    /// When the connection ended, as saved on disk: after a restart, the audit logs give back
    /// the changes committed since, so only an earlier one still arriving is saved again.
    cut: Option<u64>,
}

impl Parked {
    /// Holds a parked session on the core it ended on: keeps its subscriptions registered and
    /// queues its QoS 1 deliveries until a new connection takes them, or the session expires.
    async fn run(self, asked: Asked, expiry: Option<Duration>) {
        let Parked {
            router,
            owner,
            filters,
            conn,
            inbox,
            mut held,
            mut queue,
            cut,
        } = self;
        let mut asked = asked.fuse();
        let expired = async {
            match expiry {
                Some(d) => glommio::timer::sleep(d).await,
                None => futures::future::pending::<()>().await,
            }
        }
        .fuse();
        futures::pin_mut!(expired);
        loop {
            futures::select_biased! {
                reply = asked => {
                    held.release(&router, conn, None).await;
                    // What reached the inbox meanwhile goes with the queue.
                    drain(&inbox, &mut queue);
                    realtime::close_inbox(conn);
                    if let Ok(reply) = reply {
                        let _ = reply.send(queue);
                    }
                    return;
                }
                d = inbox.recv().fuse() => match d {
                    Some(d) if d.1 != QoS::AtMostOnce => {
                        let before_cut = cut.is_some_and(|c| d.0.version <= c);
                        sessions::push_bounded(&mut queue, (None, d));
                        if let (Some(at), true) = (cut, before_cut) {
                            sessions::save(Saved::parked(&owner, &filters, at, &queue));
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                () = expired => {
                    held.release(&router, conn, None).await;
                    realtime::close_inbox(conn);
                    sessions::expire(&owner.client_id);
                    return;
                }
            }
        }
    }
}

/// Registers subscription `sub` of connection `conn` to `filter`. Returns the table and what the
/// subscription covers, and the current records; `None` when the filter names no exported
/// table or no possible id.
async fn register(
    core: &Core,
    conn: u64,
    sub: u32,
    filter: &str,
    qos: QoS,
    held: &mut Held,
) -> Option<Vec<Change>> {
    let (table, scope) = target(core, filter)?;
    let sub = subscriber(core, conn, sub, qos);
    realtime::subscribe(&core.router, &table, scope, None, sub, held).await
}

/// The exported table a filter names, and what it covers there.
fn target(core: &Core, filter: &str) -> Option<(Arc<tessera_storage::Table>, Scope)> {
    let (table, rest) = filter.split_once('/')?;
    let table = core.shared.tables.get(table)?.clone();
    let scope = if rest.contains(['+', '#']) {
        Scope::Pattern(Pattern(rest.split('/').map(str::to_owned).collect()))
    } else {
        Scope::Record(rest.to_owned())
    };
    Some((table, scope))
}

fn subscriber(core: &Core, conn: u64, sub: u32, qos: QoS) -> Subscriber {
    Subscriber {
        core: core.router.core(),
        conn,
        sub,
        qos,
    }
}

/// Subscribes `conn` again to the filters of a session whose connection ended at `parked_at`,
/// numbering them from `first`. Returns the filters subscribed with their numbers, and the
/// changes their QoS 1 and 2 filters cover that were committed after `parked_at` (none when it
/// is unknown), in commit order: read in the same step as each registration, so that none falls
/// between the old subscriptions and the new ones.
async fn resubscribe(
    core: &Core,
    conn: u64,
    first: u32,
    filters: &[(String, QoS)],
    parked_at: Option<u64>,
    held: &mut Held,
) -> (Vec<(String, u32, QoS)>, Vec<realtime::Delivery>) {
    let after = parked_at.unwrap_or(u64::MAX);
    let (mut subscribed, mut logged) = (Vec::new(), Vec::new());
    for (sub, (filter, qos)) in (first..).zip(filters) {
        let Some((table, scope)) = target(core, filter) else {
            continue;
        };
        let s = subscriber(core, conn, sub, *qos);
        let since = realtime::Since::After(after);
        let Some(found) =
            realtime::subscribe_since(&core.router, &table, &scope, s, held, since).await
        else {
            continue;
        };
        subscribed.push((filter.clone(), sub, *qos));
        if *qos != QoS::AtMostOnce {
            logged.extend(found.into_iter().map(|c| (c, *qos)));
        }
    }
    logged.sort_by_key(|(c, _)| c.version);
    (subscribed, logged)
}

/// Checks CONNECT's user name and password against Tessera's users. The error is the CONNACK
/// code: 3.1.1 0x04 (bad user name or password) / 0x05 (not authorized), 5 0x86 / 0x87.
async fn check_credentials(core: &Core, c: &Connect) -> Result<Arc<User>, u8> {
    let (bad, unauthorized) = match c.version {
        Version::V311 => (0x04, 0x05),
        Version::V5 => (0x86, 0x87),
    };
    let (Some(user), Some(password)) = (&c.username, &c.password) else {
        return Err(unauthorized);
    };
    let mut raw = user.as_bytes().to_vec();
    raw.push(b':');
    raw.extend_from_slice(password);
    use base64::Engine;
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    );
    core.auth.authenticate(header.as_bytes()).await.ok_or(bad)
}

/// The topic of a change's record: its table's export and the record id (`Dog/42`).
fn topic_of(core: &Core, change: &Change) -> Option<String> {
    let table = core.shared.tables.values().find(|t| t.id == change.table)?;
    let export = table.export.as_deref()?;
    Some(format!("{export}/{}", realtime::id_text(&change.key)?))
}

/// What a PUBLISH does to its topic's record: a message (an insert, for permissions), a put
/// (retained), or a delete (retained and empty).
fn publish_action(p: &Publish) -> Action {
    match (p.retain, p.payload.is_empty()) {
        (false, _) => Action::Insert,
        (true, true) => Action::Delete,
        (true, false) => Action::Update,
    }
}

/// A PUBLISH payload read as JSON.
fn payload_value(p: &Publish) -> Result<Value, crate::body::BodyError> {
    let mut body = p.payload.clone();
    crate::body::decode(
        Some("application/json"),
        &mut body,
        &mut simd_json::Buffers::default(),
    )
}

/// The PUBLISH that tells a subscriber about a change: the record as JSON, `null` for a delete,
/// a message's payload as published (`None` once the message has expired; MQTT 5 subscribers get
/// the time it has left).
fn publish_for(
    core: &Core,
    change: &Change,
    qos: QoS,
    retain: bool,
    packet_id: Option<u16>,
) -> Option<Publish> {
    let mut properties = Properties::default();
    let payload = match &change.event {
        Event::Put(stored) => {
            let rec = RecordRef::parse(stored)?;
            let mut json = Vec::with_capacity(rec.body.len() + 16);
            msgpack_to_json(rec.body, &mut json).ok()?;
            json
        }
        Event::Delete => b"null".to_vec(),
        Event::Message {
            payload,
            expires_at,
        } => {
            if let Some(at) = expires_at {
                let left_ms = at.checked_sub(now_micros() / 1000).filter(|l| *l > 0)?;
                properties.message_expiry_interval = Some(left_ms.div_ceil(1000) as u32);
            }
            payload.clone()
        }
    };
    Some(Publish {
        dup: false,
        qos,
        retain,
        topic: topic_of(core, change)?,
        packet_id,
        properties,
        payload,
    })
}

/// The packet id that follows `id` (1 after 65,535: 0 is not a packet id).
fn next_packet_id(id: u16) -> u16 {
    id.checked_add(1).unwrap_or(1)
}

impl Session<'_> {
    /// PUBLISH from the client: RETAIN=1 writes the record (empty payload: deletes it), RETAIN=0
    /// is a message to the record's subscribers. Acknowledged once the write has committed.
    async fn publish(&mut self, mut p: Publish) {
        // MQTT 5 topic aliases: a topic with an alias sets it; an empty topic uses it.
        let aliased = match p.properties.topic_alias {
            Some(alias) if alias > TOPIC_ALIAS_MAXIMUM => Err(0x94),
            Some(alias) if p.topic.is_empty() => match self.aliases.get(&alias) {
                Some(t) => {
                    p.topic = t.clone();
                    Ok(())
                }
                None => Err(0x82),
            },
            Some(alias) => {
                self.aliases.insert(alias, p.topic.clone());
                Ok(())
            }
            None => Ok(()),
        };
        let result = match aliased {
            Ok(()) => self.apply_publish(&p).await,
            Err(code) => Err(code),
        };
        let reason = match result {
            Ok(()) => 0,
            Err(code) => code,
        };
        let ack = |id| Ack {
            packet_id: id,
            reason: if self.version == Version::V5 {
                reason
            } else {
                0
            },
            properties: Properties::default(),
        };
        let reply = match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(ack(id))),
            (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(ack(id))),
            _ => None,
        };
        if let Some(r) = reply {
            let _ = self.outbox.send(r).await;
        }
    }

    /// Carries out a publish (also a will). The error is an MQTT 5 reason code.
    async fn apply_publish(&mut self, p: &Publish) -> Result<(), u8> {
        if let Some(answered) = self.publish_to_resource(p).await {
            return answered;
        }
        let core = self.core;
        // 0x90: topic name invalid (not an exported table).
        let (table, id) = core.shared.topic(&p.topic).ok_or(0x90u8)?;
        // 0x87: not authorized (the role's table permission for what the publish does).
        let action = publish_action(p);
        if !self
            .user
            .permission
            .allows(&table.database, &table.name, action)
        {
            return Err(0x87);
        }
        let pk = id_value(table, id);
        let key = record_key(table.id, &pk).map_err(|_| 0x90u8)?;
        if !p.retain {
            let message = Change {
                table: table.id,
                key,
                event: Event::Message {
                    payload: p.payload.clone(),
                    // MQTT 5 message expiry.
                    expires_at: p
                        .properties
                        .message_expiry_interval
                        .map(|s| now_micros() / 1000 + u64::from(s) * 1000),
                },
                version: 0, // numbered where it is dispatched
            };
            return realtime::publish_message(&core.router, message, &mut self.messages)
                .await
                .map_err(|_| 0x80);
        }
        // The write reaches subscribers after the messages published before it.
        self.messages.settle().await;
        if p.payload.is_empty() {
            let op = WriteOp {
                table: table.clone(),
                key,
                kind: WriteKind::Delete,
            };
            return core.router.write(op).await.map(|_| ()).map_err(|_| 0x80);
        }
        let rec = payload_value(p).map_err(|_| 0x99u8)?; // payload format invalid
        core.write_record(table, rec, pk, WriteMode::Replace)
            .await
            .map(|_| ())
            .map_err(|_| 0x99)
    }

    /// A publish to a wasm resource's topic goes to the resource: a message to its `publish`, a
    /// retained one to its `put` (an empty retained one to its `delete`). `None`: there is no
    /// resource, or it does not override that verb, and the table's own handling applies.
    async fn publish_to_resource(&mut self, p: &Publish) -> Option<Result<(), u8>> {
        let core = self.core;
        let (name, id) = p.topic.split_once('/')?;
        let res = core.shared.wasm.resource(name)?;
        let action = publish_action(p);
        let method = match action {
            Action::Delete => wasm::Method::Delete,
            Action::Update => wasm::Method::Put,
            _ => wasm::Method::Publish,
        };
        if res.falls_back(method) {
            return None;
        }
        // What the resource writes reaches subscribers after the messages published before.
        self.messages.settle().await;
        // As over REST: a resource extending a table is under the table's permissions; a
        // standalone one checks the user itself.
        if let Some(table) = &res.extends
            && !self
                .user
                .permission
                .allows(&table.database, &table.name, action)
        {
            return Some(Err(0x87));
        }
        let data = if p.payload.is_empty() {
            None
        } else {
            let mut value = match (payload_value(p), method) {
                (Ok(v), _) => v,
                // A message need not be JSON: the guest gets its bytes.
                (Err(_), wasm::Method::Publish) => Value::Bytes(p.payload.clone()),
                (Err(_), _) => return Some(Err(0x99)), // payload format invalid
            };
            if let (Some(table), wasm::Method::Put) = (&res.extends, method) {
                let pk = &table.primary_key().name;
                crate::rest::set_primary_key(&mut value, pk, id_value(table, id));
            }
            Some(value.to_msgpack())
        };
        let call = wasm::Call {
            method,
            id: Some(id),
            pathname: id,
            search: "",
            is_collection: id.is_empty(),
            data,
            user: Some(self.user.username.clone()),
            head: Vec::new(),
        };
        match wasm::call(&core.shared, &core.router, res, call).await {
            Ok(wasm::Answer::Fallback) => None,
            Ok(wasm::Answer::Respond(_)) => Some(Ok(())),
            Err(e) => Some(Err(match e.status() {
                400 | 413 | 422 => 0x99, // payload format invalid
                401 | 403 => 0x87,       // not authorized
                404 => 0x90,             // topic name invalid
                _ => 0x80,               // unspecified error
            })),
        }
    }

    async fn subscribe(&mut self, s: Subscribe) {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in &s.filters {
            let qos = options.qos;
            // Subscribing again to a filter replaces the subscription.
            if let Some((old, _)) = self.filters.remove(filter) {
                self.held
                    .release(&self.core.router, self.conn, Some(old))
                    .await;
            }
            let readable = filter.split_once('/').and_then(|(t, _)| {
                let table = self.core.shared.tables.get(t)?;
                Some(
                    self.user
                        .permission
                        .allows(&table.database, &table.name, Action::Read),
                )
            });
            if readable == Some(false) {
                codes.push(match self.version {
                    Version::V311 => 0x80,
                    Version::V5 => 0x87, // not authorized
                });
                continue;
            }
            match self.add_subscription(filter, qos, &mut retained).await {
                Some(()) => codes.push(qos as u8),
                None => codes.push(match self.version {
                    Version::V311 => 0x80,
                    Version::V5 => 0x8F,
                }),
            }
        }
        self.save();
        let _ = self
            .outbox
            .send(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                codes,
            }))
            .await;
        let mut next_id = 0x8000;
        for (change, qos) in retained {
            let packet_id = (qos != QoS::AtMostOnce).then(|| {
                next_id = next_packet_id(next_id);
                next_id
            });
            if let Some(p) = publish_for(self.core, &change, qos, true, packet_id) {
                let _ = self.outbox.send(Packet::Publish(p)).await;
            }
        }
    }

    /// Registers one filter and collects the current records it covers. `None`: refused.
    async fn add_subscription(
        &mut self,
        filter: &str,
        qos: QoS,
        retained: &mut Vec<(Change, QoS)>,
    ) -> Option<()> {
        self.next_sub += 1;
        let (sub, conn) = (self.next_sub, self.conn);
        let current = register(self.core, conn, sub, filter, qos, &mut self.held).await?;
        self.filters.insert(filter.to_owned(), (sub, qos));
        retained.extend(current.into_iter().map(|c| (c, qos)));
        Some(())
    }

    /// Saves a kept session's filters as they are now.
    fn save(&self) {
        if let Some(owner) = &self.kept {
            let filters = self.filters.iter().map(|(f, (_, q))| (f.clone(), *q));
            sessions::save(Saved::live(owner, filters));
        }
    }

    /// Picks up a parked session: its filters are subscribed again, without the current
    /// records (the deliverer sends what the session queued while the client was away). Returns
    /// the changes committed after `parked_at` that the session's filters cover.
    async fn resume(
        &mut self,
        filters: &[(String, QoS)],
        parked_at: Option<u64>,
    ) -> Vec<realtime::Delivery> {
        let first = self.next_sub + 1;
        let (subscribed, logged) = resubscribe(
            self.core,
            self.conn,
            first,
            filters,
            parked_at,
            &mut self.held,
        )
        .await;
        for (filter, sub, qos) in subscribed {
            self.next_sub = self.next_sub.max(sub);
            self.filters.insert(filter, (sub, qos));
        }
        logged
    }

    async fn unsubscribe(&mut self, u: Unsubscribe) {
        for f in &u.filters {
            if let Some((n, _)) = self.filters.remove(f) {
                self.held
                    .release(&self.core.router, self.conn, Some(n))
                    .await;
            }
        }
        self.save();
        let codes = if self.version == Version::V5 {
            vec![0; u.filters.len()]
        } else {
            Vec::new()
        };
        let _ = self
            .outbox
            .send(Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                codes,
            }))
            .await;
    }
}
