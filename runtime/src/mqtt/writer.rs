//! The writer of a connection: the only one that writes to the transport, from a bounded
//! outbox of encoded frames that the reader and the deliverer fill.

use futures::FutureExt;
use futures_lite::{AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use tessera_protocol::mqtt::{self, Packet, QoS, Version};
use tessera_storage::shard::Change;

use super::publish::publish_for;
use crate::realtime::Broadcast;
use crate::worker::Worker;

/// Frames waiting to be written before the reader or the deliverer waits for the writer, which
/// writes all that wait at once. The channel keeps room for them from the start (24 bytes
/// each, for every connection, idle ones too).
const OUTBOX: usize = 32;
/// Most bytes gathered into one frame (the deliverer's QoS 0 PUBLISH packets) or one send (the
/// writer's queued frames).
pub const BATCH_BYTES: usize = 64 * 1024;

/// Where the reader and the deliverer queue packets for the writer: encoded on the way in, so
/// the queue holds compact frames (an idle connection keeps little memory). A frame is one
/// packet, or several QoS 0 PUBLISH packets that were waiting together.
pub struct Outbox {
    tx: LocalSender<Vec<u8>>,
    version: Version,
    /// The client's MQTT 5 maximum packet size: larger packets are not sent to it.
    max: usize,
}

impl Outbox {
    /// An outbox for a client of `version` that takes packets up to `max` bytes, and the
    /// receiving end for [`run`].
    pub fn new(version: Version, max: usize) -> (Outbox, LocalReceiver<Vec<u8>>) {
        let (tx, rx) = local_channel::new_bounded::<Vec<u8>>(OUTBOX);
        (Outbox { tx, version, max }, rx)
    }

    pub async fn send(&self, p: Packet) -> Result<(), ()> {
        let mut frame = Vec::with_capacity(64);
        mqtt::encode(&p, self.version, &mut frame);
        if frame.len() > self.max {
            return Ok(());
        }
        self.queue(frame).await
    }

    /// Queues a packet if the outbox has room now (one the connection may end without).
    pub fn try_send(&self, p: Packet) {
        let mut frame = Vec::with_capacity(64);
        mqtt::encode(&p, self.version, &mut frame);
        if frame.len() <= self.max {
            let _ = self.tx.try_send(frame);
        }
    }

    /// Queues encoded packets, each already checked against the client's maximum size.
    pub async fn queue(&self, frame: Vec<u8>) -> Result<(), ()> {
        self.tx.send(frame).await.map_err(|_| ())
    }

    /// Appends the QoS 0 PUBLISH of `change` to `batch`, if it has a topic and fits the
    /// client's maximum packet size. The packet is encoded once per protocol version, by the
    /// first subscriber that needs it, and copied for the others.
    pub fn push_qos0(&self, worker: &Worker, change: &Broadcast, batch: &mut Vec<u8>) {
        // The change's wire slots: 0 for MQTT 3.1.1, 1 for MQTT 5.
        let slot = usize::from(self.version == Version::V5);
        let frame = change.wire()[slot]
            .get_or_init(|| self.qos0_frame(worker, change, false).map(Into::into));
        if let Some(f) = frame.as_deref().filter(|f| f.len() <= self.max) {
            batch.extend_from_slice(f);
        }
    }

    /// [`Self::push_qos0`] of a change only this subscriber sees (its role's attributes, or
    /// `retain`, the RETAIN flag MQTT 5's Retain As Published gives it).
    pub fn push_qos0_of(
        &self,
        worker: &Worker,
        change: &Change,
        retain: bool,
        batch: &mut Vec<u8>,
    ) {
        if let Some(f) = self
            .qos0_frame(worker, change, retain)
            .filter(|f| f.len() <= self.max)
        {
            batch.extend_from_slice(&f);
        }
    }

    fn qos0_frame(&self, worker: &Worker, change: &Change, retain: bool) -> Option<Vec<u8>> {
        let p = publish_for(worker, change, QoS::AtMostOnce, retain, None)?;
        let mut f = Vec::with_capacity(128);
        mqtt::encode(&Packet::Publish(p), self.version, &mut f);
        Some(f)
    }
}

/// Writes what the outbox receives until every sender of it is gone, then closes the transport.
pub async fn run<W: AsyncWrite + Unpin>(frames: LocalReceiver<Vec<u8>>, mut wr: W) {
    // The first frame is the buffer (a QoS 0 batch is sent without another copy); whatever
    // else is queued is written with it.
    while let Some(mut buf) = frames.recv().await {
        while buf.len() < BATCH_BYTES {
            match frames.recv().now_or_never() {
                Some(Some(f)) => buf.extend_from_slice(&f),
                _ => break,
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.close().await;
}
