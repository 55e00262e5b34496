//! Settings: command-line flags over environment variables over `<root>/tessera.yaml` over
//! defaults. Keys in `tessera.yaml` follow Harper's configuration names where Harper has one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tessera_storage::shard::Durability;
use tracing::level_filters::LevelFilter;

use super::logging::{self, LogSettings};

/// Tessera: a Harper-compatible database, cache, REST server and broker in one process.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server with the given application components (directories holding
    /// `config.yaml` and `schema.graphql`).
    Run(RunArgs),
    /// Build the components' wasm resource crates (`wasmResource.crate`) and compile every wasm
    /// module into `<root>/wasm-cache/`, checking schemas and modules as `run` does; serves
    /// nothing.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Application component directories.
    #[arg(value_name = "APP_DIR")]
    pub apps: Vec<PathBuf>,

    /// Root directory whose `wasm-cache/` receives the compiled modules [default:
    /// ./tessera-data].
    #[arg(long, env = "TESSERA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Application component directories.
    #[arg(value_name = "APP_DIR")]
    pub apps: Vec<PathBuf>,

    /// Root directory for data, `tessera.yaml` and caches [default: ./tessera-data].
    #[arg(long, env = "TESSERA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    /// Executor threads, one pinned per CPU [default: the CPUs this process may use]
    /// (tessera.yaml: threads.count).
    #[arg(long, env = "TESSERA_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// HTTP (REST) port; 0 picks a free one [default: 9926] (tessera.yaml: http.port).
    #[arg(long, env = "TESSERA_HTTP_PORT", value_name = "PORT")]
    pub http_port: Option<u16>,

    /// MQTT port [default: 1883] (tessera.yaml: mqtt.network.port).
    #[arg(long, env = "TESSERA_MQTT_PORT", value_name = "PORT")]
    pub mqtt_port: Option<u16>,

    /// Operations API port [default: 9925] (tessera.yaml: operationsApi.network.port).
    #[arg(long, env = "TESSERA_OPS_PORT", value_name = "PORT")]
    pub ops_port: Option<u16>,

    /// Address the listeners bind to [default: 0.0.0.0] (tessera.yaml: http.host).
    #[arg(long, env = "TESSERA_HOST", value_name = "ADDR")]
    pub host: Option<String>,

    /// When a write is acknowledged: `durable` (after fsync, the default) or `buffered` (after
    /// the journal write) (tessera.yaml: storage.durability).
    #[arg(long, env = "TESSERA_DURABILITY", value_name = "MODE")]
    pub durability: Option<String>,
}

/// The resolved settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub apps: Vec<PathBuf>,
    pub root: PathBuf,
    pub threads: usize,
    pub host: String,
    pub http_port: u16,
    pub mqtt_port: u16,
    pub ops_port: u16,
    pub durability: Durability,
    /// `http.maxRequestBodySize`.
    pub max_body: usize,
    /// How long a client may take over a request, and how many connections may be open.
    pub limits: ConnectionLimits,
    /// `authentication.authorizeLocal`: treat loopback requests as the super user (Harper's
    /// development default; off in Tessera unless configured).
    pub authorize_local: bool,
    /// `authentication.operationTokenTimeout` (seconds; `1d` by default).
    pub operation_token_ttl: u64,
    /// `authentication.refreshTokenTimeout` (seconds; `30d` by default).
    pub refresh_token_ttl: u64,
    /// `wasm.timeout` (ms, 1000 by default) and `wasm.memory` (bytes, 64 MiB by default): what
    /// one request of a wasm resource may take.
    pub wasm: WasmLimits,
    /// A component's `graphql: true`: Harper's GraphQL query endpoint at `/graphql`.
    pub graphql: bool,
    /// `logging.level`, `logging.root`, `logging.stdStreams`.
    pub logging: LogSettings,
    /// `tls`: one certificate (`certificate`, `privateKey`, `certificateAuthority`: PEM files
    /// relative to the root) or a list of them, picked by the name a client asks for (SNI).
    pub tls: Vec<TlsFiles>,
    /// `http.mtls` and `mqtt.network.mtls`: client certificates on HTTPS (and the Operations
    /// API over TLS), and on MQTTS.
    pub mtls: [Option<Mtls>; 2],
    /// `http.securePort`, `mqtt.network.securePort`, `operationsApi.network.securePort`:
    /// HTTPS (and WSS), MQTTS and the Operations API over TLS (with `tls`); 0 picks a free port.
    pub secure_ports: [Option<u16>; 3],
    /// `replication`: the cluster this node replicates with, when configured.
    pub replication: Option<Replication>,
}

