//! `export_local` (super users): runs a search (`search_by_id`/`search_by_hash`,
//! `search_by_value`, `search_by_conditions` or `sql`) as a job and writes what it finds to a
//! file on the server, `<path>/<filename>.<format>`, as a JSON array or as CSV with a header of
//! every attribute the records have (in the order they first appear; objects and arrays as
//! JSON). The search runs with the caller's permissions; the file is written off the executor.
//! The records are held in memory while they are written (as the search answers them).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tessera_storage::Value;

use super::{Operations, OpsError, Out, bad, current_name};
use crate::app::output;
use crate::app::permissions::User;

/// The searches an export may run.
const SEARCHES: &[&str] = &[
    "search_by_id",
    "search_by_value",
    "search_by_conditions",
    "sql",
];

impl Operations {
    pub(super) async fn export_local(
        &self,
        env: &Value,
        user: &Arc<User>,
    ) -> Result<Json, OpsError> {
        let format = match env.get("format") {
            Some(Value::String(f)) if f == "json" || f == "csv" => f.clone(),
            Some(_) => return Err(bad("format must be 'json' or 'csv'")),
            None => return Err(bad("format is required")),
        };
        let dir = match env.get("path") {
            Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
            _ => return Err(bad("path is required")),
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "path '{}' is not a directory, please supply a valid folder path",
                    dir.display()
                )));
            }
            Err(_) => return Err(bad(format!("path '{}' does not exist", dir.display()))),
        }
        let name = match env.get("filename") {
            Some(Value::String(f)) if !f.is_empty() && !f.contains('/') => f.clone(),
            Some(Value::String(f)) if f.contains('/') => {
                return Err(bad("filename must not contain '/'"));
            }
            _ => (tessera_storage::shard::now_micros() / 1000).to_string(),
        };
        let file = dir.join(format!("{name}.{format}"));
        let mut search = match env.get("search_operation") {
            Some(s @ Value::Object(_)) => s.clone(),
            _ => return Err(bad("search_operation is required")),
        };
        let op = match search.get("operation") {
            Some(Value::String(o)) => current_name(o).to_owned(),
            _ => return Err(bad("search_operation.operation is required")),
        };
        if !SEARCHES.contains(&op.as_str()) {
            return Err(bad(format!(
                "Operation '{op}' is not a valid search operation for an export"
            )));
        }
        let id = self.jobs.start("export_local", &user.username);
        let (ops, job, user) = (self.clone(), id.clone(), user.clone());
        glommio::spawn_local(async move {
            let outcome = match ops.run(&op, &mut search, &user).await {
                Ok(found) => {
                    let rows = match found {
                        Out::Value(v) => output::json_value(&v),
                        Out::Json(j) => j,
                    };
                    let (path, csv) = (file.clone(), format == "csv");
                    glommio::executor()
                        .spawn_blocking(move || write(&path, &rows, csv))
                        .await
                        .map(|n| {
                            format!(
                                "Successfully exported {} locally: {n} records to {}",
                                format.to_uppercase(),
                                file.display()
                            )
                        })
                        .map_err(|e| Json::String(format!("{}: {e}", file.display())))
                }
                Err(e) => Err(e.body),
            };
            ops.jobs.finish(&job, outcome);
        })
        .detach();
        Ok(json!({"message": format!("Starting job with id {id}"), "job_id": id}))
    }
}

/// Writes `rows` (a JSON array) to `path` as JSON or CSV; returns how many records.
fn write(path: &Path, rows: &Json, csv: bool) -> std::io::Result<usize> {
    let empty = Vec::new();
    let records = rows.as_array().unwrap_or(&empty);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    if !csv {
        serde_json::to_writer(&mut out, records)?;
        out.flush()?;
        return Ok(records.len());
    }
    let mut columns: Vec<&str> = Vec::new();
    for r in records {
        for k in r.as_object().into_iter().flat_map(|o| o.keys()) {
            if !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    let mut w = ::csv::Writer::from_writer(out);
    w.write_record(&columns)?;
    for r in records {
        w.write_record(columns.iter().map(|c| match r.get(*c) {
            None | Some(Json::Null) => String::new(),
            Some(Json::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        }))?;
    }
    w.flush()?;
    Ok(records.len())
}
