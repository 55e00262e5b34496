//! One record as a REST resource: `GET`, `PUT`, `PATCH`, `DELETE` `/<Table>/<id>`, and `POST
//! /<Table>/` (a new record with a new key).

use std::collections::HashMap;
use std::sync::Arc;

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tessera_protocol::MediaType;
use tessera_protocol::http::Request;
use tessera_protocol::query::{Field, Select};
use tessera_storage::shard::{WriteKind, WriteOp, now_micros, record_key};
use tessera_storage::validate::WriteMode;
use tessera_storage::{Table, Value, value};

use super::{Rest, send_true};
use crate::app::AppError;
use crate::app::keys::{id_text, id_value};
use crate::app::output::{self, encode_value};
use crate::app::permissions::{Action, TablePermission, User};
use crate::app::records::{check_writable, decode_record, readable_only};
use crate::data::cache::{self, CacheStatus};
use crate::data::{query, related};
use crate::net::reply::Reply;

/// Characters escaped in a `Location` header (controls, so a stored id cannot split the head).
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ');

/// The quoted ETag of a record version.
fn etag(version: u64) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [b'"'; 18];
    for (i, slot) in t[1..17].iter_mut().enumerate() {
        *slot = HEX[((version >> (60 - 4 * i)) & 0xf) as usize];
    }
    t
}

fn if_none_match_hits(header: Option<&[u8]>, tag: &[u8]) -> bool {
    header.is_some_and(|h| {
        h.split(|&b| b == b',')
            .any(|t| t.trim_ascii() == tag || t.trim_ascii() == b"*")
    })
}

/// A record stored from a body of an unparsed content type (`{contentType, data}` and its primary
/// key): that type and the bytes as sent. Records with more than three properties are ruled out
/// from the first byte, so ordinary GETs pay nothing for this.
fn opaque(table: &Table, body: &[u8]) -> Option<(String, Vec<u8>)> {
    match body.first() {
        Some(0x82 | 0x83) => {}
        _ => return None,
    }
    let names = ["contentType", "data", table.primary_key().name.as_str()];
    let found = value::extract_fields(body, &names).ok()?;
    let extra = usize::from(body[0] == 0x83) > usize::from(found[2].is_some());
    match (&found[0], &found[1]) {
        (Some(Value::String(ct)), Some(Value::Bytes(data))) if !extra => {
            Some((ct.clone(), data.clone()))
        }
        _ => None,
    }
}

