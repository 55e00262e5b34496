//! The instance operations (super users only): `get_configuration`, `set_configuration`,
//! `system_information` and `restart`, in Harper's shapes.
//!
//! The configuration is `<root>/tessera.yaml` under Harper's key names, with the values this
//! process runs with filled in. `set_configuration` takes Harper's flattened keys
//! (`logging_rotation_maxSize` is `logging.rotation.maxSize`), checks the ones Tessera knows,
//! and writes them to `tessera.yaml` (atomically): they take effect at the next start.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json, json};
use tessera_storage::Value;
use tessera_storage::layout::write_atomically;

use super::{Operations, OpsError, bad, fail};
use crate::app::logging::{self, LogQuery};
use crate::app::settings::{Settings, route_url};

/// What a known configuration key holds.
#[derive(Clone, Copy)]
enum Kind {
    Bool,
    Port,
    Count,
    Text,
    Level,
}

/// The keys `set_configuration` checks (others are written as given).
const KNOWN: &[(&str, Kind)] = &[
    ("http.port", Kind::Port),
    ("http.cors", Kind::Bool),
    ("http.host", Kind::Text),
    ("http.maxRequestBodySize", Kind::Count),
    ("mqtt.network.port", Kind::Port),
    ("operationsApi.network.port", Kind::Port),
    ("threads.count", Kind::Count),
    ("authentication.authorizeLocal", Kind::Bool),
    ("authentication.operationTokenTimeout", Kind::Text),
    ("authentication.refreshTokenTimeout", Kind::Text),
    ("storage.durability", Kind::Text),
    ("logging.level", Kind::Level),
    ("logging.stdStreams", Kind::Bool),
    ("logging.auditLog", Kind::Bool),
    ("logging.rotation.enabled", Kind::Bool),
    ("logging.rotation.compress", Kind::Bool),
    ("logging.rotation.maxSize", Kind::Text),
    ("logging.rotation.interval", Kind::Text),
    ("localStudio.enabled", Kind::Bool),
    ("customFunctions.enabled", Kind::Bool),
];

const LEVELS: [&str; 7] = ["trace", "debug", "info", "warn", "error", "fatal", "notify"];

/// `read_log`'s filters: `level`, `from` and `until` (dates), `start`, `limit` (1,000 by
/// default) and `order` (`asc`, the file's order, or `desc`).
fn log_query(env: &Value) -> Result<LogQuery, OpsError> {
    let date = |key: &str| match env.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => tessera_storage::value::parse_date(s)
            .map(Some)
            .ok_or_else(|| bad(format!("'{key}' must be a date"))),
        Some(Value::Int(ms)) => Ok(Some(*ms as f64)),
        Some(Value::Date(ms)) => Ok(Some(*ms)),
        Some(_) => Err(bad(format!("'{key}' must be a date"))),
    };
    let count = |key: &str, default: usize| match env.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Int(n)) if *n >= 0 => Ok(*n as usize),
        Some(_) => Err(bad(format!("'{key}' must be a non-negative integer"))),
    };
    let level = match env.get("level") {
        None | Some(Value::Null) => None,
        Some(Value::String(l)) if LEVELS.contains(&l.as_str()) => Some(l.clone()),
        Some(_) => return Err(bad(format!("'level' must be one of {}", LEVELS.join(", ")))),
    };
    let descending = match env.get("order") {
        None | Some(Value::Null) => false,
        Some(Value::String(o)) if o == "asc" || o == "desc" => o == "desc",
        Some(_) => return Err(bad("'order' must be 'asc' or 'desc'")),
    };
    Ok(LogQuery {
        level,
        from: date("from")?,
        until: date("until")?,
        start: count("start", 0)?,
        limit: count("limit", 1000)?,
        descending,
    })
}

fn config_file(root: &Path) -> PathBuf {
    root.join("tessera.yaml")
}

