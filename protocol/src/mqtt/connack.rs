//! CONNACK (3.1.1 section 3.2, 5 section 3.2): the answer to CONNECT. In 3.1.1 the code is a
//! return code (0-5), in 5 a reason code.

use super::codec::Reader;
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.1.1 return code or 5 reason code; 0 is success in both.
    pub code: u8,
    pub properties: Properties,
}

pub fn read(body: &[u8], version: Version) -> Result<ConnAck, Error> {
    let mut r = Reader::new(body);
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(Error::Malformed("reserved CONNACK flags set"));
    }
    let code = r.u8()?;
    let properties = if version == Version::V5 && !r.is_empty() {
        Properties::read(&mut r, Context::ConnAck)?
    } else {
        Properties::default()
    };
    Ok(ConnAck {
        session_present: flags & 1 == 1,
        code,
        properties,
    })
}

pub fn write(c: &ConnAck, version: Version, out: &mut Vec<u8>) {
    out.push(u8::from(c.session_present));
    out.push(c.code);
    if version == Version::V5 {
        c.properties.write(out);
    }
}
