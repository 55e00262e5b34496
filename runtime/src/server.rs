//! Start-up and shutdown of `tessera run`, the one place that wires the layers together:
//! components and layout, shards and their writers, users, the application, the listeners (one
//! `SO_REUSEPORT` listener per executor and port), each core's worker and fronts, and the signal
//! handler that flushes every shard before the process exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tessera_shards::{CoreContext, ExecutorSettings, ShardSet, start_executors};
use tessera_storage::layout::{Layout, MissingIndex};
use tessera_storage::shard::{Durability, ShardOptions};
use tessera_storage::{Catalog, Table};

use crate::app::settings::{self, BuildArgs, Mtls};
use crate::app::sources::{Origin, SourceConfig, Sources};
use crate::app::{App, Settings, Tables, component};
use crate::auth::tokens::Tokens;
use crate::auth::{Authenticator, users::Users};
use crate::data::expiry;
use crate::http::Rest;
use crate::mqtt::{self, sessions};
use crate::net;
use crate::ops::{Jobs, Operations};
use crate::realtime;
use crate::wasm::WasmHost;
use crate::worker::Worker;

/// Total block cache for all shards together.
const CACHE_BUDGET: u64 = 64 << 20;
/// Total cache of recently read records for all shards together (`ReadCache`).
const READ_CACHE_BUDGET: u64 = 32 << 20;

/// Reserves `addr` with an `SO_REUSEPORT` socket that is bound but never listens: it holds the
/// port (and turns port 0 into a concrete one) until every executor has bound its own listener,
/// without taking a share of the connections.
fn reserve_port(addr: SocketAddr) -> anyhow::Result<(socket2::Socket, u16)> {
    // Another process of the same user could join a port reserved with `SO_REUSEPORT` and take
    // a share of its connections: a port something answers on is refused. (Not a plain bind:
    // that also fails on the connections a restart in place leaves closing on its ports.)
    if addr.port() != 0 {
        let mut probe = addr;
        if probe.ip().is_unspecified() {
            probe.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(500))
            .is_ok()
        {
            anyhow::bail!("cannot bind {addr}: the address is in use (another server answers)");
        }
    }
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
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let root = args.root.unwrap_or_else(settings::default_root);
    let limits = settings::wasm_limits(&settings::read_yaml(&root.join("tessera.yaml"))?)?;
    let components = component::load(&args.apps)?;
    let types: HashMap<String, Arc<Table>> = components
        .catalog
        .tables
        .into_iter()
        .map(|t| (t.type_name.clone(), Arc::new(t)))
        .collect();
    let host = crate::wasm::load(&components.wasm, &types, &root.join("wasm-cache"), limits)?;
    for res in host.resources() {
        let kind = match &res.extends {
            Some(t) => format!("extends {}", t.type_name),
            None => "standalone".to_owned(),
        };
        println!("/{}/ ({kind}) from {}", res.name, res.file().display());
    }
    Ok(())
}

