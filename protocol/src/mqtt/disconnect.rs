//! DISCONNECT (3.1.1 section 3.14, 5 section 3.14): an orderly end. Empty in 3.1.1; in 5 a reason
//! code and properties, both optional (absent means 0, normal disconnection).

use super::codec::Reader;
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: u8,
    pub properties: Properties,
}

pub fn read(body: &[u8], version: Version) -> Result<Disconnect, Error> {
    let mut r = Reader::new(body);
    let mut d = Disconnect::default();
    match version {
        Version::V311 if !body.is_empty() => {
            return Err(Error::Malformed("DISCONNECT with a body"));
        }
        Version::V311 => {}
        Version::V5 => {
            if !r.is_empty() {
                d.reason = r.u8()?;
            }
            if !r.is_empty() {
                d.properties = Properties::read(&mut r, Context::Disconnect)?;
            }
            if !r.is_empty() {
                return Err(Error::Malformed("bytes after DISCONNECT"));
            }
        }
    }
    Ok(d)
}

pub fn write(d: &Disconnect, version: Version, out: &mut Vec<u8>) {
    if version == Version::V5 && (d.reason != 0 || d.properties != Properties::default()) {
        out.push(d.reason);
        d.properties.write(out);
    }
}
