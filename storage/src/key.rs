//! Order-preserving, type-tagged, self-delimiting key encoding.
//!
//! Byte order of encoded keys is Harper's value order: `null < false < true < numbers < dates <
//! strings`, numbers compared numerically whether they came in as integers or doubles. Every
//! encoding is self-delimiting, so an index key (`value ++ primary key`) can be split again and a
//! string's encoding without its terminator is a byte prefix of every longer string it prefixes.

use crate::value::Value;

const NULL: u8 = 0x01;
const FALSE: u8 = 0x02;
const TRUE: u8 = 0x03;
const NUMBER: u8 = 0x20;
const DATE: u8 = 0x28;
const STRING: u8 = 0x30;
/// An array (a composite key): its elements' encodings, then [`ARRAY_END`], which sorts below
/// any element's tag, so a shorter array sorts before a longer one it prefixes.
const ARRAY: u8 = 0x40;
const ARRAY_END: u8 = 0x00;
/// Strings escape 0x00 as 0x00 0xff and end with 0x00 0x01, which sorts below any content byte.
const STRING_END: [u8; 2] = [0x00, 0x01];

/// Why a value cannot be a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a {0} cannot be used as a key")]
    Unsupported(&'static str),
    #[error("NaN cannot be used as a key")]
    NaN,
    #[error("malformed key bytes")]
    Malformed,
}

/// Appends the encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) -> Result<(), KeyError> {
    match v {
        Value::Null => out.push(NULL),
        Value::Bool(false) => out.push(FALSE),
        Value::Bool(true) => out.push(TRUE),
        Value::Int(i) => encode_f64(NUMBER, *i as f64, out)?,
        Value::Float(f) => encode_f64(NUMBER, *f, out)?,
        Value::Date(ms) => encode_f64(DATE, *ms, out)?,
        Value::String(s) => {
            encode_str_open(s, out);
            out.extend_from_slice(&STRING_END);
        }
        Value::Array(items) => {
            out.push(ARRAY);
            for item in items {
                encode(item, out)?;
            }
            out.push(ARRAY_END);
        }
        other => return Err(KeyError::Unsupported(other.kind())),
    }
    Ok(())
}

/// The encoding of `v` as a new buffer.
pub fn to_key(v: &Value) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(16);
    encode(v, &mut out)?;
    Ok(out)
}

/// A string's encoding without its terminator: the byte prefix shared by the encodings of every
/// string that starts with `s`.
pub fn encode_str_open(s: &str, out: &mut Vec<u8>) {
    out.push(STRING);
    for &b in s.as_bytes() {
        if b == 0 {
            out.extend_from_slice(&[0x00, 0xff]);
        } else {
            out.push(b);
        }
    }
}

fn encode_f64(tag: u8, f: f64, out: &mut Vec<u8>) -> Result<(), KeyError> {
    if f.is_nan() {
        return Err(KeyError::NaN);
    }
    let f = if f == 0.0 { 0.0 } else { f };
    let bits = f.to_bits();
    let ordered = if bits >> 63 == 0 {
        bits | (1 << 63)
    } else {
        !bits
    };
    out.push(tag);
    out.extend_from_slice(&ordered.to_be_bytes());
    Ok(())
}

/// Decodes one key from the front of `bytes`, returning it and the bytes used.
pub fn decode(bytes: &[u8]) -> Result<(Value, usize), KeyError> {
    let (&tag, rest) = bytes.split_first().ok_or(KeyError::Malformed)?;
    match tag {
        NULL => Ok((Value::Null, 1)),
        FALSE => Ok((Value::Bool(false), 1)),
        TRUE => Ok((Value::Bool(true), 1)),
        NUMBER | DATE => {
            let raw: [u8; 8] = rest
                .get(..8)
                .ok_or(KeyError::Malformed)?
                .try_into()
                .map_err(|_| KeyError::Malformed)?;
            let ordered = u64::from_be_bytes(raw);
            let bits = if ordered >> 63 == 1 {
                ordered & !(1 << 63)
            } else {
                !ordered
            };
            let f = f64::from_bits(bits);
            let v = if tag == DATE {
                Value::Date(f)
            } else if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                Value::Int(f as i64)
            } else {
                Value::Float(f)
            };
            Ok((v, 9))
        }
        STRING => {
            let mut s = Vec::new();
            let mut i = 0;
            loop {
                match rest.get(i) {
                    None => return Err(KeyError::Malformed),
                    Some(0) => match rest.get(i + 1) {
                        Some(0x01) => break,
                        Some(0xff) => {
                            s.push(0);
                            i += 2;
                        }
                        _ => return Err(KeyError::Malformed),
                    },
                    Some(&b) => {
                        s.push(b);
                        i += 1;
                    }
                }
            }
            let s = String::from_utf8(s).map_err(|_| KeyError::Malformed)?;
            Ok((Value::String(s), 1 + i + 2))
        }
        ARRAY => {
            let mut items = Vec::new();
            let mut used = 1;
            loop {
                match bytes.get(used) {
                    None => return Err(KeyError::Malformed),
                    Some(&ARRAY_END) => return Ok((Value::Array(items), used + 1)),
                    Some(_) => {
                        let (v, n) = decode(&bytes[used..])?;
                        items.push(v);
                        used += n;
                    }
                }
            }
        }
        _ => Err(KeyError::Malformed),
    }
}

