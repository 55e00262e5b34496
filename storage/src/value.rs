//! The value model of a record and its two encodings: MessagePack (the storage format and a wire
//! format) and JSON (written only; JSON input is parsed by the runtime with simd-json).
//!
//! Objects keep their property order, as JavaScript objects do for string keys. Numbers are either
//! integers or doubles; JSON output prints them the way JavaScript does (`199`, not `199.0`).
//! Dates are epoch milliseconds, stored as the MessagePack timestamp extension and written to JSON
//! as ISO-8601 strings. Bytes are MessagePack `bin`, and JSON shows them the way Node shows a
//! `Buffer` (`{"type":"Buffer","data":[...]}`).

use std::fmt;

/// Deepest nesting accepted from outside; deeper input is refused rather than risking the stack.
pub const MAX_DEPTH: usize = 128;

/// One value of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Bytes(Vec<u8>),
    /// Epoch milliseconds (fractional allowed).
    Date(f64),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl Value {
    /// The property `name` of an object, if this is one and it has it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(props) => props.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Sets (or replaces, in place) the property `name` of an object. No-op on non-objects.
    pub fn set(&mut self, name: &str, value: Value) {
        if let Value::Object(props) = self {
            match props.iter_mut().find(|(k, _)| k == name) {
                Some((_, v)) => *v = value,
                None => props.push((name.to_owned(), value)),
            }
        }
    }

    /// The number as a double, for integers and floats.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// Sets each of `props` on an object as [`Self::set`] does, moving the names in rather than
    /// copying them. No-op on non-objects.
    pub fn merge(&mut self, props: Vec<(String, Value)>) {
        if let Value::Object(own) = self {
            own.reserve(props.len());
            for (k, v) in props {
                match own.iter_mut().find(|(name, _)| *name == k) {
                    Some((_, old)) => *old = v,
                    None => own.push((k, v)),
                }
            }
        }
    }

    /// A short name of the kind of value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Date(_) => "date",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Encodes as MessagePack, appending to `out`.
    pub fn write_msgpack(&self, out: &mut Vec<u8>) {
        msgpack::write_value(self, out);
    }

    /// Encodes an object's properties as a MessagePack map, appending to `out`.
    pub fn write_msgpack_map(props: &[(String, Value)], out: &mut Vec<u8>) {
        msgpack::write_map(props, out);
    }

    /// Encodes as MessagePack into a new buffer.
    pub fn to_msgpack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_msgpack(&mut out);
        out
    }

    /// Encodes as JSON, appending to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Int(i) => json::write_int(*i, out),
            Value::Float(f) => json::write_float(*f, out),
            Value::String(s) => json::write_str(s, out),
            Value::Bytes(b) => json::write_buffer(b, out),
            Value::Date(ms) => json::write_date(*ms, out),
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write_json(out);
                }
                out.push(b']');
            }
            Value::Object(props) => {
                out.push(b'{');
                for (i, (k, v)) in props.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json::write_str(k, out);
                    out.push(b':');
                    v.write_json(out);
                }
                out.push(b'}');
            }
        }
    }

    /// Encodes as JSON into a new string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(64);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// Why MessagePack bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("MessagePack ends early at byte {0}")]
    Truncated(usize),
    #[error("MessagePack marker 0x{marker:02x} at byte {at} is not supported")]
    Unsupported { marker: u8, at: usize },
    #[error("MessagePack map key at byte {0} is not a string")]
    NonStringKey(usize),
    #[error("MessagePack string at byte {0} is not UTF-8")]
    BadUtf8(usize),
    #[error("MessagePack nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("{0} bytes follow the MessagePack value")]
    Trailing(usize),
}

/// `current + delta` for `addTo`: integers stay integers while the sum fits, otherwise a float;
/// a missing or non-numeric `current` counts as 0.
pub fn add_numbers(current: Option<&Value>, delta: &Value) -> Value {
    match (current, delta) {
        (Some(Value::Int(a)), Value::Int(b)) => match a.checked_add(*b) {
            Some(sum) => Value::Int(sum),
            None => Value::Float(*a as f64 + *b as f64),
        },
        (None | Some(_), Value::Int(b)) if current.and_then(Value::as_f64).is_none() => {
            Value::Int(*b)
        }
        _ => Value::Float(
            current.and_then(Value::as_f64).unwrap_or(0.0) + delta.as_f64().unwrap_or(0.0),
        ),
    }
}