/// Runs the server until SIGTERM or SIGINT; on SIGHUP (and the Operations API's `restart`),
/// flushes and starts again in place: the same binary with the same arguments, reading its
/// configuration anew.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    crate::app::logging::init(&settings.logging).context("opening the log")?;
    let data = settings.root.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;

    let apps = component::with_managed(&settings.apps, &settings.root);
    let components = component::load(&apps)?;
    let (shards, tables, wasm) =
        open_storage(&settings, &data, components.catalog, &components.wasm)?;
    let wasm = Arc::new(wasm);
    // Harper's `system.hdb_nodes`, the one system table with records of its own.
    if tables.table("system", "hdb_nodes").is_none() {
        tables
            .create_table("system", "hdb_nodes", "name", &[])
            .map_err(|e| anyhow::anyhow!("creating system.hdb_nodes: {}", e.message))?;
    }
    let shard_count = shards.count();
    let (users, tokens) = open_users(&settings, &data)?;
    let ports = Ports::reserve(&settings)?;
    let (secure, secure_reservations) = Secure::reserve(&settings, ports.addrs[0].ip())?;
    let secure_addrs = secure.as_ref().map(|s| s.addrs);
    // The ports as bound (a port of 0 picks a free one), for the configuration to show.
    let mut running = settings.clone();
    [running.http_port, running.mqtt_port, running.ops_port] = ports.addrs.map(|a| a.port());
    running.graphql = components.graphql;
    let outbound = crate::app::outbound::Outbound::new(&components.outbound_allow)?;
    let mut configs = components.sources.clone();
    for res in wasm.resources() {
        if let Some((table, stale)) = &res.source_for {
            let loader = crate::wasm::WasmSource {
                host: wasm.clone(),
                resource: res.clone(),
            };
            configs.push(SourceConfig {
                database: table.database.clone(),
                table: table.name.clone(),
                origin: Origin::Code(Arc::new(loader)),
                stale_while_revalidate: *stale,
            });
        }
    }
    let sources = Sources::new(configs, outbound, |db, name| tables.table(db, name))?;
    let app = Arc::new(App {
        settings: running,
        tables,
        cluster: Default::default(),
        sources,
    });
    if let Some(config) = settings.replication.clone() {
        crate::replication::start(config, shards.clone(), app.clone(), users.clone())?;
    }
    let restored = restore_sessions(&settings)?;
    let jobs = Arc::new(Jobs::default());
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let exec = ExecutorSettings {
        threads: settings.threads,
        preempt_timer: std::time::Duration::from_millis(5),
    };
    let addrs = ports.addrs;
    // One gate per kind of listener for the whole process: the limits count every core's.
    let gates = Gates {
        http: net::Gate::new(settings.limits.http_connections),
        mqtt: net::Gate::new(settings.limits.mqtt_connections),
    };
    let _executors = start_executors(&exec, shards.clone(), move |ctx| {
        let setup = CoreSetup {
            gates: gates.clone(),
            secure: secure.clone(),
            app: app.clone(),
            wasm: wasm.clone(),
            auth: Authenticator::new(users.clone(), tokens.clone()),
            jobs: jobs.clone(),
            restored: restored
                .get(ctx.core)
                .map(|m| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner())))
                .unwrap_or_default(),
        };
        serve_core(ctx, setup, addrs, bound_tx.clone())
    })?;
    for _ in 0..settings.threads {
        match bound_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!(e),
            Err(_) => bail!("an executor stopped during start-up"),
        }
    }
    drop(ports.reservations);
    drop(secure_reservations);
    let [http_addr, mqtt_addr, ops_addr] = addrs;
    println!(
        "tessera: HTTP (REST) listening on {http_addr} ({} threads, {shard_count} shards, {:?})",
        settings.threads, settings.durability
    );
    println!("tessera: MQTT listening on {mqtt_addr}");
    println!("tessera: Operations API listening on {ops_addr}");
    if let Some(addrs) = secure_addrs {
        for (name, addr) in ["HTTPS", "MQTTS", "Operations API (TLS)"].iter().zip(addrs) {
            if let Some(addr) = addr {
                println!("tessera: {name} listening on {addr}");
            }
        }
    }
    if settings.durability == Durability::Buffered {
        tracing::warn!(
            "buffered durability: acknowledged writes survive a process crash, not a power loss"
        );
    }

    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: flushing {shard_count} shards");
        shards.close().context("flushing shards at shutdown")?;
        sessions::flush();
        if sig == SIGHUP {
            tracing::info!("restarting");
            return Err(restart(addrs.map(|a| a.port())));
        }
        tracing::info!("shutdown complete");
    }
    Ok(())
}

/// Replaces this process with a fresh run of the same binary and arguments, on the ports it
/// listened on (`[http, mqtt, ops]`, so that a port of 0 stays the one it picked); sockets and
/// files close on exec. Returns only if that fails.
fn restart(ports: [u16; 3]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    const FLAGS: [&str; 3] = ["--http-port", "--mqtt-port", "--ops-port"];
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return anyhow::anyhow!("restart: finding the binary: {e}"),
    };
    let mut args = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(a) = given.next() {
        let text = a.to_string_lossy();
        if FLAGS.contains(&text.as_ref()) {
            given.next();
        } else if !FLAGS.iter().any(|f| text.starts_with(&format!("{f}="))) {
            args.push(a);
        }
    }
    for (flag, port) in FLAGS.iter().zip(ports) {
        args.push(flag.into());
        args.push(port.to_string().into());
    }
    crate::app::logging::flush();
    let e = std::process::Command::new(exe).args(args).exec();
    anyhow::anyhow!("restart: {e}")
}

