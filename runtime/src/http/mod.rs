//! The HTTP front: tables and wasm resources as REST resources, Server-Sent Events, WebSocket
//! subscriptions and the OpenAPI document, on the HTTP port.
//!
//! A request is authenticated, its resource resolved, its response type negotiated, and then
//! served: by-key operations go to the owner shard through the router, collections are gathered
//! from every shard and merged here, on the connection's core. Stored records answer MessagePack
//! requests as they are and are transcoded to JSON without building a tree.
//!
//! Files: `records.rs` (one record: GET, PUT, PATCH, POST, DELETE), `collections.rs` (queries
//! and collection deletes), `resource.rs` (wasm resources), `sse.rs`, `websocket.rs`,
//! `openapi.rs`, `error.rs` (an [`AppError`] as a status and body).

mod collections;
mod error;
mod graphql;
mod openapi;
mod records;
mod resource;
mod sse;
mod websocket;

use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use tessera_protocol::MediaType;
use tessera_protocol::http::{Method, Request};
use tessera_protocol::media::negotiate;
use tessera_protocol::rest::{PathKind, Target, parse_target};
use tessera_storage::validate::WriteMode;
use tessera_storage::{Table, Value};

use crate::app::AppError;
use crate::app::Peer;
use crate::app::output::encode_value;
use crate::app::permissions::{Action, User};
use crate::data::query;
use crate::net::http::Handler;
use crate::net::reply::Reply;
use crate::realtime::{self, Pattern, Scope};
use crate::wasm::WasmResource;
use crate::worker::Worker;

/// Response types this build can produce.
const OFFERED: &[MediaType] = &[
    MediaType::Json,
    MediaType::MsgPack,
    MediaType::Cbor,
    MediaType::Yaml,
    MediaType::Csv,
];
const ALLOW_ALL: &[u8] = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, QUERY, COPY, MOVE";
const ALLOW_TABLE: &str = "GET, HEAD, OPTIONS";
const ALLOW_RECORD: &str = "GET, HEAD, PUT, PATCH, DELETE, OPTIONS";
const ALLOW_COLLECTION: &str = "GET, HEAD, POST, DELETE, OPTIONS";
const ALLOW_GRAPHQL: &str = "GET, POST, OPTIONS";
const ALLOW_RESOURCE: &str = "GET, HEAD, PUT, PATCH, POST, DELETE, OPTIONS";
/// The content type of a Server-Sent Events stream.
const EVENT_STREAM: (&str, &[u8]) = ("Content-Type", b"text/event-stream");

/// The REST front on one core.
pub struct Rest {
    worker: Rc<Worker>,
}

impl Rest {
    pub fn new(worker: Rc<Worker>) -> Rest {
        Rest { worker }
    }
}

impl Deref for Rest {
    type Target = Worker;
    fn deref(&self) -> &Worker {
        &self.worker
    }
}

impl Handler for Rest {
    async fn handle(&self, req: &Request<'_>, body: &mut [u8], peer: &Peer, reply: &mut Reply<'_>) {
        let mut fmt = MediaType::Json;
        if let Err(e) = self.route(req, body, peer, &mut fmt, reply).await {
            error::send(reply, &e, fmt);
        }
    }
}

/// The table permission a method needs.
fn action_of(method: Method) -> Action {
    match method {
        Method::Post => Action::Insert,
        Method::Put | Method::Patch => Action::Update,
        Method::Delete => Action::Delete,
        _ => Action::Read,
    }
}

