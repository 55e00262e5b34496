//! Tables as REST resources (HARPER.md sections 1, 2, 6, 8): the per-core request handler.
//!
//! A request is authenticated, its resource resolved, its response type negotiated, and then
//! served: by-key operations go to the owner shard through the [`Router`], collections are
//! gathered from every shard and merged here, on the connection's core. Stored records answer
//! MessagePack requests as they are and are transcoded to JSON without building a tree.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tessera_protocol::MediaType;
use tessera_protocol::http::{Method, Request, write_head};
use tessera_protocol::media::negotiate;
use tessera_protocol::query::{Field, Select};
use tessera_protocol::rest::{PathKind, parse_target};
use tessera_shards::Router;
use tessera_storage::shard::{Change, WriteKind, WriteOp, now_micros, record_key};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Scalar, Table, Value};

use tessera_storage::value;

use crate::auth::{Authenticator, Denied, User};
use crate::body;
use crate::config::Settings;
use crate::error::RestError;
use crate::http::Api;
use crate::http::{FLUSH_AT, flush};
use crate::openapi;
use crate::output::{self, Rows, encode_value};
use crate::query::{self, Merge};
use crate::realtime::{self, Held, Pattern, Scope, Subscriber};
use crate::related;
use crate::roles::{Action, TablePermission};
use crate::wasm::{self, Method as WasmMethod, WasmResource};
use crate::{events, websocket};

/// Response types this build can produce.
const OFFERED: &[MediaType] = &[
    MediaType::Json,
    MediaType::MsgPack,
    MediaType::Cbor,
    MediaType::Yaml,
    MediaType::Csv,
];
/// Sent with every CSV body (HARPER.md section 6).
const CSV_DISPOSITION: (&str, &[u8]) =
    ("Content-Disposition", b"attachment; filename=\"data.csv\"");
const ALLOW_ALL: &[u8] = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, QUERY, COPY, MOVE";
const ALLOW_TABLE: &str = "GET, HEAD, OPTIONS";
const ALLOW_RECORD: &str = "GET, HEAD, PUT, PATCH, DELETE, OPTIONS";
const ALLOW_COLLECTION: &str = "GET, HEAD, POST, DELETE, OPTIONS";
const ALLOW_RESOURCE: &str = "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS";
const VARY: &[u8] = b"Accept, Accept-Encoding";
/// A collection response switches to chunked streaming once its body outgrows this.
const STREAM_CHUNK: usize = 32 * 1024;
/// Characters escaped in a `Location` header (controls, so a stored id cannot split the head).
const HEADER_UNSAFE: &AsciiSet = &CONTROLS.add(b' ');

/// State shared by every core.
pub struct Shared {
    pub settings: Settings,
    /// Exported tables by URL segment.
    pub tables: HashMap<String, Arc<Table>>,
    /// Every table by its type name (relationship targets).
    pub types: HashMap<String, Arc<Table>>,
    /// Next auto-increment primary key per table id (numeric keys).
    pub counters: HashMap<u32, AtomicI64>,
    /// The application's WebAssembly resources.
    pub wasm: crate::wasm::WasmHost,
    /// Every table the Operations API can name, dynamic ones included.
    pub catalog: crate::catalog::Catalog,
}

/// One core's request handler.
pub struct Core {
    pub shared: Arc<Shared>,
    pub router: Router,
    pub auth: Authenticator,
    scratch: RefCell<Vec<u8>>,
    json_buffers: RefCell<simd_json::Buffers>,
}

/// What one handled request asks of the connection.
pub(crate) struct Reply<'o> {
    out: &'o mut Vec<u8>,
    /// The connection, for responses streamed in chunks.
    conn: &'o mut TcpStream,
    keep_alive: bool,
    head_only: bool,
    started: Instant,
}

/// Most headers `Reply::send` writes besides the framing ones (a wasm resource's response may
/// set up to 12 of its own).
const MAX_REPLY_HEADERS: usize = 16;