/// `replication` of `tessera.yaml`: this node's name and the NATS server (with JetStream) that
/// carries every node's committed changes.
#[derive(Debug, Clone)]
pub struct Replication {
    /// `replication.hostname` (Harper's key), else the machine's host name.
    pub node: String,
    /// `replication.nats`: the NATS server's URL (Tessera's key: Harper's nodes talk to one
    /// another over WebSockets; Tessera's through JetStream).
    pub nats: String,
    /// `replication.databases`: the databases that replicate (all when unset).
    pub databases: Option<Vec<String>>,
    /// `replication.routes` (Harper's key, set by `cluster_set_routes`): other nodes' NATS
    /// servers, as URLs, that the client fails over to when `nats` is unreachable.
    pub routes: Vec<String>,
    /// `replication.streamReplicas` (Tessera's key): how many NATS servers of a JetStream
    /// cluster keep the stream, when this node is the one that creates it (1 when unset).
    pub stream_replicas: usize,
    /// How this node proves itself to NATS and checks the server.
    pub access: NatsAccess,
}

/// `replication.natsUser`/`natsPassword` or `natsToken`, and `replication.natsTls`
/// (`certificateAuthority`: TLS required, the server checked against it; `certificate` and
/// `privateKey`: this node's client certificate): Tessera's keys, as Harper's NATS clustering had
/// its cluster user and `clustering.tls`. Without them, anyone who reaches the NATS server can
/// publish changes (and users) to every node.
#[derive(Clone, Default, PartialEq)]
pub struct NatsAccess {
    pub user: Option<(String, String)>,
    pub token: Option<String>,
    pub certificate_authority: Option<PathBuf>,
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// Secrets never logged.
impl std::fmt::Debug for NatsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAccess")
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("certificate_authority", &self.certificate_authority)
            .field("client_certificate", &self.client_certificate)
            .finish()
    }
}

/// A route of `replication.routes` as a NATS URL: a URL as written (`wss://` and `ws://`
/// become `nats://`: Tessera's nodes meet through NATS), or `{hostname (or host), port}`.
pub fn route_url(route: &serde_json::Value) -> Option<String> {
    if let Some(url) = route.as_str() {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        return (!rest.is_empty()).then(|| format!("nats://{rest}"));
    }
    let host = route
        .get("hostname")
        .or_else(|| route.get("host"))?
        .as_str()?;
    let port = route.get("port").and_then(|p| {
        p.as_u64()
            .or_else(|| p.as_str().and_then(|s| s.parse().ok()))
    });
    Some(match port {
        Some(port) => format!("nats://{host}:{port}"),
        None => format!("nats://{host}"),
    })
}