/// Gives tables and attributes their persisted ids, opens the shards in parallel, loads the
/// wasm resources (`wasm`: their modules), builds the indexes declared since the last run (after
/// the resources, whose code may compute an indexed attribute), and makes the table registry.
fn open_storage(
    settings: &Settings,
    data: &Path,
    mut catalog: Catalog,
    wasm: &[PathBuf],
) -> anyhow::Result<(Arc<ShardSet>, Tables, WasmHost)> {
    let mut layout = Layout::open_or_create(data, settings.threads)?;
    let missing = layout.assign(&mut catalog)?;
    let shard_count = layout.shard_count();
    let opts = ShardOptions {
        cache_bytes: (CACHE_BUDGET / shard_count as u64).max(4 << 20),
        read_cache_bytes: (READ_CACHE_BUDGET / shard_count as u64).max(2 << 20),
        tombstones: settings.replication.is_some(),
        node: settings
            .replication
            .as_ref()
            .map_or("", |r| r.node.as_str())
            .into(),
        ..ShardOptions::default()
    };
    let opening = std::time::Instant::now();
    let shards = Arc::new(
        ShardSet::open(data, shard_count, opts, settings.durability).context("opening shards")?,
    );
    tracing::info!(
        "opened {shard_count} shards in {} ms",
        opening.elapsed().as_millis()
    );
    let tables: Vec<Arc<Table>> = catalog.tables.into_iter().map(Arc::new).collect();
    let types = tables
        .iter()
        .map(|t| (t.type_name.clone(), t.clone()))
        .collect();
    let wasm = crate::wasm::load(
        wasm,
        &types,
        &settings.root.join("wasm-cache"),
        settings.wasm,
    )?;
    for m in &missing {
        let Some(table) = tables.iter().find(|t| t.id == m.table_id) else {
            continue;
        };
        build_index(&shards, table, m)?;
        layout.mark_indexed(m)?;
    }
    let max_key = |table_id: u32| {
        (0..shard_count)
            .filter_map(|i| {
                shards
                    .store(i)
                    .and_then(|s| s.max_number_key(table_id).ok().flatten())
            })
            .reduce(f64::max)
    };
    let registry = Tables::new(layout, &tables, max_key);
    Ok((shards, registry, wasm))
}

/// Builds a newly declared index on every shard, one thread per shard.
fn build_index(shards: &ShardSet, table: &Table, m: &MissingIndex) -> anyhow::Result<()> {
    let shard_count = shards.count();
    tracing::info!(
        "building index {}.{} on {shard_count} shards",
        m.table,
        m.attribute
    );
    let failed = |why: String| anyhow::anyhow!("building index {}.{}: {why}", m.table, m.attribute);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..shard_count)
            .filter_map(|i| shards.store(i).cloned())
            .map(|store| s.spawn(move || store.build_index(table, &m.attribute)))
            .collect();
        runs.into_iter().try_for_each(|r| match r.join() {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("panicked".into())),
        })
    })
}

/// Opens the user store (creating the super user from the environment the first time) and the
/// token signer.
fn open_users(settings: &Settings, data: &Path) -> anyhow::Result<(Arc<Users>, Arc<Tokens>)> {
    let users = Users::open(data)?;
    if let Some((u, p)) = &admin_from_env()
        && users.ensure_super_user(u, p)?
    {
        tracing::info!("created super user {u:?}");
    }
    if users.is_empty() {
        tracing::warn!(
            "no users exist, so every request will be refused; set TESSERA_ADMIN_USERNAME and TESSERA_ADMIN_PASSWORD"
        );
    }
    let tokens = Tokens::open(
        data,
        settings.operation_token_ttl,
        settings.refresh_token_ttl,
    )?;
    Ok((Arc::new(users), Arc::new(tokens)))
}

