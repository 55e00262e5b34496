//! The body shared by PUBACK, PUBREC, PUBREL and PUBCOMP: a packet identifier and, in MQTT 5, a
//! reason code and properties, both omitted when the code is 0 and there are no properties.

use super::codec::{Reader, put_u16};
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// MQTT 5 reason code (always 0 in 3.1.1).
    pub reason: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: u16) -> Ack {
        Ack {
            packet_id,
            reason: 0,
            properties: Properties::default(),
        }
    }
}

pub fn read(body: &[u8], version: Version) -> Result<Ack, Error> {
    let mut r = Reader::new(body);
    let packet_id = super::packet_id(&mut r)?;
    let mut ack = Ack::new(packet_id);
    if version == Version::V5 && !r.is_empty() {
        ack.reason = r.u8()?;
        if !r.is_empty() {
            ack.properties = Properties::read(&mut r, Context::Ack)?;
        }
    }
    if !r.is_empty() {
        return Err(Error::Malformed("bytes after an acknowledgement"));
    }
    Ok(ack)
}

pub fn write(a: &Ack, version: Version, out: &mut Vec<u8>) {
    put_u16(out, a.packet_id);
    if version == Version::V5 && (a.reason != 0 || a.properties != Properties::default()) {
        out.push(a.reason);
        a.properties.write(out);
    }
}
