//! Harper's event envelope for WebSocket and SSE (docs/realtime.md):
//! `{"id","type":"put"|"delete"|"message","value","version","localTime"}`.

use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Event, now_micros};
use tessera_storage::value::msgpack_to_json;
use tessera_storage::{Value, key};

/// The envelope of a change as JSON text. `version` is the change's (or, for a current record,
/// the record's) last-modified time in ms.
pub fn envelope_json(change: &Change) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"id\":");
    let (id, _) = key::decode(change.key.get(4..)?).ok()?;
    id.write_json(&mut out);
    let version = match &change.event {
        Event::Put(stored) => {
            let rec = RecordRef::parse(stored)?;
            out.extend_from_slice(b",\"type\":\"put\",\"value\":");
            msgpack_to_json(rec.body, &mut out).ok()?;
            rec.version
        }
        Event::Delete => {
            out.extend_from_slice(b",\"type\":\"delete\"");
            change.version
        }
        Event::Message { payload, .. } => {
            out.extend_from_slice(b",\"type\":\"message\",\"value\":");
            message_value(payload).write_json(&mut out);
            change.version
        }
    };
    out.extend_from_slice(b",\"version\":");
    Value::Float(version as f64 / 1000.0).write_json(&mut out);
    out.extend_from_slice(b",\"localTime\":");
    Value::Float(now_micros() as f64 / 1000.0).write_json(&mut out);
    out.push(b'}');
    Some(out)
}

/// A published payload as an envelope value: its JSON when it is JSON, else the text (or bytes).
fn message_value(payload: &[u8]) -> Value {
    let mut copy = payload.to_vec();
    if let Ok(v) = super::body::json(&mut copy, &mut simd_json::Buffers::default()) {
        return v;
    }
    match std::str::from_utf8(payload) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => Value::Bytes(payload.to_vec()),
    }
}
