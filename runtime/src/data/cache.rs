//! Caching tables: a read of a record that is missing or expired loads it from the table's
//! source (`app/sources.rs`), stores it with the table's expiration, and answers with it; a
//! write is handed to the source first.
//!
//! - One load per key, whatever core and connection ask: the first request starts it (as a
//!   task of its own, so a client that hangs up does not strand the others), the rest wait for
//!   its outcome and read the stored record.
//! - `allowStaleWhileRevalidate`: an expired record is answered at once, marked stale, and one
//!   load refreshes it in the background.
//! - A source's "not found" (404, 410) is kept for the table's expiration: requests for the key
//!   meanwhile answer 404 without asking again.
//! - A load stores through the shard's writer like any write: subscribers see it, replication
//!   sends it.
//!
//! How a response says what happened: the `Cache-Status` header (RFC 9211), see
//! [`CacheStatus::header`].

use std::cell::RefCell;
use std::sync::Arc;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tessera_shards::Router;
use tessera_storage::record::RecordRef;
use tessera_storage::shard::now_micros;
use tessera_storage::{Slice, Table, Value};

use crate::app::keys::id_value;
use crate::app::outbound::FetchRequest;
use crate::app::permissions::User;
use crate::app::records::{decode_record, write_loaded};
use crate::app::sources::{
    Flight, FromSource, HttpOrigin, LoadError, Loaded, Origin, Source, load_failure, max_age,
};
use crate::app::{App, AppError};

/// How a caching table's read was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the table, fresh.
    Hit,
    /// Loaded from the source for this request (or a concurrent one).
    Loaded,
    /// Expired, answered as it is while one load refreshes it.
    Stale,
}

impl CacheStatus {
    /// The `Cache-Status` header (RFC 9211): `tessera; hit`, `tessera; fwd=miss; stored`, or
    /// `tessera; hit; fwd=stale; detail=revalidating`.
    pub fn header(self) -> &'static [u8] {
        match self {
            CacheStatus::Hit => b"tessera; hit",
            CacheStatus::Loaded => b"tessera; fwd=miss; stored",
            CacheStatus::Stale => b"tessera; hit; fwd=stale; detail=revalidating",
        }
    }
}

/// The stored record `key` (`id` as the URL writes it) of a caching table, loaded from
/// `source` when missing or expired. `None`: the source has no such record.
pub async fn read_through(
    app: &Arc<App>,
    router: &Router,
    table: &Arc<Table>,
    source: &Arc<Source>,
    id: &str,
    key: &[u8],
    user: &Arc<User>,
) -> Result<(Option<Slice>, CacheStatus), AppError> {
    let now_ms = now_micros() / 1000;
    let stored = router.get(key)?;
    if let Some(rec) = stored.as_deref().and_then(RecordRef::parse) {
        if !rec.is_expired(now_ms) {
            return Ok((stored, CacheStatus::Hit));
        }
        if source.config.stale_while_revalidate {
            if !source.in_flight(key) {
                // Not awaited: this request answers with the stale record now.
                drop(load(app, router, table, source, id, key, user));
            }
            return Ok((stored, CacheStatus::Stale));
        }
    } else if source.known_absent(key, now_ms) {
        return Ok((None, CacheStatus::Hit));
    }
    match load(app, router, table, source, id, key, user).await {
        Ok(()) => Ok((router.get(key)?, CacheStatus::Loaded)),
        Err(LoadError::NotFound) => Ok((None, CacheStatus::Loaded)),
        Err(e) => Err(load_failure(&table.name, &e)),
    }
}

/// Loads `key` from the source, or joins the load already in flight: a future that ends when
/// the record is stored (or the source failed). The load runs as a task of its own, so it ends
/// even when nobody awaits this.
fn load(
    app: &Arc<App>,
    router: &Router,
    table: &Arc<Table>,
    source: &Arc<Source>,
    id: &str,
    key: &[u8],
    user: &Arc<User>,
) -> impl Future<Output = Loaded> + use<> {
    let rx = match source.board(key) {
        Flight::Follow(rx) => rx,
        Flight::Lead(rx) => {
            let (app, router, table, source) =
                (app.clone(), router.clone(), table.clone(), source.clone());
            let (id, key, user) = (id.to_owned(), key.to_vec(), user.clone());
            glommio::spawn_local(async move {
                let out = fetch_and_store(&app, &router, &table, &source, &id, &key, user).await;
                if let Err(e @ (LoadError::Failed(_) | LoadError::Timeout(_))) = &out {
                    tracing::warn!("caching table {}: loading {id}: {e:?}", table.full_name());
                }
                source.land(&key, &out);
            })
            .detach();
            rx
        }
    };
    async move {
        rx.await
            .unwrap_or_else(|_| Err(LoadError::Failed("the load was dropped".into())))
    }
}

