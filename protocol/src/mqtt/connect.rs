//! CONNECT (MQTT 3.1.1 section 3.1, MQTT 5 section 3.1): the first packet of a connection, which
//! also says which protocol version the rest of it speaks.

use super::codec::{Reader, put_binary, put_string, put_u16};
use super::properties::{Context, Properties};
use super::{Error, QoS, Version};

/// A will message, published when the connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: Version,
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5).
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    pub properties: Properties,
}

/// The protocol level byte of an unsupported version (for CONNACK 0x01 / 0x84).
pub fn peek_level(body: &[u8]) -> Option<u8> {
    let mut r = Reader::new(body);
    r.binary().ok()?;
    r.u8().ok()
}

pub fn read(body: &[u8]) -> Result<Connect, Error> {
    let mut r = Reader::new(body);
    let name = r.binary()?;
    let level = r.u8()?;
    let version = match (name, level) {
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        (b"MQTT" | b"MQIsdp", _) => return Err(Error::UnsupportedVersion(level)),
        _ => return Err(Error::Malformed("not an MQTT protocol name")),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(Error::Malformed("reserved CONNECT flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_bits((flags >> 3) & 0x03)?;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(Error::Malformed("will QoS or retain without a will"));
    }
    if version == Version::V311 && has_password && !has_username {
        return Err(Error::Malformed("a password without a user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if version == Version::V5 {
        Properties::read(&mut r, Context::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if version == Version::V5 {
            Properties::read(&mut r, Context::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        super::check_topic_name(&topic)?;
        Some(Will {
            topic,
            payload: r.binary()?.to_vec(),
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?.to_vec())
    } else {
        None
    };
    if !r.is_empty() {
        return Err(Error::Malformed("bytes after the CONNECT payload"));
    }
    Ok(Connect {
        version,
        client_id,
        clean_start,
        keep_alive,
        username,
        password,
        will,
        properties,
    })
}

pub fn write(c: &Connect, out: &mut Vec<u8>) {
    put_string(out, "MQTT");
    out.push(match c.version {
        Version::V311 => 4,
        Version::V5 => 5,
    });
    let mut flags = 0u8;
    if c.clean_start {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.push(flags);
    put_u16(out, c.keep_alive);
    if c.version == Version::V5 {
        c.properties.write(out);
    }
    put_string(out, &c.client_id);
    if let Some(w) = &c.will {
        if c.version == Version::V5 {
            w.properties.write(out);
        }
        put_string(out, &w.topic);
        put_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_string(out, u);
    }
    if let Some(p) = &c.password {
        put_binary(out, p);
    }
}
