//! The stored form of a record: a fixed 17-byte header, then the record as one MessagePack map.
//!
//! ```text
//! [0] format (1)  [1..9] version, µs since the epoch, big-endian  [9..17] expires at, ms (0 = never)
//! [17..] MessagePack map
//! ```
//!
//! The body after the header is exactly what a MessagePack client receives, without re-encoding.

/// Header length in bytes.
pub const HEADER_LEN: usize = 17;
const FORMAT: u8 = 1;

/// A stored record, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Last write, µs since the epoch; unique and increasing per key.
    pub version: u64,
    /// Epoch milliseconds after which the record is gone, if the table expires records.
    pub expires_at: Option<u64>,
    /// The record as a MessagePack map.
    pub body: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Splits stored bytes; `None` if they are not a record of this format.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (head, body) = bytes.split_at_checked(HEADER_LEN)?;
        if head[0] != FORMAT {
            return None;
        }
        let version = u64::from_be_bytes(head[1..9].try_into().ok()?);
        let expires = u64::from_be_bytes(head[9..17].try_into().ok()?);
        Some(RecordRef {
            version,
            expires_at: (expires != 0).then_some(expires),
            body,
        })
    }

    /// Whether the record has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|e| e <= now_ms)
    }

    /// The record's version as epoch milliseconds, Harper's `version` and `@updatedTime` value.
    pub fn version_ms(&self) -> f64 {
        self.version as f64 / 1000.0
    }
}

/// Builds stored bytes from a version, an expiry and a record, encoding the record in place
/// after the header.
pub fn encode_value(version: u64, expires_at: Option<u64>, record: &crate::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 128);
    out.push(FORMAT);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
    record.write_msgpack(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = encode_value(
            1_700_000_000_123_456,
            Some(99),
            &crate::Value::Object(vec![]),
        );
        let r = RecordRef::parse(&b).unwrap();
        assert_eq!(r.version, 1_700_000_000_123_456);
        assert_eq!(r.expires_at, Some(99));
        assert_eq!(r.body, &[0x80]);
        assert!(r.is_expired(100));
        assert!(RecordRef::parse(&[1, 2]).is_none());
    }
}
