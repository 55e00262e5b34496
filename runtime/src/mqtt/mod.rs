//! The MQTT front: MQTT 3.1.1 and 5 over TCP (and over WebSocket, through the HTTP front), topics
//! as resource paths (`Table/id`), retained publishes as writes, subscriptions fed by the
//! real-time layer (see docs/mqtt.md).
//!
//! Each connection runs three futures on its core, each polled only when woken: the reader
//! (`reader.rs`: decodes and handles packets, `publish.rs`, `subscribe.rs`), the writer
//! (`writer.rs`: the only one that writes to the transport, from a bounded outbox), and the
//! deliverer (`deliverer.rs`: turns changes from the connection's inbox into PUBLISH packets).
//! The handshake (`handshake.rs`) comes first; a kept session parks when its connection ends
//! (`parked.rs`, `sessions.rs`), with its unacknowledged deliveries (`inflight.rs`).

mod backlog;
mod deliverer;
mod handshake;
mod inflight;
mod parked;
mod publish;
mod reader;
pub mod sessions;
mod subscribe;
#[cfg(test)]
mod tests;
mod writer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_concurrency::future::Join;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use tessera_protocol::mqtt::{QoS, Version};

use crate::app::Peer;
use crate::app::permissions::User;
use crate::app::settings::Mtls;
use crate::auth::LiveUser;
use crate::net::Gate;
use crate::realtime::{self, Guarantee, Subscriptions};
use crate::worker::Worker;

/// How long a connection's last packets may take to go out once its reader has ended.
const LINGER: Duration = Duration::from_secs(1);
pub use parked::restore;

/// Largest packet accepted (and announced to MQTT 5 clients).
const MAX_PACKET: usize = 1 << 20;
/// Topic aliases a client may set (announced in CONNACK).
const TOPIC_ALIAS_MAXIMUM: u16 = 64;
/// Time a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a subscription with this QoS was promised.
pub fn guarantee_of(qos: QoS) -> Guarantee {
    match qos {
        QoS::AtMostOnce => Guarantee::AtMostOnce,
        QoS::AtLeastOnce => Guarantee::AtLeastOnce,
        QoS::ExactlyOnce => Guarantee::ExactlyOnce,
    }
}

/// The QoS a delivery with this guarantee is sent with.
pub fn qos_of(guarantee: Guarantee) -> QoS {
    match guarantee {
        Guarantee::AtMostOnce => QoS::AtMostOnce,
        Guarantee::AtLeastOnce => QoS::AtLeastOnce,
        Guarantee::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Serves MQTT connections from `listener` forever.
pub async fn serve(listener: TcpListener, worker: Rc<Worker>, gate: Arc<Gate>) {
    // Over the connection limit, a client is closed before its CONNECT is read.
    crate::net::accept(listener, "MQTT", gate, b"", move |stream| {
        connection(worker.clone(), stream)
    })
    .await;
}

/// Serves MQTT over TLS (MQTTS) from `listener` forever: the TLS handshake (within the time
/// CONNECT has), then the session as over plain TCP.
pub async fn serve_tls(
    listener: TcpListener,
    worker: Rc<Worker>,
    gate: Arc<Gate>,
    (acceptor, mtls): (futures_rustls::TlsAcceptor, Option<Mtls>),
) {
    crate::net::accept(listener, "MQTTS", gate, b"", move |stream| {
        let (worker, acceptor) = (worker.clone(), acceptor.clone());
        async move {
            let _ = stream.set_nodelay(true);
            let handshake = glommio::timer::timeout(CONNECT_TIMEOUT, async {
                Ok(acceptor.accept(stream).await)
            })
            .await;
            if let Ok(Ok(tls)) = handshake {
                let peer = Peer {
                    loopback: false,
                    certificate_user: crate::net::tls::certificate_user(tls.get_ref().1, mtls),
                };
                let (rd, wr) = futures_lite::io::split(tls);
                session(&worker, &peer, rd, wr).await;
            }
        }
    })
    .await;
}

async fn connection(worker: Rc<Worker>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = futures_lite::io::split(stream);
    session(&worker, &Peer::default(), rd, wr).await;
}

/// What the reader knows about its connection.
struct Connection<'w> {
    worker: &'w Worker,
    /// Who connected, as its role is now: it decides what the connection may subscribe to,
    /// publish and be delivered.
    live: Rc<LiveUser>,
    conn: u64,
    version: Version,
    outbox: Rc<writer::Outbox>,
    subscriptions: Subscriptions,
    next_sub: u32,
    /// Whose session this is, when it is kept (and so saved as its filters change).
    kept: Option<sessions::Owner>,
    /// The subscription number and QoS of each subscribed filter.
    filters: HashMap<String, (u32, QoS)>,
    /// MQTT 5 topic aliases the client has set (alias -> topic).
    aliases: HashMap<u16, String>,
    /// Messages published on this connection that other cores may not have dispatched yet.
    messages: realtime::InFlight,
}

impl Connection<'_> {
    /// The connection's user now; `None` once it has been dropped or deactivated.
    fn user(&self) -> Option<Arc<User>> {
        self.live.current()
    }
}

/// Publishes the will connection `conn` left after `wait`, if it is still due then.
async fn delayed_will(
    worker: Rc<Worker>,
    live: Rc<LiveUser>,
    client_id: String,
    conn: u64,
    will: tessera_protocol::mqtt::Publish,
    wait: Duration,
) {
    glommio::timer::sleep(wait).await;
    if !sessions::will_due(&client_id, conn) {
        return;
    }
    // The connection is gone: what it writes back goes nowhere.
    let (outbox, _) = writer::Outbox::new(Version::V5, usize::MAX);
    let mut gone = Connection {
        worker: &worker,
        live,
        conn,
        version: Version::V5,
        outbox: Rc::new(outbox),
        subscriptions: Subscriptions::default(),
        next_sub: 0,
        kept: None,
        filters: HashMap::new(),
        aliases: HashMap::new(),
        messages: realtime::InFlight::default(),
    };
    let _ = gone.apply_publish(&will).await;
}