/// `replication.*` of `tessera.yaml` (`None` unless `replication.nats` is set).
fn replication(yaml: &serde_norway::Value, root: &Path) -> anyhow::Result<Option<Replication>> {
    let Some(nats) = yaml_get(yaml, "replication.nats") else {
        return Ok(None);
    };
    let nats = nats
        .as_str()
        .context("tessera.yaml: replication.nats must be a URL such as nats://127.0.0.1:4222")?
        .to_owned();
    let node = match yaml_get(yaml, "replication.hostname").and_then(|v| v.as_str()) {
        Some(n) => n.to_owned(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .context("tessera.yaml: replication.hostname is not set and the host has no name")?,
    };
    let databases = match yaml_get(yaml, "replication.databases") {
        None | Some(serde_norway::Value::Null) => None,
        Some(serde_norway::Value::String(s)) if s == "*" => None,
        Some(serde_norway::Value::Sequence(list)) => Some(
            list.iter()
                .map(|v| {
                    v.as_str()
                        .or_else(|| v.get("database").and_then(|d| d.as_str()))
                        .map(str::to_owned)
                        .context("tessera.yaml: replication.databases lists database names")
                })
                .collect::<anyhow::Result<_>>()?,
        ),
        Some(_) => bail!("tessera.yaml: replication.databases must be a list of database names"),
    };
    let routes = match yaml_get(yaml, "replication.routes") {
        None | Some(serde_norway::Value::Null) => Vec::new(),
        Some(serde_norway::Value::Sequence(list)) => list
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .ok()
                    .as_ref()
                    .and_then(route_url)
                    .context("tessera.yaml: replication.routes lists URLs or {hostname, port}")
            })
            .collect::<anyhow::Result<_>>()?,
        Some(_) => bail!("tessera.yaml: replication.routes must be a list"),
    };
    let stream_replicas = match yaml_get(yaml, "replication.streamReplicas") {
        None | Some(serde_norway::Value::Null) => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=5) => n as usize,
            _ => bail!("tessera.yaml: replication.streamReplicas must be 1 to 5"),
        },
    };
    let text = |key: &str| -> anyhow::Result<Option<String>> {
        match yaml_get(yaml, key) {
            None | Some(serde_norway::Value::Null) => Ok(None),
            Some(v) => match v {
                serde_norway::Value::String(s) => Ok(Some(s.clone())),
                serde_norway::Value::Number(n) => Ok(Some(n.to_string())),
                _ => bail!("tessera.yaml: {key} must be a string"),
            },
        }
    };
    let user = match (
        text("replication.natsUser")?,
        text("replication.natsPassword")?,
    ) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => bail!("tessera.yaml: replication.natsUser and replication.natsPassword go together"),
    };
    let path = |key: &str| -> anyhow::Result<Option<PathBuf>> {
        Ok(text(&format!("replication.natsTls.{key}"))?.map(|p| root.join(p)))
    };
    let client_certificate = match (path("certificate")?, path("privateKey")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("tessera.yaml: replication.natsTls.certificate and privateKey go together"),
    };
    let access = NatsAccess {
        user,
        token: text("replication.natsToken")?,
        certificate_authority: path("certificateAuthority")?,
        client_certificate,
    };
    Ok(Some(Replication {
        node,
        nats,
        databases,
        routes,
        stream_replicas,
        access,
    }))
}

/// A certificate chain and its private key, PEM files; and the authority whose certificates
/// clients may present (mTLS).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    pub certificate_authority: Option<PathBuf>,
}

/// `tls` of `tessera.yaml`: one entry or a list.
fn tls_files(yaml: &serde_norway::Value, root: &Path) -> anyhow::Result<Vec<TlsFiles>> {
    let entries = match yaml_get(yaml, "tls") {
        None | Some(serde_norway::Value::Null) => return Ok(Vec::new()),
        Some(serde_norway::Value::Sequence(list)) => list.iter().collect(),
        Some(one) => vec![one],
    };
    entries
        .into_iter()
        .map(|e| {
            let path = |key: &str| e.get(key).and_then(|v| v.as_str()).map(|p| root.join(p));
            match (path("certificate"), path("privateKey")) {
                (Some(certificate), Some(private_key)) => Ok(TlsFiles {
                    certificate,
                    private_key,
                    certificate_authority: path("certificateAuthority"),
                }),
                _ => bail!("tessera.yaml: each tls entry needs certificate and privateKey"),
            }
        })
        .collect()
}

/// `mtls` of a listener: a client certificate, checked against `tls.certificateAuthority`,
/// authenticates the user its subject's Common Name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mtls {
    /// `required: true`: a client without a valid certificate is refused at the handshake.
    pub required: bool,
    /// `user: null`: the certificate authenticates no user (the request still must).
    pub names_user: bool,
}