/// What a record id keeps as it is in a URL path segment: RFC 3986's unreserved characters.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The URL of record `id` at an HTTP origin.
fn url_of(template: &str, id: &str) -> String {
    template.replace("{id}", &utf8_percent_encode(id, ESCAPED).to_string())
}

/// The request `method` of record `id` makes to the source's origin, with a body (and its
/// content type) for a write.
fn request(
    origin: &HttpOrigin,
    method: &str,
    id: &str,
    body: Option<(Option<&str>, Vec<u8>)>,
) -> FetchRequest {
    let mut headers = origin.headers.clone();
    let body = body.map(|(content_type, bytes)| {
        if let Some(ct) = content_type {
            headers.push(("content-type".into(), ct.to_owned()));
        }
        bytes
    });
    FetchRequest {
        method: method.into(),
        url: url_of(&origin.url, id),
        headers,
        body,
        timeout: origin.timeout,
        max_bytes: origin.max_bytes,
    }
}

async fn fetch_and_store(
    app: &Arc<App>,
    router: &Router,
    table: &Arc<Table>,
    source: &Source,
    id: &str,
    key: &[u8],
    user: Arc<User>,
) -> Loaded {
    let rec = match &source.config.origin {
        Origin::Code(loader) => loader.load(app.clone(), id.to_owned(), Some(user)).await,
        Origin::Http(http) => fetch(app, http, id).await,
    };
    let loaded = match rec {
        Ok(Some(loaded)) => loaded,
        Ok(None) => {
            let until = match table.expiration {
                Some(s) => now_micros() / 1000 + (s * 1000.0) as u64,
                None => u64::MAX,
            };
            source.note_absent(key, until);
            return Err(LoadError::NotFound);
        }
        Err(e) => return Err(e),
    };
    let expires_at = loaded.max_age.map(|s| now_micros() / 1000 + s * 1000);
    let pk = id_value(table, id);
    write_loaded(app, router, table, loaded.record, pk, expires_at)
        .await
        .map_err(|e| LoadError::Failed(format!("storing the source's record {id}: {e}")))?;
    source.forget_absent(key);
    Ok(())
}

/// Record `id` from an HTTP origin, kept as long as its `Cache-Control` says; `None` for its
/// 404 or 410.
async fn fetch(app: &App, origin: &HttpOrigin, id: &str) -> Result<Option<FromSource>, LoadError> {
    let req = request(origin, "GET", id, None);
    let url = req.url.clone();
    let resp = app.sources.outbound.fetch(req).await?;
    match resp.status {
        200..=299 => {}
        404 | 410 => return Ok(None),
        s => return Err(LoadError::Failed(format!("GET {url} answered {s}"))),
    }
    let content_type = resp.header("content-type").map(str::to_owned);
    let max_age = max_age(resp.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let mut body = resp.body;
    let buffers = RefCell::new(simd_json::Buffers::default());
    let record = decode_record(content_type.as_deref(), &mut body, &buffers)
        .map_err(|e| LoadError::Failed(format!("GET {url}: the answer is no record: {e}")))?;
    Ok(Some(FromSource { record, max_age }))
}

/// Hands a write of record `id` to the table's source before it is made here: `method` (PUT,
/// PATCH or DELETE) with the body as the client sent it (its content type, its bytes, and the
/// record decoded from them). An HTTP origin's 404 to a DELETE counts as done.
#[allow(clippy::too_many_arguments)]
pub async fn write_through(
    app: &Arc<App>,
    table: &Table,
    source: &Source,
    method: &'static str,
    id: &str,
    body: Option<(Option<&str>, Vec<u8>, &Value)>,
    user: &Arc<User>,
) -> Result<(), AppError> {
    let http = match &source.config.origin {
        Origin::Code(loader) => {
            let record = body.map(|(_, _, rec)| rec.clone());
            let user = Some(user.clone());
            return loader
                .write(app.clone(), method, id.to_owned(), record, user)
                .await;
        }
        Origin::Http(http) => http,
    };
    let body = body.map(|(content_type, bytes, _)| (content_type, bytes));
    let req = request(http, method, id, body);
    let url = req.url.clone();
    let resp = app
        .sources
        .outbound
        .fetch(req)
        .await
        .map_err(|e| load_failure(&table.name, &e.into()))?;
    match resp.status {
        200..=299 => Ok(()),
        404 if method == "DELETE" => Ok(()),
        s => Err(load_failure(
            &table.name,
            &LoadError::Failed(format!("{method} {url} answered {s}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_escaped_as_path_segments() {
        assert_eq!(
            super::url_of("http://o/b/{id}?k=1", "a-b.c_d~e f/g?"),
            "http://o/b/a-b.c_d~e%20f%2Fg%3F?k=1"
        );
    }
}
