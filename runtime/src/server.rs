//! Start-up and shutdown of `tessera run`: components and layout, shards and their writers, users,
//! executors with one `SO_REUSEPORT` HTTP listener each, and the signal handler that flushes every
//! shard before the process exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, bail};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tessera_shards::{ExecutorSettings, ShardSet, start_executors};
use tessera_storage::Table;
use tessera_storage::layout::Layout;
use tessera_storage::shard::{Durability, ShardOptions};

use crate::auth::{Authenticator, Users};
use crate::config::Settings;
use crate::rest::{Core, Shared, initial_counters, next_key};
use crate::{component, eviction, http, mqtt, realtime, sessions};

/// Total block cache for all shards together.
const CACHE_BUDGET: u64 = 64 << 20;
/// Total cache of recently read records for all shards together (`ReadCache`).
const READ_CACHE_BUDGET: u64 = 32 << 20;

/// Reserves `addr` with an `SO_REUSEPORT` socket that is bound but never listens: it holds the
/// port (and turns port 0 into a concrete one) until every executor has bound its own listener,
/// without taking a share of the connections.
fn reserve_port(addr: SocketAddr) -> anyhow::Result<(socket2::Socket, u16)> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    let port = s
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .context("no local port")?;
    Ok((s, port))
}

fn admin_from_env() -> Option<(String, String)> {
    let get = |a: &str, b: &str| {
        std::env::var(a)
            .or_else(|_| std::env::var(b))
            .ok()
            .filter(|v| !v.is_empty())
    };
    Some((
        get("TESSERA_ADMIN_USERNAME", "HDB_ADMIN_USERNAME")?,
        get("TESSERA_ADMIN_PASSWORD", "HDB_ADMIN_PASSWORD")?,
    ))
}