/// `tessera.yaml` as JSON (an empty object when there is none).
fn read_file(path: &Path) -> Result<Json, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(json!({})),
        Ok(text) => {
            serde_norway::from_str::<Json>(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(json!({})),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Sets the dotted `path` in a JSON tree, making the objects on the way.
fn set_path(tree: &mut Json, path: &str, v: Json) {
    let mut at = tree;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if !at.is_object() {
            *at = Json::Object(Map::new());
        }
        let obj = at.as_object_mut().expect("an object");
        if parts.peek().is_none() {
            obj.insert(p.to_owned(), v);
            return;
        }
        at = obj.entry(p.to_owned()).or_insert_with(|| json!({}));
    }
}

/// Sets `path` only where the tree has nothing there.
fn default_path(tree: &mut Json, path: &str, v: Json) {
    if tree
        .pointer(&format!("/{}", path.replace('.', "/")))
        .is_none()
    {
        set_path(tree, path, v);
    }
}

/// The configuration this process runs with, as Harper's `get_configuration` shows one.
fn effective(settings: &Settings, file: Json) -> Json {
    let mut tree = file;
    let root = settings.root.display().to_string();
    let running = [
        ("rootPath", json!(root)),
        ("threads.count", json!(settings.threads)),
        ("http.port", json!(settings.http_port)),
        ("http.host", json!(settings.host)),
        ("http.maxRequestBodySize", json!(settings.max_body)),
        ("mqtt.network.port", json!(settings.mqtt_port)),
        ("operationsApi.network.port", json!(settings.ops_port)),
        (
            "authentication.authorizeLocal",
            json!(settings.authorize_local),
        ),
        (
            "authentication.operationTokenTimeout",
            json!(settings.operation_token_ttl),
        ),
        (
            "authentication.refreshTokenTimeout",
            json!(settings.refresh_token_ttl),
        ),
        (
            "wasm.timeout",
            json!(settings.wasm.budget.as_millis() as u64),
        ),
        ("wasm.memory", json!(settings.wasm.memory)),
        (
            "logging.level",
            json!(settings.logging.level.to_string().to_lowercase()),
        ),
        (
            "logging.root",
            json!(settings.logging.dir.display().to_string()),
        ),
        ("logging.stdStreams", json!(settings.logging.std_streams)),
    ];
    for (path, v) in running {
        set_path(&mut tree, path, v);
    }
    let components = settings
        .apps
        .first()
        .and_then(|a| a.parent())
        .map_or_else(|| settings.root.join("components"), Path::to_path_buf);
    default_path(
        &mut tree,
        "componentsRoot",
        json!(components.display().to_string()),
    );
    default_path(&mut tree, "logging.level", json!("info"));
    default_path(
        &mut tree,
        "logging.root",
        json!(settings.root.join("log").display().to_string()),
    );
    default_path(&mut tree, "logging.stdStreams", json!(true));
    default_path(&mut tree, "logging.rotation.enabled", json!(false));
    default_path(&mut tree, "localStudio.enabled", json!(false));
    default_path(&mut tree, "http.cors", json!(false));
    tree
}

/// A `set_configuration` value for a known key, checked (`Err`: Harper's message).
fn checked(path: &str, kind: Kind, v: &Json) -> Result<Json, String> {
    let wrong =
        |what: &str| format!("HarperDB config file validation error: '{path}' must be {what}");
    Ok(match kind {
        Kind::Bool => match v {
            Json::Bool(_) => v.clone(),
            Json::String(s) if s == "true" || s == "false" => json!(s == "true"),
            _ => return Err(wrong("a boolean")),
        },
        Kind::Port | Kind::Count => {
            let n = match v {
                Json::Number(n) => n.as_u64(),
                Json::String(s) => s.parse().ok(),
                _ => None,
            };
            match n {
                Some(n) if !matches!(kind, Kind::Port) || n <= u64::from(u16::MAX) => json!(n),
                _ => return Err(wrong("a number")),
            }
        }
        Kind::Level => match v.as_str() {
            Some(l) if LEVELS.contains(&l) => v.clone(),
            _ => return Err(wrong(&format!("one of [{}]", LEVELS.join(", ")))),
        },
        Kind::Text => match v {
            Json::String(_) | Json::Number(_) => v.clone(),
            _ => return Err(wrong("a string")),
        },
    })
}

/// The dotted path of a flattened key: `logging_rotation_maxSize` is `logging.rotation.maxSize`.
fn path_of(key: &str) -> String {
    let dotted = key.replace('_', ".");
    KNOWN
        .iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(&dotted))
        .map_or(dotted, |(p, _)| (*p).to_owned())
}