/// The key range `[lo, hi)` of all numbers (integers and floats), used to find the largest
/// numeric primary key for auto-increment.
pub fn number_range() -> ([u8; 1], [u8; 1]) {
    ([NUMBER], [NUMBER + 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_across_types() {
        let vals = [
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Float(-1e9),
            Value::Int(-3),
            Value::Float(-0.5),
            Value::Int(0),
            Value::Float(0.5),
            Value::Int(2),
            Value::Float(2.5),
            Value::Int(10),
            Value::String(String::new()),
            Value::String("a".into()),
            Value::String("a\0b".into()),
            Value::String("ab".into()),
            Value::String("b".into()),
        ];
        let keys: Vec<_> = vals.iter().map(|v| to_key(v).unwrap()).collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        for (v, k) in vals.iter().zip(&keys) {
            let (d, n) = decode(k).unwrap();
            assert_eq!(n, k.len());
            assert_eq!(d.as_f64().or(None), v.as_f64().or(None));
        }
    }

    #[test]
    fn arrays_sort_as_tuples_and_decode_whole() {
        let s = |x: &str| Value::String(x.into());
        let vals = [
            Value::Array(vec![]),
            Value::Array(vec![s("a")]),
            Value::Array(vec![s("a"), Value::Int(1)]),
            Value::Array(vec![s("a"), Value::Int(2)]),
            Value::Array(vec![s("a"), s("z")]),
            Value::Array(vec![s("b")]),
        ];
        let keys: Vec<_> = vals.iter().map(|v| to_key(v).unwrap()).collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
        for (v, k) in vals.iter().zip(&keys) {
            assert_eq!(decode(k).unwrap(), (v.clone(), k.len()));
        }
        // An array after a string sorts above every scalar.
        assert!(to_key(&s("zzz")).unwrap() < keys[0]);
        assert!(decode(&[ARRAY, NULL]).is_err());
    }

    #[test]
    fn prefix_of_string_is_byte_prefix() {
        let mut p = Vec::new();
        encode_str_open("grp/", &mut p);
        assert!(
            to_key(&Value::String("grp/one".into()))
                .unwrap()
                .starts_with(&p)
        );
        assert!(
            !to_key(&Value::String("grpx".into()))
                .unwrap()
                .starts_with(&p)
        );
    }

    proptest! {
        #[test]
        fn numbers_sort_numerically(a in -1e15f64..1e15, b in -1e15f64..1e15) {
            let (ka, kb) = (to_key(&Value::Float(a)).unwrap(), to_key(&Value::Float(b)).unwrap());
            prop_assert_eq!(a.partial_cmp(&b).unwrap(), ka.cmp(&kb));
        }

        #[test]
        fn strings_sort_bytewise_and_round_trip(a in ".{0,12}", b in ".{0,12}") {
            let (ka, kb) = (to_key(&Value::String(a.clone())).unwrap(), to_key(&Value::String(b.clone())).unwrap());
            prop_assert_eq!(a.as_bytes().cmp(b.as_bytes()), ka.cmp(&kb));
            let mut joined = ka.clone();
            joined.extend_from_slice(&kb);
            let (da, n) = decode(&joined).unwrap();
            prop_assert_eq!(da, Value::String(a));
            prop_assert_eq!(decode(&joined[n..]).unwrap().0, Value::String(b));
        }
    }
}
