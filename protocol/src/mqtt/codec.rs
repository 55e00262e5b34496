//! The primitive encodings of MQTT (both versions): big-endian integers, variable byte
//! integers, length-prefixed UTF-8 strings and binary data.

use super::Error;

/// Largest value a variable byte integer can hold (268,435,455).
pub const VARINT_MAX: u32 = 268_435_455;

/// Reads the fields of one packet body; every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        let b = *self.buf.get(self.pos).ok_or(Error::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or(Error::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Error::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    pub fn varint(&mut self) -> Result<u32, Error> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Error::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    pub fn binary(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 (MQTT 1.5.4).
    pub fn string(&mut self) -> Result<String, Error> {
        let b = self.binary()?;
        let s = std::str::from_utf8(b).map_err(|_| Error::Malformed("invalid UTF-8 string"))?;
        if s.contains('\0') {
            return Err(Error::Malformed("U+0000 in a UTF-8 string"));
        }
        Ok(s.to_owned())
    }
}

pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a variable byte integer (values above [`VARINT_MAX`] are clamped to it).
pub fn put_varint(out: &mut Vec<u8>, v: u32) {
    let mut v = v.min(VARINT_MAX);
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return;
        }
    }
}

/// The length of `v` as a variable byte integer.
pub fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_binary(out: &mut Vec<u8>, b: &[u8]) {
    // Callers keep fields under 65,535 bytes; longer ones are cut rather than mis-framed.
    let n = b.len().min(usize::from(u16::MAX));
    put_u16(out, n as u16);
    out.extend_from_slice(&b[..n]);
}

pub fn put_string(out: &mut Vec<u8>, s: &str) {
    put_binary(out, s.as_bytes());
}
