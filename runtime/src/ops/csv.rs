//! The CSV loads: `csv_data_load` (the CSV in the request), `csv_file_load` (a file on the
//! server) and `csv_url_load` (a file at an HTTP(S) URL), each run as a job ([`super::jobs`]).
//!
//! A load streams: a blocking thread parses the next batch of at most [`BATCH_ROWS`] rows (or
//! [`BATCH_BYTES`] of CSV), the core types its cells and writes it as one transaction through
//! the same path as `insert`/`update`/`upsert`, then asks for the next. Memory stays bounded by
//! one batch whatever the file's size, and the job's message says how far the load has got.
//!
//! Cells are typed as Harper types them: by the attribute's declared type where it has one, else
//! by their text (`true`, `false`, `null`, numbers without a leading zero or exponent, ISO dates
//! with a zone, JSON objects and arrays); anything else stays a string.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value as Json, json};
use tessera_storage::schema::{FieldType, Scalar};
use tessera_storage::value::parse_date;
use tessera_storage::{Table, Value};

use super::data::Write;
use super::{Operations, OpsError, bad, database_of};
use crate::app::permissions::{TablePermission, User};

/// Rows per batch (one transaction each).
const BATCH_ROWS: usize = 1_000;
/// CSV bytes per batch, at most (a batch ends after the row that crosses it).
const BATCH_BYTES: u64 = 1 << 20;
/// The content types a `csv_url_load` answer may have (Harper's list).
const URL_TYPES: [&str; 4] = [
    "text/csv",
    "application/octet-stream",
    "text/plain",
    "application/vnd.ms-excel",
];
/// How long a `csv_url_load` may wait to connect, and then between two reads.
const URL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a load's CSV comes from.
pub(super) enum Source {
    Data(String),
    File(String),
    Url(String),
}

type Reader = csv::Reader<Box<dyn Read + Send>>;

