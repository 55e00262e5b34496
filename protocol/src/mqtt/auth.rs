//! AUTH (MQTT 5 section 3.15): extended authentication exchange. Not a 3.1.1 packet.

use super::codec::Reader;
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

pub fn read(body: &[u8], version: Version) -> Result<Auth, Error> {
    if version == Version::V311 {
        return Err(Error::Malformed("AUTH is not an MQTT 3.1.1 packet"));
    }
    let mut r = Reader::new(body);
    let mut a = Auth::default();
    if !r.is_empty() {
        a.reason = r.u8()?;
        a.properties = Properties::read(&mut r, Context::Auth)?;
    }
    if !r.is_empty() {
        return Err(Error::Malformed("bytes after AUTH"));
    }
    Ok(a)
}

pub fn write(a: &Auth, out: &mut Vec<u8>) {
    if a.reason != 0 || a.properties != Properties::default() {
        out.push(a.reason);
        a.properties.write(out);
    }
}
