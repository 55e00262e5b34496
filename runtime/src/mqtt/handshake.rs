//! The start of a connection: CONNECT within its time limit, the user it names, the client id
//! claimed (a live connection with the id is taken over, a kept session resumed), and CONNACK.

use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tessera_protocol::mqtt::{
    self, ConnAck, Connect, Error as MqttError, Packet, Properties, Version,
};

use super::backlog::Backlog;
use super::reader::PacketReader;
use super::sessions::{self, Owner, Saved};
use super::writer::Outbox;
use super::{CONNECT_TIMEOUT, MAX_PACKET, TOPIC_ALIAS_MAXIMUM};
use crate::app::Peer;
use crate::app::permissions::User;
use crate::realtime;
use crate::worker::Worker;

/// A connection the handshake accepted.
pub struct Opened {
    pub connect: Box<Connect>,
    pub user: Arc<User>,
    /// The connection's id in the real-time layer.
    pub conn: u64,
    pub client_id: String,
    /// Whose session this is, when it outlives the connection.
    pub kept: Option<Owner>,
    /// Fires when another connection takes the client id over.
    pub taken_over: oneshot::Receiver<()>,
    /// The kept session picked up, if any.
    pub resumed: Option<sessions::Resumed>,
    pub outbox: Rc<Outbox>,
    /// What the writer writes.
    pub frames: glommio::channels::local_channel::LocalReceiver<Vec<u8>>,
}

impl Opened {
    /// The deliveries the resumed session had queued.
    pub fn queued(&mut self) -> Backlog {
        self.resumed
            .as_mut()
            .map(|r| std::mem::take(&mut r.queued))
            .unwrap_or_default()
    }
}

/// Reads CONNECT, authenticates, claims the client id and queues CONNACK. `None` when the
/// connection is refused (the refusal already written) or gone.
pub async fn open<R, W>(
    worker: &Worker,
    peer: &Peer,
    packets: &mut PacketReader,
    rd: &mut R,
    wr: &mut W,
) -> Option<Opened>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first =
        glommio::timer::timeout(CONNECT_TIMEOUT, async { Ok(packets.next(rd, None).await) }).await;
    let connect = match first {
        Ok(Some(Ok(Packet::Connect(c)))) => c,
        Ok(Some(Err(MqttError::UnsupportedVersion(_)))) => {
            // 3.1.1 CONNACK "unacceptable protocol version", then close.
            let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            return None;
        }
        _ => return None,
    };
    let version = connect.version;
    // MQTT 3.1.1 keeps a session by client id: a session to keep needs one (MQTT-3.1.3-8).
    if version == Version::V311 && connect.client_id.is_empty() && !connect.clean_start {
        let _ = wr.write_all(&[0x20, 0x02, 0x00, 0x02]).await;
        return None;
    }
    let user = match check_credentials(worker, peer, &connect).await {
        Ok(user) => user,
        Err(code) => {
            let mut out = Vec::new();
            let refusal = ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            };
            mqtt::encode(&Packet::ConnAck(refusal), version, &mut out);
            let _ = wr.write_all(&out).await;
            return None;
        }
    };
    let conn = realtime::new_conn(worker.router.core());
    let client_id = match connect.client_id.as_str() {
        "" => format!("tessera-{conn:x}"),
        id => id.to_owned(),
    };
    let kept = kept_session(&connect, &client_id, &user);
    let (taken_over, resumed) =
        sessions::claim(&client_id, conn, &user.username, !connect.clean_start).await;
    match &kept {
        Some(owner) => {
            let filters = resumed.iter().flat_map(|r| r.filters.iter().cloned());
            sessions::save(Saved::live(owner, filters));
        }
        None => sessions::forget(&client_id),
    }
    let max = connect
        .properties
        .maximum_packet_size
        .map_or(usize::MAX, |m| m as usize);
    let (outbox, frames) = Outbox::new(version, max);
    let outbox = Rc::new(outbox);
    let connack = connack(&connect, &client_id, resumed.is_some());
    let _ = outbox.send(Packet::ConnAck(connack)).await;
    Some(Opened {
        connect,
        user,
        conn,
        client_id,
        kept,
        taken_over,
        resumed,
        outbox,
        frames,
    })
}

/// Whose session this is when it outlives the connection. MQTT 3.1.1: clean session 0 keeps
/// the session; MQTT 5: a session expiry above 0 keeps it (clean start 0 resumes one).
fn kept_session(connect: &Connect, client_id: &str, user: &User) -> Option<Owner> {
    let expiry = connect.properties.session_expiry_interval.unwrap_or(0);
    let keep = match connect.version {
        Version::V311 => !connect.clean_start,
        Version::V5 => expiry > 0,
    };
    keep.then(|| Owner {
        client_id: client_id.to_owned(),
        user: user.username.clone(),
        expiry: match connect.version {
            Version::V311 => None,
            Version::V5 => (expiry != u32::MAX).then_some(expiry),
        },
    })
}

/// The CONNACK accepting `connect`, with what the broker announces to MQTT 5 clients.
fn connack(connect: &Connect, client_id: &str, session_present: bool) -> ConnAck {
    let mut connack = ConnAck {
        session_present,
        code: 0,
        properties: Properties::default(),
    };
    if connect.version == Version::V5 {
        connack.properties.maximum_packet_size = Some(MAX_PACKET as u32);
        connack.properties.retain_available = Some(1);
        connack.properties.shared_subscription_available = Some(1);
        connack.properties.subscription_identifier_available = Some(0);
        connack.properties.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
        if connect.client_id.is_empty() {
            connack.properties.assigned_client_identifier = Some(client_id.to_owned());
        }
    }
    connack
}

/// Checks CONNECT's user name and password against Tessera's users. The error is the CONNACK
/// code: 3.1.1 0x04 (bad user name or password) / 0x05 (not authorized), 5 0x86 / 0x87.
/// The user CONNECT proves: the one a client certificate names (mTLS), else its user name and
/// password.
async fn check_credentials(worker: &Worker, peer: &Peer, c: &Connect) -> Result<Arc<User>, u8> {
    let (bad, unauthorized) = match c.version {
        Version::V311 => (0x04, 0x05),
        Version::V5 => (0x86, 0x87),
    };
    if let Some(name) = &peer.certificate_user {
        return worker.auth.user_named(name).map_err(|_| unauthorized);
    }
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
    worker.auth.authenticate(header.as_bytes()).await.ok_or(bad)
}