impl<'o> Reply<'o> {
    fn new(req: &Request<'_>, out: &'o mut Vec<u8>, conn: &'o mut TcpStream) -> Reply<'o> {
        Reply {
            out,
            conn,
            keep_alive: req.keep_alive,
            head_only: req.method == Method::Head,
            started: Instant::now(),
        }
    }

    /// Writes the whole response. `headers` are the caller's own (at most three); the content
    /// type, `Vary` and `Server-Timing` are added here. Nothing is allocated.
    pub(crate) fn send(
        &mut self,
        status: u16,
        content_type: Option<MediaType>,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) {
        let mut timing = [0u8; 40];
        let timing = server_timing(self.started, &mut timing);
        let negotiated = content_type.map(|ct| {
            [
                ("Content-Type", ct.content_type().as_bytes()),
                ("Vary", VARY),
            ]
        });
        let csv = (content_type == Some(MediaType::Csv)).then_some(CSV_DISPOSITION);
        let mut all = [("", &b""[..]); MAX_REPLY_HEADERS];
        let mut n = 0;
        for h in negotiated
            .iter()
            .flatten()
            .chain(csv.as_ref())
            .chain(headers)
            .chain([&("Server-Timing", timing)])
        {
            if let Some(slot) = all.get_mut(n) {
                *slot = *h;
                n += 1;
            }
        }
        write_head(
            self.out,
            status,
            &all[..n],
            Some(body.len()),
            self.keep_alive,
        );
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Starts a `200` response whose body follows in chunks ([`Self::chunk`], [`Self::end`]).
    fn start_chunked(&mut self, content_type: MediaType) {
        let headers = [
            ("Content-Type", content_type.content_type().as_bytes()),
            ("Vary", VARY),
            CSV_DISPOSITION,
        ];
        let n = if content_type == MediaType::Csv { 3 } else { 2 };
        write_head(self.out, 200, &headers[..n], None, self.keep_alive);
    }

    /// Sends one chunk of a chunked body, writing to the connection once enough is waiting.
    /// Fails when the client is gone.
    async fn chunk(&mut self, data: &[u8]) -> Result<(), RestError> {
        self.frame(data);
        if self.out.len() >= FLUSH_AT && !flush(self.conn, self.out).await {
            self.keep_alive = false;
            return Err(RestError::Unavailable("the client went away".into()));
        }
        Ok(())
    }

    /// Appends one chunk without flushing (a streamed response's frame).
    fn frame(&mut self, data: &[u8]) {
        if self.head_only || data.is_empty() {
            return;
        }
        let _ = write!(self.out, "{:x}\r\n", data.len());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes what is waiting to the connection. `false` when the client is gone.
    async fn flush(&mut self) -> bool {
        flush(self.conn, self.out).await
    }

    /// Ends a chunked body.
    fn end(&mut self) {
        if !self.head_only {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

/// `hdb;dur=<ms with 3 decimals>`, written into `buf`.
fn server_timing(started: Instant, buf: &mut [u8; 40]) -> &[u8] {
    let us = started.elapsed().as_micros() as u64;
    let mut w = &mut buf[..];
    let _ = write!(w, "hdb;dur={}.{:03}", us / 1000, us % 1000);
    let left = w.len();
    &buf[..40 - left]
}

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

/// Converts an id from the URL to the primary key's type (HARPER.md section 1).
pub(crate) fn id_value(table: &Table, id: &str) -> Value {
    if table.key_type().is_numeric_key()
        && let Ok(f) = id.parse::<f64>()
        && f.is_finite()
        && !id.starts_with('+')
        && !id.contains(['e', 'E', 'x', 'X'])
    {
        return if f.fract() == 0.0 && f.abs() < 9.2e18 {
            Value::Int(f as i64)
        } else {
            Value::Float(f)
        };
    }
    Value::String(id.to_owned())
}

/// Puts the primary key first in a record object, replacing one from the body.
pub(crate) fn set_primary_key(rec: &mut Value, name: &str, pk: Value) {
    if let Value::Object(props) = rec {
        props.retain(|(k, _)| k != name);
        props.insert(0, (name.to_owned(), pk));
    }
}

impl Shared {
    /// A new primary key for POST: a UUID for string keys, the next integer for numeric ones.
    pub(crate) fn new_key(&self, table: &Table) -> Result<Value, RestError> {
        match table.key_type() {
            Scalar::String | Scalar::Id => Ok(Value::String(uuid::Uuid::new_v4().to_string())),
            _ => {
                let next = match self.counters.get(&table.id) {
                    Some(counter) => counter.fetch_add(1, Ordering::Relaxed),
                    None => self
                        .catalog
                        .counter(table.id)
                        .ok_or_else(|| RestError::Internal("no key counter".into()))?
                        .fetch_add(1, Ordering::Relaxed),
                };
                if table.key_type() == Scalar::Int && next > i32::MAX as i64 {
                    return Err(RestError::BadRequest(
                        "Auto-incremented Int primary keys are exhausted".into(),
                    ));
                }
                Ok(Value::Int(next))
            }
        }
    }

    /// The exported table a topic (`Table/id`) addresses, and the id.
    pub(crate) fn topic<'t>(&self, topic: &'t str) -> Option<(&Arc<Table>, &'t str)> {
        let (name, id) = topic.split_once('/')?;
        Some((self.tables.get(name)?, id))
    }

    /// Notes a numeric primary key written with an explicit value, so that [`Self::new_key`]
    /// never hands it out again.
    pub(crate) fn saw_key(&self, table: &Table, pk: &Value) {
        let Value::Int(i) = pk else { return };
        match self.counters.get(&table.id) {
            Some(counter) => counter.fetch_max(i.saturating_add(1), Ordering::Relaxed),
            None => match self.catalog.counter(table.id) {
                Some(counter) => counter.fetch_max(i.saturating_add(1), Ordering::Relaxed),
                None => return,
            },
        };
    }
}

impl Core {
    pub fn new(shared: Arc<Shared>, router: Router, auth: Authenticator) -> Core {
        Core {
            shared,
            router,
            auth,
            scratch: RefCell::new(Vec::with_capacity(4096)),
            json_buffers: RefCell::new(simd_json::Buffers::default()),
        }
    }

    /// Handles one request for `api` (the listener it came in on), appending the whole response
    /// to `out`. Returns whether the connection stays open.
    pub async fn handle(
        &self,
        api: Api,
        req: &Request<'_>,
        body: &mut [u8],
        from_loopback: bool,
        out: &mut Vec<u8>,
        conn: &mut TcpStream,
    ) -> bool {
        let mut reply = Reply::new(req, out, conn);
        match api {
            Api::Rest => {
                let mut fmt = MediaType::Json;
                if let Err(e) = self
                    .route(req, body, from_loopback, &mut fmt, &mut reply)
                    .await
                {
                    send_error(&mut reply, &e, fmt);
                }
            }
            Api::Operations => self.handle_ops(req, body, from_loopback, &mut reply).await,
        }
        reply.keep_alive
    }

    /// The user a request is made by (any listener), or why there is none.
    pub(crate) async fn user(
        &self,
        req: &Request<'_>,
        from_loopback: bool,
    ) -> Result<Arc<User>, Denied> {
        if self.shared.settings.authorize_local && from_loopback {
            return Ok(Arc::new(User::local()));
        }
        self.auth
            .check(req.authorization.ok_or(Denied::Missing)?)
            .await
    }

    /// [`Self::user`] for REST, WebSocket and SSE: every refusal is a 401.
    pub(crate) async fn authenticate(
        &self,
        req: &Request<'_>,
        from_loopback: bool,
    ) -> Result<Arc<User>, RestError> {
        self.user(req, from_loopback)
            .await
            .map_err(|_| RestError::Unauthorized)
    }

    async fn route(
        &self,
        req: &Request<'_>,
        body: &mut [u8],
        from_loopback: bool,
        fmt: &mut MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        if req.method == Method::Other {
            return Err(RestError::NotImplemented("Method not implemented".into()));
        }
        let target = parse_target(req.target).map_err(|e| RestError::BadRequest(e.to_string()))?;
        if req.method == Method::Options {
            reply.send(204, None, &[("Allow", ALLOW_ALL)], b"");
            return Ok(());
        }
        if let Some(key) = req.websocket_key
            && req.method == Method::Get
        {
            let mqtt = req
                .websocket_protocol
                .is_some_and(|p| p.split(',').any(|t| t.trim() == "mqtt"));
            if mqtt {
                websocket::serve_mqtt(self, reply.conn, reply.out, key).await;
            } else {
                websocket::serve(self, req, target, from_loopback, reply.conn, reply.out).await;
            }
            reply.keep_alive = false;
            return Ok(());
        }
        let event_stream = req.method == Method::Get
            && req.accept.is_some_and(|a| a.trim() == "text/event-stream");
        let user = match self.authenticate(req, from_loopback).await {
            Ok(user) => user,
            Err(e) => {
                if event_stream {
                    // SSE clients get the error as an event (HARPER.md section 11).
                    let ct = ("Content-Type", &b"text/event-stream"[..]);
                    reply.send(401, None, &[ct], b"data: AccessViolation: Must login\n\n");
                    return Ok(());
                }
                return Err(e);
            }
        };
        if target.resource == "openapi"
            && target.path == PathKind::Table
            && !self.shared.tables.contains_key("openapi")
        {
            if !matches!(req.method, Method::Get | Method::Head) {
                return Err(RestError::MethodNotAllowed(ALLOW_TABLE));
            }
            let origin = format!("http://{}", req.host.unwrap_or("localhost"));
            let doc = openapi::document(&origin, &self.shared.tables, &self.shared.types);
            let body = serde_json::to_vec(&doc).map_err(|e| RestError::Internal(e.to_string()))?;
            reply.send(200, Some(MediaType::Json), &[], &body);
            return Ok(());
        }
        let wasm = self.shared.wasm.resource(&target.resource);
        if let Some(res) = wasm
            && res.extends.is_none()
        {
            // A standalone resource (extends `Resource`): any authenticated user may call it; it
            // checks `user` itself. What it does not override is not allowed.
            *fmt = negotiated(target.format, req.accept)?;
            let query = target.query.unwrap_or("");
            if self
                .serve_wasm(res, req, body, &target.path, query, &user, *fmt, reply)
                .await?
            {
                return Ok(());
            }
            return Err(RestError::MethodNotAllowed(ALLOW_RESOURCE));
        }
        let table = match wasm {
            Some(res) => res.extends.as_ref(),
            None => self.shared.tables.get(target.resource.as_ref()),
        }
        .ok_or(RestError::NoSuchResource)?;
        // The role's table permission for what the method does (HARPER-OPS.md section 7).
        let action = match req.method {
            Method::Post => Action::Insert,
            Method::Put | Method::Patch => Action::Update,
            Method::Delete => Action::Delete,
            _ => Action::Read,
        };
        if !user.permission.allows(&table.database, &table.name, action) {
            if event_stream {
                let ct = ("Content-Type", &b"text/event-stream"[..]);
                reply.send(
                    403,
                    None,
                    &[ct],
                    b"data: AccessViolation: Unauthorized access to resource\n\n",
                );
                return Ok(());
            }
            return Err(RestError::Forbidden);
        }
        // A role with attribute permissions sees and writes only the attributes it lists.
        let restricted = user
            .permission
            .attribute_limits(&table.database, &table.name);
        if event_stream {
            let scope = match target.path {
                PathKind::Record(id) => Scope::Record(id),
                PathKind::Collection(p) if p.is_empty() => {
                    Scope::Pattern(Pattern(vec!["#".to_owned()]))
                }
                _ => return Err(RestError::MethodNotAllowed(ALLOW_RECORD)),
            };
            let since = realtime::since_of(target.query);
            return self.event_stream(table, scope, since, reply).await;
        }
        *fmt = negotiated(target.format, req.accept)?;
        // A resource extending the table serves what it overrides; the rest is the table's.
        if let Some(res) = wasm
            && self
                .serve_wasm(
                    res,
                    req,
                    body,
                    &target.path,
                    target.query.unwrap_or(""),
                    &user,
                    *fmt,
                    reply,
                )
                .await?
        {
            return Ok(());
        }
        let query = target.query.filter(|q| !q.is_empty());
        match (req.method, target.path) {
            (Method::Get | Method::Head, PathKind::Table) => {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                encode_value(&table.describe(0), *fmt, &mut buf);
                reply.send(200, Some(*fmt), &[], &buf);
                Ok(())
            }
            (_, PathKind::Table) => Err(RestError::MethodNotAllowed(ALLOW_TABLE)),
            (Method::Get | Method::Head, PathKind::Collection(prefix)) => {
                self.get_collection(table, &prefix, query.unwrap_or(""), *fmt, restricted, reply)
                    .await
            }
            (Method::Post, PathKind::Collection(prefix)) if prefix.is_empty() => {
                self.post(table, req, body, *fmt, restricted, reply).await
            }
            (Method::Delete, PathKind::Collection(prefix)) => {
                self.delete_collection(table, &prefix, query.unwrap_or(""), *fmt, reply)
                    .await
            }
            (_, PathKind::Collection(_)) => Err(RestError::MethodNotAllowed(ALLOW_COLLECTION)),
            (Method::Get | Method::Head, PathKind::Record(id)) => {
                let select = match query {
                    Some(q) => query::select(table, q)?,
                    None => None,
                };
                self.get_record(table, &id, req, select.as_ref(), *fmt, restricted, reply)
                    .await
            }
            (Method::Put, PathKind::Record(id)) => {
                self.put(table, &id, req, body, WriteMode::Replace, restricted, reply)
                    .await
            }
            (Method::Patch, PathKind::Record(id)) => {
                self.put(table, &id, req, body, WriteMode::Patch, restricted, reply)
                    .await
            }
            (Method::Delete, PathKind::Record(id)) => {
                self.delete_record(table, &id, *fmt, reply).await
            }
            (_, PathKind::Record(_)) => Err(RestError::MethodNotAllowed(ALLOW_RECORD)),
        }
    }

    /// Serves a request with a wasm resource. `Ok(false)`: the resource does not override the
    /// verb, and the caller serves it as the table does.
    #[allow(clippy::too_many_arguments)]
    async fn serve_wasm(
        &self,
        res: &WasmResource,
        req: &Request<'_>,
        body: &mut [u8],
        path: &PathKind,
        query: &str,
        user: &User,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<bool, RestError> {
        let (method, id, pathname) = match (req.method, path) {
            (Method::Get | Method::Head, PathKind::Record(id)) => (WasmMethod::Get, Some(id), id),
            (Method::Get | Method::Head, PathKind::Collection(p)) => (WasmMethod::Search, None, p),
            (Method::Put, PathKind::Record(id)) => (WasmMethod::Put, Some(id), id),
            (Method::Patch, PathKind::Record(id)) => (WasmMethod::Patch, Some(id), id),
            (Method::Post, PathKind::Record(id)) => (WasmMethod::Post, Some(id), id),
            (Method::Post, PathKind::Collection(p)) => (WasmMethod::Post, None, p),
            (Method::Delete, PathKind::Record(id)) => (WasmMethod::Delete, Some(id), id),
            (Method::Delete, PathKind::Collection(p)) => (WasmMethod::Delete, None, p),
            _ => return Ok(false),
        };
        if res.falls_back(method) {
            return Ok(false);
        }
        let data = match method {
            WasmMethod::Put | WasmMethod::Patch | WasmMethod::Post if !body.is_empty() => {
                let mut data =
                    body::decode(req.content_type, body, &mut self.json_buffers.borrow_mut())?;
                // As for the table's own PUT: the URL's id is the record's primary key.
                if let (Some(table), Some(id), WasmMethod::Put | WasmMethod::Patch) =
                    (&res.extends, id, method)
                {
                    set_primary_key(&mut data, &table.primary_key().name, id_value(table, id));
                }
                Some(data.to_msgpack())
            }
            _ => None,
        };
        let call = wasm::Call {
            method,
            id: id.map(String::as_str),
            pathname,
            search: query,
            is_collection: id.is_none(),
            data,
            user: Some(user.username.clone()),
            head: req.head.to_vec(),
        };
        let response = match wasm::call(&self.shared, &self.router, res, call).await? {
            wasm::Answer::Fallback => return Ok(false),
            wasm::Answer::Respond(r) => r,
        };
        let headers: Vec<(&str, &[u8])> = response
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        let status = response.status;
        match (response.body, response.data) {
            (Some(b), _) => reply.send(status, None, &headers, &b),
            (None, Some(d)) => {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                match fmt {
                    MediaType::MsgPack => buf.extend_from_slice(&d),
                    MediaType::Json => {
                        value::msgpack_to_json(&d, &mut buf)
                            .map_err(|e| RestError::Internal(e.to_string()))?;
                    }
                    _ => {
                        let v = value::from_msgpack(&d)
                            .map_err(|e| RestError::Internal(e.to_string()))?;
                        encode_value(&v, fmt, &mut buf);
                    }
                }
                reply.send(status, Some(fmt), &headers, &buf);
            }
            (None, None) => reply.send(status, None, &headers, b""),
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn get_record(
        &self,
        table: &Arc<Table>,
        id: &str,
        req: &Request<'_>,
        select: Option<&Select>,
        fmt: MediaType,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        let key =
            record_key(table.id, &id_value(table, id)).map_err(|_| RestError::NoSuchRecord)?;
        let stored = self.router.get(&key)?;
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
                    restricted,
                    reply,
                ))
                .await;
            }
            return Err(RestError::NoSuchRecord);
        };
        let rec = output::stored_record(&stored)?;
        if rec.is_expired(now_micros() / 1000) {
            return Err(RestError::NoSuchRecord);
        }
        let tag = etag(rec.version);
        if if_none_match_hits(req.if_none_match, &tag) {
            reply.send(304, None, &[("ETag", &tag)], b"");
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
            let headers = [("Content-Type", content_type.as_bytes()), ("ETag", &tag)];
            reply.send(200, None, &headers, &data);
            return Ok(());
        }
        match (fmt, select) {
            (MediaType::MsgPack, None) => reply.send(200, Some(fmt), &[("ETag", &tag)], body),
            (_, Some(s)) if related::selects_derived(table, Some(s)) => {
                let v = related::project(&self.ctx(), table, body, s, &HashMap::new()).await?;
                let mut buf = Vec::new();
                encode_value(&v, fmt, &mut buf);
                reply.send(200, Some(fmt), &[("ETag", &tag)], &buf);
            }
            _ => {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                output::write_record(body, select, fmt, &mut buf)?;
                reply.send(200, Some(fmt), &[("ETag", &tag)], &buf);
            }
        }
        Ok(())
    }

    fn ctx(&self) -> related::Ctx<'_> {
        related::Ctx {
            router: &self.router,
            types: &self.shared.types,
        }
    }

    /// Parses and plans a collection query, running its conditions through relationships first.
    async fn plan(
        &self,
        table: &Arc<Table>,
        prefix: &str,
        query: &str,
    ) -> Result<query::Plan, RestError> {
        let parsed = query::parse(query)?;
        let joins = related::joins(&self.ctx(), table, parsed.filter.as_ref()).await?;
        query::plan(table, prefix, parsed, joins)
    }

    /// Server-Sent Events (HARPER.md section 11): the current record(s), then every change, one
    /// `data:` line each. The head waits for the first event; a comment every 15 s notices a
    /// client that has gone. The connection ends with the stream.
    async fn event_stream(
        &self,
        table: &Arc<Table>,
        scope: Scope,
        since: Option<realtime::Since>,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        reply.keep_alive = false;
        let core = self.router.core();
        let conn = realtime::new_conn(core);
        let inbox = realtime::open_inbox(conn);
        let mut held = Held::default();
        let sub = Subscriber {
            core,
            conn,
            sub: 1,
            qos: tessera_protocol::mqtt::QoS::AtMostOnce,
        };
        let result = async {
            let current = realtime::subscribe(&self.router, table, scope, since, sub, &mut held)
                .await
                .ok_or(RestError::NoSuchRecord)?;
            let mut started = false;
            let mut buf = Vec::new();
            let mut send = |reply: &mut Reply<'_>, change: &Change, started: &mut bool| {
                if !*started {
                    reply.start_chunked(MediaType::EventStream);
                    *started = true;
                }
                buf.clear();
                buf.extend_from_slice(b"data: ");
                if let Some(e) = events::envelope_json(change) {
                    buf.extend_from_slice(&e);
                }
                buf.extend_from_slice(b"\n\n");
                reply.frame(&buf);
            };
            for c in &current {
                send(reply, c, &mut started);
            }
            loop {
                if started && !reply.flush().await {
                    return Ok(());
                }
                match glommio::timer::timeout(Duration::from_secs(15), async {
                    Ok(inbox.recv().await)
                })
                .await
                {
                    Ok(Some((change, _))) => send(reply, &change, &mut started),
                    Ok(None) => return Ok(()),
                    Err(_) if started => reply.frame(b":\n\n"),
                    Err(_) => {}
                }
            }
        }
        .await;
        held.release(&self.router, conn, None).await;
        realtime::close_inbox(conn);
        result
    }

    /// Appends one result row, fetching related records when the selection asks for them.
    async fn write_row(
        &self,
        ctx: &related::Ctx<'_>,
        table: &Table,
        plan: &query::Plan,
        body: &[u8],
        out: &mut Rows<'_>,
        buf: &mut Vec<u8>,
    ) -> Result<(), RestError> {
        match (&plan.select, plan.related) {
            (Some(select), true) => {
                let v = related::project(ctx, table, body, select, &plan.narrowing).await?;
                out.row_value(&v, buf);
                Ok(())
            }
            _ => out.row(body, buf),
        }
    }

    /// Answers a collection query, streaming the rows in chunks once they outgrow one buffer.
    #[allow(clippy::too_many_arguments)]
    async fn get_collection(
        &self,
        table: &Arc<Table>,
        prefix: &str,
        query: &str,
        fmt: MediaType,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        let plan = self.plan(table, prefix, query).await?;
        let visible = |body: &[u8]| -> Result<Option<Vec<u8>>, RestError> {
            restricted
                .map(|p| readable_only(table, p, body))
                .transpose()
        };
        let ctx = self.ctx();
        let mut rows = Merge::start(&self.router, plan.shard.clone());
        let end = plan.shard.take.unwrap_or(usize::MAX);
        let mut buf = Vec::with_capacity(4096);
        let mut out = Rows::new(table, plan.select.as_ref(), fmt);
        out.begin(&mut buf);
        if plan.shard.keys_only {
            // Short and limited: merge the keys, then read just the records that made it.
            let mut picked = rows.collect(plan.skip, end).await?;
            query::fill_records(&self.router, &mut picked).await?;
            for row in &picked {
                let rec = output::stored_record(&row.stored)?;
                let shown = visible(rec.body)?;
                let body = shown.as_deref().unwrap_or(rec.body);
                self.write_row(&ctx, table, &plan, body, &mut out, &mut buf)
                    .await?;
            }
            out.end(&mut buf);
            reply.send(200, Some(fmt), &[], &buf);
            return Ok(());
        }
        let mut streaming = false;
        let mut seen = 0;
        while seen < end {
            let row = match rows.next().await {
                Ok(Some(row)) => row,
                Ok(None) => break,
                // Once the head is out, an error can only cut the response short.
                Err(_) if streaming => {
                    reply.keep_alive = false;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            seen += 1;
            if seen <= plan.skip {
                continue;
            }
            let rec = output::stored_record(&row.stored)?;
            let shown = visible(rec.body)?;
            let body = shown.as_deref().unwrap_or(rec.body);
            self.write_row(&ctx, table, &plan, body, &mut out, &mut buf)
                .await?;
            if buf.len() >= STREAM_CHUNK {
                if !streaming {
                    reply.start_chunked(fmt);
                    streaming = true;
                }
                reply.chunk(&buf).await?;
                buf.clear();
            }
        }
        out.end(&mut buf);
        if streaming {
            reply.chunk(&buf).await?;
            reply.end();
        } else {
            reply.send(200, Some(fmt), &[], &buf);
        }
        Ok(())
    }

    /// Validates a record for `table` with `pk` as its primary key (replacing any in the body) and
    /// commits it. Returns the primary key as stored.
    pub(crate) async fn write_record(
        &self,
        table: &Arc<Table>,
        mut rec: Value,
        pk: Value,
        mode: WriteMode,
    ) -> Result<Value, RestError> {
        let pk_name = &table.primary_key().name;
        set_primary_key(&mut rec, pk_name, pk);
        check_record(table, &mut rec, mode).map_err(|e| RestError::BadRequest(e.to_string()))?;
        let pk = rec.get(pk_name).cloned().unwrap_or(Value::Null);
        let key = record_key(table.id, &pk)
            .map_err(|e| RestError::BadRequest(format!("Invalid primary key: {e}")))?;
        self.shared.saw_key(table, &pk);
        let kind = match mode {
            WriteMode::Patch => WriteKind::Patch(rec),
            WriteMode::Replace => WriteKind::Put(rec),
        };
        self.router
            .write(WriteOp {
                table: table.clone(),
                key,
                kind,
            })
            .await?;
        Ok(pk)
    }

    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        table: &Arc<Table>,
        id: &str,
        req: &Request<'_>,
        body: &mut [u8],
        mode: WriteMode,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        let rec = decode_record(req, body, &self.json_buffers)?;
        check_writable(table, restricted, &rec, Action::Update)?;
        self.write_record(table, rec, id_value(table, id), mode)
            .await?;
        reply.send(204, None, &[], b"");
        Ok(())
    }

    async fn post(
        &self,
        table: &Arc<Table>,
        req: &Request<'_>,
        body: &mut [u8],
        fmt: MediaType,
        restricted: Option<&TablePermission>,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        let rec = decode_record(req, body, &self.json_buffers)?;
        check_writable(table, restricted, &rec, Action::Insert)?;
        let pk = match rec.get(&table.primary_key().name) {
            Some(v) if *v != Value::Null => v.clone(),
            _ => self.shared.new_key(table)?,
        };
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

    async fn delete_record(
        &self,
        table: &Arc<Table>,
        id: &str,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        if let Ok(key) = record_key(table.id, &id_value(table, id)) {
            self.router
                .write(WriteOp {
                    table: table.clone(),
                    key,
                    kind: WriteKind::Delete,
                })
                .await?;
        }
        send_true(reply, fmt);
        Ok(())
    }

    async fn delete_collection(
        &self,
        table: &Arc<Table>,
        prefix: &str,
        query: &str,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), RestError> {
        let plan = self.plan(table, prefix, query).await?;
        let end = plan.shard.take.unwrap_or(usize::MAX);
        let rows = Merge::start(&self.router, plan.shard.clone())
            .collect(plan.skip, end)
            .await?;
        let writes = rows.into_iter().map(|row| {
            self.router.write(WriteOp {
                table: table.clone(),
                key: row.key.to_vec(),
                kind: WriteKind::Delete,
            })
        });
        for r in futures::future::join_all(writes).await {
            r?;
        }
        send_true(reply, fmt);
        Ok(())
    }
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

/// The body of a write: a record object in any accepted content type.
fn decode_record(
    req: &Request<'_>,
    body: &mut [u8],
    buffers: &RefCell<simd_json::Buffers>,
) -> Result<Value, RestError> {
    let rec = body::decode(req.content_type, body, &mut buffers.borrow_mut())?;
    match rec {
        Value::Object(_) => Ok(rec),
        other => Err(RestError::BadRequest(format!(
            "The request body must be an object, not {}",
            other.kind()
        ))),
    }
}

/// The response type: the URL's suffix, else the best of `Accept` this build offers.
fn negotiated(format: Option<MediaType>, accept: Option<&str>) -> Result<MediaType, RestError> {
    match format {
        Some(f) if OFFERED.contains(&f) => Ok(f),
        Some(_) => Err(RestError::NotAcceptable),
        None => negotiate(accept, OFFERED).ok_or(RestError::NotAcceptable),
    }
}

fn send_true(reply: &mut Reply<'_>, fmt: MediaType) {
    let mut b = Vec::with_capacity(4);
    encode_value(&Value::Bool(true), fmt, &mut b);
    reply.send(200, Some(fmt), &[], &b);
}

fn send_error(reply: &mut Reply<'_>, e: &RestError, fmt: MediaType) {
    let status = e.status();
    match e {
        RestError::NoSuchRecord => reply.send(status, None, &[], b""),
        RestError::NoSuchResource => reply.send(status, None, &[], b"Not found"),
        _ => {
            let mut body = Vec::new();
            encode_value(
                &Value::String(format!("{}: {e}", e.class())),
                fmt,
                &mut body,
            );
            let extra: &[(&str, &[u8])] = match e {
                RestError::Unauthorized => &[("WWW-Authenticate", b"Basic")],
                RestError::MethodNotAllowed(allow) => &[("Allow", allow.as_bytes())],
                _ => &[],
            };
            reply.send(status, Some(fmt), extra, &body);
        }
    }
}

/// A stored record body (MessagePack) without the attributes `perm` does not let its role read.
pub(crate) fn readable_only(
    table: &Table,
    perm: &TablePermission,
    body: &[u8],
) -> Result<Vec<u8>, RestError> {
    let mut v = tessera_storage::value::from_msgpack(body)
        .map_err(|e| RestError::Internal(e.to_string()))?;
    let pk = &table.primary_key().name;
    if let Value::Object(props) = &mut v {
        props.retain(|(k, _)| perm.reads_attribute(k, k == pk));
    }
    Ok(v.to_msgpack())
}

/// Refuses (403) a record with a property `perm` does not let its role write with `action`
/// (Harper's REST ignores attribute permissions on writes: a DEVIATION done right here).
fn check_writable(
    table: &Table,
    perm: Option<&TablePermission>,
    rec: &Value,
    action: Action,
) -> Result<(), RestError> {
    let (Some(perm), Value::Object(props)) = (perm, rec) else {
        return Ok(());
    };
    let pk = &table.primary_key().name;
    for (k, _) in props {
        // The key named by the URL is not a write of the key attribute.
        if k != pk && !perm.writes_attribute(k, action) {
            return Err(RestError::Forbidden);
        }
    }
    Ok(())
}

/// Starting values of the auto-increment counters: one past the largest numeric key on any shard.
pub fn initial_counters(
    tables: &[Arc<Table>],
    max_numeric_key: impl Fn(u32) -> Option<f64>,
) -> HashMap<u32, AtomicI64> {
    tables
        .iter()
        .filter(|t| t.key_type().is_numeric_key())
        .map(|t| (t.id, AtomicI64::new(next_key(max_numeric_key(t.id)))))
        .collect()
}

/// The first auto-increment key after `max`, the largest numeric key stored (1 with none).
pub fn next_key(max: Option<f64>) -> i64 {
    max.map_or(1, |m| (m.floor() as i64).saturating_add(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_ids() {
        assert_eq!(&etag(0x1234), b"\"0000000000001234\"");
        assert!(if_none_match_hits(
            Some(b"\"x\", \"0000000000001234\""),
            &etag(0x1234)
        ));
        let mut c = tessera_storage::Catalog::default();
        c.load_schema(
            "s",
            "type A @table { id: Long @primaryKey } type B @table { id: ID @primaryKey }",
        )
        .unwrap();
        assert_eq!(id_value(&c.tables[0], "42"), Value::Int(42));
        assert_eq!(id_value(&c.tables[0], "4x"), Value::String("4x".into()));
        assert_eq!(id_value(&c.tables[0], "1e3"), Value::String("1e3".into()));
        assert_eq!(id_value(&c.tables[1], "42"), Value::String("42".into()));
    }
}
