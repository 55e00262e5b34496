//! UNSUBSCRIBE (3.1.1 section 3.10, 5 section 3.10): topic filters to remove. Fixed-header flags
//! must be 0b0010.

use super::codec::{Reader, put_string, put_u16};
use super::properties::{Context, Properties};
use super::{Error, Version};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

pub fn read(body: &[u8], version: Version) -> Result<Unsubscribe, Error> {
    let mut r = Reader::new(body);
    let packet_id = super::packet_id(&mut r)?;
    let properties = if version == Version::V5 {
        Properties::read(&mut r, Context::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let f = r.string()?;
        super::check_topic_filter(&f)?;
        filters.push(f);
    }
    if filters.is_empty() {
        return Err(Error::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

pub fn write(u: &Unsubscribe, version: Version, out: &mut Vec<u8>) {
    put_u16(out, u.packet_id);
    if version == Version::V5 {
        u.properties.write(out);
    }
    for f in &u.filters {
        put_string(out, f);
    }
}
