//! Outbound HTTP(S) from a resource, to the origins the component's `config.yaml` lists under
//! `outbound.allow` (nothing else is reachable). The host makes the call off its cores; the
//! time the resource waits does not count against its time budget. Every failure is a
//! [`FetchError`] value, which `?` turns into the matching [`crate::Error`] (504 for a
//! time-out, 502 for a failed connection or an answer too large, 500 for a call that is not
//! allowed or malformed).
//!
//! ```no_run
//! use tessera_wasm_sdk::http::Request;
//! # fn f() -> tessera_wasm_sdk::Result<()> {
//! let r = Request::get("https://api.example/breeds/7")
//!     .header("Accept", "application/json")
//!     .timeout(std::time::Duration::from_secs(2))
//!     .send()?;
//! if r.status == 200 {
//!     let breed: tessera_wasm_sdk::Value = r.json()?;
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::tessera::wasm::outbound;
pub use crate::bindings::tessera::wasm::outbound::FetchError;
use crate::{Error, Result};

/// A request being built.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    timeout: Duration,
    max_bytes: u32,
}

/// An origin's answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A request of any method. Defaults: 10 s for the whole exchange, 1 MiB of answer.
    pub fn new(method: &str, url: &str) -> Request {
        Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_secs(10),
            max_bytes: 1 << 20,
        }
    }

    /// A GET.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends these bytes as the body.
    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = Some(body);
        self
    }

    /// Sends a value as a JSON body (with its content type).
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Result<Request> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::new(500, format!("cannot encode as JSON: {e}")))?;
        Ok(self.header("Content-Type", "application/json").body(body))
    }

    /// The time limit of the whole exchange (the host allows 60 s at most).
    pub fn timeout(mut self, t: Duration) -> Request {
        self.timeout = t;
        self
    }

    /// The longest answer body taken (the host allows 16 MiB at most).
    pub fn max_bytes(mut self, n: u32) -> Request {
        self.max_bytes = n;
        self
    }

    /// Makes the call.
    pub fn send(self) -> std::result::Result<Response, FetchError> {
        let r = outbound::fetch(&outbound::HttpRequest {
            method: self.method,
            url: self.url,
            headers: self.headers,
            body: self.body,
            timeout_ms: self.timeout.as_millis().min(u32::MAX as u128) as u32,
            max_bytes: self.max_bytes,
        })?;
        Ok(Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

impl Response {
    /// The first value of a header (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body read as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::new(
                502,
                format!("the origin's answer is not the JSON expected: {e}"),
            )
        })
    }
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Error {
        match e {
            FetchError::NotAllowed(o) => Error::new(500, format!("{o} is not in outbound.allow")),
            FetchError::Timeout => Error::new(504, "the origin did not answer in time"),
            FetchError::Refused(why) => Error::new(502, format!("the origin failed: {why}")),
            FetchError::TooLarge(n) => {
                Error::new(502, format!("the origin's answer is longer than {n} bytes"))
            }
            FetchError::Invalid(why) => Error::new(500, format!("invalid request: {why}")),
        }
    }
}