/// Writes `changes` (dotted path, value) into the configuration file, atomically.
fn write_changes(path: &Path, changes: Vec<(String, Json)>) -> Result<(), String> {
    let mut tree = read_file(path)?;
    for (p, v) in changes {
        set_path(&mut tree, &p, v);
    }
    let text = serde_norway::to_string(&tree).map_err(|e| e.to_string())?;
    write_atomically(path, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a `/proc` file of `key: value kB` lines (as `/proc/meminfo`), in bytes.
fn meminfo() -> Map<String, Json> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let (total, free, available) = (get("MemTotal"), get("MemFree"), get("MemAvailable"));
    let (swap_total, swap_free) = (get("SwapTotal"), get("SwapFree"));
    let mut m = Map::new();
    m.insert("total".into(), json!(total));
    m.insert("free".into(), json!(free));
    m.insert("used".into(), json!(total.saturating_sub(free)));
    m.insert("active".into(), json!(get("Active")));
    m.insert("available".into(), json!(available));
    m.insert("swaptotal".into(), json!(swap_total));
    m.insert(
        "swapused".into(),
        json!(swap_total.saturating_sub(swap_free)),
    );
    m.insert("swapfree".into(), json!(swap_free));
    m
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_default()
}

/// One part of `system_information`.
fn section(name: &str, settings: &Settings, table_sizes: &Json) -> Json {
    let now = chrono::Utc::now();
    match name {
        "system" => json!({
            "platform": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "hostname": first_line("/proc/sys/kernel/hostname"),
            "kernel": first_line("/proc/sys/kernel/osrelease"),
            "release": first_line("/proc/sys/kernel/osrelease"),
            "tessera_version": env!("CARGO_PKG_VERSION"),
        }),
        "time" => json!({
            "current": now.timestamp_millis(),
            "uptime": first_line("/proc/uptime")
                .split_whitespace()
                .next()
                .and_then(|u| u.parse::<f64>().ok())
                .unwrap_or(0.0),
            "timezone": "+00:00",
            "timezoneName": "UTC",
        }),
        "cpu" => json!({
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "threads": settings.threads,
            "loadavg": first_line("/proc/loadavg"),
        }),
        "memory" => Json::Object(meminfo()),
        "disk" => json!({"root": settings.root.display().to_string()}),
        "network" => json!({
            "http": settings.http_port,
            "mqtt": settings.mqtt_port,
            "operationsApi": settings.ops_port,
        }),
        "harperdb_processes" => json!({"core": [{"pid": std::process::id(),
            "name": "tessera", "threads": settings.threads}]}),
        "table_size" => table_sizes.clone(),
        "threads" => json!([{"count": settings.threads}]),
        _ => Json::Null,
    }
}

/// `cluster_status` in Harper's shape: each node this one has received from, per database, with
/// the version and times of the last change applied from it (no connections and `is_enabled`
/// false when replication is not configured).
fn cluster_status(state: &crate::app::cluster::State) -> Json {
    let Some(node) = &state.node else {
        return json!({"node_name": null, "is_enabled": false, "connections": []});
    };
    let date = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(ms as i64)
            .map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    };
    let connections: Vec<Json> = state
        .peers
        .iter()
        .map(|(name, databases)| {
            let sockets: Vec<Json> = databases
                .iter()
                .map(|(database, last)| {
                    json!({
                        "database": database,
                        "connected": state.connected,
                        "nodes": [name],
                        "lastReceivedRemoteTime": date(last.version / 1000),
                        "lastReceivedLocalTime": date(last.at_ms),
                        "lastReceivedVersion": last.version as f64 / 1000.0,
                        "lastReceivedStatus": if state.connected { "Receiving" } else { "Waiting" },
                    })
                })
                .collect();
            json!({"name": name, "replicates": true, "database_sockets": sockets})
        })
        .collect();
    json!({
        "type": "cluster-status",
        "connections": connections,
        "node_name": node,
        "is_enabled": true,
    })
}

