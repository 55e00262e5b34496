//! The WebAssembly host: custom resources written in Rust with `tessera-wasm-sdk`, compiled to
//! `wasm32-unknown-unknown`, served like Harper's `jsResource` classes (see docs/wasm.md).
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
//!
//! Files, one per capability: `engine.rs` (engine and compile cache), `rewind.rs` (instrumenting
//! a module so its instances can be rewound), `pool.rs` (stores and resting instances per core),
//! `state.rs` (a request's host state), `txn.rs` (the request's transaction and the overlay of
//! its writes on searches), `tables.rs` and `context.rs` (the WIT imports), `call.rs` (one call),
//! `compute.rs` (attributes a resource computes, for every reader).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tessera_storage::Table;
use wasmtime::Engine;
use wasmtime::component::{ComponentExportIndex, Func, Linker, TypedFunc};

use crate::app::settings::WasmLimits;

mod call;
mod compute;
mod context;
mod engine;
mod outbound;
mod pool;
mod rewind;
mod source;
mod state;
mod tables;
mod txn;

pub use call::{Call, Handled, call};
use engine::{compile, engine};
use pool::new_store;
pub use source::WasmSource;
use state::{HostCalls, HostState};

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
use bindings::tessera::wasm::{
    context as context_wit, outbound as outbound_wit, tables as tables_wit,
};

/// How often the epoch advances: a running guest yields to the core's other work this often.
const TICK: Duration = Duration::from_millis(5);
/// The memory (in 64 KiB pages) past which a used instance is dropped rather than rewound, so
/// that one request's growth does not stay resident.
pub(super) const RESTING_PAGES: u32 = 64;

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
    /// The caching table it is the source of, and whether that table serves stale records
    /// while revalidating.
    pub source_for: Option<(Arc<Table>, bool)>,
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
    limits: WasmLimits,
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
    limits: WasmLimits,
) -> anyhow::Result<WasmHost> {
    let engine = engine(limits)?;
    let mut linker: Linker<HostState> = Linker::new(&engine);
    tables_wit::add_to_linker::<_, HostCalls>(&mut linker, |s| s)?;
    context_wit::add_to_linker::<_, HostCalls>(&mut linker, |s| s)?;
    outbound_wit::add_to_linker::<_, HostCalls>(&mut linker, |s| s)?;
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
            if !info.computes.is_empty() {
                let Some(table) = &extends else {
                    bail!(
                        "{}: resource {} computes attributes but extends no table",
                        file.display(),
                        info.name
                    );
                };
                let resource = (index as u32, info.name.as_str());
                compute::install(&engine, limits, &module, resource, table, &info.computes)
                    .with_context(|| file.display().to_string())?;
            }
            let source_for = match &info.source_for {
                None => None,
                Some(src) => Some((
                    tables.get(&src.table).cloned().with_context(|| {
                        format!(
                            "{}: resource {} is the source of {}, which is not a table",
                            file.display(),
                            info.name,
                            src.table
                        )
                    })?,
                    src.allow_stale_while_revalidate,
                )),
            };
            let resource = WasmResource {
                name: info.name.clone(),
                source_for,
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

/// The resources a module exports, after checking that its `handle` export (at `handle`) has
/// the type [`Handle`], and its `rewind` export the type [`Rewind`] (see [`Module::handle`]).
async fn list_resources(
    engine: &Engine,
    pre: &ResourceModulePre<HostState>,
    handle: &ComponentExportIndex,
    rewind: Option<&ComponentExportIndex>,
    limits: WasmLimits,
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
