//! Caching tables' sources (the seed's `sourcedFrom`): which table loads its missing and expired
//! records from where, the loads in flight (one per key, whatever core asks), and the keys a
//! source answered "not found" for (negative caching). The read-through itself is
//! `data/cache.rs`.
//!
//! A source is declared in a component's `config.yaml` under `sources`, per table:
//!
//! ```yaml
//! sources:
//!   Breed:
//!     url: https://api.example/breeds/{id}   # {id}: the record id, percent-encoded
//!     timeout: 5000                          # ms, the whole exchange (default 10000)
//!     maxBytes: 1048576                      # the longest answer taken (default 10 MiB)
//!     allowStaleWhileRevalidate: true        # serve an expired record while reloading it
//!     headers: { Authorization: Bearer ... }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::channel::oneshot;
use futures::future::LocalBoxFuture;
use tessera_storage::{Table, Value};

use super::outbound::{FetchError, Outbound};
use super::permissions::User;
use super::{App, AppError};

/// A source as `config.yaml` declares it, before the table has an id.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The table it fills: database and name.
    pub database: String,
    pub table: String,
    pub origin: Origin,
    pub stale_while_revalidate: bool,
}

/// A record as a source gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct FromSource {
    pub record: Value,
    /// How long it may be kept (seconds), when the source said (`Cache-Control: max-age`);
    /// else the table's expiration.
    pub max_age: Option<u64>,
}

/// The lifetime a `Cache-Control` header gives (`s-maxage` over `max-age`; `no-store` and
/// `no-cache`: none, so that every read asks again).
pub fn max_age<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>) -> Option<u64> {
    let (_, value) = headers
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("cache-control"))?;
    let directives: Vec<(String, Option<&str>)> = value
        .split(',')
        .map(|d| {
            let (k, v) = d
                .trim()
                .split_once('=')
                .map_or((d.trim(), None), |(k, v)| (k, Some(v)));
            (
                k.to_ascii_lowercase(),
                v.map(|v| v.trim().trim_matches('"')),
            )
        })
        .collect();
    let seconds = |name: &str| {
        directives
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref()?.parse().ok())
    };
    if directives
        .iter()
        .any(|(k, _)| k == "no-store" || k == "no-cache")
    {
        return Some(0);
    }
    seconds("s-maxage").or_else(|| seconds("max-age"))
}

/// A source written as code (a wasm resource's `SOURCE_FOR`), called on the core that needs it.
pub trait Loader: Send + Sync {
    /// Record `id` (as the URL writes it), asked as `user`: `Ok(None)` when there is none.
    fn load(
        &self,
        app: Arc<App>,
        id: String,
        user: Option<Arc<User>>,
    ) -> LocalBoxFuture<'static, Result<Option<FromSource>, LoadError>>;

    /// Hands a write of record `id` to the source: `method` PUT, PATCH or DELETE, with the
    /// record or the changes for the first two.
    fn write(
        &self,
        app: Arc<App>,
        method: &'static str,
        id: String,
        record: Option<Value>,
        user: Option<Arc<User>>,
    ) -> LocalBoxFuture<'static, Result<(), AppError>>;

    /// What `describe` says it is.
    fn name(&self) -> String;
}

/// Where a source's records come from.
#[derive(Clone)]
pub enum Origin {
    /// An HTTP(S) origin: `url` with `{id}` replaced by the record id. GET loads a record (a
    /// JSON object, or any other content type kept as it came); PUT, PATCH and DELETE hand
    /// the table's writes to it.
    Http(HttpOrigin),
    /// Code: a wasm resource.
    Code(Arc<dyn Loader>),
}

/// An HTTP(S) origin of a source (`sources.<table>` in config.yaml).
#[derive(Debug, Clone)]
pub struct HttpOrigin {
    /// With `{id}` where the record id goes.
    pub url: String,
    /// Sent with every request.
    pub headers: Vec<(String, String)>,
    /// The whole exchange.
    pub timeout: Duration,
    /// The longest answer taken.
    pub max_bytes: usize,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Http(http) => f.debug_tuple("Http").field(&http.url).finish(),
            Origin::Code(l) => f.debug_tuple("Code").field(&l.name()).finish(),
        }
    }
}

