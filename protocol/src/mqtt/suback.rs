//! SUBACK (3.1.1 section 3.9, 5 section 3.9): one return/reason code per requested filter (the
//! granted QoS, or 0x80 and above for a refusal).

use super::codec::{Reader, put_u16};
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub codes: Vec<u8>,
}

pub fn read(body: &[u8], version: Version) -> Result<SubAck, Error> {
    let mut r = Reader::new(body);
    let packet_id = super::packet_id(&mut r)?;
    let properties = if version == Version::V5 {
        Properties::read(&mut r, Context::SubAck)?
    } else {
        Properties::default()
    };
    let codes = r.rest().to_vec();
    if codes.is_empty() {
        return Err(Error::Protocol("SUBACK without return codes"));
    }
    Ok(SubAck {
        packet_id,
        properties,
        codes,
    })
}

pub fn write(s: &SubAck, version: Version, out: &mut Vec<u8>) {
    put_u16(out, s.packet_id);
    if version == Version::V5 {
        s.properties.write(out);
    }
    out.extend_from_slice(&s.codes);
}