/// Decodes exactly one MessagePack value from `bytes` (nothing may follow it).
pub fn from_msgpack(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut r = msgpack::Reader::new(bytes);
    let v = r.value(0)?;
    if r.pos != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - r.pos));
    }
    Ok(v)
}

/// Decodes only the named top-level properties of a MessagePack map, skipping the others
/// without allocating. Returns one entry per name (`None` when the map lacks it).
pub fn extract_fields<S: AsRef<str>>(
    bytes: &[u8],
    names: &[S],
) -> Result<Vec<Option<Value>>, DecodeError> {
    let mut out = vec![None; names.len()];
    let mut r = msgpack::Reader::new(bytes);
    let n = r.map_len()?;
    for _ in 0..n {
        let key = r.key()?;
        match names.iter().position(|w| w.as_ref() == key) {
            Some(i) => out[i] = Some(r.value(1)?),
            None => r.skip(1)?,
        }
    }
    Ok(out)
}

/// Transcodes one MessagePack value straight to JSON (no intermediate tree), appending to `out`.
/// Used to answer JSON requests from stored records without building a [`Value`].
pub fn msgpack_to_json(bytes: &[u8], out: &mut Vec<u8>) -> Result<usize, DecodeError> {
    let mut r = msgpack::Reader::new(bytes);
    r.transcode_json(out, 0)?;
    Ok(r.pos)
}

mod msgpack {
    use super::{DecodeError, MAX_DEPTH, Value, json};