/// Flow control between the reader and the deliverer: at most the client's Receive Maximum
/// (MQTT 5; 65,535 otherwise) QoS 1 and 2 deliveries not completed. While the client lags, its
/// inbox fills.
struct Flow {
    inflight: glommio::sync::Semaphore,
    /// Those deliveries by packet id: acknowledgements free them, and a parked session
    /// delivers again the ones never acknowledged.
    unacked: RefCell<inflight::Unacked>,
}

impl Flow {
    /// A delivery the client completed (or refused): room for the next.
    fn completed(&self, packet_id: u16) {
        if self.unacked.borrow_mut().acked(packet_id) {
            self.inflight.signal(1);
        }
    }
}

/// One MQTT connection over any byte transport (TCP, or WebSocket binary frames): the
/// handshake, then the reader, the writer and the deliverer together until the connection
/// ends, then its session parks or goes.
pub async fn session<R, W>(worker: &Rc<Worker>, peer: &Peer, mut rd: R, mut wr: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut packets = reader::PacketReader::default();
    // The steps before and after the connection's life run in futures of their own (boxed), so
    // that their states do not add to what every live connection holds.
    let opened = Box::pin(handshake::open(
        worker,
        peer,
        &mut packets,
        &mut rd,
        &mut wr,
    ))
    .await;
    let Some(mut opened) = opened else {
        return;
    };
    let conn = opened.conn;
    let inbox = realtime::open_inbox(conn);
    let live = Rc::new(LiveUser::new(
        worker.auth.users().clone(),
        opened.user.clone(),
    ));
    let mut connection = Connection {
        worker,
        live: live.clone(),
        conn,
        version: opened.connect.version,
        outbox: opened.outbox.clone(),
        subscriptions: Subscriptions::default(),
        next_sub: 0,
        kept: opened.kept.clone(),
        filters: HashMap::new(),
        aliases: HashMap::new(),
        messages: realtime::InFlight::default(),
    };
    // A resumed session is subscribed again before anything is delivered: what it queued goes
    // first, then what was committed after its connection ended and never reached the queue.
    let mut backlog = opened.queued();
    if let Some(r) = &opened.resumed {
        let logged = Box::pin(connection.resume(&r.filters, r.parked_at)).await;
        Box::pin(sessions::append_new(&mut backlog, logged)).await;
    }
    let receive_maximum = opened
        .connect
        .properties
        .receive_maximum
        .unwrap_or(u16::MAX);
    let flow = Flow {
        inflight: glommio::sync::Semaphore::new(u64::from(receive_maximum)),
        unacked: RefCell::default(),
    };
    let (park_tx, park_rx) = futures::channel::oneshot::channel::<()>();
    let handshake::Opened {
        connect,
        client_id,
        kept,
        taken_over,
        outbox,
        frames,
        ..
    } = opened;
    let (reader_done, reader_ended) = futures::channel::oneshot::channel::<()>();
    let writer = async move {
        use futures::FutureExt;
        let mut writing = std::pin::pin!(writer::run(frames, wr).fuse());
        futures::select_biased! {
            () = writing => return,
            _ = reader_ended.fuse() => {}
        }
        // The reader has ended: what is queued (its DISCONNECT) has a moment to go out, and a
        // client that stopped reading does not hold its session up past that.
        let _ = glommio::timer::timeout(LINGER, async {
            writing.await;
            Ok(())
        })
        .await;
    };
    let deliverer = async {
        let out = outbox;
        deliverer::run(worker, (&live, conn), &out, inbox, backlog, park_rx, &flow).await
    };
    let keep = kept.is_some();
    let reader = async {
        let left = reader::run(
            connection, packets, rd, connect, taken_over, keep, park_tx, &flow,
        )
        .await;
        let _ = reader_done.send(());
        left
    };
    // Each of the three is polled only when it was woken (`futures::join!` polls all of them on
    // every wake: each delivery to a subscriber would poll its reader's keep-alive timer and
    // socket again, about a tenth of the broker's CPU in a fan-out).
    let (left, (), parked_inbox) = (reader, writer, deliverer).join().await;
    // The client's DISCONNECT may have changed how long its session outlives it (0: not at all).
    let kept = match (kept, left.expiry) {
        (Some(_), Some(0)) => {
            sessions::forget(&client_id);
            None
        }
        (Some(mut owner), Some(seconds)) => {
            owner.expiry = (seconds != u32::MAX).then_some(seconds);
            Some(owner)
        }
        (kept, _) => kept,
    };
    // A will with a delay goes out when the delay (or, sooner, the session) ends, unless a new
    // connection takes the session up first.
    if let Some((will, delay)) = left.delayed_will {
        let lasts = match &kept {
            None => 0,
            Some(owner) => owner.expiry.unwrap_or(u32::MAX),
        };
        let wait = Duration::from_secs(u64::from(delay.min(lasts)));
        sessions::delay_will(&client_id, conn);
        let task = delayed_will(
            worker.clone(),
            live.clone(),
            client_id.clone(),
            conn,
            will,
            wait,
        );
        glommio::spawn_local(task).detach();
    }
    let ended = parked::Ended {
        client_id,
        conn,
        kept,
        subscriptions: left.subscriptions,
        filters: left.filters,
        unacked: flow.unacked.take(),
        parked_inbox,
    };
    Box::pin(parked::end(worker, ended)).await;
}
