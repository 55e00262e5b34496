//! The `tessera` binary: the process that is database, cache, REST server and (soon) broker.
//!
//! This crate owns the process: command line and configuration, application components, users
//! and authentication, the HTTP connection loop and tables as REST resources. It must not encode
//! stored bytes itself (that is `tessera-storage`) nor move work between threads by hand (that is
//! `tessera-shards`).

mod auth;
mod body;
mod catalog;
mod component;
mod config;
mod error;
mod events;
mod eviction;
mod http;
mod mqtt;
mod openapi;
mod ops;
mod output;
mod query;
mod realtime;
mod related;
mod rest;
mod roles;
mod server;
mod sessions;
mod tokens;
mod wasm;
mod websocket;

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
    let cli = config::Cli::parse();
    let result = match cli.command {
        config::Command::Run(args) => config::Settings::resolve(args).and_then(server::run),
        config::Command::Build(args) => server::build(args),
    };
    match result {
        // Executors never return on their own: leave without waiting for them.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
