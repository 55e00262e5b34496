//! The one wasmtime engine (pooling allocator, epoch interruption, explicit bounds checks) and
//! the compile cache under `<root>/wasm-cache/`, keyed by a module's bytes and the engine.

use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::Context as _;
use wasmtime::component::Component;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::rewind;
use crate::app::settings::WasmLimits;

/// Bytes of a released instance's memory (and table, and fiber stack) reset in place.
const KEEP_RESIDENT: usize = 256 << 10;
/// Instances that may exist at once in the whole process (the pooling allocator's size).
const POOL_INSTANCES: u32 = 512;
pub fn engine(limits: WasmLimits) -> anyhow::Result<Engine> {
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
pub fn compile(engine: &Engine, file: &Path, cache: &Path) -> anyhow::Result<(Component, bool)> {
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
                tracing::info!(
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
