//! CBOR (RFC 8949) for [`Value`]s, through the ciborium crate: a record is a map, a collection an
//! indefinite-length array (docs/rest.md). Dates are tag 1 (epoch seconds), bytes are byte
//! strings.

use ciborium::value::{Integer, Value as Cbor};

use crate::value::{MAX_DEPTH, Value};

/// Why a CBOR body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("{0}")]
    Syntax(String),
    #[error("map keys must be strings")]
    KeyNotString,
    #[error("unsupported CBOR value: {0}")]
    Unsupported(&'static str),
    #[error("{0} bytes follow the value")]
    Trailing(usize),
}

/// Appends the CBOR encoding of `v` to `out`.
pub fn write(v: &Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = ciborium::into_writer(&to_cbor(v), out);
}

/// The start of an indefinite-length array (items follow, then [`write_array_end`]).
pub fn write_array_start(out: &mut Vec<u8>) {
    out.push(0x9f);
}

/// The end of an indefinite-length array.
pub fn write_array_end(out: &mut Vec<u8>) {
    out.push(0xff);
}

fn to_cbor(v: &Value) -> Cbor {
    match v {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::Int(i) => Cbor::Integer((*i).into()),
        Value::Float(f) => Cbor::Float(*f),
        Value::String(s) => Cbor::Text(s.clone()),
        Value::Bytes(b) => Cbor::Bytes(b.clone()),
        Value::Date(ms) => Cbor::Tag(1, Box::new(Cbor::Float(ms / 1000.0))),
        Value::Array(items) => Cbor::Array(items.iter().map(to_cbor).collect()),
        Value::Object(props) => Cbor::Map(
            props
                .iter()
                .map(|(k, v)| (Cbor::Text(k.clone()), to_cbor(v)))
                .collect(),
        ),
    }
}

/// Decodes exactly one CBOR value (nothing may follow it).
pub fn from_cbor(bytes: &[u8]) -> Result<Value, CborError> {
    let mut reader = bytes;
    let v: Cbor = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
        .map_err(|e| CborError::Syntax(e.to_string()))?;
    if !reader.is_empty() {
        return Err(CborError::Trailing(reader.len()));
    }
    from_value(v)
}

fn from_value(v: Cbor) -> Result<Value, CborError> {
    Ok(match v {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => integer(i),
        Cbor::Float(f) => Value::Float(f),
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(b) => Value::Bytes(b),
        Cbor::Array(items) => Value::Array(
            items
                .into_iter()
                .map(from_value)
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(k, v)| match k {
                    Cbor::Text(k) => Ok((k, from_value(v)?)),
                    _ => Err(CborError::KeyNotString),
                })
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Tag(0, inner) => match *inner {
            Cbor::Text(s) => crate::value::parse_date(&s)
                .map(Value::Date)
                .unwrap_or(Value::String(s)),
            other => from_value(other)?,
        },
        Cbor::Tag(1, inner) => match *inner {
            Cbor::Integer(i) => Value::Date(i128::from(i) as f64 * 1000.0),
            Cbor::Float(f) => Value::Date(f * 1000.0),
            other => from_value(other)?,
        },
        Cbor::Tag(_, inner) => from_value(*inner)?,
        _ => return Err(CborError::Unsupported("simple value")),
    })
}

fn integer(i: Integer) -> Value {
    let wide = i128::from(i);
    match i64::try_from(wide) {
        Ok(n) => Value::Int(n),
        Err(_) => Value::Float(wide as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Value::Object(vec![
            ("id".into(), Value::Int(-7)),
            ("name".into(), Value::String("x".into())),
            ("price".into(), Value::Float(1.5)),
            (
                "tags".into(),
                Value::Array(vec![Value::Null, Value::Bool(true)]),
            ),
            ("at".into(), Value::Date(1_700_000_000_123.0)),
            ("raw".into(), Value::Bytes(vec![0, 1, 255])),
        ]);
        let mut out = Vec::new();
        write(&v, &mut out);
        assert_eq!(from_cbor(&out).unwrap(), v);
        assert!(from_cbor(&out[..out.len() - 1]).is_err());
        out.push(0);
        assert!(matches!(from_cbor(&out), Err(CborError::Trailing(1))));
        // Deeply nested input is refused, not a stack overflow.
        let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 100_000).chain([0x00]).collect();
        assert!(from_cbor(&deep).is_err());
        assert!(matches!(
            from_cbor(&[0xa1, 0x01, 0x02]),
            Err(CborError::KeyNotString)
        ));
    }
}
