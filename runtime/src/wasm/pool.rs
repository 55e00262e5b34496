//! Stores and instances on each core: a store per request with the request's memory limit and
//! time budget, instances resting between requests, and host calls that need the core's router.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

use futures::channel::oneshot;
use tessera_shards::Router;
use wasmtime::component::Func;
use wasmtime::{Engine, Store, StoreLimitsBuilder, UpdateDeadline};

use super::state::HostState;
use crate::app::settings::WasmLimits;

pub(super) fn new_store(engine: &Engine, state: HostState, limits: WasmLimits) -> Store<HostState> {
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
    pub(super) static RESTING: RefCell<HashMap<(usize, bool), Vec<Resting>>> = RefCell::new(HashMap::new());
}

/// An instance kept for the next request.
pub(super) struct Resting {
    pub(super) store: Store<HostState>,
    pub(super) handle: Func,
    /// Its `rewind` export, for instances a request does not keep as they are.
    pub(super) rewind: Option<Func>,
}

/// Runs `f` with the core's router as a task on this core; the answer arrives over a `Send`
/// channel, so the host call awaiting it stays `Send`.
pub(super) fn on_core<T, F, Fut>(f: F) -> oneshot::Receiver<T>
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