    /// Found by fuzzing (`storage/fuzz`, target `msgpack`): a map keyed by an unsigned 64-bit
    /// integer decoded (as the key's text) but did not transcode to JSON.
    #[test]
    fn integer_keys_decode_and_transcode_alike() {
        let body = [
            0x81, 0xcf, 0x27, 0x28, 0xfc, 0x00, 0xff, 0x1a, 0x00, 0x00, 0x00,
        ];
        let v = super::from_msgpack(&body).unwrap();
        let mut text = Vec::new();
        super::msgpack_to_json(&body, &mut text).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), v.to_json());
    }

    pub(super) fn write_value(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Null => out.push(0xc0),
            Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Value::Int(i) => write_int(*i, out),
            Value::Float(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Value::String(s) => write_str(s, out),
            Value::Bytes(b) => {
                let n = b.len();
                if n < 256 {
                    out.extend_from_slice(&[0xc4, n as u8]);
                } else if n < 65536 {
                    out.push(0xc5);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                } else {
                    out.push(0xc6);
                    out.extend_from_slice(&(n as u32).to_be_bytes());
                }
                out.extend_from_slice(b);
            }
            Value::Date(ms) => {
                // Timestamp 96: nanoseconds (u32) then seconds (i64), extension type -1.
                let secs = (ms / 1000.0).floor();
                let nanos = ((ms - secs * 1000.0) * 1_000_000.0)
                    .round()
                    .clamp(0.0, 999_999_999.0);
                out.extend_from_slice(&[0xc7, 12, 0xff]);
                out.extend_from_slice(&(nanos as u32).to_be_bytes());
                out.extend_from_slice(&(secs as i64).to_be_bytes());
            }
            Value::Array(items) => {
                write_len(items.len(), 0x90, 0xdc, out);
                for v in items {
                    write_value(v, out);
                }
            }
            Value::Object(props) => write_map(props, out),
        }
    }

    /// An object's properties as a MessagePack map.
    pub fn write_map(props: &[(String, Value)], out: &mut Vec<u8>) {
        write_len(props.len(), 0x80, 0xde, out);
        for (k, v) in props {
            write_str(k, out);
            write_value(v, out);
        }
    }

    fn write_len(n: usize, fix: u8, wide16: u8, out: &mut Vec<u8>) {
        if n < 16 {
            out.push(fix | n as u8);
        } else if n < 65536 {
            out.push(wide16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(wide16 + 1);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    pub(super) fn write_str(s: &str, out: &mut Vec<u8>) {
        let n = s.len();
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n < 256 {
            out.extend_from_slice(&[0xd9, n as u8]);
        } else if n < 65536 {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }

    fn write_int(i: i64, out: &mut Vec<u8>) {
        if (0..128).contains(&i) {
            out.push(i as u8);
        } else if (-32..0).contains(&i) {
            out.push(i as i8 as u8);
        } else if i >= 0 {
            if i < 256 {
                out.extend_from_slice(&[0xcc, i as u8]);
            } else if i < 65536 {
                out.push(0xcd);
                out.extend_from_slice(&(i as u16).to_be_bytes());
            } else if i < 1 << 32 {
                out.push(0xce);
                out.extend_from_slice(&(i as u32).to_be_bytes());
            } else {
                out.push(0xcf);
                out.extend_from_slice(&(i as u64).to_be_bytes());
            }
        } else if i >= -128 {
            out.extend_from_slice(&[0xd0, i as i8 as u8]);
        } else if i >= -32768 {
            out.push(0xd1);
            out.extend_from_slice(&(i as i16).to_be_bytes());
        } else if i >= -(1 << 31) {
            out.push(0xd2);
            out.extend_from_slice(&(i as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&i.to_be_bytes());
        }
    }

    /// What a marker introduces, with its inline length or payload size resolved.
    enum Item<'a> {
        Nil,
        Bool(bool),
        Int(i64),
        UInt(u64),
        Float(f64),
        Str(&'a str),
        Bin(&'a [u8]),
        Array(usize),
        Map(usize),
        Ext(i8, &'a [u8]),
    }

    pub(super) struct Reader<'a> {
        buf: &'a [u8],
        pub(super) pos: usize,
    }

    impl<'a> Reader<'a> {
        pub(super) fn new(buf: &'a [u8]) -> Self {
            Reader { buf, pos: 0 }
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
            let end = self
                .pos
                .checked_add(n)
                .ok_or(DecodeError::Truncated(self.pos))?;
            let s = self
                .buf
                .get(self.pos..end)
                .ok_or(DecodeError::Truncated(self.buf.len()))?;
            self.pos = end;
            Ok(s)
        }

        fn byte(&mut self) -> Result<u8, DecodeError> {
            Ok(self.take(1)?[0])
        }

        fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
            let mut a = [0u8; N];
            a.copy_from_slice(self.take(N)?);
            Ok(a)
        }

        fn len8(&mut self) -> Result<usize, DecodeError> {
            Ok(self.byte()? as usize)
        }
        fn len16(&mut self) -> Result<usize, DecodeError> {
            Ok(u16::from_be_bytes(self.be()?) as usize)
        }
        fn len32(&mut self) -> Result<usize, DecodeError> {
            Ok(u32::from_be_bytes(self.be()?) as usize)
        }

        fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
            let at = self.pos;
            std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::BadUtf8(at))
        }

        fn item(&mut self) -> Result<Item<'a>, DecodeError> {
            let at = self.pos;
            let m = self.byte()?;
            Ok(match m {
                0x00..=0x7f => Item::Int(m as i64),
                0x80..=0x8f => Item::Map((m & 0x0f) as usize),
                0x90..=0x9f => Item::Array((m & 0x0f) as usize),
                0xa0..=0xbf => Item::Str(self.str((m & 0x1f) as usize)?),
                0xc0 => Item::Nil,
                0xc2 => Item::Bool(false),
                0xc3 => Item::Bool(true),
                0xc4 => {
                    let n = self.len8()?;
                    Item::Bin(self.take(n)?)
                }
                0xc5 => {
                    let n = self.len16()?;
                    Item::Bin(self.take(n)?)
                }
                0xc6 => {
                    let n = self.len32()?;
                    Item::Bin(self.take(n)?)
                }
                0xc7..=0xc9 => {
                    let n = match m {
                        0xc7 => self.len8()?,
                        0xc8 => self.len16()?,
                        _ => self.len32()?,
                    };
                    let t = self.byte()? as i8;
                    Item::Ext(t, self.take(n)?)
                }
                0xca => Item::Float(f32::from_be_bytes(self.be()?) as f64),
                0xcb => Item::Float(f64::from_be_bytes(self.be()?)),
                0xcc => Item::Int(self.byte()? as i64),
                0xcd => Item::Int(u16::from_be_bytes(self.be()?) as i64),
                0xce => Item::Int(u32::from_be_bytes(self.be()?) as i64),
                0xcf => Item::UInt(u64::from_be_bytes(self.be()?)),
                0xd0 => Item::Int(self.byte()? as i8 as i64),
                0xd1 => Item::Int(i16::from_be_bytes(self.be()?) as i64),
                0xd2 => Item::Int(i32::from_be_bytes(self.be()?) as i64),
                0xd3 => Item::Int(i64::from_be_bytes(self.be()?)),
                0xd4..=0xd8 => {
                    let n = 1usize << (m - 0xd4);
                    let t = self.byte()? as i8;
                    Item::Ext(t, self.take(n)?)
                }
                0xd9 => {
                    let n = self.len8()?;
                    Item::Str(self.str(n)?)
                }
                0xda => {
                    let n = self.len16()?;
                    Item::Str(self.str(n)?)
                }
                0xdb => {
                    let n = self.len32()?;
                    Item::Str(self.str(n)?)
                }
                0xdc => Item::Array(self.len16()?),
                0xdd => Item::Array(self.len32()?),
                0xde => Item::Map(self.len16()?),
                0xdf => Item::Map(self.len32()?),
                0xe0..=0xff => Item::Int(m as i8 as i64),
                _ => return Err(DecodeError::Unsupported { marker: m, at }),
            })
        }

        /// Each element needs at least one byte: refuse counts that cannot fit before allocating.
        fn check_count(&self, n: usize, per: usize) -> Result<(), DecodeError> {
            if n.saturating_mul(per) > self.buf.len() - self.pos {
                Err(DecodeError::Truncated(self.buf.len()))
            } else {
                Ok(())
            }
        }

        /// The length of the map that must come next.
        pub(super) fn map_len(&mut self) -> Result<usize, DecodeError> {
            let at = self.pos;
            match self.item()? {
                Item::Map(n) => {
                    self.check_count(n, 2)?;
                    Ok(n)
                }
                _ => Err(DecodeError::Unsupported {
                    marker: self.buf.get(at).copied().unwrap_or(0),
                    at,
                }),
            }
        }

        /// A map key, borrowed.
        pub(super) fn key(&mut self) -> Result<&'a str, DecodeError> {
            let at = self.pos;
            match self.item()? {
                Item::Str(s) => Ok(s),
                _ => Err(DecodeError::NonStringKey(at)),
            }
        }

        /// Steps over one value.
        pub(super) fn skip(&mut self, depth: usize) -> Result<(), DecodeError> {
            if depth > MAX_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            match self.item()? {
                Item::Array(n) => {
                    self.check_count(n, 1)?;
                    for _ in 0..n {
                        self.skip(depth + 1)?;
                    }
                }
                Item::Map(n) => {
                    self.check_count(n, 2)?;
                    for _ in 0..2 * n {
                        self.skip(depth + 1)?;
                    }
                }
                _ => {}
            }
            Ok(())
        }

        pub(super) fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
            if depth > MAX_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            let at = self.pos;
            Ok(match self.item()? {
                Item::Nil => Value::Null,
                Item::Bool(b) => Value::Bool(b),
                Item::Int(i) => Value::Int(i),
                Item::UInt(u) => i64::try_from(u).map_or(Value::Float(u as f64), Value::Int),
                Item::Float(f) => Value::Float(f),
                Item::Str(s) => Value::String(s.to_owned()),
                Item::Bin(b) => Value::Bytes(b.to_vec()),
                Item::Array(n) => {
                    self.check_count(n, 1)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Value::Array(items)
                }
                Item::Map(n) => {
                    self.check_count(n, 2)?;
                    let mut props = Vec::with_capacity(n);
                    for _ in 0..n {
                        let kat = self.pos;
                        let key = match self.item()? {
                            Item::Str(s) => s.to_owned(),
                            Item::Int(i) => i.to_string(),
                            Item::UInt(u) => u.to_string(),
                            _ => return Err(DecodeError::NonStringKey(kat)),
                        };
                        props.push((key, self.value(depth + 1)?));
                    }
                    Value::Object(props)
                }
                Item::Ext(-1, data) => Value::Date(
                    timestamp_ms(data).ok_or(DecodeError::Unsupported { marker: 0xc7, at })?,
                ),
                Item::Ext(_, _) => {
                    return Err(DecodeError::Unsupported {
                        marker: self.buf.get(at).copied().unwrap_or(0),
                        at,
                    });
                }
            })
        }

        pub(super) fn transcode_json(
            &mut self,
            out: &mut Vec<u8>,
            depth: usize,
        ) -> Result<(), DecodeError> {
            if depth > MAX_DEPTH {
                return Err(DecodeError::TooDeep);
            }
            let at = self.pos;
            match self.item()? {
                Item::Nil => out.extend_from_slice(b"null"),
                Item::Bool(true) => out.extend_from_slice(b"true"),
                Item::Bool(false) => out.extend_from_slice(b"false"),
                Item::Int(i) => json::write_int(i, out),
                Item::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes()),
                Item::Float(f) => json::write_float(f, out),
                Item::Str(s) => json::write_str(s, out),
                Item::Bin(b) => json::write_buffer(b, out),
                Item::Array(n) => {
                    self.check_count(n, 1)?;
                    out.push(b'[');
                    for i in 0..n {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.transcode_json(out, depth + 1)?;
                    }
                    out.push(b']');
                }
                Item::Map(n) => {
                    self.check_count(n, 2)?;
                    out.push(b'{');
                    for i in 0..n {
                        if i > 0 {
                            out.push(b',');
                        }
                        let kat = self.pos;
                        match self.item()? {
                            Item::Str(s) => json::write_str(s, out),
                            Item::Int(k) => json::write_str(itoa::Buffer::new().format(k), out),
                            Item::UInt(k) => json::write_str(itoa::Buffer::new().format(k), out),
                            _ => return Err(DecodeError::NonStringKey(kat)),
                        }
                        out.push(b':');
                        self.transcode_json(out, depth + 1)?;
                    }
                    out.push(b'}');
                }
                Item::Ext(-1, data) => json::write_date(
                    timestamp_ms(data).ok_or(DecodeError::Unsupported { marker: 0xc7, at })?,
                    out,
                ),
                Item::Ext(_, _) => {
                    return Err(DecodeError::Unsupported {
                        marker: self.buf.get(at).copied().unwrap_or(0),
                        at,
                    });
                }
            }
            Ok(())
        }
    }

    /// Milliseconds of a MessagePack timestamp extension (32, 64 or 96 bit form).
    fn timestamp_ms(data: &[u8]) -> Option<f64> {
        match data.len() {
            4 => Some(u32::from_be_bytes(data.try_into().ok()?) as f64 * 1000.0),
            8 => {
                let v = u64::from_be_bytes(data.try_into().ok()?);
                let nanos = (v >> 34) as f64;
                let secs = (v & 0x3_ffff_ffff) as f64;
                Some(secs * 1000.0 + nanos / 1_000_000.0)
            }
            12 => {
                let nanos = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as f64;
                let secs = i64::from_be_bytes(data.get(4..)?.try_into().ok()?) as f64;
                Some(secs * 1000.0 + nanos / 1_000_000.0)
            }
            _ => None,
        }
    }
}