/// `KEY` as `true`/`false` or `{required, user}` (Harper's forms).
fn mtls(yaml: &serde_norway::Value, key: &str) -> anyhow::Result<Option<Mtls>> {
    match yaml_get(yaml, key) {
        None | Some(serde_norway::Value::Null) | Some(serde_norway::Value::Bool(false)) => Ok(None),
        Some(serde_norway::Value::Bool(true)) => Ok(Some(Mtls {
            required: false,
            names_user: true,
        })),
        Some(m @ serde_norway::Value::Mapping(_)) => {
            let names_user = match m.get("user") {
                None => true,
                Some(serde_norway::Value::Null) => false,
                Some(serde_norway::Value::String(s)) if s == "Common Name" || s == "CN" => true,
                Some(other) => {
                    bail!("tessera.yaml: {key}.user must be \"Common Name\" or null, not {other:?}")
                }
            };
            Ok(Some(Mtls {
                required: m.get("required").and_then(|v| v.as_bool()).unwrap_or(false),
                names_user,
            }))
        }
        Some(other) => bail!("tessera.yaml: {key} must be true, false or a map, not {other:?}"),
    }
}

/// What a client may take: time for a request and connections at once.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// `http.headersTimeout`: from a request's first byte to the end of its head.
    pub headers: Duration,
    /// `http.timeout`: from a request's first byte to the end of its body.
    pub request: Duration,
    /// `http.keepAliveTimeout`: how long a connection may wait idle for its next request.
    pub keep_alive: Duration,
    /// `http.maxConnections` (HTTP and Operations API ports together) and
    /// `mqtt.network.maxConnections`: open connections at once (0: no limit).
    pub http_connections: usize,
    pub mqtt_connections: usize,
}

impl Default for ConnectionLimits {
    /// Harper's defaults for the times; no limit on connections.
    fn default() -> Self {
        ConnectionLimits {
            headers: Duration::from_secs(60),
            request: Duration::from_secs(120),
            keep_alive: Duration::from_secs(30),
            http_connections: 0,
            mqtt_connections: 0,
        }
    }
}

/// `http.*Timeout`, `http.timeout` and the connection limits of `tessera.yaml`.
fn connection_limits(yaml: &serde_norway::Value) -> anyhow::Result<ConnectionLimits> {
    let d = ConnectionLimits::default();
    let ms = |key: &str, default: Duration| -> anyhow::Result<Duration> {
        Ok(yaml_u64(yaml, key)?.map_or(default, Duration::from_millis))
    };
    let count =
        |key: &str| -> anyhow::Result<usize> { Ok(yaml_u64(yaml, key)?.unwrap_or(0) as usize) };
    Ok(ConnectionLimits {
        headers: ms("http.headersTimeout", d.headers)?,
        request: ms("http.timeout", d.request)?,
        keep_alive: ms("http.keepAliveTimeout", d.keep_alive)?,
        http_connections: count("http.maxConnections")?,
        mqtt_connections: count("mqtt.network.maxConnections")?,
    })
}

/// What one request of a wasm resource may take (`wasm.timeout`, `wasm.memory`).
#[derive(Debug, Clone, Copy)]
pub struct WasmLimits {
    /// Wall time one request may spend in the guest.
    pub budget: Duration,
    /// Linear memory one instance may grow to.
    pub memory: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            budget: Duration::from_secs(1),
            memory: 64 << 20,
        }
    }
}

/// A duration setting: seconds, or a number with `s`, `m`, `h` or `d` (`1d`, `30d`, `90m`).
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (n, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = n.trim().parse().ok()?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A duration setting (`1d`, `90m`, `3600`), or `default` when absent.
fn yaml_duration(root: &serde_norway::Value, key: &str, default: u64) -> anyhow::Result<u64> {
    match yaml_get(root, key) {
        None | Some(serde_norway::Value::Null) => Ok(default),
        Some(serde_norway::Value::Number(n)) => n
            .as_u64()
            .with_context(|| format!("tessera.yaml: {key} must be a non-negative duration")),
        Some(serde_norway::Value::String(s)) => parse_duration(s)
            .with_context(|| format!("tessera.yaml: {key} must be a duration such as 1d or 90m")),
        Some(_) => anyhow::bail!("tessera.yaml: {key} must be a duration such as 1d or 90m"),
    }
}

/// Looks up a dotted key (`http.port`) in the YAML tree.
fn yaml_get<'a>(root: &'a serde_norway::Value, dotted: &str) -> Option<&'a serde_norway::Value> {
    dotted.split('.').try_fold(root, |v, k| v.get(k))
}

