//! Attributes computed by a resource's code (the SDK's `COMPUTES`; Harper's
//! `setComputedAttribute`). When a module loads, each attribute a resource claims gets the
//! resource's `compute` installed in its slot ([`Code`]); from then on every reader of the
//! attribute runs it: REST, the Operations API, SQL, subscriptions, conditions and sorts, and the
//! attribute's index on the shard's writer (see `storage::computed`).
//!
//! Those readers are synchronous and run on any thread (an executor core, a shard's writer, an
//! index build at start), so the call is too: on an instance of the module kept per thread,
//! driven to completion in place. It cannot wait on anything: its host state has no application,
//! so a table call or a publish fails at once with an error the guest sees. The time budget and
//! memory limit are a request's; a trap, an error or a result that does not decode gives null,
//! logged with the resource's name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use tessera_storage::computed::{Code, Expr};
use tessera_storage::{Table, Value, value};
use wasmtime::component::Func;
use wasmtime::{Engine, Store};

use super::bindings::ResourceModule;
use super::state::HostState;
use super::{Module, RESTING_PAGES, new_store};
use crate::app::settings::WasmLimits;

/// What one claimed attribute's code needs to run.
struct Computer {
    engine: Engine,
    limits: WasmLimits,
    module: Arc<Module>,
    resource: u32,
    /// The resource's name, for the log.
    name: String,
    attribute: String,
}

/// An instance of a module kept on a thread between computations.
struct Kept {
    store: Store<HostState>,
    exports: ResourceModule,
    rewind: Option<Func>,
}

thread_local! {
    /// This thread's instance of each module that computes attributes, by module.
    static KEPT: RefCell<HashMap<usize, Kept>> = RefCell::new(HashMap::new());
}

/// Installs `resource`'s code (index `resource` of `module`) in each attribute of `table` it
/// claims. Fails, naming the attribute, for one the table does not declare `@computed` with no
/// `from:`, or one another resource computes already.
pub(super) fn install(
    engine: &Engine,
    limits: WasmLimits,
    module: &Arc<Module>,
    resource: (u32, &str),
    table: &Table,
    computes: &[String],
) -> anyhow::Result<()> {
    for attribute in computes {
        let code = code_slot(table, attribute).with_context(|| {
            format!(
                "resource {} computes {}.{attribute}",
                resource.1, table.type_name
            )
        })?;
        let computer = Computer {
            engine: engine.clone(),
            limits,
            module: module.clone(),
            resource: resource.0,
            name: resource.1.to_owned(),
            attribute: attribute.clone(),
        };
        code.install(Box::new(move |record| computer.run(record)))
            .map_err(|why| {
                anyhow::anyhow!(
                    "resource {} computes {}.{attribute}, which {why}",
                    resource.1,
                    table.type_name
                )
            })?;
    }
    Ok(())
}

/// The code slot of `attribute` of `table`.
fn code_slot<'t>(table: &'t Table, attribute: &str) -> anyhow::Result<&'t Code> {
    let Some(a) = table.attribute(attribute) else {
        bail!("the table has no such attribute");
    };
    match a.expr.as_deref() {
        Some(Expr::Code(code)) => Ok(code),
        Some(_) => bail!("the schema computes it already (@computed(from:))"),
        None => bail!("the schema does not declare it @computed"),
    }
}

impl Computer {
    /// The attribute of `record`; null when the code fails (logged).
    fn run(&self, record: &Value) -> Value {
        match self.call(record) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(
                    "wasm resource {} ({}) computing {}: {why:#}",
                    self.name,
                    self.module.file.display(),
                    self.attribute
                );
                Value::Null
            }
        }
    }

    fn call(&self, record: &Value) -> anyhow::Result<Value> {
        let key = Arc::as_ptr(&self.module) as usize;
        // Taken out while it runs, so that nothing the call does can find it borrowed.
        let mut kept = match KEPT.with(|k| k.borrow_mut().remove(&key)) {
            Some(kept) => kept,
            None => self.instantiate()?,
        };
        kept.store.data_mut().started = Instant::now();
        kept.store.set_epoch_deadline(1);
        let bytes = record.to_msgpack();
        let handler = kept.exports.tessera_wasm_handler();
        // Nothing the guest can call waits (see the module's doc): polling to the end is
        // running the function; the epoch's yields are polled through.
        let result = futures::executor::block_on(handler.call_compute(
            &mut kept.store,
            self.resource,
            &self.attribute,
            &bytes,
        ))?;
        let keep = match kept.rewind {
            Some(f) => {
                let (pages,) = futures::executor::block_on(
                    self.module.rewind(f).call_async(&mut kept.store, ()),
                )?;
                pages <= RESTING_PAGES
            }
            // A module that cannot be rewound gets a fresh instance for every call, as its
            // requests do.
            None => false,
        };
        if keep {
            KEPT.with(|k| k.borrow_mut().insert(key, kept));
        }
        let out = result.map_err(|e| anyhow::anyhow!("{} {}", e.status, e.message))?;
        Ok(value::from_msgpack(&out)?)
    }

    fn instantiate(&self) -> anyhow::Result<Kept> {
        let mut store = new_store(&self.engine, HostState::new(), self.limits);
        let instance = futures::executor::block_on(
            self.module.pre.instance_pre().instantiate_async(&mut store),
        )?;
        let exports = ResourceModule::new(&mut store, &instance)?;
        let rewind = match &self.module.rewind {
            Some(export) => instance.get_func(&mut store, export),
            None => None,
        };
        Ok(Kept {
            store,
            exports,
            rewind,
        })
    }
}