impl Rest {
    /// Serves one request; `fmt` is set to the negotiated response type as soon as it is known,
    /// for the error answer.
    async fn route(
        &self,
        req: &Request<'_>,
        body: &mut [u8],
        peer: &Peer,
        fmt: &mut MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        if req.method == Method::Other {
            return Err(AppError::NotImplemented("Method not implemented".into()));
        }
        let target = parse_target(req.target).map_err(|e| AppError::BadRequest(e.to_string()))?;
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
                websocket::serve_mqtt(self, peer, reply.conn, reply.out, key).await;
            } else {
                websocket::serve(self, req, target, peer, reply.conn, reply.out).await;
            }
            reply.keep_alive = false;
            return Ok(());
        }
        let event_stream = req.method == Method::Get
            && req.accept.is_some_and(|a| a.trim() == "text/event-stream");
        let user = match self.authenticate(req.authorization, peer).await {
            Ok(user) => user,
            // SSE clients get the error as an event.
            Err(_) if event_stream => {
                reply.send(
                    401,
                    None,
                    &[EVENT_STREAM],
                    b"data: AccessViolation: Must login\n\n",
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if target.resource == "openapi"
            && target.path == PathKind::Table
            && self.app.tables.export("openapi").is_none()
        {
            return self.serve_openapi(req, reply);
        }
        if target.resource == "graphql"
            && target.path == PathKind::Table
            && self.app.settings.graphql
            && self.app.tables.export("graphql").is_none()
        {
            if !matches!(req.method, Method::Get | Method::Post) {
                return Err(AppError::MethodNotAllowed(ALLOW_GRAPHQL));
            }
            let query = target.query.unwrap_or("");
            self.graphql(req.method == Method::Get, query, body, &user, reply)
                .await;
            return Ok(());
        }
        let wasm = self.wasm.resource(&target.resource);
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
            return Err(AppError::MethodNotAllowed(ALLOW_RESOURCE));
        }
        let table = match wasm {
            Some(res) => res.extends.as_ref(),
            None => self.app.tables.export(target.resource.as_ref()),
        }
        .ok_or(AppError::NoSuchResource)?;
        let asked = TableRequest {
            req,
            target,
            user: &user,
            event_stream,
        };
        self.serve_table(table, wasm, asked, body, fmt, reply).await
    }

    /// `GET /openapi`: the OpenAPI document of the exported tables.
    fn serve_openapi(&self, req: &Request<'_>, reply: &mut Reply<'_>) -> Result<(), AppError> {
        if !matches!(req.method, Method::Get | Method::Head) {
            return Err(AppError::MethodNotAllowed(ALLOW_TABLE));
        }
        let origin = format!("http://{}", req.host.unwrap_or("localhost"));
        let tables = &self.app.tables;
        let doc = openapi::document(&origin, tables.exports(), tables.types());
        let body = serde_json::to_vec(&doc).map_err(|e| AppError::Internal(e.to_string()))?;
        reply.send(200, Some(MediaType::Json), &[], &body);
        Ok(())
    }

    /// Serves a request for a table (or a wasm resource extending it) once the role's table
    /// permission allows what the method does.
    async fn serve_table(
        &self,
        table: &Arc<Table>,
        wasm: Option<&Arc<WasmResource>>,
        asked: TableRequest<'_, '_, '_>,
        body: &mut [u8],
        fmt: &mut MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        let TableRequest {
            req,
            target,
            user,
            event_stream,
        } = asked;
        let action = action_of(req.method);
        if !user.permission.allows(&table.database, &table.name, action) {
            if event_stream {
                let refusal = b"data: AccessViolation: Unauthorized access to resource\n\n";
                reply.send(403, None, &[EVENT_STREAM], refusal);
                return Ok(());
            }
            return Err(AppError::Forbidden);
        }
        if event_stream {
            let scope = match target.path {
                PathKind::Record(id) => Scope::Record(id),
                PathKind::Collection(p) if p.is_empty() => {
                    Scope::Pattern(Pattern(vec!["#".to_owned()]))
                }
                _ => return Err(AppError::MethodNotAllowed(ALLOW_RECORD)),
            };
            let since = realtime::since_of(target.query);
            return self.event_stream(table, scope, since, user, reply).await;
        }
        *fmt = negotiated(target.format, req.accept)?;
        // A resource extending the table serves what it overrides; the rest is the table's.
        if let Some(res) = wasm {
            let query = target.query.unwrap_or("");
            if self
                .serve_wasm(res, req, body, &target.path, query, user, *fmt, reply)
                .await?
            {
                return Ok(());
            }
        }
        self.table_method(table, req, target, body, user, *fmt, reply)
            .await
    }

    /// A table's own answer to each method and path.
    #[allow(clippy::too_many_arguments)]
    async fn table_method(
        &self,
        table: &Arc<Table>,
        req: &Request<'_>,
        target: Target<'_>,
        body: &mut [u8],
        user: &Arc<User>,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        // A role with attribute permissions sees and writes only the attributes it lists.
        let restricted = user
            .permission
            .attribute_limits(&table.database, &table.name);
        let query = target.query.filter(|q| !q.is_empty());
        let confirm = match req.method {
            Method::Put | Method::Patch | Method::Post | Method::Delete => confirmation(req.head)?,
            _ => 0,
        };
        // A write asking for confirmation is answered once `confirm` other nodes applied it:
        // its reply is kept back until then, and replaced by the error if they do not in time.
        let mark = reply.out.len();
        self.answer_table(
            table, req, target, query, body, user, restricted, fmt, reply,
        )
        .await?;
        if let Err(e) = self.app.cluster.confirm(confirm).await {
            reply.out.truncate(mark);
            return Err(e);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn answer_table(
        &self,
        table: &Arc<Table>,
        req: &Request<'_>,
        target: Target<'_>,
        query: Option<&str>,
        body: &mut [u8],
        user: &Arc<User>,
        restricted: Option<&crate::app::permissions::TablePermission>,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        match (req.method, target.path) {
            (Method::Get | Method::Head, PathKind::Table) => {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                let mut description = table.describe(0);
                if self.app.sources.of(table.id).is_some() {
                    self.app
                        .sources
                        .describe_into(table.id, &mut description, "sources");
                }
                encode_value(&description, fmt, &mut buf);
                reply.send(200, Some(fmt), &[], &buf);
                Ok(())
            }
            (_, PathKind::Table) => Err(AppError::MethodNotAllowed(ALLOW_TABLE)),
            (Method::Get | Method::Head, PathKind::Collection(prefix)) => {
                let query = query.unwrap_or("");
                self.get_collection(table, &prefix, query, fmt, restricted, reply)
                    .await
            }
            (Method::Post, PathKind::Collection(prefix)) if prefix.is_empty() => {
                self.post(table, req, body, fmt, user, restricted, reply)
                    .await
            }
            (Method::Delete, PathKind::Collection(prefix)) => {
                self.delete_collection(table, &prefix, query.unwrap_or(""), fmt, reply)
                    .await
            }
            (_, PathKind::Collection(_)) => Err(AppError::MethodNotAllowed(ALLOW_COLLECTION)),
            (Method::Get | Method::Head, PathKind::Record(id)) => {
                let select = match query {
                    Some(q) => query::select(table, q)?,
                    None => None,
                };
                self.get_record(
                    table,
                    &id,
                    req,
                    select.as_ref(),
                    fmt,
                    user,
                    restricted,
                    reply,
                )
                .await
            }
            (Method::Put, PathKind::Record(id)) => {
                let mode = WriteMode::Replace;
                self.put(table, &id, req, body, mode, user, restricted, reply)
                    .await
            }
            (Method::Patch, PathKind::Record(id)) => {
                let mode = WriteMode::Patch;
                self.put(table, &id, req, body, mode, user, restricted, reply)
                    .await
            }
            (Method::Delete, PathKind::Record(id)) => {
                self.delete_record(table, &id, fmt, user, reply).await
            }
            (_, PathKind::Record(_)) => Err(AppError::MethodNotAllowed(ALLOW_RECORD)),
        }
    }
}

/// How many other nodes must confirm a write before it is answered: `confirm=N` of Harper's
/// `X-Replicate-To` header (`X-Replicate-To: 2;confirm=1`); 0 without one. Every node holds
/// every record here, so the header's first number (how many nodes to send to) is not used.
fn confirmation(head: &[u8]) -> Result<usize, AppError> {
    const NAME: &[u8] = b"x-replicate-to:";
    let Some(line) = head
        .split(|b| *b == b'\n')
        .find(|l| l.len() > NAME.len() && l[..NAME.len()].eq_ignore_ascii_case(NAME))
    else {
        return Ok(0);
    };
    let value = std::str::from_utf8(&line[NAME.len()..]).unwrap_or_default();
    let bad = || AppError::BadRequest(format!("bad X-Replicate-To header: {}", value.trim()));
    let mut confirm = 0;
    for (i, part) in value.split(';').map(str::trim).enumerate() {
        match part.split_once('=') {
            Some(("confirm", n)) => confirm = n.trim().parse().map_err(|_| bad())?,
            None if i == 0 && (part == "*" || part.parse::<u32>().is_ok()) => {}
            _ => return Err(bad()),
        }
    }
    Ok(confirm)
}

/// What an authenticated request asks of a table.
struct TableRequest<'q, 'r, 'u> {
    req: &'q Request<'r>,
    target: Target<'q>,
    user: &'u Arc<User>,
    event_stream: bool,
}

/// The response type: the URL's suffix, else the best of `Accept` this build offers.
fn negotiated(format: Option<MediaType>, accept: Option<&str>) -> Result<MediaType, AppError> {
    match format {
        Some(f) if OFFERED.contains(&f) => Ok(f),
        Some(_) => Err(AppError::NotAcceptable),
        None => negotiate(accept, OFFERED).ok_or(AppError::NotAcceptable),
    }
}

fn send_true(reply: &mut Reply<'_>, fmt: MediaType) {
    let mut b = Vec::with_capacity(4);
    encode_value(&Value::Bool(true), fmt, &mut b);
    reply.send(200, Some(fmt), &[], &b);
}
