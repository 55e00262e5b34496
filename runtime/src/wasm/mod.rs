//! The WebAssembly host (DESIGN.md, "WebAssembly resources"): custom resources written in Rust
//! with `tessera-wasm-sdk`, compiled to `wasm32-unknown-unknown`, served like Harper's
//! `jsResource` classes.
//!
//! One [`Engine`] and one pre-linked component per module, shared by every core; compiled
//! artifacts are cached under `<root>/wasm-cache/`, keyed by the module's bytes and the engine.
//! Each request runs on an instance in its just-instantiated state: one from the pooling
//! allocator, or one an earlier request used and [`rewind`] put back (a kept one, as it is, for
//! resources that opt in). It has its own memory limit and a time budget enforced by epoch
//! interruption: the guest yields to the core's other work every tick and traps past its budget.
//!
//! The guest's table calls go through the request's transaction ([`Txn`]): writes are staged
//! (validated as they come) and read back by later reads of the same request, and are committed
//! together through [`Router::transact`] when the verb returns `Ok`: atomically across shards.
//! A failure, trap or timeout drops them.
//!
//! wasmtime needs `Send` host state; glommio's objects are not. The host state holds only `Send`
//! data, and a host call that needs the core's [`Router`] spawns a local task on the core it runs
//! on (the guest runs on a fiber of the request's task, so that is always the request's core)
//! and awaits its answer over a `Send` oneshot.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::channel::oneshot;
use tessera_protocol::query::{Limit, Query};
use tessera_shards::Router;
use tessera_storage::query::{Pred, sort_key};
use tessera_storage::shard::{WriteKind, WriteOp, now_micros, record_key, table_prefix};
use tessera_storage::validate::{WriteMode, check_record};
use tessera_storage::{Table, Value, value};
use wasmtime::component::{Component, ComponentExportIndex, Func, Linker, TypedFunc};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};

use crate::error::RestError;
use crate::output;
use crate::query;
use crate::related::Joins;
use crate::rest::{Shared, id_value, set_primary_key};

mod rewind;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wasm-sdk/wit",
        world: "resource-module",
        imports: { default: async },
        exports: { default: async },
    });
}

use bindings::ResourceModulePre;
pub use bindings::tessera::wasm::types::Method;
use bindings::tessera::wasm::types::{self, Outcome, Request};
use bindings::tessera::wasm::{context, tables};

/// How often the epoch advances: a running guest yields to the core's other work this often.
const TICK: Duration = Duration::from_millis(5);
/// Instances that may exist at once in the whole process (the pooling allocator's size).
const POOL_INSTANCES: u32 = 512;
/// The memory (in 64 KiB pages) past which a used instance is dropped rather than rewound, so
/// that one request's growth does not stay resident.
const RESTING_PAGES: u32 = 64;
/// Bytes of a released instance's memory (and table, and fiber stack) reset in place.
const KEEP_RESIDENT: usize = 256 << 10;

/// Limits every instance runs under (`wasm.timeout`, `wasm.memory` in `tessera.yaml`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall time one request may spend in the guest.
    pub budget: Duration,
    /// Linear memory one instance may grow to.
    pub memory: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            budget: Duration::from_secs(1),
            memory: 64 << 20,
        }
    }
}

/// One loaded module: the file it came from and its pre-linked component.
struct Module {
    file: PathBuf,
    pre: ResourceModulePre<HostState>,
    /// Where the component exports `handler.handle`, whose type [`list_resources`] checked.
    handle: ComponentExportIndex,
    /// Where it exports `rewind.rewind`, when the host instrumented it ([`rewind`]).
    rewind: Option<ComponentExportIndex>,
}

/// The interface every resource module exports (the `resource-module` world's export).
const HANDLER: &str = "tessera:wasm/handler@0.1.0";

/// The parameters and results of `handler.handle` as the host calls it.
type HandleParams<'a> = (&'a Request,);
type HandleResults = (Result<Outcome, types::Error>,);
/// `handler.handle` as the host calls it.
type Handle<'a> = TypedFunc<HandleParams<'a>, HandleResults>;
/// `rewind.rewind` as the host calls it: the memory's size in 64 KiB pages after.
type Rewind = TypedFunc<(), (u32,)>;