/// Opens `source` and reads its header row (blocking: runs on a blocking thread).
fn open(source: Source) -> Result<(Reader, Vec<String>), String> {
    let input: Box<dyn Read + Send> = match source {
        Source::Data(text) => Box::new(std::io::Cursor::new(text.into_bytes())),
        Source::File(path) => {
            Box::new(std::fs::File::open(&path).map_err(|e| format!("Could not read {path}: {e}"))?)
        }
        Source::Url(url) => Box::new(download(&url)?),
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .buffer_capacity(1 << 16)
        .from_reader(input);
    // Text that is not UTF-8 (a Latin-1 export, say) is read with U+FFFD for the bytes that
    // are not, as Harper reads it.
    let header = reader
        .byte_headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .collect();
    Ok((reader, header))
}

/// The body of a `GET` of `url`, once its status and content type are those of a CSV file.
fn download(url: &str) -> Result<impl Read + Send + use<>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(URL_TIMEOUT))
        .timeout_recv_response(Some(URL_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let failed = |why: String| format!("CSV Load failed from URL: {url}, {why}");
    let response = agent
        .get(url)
        .call()
        .map_err(|e| failed(format!("could not download it: {e}")))?;
    let status = response.status();
    if status != 200 {
        return Err(failed(format!(
            "status code: {}, message: {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )));
    }
    let kind = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = kind.split(';').next().unwrap_or("").trim();
    if !URL_TYPES.contains(&mime) {
        return Err(failed(format!("unsupported content type: {kind}")));
    }
    Ok(response.into_body().into_reader())
}

/// One batch of parsed rows, each with the line it starts on.
type Rows = Vec<(u64, csv::ByteRecord)>;

/// Reads the next batch of rows (blocking); an empty batch at the end of the input.
fn next_batch(mut reader: Reader) -> (Reader, Result<Rows, String>) {
    let mut rows = Vec::new();
    let start = reader.position().byte();
    loop {
        let mut row = csv::ByteRecord::new();
        match reader.read_byte_record(&mut row) {
            Ok(false) => break,
            Ok(true) => {
                // Blank lines are skipped, as Harper's parser skips them.
                if row.len() == 1 && row[0].is_empty() {
                    continue;
                }
                let line = row.position().map_or(0, |p| p.line());
                rows.push((line, row));
                if rows.len() >= BATCH_ROWS || reader.position().byte() - start >= BATCH_BYTES {
                    break;
                }
            }
            Err(e) => return (reader, Err(e.to_string())),
        }
    }
    (reader, Ok(rows))
}

/// Harper's rule for a column name: printable ASCII without a backtick or a forward slash.
fn valid_column(name: &str) -> bool {
    name.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'/' && b != b'`')
}

/// A cell's text as Harper types it for an attribute of type `ty` (`None`: undeclared).
fn cell(ty: Option<Scalar>, name: &str, text: &str) -> Result<Value, String> {
    let invalid = || format!("Invalid value for attribute {name}: \"{text}\", expecting {ty:?}");
    let Some(ty) = ty else {
        return Ok(auto_cast(text));
    };
    if text.is_empty() && !matches!(ty, Scalar::String | Scalar::Any | Scalar::Id) {
        return Ok(Value::Null);
    }
    Ok(match ty {
        Scalar::Any => auto_cast(text),
        Scalar::Int | Scalar::Long => match text {
            "null" => Value::Null,
            _ => Value::Int(text.parse().map_err(|_| invalid())?),
        },
        Scalar::Float => match text {
            "null" => Value::Null,
            _ => match text.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && plain_number(text.trim()) => Value::Float(f),
                _ => return Err(invalid()),
            },
        },
        Scalar::Boolean => match text {
            "true" | "TRUE" => Value::Bool(true),
            "false" | "FALSE" => Value::Bool(false),
            "null" => Value::Null,
            _ => return Err(invalid()),
        },
        Scalar::Date => match text.parse::<f64>() {
            Ok(ms) if ms.is_finite() => Value::Date(ms),
            _ if text == "null" => Value::Null,
            _ => Value::Date(parse_date(text).ok_or_else(invalid)?),
        },
        _ => Value::String(text.to_owned()),
    })
}

/// Digits with at most a sign and a decimal point: what a CSV cell means as a number.
fn plain_number(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty()
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
}

/// The value of an untyped cell: `true`/`false`/`null` in their common spellings, a number
/// (not one with a leading zero, which is kept as text, like a zip code), an ISO date with a
/// zone, a JSON object or array; else the text.
pub(super) fn auto_cast(text: &str) -> Value {
    match text {
        "" => return Value::String(String::new()),
        "true" | "TRUE" => return Value::Bool(true),
        "false" | "FALSE" => return Value::Bool(false),
        "null" | "NULL" | "undefined" => return Value::Null,
        _ => {}
    }
    let leading_zero = text.starts_with('0') && text != "0" && !text.starts_with("0.");
    if plain_number(text) && !leading_zero {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    if iso_date_with_zone(text)
        && let Some(ms) = parse_date(text)
    {
        return Value::Date(ms);
    }
    if ((text.starts_with('{') && text.ends_with('}'))
        || (text.starts_with('[') && text.ends_with(']')))
        && let Some(v) = crate::app::body::json_text(text)
    {
        return v;
    }
    Value::String(text.to_owned())
}

/// `YYYY-MM-DDTHH:MM[:SS[.fff]]` ending in `Z` or `±HH:MM`: the dates Harper reads from text.
fn iso_date_with_zone(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 17
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16);
    shape && (s.ends_with('Z') || s.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-'))
}

/// The declared scalar type of a column's attribute, if it has one to type by.
fn column_type(table: &Table, name: &str) -> Option<Scalar> {
    let a = table.attribute(name)?;
    if a.expr.is_some() || a.relationship.is_some() {
        return None;
    }
    match &a.ty {
        FieldType::Scalar(s) => Some(*s),
        _ => None,
    }
}

/// A row as a record of `header`'s columns; a row shorter than the header leaves the rest out,
/// cells past the header are dropped.
fn record(
    header: &[String],
    types: &[Option<Scalar>],
    line: u64,
    row: &csv::ByteRecord,
) -> Result<Value, String> {
    let mut props = Vec::with_capacity(header.len());
    for ((name, ty), text) in header.iter().zip(types).zip(row.iter()) {
        let v = cell(*ty, name, &String::from_utf8_lossy(text))
            .map_err(|e| format!("line {line}: {e}"))?;
        props.push((name.clone(), v));
    }
    Ok(Value::Object(props))
}

/// An error's message as a job reports it: the text, or Harper's whole error object when it
/// has more than a message (the permission refusals).
fn job_error(e: OpsError) -> Json {
    match e.body {
        Json::Object(o) if o.len() == 1 && o.contains_key("error") => o["error"].clone(),
        body => body,
    }
}

impl Operations {
    /// Starts a CSV load as a job and answers with its id.
    pub(super) async fn csv_load(
        &self,
        op: &str,
        env: &Value,
        user: Arc<User>,
    ) -> Result<Json, OpsError> {
        let kind = match env.get("action") {
            None => Write::Insert,
            Some(Value::String(a)) if a == "insert" => Write::Insert,
            Some(Value::String(a)) if a == "update" => Write::Update,
            Some(Value::String(a)) if a == "upsert" => Write::Upsert,
            Some(_) => {
                return Err(bad(
                    "Action is required and must be either insert, update, or upsert",
                ));
            }
        };
        let text = |key: &str| match env.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(bad(format!("{} is required", key_label(key)))),
        };
        let source = match op {
            "csv_data_load" => Source::Data(text("data")?),
            "csv_url_load" => {
                let url = text("csv_url")?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad("'csv_url' must be a valid url"));
                }
                Source::Url(url)
            }
            _ => {
                let path = text("file_path")?;
                if let Err(e) = std::fs::metadata(&path) {
                    return Err(bad(match e.kind() {
                        std::io::ErrorKind::NotFound => format!("No such file or directory {path}"),
                        std::io::ErrorKind::PermissionDenied => format!("Permission denied {path}"),
                        _ => format!("Could not read {path}: {e}"),
                    }));
                }
                Source::File(path)
            }
        };
        let Some(Value::String(table)) = env.get("table") else {
            return Err(bad("Table is required"));
        };
        // The table's permissions are checked now; its attributes' as the rows arrive.
        self.table_for(database_of(env), table, &user, kind.actions())?;
        let (database, table) = (database_of(env).to_owned(), table.clone());
        let id = self.jobs.start(op, &user.username);
        let ops = self.clone();
        let job = id.clone();
        glommio::spawn_local(async move {
            let outcome = ops
                .run_load(&job, source, &database, &table, &user, kind)
                .await;
            ops.jobs.finish(&job, outcome);
        })
        .detach();
        Ok(json!({"message": format!("Starting job with id {id}"), "job_id": id}))
    }

    /// Runs one load to its end: `Ok` with Harper's summary, or `Err` with the job's error.
    async fn run_load(
        &self,
        job: &str,
        source: Source,
        database: &str,
        table: &str,
        user: &User,
        kind: Write,
    ) -> Result<String, Json> {
        let (mut reader, header) = glommio::executor()
            .spawn_blocking(move || open(source))
            .await
            .map_err(Json::String)?;
        if let Some(bad) = header.iter().find(|h| !valid_column(h)) {
            return Err(json!(format!(
                "Invalid column name '{bad}', cancelling load operation"
            )));
        }
        let (mut records, mut written) = (0usize, 0usize);
        loop {
            let (back, batch) = glommio::executor()
                .spawn_blocking(move || next_batch(reader))
                .await;
            reader = back;
            let batch = batch.map_err(Json::String)?;
            if batch.is_empty() {
                break;
            }
            // The table is looked up per batch: the load itself may add attributes to it.
            let (t, restricted): (Arc<Table>, Option<&TablePermission>) = self
                .table_for(database, table, user, kind.actions())
                .map_err(job_error)?;
            let types: Vec<Option<Scalar>> = header.iter().map(|h| column_type(&t, h)).collect();
            let (first, last) = (batch[0].0, batch[batch.len() - 1].0);
            let rows = batch
                .iter()
                .map(|(line, row)| record(&header, &types, *line, row))
                .collect::<Result<Vec<Value>, String>>()
                .map_err(Json::String)?;
            let n = rows.len();
            let outcome = self
                .write_records(t, restricted, rows, kind, &user.username)
                .await
                .map_err(|e| match job_error(e) {
                    Json::String(s) => Json::String(format!("{s} (in lines {first} to {last})")),
                    other => other,
                })?;
            let done = written_count(&outcome);
            let skipped = match kind {
                Write::Insert => n - done,
                Write::Update | Write::Upsert => 0,
            };
            records += n - skipped;
            written += done;
            self.jobs
                .progress(job, format!("loaded {written} of {records} records so far"));
        }
        if records == 0 {
            return Ok("No records parsed from csv file.".to_owned());
        }
        Ok(format!(
            "successfully loaded {written} of {records} records"
        ))
    }
}

