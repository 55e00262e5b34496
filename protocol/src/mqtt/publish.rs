//! PUBLISH (3.1.1 section 3.3, 5 section 3.3): an application message. The fixed-header flags
//! carry DUP, QoS and RETAIN; QoS 1 and 2 messages carry a packet identifier.

use super::codec::{Reader, put_string, put_u16};
use super::properties::{Context, Properties};
use super::{Error, QoS, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in MQTT 5 when a topic alias stands for it.
    pub topic: String,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    pub properties: Properties,
    pub payload: Vec<u8>,
}

pub fn read(flags: u8, body: &[u8], version: Version) -> Result<Publish, Error> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_bits((flags >> 1) & 0x03)?;
    let retain = flags & 0x01 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(Error::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let mut r = Reader::new(body);
    let topic = r.string()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(super::packet_id(&mut r)?),
    };
    let properties = if version == Version::V5 {
        Properties::read(&mut r, Context::Publish)?
    } else {
        Properties::default()
    };
    if topic.is_empty() {
        if version == Version::V311 || properties.topic_alias.is_none() {
            return Err(Error::Protocol("empty topic name"));
        }
    } else {
        super::check_topic_name(&topic)?;
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest().to_vec(),
    })
}

/// A PUBLISH read in place, for a receiver that counts messages rather than keeps them (a load
/// generator): the topic and payload borrow the packet's bytes and the v5 properties are
/// skipped, not parsed. Checks the framing only; [`read`] is the full decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRef<'a> {
    pub qos: QoS,
    pub topic: &'a [u8],
    pub packet_id: Option<u16>,
    pub payload: &'a [u8],
}

/// Reads a PUBLISH body (`flags` from its fixed header) in place; see [`PublishRef`].
pub fn read_ref(flags: u8, body: &[u8], version: Version) -> Result<PublishRef<'_>, Error> {
    let qos = QoS::from_bits((flags >> 1) & 0x03)?;
    let mut r = Reader::new(body);
    let topic = r.binary()?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(super::packet_id(&mut r)?),
    };
    if version == Version::V5 {
        let len = r.varint()? as usize;
        r.take(len)?;
    }
    Ok(PublishRef {
        qos,
        topic,
        packet_id,
        payload: r.rest(),
    })
}

/// The fixed-header flags of a PUBLISH.
pub fn flags(p: &Publish) -> u8 {
    (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
}

pub fn write(p: &Publish, version: Version, out: &mut Vec<u8>) {
    put_string(out, &p.topic);
    if p.qos != QoS::AtMostOnce {
        put_u16(out, p.packet_id.unwrap_or(1));
    }
    if version == Version::V5 {
        p.properties.write(out);
    }
    out.extend_from_slice(&p.payload);
}