impl Module {
    /// The `handle` export of an instance of this module, without checking its type again:
    /// the check is a walk over the request and outcome types that would cost every request
    /// (instantiated afresh by default) about a microsecond.
    #[allow(unsafe_code)]
    fn handle<'a>(&self, func: Func) -> Handle<'a> {
        // SAFETY: `func` is the `handle` export of an instance of this module's component, and
        // `list_resources` checked (`get_typed_func`) that this export has exactly the type
        // `Handle` when the module was loaded; a component's export types do not change.
        unsafe { Handle::new_unchecked(func) }
    }

    /// The `rewind` export of an instance of this module (see [`Module::handle`]).
    #[allow(unsafe_code)]
    fn rewind(&self, func: Func) -> Rewind {
        // SAFETY: as for `handle`: `list_resources` checked this export's type.
        unsafe { Rewind::new_unchecked(func) }
    }
}

/// An exported resource of a module.
pub struct WasmResource {
    pub name: String,
    /// The table it extends, if any.
    pub extends: Option<Arc<Table>>,
    reuse: bool,
    module: Arc<Module>,
    index: u32,
    /// Verbs the guest does not override (learnt from its answers): served natively.
    fallback: [AtomicBool; 7],
}

impl WasmResource {
    /// Whether the guest is known not to override `method`.
    pub fn falls_back(&self, method: Method) -> bool {
        self.fallback[method as usize].load(Ordering::Relaxed)
    }

    /// Where errors are reported: the resource and its file.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.file().display())
    }

    /// The module it comes from.
    pub fn file(&self) -> &Path {
        &self.module.file
    }
}

/// Every wasm resource of the application.
pub struct WasmHost {
    engine: Engine,
    limits: Limits,
    resources: HashMap<String, Arc<WasmResource>>,
}

impl WasmHost {
    /// The resource served at `/name/`, if any.
    pub fn resource(&self, name: &str) -> Option<&Arc<WasmResource>> {
        self.resources.get(name)
    }

    /// Every resource, by name.
    pub fn resources(&self) -> impl Iterator<Item = &Arc<WasmResource>> {
        let mut all: Vec<_> = self.resources.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }
}

/// Loads the wasm resources of the application's components: `files` are `.wasm` files (core
/// modules built with the SDK, or components). Fails naming the file for anything wrong with one.
pub fn load(
    files: &[PathBuf],
    tables: &HashMap<String, Arc<Table>>,
    cache: &Path,
    limits: Limits,
) -> anyhow::Result<WasmHost> {
    let engine = engine(limits)?;
    let mut linker: Linker<HostState> = Linker::new(&engine);
    tables::add_to_linker::<_, HostCalls>(&mut linker, |s| s)?;
    context::add_to_linker::<_, HostCalls>(&mut linker, |s| s)?;
    let mut resources = HashMap::new();
    for file in files {
        let (component, rewindable) = compile(&engine, file, cache)?;
        let pre = linker
            .instantiate_pre(&component)
            .and_then(ResourceModulePre::new)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!(
                    "{}: not a Tessera resource module (the tessera:wasm/resource-module world)",
                    file.display()
                )
            })?;
        let handle = component
            .get_export_index(None, HANDLER)
            .and_then(|i| component.get_export_index(Some(&i), "handle"))
            .with_context(|| format!("{}: exports no {HANDLER}.handle", file.display()))?;
        let rewind = component
            .get_export_index(None, rewind::INTERFACE)
            .and_then(|i| component.get_export_index(Some(&i), "rewind"))
            .filter(|_| rewindable);
        let infos = list_resources(&engine, &pre, &handle, rewind.as_ref(), limits);
        let infos = futures::executor::block_on(infos)
            .with_context(|| format!("{}: listing its resources", file.display()))?;
        if infos.is_empty() {
            bail!("{}: exports no resource", file.display());
        }
        let module = Arc::new(Module {
            file: file.clone(),
            pre,
            handle,
            rewind,
        });
        for (index, info) in infos.into_iter().enumerate() {
            let extends = match &info.extends {
                None => None,
                Some(t) => Some(tables.get(t).cloned().with_context(|| {
                    format!(
                        "{}: resource {} extends {t}, which is not a table",
                        file.display(),
                        info.name
                    )
                })?),
            };
            if info.name.is_empty() || info.name.contains(['/', '?', '#']) {
                bail!("{}: bad resource name {:?}", file.display(), info.name);
            }
            let resource = WasmResource {
                name: info.name.clone(),
                extends,
                reuse: info.reuse,
                module: module.clone(),
                index: index as u32,
                fallback: Default::default(),
            };
            if resources
                .insert(info.name.clone(), Arc::new(resource))
                .is_some()
            {
                bail!(
                    "{}: resource {} is exported twice",
                    file.display(),
                    info.name
                );
            }
        }
    }
    if !resources.is_empty() {
        let ticker = engine.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticker.increment_epoch();
                }
            })?;
    }
    Ok(WasmHost {
        engine,
        limits,
        resources,
    })
}