/// The listening addresses (HTTP, MQTT, Operations API), held by sockets that do not listen
/// until every executor has bound its own.
struct Ports {
    addrs: [SocketAddr; 3],
    reservations: [socket2::Socket; 3],
}

impl Ports {
    fn reserve(settings: &Settings) -> anyhow::Result<Ports> {
        let addr: SocketAddr = format!("{}:{}", settings.host, settings.http_port)
            .parse()
            .with_context(|| {
                format!(
                    "bad listen address {}:{}",
                    settings.host, settings.http_port
                )
            })?;
        let ip = addr.ip();
        let (http, http_port) = reserve_port(addr)?;
        let (mqtt, mqtt_port) = reserve_port(SocketAddr::new(ip, settings.mqtt_port))?;
        let (ops, ops_port) = reserve_port(SocketAddr::new(ip, settings.ops_port))?;
        Ok(Ports {
            addrs: [http_port, mqtt_port, ops_port].map(|p| SocketAddr::new(ip, p)),
            reservations: [http, mqtt, ops],
        })
    }
}

/// Kept MQTT sessions, to come back parked, each on a core picked by its client id.
type Restored = Vec<(sessions::Saved, sessions::Handover)>;

/// Opens the kept MQTT sessions and assigns each to a core.
fn restore_sessions(settings: &Settings) -> anyhow::Result<Arc<Vec<Mutex<Restored>>>> {
    let saved = sessions::open(&settings.root.join("mqtt-sessions"))
        .context("opening the MQTT sessions")?;
    if !saved.is_empty() {
        tracing::info!("restoring {} kept MQTT sessions", saved.len());
    }
    let mut per_core: Vec<Restored> = (0..settings.threads).map(|_| Vec::new()).collect();
    for s in saved {
        let handover = sessions::park(
            &s.owner.client_id,
            0,
            &s.owner.user,
            s.filters(),
            s.parked_at,
        );
        let core =
            xxhash_rust::xxh3::xxh3_64(s.owner.client_id.as_bytes()) as usize % settings.threads;
        per_core[core].push((s, handover));
    }
    Ok(Arc::new(per_core.into_iter().map(Mutex::new).collect()))
}

/// What one executor starts with.
/// The listeners served over TLS: the HTTPS, MQTTS and Operations API (TLS) addresses of those
/// whose secure port is configured, and the acceptor and `mtls` of each (the Operations API
/// takes `http.mtls`).
#[derive(Clone)]
struct Secure {
    acceptors: [(futures_rustls::TlsAcceptor, Option<Mtls>); 3],
    addrs: [Option<SocketAddr>; 3],
}

impl Secure {
    /// Reserves the secure ports configured (on `ip`); `None` when none is. Refuses a secure
    /// port without a certificate, and a certificate it cannot use.
    fn reserve(
        settings: &Settings,
        ip: std::net::IpAddr,
    ) -> anyhow::Result<(Option<Secure>, Vec<socket2::Socket>)> {
        if settings.secure_ports.iter().all(Option::is_none) {
            return Ok((None, Vec::new()));
        }
        if settings.tls.is_empty() {
            bail!("a securePort needs tls.certificate and tls.privateKey");
        }
        let certs = net::tls::Certs::load(&settings.tls)?;
        certs.watch().context("starting the certificate reloader")?;
        let [http_mtls, mqtt_mtls] = settings.mtls;
        let acceptors = [http_mtls, mqtt_mtls, http_mtls]
            .map(|m| net::tls::acceptor(&certs, m).map(|a| (a, m)));
        let [a, b, c] = acceptors;
        let acceptors = [a?, b?, c?];
        let mut reservations = Vec::new();
        let mut addrs = [None; 3];
        for (slot, port) in addrs.iter_mut().zip(settings.secure_ports) {
            if let Some(port) = port {
                let (reservation, port) = reserve_port(SocketAddr::new(ip, port))?;
                reservations.push(reservation);
                *slot = Some(SocketAddr::new(ip, port));
            }
        }
        Ok((Some(Secure { acceptors, addrs }), reservations))
    }
}

/// The connection limits' gates: the HTTP and Operations API ports', and MQTT's.
#[derive(Clone)]
struct Gates {
    http: Arc<net::Gate>,
    mqtt: Arc<net::Gate>,
}

