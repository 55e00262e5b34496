//! The `tessera` binary: the process that is database, cache, REST and WebSocket server, MQTT
//! broker, Operations API and wasm application host at once.
//!
//! This crate owns the process: the application kernel (`app`), authentication, queries,
//! real-time fan-out, the wasm host, and the protocol fronts on top. It must not encode stored
//! bytes itself (that is `tessera-storage`) nor move work between threads by hand (that is
//! `tessera-shards`).

// The layers, bottom up; ARCHITECTURE.md states which may import which, and the test
// `tests/tests/layers.rs` checks it.

// The kernel: the application, its tables, records, users and permissions.
mod app;

// Built on the kernel.
mod auth;
mod data;
mod realtime;
mod wasm;

// One core's worker: what the fronts serve with.
mod worker;

// The protocol fronts, and the transport they share.
mod http;
mod mqtt;
mod net;
mod ops;
mod replication;

// Start-up and shutdown: the one place that wires everything together.
mod server;

use clap::Parser;

/// mimalloc: allocation is on every request's path and crosses threads (records built on a
/// shard's writer thread are freed on an executor); glibc's per-thread arenas fragment under that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // No transparent huge pages: mimalloc asks for them on its arenas and then returns freed
    // memory in 64 KiB pieces, so every batch-sized allocation faults in and zeroes a whole
    // 2 MiB page again. A/B on the 100,000-Dog upsert load (3 runs each): 48.7-53.8k records/s
    // with huge pages, 60.3-62.6k without; GET by id unchanged (18-20 us of CPU per request).
    // SAFETY: prctl with PR_SET_THP_DISABLE only sets a flag of this process.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let cli = app::settings::Cli::parse();
    let result = match cli.command {
        app::settings::Command::Run(args) => app::Settings::resolve(args).and_then(server::run),
        app::settings::Command::Build(args) => {
            app::logging::init_stderr();
            server::build(args)
        }
    };
    match result {
        // Executors never return on their own: leave without waiting for them.
        Ok(()) => {
            app::logging::flush();
            std::process::exit(0)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            app::logging::flush();
            // The log may not be open yet, or may not write to standard error.
            if !app::logging::to_stderr() {
                eprintln!("error: {e:#}");
            }
            std::process::exit(1);
        }
    }
}
