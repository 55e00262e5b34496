//! UNSUBACK (3.1.1 section 3.11, 5 section 3.11): in 3.1.1 just the packet identifier; in 5 also
//! properties and one reason code per filter.

use super::codec::{Reader, put_u16};
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// MQTT 5 only.
    pub codes: Vec<u8>,
}

pub fn read(body: &[u8], version: Version) -> Result<UnsubAck, Error> {
    let mut r = Reader::new(body);
    let packet_id = super::packet_id(&mut r)?;
    let (properties, codes) = match version {
        Version::V311 => (Properties::default(), Vec::new()),
        Version::V5 => {
            let p = Properties::read(&mut r, Context::UnsubAck)?;
            (p, r.rest().to_vec())
        }
    };
    if !r.is_empty() {
        return Err(Error::Malformed("bytes after UNSUBACK"));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        codes,
    })
}

pub fn write(u: &UnsubAck, version: Version, out: &mut Vec<u8>) {
    put_u16(out, u.packet_id);
    if version == Version::V5 {
        u.properties.write(out);
        out.extend_from_slice(&u.codes);
    }
}
