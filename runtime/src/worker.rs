//! One core's worker: what every protocol front on that core serves requests with. It holds the
//! shared application, the router to the shards, the core's authenticator and the wasm host, and
//! buffers reused by the requests the core handles one after another.

use std::cell::RefCell;
use std::sync::Arc;

use tessera_shards::Router;
use tessera_storage::validate::WriteMode;
use tessera_storage::{Table, Value};

use crate::app::Peer;
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

    /// The user a request with this `Authorization` value from `peer` is made by, or why there
    /// is none. `authorizeLocal` trusts loopback clients as the super user; a client certificate
    /// (mTLS) names its user, as Harper takes it, before any `Authorization`.
    pub async fn user(
        &self,
        authorization: Option<&[u8]>,
        peer: &Peer,
    ) -> Result<Arc<User>, Denied> {
        if self.app.settings.authorize_local && peer.loopback {
            return Ok(Arc::new(User::local()));
        }
        if let Some(name) = &peer.certificate_user {
            return self.auth.user_named(name);
        }
        self.auth.check(authorization.ok_or(Denied::Missing)?).await
    }

    /// [`Self::user`] where every refusal is "must log in" but a deactivated user's (REST,
    /// WebSocket and SSE).
    pub async fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        peer: &Peer,
    ) -> Result<Arc<User>, AppError> {
        self.user(authorization, peer).await.map_err(|d| match d {
            Denied::Inactive => AppError::Inactive,
            _ => AppError::Unauthorized,
        })
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

/// A kernel for unit tests, without sockets: one core over a fresh store in a temp directory.
#[cfg(test)]
pub mod testing {
    use std::future::Future;
    use std::path::Path;
    use std::rc::Rc;
    use std::sync::Arc;

    use tessera_shards::{ExecutorSettings, ShardSet, start_executors};
    use tessera_storage::layout::Layout;
    use tessera_storage::shard::{Durability, ShardOptions};
    use tessera_storage::{Catalog, Table};

    use super::Worker;
    use crate::app::settings::{RunArgs, Settings};
    use crate::app::{App, Tables};
    use crate::auth::Authenticator;
    use crate::auth::tokens::Tokens;
    use crate::auth::users::Users;

    /// The super user every test kernel has.
    pub const ADMIN: (&str, &str) = ("admin", "password");

    /// Runs `test` with a worker on one core whose application has the tables of `schema`
    /// (`schema.graphql` source) and the super user [`ADMIN`]. A panic in `test` fails the test.
    pub fn with_worker<F, Fut>(schema: &str, test: F)
    where
        F: Fn(Rc<Worker>) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let dir = tempfile::tempdir().expect("a temp dir");
        let app = application(dir.path(), schema);
        let data = dir.path().join("data");
        let users = Arc::new(Users::open(&data).expect("the user store"));
        users
            .ensure_super_user(ADMIN.0, ADMIN.1)
            .expect("a super user");
        let tokens = Arc::new(Tokens::open(&data, 3600, 7200).expect("the token key"));
        let wasm = Arc::new(
            crate::wasm::load(
                &[],
                app.tables.types(),
                &dir.path().join("wasm-cache"),
                app.settings.wasm,
            )
            .expect("an empty wasm host"),
        );
        let shards = Arc::new(
            ShardSet::open(&data, 1, ShardOptions::default(), Durability::Buffered)
                .expect("the shards"),
        );
        let exec = ExecutorSettings {
            threads: 1,
            preempt_timer: std::time::Duration::from_millis(5),
        };
        let app = Arc::new(app);
        let handles = start_executors(&exec, shards.clone(), move |ctx| {
            crate::realtime::follow(&ctx.router);
            let auth = Authenticator::new(users.clone(), tokens.clone());
            let worker = Rc::new(Worker::new(app.clone(), ctx.router, auth, wasm.clone()));
            test(worker)
        })
        .expect("an executor");
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
        shards.close().expect("closing the shards");
    }

    /// The application of `schema`, with its tables given ids in a fresh layout under `root`.
    fn application(root: &Path, schema: &str) -> App {
        let mut catalog = Catalog::default();
        catalog
            .load_schema("schema.graphql", schema)
            .expect("a valid schema");
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("the data directory");
        let mut layout = Layout::open_or_create(&data, 1).expect("a layout");
        layout.assign(&mut catalog).expect("table ids");
        let tables: Vec<Arc<Table>> = catalog.tables.into_iter().map(Arc::new).collect();
        let settings = Settings::resolve(RunArgs {
            apps: Vec::new(),
            root: Some(root.to_owned()),
            threads: Some(1),
            http_port: None,
            mqtt_port: None,
            ops_port: None,
            host: None,
            durability: Some("buffered".into()),
        })
        .expect("settings");
        App {
            settings,
            tables: Tables::new(layout, &tables, |_| None),
            cluster: Default::default(),
            sources: Default::default(),
        }
    }
}