fn engine(limits: Limits) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    // The dirty map of an instrumented module is its second memory ([`rewind`]).
    config.wasm_multi_memory(true);
    // Data segments are copied in (a few KiB for a Rust guest) rather than mapped copy-on-write:
    // with the first pages kept resident, a fresh instance then takes no page faults at all.
    config.memory_init_cow(false);
    // Explicit bounds checks instead of guard pages and signal handlers: a pooled memory slot
    // then keeps its read-write pages from one instance to the next, so a fresh instance per
    // request costs no mprotect (and no TLB shootdown across cores) when the guest grows its
    // memory. The checks cost a compare per load and store in the guest's short calls.
    config.signals_based_traps(false);
    config.memory_guard_size(0);
    // Function table entries are filled on first use (wasmtime's default): a request calls
    // through few of them, and filling the whole table at instantiation cost a fresh instance
    // about 5.7 us (criterion `instantiate`: 14.6 -> 8.9 us; Fresh GET 72.5 -> 69 us CPU each).
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES)
        .total_memories(2 * POOL_INSTANCES)
        .max_memories_per_module(2)
        .total_tables(POOL_INSTANCES)
        .total_stacks(POOL_INSTANCES)
        .max_memory_size(limits.memory)
        // Reset the first pages of a released instance's memory, table and stack with memset
        // rather than madvise: no page faults on the next instance's first touches and no
        // TLB shootdowns across cores (a fresh instance per request is the default).
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT / 16)
        .async_stack_keep_resident(KEEP_RESIDENT / 4)
        // Where the kernel has PAGEMAP_SCAN (6.7+), only the pages the guest wrote are reset.
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(Engine::new(&config)?)
}

/// The compiled component of `file`, from the cache when the same bytes were compiled by a
/// compatible engine before, and whether its instances can be rewound ([`rewind`]).
fn compile(engine: &Engine, file: &Path, cache: &Path) -> anyhow::Result<(Component, bool)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let key = format!(
        "{:016x}-{:016x}",
        xxhash_rust::xxh3::xxh3_64(&bytes),
        compat.finish()
    );
    // The same bytes are always instrumented, or always not: the name says which.
    let name = |rewound: bool| {
        let how = if rewound { "rewound" } else { "fresh" };
        cache.join(format!("{key}-{how}{}.cwasm", rewind::VERSION))
    };
    for rewound in [true, false] {
        if name(rewound).is_file()
            && let Ok(c) = deserialize(engine, &name(rewound))
        {
            return Ok((c, rewound));
        }
    }
    let mut rewound = false;
    let component = if is_core_module(&bytes) {
        let module = match rewind::instrument(&bytes) {
            Ok(module) => {
                rewound = true;
                module
            }
            Err(why) => {
                eprintln!(
                    "wasm: {}: a fresh instance for every request, as it cannot be rewound: {why:#}",
                    file.display()
                );
                bytes
            }
        };
        wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| e.validate(true).encode())
            .with_context(|| {
                format!(
                    "{}: not a WebAssembly module built with tessera-wasm-sdk",
                    file.display()
                )
            })?
    } else {
        bytes
    };
    let compiled = engine
        .precompile_component(&component)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{}: not a valid WebAssembly component", file.display()))?;
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cached = name(rewound);
    let tmp = cached.with_extension("tmp");
    std::fs::write(&tmp, &compiled).and_then(|_| std::fs::rename(&tmp, &cached))?;
    Ok((deserialize(engine, &cached)?, rewound))
}

/// Loads a compiled artifact this process's engine wrote.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, file: &Path) -> anyhow::Result<Component> {
    // SAFETY: the file is one `compile` wrote with `precompile_component` into the server's own
    // cache directory, named by the engine's compatibility hash, so it is a wasmtime artifact
    // for this engine; wasmtime still checks its header and version.
    Ok(unsafe { Component::deserialize_file(engine, file) }?)
}