struct CoreSetup {
    gates: Gates,
    /// The listeners served over TLS, when any is configured.
    secure: Option<Secure>,
    app: Arc<App>,
    wasm: Arc<WasmHost>,
    auth: Authenticator,
    restored: Restored,
    jobs: Arc<Jobs>,
}

/// One executor: binds its listeners (reporting on `bound`), follows the feeds of its shards,
/// sweeps expiring tables, parks its restored sessions, and serves the three fronts.
/// Commits other nodes' cross-shard transactions, one at a time, as replication hands them
/// over: the two-phase commit runs on an executor.
async fn commit_replicated(
    router: tessera_shards::Router,
    mut transactions: futures::channel::mpsc::UnboundedReceiver<crate::app::cluster::Transaction>,
) {
    use futures::StreamExt;
    while let Some((ops, done)) = transactions.next().await {
        let outcome = router
            .transact(ops)
            .await
            .map(drop)
            .map_err(|e| e.to_string());
        let _ = done.send(outcome);
    }
}

async fn serve_core(
    ctx: CoreContext,
    setup: CoreSetup,
    [http_addr, mqtt_addr, ops_addr]: [SocketAddr; 3],
    bound: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let listen = |addr: SocketAddr| {
        glommio::net::TcpListener::bind(addr)
            .map_err(|e| format!("core {}: cannot listen on {addr}: {e}", ctx.core))
    };
    let (http_listener, mqtt_listener, ops_listener) =
        match (listen(http_addr), listen(mqtt_addr), listen(ops_addr)) {
            (Ok(h), Ok(m), Ok(o)) => (h, m, o),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
    let _ = bound.send(Ok(()));
    realtime::follow(&ctx.router);
    if let Some(transactions) = setup.app.cluster.take_transactions() {
        glommio::spawn_local(commit_replicated(ctx.router.clone(), transactions)).detach();
    }
    let expiring: Vec<_> = setup.app.tables.types().values().cloned().collect();
    expiry::run(ctx.router.clone(), expiring).await;
    let worker = Rc::new(Worker::new(setup.app, ctx.router, setup.auth, setup.wasm));
    for (saved, handover) in setup.restored {
        glommio::spawn_local(mqtt::restore(worker.clone(), saved, handover)).detach();
    }
    let gates = setup.gates;
    glommio::spawn_local(mqtt::serve(
        mqtt_listener,
        worker.clone(),
        gates.mqtt.clone(),
    ))
    .detach();
    let limits = net::http::Limits {
        max_body: worker.app.settings.max_body,
        times: worker.app.settings.limits,
    };
    let ops = Rc::new(Operations::new(worker.clone(), setup.jobs));
    let rest = Rc::new(Rest::new(worker.clone()));
    if let Some(Secure { acceptors, addrs }) = setup.secure {
        let [https, mqtts, ops_tls] = acceptors;
        let bind = |addr: SocketAddr| {
            glommio::net::TcpListener::bind(addr)
                .inspect_err(|e| tracing::error!("core {}: cannot listen on {addr}: {e}", ctx.core))
                .ok()
        };
        if let Some(l) = addrs[0].and_then(bind) {
            let serving =
                net::http::serve_tls(l, rest.clone(), limits, gates.http.clone(), "HTTPS", https);
            glommio::spawn_local(serving).detach();
        }
        if let Some(l) = addrs[1].and_then(bind) {
            let serving = mqtt::serve_tls(l, worker.clone(), gates.mqtt.clone(), mqtts);
            glommio::spawn_local(serving).detach();
        }
        if let Some(l) = addrs[2].and_then(bind) {
            let what = "Operations API (TLS)";
            let serving =
                net::http::serve_tls(l, ops.clone(), limits, gates.http.clone(), what, ops_tls);
            glommio::spawn_local(serving).detach();
        }
    }
    let ops_gate = gates.http.clone();
    glommio::spawn_local(net::http::serve(
        ops_listener,
        ops,
        limits,
        ops_gate,
        "Operations API",
    ))
    .detach();
    net::http::serve(http_listener, rest, limits, gates.http, "HTTP").await;
}
