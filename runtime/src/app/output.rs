//! Response bodies in every content type (docs/rest.md): records and collection rows from
//! their stored MessagePack, with or without `select()`.
//!
//! MessagePack records go out as stored; JSON is transcoded without building a tree; CBOR and CSV
//! decode the record first. A collection is a JSON array, a sequence of MessagePack maps, an
//! indefinite-length CBOR array, or CSV with a header row.

use tessera_protocol::MediaType;
use tessera_protocol::query::Select;
use tessera_storage::record::RecordRef;
use tessera_storage::value::{self, msgpack_to_json};
use tessera_storage::{Table, Value, cbor};

use super::error::AppError;

/// Appends `v` in `fmt` (CSV: one cell).
pub fn encode_value(v: &Value, fmt: MediaType, out: &mut Vec<u8>) {
    match fmt {
        MediaType::MsgPack => v.write_msgpack(out),
        MediaType::Cbor => cbor::write(v, out),
        MediaType::Csv => csv_cell(v, out),
        MediaType::Yaml => yaml(v, out),
        _ => v.write_json(out),
    }
}

/// YAML through serde_norway, by way of the JSON form (dates as ISO strings, bytes as `Buffer`).
fn yaml(v: &Value, out: &mut Vec<u8>) {
    let _ = serde_norway::to_writer(&mut *out, &json_value(v));
}

/// A value in its JSON form as a `serde_json::Value` (dates as ISO strings, bytes as `Buffer`).
pub fn json_value(v: &Value) -> serde_json::Value {
    serde_json::from_str(&v.to_json()).unwrap_or_default()
}

/// The inverse of [`json_value`]: a `serde_json::Value` as a value.
pub fn from_json(j: &serde_json::Value) -> Value {
    super::body::json_text(&j.to_string()).unwrap_or(Value::Null)
}

fn corrupt(e: impl std::fmt::Display) -> AppError {
    AppError::Internal(format!("a stored record is corrupt: {e}"))
}

/// A stored record's header and body.
pub fn stored_record(stored: &[u8]) -> Result<RecordRef<'_>, AppError> {
    RecordRef::parse(stored).ok_or_else(|| corrupt("no header"))
}

/// A stored record's body as a value.
pub fn body_value(body: &[u8]) -> Result<Value, AppError> {
    value::from_msgpack(body).map_err(corrupt)
}

/// The stored record's body (MessagePack); `None` once it has expired.
pub fn live_body(stored: &[u8], now_ms: u64) -> Result<Option<&[u8]>, AppError> {
    let rec = stored_record(stored)?;
    Ok((!rec.is_expired(now_ms)).then_some(rec.body))
}

/// The stored record as a value; `None` once it has expired.
pub fn live_value(stored: &[u8], now_ms: u64) -> Result<Option<Value>, AppError> {
    live_body(stored, now_ms)?.map(body_value).transpose()
}

/// Appends one record (a stored MessagePack body), shaped by `select` when given.
pub fn write_record(
    body: &[u8],
    select: Option<&Select>,
    fmt: MediaType,
    out: &mut Vec<u8>,
) -> Result<(), AppError> {
    match (select, fmt) {
        (None, MediaType::MsgPack) => out.extend_from_slice(body),
        (None, MediaType::Json) => {
            msgpack_to_json(body, out).map_err(corrupt)?;
        }
        (None, MediaType::Csv) => {
            let rec = value::from_msgpack(body).map_err(corrupt)?;
            let Value::Object(props) = &rec else {
                return Err(corrupt("not an object"));
            };
            let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
            csv_row(names.iter().map(|n| Value::String((*n).to_owned())), out);
            csv_row(props.iter().map(|(_, v)| v.clone()), out);
        }
        (None, _) => encode_value(&value::from_msgpack(body).map_err(corrupt)?, fmt, out),
        (Some(select), MediaType::Csv) => {
            let names = select
                .fields()
                .iter()
                .map(|f| Value::String(f.name.clone()));
            csv_row(names, out);
            csv_row(selected(body, select)?.into_iter(), out);
        }
        (Some(select), _) => encode_value(&project(body, select)?, fmt, out),
    }
    Ok(())
}

/// The values of the selected properties, in order (missing ones as `None`).
fn selected_fields(body: &[u8], select: &Select) -> Result<Vec<Option<Value>>, AppError> {
    let names: Vec<&str> = select.fields().iter().map(|f| f.name.as_str()).collect();
    value::extract_fields(body, &names).map_err(corrupt)
}

/// The selected values as cells (missing ones as null).
fn selected(body: &[u8], select: &Select) -> Result<Vec<Value>, AppError> {
    Ok(selected_fields(body, select)?
        .into_iter()
        .map(|v| v.unwrap_or(Value::Null))
        .collect())
}

/// The selected properties of a stored record, shaped as `select()` asks (docs/rest.md).
fn project(body: &[u8], select: &Select) -> Result<Value, AppError> {
    Ok(shape(select, selected_fields(body, select)?))
}

