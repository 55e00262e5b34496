//! MQTT 3.1.1 and 5, sans-I/O: framing, one module per packet type, and the checks the
//! specifications make "malformed" or "protocol error". Nothing here panics on any input.
//!
//! A connection starts version-less: only CONNECT can be decoded, and it names the version that
//! every later packet of the connection is read and written in. [`decode`] takes bytes as they
//! arrive and returns a packet once a whole one is buffered; [`encode`] appends a packet.

pub mod ack;
pub mod auth;
pub mod codec;
pub mod connack;
pub mod connect;
pub mod disconnect;
pub mod pingreq;
pub mod pingresp;
pub mod properties;
pub mod puback;
pub mod pubcomp;
pub mod publish;
pub mod pubrec;
pub mod pubrel;
pub mod suback;
pub mod subscribe;
pub mod unsuback;
pub mod unsubscribe;

use std::fmt;

pub use ack::Ack;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use properties::Properties;
pub use publish::Publish;
pub use suback::SubAck;
pub use subscribe::{Options, Subscribe};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

use codec::{Reader, put_varint, varint_len};

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(b: u8) -> Result<QoS, Error> {
        match b {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(Error::Malformed("QoS 3")),
        }
    }
}

/// Every packet of both versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: by far the largest packet, and one per connection.
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// Why bytes are not a valid packet. Each maps to the reason code MQTT 5 sends in its DISCONNECT
/// (or CONNACK); an MQTT 3.1.1 server just closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The packet ended before a field did.
    Truncated,
    /// Malformed packet (reason 0x81).
    Malformed(&'static str),
    /// Protocol error (reason 0x82).
    Protocol(&'static str),
    /// The packet is larger than the receiver's maximum (reason 0x95).
    TooLarge(usize),
    /// CONNECT with a protocol level Tessera does not speak (CONNACK 0x01 / 0x84).
    UnsupportedVersion(u8),
    /// A packet other than CONNECT before CONNECT.
    NotConnected,
}

impl Error {
    /// The MQTT 5 reason code for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            Error::Truncated | Error::Malformed(_) => 0x81,
            Error::Protocol(_) | Error::NotConnected => 0x82,
            Error::TooLarge(_) => 0x95,
            Error::UnsupportedVersion(_) => 0x84,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "malformed packet: a field runs past the packet's end"),
            Error::Malformed(m) => write!(f, "malformed packet: {m}"),
            Error::Protocol(m) => write!(f, "protocol error: {m}"),
            Error::TooLarge(n) => write!(f, "packet of {n} bytes is over the maximum size"),
            Error::UnsupportedVersion(l) => write!(f, "unsupported protocol level {l}"),
            Error::NotConnected => write!(f, "protocol error: the first packet must be CONNECT"),
        }
    }
}

impl std::error::Error for Error {}

/// Reads a packet identifier, which must not be 0.
fn packet_id(r: &mut Reader<'_>) -> Result<u16, Error> {
    match r.u16()? {
        0 => Err(Error::Protocol("packet identifier 0")),
        id => Ok(id),
    }
}

/// A topic name (PUBLISH, will): non-empty, no wildcards.
pub fn check_topic_name(t: &str) -> Result<(), Error> {
    if t.is_empty() {
        return Err(Error::Protocol("empty topic name"));
    }
    if t.contains(['+', '#']) {
        return Err(Error::Protocol("wildcard in a topic name"));
    }
    Ok(())
}

/// A topic filter (SUBSCRIBE, UNSUBSCRIBE): non-empty; `#` only as the whole last level; `+`
/// only as a whole level.
pub fn check_topic_filter(f: &str) -> Result<(), Error> {
    if f.is_empty() {
        return Err(Error::Protocol("empty topic filter"));
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(Error::Protocol("'#' that is not the whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(Error::Protocol("'+' that is not a whole level"));
        }
    }
    Ok(())
}

/// The fixed header of a buffered packet: `(type and flags byte, body start, body length)`, or
/// `None` while the header itself is incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, 2 + i, len)));
        }
    }
    Err(Error::Malformed("remaining length longer than 4 bytes"))
}

/// A whole packet in a buffer, not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPacket<'a> {
    /// The fixed header's first byte: packet type (high nibble) and flags.
    pub first: u8,
    pub body: &'a [u8],
    /// The bytes the packet takes, fixed header included.
    pub len: usize,
}

