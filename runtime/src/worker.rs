//! One core's worker: what every protocol front on that core serves requests with. It holds the
//! shared application, the router to the shards, the core's authenticator and the wasm host, and
//! buffers reused by the requests the core handles one after another.

use std::cell::RefCell;
use std::sync::Arc;

use tessera_shards::Router;
use tessera_storage::validate::WriteMode;
use tessera_storage::{Table, Value};

use crate::app::permissions::User;
use crate::app::{App, AppError, records};
use crate::auth::{Authenticator, Denied};
use crate::data::related;
use crate::wasm::WasmHost;

pub struct Worker {
    pub app: Arc<App>,
    pub router: Router,
    pub auth: Authenticator,
    /// The application's WebAssembly resources.
    pub wasm: Arc<WasmHost>,
    /// A response body's buffer, for answers that are built whole.
    pub scratch: RefCell<Vec<u8>>,
    /// simd-json's parse buffers, reused from one request body to the next.
    pub json_buffers: RefCell<simd_json::Buffers>,
}

impl Worker {
    pub fn new(app: Arc<App>, router: Router, auth: Authenticator, wasm: Arc<WasmHost>) -> Worker {
        Worker {
            app,
            router,
            auth,
            wasm,
            scratch: RefCell::new(Vec::with_capacity(4096)),
            json_buffers: RefCell::new(simd_json::Buffers::default()),
        }
    }

    /// The user a request with this `Authorization` value is made by, or why there is none.
    /// `authorizeLocal` trusts loopback clients as the super user.
    pub async fn user(
        &self,
        authorization: Option<&[u8]>,
        from_loopback: bool,
    ) -> Result<Arc<User>, Denied> {
        if self.app.settings.authorize_local && from_loopback {
            return Ok(Arc::new(User::local()));
        }
        self.auth.check(authorization.ok_or(Denied::Missing)?).await
    }

    /// [`Self::user`] where every refusal is "must log in" (REST, WebSocket and SSE).
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        from_loopback: bool,
    ) -> Result<Arc<User>, AppError> {
        self.user(authorization, from_loopback)
            .await
            .map_err(|_| AppError::Unauthorized)
    }

    /// Validates and commits a record (see [`records::write_record`]).
    pub async fn write_record(
        &self,
        table: &Arc<Table>,
        rec: Value,
        pk: Value,
        mode: WriteMode,
    ) -> Result<Value, AppError> {
        records::write_record(&self.app, &self.router, table, rec, pk, mode).await
    }

    /// What relationship lookups need.
    pub fn related(&self) -> related::Ctx<'_> {
        related::Ctx {
            router: &self.router,
            types: self.app.tables.types(),
        }
    }
}
