//! SUBSCRIBE (3.1.1 section 3.8, 5 section 3.8): topic filters with their options. Fixed-header
//! flags must be 0b0010.

use super::codec::{Reader, put_string, put_u16};
use super::properties::{Context, Properties};
use super::{Error, QoS, Version};

/// Subscription options (in 3.1.1 only the QoS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages at subscribe, 1: only for a new subscription, 2: never.
    pub retain_handling: u8,
}

impl Options {
    pub fn qos(qos: QoS) -> Options {
        Options {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(String, Options)>,
}

pub fn read(body: &[u8], version: Version) -> Result<Subscribe, Error> {
    let mut r = Reader::new(body);
    let packet_id = super::packet_id(&mut r)?;
    let properties = if version == Version::V5 {
        Properties::read(&mut r, Context::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        super::check_topic_filter(&filter)?;
        let o = r.u8()?;
        let options = match version {
            Version::V311 => {
                if o & 0xfc != 0 {
                    return Err(Error::Malformed("reserved subscription option bits set"));
                }
                Options::qos(QoS::from_bits(o & 0x03)?)
            }
            Version::V5 => {
                if o & 0xc0 != 0 {
                    return Err(Error::Malformed("reserved subscription option bits set"));
                }
                let retain_handling = (o >> 4) & 0x03;
                if retain_handling == 3 {
                    return Err(Error::Malformed("retain handling 3"));
                }
                Options {
                    qos: QoS::from_bits(o & 0x03)?,
                    no_local: o & 0x04 != 0,
                    retain_as_published: o & 0x08 != 0,
                    retain_handling,
                }
            }
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(Error::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

pub fn write(s: &Subscribe, version: Version, out: &mut Vec<u8>) {
    put_u16(out, s.packet_id);
    if version == Version::V5 {
        s.properties.write(out);
    }
    for (filter, o) in &s.filters {
        put_string(out, filter);
        let mut b = o.qos as u8;
        if version == Version::V5 {
            b |= (u8::from(o.no_local) << 2)
                | (u8::from(o.retain_as_published) << 3)
                | (o.retain_handling << 4);
        }
        out.push(b);
    }
}