/// The first packet in `buf`, undecoded. `Ok(None)` until a whole packet is buffered; a packet
/// whose total size exceeds `max_size` is refused as soon as its header is read.
pub fn split(buf: &[u8], max_size: usize) -> Result<Option<RawPacket<'_>>, Error> {
    let Some((first, start, len)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let total = start + len;
    if total > max_size {
        return Err(Error::TooLarge(total));
    }
    Ok(buf.get(start..total).map(|body| RawPacket {
        first,
        body,
        len: total,
    }))
}

/// Decodes the first packet in `buf`. `version` is the connection's, `None` before CONNECT.
/// Returns `Ok(None)` until a whole packet is buffered, else the packet and the bytes it used.
/// A packet whose total size exceeds `max_size` is refused as soon as its header is read.
pub fn decode(
    buf: &[u8],
    version: Option<Version>,
    max_size: usize,
) -> Result<Option<(Packet, usize)>, Error> {
    let Some(RawPacket {
        first,
        body,
        len: total,
    }) = split(buf, max_size)?
    else {
        return Ok(None);
    };
    let (kind, flags) = (first >> 4, first & 0x0f);
    let Some(v) = version else {
        if kind != 1 {
            return Err(Error::NotConnected);
        }
        if flags != 0 {
            return Err(Error::Malformed("CONNECT flags in the fixed header"));
        }
        return Ok(Some((
            Packet::Connect(Box::new(connect::read(body)?)),
            total,
        )));
    };
    let expected_flags = match kind {
        3 => flags,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(Error::Malformed("fixed-header flags"));
    }
    let p = match kind {
        1 => return Err(Error::Protocol("a second CONNECT")),
        2 => Packet::ConnAck(connack::read(body, v)?),
        3 => Packet::Publish(publish::read(flags, body, v)?),
        4 => Packet::PubAck(puback::read(body, v)?),
        5 => Packet::PubRec(pubrec::read(body, v)?),
        6 => Packet::PubRel(pubrel::read(body, v)?),
        7 => Packet::PubComp(pubcomp::read(body, v)?),
        8 => Packet::Subscribe(subscribe::read(body, v)?),
        9 => Packet::SubAck(suback::read(body, v)?),
        10 => Packet::Unsubscribe(unsubscribe::read(body, v)?),
        11 => Packet::UnsubAck(unsuback::read(body, v)?),
        12 => {
            pingreq::read(body)?;
            Packet::PingReq
        }
        13 => {
            pingresp::read(body)?;
            Packet::PingResp
        }
        14 => Packet::Disconnect(disconnect::read(body, v)?),
        15 => Packet::Auth(auth::read(body, v)?),
        _ => return Err(Error::Malformed("packet type 0")),
    };
    Ok(Some((p, total)))
}

/// Appends `p` encoded for a connection of `version` (a CONNECT uses its own version).
pub fn encode(p: &Packet, version: Version, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    let first = match p {
        Packet::Connect(c) => {
            connect::write(c, &mut body);
            0x10
        }
        Packet::ConnAck(c) => {
            connack::write(c, version, &mut body);
            0x20
        }
        Packet::Publish(x) => {
            publish::write(x, version, &mut body);
            0x30 | publish::flags(x)
        }
        Packet::PubAck(a) => {
            puback::write(a, version, &mut body);
            0x40
        }
        Packet::PubRec(a) => {
            pubrec::write(a, version, &mut body);
            0x50
        }
        Packet::PubRel(a) => {
            pubrel::write(a, version, &mut body);
            0x62
        }
        Packet::PubComp(a) => {
            pubcomp::write(a, version, &mut body);
            0x70
        }
        Packet::Subscribe(s) => {
            subscribe::write(s, version, &mut body);
            0x82
        }
        Packet::SubAck(s) => {
            suback::write(s, version, &mut body);
            0x90
        }
        Packet::Unsubscribe(u) => {
            unsubscribe::write(u, version, &mut body);
            0xa2
        }
        Packet::UnsubAck(u) => {
            unsuback::write(u, version, &mut body);
            0xb0
        }
        Packet::PingReq => 0xc0,
        Packet::PingResp => 0xd0,
        Packet::Disconnect(d) => {
            disconnect::write(d, version, &mut body);
            0xe0
        }
        Packet::Auth(a) => {
            auth::write(a, &mut body);
            0xf0
        }
    };
    out.reserve(1 + varint_len(body.len() as u32) + body.len());
    out.push(first);
    put_varint(out, body.len() as u32);
    out.extend_from_slice(&body);
}

#[cfg(test)]
mod tests;
