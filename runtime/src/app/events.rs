//! Harper's event envelope for WebSocket and SSE (docs/realtime.md):
//! `{"id","type":"put"|"delete"|"message","value","version","localTime"}`.

use std::borrow::Cow;

use tessera_storage::record::{self, RecordRef};
use tessera_storage::shard::{Change, Event, now_micros};
use tessera_storage::value::msgpack_to_json;
use tessera_storage::{Table, Value, key};

use super::permissions::User;
use super::records::readable_value;

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

/// What a subscriber acting for `user` may see of `change` to `table`: the change as it is when
/// the role may read the whole record, the change with the record cut down to the attributes it
/// may read, or `None` when it may not read the table (any more). The one place every
/// subscription (SSE, WebSocket, MQTT) asks.
/// What a user's role lets it see of a table's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Nothing (it may not read the table).
    Nothing,
    /// Every attribute: a change goes as it is.
    Whole,
    /// Some attributes: each change is cut to them ([`as_seen_by`]).
    Limited,
}

/// What `user`'s role lets it see of `table`'s changes.
pub fn view_of(table: &Table, user: &User) -> View {
    match user.permission.table(&table.database, &table.name) {
        Some(perm) if perm.read && perm.attributes.is_empty() => View::Whole,
        Some(perm) if perm.read => View::Limited,
        _ => View::Nothing,
    }
}

pub fn as_seen_by<'c>(change: &'c Change, table: &Table, user: &User) -> Option<Cow<'c, Change>> {
    let perm = user.permission.table(&table.database, &table.name)?;
    if !perm.read {
        return None;
    }
    if perm.attributes.is_empty() {
        return Some(Cow::Borrowed(change));
    }
    let Event::Put(stored) = &change.event else {
        return Some(Cow::Borrowed(change));
    };
    let rec = RecordRef::parse(stored)?;
    let visible = readable_value(table, perm, rec.body).ok()?;
    Some(Cow::Owned(Change {
        event: Event::Put(record::encode_value(rec.version, rec.expires_at, &visible)),
        ..change.clone()
    }))
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
