//! Requests served by a wasm resource: the method and path as the resource's verb, the body
//! decoded into MessagePack, and the resource's response encoded as negotiated.

use std::sync::Arc;

use tessera_protocol::MediaType;
use tessera_protocol::http::{Method, Request};
use tessera_protocol::rest::PathKind;
use tessera_storage::value;

use super::Rest;
use crate::app::AppError;
use crate::app::body;
use crate::app::keys::{id_value, set_primary_key};
use crate::app::output::encode_value;
use crate::app::permissions::User;
use crate::net::reply::Reply;
use crate::wasm::{self, Method as WasmMethod, WasmResource};

impl Rest {
    /// Serves a request with a wasm resource. `Ok(false)`: the resource does not override the
    /// verb, and the caller serves it as the table does.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn serve_wasm(
        &self,
        res: &WasmResource,
        req: &Request<'_>,
        body: &mut [u8],
        path: &PathKind,
        query: &str,
        user: &Arc<User>,
        fmt: MediaType,
        reply: &mut Reply<'_>,
    ) -> Result<bool, AppError> {
        let (method, id, pathname) = match (req.method, path) {
            (Method::Get | Method::Head, PathKind::Record(id)) => (WasmMethod::Get, Some(id), id),
            (Method::Get | Method::Head, PathKind::Collection(p)) => (WasmMethod::Search, None, p),
            (Method::Put, PathKind::Record(id)) => (WasmMethod::Put, Some(id), id),
            (Method::Patch, PathKind::Record(id)) => (WasmMethod::Patch, Some(id), id),
            (Method::Post, PathKind::Record(id)) => (WasmMethod::Post, Some(id), id),
            (Method::Post, PathKind::Collection(p)) => (WasmMethod::Post, None, p),
            (Method::Delete, PathKind::Record(id)) => (WasmMethod::Delete, Some(id), id),
            (Method::Delete, PathKind::Collection(p)) => (WasmMethod::Delete, None, p),
            _ => return Ok(false),
        };
        if res.falls_back(method) {
            return Ok(false);
        }
        let data = match method {
            WasmMethod::Put | WasmMethod::Patch | WasmMethod::Post if !body.is_empty() => {
                let mut data =
                    body::decode(req.content_type, body, &mut self.json_buffers.borrow_mut())?;
                // As for the table's own PUT: the URL's id is the record's primary key.
                if let (Some(table), Some(id), WasmMethod::Put | WasmMethod::Patch) =
                    (&res.extends, id, method)
                {
                    set_primary_key(&mut data, &table.primary_key().name, id_value(table, id));
                }
                Some(data.to_msgpack())
            }
            _ => None,
        };
        let call = wasm::Call {
            method,
            id: id.map(String::as_str),
            pathname,
            search: query,
            is_collection: id.is_none(),
            data,
            user: Some(user.clone()),
            head: req.head.to_vec(),
        };
        let response = match wasm::call(&self.wasm, &self.app, &self.router, res, call).await? {
            wasm::Handled::Fallback => return Ok(false),
            wasm::Handled::Respond(r) => r,
        };
        let headers: Vec<(&str, &[u8])> = response
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        let status = response.status;
        match (response.body, response.data) {
            (Some(b), _) => reply.send(status, None, &headers, &b),
            (None, Some(d)) => {
                let mut buf = self.scratch.borrow_mut();
                buf.clear();
                match fmt {
                    MediaType::MsgPack => buf.extend_from_slice(&d),
                    MediaType::Json => {
                        value::msgpack_to_json(&d, &mut buf)
                            .map_err(|e| AppError::Internal(e.to_string()))?;
                    }
                    _ => {
                        let v = value::from_msgpack(&d)
                            .map_err(|e| AppError::Internal(e.to_string()))?;
                        encode_value(&v, fmt, &mut buf);
                    }
                }
                reply.send(status, Some(fmt), &headers, &buf);
            }
            (None, None) => reply.send(status, None, &headers, b""),
        }
        Ok(true)
    }
}
