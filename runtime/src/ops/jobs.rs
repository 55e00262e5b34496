//! Jobs: operations that run after their answer (the CSV loads), as Harper runs them. Starting
//! one answers `{"message": "Starting job with id <id>", "job_id": <id>}` at once; `get_job`
//! reports its status (`IN_PROGRESS`, then `COMPLETE` or `ERROR`) and message from any core.
//!
//! The registry is one per process, shared by every core's Operations API behind a mutex held
//! only to copy a job in or out. It keeps the [`KEPT`] most recent jobs in memory; a job does not
//! survive a restart (Harper keeps them in its `system.hdb_job` table).

use std::collections::VecDeque;
use std::sync::Mutex;

use hashbrown::HashMap;
use serde_json::{Value as Json, json};

/// How many jobs the registry remembers; the oldest finished ones are forgotten first.
const KEPT: usize = 10_000;

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Status {
    InProgress,
    Complete,
    Error,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::InProgress => "IN_PROGRESS",
            Status::Complete => "COMPLETE",
            Status::Error => "ERROR",
        }
    }
}

/// One job, as `get_job` reports it.
#[derive(Clone, Debug)]
struct Job {
    id: String,
    kind: String,
    user: String,
    status: Status,
    /// Progress while it runs; the result or the error (a string, or Harper's error object
    /// when the error has more than a message) once it ends.
    message: Json,
    /// Epoch milliseconds.
    created: u64,
    ended: Option<u64>,
}

impl Job {
    fn to_json(&self) -> Json {
        let mut out = json!({
            "id": self.id,
            "type": self.kind,
            "user": self.user,
            "status": self.status.name(),
            "created_datetime": self.created,
            "start_datetime": self.created,
        });
        if !self.message.is_null() {
            out["message"] = self.message.clone();
        }
        if let Some(end) = self.ended {
            out["end_datetime"] = json!(end);
        }
        out
    }
}

#[derive(Default)]
struct Registry {
    jobs: HashMap<String, Job>,
    /// Ids, oldest first.
    order: VecDeque<String>,
}

/// Every job this process has run recently.
#[derive(Default)]
pub struct Jobs {
    inner: Mutex<Registry>,
}

fn now_ms() -> u64 {
    tessera_storage::shard::now_micros() / 1000
}

impl Jobs {
    fn with<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers a new job of operation `kind` run by `user`, in progress; returns its id.
    pub fn start(&self, kind: &str, user: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let job = Job {
            id: id.clone(),
            kind: kind.to_owned(),
            user: user.to_owned(),
            status: Status::InProgress,
            message: Json::Null,
            created: now_ms(),
            ended: None,
        };
        self.with(|r| {
            if r.order.len() >= KEPT {
                let finished = r.order.iter().position(|id| {
                    r.jobs
                        .get(id)
                        .is_some_and(|j| j.status != Status::InProgress)
                });
                if let Some(i) = finished.and_then(|i| r.order.remove(i)) {
                    r.jobs.remove(&i);
                }
            }
            r.order.push_back(id.clone());
            r.jobs.insert(id.clone(), job);
        });
        id
    }

    /// Says how far a running job has got.
    pub fn progress(&self, id: &str, message: String) {
        self.with(|r| {
            if let Some(j) = r.jobs.get_mut(id) {
                j.message = Json::String(message);
            }
        });
    }

    /// Ends a job: complete with `Ok(message)`, failed with `Err(message or error object)`.
    pub fn finish(&self, id: &str, outcome: Result<String, Json>) {
        self.with(|r| {
            if let Some(j) = r.jobs.get_mut(id) {
                (j.status, j.message) = match outcome {
                    Ok(m) => (Status::Complete, Json::String(m)),
                    Err(e) => (Status::Error, e),
                };
                j.ended = Some(now_ms());
            }
        });
    }

    /// `get_job`: the job with `id`, as a one-element array (empty when unknown).
    pub fn get(&self, id: &str) -> Json {
        Json::Array(self.with(|r| r.jobs.get(id).map(Job::to_json).into_iter().collect()))
    }

    /// `search_jobs_by_start_date`: the jobs started from `from` to `to` (epoch ms, inclusive).
    pub fn started_between(&self, from: f64, to: f64) -> Json {
        Json::Array(self.with(|r| {
            r.order
                .iter()
                .filter_map(|id| r.jobs.get(id))
                .filter(|j| (from..=to).contains(&(j.created as f64)))
                .map(Job::to_json)
                .collect()
        }))
    }

    /// The status of job `id`, if known.
    #[cfg(test)]
    pub fn status(&self, id: &str) -> Option<Status> {
        self.with(|r| r.jobs.get(id).map(|j| j.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_then_completes_or_fails() {
        let jobs = Jobs::default();
        let a = jobs.start("csv_data_load", "admin");
        let b = jobs.start("csv_file_load", "admin");
        assert_eq!(jobs.get(&a)[0]["status"], "IN_PROGRESS");
        jobs.progress(&a, "loaded 10 records".into());
        assert_eq!(jobs.get(&a)[0]["message"], "loaded 10 records");
        jobs.finish(&a, Ok("successfully loaded 10 of 10 records".into()));
        jobs.finish(&b, Err(json!({"error": "no", "unauthorized_access": []})));
        let a = &jobs.get(&a)[0];
        assert_eq!(a["status"], "COMPLETE");
        assert_eq!(a["type"], "csv_data_load");
        assert_eq!(a["user"], "admin");
        assert!(a["end_datetime"].as_u64().unwrap() >= a["start_datetime"].as_u64().unwrap());
        assert_eq!(jobs.get(&b)[0]["message"]["error"], "no");
        assert_eq!(jobs.get("nope"), json!([]));
        assert_eq!(
            jobs.started_between(0.0, f64::MAX)
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(jobs.started_between(0.0, 1.0), json!([]));
    }

    #[test]
    fn the_oldest_finished_job_is_forgotten_first() {
        let jobs = Jobs::default();
        let running = jobs.start("csv_file_load", "admin");
        let first_done = jobs.start("csv_file_load", "admin");
        jobs.finish(&first_done, Ok("done".into()));
        for _ in 2..KEPT {
            let id = jobs.start("csv_data_load", "admin");
            jobs.finish(&id, Ok("done".into()));
        }
        jobs.start("csv_data_load", "admin");
        assert_eq!(jobs.status(&running), Some(Status::InProgress));
        assert_eq!(jobs.status(&first_done), None);
    }
}