fn yaml_u64(root: &serde_norway::Value, key: &str) -> anyhow::Result<Option<u64>> {
    match yaml_get(root, key) {
        None | Some(serde_norway::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .with_context(|| format!("tessera.yaml: {key} must be a non-negative integer")),
    }
}

fn port(
    cli: Option<u16>,
    yaml: &serde_norway::Value,
    key: &str,
    default: u16,
) -> anyhow::Result<u16> {
    Ok(match cli {
        Some(p) => p,
        None => match yaml_u64(yaml, key)? {
            Some(p) => {
                u16::try_from(p).with_context(|| format!("tessera.yaml: {key} is not a port"))?
            }
            None => default,
        },
    })
}

impl Settings {
    /// Resolves the settings of `tessera run`.
    pub fn resolve(args: RunArgs) -> anyhow::Result<Settings> {
        let root = args.root.unwrap_or_else(default_root);
        let yaml = read_yaml(&root.join("tessera.yaml"))?;
        let threads = match args.threads {
            Some(n) => n,
            None => match yaml_u64(&yaml, "threads.count")? {
                Some(n) => n as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        };
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        let durability = match args
            .durability
            .or_else(|| {
                yaml_get(&yaml, "storage.durability")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .as_deref()
        {
            None | Some("durable") => Durability::Durable,
            Some("buffered") => Durability::Buffered,
            Some(other) => bail!("durability must be durable or buffered, not {other:?}"),
        };
        let host = args
            .host
            .or_else(|| {
                yaml_get(&yaml, "http.host")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "0.0.0.0".to_owned());
        Ok(Settings {
            apps: args.apps,
            threads,
            host,
            http_port: port(args.http_port, &yaml, "http.port", 9926)?,
            mqtt_port: port(args.mqtt_port, &yaml, "mqtt.network.port", 1883)?,
            ops_port: port(args.ops_port, &yaml, "operationsApi.network.port", 9925)?,
            durability,
            max_body: yaml_u64(&yaml, "http.maxRequestBodySize")?
                .map_or(10_000_000, |n| n as usize),
            limits: connection_limits(&yaml)?,
            authorize_local: yaml_get(&yaml, "authentication.authorizeLocal")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            operation_token_ttl: yaml_duration(
                &yaml,
                "authentication.operationTokenTimeout",
                86_400,
            )?,
            refresh_token_ttl: yaml_duration(
                &yaml,
                "authentication.refreshTokenTimeout",
                30 * 86_400,
            )?,
            wasm: wasm_limits(&yaml)?,
            graphql: false,
            logging: log_settings(&yaml, &root)?,
            tls: tls_files(&yaml, &root)?,
            mtls: [mtls(&yaml, "http.mtls")?, mtls(&yaml, "mqtt.network.mtls")?],
            secure_ports: [
                "http.securePort",
                "mqtt.network.securePort",
                "operationsApi.network.securePort",
            ]
            .map(|key| {
                yaml_u64(&yaml, key)?
                    .map(|p| {
                        u16::try_from(p)
                            .with_context(|| format!("tessera.yaml: {key} is not a port"))
                    })
                    .transpose()
            })
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?
            .try_into()
            .map_err(|_| anyhow::anyhow!("three secure ports"))?,
            replication: replication(&yaml, &root)?,
            root,
        })
    }
}

/// `logging.*` of `tessera.yaml`.
fn log_settings(yaml: &serde_norway::Value, root: &Path) -> anyhow::Result<LogSettings> {
    let level = match yaml_get(yaml, "logging.level") {
        None | Some(serde_norway::Value::Null) => LevelFilter::INFO,
        Some(v) => v.as_str().and_then(logging::level).with_context(
            || "tessera.yaml: logging.level must be trace, debug, info, warn or error",
        )?,
    };
    let dir = yaml_get(yaml, "logging.root")
        .and_then(|v| v.as_str())
        .map_or_else(|| root.join("log"), PathBuf::from);
    let std_streams = match yaml_get(yaml, "logging.stdStreams") {
        None | Some(serde_norway::Value::Null) => true,
        Some(v) => v
            .as_bool()
            .context("tessera.yaml: logging.stdStreams must be true or false")?,
    };
    Ok(LogSettings {
        level,
        dir,
        std_streams,
    })
}

/// `wasm.timeout` and `wasm.memory` of `tessera.yaml`.
pub fn wasm_limits(yaml: &serde_norway::Value) -> anyhow::Result<WasmLimits> {
    let default = WasmLimits::default();
    Ok(WasmLimits {
        budget: yaml_u64(yaml, "wasm.timeout")?.map_or(default.budget, Duration::from_millis),
        memory: yaml_u64(yaml, "wasm.memory")?.map_or(default.memory, |n| n as usize),
    })
}

/// `--root` when it is not given.
pub fn default_root() -> PathBuf {
    PathBuf::from("tessera-data")
}

/// Reads a YAML file; a missing file is an empty mapping.
pub fn read_yaml(path: &Path) -> anyhow::Result<serde_norway::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().is_empty() => Ok(serde_norway::Value::Null),
        Ok(s) => serde_norway::from_str(&s)
            .with_context(|| format!("{} is not valid YAML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(serde_norway::Value::Null),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(root: &Path) -> RunArgs {
        RunArgs {
            apps: vec![],
            root: Some(root.to_owned()),
            threads: None,
            http_port: None,
            mqtt_port: None,
            ops_port: None,
            host: None,
            durability: None,
        }
    }

    #[test]
    fn flags_over_yaml_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tessera.yaml"),
            "http:\n  port: 8080\nthreads:\n  count: 3\nstorage:\n  durability: buffered\n",
        )
        .unwrap();
        let s = Settings::resolve(args(dir.path())).unwrap();
        assert_eq!(
            (s.http_port, s.threads, s.ops_port, s.durability),
            (8080, 3, 9925, Durability::Buffered)
        );
        let mut a = args(dir.path());
        a.http_port = Some(1);
        assert_eq!(Settings::resolve(a).unwrap().http_port, 1);
        std::fs::write(dir.path().join("tessera.yaml"), "http:\n  port: x\n").unwrap();
        assert!(Settings::resolve(args(dir.path())).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1d"), Some(86_400));
        assert_eq!(parse_duration("90m"), Some(5400));
        assert_eq!(parse_duration("15"), Some(15));
        assert_eq!(parse_duration("x"), None);
    }
}

#[cfg(test)]
mod replication_tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<Option<Replication>> {
        replication(&serde_norway::from_str(yaml).unwrap(), Path::new("/r"))
    }

    #[test]
    fn nats_credentials_and_tls_are_read_and_never_shown() {
        let r = parse(
            "replication:\n  hostname: a\n  nats: nats://n:4222\n  natsUser: u\n  \
             natsPassword: hush-hush\n  natsTls:\n    certificateAuthority: ca.pem\n    \
             certificate: c.pem\n    privateKey: k.pem\n",
        )
        .unwrap()
        .unwrap();
        let access = &r.access;
        assert_eq!(access.user, Some(("u".into(), "hush-hush".into())));
        assert_eq!(access.certificate_authority, Some("/r/ca.pem".into()));
        assert_eq!(
            access.client_certificate,
            Some(("/r/c.pem".into(), "/r/k.pem".into()))
        );
        assert!(!format!("{r:?}").contains("hush"), "{r:?}");
        let token = parse("replication:\n  hostname: a\n  nats: n\n  natsToken: t0ken-x\n")
            .unwrap()
            .unwrap();
        assert_eq!(token.access.token.as_deref(), Some("t0ken-x"));
        assert!(!format!("{token:?}").contains("t0ken"));
        // One without the other is a mistake.
        assert!(parse("replication:\n  hostname: a\n  nats: n\n  natsUser: u\n").is_err());
        let half = "replication:\n  hostname: a\n  nats: n\n  natsTls:\n    certificate: c\n";
        assert!(parse(half).is_err());
    }
}