/// `replication.routes` of the configuration file `file`: listed (`cluster_get_routes`),
/// added to (`cluster_set_routes`, and `add_node` with a `url`) or taken from
/// (`cluster_delete_routes`, and `remove_node` for the routes naming its host), with Harper's
/// answers. They take effect at the next start (as in Harper): the NATS servers replication
/// fails over to.
fn change_routes(file: &Path, op: &str, env: &Json) -> Result<Json, OpsError> {
    let mut tree = read_file(file).map_err(|e| fail(500, e))?;
    let mut routes: Vec<Json> = tree
        .pointer("/replication/routes")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    if op == "cluster_get_routes" {
        return Ok(Json::Array(routes));
    }
    let same = |a: &Json, b: &Json| route_url(a).is_some() && route_url(a) == route_url(b);
    let asked = |key: &str| -> Result<Vec<Json>, OpsError> {
        let routes = match env.get(key) {
            Some(Json::Array(r)) if !r.is_empty() => r.clone(),
            _ => return Err(bad(format!("'{key}' must be a non-empty array"))),
        };
        match routes.iter().find(|r| route_url(r).is_none()) {
            Some(r) => Err(bad(format!(
                "a route is a URL or an object with 'hostname' and 'port', not {r}"
            ))),
            None => Ok(routes),
        }
    };
    let hostname = || match env.get("hostname").and_then(Json::as_str) {
        Some(h) if !h.trim().is_empty() => Ok(h.to_owned()),
        _ => Err(bad("'hostname' is required")),
    };
    let out = match op {
        "cluster_set_routes" | "add_node" => {
            let new = if op == "add_node" {
                hostname()?;
                match env.get("url") {
                    Some(url) => vec![url.clone()],
                    None => Vec::new(),
                }
            } else {
                asked("routes")?
            };
            let (mut set, mut skipped) = (Vec::new(), Vec::new());
            for r in new {
                if route_url(&r).is_none() {
                    return Err(bad(format!("'url' must be a URL, not {r}")));
                }
                if routes.iter().any(|x| same(x, &r)) {
                    skipped.push(r);
                } else {
                    routes.push(r.clone());
                    set.push(r);
                }
            }
            match op {
                "add_node" => json!({"message":
                    format!("Successfully added '{}' to cluster", hostname()?)}),
                _ => json!({"message": "cluster routes successfully set", "set": set,
                            "skipped": skipped}),
            }
        }
        _ => {
            let gone: Vec<Json> = if op == "remove_node" {
                let host = hostname()?;
                routes
                    .iter()
                    .filter(|r| {
                        route_url(r).is_some_and(|u| {
                            let rest = u.trim_start_matches("nats://");
                            rest == host || rest.starts_with(&format!("{host}:"))
                        })
                    })
                    .cloned()
                    .collect()
            } else {
                asked("routes")?
            };
            let (mut deleted, mut skipped) = (Vec::new(), Vec::new());
            for r in gone {
                match routes.iter().position(|x| same(x, &r)) {
                    Some(at) => deleted.push(routes.remove(at)),
                    None => skipped.push(r),
                }
            }
            match op {
                "remove_node" => json!({"message":
                    format!("Successfully removed '{}' from cluster", hostname()?)}),
                _ => json!({"message": "cluster routes successfully deleted",
                            "deleted": deleted, "skipped": skipped}),
            }
        }
    };
    set_path(&mut tree, "replication.routes", Json::Array(routes));
    let text = serde_norway::to_string(&tree).map_err(|e| fail(500, e.to_string()))?;
    write_atomically(file, text.as_bytes(), 0o644)
        .map_err(|e| fail(500, format!("{}: {e}", file.display())))?;
    Ok(out)
}