/// Whether `bytes` is a core module (version 1), not a component.
fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// The resources a module exports, after checking that its `handle` export (at `handle`) has
/// the type [`Handle`], and its `rewind` export the type [`Rewind`] (see [`Module::handle`]).
async fn list_resources(
    engine: &Engine,
    pre: &ResourceModulePre<HostState>,
    handle: &ComponentExportIndex,
    rewind: Option<&ComponentExportIndex>,
    limits: Limits,
) -> anyhow::Result<Vec<types::ResourceInfo>> {
    let mut store = new_store(engine, HostState::new(), limits);
    let instance = pre.instance_pre().instantiate_async(&mut store).await?;
    instance.get_typed_func::<HandleParams, HandleResults>(&mut store, handle)?;
    if let Some(rewind) = rewind {
        instance.get_typed_func::<(), (u32,)>(&mut store, rewind)?;
    }
    let module = bindings::ResourceModule::new(&mut store, &instance)?;
    Ok(module
        .tessera_wasm_handler()
        .call_resources(&mut store)
        .await?)
}

fn new_store(engine: &Engine, state: HostState, limits: Limits) -> Store<HostState> {
    let mut state = state;
    state.limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(1);
    let budget = limits.budget;
    store.epoch_deadline_callback(move |cx| {
        if cx.data().started.elapsed() > budget {
            return Err(wasmtime::Error::msg(format!(
                "ran out of its time budget ({} ms)",
                budget.as_millis()
            )));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

thread_local! {
    /// Instances waiting on this core for their next request, by module and by whether they
    /// were kept as they are (resources that opted into reuse) or rewound (the others).
    static RESTING: RefCell<HashMap<(usize, bool), Vec<Resting>>> = RefCell::new(HashMap::new());
}

/// An instance kept for the next request.
struct Resting {
    store: Store<HostState>,
    handle: Func,
    /// Its `rewind` export, for instances a request does not keep as they are.
    rewind: Option<Func>,
}

/// Runs `f` with the core's router as a task on this core; the answer arrives over a `Send`
/// channel, so the host call awaiting it stays `Send`.
fn on_core<T, F, Fut>(f: F) -> oneshot::Receiver<T>
where
    T: Send + 'static,
    F: FnOnce(Router) -> Fut + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (tx, rx) = oneshot::channel();
    if let Some(router) = Router::with_local(Router::clone) {
        glommio::spawn_local(async move {
            let _ = tx.send(f(router).await);
        })
        .detach();
    }
    rx
}

/// The body (MessagePack) of a stored record, `None` when there is none or it has expired.
fn live_body(stored: Option<tessera_storage::Slice>) -> Result<Option<Vec<u8>>, RestError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    Ok(output::live_body(&stored, now_micros() / 1000)?.map(<[u8]>::to_vec))
}

/// What one request's guest sees and stages.
pub struct HostState {
    limits: StoreLimits,
    shared: Option<Arc<Shared>>,
    user: Option<String>,
    /// The request's head as received, parsed only if the guest asks for the headers.
    head: Vec<u8>,
    /// When the request entered the guest: its time budget runs from here.
    started: Instant,
    txn: Txn,
}

impl HostState {
    /// A state with no request yet (the store that lists a module's resources at load has only
    /// this one).
    fn new() -> Self {
        HostState {
            limits: StoreLimits::default(),
            shared: None,
            user: None,
            head: Vec::new(),
            started: Instant::now(),
            txn: Txn::default(),
        }
    }

    /// Starts a request on this state: a new instance's, or a resting one's.
    fn begin(&mut self, shared: &Arc<Shared>, user: Option<String>, head: Vec<u8>) {
        self.shared = Some(shared.clone());
        self.user = user;
        self.head = head;
        self.started = Instant::now();
        self.txn = Txn::default();
    }

    /// Ends the request on a state whose instance rests: nothing of the request stays with it
    /// on the host's side.
    fn end(&mut self) {
        self.shared = None;
        self.user = None;
        self.head = Vec::new();
    }
}

/// The request's transaction: writes staged in order, and each written record as this request
/// sees it now (`None`: deleted).
#[derive(Default)]
struct Txn {
    writes: Vec<WriteOp>,
    seen: HashMap<Vec<u8>, Option<Value>>,
    /// Messages to publish once the writes commit.
    messages: Vec<WriteOp>,
}

impl Txn {
    /// The writes to commit: one per record. Increments alone stay increments (they must not
    /// lose concurrent ones); plain patches stay patches; anything else becomes the record as
    /// this request last saw it.
    fn into_ops(self) -> (Vec<WriteOp>, Vec<WriteOp>) {
        let mut merged: HashMap<Vec<u8>, WriteOp> = HashMap::with_capacity(self.writes.len());
        for op in self.writes {
            let Some(earlier) = merged.get_mut(&op.key) else {
                merged.insert(op.key.clone(), op);
                continue;
            };
            match (&mut earlier.kind, op.kind) {
                (WriteKind::Add(sum), WriteKind::Add(deltas)) => {
                    for (name, d) in deltas {
                        match sum.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, total)) => *total = value::add_numbers(Some(total), &d),
                            None => sum.push((name, d)),
                        }
                    }
                }
                (kind, _) => {
                    *kind = match self.seen.get(&op.key) {
                        Some(Some(rec)) => WriteKind::Put(rec.clone()),
                        _ => WriteKind::Delete,
                    }
                }
            }
        }
        (merged.into_values().collect(), self.messages)
    }
}

