//! What a wasm resource costs before it does anything: instantiating the test guests' module
//! from its pre-linked component (the pooling allocator, as the server configures it), one call
//! of its `handle` export (a request crossing the boundary both ways, answered by the guest
//! without host calls), and the server's default: a call, then the rewind that returns the
//! instance to its fresh state for the next request. The module is `tests/guests` built for
//! `wasm32-unknown-unknown`, instrumented as the server instruments it:
//!
//! ```sh
//! cargo build --release --target wasm32-unknown-unknown -p tessera-test-guests
//! cargo bench -p tessera-benches --bench wasm
//! ```

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use wasmtime::component::{Component, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};

wasmtime::component::bindgen!({
    path: "../wasm-sdk/wit",
    world: "resource-module",
});

use tessera::wasm::types::{Method, Request, Target};

/// The server's instrumentation, measured as it is (its unit tests are not built here).
#[allow(dead_code, unused_imports)]
#[path = "../../runtime/src/wasm/rewind.rs"]
mod rewind;

fn module() -> Vec<u8> {
    let path = std::env::var("GUEST_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/wasm32-unknown-unknown/release/tessera_test_guests.wasm")
        });
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with `cargo build --release --target wasm32-unknown-unknown -p tessera-test-guests`",
            path.display()
        )
    });
    let bytes = rewind::instrument(&bytes).expect("a module the rewind follows");
    wit_component::ComponentEncoder::default()
        .module(&bytes)
        .and_then(|e| e.validate(true).encode())
        .expect("a module built with tessera-wasm-sdk")
}

fn bench(c: &mut Criterion) {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // The settings of `engine()` in runtime/src/wasm/mod.rs, which is what these figures are for.
    config.wasm_multi_memory(true);
    config.memory_init_cow(false);
    config.signals_based_traps(false);
    config.memory_guard_size(0);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(512)
        .total_core_instances(512)
        .total_memories(1024)
        .max_memories_per_module(2)
        .total_tables(512)
        .total_stacks(512)
        .max_memory_size(64 << 20)
        .linear_memory_keep_resident(256 << 10)
        .table_keep_resident(16 << 10)
        .async_stack_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).expect("engine");
    let component = Component::new(&engine, module()).expect("compile");
    let mut linker: Linker<()> = Linker::new(&engine);
    // No host calls are made by what is measured.
    linker
        .define_unknown_imports_as_traps(&component)
        .expect("imports");
    let pre = ResourceModulePre::new(linker.instantiate_pre(&component).expect("link"))
        .expect("the resource-module world");
    let hostile = {
        let mut store = Store::new(&engine, ());
        let m = pre.instantiate(&mut store).expect("instantiate");
        let names = m
            .tessera_wasm_handler()
            .call_resources(&mut store)
            .expect("resources");
        names
            .iter()
            .position(|r| r.name == "Hostile")
            .expect("Hostile") as u32
    };
    let request = Request {
        resource: hostile,
        method: Method::Get,
        target: Target {
            id: Some("nothing".into()),
            pathname: "nothing".into(),
            search: String::new(),
            is_collection: false,
        },
        data: None,
    };

    c.bench_function("instantiate", |b| {
        b.iter(|| {
            let mut store = Store::new(&engine, ());
            pre.instantiate(&mut store).expect("instantiate")
        })
    });
    let mut store = Store::new(&engine, ());
    let kept = pre.instantiate(&mut store).expect("instantiate");
    c.bench_function("call handle (kept instance)", |b| {
        b.iter(|| {
            let out = kept
                .tessera_wasm_handler()
                .call_handle(&mut store, &request)
                .expect("call");
            assert!(out.is_err(), "the guest answers 400");
        })
    });
    let rewind = {
        let i = component
            .get_export_index(None, rewind::INTERFACE)
            .expect("the rewind interface");
        component
            .get_export_index(Some(&i), "rewind")
            .expect("rewind")
    };
    let mut store = Store::new(&engine, ());
    let instance = pre
        .instance_pre()
        .instantiate(&mut store)
        .expect("instantiate");
    let used = ResourceModule::new(&mut store, &instance).expect("bindings");
    let rewind = instance
        .get_typed_func::<(), (u32,)>(&mut store, rewind)
        .expect("rewind: func() -> u32");
    c.bench_function("call handle + rewind (the default)", |b| {
        b.iter(|| {
            let out = used
                .tessera_wasm_handler()
                .call_handle(&mut store, &request)
                .expect("call");
            assert!(out.is_err(), "the guest answers 400");
            rewind.call(&mut store, ()).expect("rewind")
        })
    });
    c.bench_function("instantiate + call handle", |b| {
        b.iter(|| {
            let mut store = Store::new(&engine, ());
            let m = pre.instantiate(&mut store).expect("instantiate");
            m.tessera_wasm_handler()
                .call_handle(&mut store, &request)
                .expect("call")
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
