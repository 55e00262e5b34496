//! One call of a resource: a resting instance (or a new one) for the request, the guest's
//! `handle` under the request's limits, and the transaction committed when it answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tessera_shards::Router;

use super::pool::{RESTING, Resting};
use super::state::HostState;
use super::types::{self, Outcome, Request};
use super::{Method, RESTING_PAGES, WasmHost, WasmResource, new_store};
use crate::app::permissions::User;
use crate::app::{App, AppError};

/// What a request asks of a resource.
pub struct Call<'a> {
    pub method: Method,
    pub id: Option<&'a str>,
    pub pathname: &'a str,
    pub search: &'a str,
    pub is_collection: bool,
    pub data: Option<Vec<u8>>,
    /// Who the request is made by: the guest's table calls are allowed what its role allows.
    pub user: Option<Arc<User>>,
    /// The request's head (`Request::head`).
    pub head: Vec<u8>,
}

/// A resource's answer to the protocol layer.
pub enum Handled {
    Respond(types::Response),
    /// The guest does not override the verb: serve it natively.
    Fallback,
}

/// Serves one request with `resource` of `host`, on this core: instantiate (or reuse), call,
/// commit.
pub async fn call(
    host: &WasmHost,
    app: &Arc<App>,
    router: &Router,
    resource: &WasmResource,
    call: Call<'_>,
) -> Result<Handled, AppError> {
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
            r.store.data_mut().begin(app, call.user, call.head);
            r.store.set_epoch_deadline(1);
            (r.store, r.handle, r.rewind)
        }
        None => {
            let mut state = HostState::new();
            state.begin(app, call.user, call.head);
            let mut store = new_store(&host.engine, state, host.limits);
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
                tracing::warn!(
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
    let outcome = result.map_err(|e| AppError::Resource {
        status: e.status,
        message: e.message,
    })?;
    match outcome {
        Outcome::Fallback => {
            resource.fallback[req.method as usize].store(true, Ordering::Relaxed);
            Ok(Handled::Fallback)
        }
        Outcome::Respond(response) => {
            let (ops, messages) = txn.into_ops();
            if !ops.is_empty() {
                router.transact(ops).await?;
            }
            for message in messages {
                router.write(message).await?;
            }
            Ok(Handled::Respond(response))
        }
    }
}

/// A trap (panic, out-of-bounds access, memory or time exhausted): logged with the resource's
/// name, a 500 to the client.
fn trapped(resource: &WasmResource, e: &wasmtime::Error) -> AppError {
    tracing::error!("wasm resource {} failed: {e:#}", resource.describe());
    AppError::Internal(format!("resource {} failed", resource.name))
}