/// JSON output helpers shared by [`Value::write_json`] and [`msgpack_to_json`].
pub mod json {
    const HEX: &[u8; 16] = b"0123456789abcdef";

    /// Writes `s` as a JSON string with the escapes JSON requires.
    pub fn write_str(s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x00..=0x1f => b"",
                _ => continue,
            };
            out.extend_from_slice(&bytes[start..i]);
            if esc.is_empty() {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            } else {
                out.extend_from_slice(esc);
            }
            start = i + 1;
        }
        out.extend_from_slice(&bytes[start..]);
        out.push(b'"');
    }

    pub fn write_int(i: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
    }

    /// Writes a double the way JavaScript's `JSON.stringify` does: integral values without a
    /// fraction, `null` for NaN and infinities, `e+` exponents.
    pub fn write_float(f: f64, out: &mut Vec<u8>) {
        if !f.is_finite() {
            out.extend_from_slice(b"null");
        } else if f.fract() == 0.0 && f.abs() < 1e21 {
            if f.abs() < 9.2e18 {
                write_int(f as i64, out);
            } else {
                // Shortest round-trip digits, padded with zeros (JavaScript's Number#toString).
                let mut b = ryu::Buffer::new();
                let sci = b.format_finite(f);
                let (mantissa, exp) = sci.split_once('e').unwrap_or((sci, "0"));
                let exp: usize = exp.parse().unwrap_or(0);
                if mantissa.starts_with('-') {
                    out.push(b'-');
                }
                let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
                out.extend_from_slice(&digits);
                out.extend(std::iter::repeat_n(
                    b'0',
                    (exp + 1).saturating_sub(digits.len()),
                ));
            }
        } else {
            let mut b = ryu::Buffer::new();
            let s = b.format_finite(f);
            match s.find('e') {
                Some(e) if !s[e + 1..].starts_with('-') => {
                    out.extend_from_slice(&s.as_bytes()[..=e]);
                    out.push(b'+');
                    out.extend_from_slice(&s.as_bytes()[e + 1..]);
                }
                _ => out.extend_from_slice(s.as_bytes()),
            }
        }
    }

    /// Writes bytes as Node's `Buffer.toJSON()` shape.
    pub fn write_buffer(b: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"type":"Buffer","data":["#);
        for (i, x) in b.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(itoa::Buffer::new().format(*x).as_bytes());
        }
        out.extend_from_slice(b"]}");
    }

    /// Writes epoch milliseconds as a quoted ISO-8601 string (`Date.prototype.toJSON`).
    pub fn write_date(ms: f64, out: &mut Vec<u8>) {
        out.push(b'"');
        out.extend_from_slice(super::format_date(ms).as_bytes());
        out.push(b'"');
    }
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_date(ms: f64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms.floor() as i64) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => "Invalid Date".to_owned(),
    }
}