/// `tessera build`: builds the components' resource crates and compiles their modules into the
/// root's cache (so the next `run` starts without compiling), listing the resources found.
pub fn build(args: crate::config::BuildArgs) -> anyhow::Result<()> {
    let root = args.root.unwrap_or_else(crate::config::default_root);
    let limits =
        crate::config::wasm_limits(&crate::config::read_yaml(&root.join("tessera.yaml"))?)?;
    let app = component::load(&args.apps)?;
    let types: HashMap<String, Arc<Table>> = app
        .catalog
        .tables
        .into_iter()
        .map(|t| (t.type_name.clone(), Arc::new(t)))
        .collect();
    let host = crate::wasm::load(&app.wasm, &types, &root.join("wasm-cache"), limits)?;
    for res in host.resources() {
        let kind = match &res.extends {
            Some(t) => format!("extends {}", t.type_name),
            None => "standalone".to_owned(),
        };
        println!("/{}/ ({kind}) from {}", res.name, res.file().display());
    }
    Ok(())
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let data = settings.root.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;

    let app = component::load(&settings.apps)?;
    let mut catalog = app.catalog;
    let mut layout = Layout::open_or_create(&data, settings.threads)?;
    let missing = layout.assign(&mut catalog)?;
    let shard_count = layout.shard_count();
    let opts = ShardOptions {
        cache_bytes: (CACHE_BUDGET / shard_count as u64).max(4 << 20),
        read_cache_bytes: (READ_CACHE_BUDGET / shard_count as u64).max(2 << 20),
        ..ShardOptions::default()
    };
    let opening = std::time::Instant::now();
    let shards = Arc::new(
        ShardSet::open(&data, shard_count, opts, settings.durability).context("opening shards")?,
    );
    eprintln!(
        "opened {shard_count} shards in {} ms",
        opening.elapsed().as_millis()
    );

    let tables: Vec<Arc<Table>> = catalog.tables.into_iter().map(Arc::new).collect();
    for m in &missing {
        let Some(table) = tables.iter().find(|t| t.id == m.table_id) else {
            continue;
        };
        eprintln!(
            "building index {}.{} on {shard_count} shards",
            m.table, m.attribute
        );
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..shard_count)
                .filter_map(|i| shards.store(i).cloned())
                .map(|store| s.spawn(move || store.build_index(table, &m.attribute)))
                .collect();
            runs.into_iter().try_for_each(|r| match r.join() {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(anyhow::anyhow!(
                    "building index {}.{}: {e}",
                    m.table,
                    m.attribute
                )),
                Err(_) => Err(anyhow::anyhow!(
                    "building index {}.{} panicked",
                    m.table,
                    m.attribute
                )),
            })
        })?;
        layout.mark_indexed(m)?;
    }

    let users = Users::open(&data)?;
    let admin = admin_from_env();
    if let Some((u, p)) = &admin
        && users.ensure_super_user(u, p)?
    {
        eprintln!("created super user {u:?}");
    }
    if users.is_empty() {
        eprintln!(
            "warning: no users exist, so every request will be refused; set TESSERA_ADMIN_USERNAME and TESSERA_ADMIN_PASSWORD"
        );
    }
    let users = Arc::new(users);
    let tokens = Arc::new(crate::tokens::Tokens::open(
        &data,
        settings.operation_token_ttl,
        settings.refresh_token_ttl,
    )?);

    let max_key = |table_id: u32| {
        (0..shard_count)
            .filter_map(|i| {
                shards
                    .store(i)
                    .and_then(|s| s.max_number_key(table_id).ok().flatten())
            })
            .reduce(f64::max)
    };
    let counters = initial_counters(&tables, max_key);
    let catalog = crate::catalog::Catalog::new(layout, &tables, |t| next_key(max_key(t.id)));
    let exports: HashMap<String, Arc<Table>> = tables
        .iter()
        .filter_map(|t| Some((t.export.clone()?, t.clone())))
        .collect();

    let addr: SocketAddr = format!("{}:{}", settings.host, settings.http_port)
        .parse()
        .with_context(|| {
            format!(
                "bad listen address {}:{}",
                settings.host, settings.http_port
            )
        })?;
    let (reservation, http_port) = reserve_port(addr)?;
    let bind_addr = SocketAddr::new(addr.ip(), http_port);
    let (mqtt_reservation, mqtt_port) =
        reserve_port(SocketAddr::new(addr.ip(), settings.mqtt_port))?;
    let mqtt_addr = SocketAddr::new(addr.ip(), mqtt_port);
    let (ops_reservation, ops_port) = reserve_port(SocketAddr::new(addr.ip(), settings.ops_port))?;
    let ops_addr = SocketAddr::new(addr.ip(), ops_port);
    let types: HashMap<String, Arc<Table>> = tables
        .iter()
        .map(|t| (t.type_name.clone(), t.clone()))
        .collect();
    let wasm = crate::wasm::load(
        &app.wasm,
        &types,
        &settings.root.join("wasm-cache"),
        settings.wasm,
    )?;
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        tables: exports,
        types,
        counters,
        wasm,
        catalog,
    });
    // Kept MQTT sessions come back parked, each on a core picked by its client id.
    let saved = sessions::open(&settings.root.join("mqtt-sessions"))
        .context("opening the MQTT sessions")?;
    if !saved.is_empty() {
        eprintln!("restoring {} kept MQTT sessions", saved.len());
    }
    let mut per_core: Vec<Vec<(sessions::Saved, sessions::Asked)>> =
        (0..settings.threads).map(|_| Vec::new()).collect();
    for s in saved {
        let asked = sessions::park(
            &s.owner.client_id,
            0,
            &s.owner.user,
            s.filters(),
            s.parked_at,
        );
        let core =
            xxhash_rust::xxh3::xxh3_64(s.owner.client_id.as_bytes()) as usize % settings.threads;
        per_core[core].push((s, asked));
    }
    let restored: Arc<Vec<std::sync::Mutex<Vec<_>>>> =
        Arc::new(per_core.into_iter().map(std::sync::Mutex::new).collect());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let exec = ExecutorSettings {
        threads: settings.threads,
        preempt_timer: std::time::Duration::from_millis(5),
    };
    let _executors = start_executors(&exec, shards.clone(), move |ctx| {
        let (shared, users, tokens, bound_tx, restored) = (
            shared.clone(),
            users.clone(),
            tokens.clone(),
            bound_tx.clone(),
            restored.clone(),
        );
        async move {
            let listen = |addr: SocketAddr| {
                glommio::net::TcpListener::bind(addr)
                    .map_err(|e| format!("core {}: cannot listen on {addr}: {e}", ctx.core))
            };
            let (listener, mqtt_listener, ops_listener) =
                match (listen(bind_addr), listen(mqtt_addr), listen(ops_addr)) {
                    (Ok(h), Ok(m), Ok(o)) => (h, m, o),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
            let _ = bound_tx.send(Ok(()));
            realtime::follow(&ctx.router);
            let expiring: Vec<_> = shared.types.values().cloned().collect();
            eviction::run(ctx.router.clone(), expiring).await;
            let auth = Authenticator::new(users, tokens);
            let core = Rc::new(Core::new(shared, ctx.router, auth));
            let mine = restored
                .get(ctx.core)
                .map(|m| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner())));
            for (saved, asked) in mine.into_iter().flatten() {
                glommio::spawn_local(mqtt::restore(core.clone(), saved, asked)).detach();
            }
            glommio::spawn_local(mqtt::serve(mqtt_listener, core.clone())).detach();
            glommio::spawn_local(http::serve(
                ops_listener,
                core.clone(),
                http::Api::Operations,
            ))
            .detach();
            http::serve(listener, core, http::Api::Rest).await;
        }
    })?;
    for _ in 0..settings.threads {
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!(e),
            Err(_) => bail!("an executor stopped during start-up"),
        }
    }
    drop(reservation);
    drop(mqtt_reservation);
    drop(ops_reservation);
    println!(
        "tessera: HTTP (REST) listening on {bind_addr} ({} threads, {shard_count} shards, {:?})",
        settings.threads, settings.durability
    );
    println!("tessera: MQTT listening on {mqtt_addr}");
    println!("tessera: Operations API listening on {ops_addr}");
    if settings.durability == Durability::Buffered {
        eprintln!(
            "warning: buffered durability: acknowledged writes survive a process crash, not a power loss"
        );
    }

    if let Some(sig) = signals.forever().next() {
        eprintln!("signal {sig}: flushing {shard_count} shards");
        shards.close().context("flushing shards at shutdown")?;
        sessions::flush();
        eprintln!("shutdown complete");
    }
    Ok(())
}
