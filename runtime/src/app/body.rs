//! Request bodies to [`Value`]s: JSON through simd-json's tape (which keeps property order and
//! parses in place), MessagePack through storage's decoder, CBOR through ciborium, and
//! `application/x-www-form-urlencoded` as an object of strings.

use simd_json::StaticNode;
use simd_json::tape::Node;
use tessera_protocol::MediaType;
use tessera_storage::Value;
use tessera_storage::cbor::CborError;
use tessera_storage::value::{DecodeError, MAX_DEPTH};

/// Why a body could not be read. All are the client's fault (400 or 415).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("The request body is empty")]
    Empty,
    #[error("Invalid JSON in the request body: {0}")]
    Json(String),
    #[error("Invalid MessagePack in the request body: {0}")]
    MsgPack(#[from] DecodeError),
    #[error("Invalid CBOR in the request body: {0}")]
    Cbor(#[from] CborError),
    #[error("The request body nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Bodies above this size are parsed with fresh buffers, so a core keeps no large ones.
const REUSE_BUFFERS_UP_TO: usize = 1 << 20;

/// Decodes a body of the given `Content-Type` (JSON when absent). `buffers` are simd-json's
/// working buffers, kept per core so that small bodies parse without allocating them.
pub fn decode(
    content_type: Option<&str>,
    body: &mut [u8],
    buffers: &mut simd_json::Buffers,
) -> Result<Value, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BodyError::Empty);
    }
    match content_type.map(|ct| (ct, MediaType::from_content_type(ct))) {
        None | Some((_, Some(MediaType::Json))) if body.len() > REUSE_BUFFERS_UP_TO => {
            json(body, &mut simd_json::Buffers::default())
        }
        None | Some((_, Some(MediaType::Json))) => json(body, buffers),
        Some((_, Some(MediaType::MsgPack))) => Ok(tessera_storage::value::from_msgpack(body)?),
        Some((_, Some(MediaType::Cbor))) => Ok(tessera_storage::cbor::from_cbor(body)?),
        Some((ct, _)) if is_form(ct) => Ok(Value::Object(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect(),
        )),
        // Any other type is stored opaquely (docs/rest.md).
        Some((ct, _)) => Ok(Value::Object(vec![
            (
                "contentType".to_owned(),
                Value::String(ct.trim().to_owned()),
            ),
            ("data".to_owned(), Value::Bytes(body.to_vec())),
        ])),
    }
}

fn is_form(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
}

/// JSON text held as a string (a cell, an argument, a value kept as text) as a value; `None`
/// when it is not JSON.
pub fn json_text(text: &str) -> Option<Value> {
    let mut bytes = text.as_bytes().to_vec();
    json(&mut bytes, &mut simd_json::Buffers::default()).ok()
}

/// Parses JSON in place.
pub fn json(body: &mut [u8], buffers: &mut simd_json::Buffers) -> Result<Value, BodyError> {
    let tape = simd_json::to_tape_with_buffers(body, buffers)
        .map_err(|e| BodyError::Json(e.to_string()))?;
    let mut nodes = tape.0.iter();
    node_value(&mut nodes, 0)
}

fn node_value<'a, 'i: 'a>(
    nodes: &mut std::slice::Iter<'a, Node<'i>>,
    depth: usize,
) -> Result<Value, BodyError> {
    if depth > MAX_DEPTH {
        return Err(BodyError::TooDeep);
    }
    let Some(node) = nodes.next() else {
        return Err(BodyError::Json("unexpected end".into()));
    };
    Ok(match node {
        Node::String(s) => Value::String((*s).to_owned()),
        Node::Static(StaticNode::Null) => Value::Null,
        Node::Static(StaticNode::Bool(b)) => Value::Bool(*b),
        Node::Static(StaticNode::I64(i)) => Value::Int(*i),
        Node::Static(StaticNode::U64(u)) => {
            i64::try_from(*u).map_or(Value::Float(*u as f64), Value::Int)
        }
        Node::Static(StaticNode::F64(f)) => Value::Float(*f),
        Node::Array { len, .. } => {
            let mut items = Vec::with_capacity(*len);
            for _ in 0..*len {
                items.push(node_value(nodes, depth + 1)?);
            }
            Value::Array(items)
        }
        Node::Object { len, .. } => {
            let mut props: Vec<(String, Value)> = Vec::with_capacity(*len);
            for _ in 0..*len {
                let Some(Node::String(k)) = nodes.next() else {
                    return Err(BodyError::Json("object key is not a string".into()));
                };
                let v = node_value(nodes, depth + 1)?;
                // JSON allows duplicate keys; like JavaScript, the last one wins.
                match props.iter_mut().find(|(pk, _)| pk == k) {
                    Some((_, old)) => *old = v,
                    None => props.push(((*k).to_owned(), v)),
                }
            }
            Value::Object(props)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(content_type: Option<&str>, body: &[u8]) -> Result<Value, BodyError> {
        decode(
            content_type,
            &mut body.to_vec(),
            &mut simd_json::Buffers::default(),
        )
    }

    #[test]
    fn json_keeps_order_and_types() {
        let b = br#"{"z":1,"a":[true,null,2.5,"x"],"m":{"k":18446744073709551615},"z":2}"#;
        let v = dec(Some("application/json; charset=utf-8"), b).unwrap();
        assert_eq!(
            v.to_json(),
            r#"{"z":2,"a":[true,null,2.5,"x"],"m":{"k":18446744073709552000}}"#
        );
    }

    #[test]
    fn buffers_are_reused_across_bodies() {
        let mut buffers = simd_json::Buffers::default();
        for body in [
            &br#"{"a":1}"#[..],
            br#"{"bb":[1,2,3],"c":"x"}"#,
            br#"{"a":2}"#,
        ] {
            let v = decode(None, &mut body.to_vec(), &mut buffers).unwrap();
            assert_eq!(v.to_json().as_bytes(), body);
        }
    }

    #[test]
    fn bad_bodies() {
        assert!(matches!(dec(None, b"{\"a\":"), Err(BodyError::Json(_))));
        assert_eq!(dec(None, b"  "), Err(BodyError::Empty));
        assert!(matches!(
            dec(Some("application/x-msgpack"), &[0x81, 0xa1]),
            Err(BodyError::MsgPack(_))
        ));
        assert_eq!(
            dec(Some("text/calendar"), b"x"),
            Ok(Value::Object(vec![
                ("contentType".into(), Value::String("text/calendar".into())),
                ("data".into(), Value::Bytes(b"x".to_vec())),
            ]))
        );
        let mut deep = vec![b'['; 1000];
        deep.extend(vec![b']'; 1000]);
        assert!(dec(None, &deep).is_err());
    }
}
