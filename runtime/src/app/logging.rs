//! The process's log: `tracing` events at and above `logging.level`, each one JSON line in
//! `<logging.root>/tessera.log` (`<root>/log` by default), written by a thread of its own so that
//! no executor waits on the disk, and, unless `logging.stdStreams` is `false`, a line on standard
//! error. `read_log` reads the file back with Harper's filters ([`read`]).
//!
//! What is logged is what an operator needs (starts, stops, refusals of configuration, errors);
//! no request is logged at the default level, and neither secrets nor request bodies ever are.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value as Json;
use tracing::level_filters::LevelFilter;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// The log file's name in its directory.
pub const FILE: &str = "tessera.log";

/// `logging.*` of the configuration.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// `logging.level`: `trace`, `debug`, `info` (the default), `warn` or `error` (Harper's
    /// `notify` is `info`, its `fatal` `error`).
    pub level: LevelFilter,
    /// `logging.root`: the directory of the log file.
    pub dir: PathBuf,
    /// `logging.stdStreams`: also write each event to standard error (on by default).
    pub std_streams: bool,
}

/// A `logging.level` by Harper's names.
pub fn level(name: &str) -> Option<LevelFilter> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "info" | "notify" => LevelFilter::INFO,
        "warn" | "warning" => LevelFilter::WARN,
        "error" | "fatal" => LevelFilter::ERROR,
        _ => return None,
    })
}

/// The writer thread's guard: dropping it writes out what is queued.
static GUARD: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Whether events go to standard error.
static TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Whether logged events reach standard error (so that a caller need not write them there too).
pub fn to_stderr() -> bool {
    TO_STDERR.load(Ordering::Relaxed)
}

/// Starts logging for the process (once; a later call changes nothing).
pub fn init(s: &LogSettings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&s.dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.dir.join(FILE))?;
    let (writer, guard) = tracing_appender::non_blocking(file);
    let to_file = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(writer)
        .with_filter(s.level);
    let to_stderr = s.std_streams.then(|| {
        tracing_subscriber::fmt::layer()
            .without_time()
            .with_target(false)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .with_filter(s.level)
    });
    let subscriber = tracing_subscriber::registry().with(to_file).with(to_stderr);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        *GUARD.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
        TO_STDERR.store(s.std_streams, Ordering::Relaxed);
    }
    Ok(())
}

/// Logging to standard error only, for the commands that serve nothing (`tessera build`).
pub fn init_stderr() {
    let subscriber = tracing_subscriber::fmt()
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::INFO)
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        TO_STDERR.store(true, Ordering::Relaxed);
    }
}

/// Writes out every event logged so far (before the process exits or replaces itself).
pub fn flush() {
    GUARD.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// What `read_log` asks for.
#[derive(Debug, Default)]
pub struct LogQuery {
    /// Only events of this level.
    pub level: Option<String>,
    /// Only events at or after, and at or before, these times (ms since the epoch).
    pub from: Option<f64>,
    pub until: Option<f64>,
    /// Events skipped first, and the most returned.
    pub start: usize,
    pub limit: usize,
    /// Newest first.
    pub descending: bool,
}

/// The events of the log file in `dir` that `q` selects, as
/// `{level, message, timestamp, target}` (and the event's other fields).
pub fn read(dir: &Path, q: &LogQuery) -> std::io::Result<Vec<Json>> {
    let file = match std::fs::File::open(dir.join(FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut selected = Vec::new();
    for line in BufReader::new(file).lines() {
        let Ok(Json::Object(mut event)) = serde_json::from_str::<Json>(&line?) else {
            continue;
        };
        let level = event
            .get("level")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if q.level
            .as_deref()
            .is_some_and(|l| !l.eq_ignore_ascii_case(&level))
        {
            continue;
        }
        let at = event
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(tessera_storage::value::parse_date);
        if q.from.is_some_and(|f| at.is_none_or(|t| t < f))
            || q.until.is_some_and(|u| at.is_none_or(|t| t > u))
        {
            continue;
        }
        event.insert("level".into(), Json::String(level));
        selected.push(Json::Object(event));
    }
    if q.descending {
        selected.reverse();
    }
    Ok(selected.into_iter().skip(q.start).take(q.limit).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_read_back_by_level_time_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"timestamp":"2026-12-07T10:00:00.000000Z","level":"INFO","message":"started","target":"t"}"#,
            "not json",
            r#"{"timestamp":"2026-12-07T10:00:01.000000Z","level":"WARN","message":"odd","target":"t"}"#,
            r#"{"timestamp":"2026-12-07T10:00:02.000000Z","level":"INFO","message":"stopped","target":"t"}"#,
        ];
        std::fs::write(dir.path().join(FILE), lines.join("\n")).unwrap();
        let messages = |q: LogQuery| -> Vec<String> {
            read(dir.path(), &q)
                .unwrap()
                .iter()
                .map(|e| e["message"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(messages(all_of(10)), ["started", "odd", "stopped"]);
        let info = LogQuery {
            level: Some("info".into()),
            limit: 10,
            descending: true,
            ..LogQuery::default()
        };
        assert_eq!(messages(info), ["stopped", "started"]);
        let t = tessera_storage::value::parse_date("2026-12-07T10:00:01Z").unwrap();
        let since = LogQuery {
            from: Some(t),
            start: 1,
            limit: 1,
            ..LogQuery::default()
        };
        assert_eq!(messages(since), ["stopped"]);
        assert_eq!(read(dir.path(), &all_of(10)).unwrap()[1]["level"], "warn");
        assert!(
            read(&dir.path().join("none"), &all_of(1))
                .unwrap()
                .is_empty()
        );
    }

    fn all_of(limit: usize) -> LogQuery {
        LogQuery {
            limit,
            ..LogQuery::default()
        }
    }
}
