//! The reader of a connection: decodes the client's packets and handles them, until the client
//! disconnects, goes silent past its keep-alive, sends a bad packet or is taken over. Then the
//! will is published (unless the end was clean) and the session parks or closes its inbox.

use std::time::Duration;

use futures::channel::oneshot;
use futures_lite::{AsyncRead, AsyncReadExt};
use tessera_protocol::mqtt::{
    self, Ack, Connect, Disconnect, Error as MqttError, Packet, Properties, Publish, QoS, Version,
};

use super::{Connection, Flow, MAX_PACKET};
use crate::realtime::{self, Subscriptions};

/// Bytes read and not yet decoded.
#[derive(Default)]
pub struct PacketReader {
    buf: Vec<u8>,
    start: usize,
}

impl PacketReader {
    /// The next packet, reading as needed. `None` on EOF; an error for a bad packet.
    pub async fn next<R: futures_lite::AsyncRead + Unpin>(
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

/// What a connection's reader leaves: its subscriptions and filters, the session expiry its
/// client's DISCONNECT set (MQTT 5), if it set one, and a will to publish after its delay.
pub struct ReaderEnd {
    pub subscriptions: Subscriptions,
    pub filters: Vec<(String, QoS)>,
    pub expiry: Option<u32>,
    pub delayed_will: Option<(Publish, u32)>,
}

/// Reads and handles packets until the connection ends. When the session outlives the
/// connection (`keep`), `park` tells the deliverer to hand back its inbox; it is dropped when
/// the reader ends either way.
#[allow(clippy::too_many_arguments)]
pub async fn run<R: AsyncRead + Unpin>(
    mut connection: Connection<'_>,
    mut packets: PacketReader,
    mut rd: R,
    connect: Box<Connect>,
    mut taken_over: oneshot::Receiver<()>,
    keep: bool,
    park: oneshot::Sender<()>,
    flow: &Flow,
) -> ReaderEnd {
    let version = connect.version;
    let keep_alive = match connect.keep_alive {
        0 => Duration::from_secs(24 * 3600),
        s => Duration::from_millis(u64::from(s) * 1500),
    };
    let mut clean_end = false;
    // MQTT 5 DISCONNECT: its session expiry replaces CONNECT's; reason 0x04 asks for the will.
    let mut goodbye: Option<Box<Disconnect>> = None;
    // Ends the connection, looking once a second (one timer for the whole connection, not one
    // per packet), once its user is dropped or deactivated (0x87, not authorized) or it has let
    // more acknowledged deliveries pile up than its inbox holds (0x97, quota exceeded).
    let (live, conn) = (connection.live.clone(), connection.conn);
    let mut gone = Box::pin(async move {
        loop {
            glommio::timer::sleep(Duration::from_secs(1)).await;
            if live.current().is_none() {
                return 0x87u8;
            }
            if realtime::overrun(conn) {
                return 0x97;
            }
        }
    });
    loop {
        let read = glommio::timer::timeout(keep_alive, async {
            Ok(packets.next(&mut rd, Some(version)).await)
        });
        let ended = futures::future::select(&mut taken_over, &mut gone);
        let next = match futures::future::select(Box::pin(read), ended).await {
            futures::future::Either::Left((next, _)) => next,
            // The server ends it (see `gone`).
            futures::future::Either::Right((futures::future::Either::Right((reason, _)), _)) => {
                connection.disconnect(reason);
                clean_end = reason == 0x87;
                break;
            }
            futures::future::Either::Right(_) => {
                // Another connection took the client id over.
                connection.disconnect(0x8E);
                clean_end = true;
                break;
            }
        };
        let packet = match next {
            Ok(Some(Ok(p))) => p,
            Ok(Some(Err(e))) => {
                connection.disconnect(e.reason_code());
                break;
            }
            // EOF, or silence longer than one and a half keep-alive periods.
            _ => break,
        };
        let after = match packet {
            // A delivery completed (QoS 1 PUBACK, QoS 2 PUBCOMP, or a QoS 2 PUBREC that
            // refuses the message with an MQTT 5 reason code): room for the next one. The most
            // frequent packet of a subscriber, handled without a future of its own.
            Packet::PubAck(Ack { packet_id, .. })
            | Packet::PubComp(Ack { packet_id, .. })
            | Packet::PubRec(Ack {
                packet_id,
                reason: 0x80..,
                ..
            }) => {
                flow.completed(packet_id);
                AfterPacket::Continue
            }
            // In a future of its own (boxed): inline, its largest state (a PUBLISH's) would be
            // held by every connection, idle ones too, for as long as it lasts.
            other => Box::pin(connection.handle(other, flow)).await,
        };
        match after {
            AfterPacket::Continue => {}
            AfterPacket::Disconnect(d) => {
                clean_end = d.reason != 0x04;
                goodbye = Some(d);
                break;
            }
            AfterPacket::Unexpected => break,
        }
    }
    let mut delayed_will = None;
    if !clean_end && let Some(will) = &connect.will {
        let p = Publish {
            dup: false,
            qos: will.qos,
            retain: will.retain,
            topic: will.topic.clone(),
            packet_id: None,
            // Its properties travel as a publish's do (the will delay is the broker's own).
            properties: Properties {
                will_delay_interval: None,
                ..will.properties.clone()
            },
            payload: will.payload.clone(),
        };
        // MQTT 5's Will Delay Interval: published later, unless the session resumes first.
        match will.properties.will_delay_interval.filter(|d| *d > 0) {
            Some(delay) => delayed_will = Some((p, delay)),
            None => {
                let connection = &mut connection;
                let _ = Box::pin(async move { connection.apply_publish(&p).await }).await;
            }
        }
    }
    let expiry = goodbye.and_then(|d| d.properties.session_expiry_interval);
    // Parking keeps the inbox (the deliverer hands it back); otherwise closing it ends the
    // deliverer. Dropping the connection's outbox then ends the writer.
    if keep && expiry != Some(0) {
        let _ = park.send(());
    } else {
        realtime::close_inbox(connection.conn);
    }
    let filters: Vec<(String, QoS)> = connection
        .filters
        .iter()
        .map(|(f, (_, q))| (f.clone(), *q))
        .collect();
    ReaderEnd {
        subscriptions: std::mem::take(&mut connection.subscriptions),
        filters,
        expiry,
        delayed_will,
    }
}

/// What the reader does after a packet.
enum AfterPacket {
    Continue,
    /// The client said goodbye (DISCONNECT).
    Disconnect(Box<Disconnect>),
    /// A packet a client may not send.
    Unexpected,
}

impl Connection<'_> {
    /// Handles one packet from the client (but for the acknowledgements [`run`] handles).
    async fn handle(&mut self, packet: Packet, flow: &Flow) -> AfterPacket {
        match packet {
            Packet::Publish(p) => {
                if let Some(reason) = self.publish(p).await {
                    self.disconnect(reason);
                    return AfterPacket::Unexpected;
                }
            }
            Packet::PubRel(a) => {
                let _ = self
                    .outbox
                    .send(Packet::PubComp(Ack::new(a.packet_id)))
                    .await;
            }
            Packet::Subscribe(s) => {
                if let Some(reason) = self.subscribe(s).await {
                    self.disconnect(reason);
                    return AfterPacket::Unexpected;
                }
            }
            Packet::Unsubscribe(u) => self.unsubscribe(u).await,
            Packet::PingReq => {
                let _ = self.outbox.send(Packet::PingResp).await;
            }
            Packet::Disconnect(d) => return AfterPacket::Disconnect(Box::new(d)),
            Packet::PubAck(Ack { packet_id, .. }) | Packet::PubComp(Ack { packet_id, .. }) => {
                flow.completed(packet_id)
            }
            // A QoS 2 delivery received: released; it completes with the client's PUBCOMP.
            Packet::PubRec(a) => {
                flow.unacked.borrow_mut().received(a.packet_id);
                let _ = self
                    .outbox
                    .send(Packet::PubRel(Ack::new(a.packet_id)))
                    .await;
            }
            _ => return AfterPacket::Unexpected,
        }
        AfterPacket::Continue
    }

    /// Tells an MQTT 5 client why the connection ends (MQTT 3.1.1 has no such packet).
    fn disconnect(&self, reason: u8) {
        if self.version == Version::V5 {
            let d = Disconnect {
                reason,
                properties: Properties::default(),
            };
            // Not waiting on a client that stopped reading: it is not told.
            self.outbox.try_send(Packet::Disconnect(d));
        }
    }
}