/// One row from the values of the selected fields, in order (`None`: the record lacks it): a
/// bare value, an object without the missing ones, or an array with nulls for them.
pub fn shape(select: &Select, values: Vec<Option<Value>>) -> Value {
    match select {
        Select::Value(_) => values.into_iter().next().flatten().unwrap_or(Value::Null),
        Select::Object(fields) => Value::Object(
            fields
                .iter()
                .zip(values)
                .filter_map(|(f, v)| Some((f.name.clone(), v?)))
                .collect(),
        ),
        Select::Array(_) => Value::Array(
            values
                .into_iter()
                .map(|v| v.unwrap_or(Value::Null))
                .collect(),
        ),
    }
}

/// Writes the rows of a collection one at a time.
pub struct Rows<'q> {
    fmt: MediaType,
    select: Option<&'q Select>,
    /// CSV: the columns (the selection, or the table's stored attributes in schema order).
    columns: Vec<String>,
    written: usize,
}

impl<'q> Rows<'q> {
    pub fn new(table: &Table, select: Option<&'q Select>, fmt: MediaType) -> Rows<'q> {
        let columns = match (fmt, select) {
            (MediaType::Csv, Some(s)) => s.fields().iter().map(|f| f.name.clone()).collect(),
            (MediaType::Csv, None) => table
                .attributes
                .iter()
                .filter(|a| a.is_stored())
                .map(|a| a.name.clone())
                .collect(),
            _ => Vec::new(),
        };
        Rows {
            fmt,
            select,
            columns,
            written: 0,
        }
    }

    /// Appends a row as YAML: a one-item sequence, so that the rows together form one sequence.
    fn yaml_row(v: &Value, out: &mut Vec<u8>) {
        yaml(&Value::Array(vec![v.clone()]), out);
    }

    /// What comes before the first row.
    pub fn begin(&self, out: &mut Vec<u8>) {
        match self.fmt {
            MediaType::Json => out.push(b'['),
            MediaType::Cbor => cbor::write_array_start(out),
            MediaType::Csv => {
                csv_row(self.columns.iter().map(|c| Value::String(c.clone())), out);
            }
            _ => {}
        }
    }

    /// Appends one row from a stored record body.
    pub fn row(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), AppError> {
        if self.fmt == MediaType::Json && self.written > 0 {
            out.push(b',');
        }
        self.written += 1;
        if self.fmt == MediaType::Yaml {
            let v = match self.select {
                Some(select) => project(body, select)?,
                None => value::from_msgpack(body).map_err(corrupt)?,
            };
            Self::yaml_row(&v, out);
            return Ok(());
        }
        if self.fmt != MediaType::Csv {
            return write_record(body, self.select, self.fmt, out);
        }
        let values = value::extract_fields(body, &self.columns).map_err(corrupt)?;
        csv_row(values.into_iter().map(|v| v.unwrap_or(Value::Null)), out);
        Ok(())
    }

    /// Appends one row already shaped as a value (a selection with related records).
    pub fn row_value(&mut self, v: &Value, out: &mut Vec<u8>) {
        if self.fmt == MediaType::Json && self.written > 0 {
            out.push(b',');
        }
        self.written += 1;
        if self.fmt == MediaType::Yaml {
            Self::yaml_row(v, out);
        } else if self.fmt == MediaType::Csv {
            let cells = self.columns.iter().map(|c| match v {
                Value::Object(_) => v.get(c).cloned().unwrap_or(Value::Null),
                other => other.clone(),
            });
            csv_row(cells, out);
        } else {
            encode_value(v, self.fmt, out);
        }
    }

    /// What comes after the last row.
    pub fn end(&self, out: &mut Vec<u8>) {
        match self.fmt {
            MediaType::Json => out.push(b']'),
            MediaType::Cbor => cbor::write_array_end(out),
            MediaType::Yaml if self.written == 0 => out.extend_from_slice(b"[]\n"),
            _ => {}
        }
    }
}

/// One CSV line (RFC 4180: cells quoted when they hold a comma, quote or line break).
fn csv_row(cells: impl Iterator<Item = Value>, out: &mut Vec<u8>) {
    for (i, v) in cells.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_cell(&v, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// One CSV cell: strings as they are, null empty, arrays and objects as JSON.
fn csv_cell(v: &Value, out: &mut Vec<u8>) {
    let text;
    let s: &[u8] = match v {
        Value::Null => b"",
        Value::String(s) => s.as_bytes(),
        other => {
            let mut json = Vec::new();
            other.write_json(&mut json);
            text = match other {
                Value::Date(_) => json[1..json.len() - 1].to_vec(),
                _ => json,
            };
            &text
        }
    };
    if s.iter().any(|c| matches!(c, b',' | b'"' | b'\r' | b'\n')) {
        out.push(b'"');
        for &c in s {
            if c == b'"' {
                out.push(b'"');
            }
            out.push(c);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(s);
    }
}

/// Sets on a decoded record each attribute its table computes from the record's own
/// (`@computed(from:)`, or a resource's code), for readers that name attributes rather than
/// write the record out.
pub fn with_computed(table: &Table, rec: &mut Value) {
    for a in &table.attributes {
        if let Some(e) = &a.expr {
            let v = e.eval(&|n| rec.get(n));
            rec.set(&a.name, v);
        }
    }
}

/// The properties `names` of a record, in that order, absent ones as null.
pub fn pick(full: &Value, names: &[String]) -> Value {
    Value::Object(
        names
            .iter()
            .map(|n| (n.clone(), full.get(n).cloned().unwrap_or(Value::Null)))
            .collect(),
    )
}