impl SourceConfig {
    /// Reads `sources.<table>` of a component's `config.yaml`.
    pub fn parse(
        database: &str,
        table: &str,
        v: &serde_norway::Value,
    ) -> anyhow::Result<SourceConfig> {
        let at = |key: &str| format!("sources.{table}.{key}");
        let Some(map) = v.as_mapping() else {
            bail!("sources.{table} must be a mapping");
        };
        for key in map.keys().filter_map(|k| k.as_str()) {
            if ![
                "url",
                "timeout",
                "maxBytes",
                "allowStaleWhileRevalidate",
                "headers",
            ]
            .contains(&key)
            {
                bail!("unknown key {}", at(key));
            }
        }
        let url = v
            .get("url")
            .and_then(|u| u.as_str())
            .with_context(|| format!("{} is missing (an http(s) URL with {{id}})", at("url")))?;
        super::outbound::origin_of(url).map_err(|e| anyhow::anyhow!("{}: {e}", at("url")))?;
        if !url.contains("{id}") {
            bail!("{}: {url:?} has no {{id}}", at("url"));
        }
        let number = |key: &str, default: u64| -> anyhow::Result<u64> {
            match v.get(key) {
                None => Ok(default),
                Some(n) => n
                    .as_u64()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{} must be a positive integer", at(key))),
            }
        };
        let headers = match v.get("headers") {
            None => Vec::new(),
            Some(h) => h
                .as_mapping()
                .with_context(|| format!("{} must be a mapping", at("headers")))?
                .iter()
                .map(|(k, v)| match (k.as_str(), v.as_str()) {
                    (Some(k), Some(v)) => Ok((k.to_owned(), v.to_owned())),
                    _ => bail!("{} must map names to strings", at("headers")),
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let stale_while_revalidate = match v.get("allowStaleWhileRevalidate") {
            None => false,
            Some(b) => b.as_bool().with_context(|| {
                format!("{} must be true or false", at("allowStaleWhileRevalidate"))
            })?,
        };
        Ok(SourceConfig {
            database: database.to_owned(),
            table: table.to_owned(),
            origin: Origin::Http(HttpOrigin {
                url: url.to_owned(),
                headers,
                timeout: Duration::from_millis(number("timeout", 10_000)?),
                max_bytes: number("maxBytes", 10 << 20)? as usize,
            }),
            stale_while_revalidate,
        })
    }
}

/// Why a load gave no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The source says the record does not exist (cached as absent).
    NotFound,
    /// The source did not answer in time (504).
    Timeout(String),
    /// The source failed: refused, an error status, an answer that is no record (502).
    Failed(String),
}

/// What a load ends with, for every request that waited on it.
pub type Loaded = Result<(), LoadError>;

/// One caching table's source and its state.
pub struct Source {
    pub config: SourceConfig,
    /// Loads in flight: key -> the requests waiting for it (on any core).
    flights: Mutex<HashMap<Vec<u8>, Vec<oneshot::Sender<Loaded>>>>,
    /// Keys the source answered "not found" for: key -> until when (ms; `u64::MAX`: until
    /// invalidated or written).
    absent: Mutex<HashMap<Vec<u8>, u64>>,
}

/// Who is to load a key. Either way the request gets the load's outcome on the receiver.
pub enum Flight {
    /// This request: it loads, then calls [`Source::land`].
    Lead(oneshot::Receiver<Loaded>),
    /// Another request loads it; this one waits for its outcome.
    Follow(oneshot::Receiver<Loaded>),
}

impl Source {
    pub fn new(config: SourceConfig) -> Source {
        Source {
            config,
            flights: Mutex::default(),
            absent: Mutex::default(),
        }
    }

    /// Joins the load of `key`, or starts it.
    pub fn board(&self, key: &[u8]) -> Flight {
        let (tx, rx) = oneshot::channel();
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        match flights.get_mut(key) {
            Some(waiting) => {
                waiting.push(tx);
                Flight::Follow(rx)
            }
            None => {
                flights.insert(key.to_vec(), vec![tx]);
                Flight::Lead(rx)
            }
        }
    }

    /// Whether a load of `key` is in flight (a stale read starts none then).
    pub fn in_flight(&self, key: &[u8]) -> bool {
        let flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.contains_key(key)
    }

    /// Ends the load of `key` the caller led: every request waiting gets its outcome.
    pub fn land(&self, key: &[u8], outcome: &Loaded) {
        let waiting = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.remove(key).unwrap_or_default()
        };
        for w in waiting {
            let _ = w.send(outcome.clone());
        }
    }

    /// Whether the source said `key` does not exist, and that still holds at `now_ms`.
    pub fn known_absent(&self, key: &[u8], now_ms: u64) -> bool {
        let mut absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        match absent.get(key) {
            Some(until) if *until > now_ms => true,
            Some(_) => {
                absent.remove(key);
                false
            }
            None => false,
        }
    }

    /// Notes that the source has no record `key` until `until_ms`.
    pub fn note_absent(&self, key: &[u8], until_ms: u64) {
        let mut absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        absent.insert(key.to_vec(), until_ms);
    }

    /// Forgets that `key` was absent (it was written, or invalidated).
    pub fn forget_absent(&self, key: &[u8]) {
        let mut absent = self.absent.lock().unwrap_or_else(|e| e.into_inner());
        absent.remove(key);
    }

    /// The source as `describe_table` and `GET /<Table>` show it (the URL without its query,
    /// which may carry a key; headers not shown).
    pub fn describe(&self) -> Value {
        let s = |k: &str, v: Value| (k.to_owned(), v);
        match &self.config.origin {
            Origin::Http(HttpOrigin { url, timeout, .. }) => Value::Object(vec![
                s("type", Value::String("http".into())),
                s(
                    "url",
                    Value::String(url.split('?').next().unwrap_or_default().to_owned()),
                ),
                s("timeout", Value::Int(timeout.as_millis() as i64)),
                s(
                    "allowStaleWhileRevalidate",
                    Value::Bool(self.config.stale_while_revalidate),
                ),
            ]),
            Origin::Code(loader) => Value::Object(vec![
                s("type", Value::String("resource".into())),
                s("resource", Value::String(loader.name())),
                s(
                    "allowStaleWhileRevalidate",
                    Value::Bool(self.config.stale_while_revalidate),
                ),
            ]),
        }
    }
}

/// Every caching table's source, and the outbound client they (and wasm resources) call
/// through.
#[derive(Default)]
pub struct Sources {
    by_table: HashMap<u32, Arc<Source>>,
    pub outbound: Outbound,
}

impl Sources {
    /// The sources of `configs`, each resolved to its table by `table`.
    pub fn new(
        configs: Vec<SourceConfig>,
        outbound: Outbound,
        table: impl Fn(&str, &str) -> Option<Arc<Table>>,
    ) -> anyhow::Result<Sources> {
        let mut by_table = HashMap::new();
        for c in configs {
            let t = table(&c.database, &c.table)
                .with_context(|| format!("sources.{}: no such table", c.table))?;
            by_table.insert(t.id, Arc::new(Source::new(c)));
        }
        Ok(Sources { by_table, outbound })
    }

