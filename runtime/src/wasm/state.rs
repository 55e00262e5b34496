//! What one request's guest sees: the application, the user, the request head, and the
//! request's transaction; and the errors the host gives the guest.

use std::sync::Arc;
use std::time::Instant;

use tessera_shards::Router;
use tessera_storage::shard::{WriteKind, WriteOp, now_micros, record_key};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Table, Value, value};
use wasmtime::StoreLimits;

use super::txn::Txn;
use super::types;
use crate::app::keys::{id_value, set_primary_key};
use crate::app::permissions::{Action, TablePermission, User};
use crate::app::records::{check_writable, readable_value};
use crate::app::{App, AppError, output};

/// The body (MessagePack) of a stored record, `None` when there is none or it has expired.
fn live_body(stored: Option<tessera_storage::Slice>) -> Result<Option<Vec<u8>>, AppError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    Ok(output::live_body(&stored, now_micros() / 1000)?.map(<[u8]>::to_vec))
}

/// What one request's guest sees and stages.
pub struct HostState {
    pub(super) limits: StoreLimits,
    app: Option<Arc<App>>,
    pub(super) user: Option<Arc<User>>,
    /// The request's head as received, parsed only if the guest asks for the headers.
    pub(super) head: Vec<u8>,
    /// When the request entered the guest: its time budget runs from here.
    pub(super) started: Instant,
    pub(super) txn: Txn,
}

impl HostState {
    /// A state with no request yet (the store that lists a module's resources at load has only
    /// this one).
    pub(super) fn new() -> Self {
        HostState {
            limits: StoreLimits::default(),
            app: None,
            user: None,
            head: Vec::new(),
            started: Instant::now(),
            txn: Txn::default(),
        }
    }

    /// Starts a request on this state: a new instance's, or a resting one's.
    pub(super) fn begin(&mut self, app: &Arc<App>, user: Option<Arc<User>>, head: Vec<u8>) {
        self.app = Some(app.clone());
        self.user = user;
        self.head = head;
        self.started = Instant::now();
        self.txn = Txn::default();
    }

    /// Ends the request on a state whose instance rests: nothing of the request stays with it
    /// on the host's side.
    pub(super) fn end(&mut self) {
        self.app = None;
        self.user = None;
        self.head = Vec::new();
    }
}

/// A guest-facing error.
pub(super) fn error(status: u16, message: impl Into<String>) -> types::Error {
    types::Error {
        status,
        message: message.into(),
    }
}

impl From<AppError> for types::Error {
    fn from(e: AppError) -> Self {
        let message = match &e {
            AppError::NoSuchRecord => "Not found".to_owned(),
            e => e.to_string(),
        };
        error(e.status(), message)
    }
}

/// The host side of the `tables` and `context` imports.
pub(super) struct HostCalls;

impl wasmtime::component::HasData for HostCalls {
    type Data<'a> = &'a mut HostState;
}

impl HostState {
    /// The application (absent in the store that lists a module's resources at load, and in
    /// those that compute attributes).
    pub(super) fn app(&self) -> Result<&Arc<App>, types::Error> {
        self.app.as_ref().ok_or_else(|| {
            error(
                500,
                "no tables here: computing an attribute, a resource has only the record",
            )
        })
    }

    /// What the request's user may do to `table`: refused (403) when its role does not allow
    /// `action` on it; otherwise the role's attribute limits (`None`: every attribute).
    pub(super) fn access(
        &self,
        table: &Table,
        action: Action,
    ) -> Result<Option<&TablePermission>, types::Error> {
        let Some(user) = &self.user else {
            return Err(error(401, "no user: the request is not authenticated"));
        };
        if user.super_user {
            return Ok(None);
        }
        let p = &user.permission;
        if !p.allows(&table.database, &table.name, action) {
            return Err(error(
                403,
                format!(
                    "{} may not {} {}.{}",
                    user.username,
                    action.name(),
                    table.database,
                    table.name
                ),
            ));
        }
        Ok(p.attribute_limits(&table.database, &table.name))
    }