/// A guest-facing error.
fn error(status: u16, message: impl Into<String>) -> types::Error {
    types::Error {
        status,
        message: message.into(),
    }
}

impl From<RestError> for types::Error {
    fn from(e: RestError) -> Self {
        let message = match &e {
            RestError::NoSuchRecord => "Not found".to_owned(),
            e => e.to_string(),
        };
        error(e.status(), message)
    }
}

/// The host side of the `tables` and `context` imports.
struct HostCalls;

impl wasmtime::component::HasData for HostCalls {
    type Data<'a> = &'a mut HostState;
}

impl HostState {
    /// The application (absent only in the store that lists a module's resources at load).
    fn shared(&self) -> Result<&Arc<Shared>, types::Error> {
        self.shared
            .as_ref()
            .ok_or_else(|| error(500, "no application state"))
    }

    fn table(&self, name: &str) -> Result<Arc<Table>, types::Error> {
        self.shared()?
            .types
            .get(name)
            .cloned()
            .ok_or_else(|| error(404, format!("no table {name}")))
    }

    /// The stored key of a MessagePack id in `table` (a string id converts to a numeric key type
    /// as a URL id does).
    fn key(table: &Table, id: &[u8]) -> Result<(Value, Vec<u8>), types::Error> {
        let id = value::from_msgpack(id).map_err(|e| error(400, format!("bad id: {e}")))?;
        let id = match id {
            Value::String(s) => id_value(table, &s),
            other => other,
        };
        let key = record_key(table.id, &id).map_err(|e| error(400, format!("bad id: {e}")))?;
        Ok((id, key))
    }

    /// The record as this request sees it: its own write, else the stored one.
    fn current(&self, key: &[u8]) -> Result<Option<Value>, types::Error> {
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
    fn committed(&self, key: &[u8]) -> Result<Option<Vec<u8>>, types::Error> {
        // Read in place, whichever core owns the key's shard.
        let found = Router::with_local(|router| router.get(key));
        found
            .ok_or_else(|| error(503, "the core is shutting down"))?
            .map_err(RestError::from)
            .and_then(live_body)
            .map_err(types::Error::from)
    }

    /// The record as this request sees it, or a new one holding just its primary key: what a
    /// patch or an increment starts from.
    fn current_or_new(&self, table: &Table, key: &[u8], pk: Value) -> Result<Value, types::Error> {
        Ok(self
            .current(key)?
            .unwrap_or_else(|| Value::Object(vec![(table.primary_key().name.clone(), pk)])))
    }

    fn stage(&mut self, table: Arc<Table>, key: Vec<u8>, kind: WriteKind, now: Option<Value>) {
        self.txn.seen.insert(key.clone(), now);
        self.txn.writes.push(WriteOp { table, key, kind });
    }

    /// Decodes a record or change set from the guest; it must be a map.
    fn object(bytes: &[u8]) -> Result<Value, types::Error> {
        match value::from_msgpack(bytes) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(other) => Err(error(
                400,
                format!("a record must be an object, not {}", other.kind()),
            )),
            Err(e) => Err(error(400, format!("bad record: {e}"))),
        }
    }

    fn put_record(
        &mut self,
        table: Arc<Table>,
        pk: Value,
        mut rec: Value,
    ) -> Result<(), types::Error> {
        set_primary_key(&mut rec, &table.primary_key().name, pk.clone());
        check_record(&table, &mut rec, WriteMode::Replace)
            .map_err(|e| error(400, e.to_string()))?;
        let key = record_key(table.id, &pk).map_err(|e| error(400, format!("bad id: {e}")))?;
        self.shared()?.saw_key(&table, &pk);
        self.stage(table, key, WriteKind::Put(rec.clone()), Some(rec));
        Ok(())
    }
}