impl Operations {
    /// The instance operations: `get_configuration`, `set_configuration`,
    /// `system_information`.
    pub(super) async fn instance(&self, op: &str, env: &Value) -> Result<Json, OpsError> {
        let settings = self.app.settings.clone();
        let file = config_file(&settings.root);
        match op {
            "get_configuration" => {
                let tree = glommio::executor()
                    .spawn_blocking(move || read_file(&file))
                    .await
                    .map_err(|e| fail(500, e))?;
                Ok(effective(&settings, tree))
            }
            "set_configuration" => {
                let Value::Object(props) = env else {
                    return Err(bad("set_configuration takes an object"));
                };
                let mut changes = Vec::new();
                for (key, v) in props {
                    if key == "operation" {
                        continue;
                    }
                    let path = path_of(key);
                    let v = crate::app::output::json_value(v);
                    let v = match KNOWN.iter().find(|(p, _)| *p == path) {
                        Some((_, kind)) => checked(&path, *kind, &v).map_err(bad)?,
                        None => v,
                    };
                    changes.push((path, v));
                }
                if changes.is_empty() {
                    return Err(bad("set_configuration needs at least one setting"));
                }
                glommio::executor()
                    .spawn_blocking(move || write_changes(&file, changes))
                    .await
                    .map_err(|e| fail(500, e))?;
                Ok(
                    json!({"message": "Configuration successfully set. You must restart HarperDB for new config settings to take effect."}),
                )
            }
            "cluster_status" => Ok(cluster_status(&self.app.cluster.state())),
            "cluster_get_routes"
            | "cluster_set_routes"
            | "cluster_delete_routes"
            | "add_node"
            | "remove_node" => {
                let env = crate::app::output::json_value(env);
                let removed = (op == "remove_node")
                    .then(|| {
                        env.get("hostname")
                            .and_then(|h| h.as_str())
                            .map(str::to_owned)
                    })
                    .flatten();
                let op = op.to_owned();
                let out = glommio::executor()
                    .spawn_blocking(move || change_routes(&file, &op, &env))
                    .await?;
                if let Some(name) = removed {
                    self.app.cluster.remove(&name);
                }
                Ok(out)
            }
            "read_log" => {
                let q = log_query(env)?;
                let dir = settings.logging.dir.clone();
                let events = glommio::executor()
                    .spawn_blocking(move || logging::read(&dir, &q))
                    .await
                    .map_err(|e| fail(500, format!("reading the log: {e}")))?;
                Ok(Json::Array(events))
            }
            "restart" => {
                // The answer goes out first; then the process restarts in place (the server's
                // SIGHUP: flush, then run again with the configuration read anew).
                std::thread::spawn(|| {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    let _ = signal_hook::low_level::raise(signal_hook::consts::SIGHUP);
                });
                Ok(json!({"message": "Restarting HarperDB. This may take up to 60 seconds."}))
            }
            _ => {
                let wanted: Vec<String> = match env.get("attributes") {
                    Some(Value::Array(a)) => a
                        .iter()
                        .filter_map(|v| match v {
                            Value::String(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                    _ => [
                        "system",
                        "time",
                        "cpu",
                        "memory",
                        "disk",
                        "network",
                        "harperdb_processes",
                        "table_size",
                        "threads",
                    ]
                    .map(String::from)
                    .to_vec(),
                };
                let sizes = json!(
                    self.app
                        .tables
                        .tables(None)
                        .iter()
                        .map(|t| json!({"schema": t.database, "table": t.name}))
                        .collect::<Vec<_>>()
                );
                let mut out = Map::new();
                for name in wanted {
                    let v = section(&name, &settings, &sizes);
                    if !v.is_null() {
                        out.insert(name, v);
                    }
                }
                Ok(Json::Object(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_keys_and_their_checks() {
        assert_eq!(
            path_of("logging_rotation_maxSize"),
            "logging.rotation.maxSize"
        );
        assert_eq!(
            path_of("operationsapi_network_port"),
            "operationsApi.network.port"
        );
        assert_eq!(
            checked("http.cors", Kind::Bool, &json!("spinach")).unwrap_err(),
            "HarperDB config file validation error: 'http.cors' must be a boolean"
        );
        assert_eq!(
            checked("http.cors", Kind::Bool, &json!("true")),
            Ok(json!(true))
        );
        assert!(checked("http.port", Kind::Port, &json!(70000)).is_err());
        assert!(checked("logging.level", Kind::Level, &json!("loud")).is_err());
    }

    #[test]
    fn changes_are_written_into_the_file_and_keep_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = config_file(dir.path());
        std::fs::write(&file, "http:\n  port: 9000\n").unwrap();
        write_changes(
            &file,
            vec![("logging.rotation.maxSize".into(), json!("12M"))],
        )
        .unwrap();
        let tree = read_file(&file).unwrap();
        assert_eq!(tree["http"]["port"], 9000);
        assert_eq!(tree["logging"]["rotation"]["maxSize"], "12M");
    }
}