    /// Refuses (403) a record, patch or increment naming an attribute the user's role may not
    /// write with `action`.
    pub(super) fn check_write(
        &self,
        table: &Table,
        action: Action,
        rec: &Value,
    ) -> Result<(), types::Error> {
        let limits = self.access(table, action)?;
        check_writable(table, limits, rec, action).map_err(types::Error::from)
    }

    /// A record (MessagePack) as the user's role may read it (`limits` from [`Self::access`]).
    pub(super) fn readable(
        table: &Table,
        limits: Option<&TablePermission>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, types::Error> {
        match limits {
            None => Ok(body),
            Some(perm) => Ok(readable_value(table, perm, &body)?.to_msgpack()),
        }
    }

    pub(super) fn table(&self, name: &str) -> Result<Arc<Table>, types::Error> {
        self.app()?
            .tables
            .types()
            .get(name)
            .cloned()
            .ok_or_else(|| error(404, format!("no table {name}")))
    }

    /// The stored key of a MessagePack id in `table` (a string id converts to a numeric key type
    /// as a URL id does).
    pub(super) fn key(table: &Table, id: &[u8]) -> Result<(Value, Vec<u8>), types::Error> {
        let id = value::from_msgpack(id).map_err(|e| error(400, format!("bad id: {e}")))?;
        let id = match id {
            Value::String(s) => id_value(table, &s),
            other => other,
        };
        let key = record_key(table.id, &id).map_err(|e| error(400, format!("bad id: {e}")))?;
        Ok((id, key))
    }

    /// The record as this request sees it: its own write, else the stored one.
    pub(super) fn current(&self, key: &[u8]) -> Result<Option<Value>, types::Error> {
        if let Some(seen) = self.txn.seen.get(key) {
            return Ok(seen.clone());
        }
        self.committed(key)?
            .map(|body| output::body_value(&body))
            .transpose()
            .map_err(types::Error::from)
    }

    /// The stored body (MessagePack) of the record at `key` as last committed; `None` when there
    /// is none or it has expired.
    pub(super) fn committed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, types::Error> {
        // Read in place, whichever core owns the key's shard.
        let found = Router::with_local(|router| router.get(key));
        found
            .ok_or_else(|| error(503, "the core is shutting down"))?
            .map_err(AppError::from)
            .and_then(live_body)
            .map_err(types::Error::from)
    }

    /// The record as this request sees it, or a new one holding just its primary key: what a
    /// patch or an increment starts from.
    pub(super) fn current_or_new(
        &self,
        table: &Table,
        key: &[u8],
        pk: Value,
    ) -> Result<Value, types::Error> {
        Ok(self
            .current(key)?
            .unwrap_or_else(|| Value::Object(vec![(table.primary_key().name.clone(), pk)])))
    }

    pub(super) fn stage(
        &mut self,
        table: Arc<Table>,
        key: Vec<u8>,
        kind: WriteKind,
        now: Option<Value>,
    ) {
        self.txn.seen.insert(key.clone(), now);
        self.txn.writes.push(WriteOp {
            table,
            key,
            kind,
            from: None,
        });
    }

    /// Decodes a record or change set from the guest; it must be a map.
    pub(super) fn object(bytes: &[u8]) -> Result<Value, types::Error> {
        match value::from_msgpack(bytes) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(other) => Err(error(
                400,
                format!("a record must be an object, not {}", other.kind()),
            )),
            Err(e) => Err(error(400, format!("bad record: {e}"))),
        }
    }

    pub(super) fn put_record(
        &mut self,
        table: Arc<Table>,
        pk: Value,
        mut rec: Value,
        action: Action,
    ) -> Result<(), types::Error> {
        self.check_write(&table, action, &rec)?;
        set_primary_key(&mut rec, &table.primary_key().name, pk.clone());
        check_record(&table, &mut rec, WriteMode::Replace)
            .map_err(|e| error(400, e.to_string()))?;
        let key = record_key(table.id, &pk).map_err(|e| error(400, format!("bad id: {e}")))?;
        self.app()?.tables.saw_key(&table, &pk);
        self.stage(table, key, WriteKind::Put(rec.clone()), Some(rec));
        Ok(())
    }
}