impl tables::Host for &mut HostState {
    async fn get(&mut self, table: String, id: Vec<u8>) -> Result<Option<Vec<u8>>, types::Error> {
        let table = self.table(&table)?;
        let (_, key) = HostState::key(&table, &id)?;
        // A committed record goes to the guest as stored, without decoding it.
        match self.txn.seen.get(&key) {
            Some(seen) => Ok(seen.as_ref().map(Value::to_msgpack)),
            None => self.committed(&key),
        }
    }

    async fn put(
        &mut self,
        table: String,
        id: Vec<u8>,
        record: Vec<u8>,
    ) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        let (pk, _) = HostState::key(&table, &id)?;
        let rec = HostState::object(&record)?;
        self.put_record(table, pk, rec)
    }

    async fn patch(
        &mut self,
        table: String,
        id: Vec<u8>,
        changes: Vec<u8>,
    ) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        let (pk, key) = HostState::key(&table, &id)?;
        let mut changes = HostState::object(&changes)?;
        changes.set(&table.primary_key().name, pk.clone());
        check_record(&table, &mut changes, WriteMode::Patch)
            .map_err(|e| error(400, e.to_string()))?;
        let mut now = self.current_or_new(&table, &key, pk)?;
        if let Value::Object(props) = &changes {
            for (k, v) in props {
                now.set(k, v.clone());
            }
        }
        self.stage(table, key, WriteKind::Patch(changes), Some(now));
        Ok(())
    }

    async fn add_to(
        &mut self,
        table: String,
        id: Vec<u8>,
        deltas: Vec<u8>,
    ) -> Result<(), types::Error> {
        let table = self.table(&table)?;
        let (pk, key) = HostState::key(&table, &id)?;
        let Value::Object(deltas) = HostState::object(&deltas)? else {
            return Err(error(400, "addTo needs a map of numbers"));
        };
        if let Some((name, _)) = deltas.iter().find(|(_, v)| v.as_f64().is_none()) {
            return Err(error(400, format!("addTo: {name} is not a number")));
        }
        let mut now = self.current_or_new(&table, &key, pk)?;
        for (name, d) in &deltas {
            let sum = value::add_numbers(now.get(name), d);
            now.set(name, sum);
        }
        self.stage(table, key, WriteKind::Add(deltas), Some(now));
        Ok(())
    }

    async fn create(&mut self, table: String, record: Vec<u8>) -> Result<Vec<u8>, types::Error> {
        let table = self.table(&table)?;
        let rec = HostState::object(&record)?;
        let pk = match rec.get(&table.primary_key().name) {
            Some(v) if *v != Value::Null => v.clone(),
            _ => self.shared()?.new_key(&table)?,
        };
        let id = pk.to_msgpack();
        self.put_record(table, pk, rec)?;
        Ok(id)
    }

    async fn delete(&mut self, table: String, id: Vec<u8>) -> Result<bool, types::Error> {
        let table = self.table(&table)?;
        let (_, key) = HostState::key(&table, &id)?;
        let existed = self.current(&key)?.is_some();
        self.stage(table, key, WriteKind::Delete, None);
        Ok(existed)
    }

    async fn search(&mut self, table: String, query: Vec<u8>) -> Result<Vec<u8>, types::Error> {
        let table = self.table(&table)?;
        let q = value::from_msgpack(&query).map_err(|e| error(400, format!("bad query: {e}")))?;
        let select: Option<Vec<String>> = match q.get("select") {
            Some(Value::Array(names)) => Some(
                names
                    .iter()
                    .map(|n| match n {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(error(400, "select must list property names")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            _ => None,
        };
        let mut parsed = crate::ops::resource_query(&q)?;
        let overlay = Overlay::new(&self.txn, &table, &mut parsed)?;
        let plan = query::plan(&table, "", parsed, Joins::default())?;
        let found = on_core(move |router: Router| async move {
            let rows = query::collect(&router, &plan).await?;
            rows.iter()
                .map(|row| {
                    let full = output::body_value(output::stored_record(&row.stored)?.body)?;
                    Ok((row.key.to_vec(), full))
                })
                .collect::<Result<Vec<_>, RestError>>()
        });
        let found = found
            .await
            .map_err(|_| error(503, "the core is shutting down"))??;
        let records = match overlay {
            Some(o) => o.apply(found),
            None => found,
        };
        let out = records
            .into_iter()
            .map(|(_, full)| match &select {
                None => full,
                Some(names) => crate::ops::pick(&full, names),
            })
            .collect();
        Ok(Value::Array(out).to_msgpack())
    }
}

/// What a search must change in the stored result so that it sees the request's own writes to
/// the table: written records replace, and deleted ones leave, the stored ones; new ones that
/// match join at the end (primary-key order among them); then the sort and the window apply.
struct Overlay {
    /// The request's records of the table as it sees them (`None`: deleted).
    staged: BTreeMap<Vec<u8>, Option<Value>>,
    /// Every condition of the query (the store's plan leaves out what its access path ensures).
    pred: Option<Pred>,
    sort: Vec<(String, bool)>,
    window: Limit,
}

impl Overlay {
    /// `None` when the request wrote nothing to `table`; otherwise the overlay, with `parsed`'s
    /// window widened so the store returns enough rows to fill it after the overlay.
    fn new(txn: &Txn, table: &Table, parsed: &mut Query) -> Result<Option<Self>, types::Error> {
        let prefix = table_prefix(table.id);
        let staged: BTreeMap<Vec<u8>, Option<Value>> = txn
            .seen
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if staged.is_empty() {
            return Ok(None);
        }
        let pred = parsed
            .filter
            .clone()
            .map(|f| query::resolve(table, f, &Joins::default()))
            .transpose()?;
        let sort = parsed
            .sort
            .iter()
            .map(|k| (k.path.join("."), k.descending))
            .collect();
        let window = parsed.limit.take().unwrap_or(Limit {
            start: 0,
            end: usize::MAX,
        });
        if window.end != usize::MAX {
            parsed.limit = Some(Limit {
                start: 0,
                end: window.end.saturating_add(staged.len()),
            });
        }
        Ok(Some(Overlay {
            staged,
            pred,
            sort,
            window,
        }))
    }

    fn matches(&self, rec: &Value) -> bool {
        self.pred
            .as_ref()
            .is_none_or(|p| p.eval(&|name| rec.get(name)))
    }

    fn apply(mut self, stored: Vec<(Vec<u8>, Value)>) -> Vec<(Vec<u8>, Value)> {
        let mut staged = std::mem::take(&mut self.staged);
        let mut out = Vec::with_capacity(stored.len() + staged.len());
        for (key, rec) in stored {
            match staged.remove(&key) {
                None => out.push((key, rec)),
                Some(Some(now)) if self.matches(&now) => out.push((key, now)),
                Some(_) => {}
            }
        }
        // What is left was not in the store's result: new records, in key order.
        out.extend(
            staged
                .into_iter()
                .filter_map(|(key, now)| now.filter(|now| self.matches(now)).map(|now| (key, now))),
        );
        if !self.sort.is_empty() {
            // Stable: ties keep the store's order, and new records after stored ones.
            let sort_keys = |rec: &Value| -> Vec<Vec<u8>> {
                self.sort
                    .iter()
                    .map(|(attr, _)| sort_key(rec.get(attr)))
                    .collect()
            };
            let mut keyed: Vec<_> = out.into_iter().map(|r| (sort_keys(&r.1), r)).collect();
            keyed.sort_by(|(a, _), (b, _)| {
                a.iter()
                    .zip(b)
                    .zip(&self.sort)
                    .map(
                        |((a, b), (_, descending))| {
                            if *descending { b.cmp(a) } else { a.cmp(b) }
                        },
                    )
                    .find(|ord| ord.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            out = keyed.into_iter().map(|(_, r)| r).collect();
        }
        out.into_iter()
            .skip(self.window.start)
            .take(self.window.end.saturating_sub(self.window.start))
            .collect()
    }
}

impl types::Host for &mut HostState {}

impl context::Host for &mut HostState {
    async fn user(&mut self) -> Option<String> {
        self.user.clone()
    }

    async fn headers(&mut self) -> Vec<(String, String)> {
        tessera_protocol::http::headers(&self.head)
    }

    async fn publish(&mut self, topic: String, message: Vec<u8>) -> Result<(), types::Error> {
        let shared = self.shared()?;
        let (table, id) = shared
            .topic(&topic)
            .ok_or_else(|| error(404, format!("no topic {topic}: it names no exported table")))?;
        let table = table.clone();
        let key = record_key(table.id, &id_value(&table, id))
            .map_err(|e| error(400, format!("bad topic: {e}")))?;
        // Subscribers get JSON, as from an MQTT client.
        let mut json = Vec::with_capacity(message.len() + 16);
        value::msgpack_to_json(&message, &mut json)
            .map_err(|e| error(400, format!("bad message: {e}")))?;
        self.txn.messages.push(WriteOp {
            table,
            key,
            kind: WriteKind::Message {
                payload: json,
                expires_at: None,
            },
        });
        Ok(())
    }
}

/// What a request asks of a resource.
pub struct Call<'a> {
    pub method: Method,
    pub id: Option<&'a str>,
    pub pathname: &'a str,
    pub search: &'a str,
    pub is_collection: bool,
    pub data: Option<Vec<u8>>,
    pub user: Option<String>,
    /// The request's head (`Request::head`).
    pub head: Vec<u8>,
}

/// A resource's answer to the protocol layer.
pub enum Answer {
    Respond(types::Response),
    /// The guest does not override the verb: serve it natively.
    Fallback,
}

/// Serves one request with `resource`, on this core: instantiate (or reuse), call, commit.
pub async fn call(
    shared: &Arc<Shared>,
    router: &Router,
    resource: &WasmResource,
    call: Call<'_>,
) -> Result<Answer, RestError> {
    let req = Request {
        resource: resource.index,
        method: call.method,
        target: types::Target {
            id: call.id.map(str::to_owned),
            pathname: call.pathname.to_owned(),
            search: call.search.to_owned(),
            is_collection: call.is_collection,
        },
        data: call.data,
    };
    let module = &resource.module;
    let rewinds = !resource.reuse && module.rewind.is_some();
    let pool = (Arc::as_ptr(module) as usize, resource.reuse);
    let resting = if resource.reuse || rewinds {
        RESTING.with(|r| r.borrow_mut().get_mut(&pool).and_then(Vec::pop))
    } else {
        None
    };
    let (mut store, handle, rewind) = match resting {
        Some(mut r) => {
            r.store.data_mut().begin(shared, call.user, call.head);
            r.store.set_epoch_deadline(1);
            (r.store, r.handle, r.rewind)
        }
        None => {
            let mut state = HostState::new();
            state.begin(shared, call.user, call.head);
            let mut store = new_store(&shared.wasm.engine, state, shared.wasm.limits);
            let instance = module
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await
                .map_err(|e| trapped(resource, &e))?;
            let handle = instance
                .get_func(&mut store, module.handle)
                .expect("checked when the module was loaded");
            let rewind = match &module.rewind {
                Some(export) if rewinds => instance.get_func(&mut store, export),
                _ => None,
            };
            (store, handle, rewind)
        }
    };
    let (result,) = module
        .handle(handle)
        .call_async(&mut store, (&req,))
        .await
        .map_err(|e| trapped(resource, &e))?;
    let txn = std::mem::take(&mut store.data_mut().txn);
    // The instance waits for the next request: as it is, or rewound to its fresh state. One
    // whose memory grew past `RESTING_PAGES` is dropped instead: a fresh one replaces it.
    let rested = match rewind {
        None => resource.reuse,
        Some(f) => match module.rewind(f).call_async(&mut store, ()).await {
            Ok((pages,)) => pages <= RESTING_PAGES,
            Err(e) => {
                eprintln!(
                    "wasm resource {}: rewind failed: {e:#}",
                    resource.describe()
                );
                false
            }
        },
    };
    if rested {
        store.data_mut().end();
        RESTING.with(|r| {
            r.borrow_mut().entry(pool).or_default().push(Resting {
                store,
                handle,
                rewind,
            })
        });
    }
    let outcome = result.map_err(|e| RestError::Resource(e.status, e.message))?;
    match outcome {
        Outcome::Fallback => {
            resource.fallback[req.method as usize].store(true, Ordering::Relaxed);
            Ok(Answer::Fallback)
        }
        Outcome::Respond(response) => {
            let (ops, messages) = txn.into_ops();
            if !ops.is_empty() {
                router.transact(ops).await?;
            }
            for message in messages {
                router.write(message).await?;
            }
            Ok(Answer::Respond(response))
        }
    }
}

/// A trap (panic, out-of-bounds access, memory or time exhausted): logged with the resource's
/// name, a 500 to the client.
fn trapped(resource: &WasmResource, e: &wasmtime::Error) -> RestError {
    eprintln!("wasm resource {} failed: {e:#}", resource.describe());
    RestError::Internal(format!("resource {} failed", resource.name))
}
