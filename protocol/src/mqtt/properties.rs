//! MQTT 5 properties (section 2.2.2): a length-prefixed list of identified values. Each packet
//! allows a subset; a property outside it, or one given twice that may appear once, is a
//! protocol error.

use super::Error;
use super::codec::{Reader, put_binary, put_string, put_u16, put_u32, put_varint};

/// The properties of one packet. Absent ones are `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// May repeat in PUBLISH (one per matching subscription).
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Vec<u8>>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

/// Which packet (or will) a property list belongs to, for the allowed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

fn allowed(id: u8, ctx: Context) -> bool {
    use Context::*;
    match id {
        0x26 => true,
        0x1F => matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(ctx, Publish | Will),
        0x0B => matches!(ctx, Publish | Subscribe),
        0x11 => matches!(ctx, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => ctx == ConnAck,
        0x15 | 0x16 => matches!(ctx, Connect | ConnAck | Auth),
        0x17 | 0x19 => ctx == Connect,
        0x18 => ctx == Will,
        0x1C => matches!(ctx, ConnAck | Disconnect),
        0x21 | 0x22 | 0x27 => matches!(ctx, Connect | ConnAck),
        0x23 => ctx == Publish,
        _ => false,
    }
}

fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::Protocol("a property given twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(r: &mut Reader<'_>) -> Result<u8, Error> {
    let v = r.u8()?;
    if v > 1 {
        return Err(Error::Protocol("a 0/1 property with another value"));
    }
    Ok(v)
}

impl Properties {
    /// Reads a property list (its length first).
    pub fn read(r: &mut Reader<'_>, ctx: Context) -> Result<Properties, Error> {
        let len = r.varint()? as usize;
        let mut r = Reader::new(r.take(len)?);
        let mut p = Properties::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| Error::Protocol("unknown property"))?;
            if !allowed(id, ctx) {
                return Err(Error::Protocol("a property this packet does not allow"));
            }
            match id {
                0x01 => once(&mut p.payload_format_indicator, flag(&mut r)?)?,
                0x02 => once(&mut p.message_expiry_interval, r.u32()?)?,
                0x03 => once(&mut p.content_type, r.string()?)?,
                0x08 => once(&mut p.response_topic, r.string()?)?,
                0x09 => once(&mut p.correlation_data, r.binary()?.to_vec())?,
                0x0B => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(Error::Protocol("subscription identifier 0"));
                    }
                    if ctx == Context::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(Error::Protocol("a property given twice"));
                    }
                    p.subscription_identifiers.push(v);
                }
                0x11 => once(&mut p.session_expiry_interval, r.u32()?)?,
                0x12 => once(&mut p.assigned_client_identifier, r.string()?)?,
                0x13 => once(&mut p.server_keep_alive, r.u16()?)?,
                0x15 => once(&mut p.authentication_method, r.string()?)?,
                0x16 => once(&mut p.authentication_data, r.binary()?.to_vec())?,
                0x17 => once(&mut p.request_problem_information, flag(&mut r)?)?,
                0x18 => once(&mut p.will_delay_interval, r.u32()?)?,
                0x19 => once(&mut p.request_response_information, flag(&mut r)?)?,
                0x1A => once(&mut p.response_information, r.string()?)?,
                0x1C => once(&mut p.server_reference, r.string()?)?,
                0x1F => once(&mut p.reason_string, r.string()?)?,
                0x21 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(Error::Protocol("receive maximum 0"));
                    }
                    once(&mut p.receive_maximum, v)?
                }
                0x22 => once(&mut p.topic_alias_maximum, r.u16()?)?,
                0x23 => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(Error::Protocol("topic alias 0"));
                    }
                    once(&mut p.topic_alias, v)?
                }
                0x24 => once(&mut p.maximum_qos, flag(&mut r)?)?,
                0x25 => once(&mut p.retain_available, flag(&mut r)?)?,
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                0x27 => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(Error::Protocol("maximum packet size 0"));
                    }
                    once(&mut p.maximum_packet_size, v)?
                }
                0x28 => once(&mut p.wildcard_subscription_available, flag(&mut r)?)?,
                0x29 => once(&mut p.subscription_identifier_available, flag(&mut r)?)?,
                0x2A => once(&mut p.shared_subscription_available, flag(&mut r)?)?,
                _ => return Err(Error::Protocol("unknown property")),
            }
        }
        Ok(p)
    }

    /// Appends the property list, its length first.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let p = self;
        let byte = |b: &mut Vec<u8>, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                b.extend_from_slice(&[id, v]);
            }
        };
        let short = |b: &mut Vec<u8>, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                b.push(id);
                put_u16(b, v);
            }
        };
        let long = |b: &mut Vec<u8>, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                b.push(id);
                put_u32(b, v);
            }
        };
        let text = |b: &mut Vec<u8>, id: u8, v: &Option<String>| {
            if let Some(v) = v {
                b.push(id);
                put_string(b, v);
            }
        };
        let bin = |b: &mut Vec<u8>, id: u8, v: &Option<Vec<u8>>| {
            if let Some(v) = v {
                b.push(id);
                put_binary(b, v);
            }
        };
        byte(&mut body, 0x01, p.payload_format_indicator);
        long(&mut body, 0x02, p.message_expiry_interval);
        text(&mut body, 0x03, &p.content_type);
        text(&mut body, 0x08, &p.response_topic);
        bin(&mut body, 0x09, &p.correlation_data);
        for id in &p.subscription_identifiers {
            body.push(0x0B);
            put_varint(&mut body, *id);
        }
        long(&mut body, 0x11, p.session_expiry_interval);
        text(&mut body, 0x12, &p.assigned_client_identifier);
        short(&mut body, 0x13, p.server_keep_alive);
        text(&mut body, 0x15, &p.authentication_method);
        bin(&mut body, 0x16, &p.authentication_data);
        byte(&mut body, 0x17, p.request_problem_information);
        long(&mut body, 0x18, p.will_delay_interval);
        byte(&mut body, 0x19, p.request_response_information);
        text(&mut body, 0x1A, &p.response_information);
        text(&mut body, 0x1C, &p.server_reference);
        text(&mut body, 0x1F, &p.reason_string);
        short(&mut body, 0x21, p.receive_maximum);
        short(&mut body, 0x22, p.topic_alias_maximum);
        short(&mut body, 0x23, p.topic_alias);
        byte(&mut body, 0x24, p.maximum_qos);
        byte(&mut body, 0x25, p.retain_available);
        for (k, v) in &p.user_properties {
            body.push(0x26);
            put_string(&mut body, k);
            put_string(&mut body, v);
        }
        long(&mut body, 0x27, p.maximum_packet_size);
        byte(&mut body, 0x28, p.wildcard_subscription_available);
        byte(&mut body, 0x29, p.subscription_identifier_available);
        byte(&mut body, 0x2A, p.shared_subscription_available);
        put_varint(out, body.len() as u32);
        out.extend_from_slice(&body);
    }
}