impl Rest {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn get_record(
        &self,
        table: &Arc<Table>,
        id: &str,
        req: &Request<'_>,
        select: Option<&Select>,
        fmt: MediaType,
        user: &Arc<User>,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        let key = record_key(table.id, &id_value(table, id)).map_err(|_| AppError::NoSuchRecord)?;
        let (stored, cache) = match self.app.sources.of(table.id) {
            None => (self.router.get(&key)?, None),
            Some(source) => {
                let (app, router) = (&self.app, &self.router);
                let (stored, status) =
                    cache::read_through(app, router, table, source, id, &key, user).await?;
                (stored, Some(status))
            }
        };
        let Some(stored) = stored else {
            // `/Product/p01.brand`: a property of a record (stored, computed or related).
            if let Some((rid, prop)) = id.rsplit_once('.')
                && select.is_none()
                && table.attribute(prop).is_some()
            {
                let property = Select::Value(Field {
                    name: prop.to_owned(),
                    nested: None,
                });
                return Box::pin(self.get_record(
                    table,
                    rid,
                    req,
                    Some(&property),
                    fmt,
                    user,
                    restricted,
                    reply,
                ))
                .await;
            }
            return Err(AppError::NoSuchRecord);
        };
        let rec = output::stored_record(&stored)?;
        // A caching table's read-through answers with an expired record on purpose (stale
        // while revalidating).
        if cache.is_none() && rec.is_expired(now_micros() / 1000) {
            return Err(AppError::NoSuchRecord);
        }
        let tag = etag(rec.version);
        let both = [
            ("ETag", &tag[..]),
            ("Cache-Status", cache.map_or(&b""[..], CacheStatus::header)),
        ];
        let tagged = &both[..if cache.is_some() { 2 } else { 1 }];
        if if_none_match_hits(req.if_none_match, &tag) {
            reply.send(304, None, tagged, b"");
            return Ok(());
        }
        let visible;
        let body = match restricted {
            Some(p) => {
                visible = readable_only(table, p, rec.body)?;
                visible.as_slice()
            }
            None => rec.body,
        };
        if select.is_none()
            && let Some((content_type, data)) = opaque(table, body)
        {
            let mut headers = vec![("Content-Type", content_type.as_bytes())];
            headers.extend_from_slice(tagged);
            reply.send(200, None, &headers, &data);
            return Ok(());
        }
        match (fmt, select) {
            (MediaType::MsgPack, None) => reply.send(200, Some(fmt), tagged, body),
            (_, Some(s)) if query::selects_derived(table, Some(s)) => {
                let v = related::project(&self.related(), table, body, s, &HashMap::new()).await?;
                let mut buf = Vec::new();
                encode_value(&v, fmt, &mut buf);
                reply.send(200, Some(fmt), tagged, &buf);
            }
            _ => {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                output::write_record(body, select, fmt, &mut buf)?;
                reply.send(200, Some(fmt), tagged, &buf);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn put(
        &self,
        table: &Arc<Table>,
        id: &str,
        req: &Request<'_>,
        body: &mut [u8],
        mode: WriteMode,
        user: &Arc<User>,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        // A caching table hands the write to its source first, with the body as sent (decoding
        // rewrites it in place).
        let sent = self
            .app
            .sources
            .of(table.id)
            .map(|source| (source, body.to_vec()));
        let rec = decode_record(req.content_type, body, &self.json_buffers)?;
        check_writable(table, restricted, &rec, Action::Update)?;
        if let Some((source, sent)) = sent {
            let method = match mode {
                WriteMode::Patch => "PATCH",
                WriteMode::Replace => "PUT",
            };
            let body = Some((req.content_type, sent, &rec));
            cache::write_through(&self.app, table, source, method, id, body, user).await?;
        }
        self.write_record(table, rec, id_value(table, id), mode)
            .await?;
        reply.send(204, None, &[], b"");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn post(
        &self,
        table: &Arc<Table>,
        req: &Request<'_>,
        body: &mut [u8],
        fmt: MediaType,
        user: &Arc<User>,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        let sent = self
            .app
            .sources
            .of(table.id)
            .map(|source| (source, body.to_vec()));
        let rec = decode_record(req.content_type, body, &self.json_buffers)?;
        check_writable(table, restricted, &rec, Action::Insert)?;
        let pk = match rec.get(&table.primary_key().name) {
            Some(v) if *v != Value::Null => v.clone(),
            _ => self.app.tables.new_key(table)?,
        };
        if let Some((source, sent)) = sent {
            // The source gets the new record at its URL: a PUT of its new id.
            let id = id_text(&pk);
            let body = Some((req.content_type, sent, &rec));
            cache::write_through(&self.app, table, source, "PUT", &id, body, user).await?;
        }
        let pk = self
            .write_record(table, rec, pk, WriteMode::Replace)
            .await?;
        let location = match &pk {
            Value::String(s) => utf8_percent_encode(s, HEADER_UNSAFE).to_string(),
            other => other.to_json(),
        };
        let mut buf = self.scratch.borrow_mut();
        buf.clear();
        encode_value(&pk, fmt, &mut buf);
        reply.send(201, Some(fmt), &[("Location", location.as_bytes())], &buf);
        Ok(())
    }

    pub(super) async fn delete_record(
        &self,
        table: &Arc<Table>,
        id: &str,
        fmt: MediaType,
        user: &Arc<User>,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        if let Some(source) = self.app.sources.of(table.id) {
            cache::write_through(&self.app, table, source, "DELETE", id, None, user).await?;
        }
        if let Ok(key) = record_key(table.id, &id_value(table, id)) {
            self.router
                .write(WriteOp {
                    table: table.clone(),
                    key,
                    kind: WriteKind::Delete,
                    from: None,
                })
                .await?;
        }
        send_true(reply, fmt);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn etags() {
        assert_eq!(&etag(0x1234), b"\"0000000000001234\"");
        assert!(if_none_match_hits(
            Some(b"\"x\", \"0000000000001234\""),
            &etag(0x1234)
        ));
        assert!(if_none_match_hits(Some(b"*"), &etag(1)));
        assert!(!if_none_match_hits(None, &etag(1)));
    }
}