    /// `description` (of `describe_table` or `GET /<Table>`) with `sources` set to the table's.
    pub fn describe_into(&self, table: u32, description: &mut Value, key: &str) {
        let Value::Object(props) = description else {
            return;
        };
        let list = Value::Array(self.of(table).map(|s| s.describe()).into_iter().collect());
        match props.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = list,
            None => props.push((key.to_owned(), list)),
        }
    }

    /// The source of the table with id `table`, if it is a caching table.
    pub fn of(&self, table: u32) -> Option<&Arc<Source>> {
        if self.by_table.is_empty() {
            return None;
        }
        self.by_table.get(&table)
    }
}

/// The status a failed load answers a request with.
pub fn load_failure(table: &str, e: &LoadError) -> AppError {
    match e {
        LoadError::NotFound => AppError::NoSuchRecord,
        LoadError::Timeout(why) => AppError::Resource {
            status: 504,
            message: format!("the source of {table} did not answer in time: {why}"),
        },
        LoadError::Failed(why) => AppError::Resource {
            status: 502,
            message: format!("the source of {table} failed: {why}"),
        },
    }
}

impl From<FetchError> for LoadError {
    fn from(e: FetchError) -> LoadError {
        match e {
            FetchError::Timeout => LoadError::Timeout(e.to_string()),
            other => LoadError::Failed(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        let v = serde_norway::from_str("url: http://127.0.0.1:1/b/{id}").unwrap();
        Source::new(SourceConfig::parse("data", "Breed", &v).unwrap())
    }

    #[test]
    fn one_request_leads_a_key_and_the_rest_get_its_outcome() {
        let s = source();
        let Flight::Lead(lead) = s.board(b"k") else {
            panic!("no lead for a new key")
        };
        let mut waiting: Vec<_> = (0..3)
            .map(|_| match s.board(b"k") {
                Flight::Follow(rx) => rx,
                Flight::Lead(_) => panic!("a second lead for one key"),
            })
            .collect();
        waiting.push(lead);
        assert!(matches!(s.board(b"other"), Flight::Lead(_)));
        assert!(s.in_flight(b"k"));
        s.land(b"k", &Err(LoadError::NotFound));
        assert!(!s.in_flight(b"k"));
        for rx in waiting {
            assert_eq!(
                futures::executor::block_on(rx).unwrap(),
                Err(LoadError::NotFound)
            );
        }
        assert!(
            matches!(s.board(b"k"), Flight::Lead(_)),
            "a new load after landing"
        );
    }

    #[test]
    fn cache_control_gives_the_lifetime() {
        let of = |v: &str| max_age([("Cache-Control", v)]);
        assert_eq!(of("public, max-age=30"), Some(30));
        assert_eq!(of("max-age=30, s-maxage=\"5\""), Some(5));
        assert_eq!(of("no-store"), Some(0));
        assert_eq!(of("private"), None);
        assert_eq!(of("max-age=soon"), None);
        assert_eq!(max_age([("etag", "x")]), None);
    }

    #[test]
    fn an_absent_key_is_known_until_its_time() {
        let s = source();
        s.note_absent(b"k", 1000);
        assert!(s.known_absent(b"k", 999));
        assert!(!s.known_absent(b"k", 1000));
        assert!(!s.known_absent(b"k", 0), "dropped once past");
    }

    #[test]
    fn a_source_without_id_in_its_url_or_with_a_typo_is_refused() {
        for bad in [
            "url: http://h/b",
            "url: ftp://h/{id}",
            "{url: 'http://h/{id}', timout: 5}",
            "{url: 'http://h/{id}', timeout: -1}",
        ] {
            let v = serde_norway::from_str(bad).unwrap();
            assert!(SourceConfig::parse("data", "Breed", &v).is_err(), "{bad}");
        }
    }
}