/// How many records a write's answer says it wrote.
fn written_count(outcome: &Value) -> usize {
    ["inserted_hashes", "update_hashes", "upserted_hashes"]
        .iter()
        .find_map(|k| match outcome.get(k) {
            Some(Value::Array(a)) => Some(a.len()),
            _ => None,
        })
        .unwrap_or(0)
}

/// Harper's label of a required key in its validation messages.
fn key_label(key: &str) -> &'static str {
    match key {
        "data" => "Data",
        "csv_url" => "'csv_url'",
        _ => "File path",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_typed_as_harper_types_them() {
        assert_eq!(auto_cast("42"), Value::Int(42));
        assert_eq!(auto_cast("-4.5"), Value::Float(-4.5));
        assert_eq!(auto_cast("01234"), Value::String("01234".into()));
        assert_eq!(auto_cast("0.5"), Value::Float(0.5));
        assert_eq!(auto_cast("1e5"), Value::String("1e5".into()));
        assert_eq!(auto_cast("TRUE"), Value::Bool(true));
        assert_eq!(auto_cast("null"), Value::Null);
        assert_eq!(auto_cast(""), Value::String(String::new()));
        assert_eq!(auto_cast("inf"), Value::String("inf".into()));
        assert_eq!(
            auto_cast("[1,\"a\"]"),
            Value::Array(vec![Value::Int(1), Value::String("a".into())])
        );
        assert!(matches!(
            auto_cast("2024-01-02T03:04:05.123Z"),
            Value::Date(_)
        ));
        assert_eq!(
            auto_cast("1996-07-04 00:00:00"),
            Value::String("1996-07-04 00:00:00".into())
        );
        assert_eq!(cell(Some(Scalar::Int), "n", "7"), Ok(Value::Int(7)));
        assert_eq!(cell(Some(Scalar::Int), "n", ""), Ok(Value::Null));
        assert_eq!(
            cell(Some(Scalar::String), "s", "007"),
            Ok(Value::String("007".into()))
        );
        assert!(
            cell(Some(Scalar::Float), "price", "cheap")
                .unwrap_err()
                .contains("price")
        );
        assert!(cell(Some(Scalar::Int), "n", "1.5").is_err());
    }

    #[test]
    fn column_names_follow_harpers_rule() {
        assert!(valid_column("company name (x)"));
        assert!(!valid_column("s/ome"));
        assert!(!valid_column("a`b"));
        assert!(!valid_column("tab\there"));
    }

    #[test]
    fn batches_are_bounded_and_skip_blank_lines() {
        let mut csv = String::from("id,name\n");
        for i in 0..2_500 {
            csv.push_str(&format!("{i},n{i}\n\n"));
        }
        let (mut reader, header) = open(Source::Data(csv)).unwrap();
        assert_eq!(header, ["id", "name"]);
        let mut sizes = Vec::new();
        loop {
            let (back, rows) = next_batch(reader);
            reader = back;
            let rows = rows.unwrap();
            if rows.is_empty() {
                break;
            }
            sizes.push(rows.len());
        }
        assert_eq!(sizes, [1_000, 1_000, 500]);
    }
}