/// Parses the date strings JavaScript's `Date` parses in practice: RFC 3339 / ISO-8601 with or
/// without offset and fraction, a bare date, and a date with a space before the time.
pub fn parse_date(s: &str) -> Option<f64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros() as f64 / 1000.0);
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_micros() as f64 / 1000.0);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis() as f64);
    }
    if let Ok(t) = DateTime::parse_from_rfc2822(s) {
        return Some(t.timestamp_millis() as f64);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        Value::Object(vec![
            ("id".into(), Value::Int(42)),
            ("name".into(), Value::String("Rex \"the\" dog\n".into())),
            ("weight".into(), Value::Float(12.5)),
            ("price".into(), Value::Float(199.0)),
            (
                "tags".into(),
                Value::Array(vec![Value::Null, Value::Bool(true), Value::Int(-7)]),
            ),
            ("big".into(), Value::Int(1 << 40)),
            ("neg".into(), Value::Int(-40000)),
            ("bin".into(), Value::Bytes(vec![1, 2, 3])),
            ("when".into(), Value::Date(1_704_485_247_955.0)),
        ])
    }

    #[test]
    fn msgpack_round_trip() {
        let v = sample();
        assert_eq!(from_msgpack(&v.to_msgpack()).unwrap(), v);
    }

    #[test]
    fn json_matches_javascript() {
        assert_eq!(
            sample().to_json(),
            r#"{"id":42,"name":"Rex \"the\" dog\n","weight":12.5,"price":199,"tags":[null,true,-7],"big":1099511627776,"neg":-40000,"bin":{"type":"Buffer","data":[1,2,3]},"when":"2024-01-05T20:07:27.955Z"}"#
        );
        let mut out = Vec::new();
        msgpack_to_json(&sample().to_msgpack(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), sample().to_json());
    }

    #[test]
    fn floats_print_like_javascript() {
        let s = |f: f64| {
            let mut o = Vec::new();
            json::write_float(f, &mut o);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(s(1e21), "1e+21");
        assert_eq!(s(1.5e-7), "1.5e-7");
        assert_eq!(s(-0.25), "-0.25");
        assert_eq!(s(1795239121429.9038), "1795239121429.9038");
        assert_eq!(s(18446744073709551615.0), "18446744073709552000");
        assert_eq!(s(-1e20), "-100000000000000000000");
    }

    #[test]
    fn extracts_named_fields() {
        let got = extract_fields(&sample().to_msgpack(), &["when", "nope", "tags"]).unwrap();
        assert_eq!(got[0], Some(Value::Date(1_704_485_247_955.0)));
        assert_eq!(got[1], None);
        assert_eq!(got[2], sample().get("tags").cloned());
    }

    #[test]
    fn hostile_msgpack_is_refused() {
        assert!(from_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(from_msgpack(&[0x91; 1000]).is_err());
        assert!(from_msgpack(&[0xc1]).is_err());
        assert!(from_msgpack(&[0x81, 0xc0, 0xc0]).is_err());
        assert!(from_msgpack(&[0xc0, 0xc0]).is_err());
    }

    #[test]
    fn dates_parse() {
        assert_eq!(
            parse_date("2024-01-05T20:07:27.955Z"),
            Some(1_704_485_247_955.0)
        );
        assert_eq!(parse_date("2024-01-05"), Some(1_704_412_800_000.0));
        assert_eq!(parse_date("yesterday"), None);
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = from_msgpack(&bytes);
            let mut out = Vec::new();
            let _ = msgpack_to_json(&bytes, &mut out);
        }
    }
}
